package plan

import (
	"context"
	"math"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/llmd-kn/llmd-kn/pkg/bench"
	"github.com/llmd-kn/llmd-kn/pkg/workload"
)

// concurrencyStep feeds the KPA adapter a constant concurrency from `from`
// to `to` (virtual time), ticking every 2 s, and returns the desired counts
// by tick time.
type kpaDriver struct {
	t        *testing.T
	s        *KPAScaler
	now      time.Duration
	integral float64
	ready    int
}

func (d *kpaDriver) tick(concurrency int) int {
	d.now += 2 * time.Second
	d.integral += float64(concurrency) * 2
	r := d.s.Scale(&Observation{Now: d.now, Ready: Replicas{Decode: d.ready}, Active: concurrency, ConcurrencySeconds: d.integral})
	d.ready = r.Decode // instant readiness: the decider alone is under test
	return r.Decode
}

func TestKPAScalerFollowsAConcurrencyStepInVirtualTime(t *testing.T) {
	s, err := NewKPAScaler(KPAConfig{Target: 10, MaxScale: 100, ScaleToZeroGrace: 30 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	sp := s.Spec()
	if sp.TargetValue != 7 || sp.StableWindow != 60*time.Second || sp.PanicThreshold != 2 || sp.MaxScaleDownRate != 2 {
		t.Fatalf("decider spec %+v: want Knative's defaults (utilization 70%%, 60s window, panic at 200%%, down rate 2)", sp)
	}
	d := &kpaDriver{t: t, s: s}
	// Wake from zero with one request: the poke asks for one replica.
	if r := s.Poke(&Observation{Now: 0}); r.Decode != 1 {
		t.Fatalf("poke: %d replicas, want 1", r.Decode)
	}
	d.ready = 1
	// 70 requests in the system: ceil(70 / 7) = 10 replicas, reached by
	// the panic window within a few ticks, long before the stable window.
	var got int
	for range 5 {
		got = d.tick(70)
	}
	if got != 10 {
		t.Fatalf("after 10s at concurrency 70: %d replicas, want 10", got)
	}
	// The load drops to 7 (one replica's worth): no scale-down while the
	// panic mode holds (60 s after the last panic tick) ...
	for d.now < 40*time.Second {
		if got = d.tick(7); got != 10 {
			t.Fatalf("at %v in panic: %d replicas, want 10 held", d.now, got)
		}
	}
	// ... then down by at most half per tick, to 1 once the stable window
	// holds only the low load.
	prev := got
	for d.now < 150*time.Second {
		got = d.tick(7)
		if got < prev/2 {
			t.Fatalf("at %v: %d after %d, faster than the scale-down rate 2", d.now, got, prev)
		}
		prev = got
	}
	if got != 1 {
		t.Fatalf("at %v after 110 s at concurrency 7: %d replicas, want 1", d.now, got)
	}
	// No traffic: the decider wants 0 once the stable window is empty, and
	// the replicas hold at 1 for the grace period, then go to 0.
	var zeroAt time.Duration = -1
	for d.now < 300*time.Second {
		if got = d.tick(0); got == 0 && zeroAt < 0 {
			zeroAt = d.now
		}
	}
	idle := 150 * time.Second
	if zeroAt < idle+60*time.Second+30*time.Second-2*time.Second || zeroAt > idle+60*time.Second+30*time.Second+4*time.Second {
		t.Errorf("zero at %v: want the stable window (60s) and the grace (30s) after the traffic stopped at %v", zeroAt, idle)
	}
}

func TestKPAScalerRejectsBadConfig(t *testing.T) {
	for _, c := range []KPAConfig{{Target: 0}, {Target: math.Inf(1)}, {Target: 1, TargetUtilization: 2},
		{Target: 1, MinScale: 3, MaxScale: 2}, {Target: 1, ScaleToZeroGrace: -1},
		{Target: 1, PanicThresholdPercentage: 100}, {Target: 1, ScaleDownDelay: -time.Second}} {
		if _, err := NewKPAScaler(c); err == nil {
			t.Errorf("%+v accepted", c)
		}
	}
	// The knobs reach Knative's decider spec as its annotations would.
	s, err := NewKPAScaler(KPAConfig{Target: 4, TargetUtilization: 0.5, PanicThresholdPercentage: 500, ScaleDownDelay: time.Minute})
	if err != nil {
		t.Fatal(err)
	}
	if sp := s.Spec(); sp.TargetValue != 2 || sp.PanicThreshold != 5 || sp.ScaleDownDelay != time.Minute {
		t.Errorf("spec %+v: want target 4 x 0.5, panic at 5x, delay 1m", sp)
	}
}

func TestKPAScalerRunsTheTwoStepLoad(t *testing.T) {
	cfg := DefaultConfig()
	cfg.Routing = "least-request"
	cfg.Engines = 0
	cfg.StartupDelay = sloStartup
	sc, err := NewKPAScaler(KPAConfig{Target: 16, MaxScale: sloMax, ScaleToZeroGrace: sloGrace})
	if err != nil {
		t.Fatal(err)
	}
	cfg.Scaler = sc
	res := run(t, cfg, twoStep())
	pts := res.Replicas
	low := maxProvisioned(pts, 20*time.Second, stepLowEnd)
	high := maxProvisioned(pts, stepLowEnd, stepHighEnd+5*time.Second)
	if !(high > low && high >= 2) {
		t.Errorf("peak %d in the high step, %d in the low step: want a scale-up (%s)", high, low, replicaSeries(pts))
	}
	if n := provisionedAt(pts, lateAt-time.Millisecond); n != 0 {
		t.Errorf("%d replicas just before the late request, want 0 (%s)", n, replicaSeries(pts))
	}
	late := res.Records[len(res.Records)-1]
	if !late.OK() || late.TTFT < sloStartup {
		t.Errorf("late request %+v: want served after a cold start", late)
	}
	if res.Stats.ColdStarts < high || res.Stats.ScaleEvents < 3 {
		t.Errorf("%d cold starts, %d scale events", res.Stats.ColdStarts, res.Stats.ScaleEvents)
	}
	if s := Summarize(res, SummaryOptions{}); !strings.Contains(s.Settings["scaler"], "kpa") || !strings.Contains(s.Target, "kpa-autoscaled 0..8") {
		t.Errorf("settings %v, target %q", s.Settings, s.Target)
	}
}

// smallTrace is a short bursty workload: bursts of 2,000-token prompts with
// idle gaps.
func smallTrace() workload.Source {
	var reqs []workload.Request
	add := func(at time.Duration) {
		reqs = append(reqs, workload.NewRequest(len(reqs), at, tokens(stepPrompt, uint32(len(reqs)+1)), stepOutput))
	}
	for at := time.Duration(0); at < 20*time.Second; at += 200 * time.Millisecond { // 5 req/s
		add(at)
	}
	for at := 80 * time.Second; at < 100*time.Second; at += 40 * time.Millisecond { // 25 req/s
		add(at)
	}
	return workload.Requests(reqs)
}

func TestLowerBoundIsBelowEveryPolicy(t *testing.T) {
	base := DefaultConfig()
	base.Routing = "least-request"
	a := base.AutoscalerConfig(Replicas{}, Replicas{Decode: sloMax})
	a.ScaleToZeroGracePeriod = sloGrace
	fixed := base
	fixed.Engines = sloMax
	ref := run(t, fixed, smallTrace())
	lb, err := ComputeLowerBound(ref.Records, a, base.Profile, 10*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	// Windows with traffic get at least one replica, idle ones none; the
	// 25 req/s burst needs more than the 5 req/s one.
	if len(lb.Replicas) < 10 || lb.Replicas[0] < 1 || lb.Replicas[3] != 0 || lb.Replicas[8] <= lb.Replicas[0] {
		t.Fatalf("bound per window %v", lb.Replicas)
	}
	var sum int
	for _, c := range lb.Replicas {
		sum += c
	}
	// The last window ends with the last answer.
	last := lb.Replicas[len(lb.Replicas)-1]
	if lb.ReplicaSeconds > float64(sum)*10 || lb.ReplicaSeconds <= float64(sum-last)*10 || lb.GPUSeconds != lb.ReplicaSeconds || lb.Peak != lb.Replicas[8] {
		t.Errorf("bound %+v", lb)
	}

	auto := func(sc Scaler) Config {
		c := base
		c.Engines, c.Scaler, c.StartupDelay = 0, sc, sloStartup
		return c
	}
	slo, err := NewSLOScaler(a, base.Profile)
	if err != nil {
		t.Fatal(err)
	}
	kpa, err := NewKPAScaler(KPAConfig{Target: 16, MaxScale: sloMax, ScaleToZeroGrace: sloGrace})
	if err != nil {
		t.Fatal(err)
	}
	one := base
	one.Engines = 1
	for name, c := range map[string]Config{"fixed": fixed, "fixed-1": one, "slo": auto(slo), "kpa": auto(kpa)} {
		res := run(t, c, smallTrace())
		if res.Stats.GPUSeconds < lb.GPUSeconds {
			t.Errorf("%s: %.0f GPU-seconds, below the lower bound %.0f", name, res.Stats.GPUSeconds, lb.GPUSeconds)
		}
	}
	if _, err := ComputeLowerBound(ref.Records, a, base.Profile, 0); err == nil {
		t.Error("zero window accepted")
	}
}

func TestStaticPeakMeetsTheTarget(t *testing.T) {
	cfg := DefaultConfig()
	cfg.Routing = "least-request"
	w, err := workload.Open(workload.Spec{Kind: workload.KindRandom, Random: &workload.RandomConfig{InputLen: 4000, OutputLen: 64},
		Arrival: workload.Arrival{Kind: workload.ArrivalPoisson, Rate: 40}, MaxRequests: 600}, ".")
	if err != nil {
		t.Fatal(err)
	}
	slo := bench.SLO{TTFT: time.Second, TPOT: 50 * time.Millisecond}
	const target = 0.99
	c, err := FindCapacity(context.Background(), Evaluate(cfg, w, SummaryOptions{SLO: slo}), cfg.Routing, target, Range{}, Range{Min: 1, Max: 8}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if !c.Found || c.Replicas.Decode < 2 {
		t.Fatalf("static peak %+v: want some count in 2..8 to meet %v", c, target)
	}
	run := func(n int) Attainment {
		cc := cfg
		cc.Engines = n
		res, err := Run(context.Background(), cc, w.Source())
		if err != nil {
			t.Fatal(err)
		}
		return AttainmentOf(res.Records, slo)
	}
	if a := run(c.Replicas.Decode); a.Both < target {
		t.Errorf("static peak %d: attainment %v below %v", c.Replicas.Decode, a.Both, target)
	}
	if c.Replicas.Decode > 1 {
		if a := run(c.Replicas.Decode - 1); a.Both >= target {
			t.Errorf("static peak %d is not the fewest: %d reaches %v", c.Replicas.Decode, c.Replicas.Decode-1, a.Both)
		}
	}
}

func TestWriteAutoscaling(t *testing.T) {
	dir := t.TempDir()
	rep := AutoscalingReport{Workload: "w", Deployment: "d", SLO: bench.SLO{TTFT: time.Second, TPOT: 50 * time.Millisecond}, Percentile: 90,
		Policies: []PolicyResult{{Policy: "slo", Attainment: Attainment{TTFT: 1, TPOT: 0.99, Both: 0.99}, GPUSeconds: 120},
			PolicyOfBound(LowerBound{Window: 10 * time.Second, GPUSeconds: 100, Peak: 2})}}
	if err := WriteAutoscaling(dir, rep); err != nil {
		t.Fatal(err)
	}
	md, err := os.ReadFile(filepath.Join(dir, AutoscalingMD))
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(md), "| slo | 1.0000 | 0.9900 | 0.9900 |") || !strings.Contains(string(md), "| 120 | 1.20 |") {
		t.Errorf("markdown:\n%s", md)
	}
	if _, err := os.Stat(filepath.Join(dir, AutoscalingJSON)); err != nil {
		t.Error(err)
	}
}

func TestAttainmentOf(t *testing.T) {
	recs := []bench.Record{
		{TTFT: 500 * time.Millisecond, E2E: 500*time.Millisecond + 9*40*time.Millisecond, HasUsage: true, CompletionTokens: 10}, // meets both
		{TTFT: 2 * time.Second, E2E: 2*time.Second + 9*40*time.Millisecond, HasUsage: true, CompletionTokens: 10},               // TTFT miss
		{TTFT: 500 * time.Millisecond, E2E: 500*time.Millisecond + 9*80*time.Millisecond, HasUsage: true, CompletionTokens: 10}, // TPOT miss
		{Error: bench.ErrTimeout}, // failed: misses both
	}
	a := AttainmentOf(recs, bench.SLO{TTFT: time.Second, TPOT: 50 * time.Millisecond})
	if a != (Attainment{TTFT: 0.5, TPOT: 0.5, Both: 0.25}) {
		t.Errorf("attainment %+v", a)
	}
}
