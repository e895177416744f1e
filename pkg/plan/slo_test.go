package plan

import (
	"bytes"
	"strings"
	"testing"
	"time"

	"github.com/llmd-kn/llmd-kn/pkg/autoscaler"
	"github.com/llmd-kn/llmd-kn/pkg/bench"
	"github.com/llmd-kn/llmd-kn/pkg/router"
	"github.com/llmd-kn/llmd-kn/pkg/workload"
)

// Two-step workload: a low rate, a high rate, an idle gap, then one
// request.
const (
	stepLowEnd  = 60 * time.Second
	stepHighEnd = 120 * time.Second
	lateAt      = 300 * time.Second
	stepPrompt  = 2000
	stepOutput  = 64
)

func twoStep() workload.Source {
	var reqs []workload.Request
	add := func(at time.Duration) {
		reqs = append(reqs, workload.NewRequest(len(reqs), at, tokens(stepPrompt, uint32(len(reqs)+1)), stepOutput))
	}
	for at := time.Duration(0); at < stepLowEnd; at += 500 * time.Millisecond { // 2 req/s
		add(at)
	}
	for at := stepLowEnd; at < stepHighEnd; at += 25 * time.Millisecond { // 40 req/s
		add(at)
	}
	add(lateAt)
	return workload.Requests(reqs)
}

const (
	sloMax     = 8
	sloStartup = 10 * time.Second
	sloGrace   = 30 * time.Second
)

var stepSLO = bench.SLO{TTFT: 2 * time.Second, TPOT: 50 * time.Millisecond}

func sloConfig(t testing.TB) (Config, *SLOScaler) {
	t.Helper()
	cfg := DefaultConfig()
	cfg.Routing = "least-request"
	cfg.Engines = 0
	cfg.StartupDelay = sloStartup
	a := cfg.AutoscalerConfig(Replicas{}, Replicas{Decode: sloMax})
	a.ScaleToZeroGracePeriod = sloGrace
	a.SLO = autoscaler.SLO{TTFT: stepSLO.TTFT, TPOT: stepSLO.TPOT, Percentile: 90}
	sc, err := NewSLOScaler(a, cfg.Profile)
	if err != nil {
		t.Fatal(err)
	}
	cfg.Scaler = sc
	return cfg, sc
}

// provisionedAt is the provisioned decode count at time at.
func provisionedAt(pts []ReplicaPoint, at time.Duration) int {
	n := 0
	for _, p := range pts {
		if p.At > at {
			break
		}
		n = p.Provisioned.Decode
	}
	return n
}

func maxProvisioned(pts []ReplicaPoint, from, to time.Duration) int {
	m := provisionedAt(pts, from)
	for _, p := range pts {
		if p.At > from && p.At < to {
			m = max(m, p.Provisioned.Decode)
		}
	}
	return m
}

func TestSLOScalerFollowsATwoStepLoad(t *testing.T) {
	cfg, sc := sloConfig(t)
	res := run(t, cfg, twoStep())
	pts := res.Replicas
	for i, r := range res.Records {
		if !r.OK() {
			t.Fatalf("request %d at %v failed: %s %s", i, r.Scheduled, r.Error, r.Detail)
		}
	}

	low := maxProvisioned(pts, 20*time.Second, stepLowEnd)
	high := maxProvisioned(pts, stepLowEnd, stepHighEnd+5*time.Second)
	if !(high > low && high >= 2) {
		t.Errorf("peak %d in the high step, %d in the low step: want a scale-up", high, low)
	}
	if high > sloMax {
		t.Errorf("peak %d over the max scale %d", high, sloMax)
	}
	// After the high step: down, then to zero once the grace period passed.
	var down, zeroAt time.Duration = -1, -1
	for _, p := range pts {
		if p.At > stepHighEnd && down < 0 && p.Provisioned.Decode < high {
			down = p.At
		}
		if p.At > stepHighEnd && p.At < lateAt && p.Provisioned.Decode == 0 && zeroAt < 0 {
			zeroAt = p.At
		}
	}
	if down < 0 {
		t.Errorf("never scaled down after the high step: %s", replicaSeries(pts))
	}
	if zeroAt < 0 {
		t.Fatalf("never reached zero before the late request: %s", replicaSeries(pts))
	}
	// The last request finished by about stepHighEnd (+ drain); zero needs
	// the grace period of no traffic on top.
	last := res.Records[len(res.Records)-2]
	if lastDone := last.Scheduled + last.E2E; zeroAt < lastDone+sloGrace {
		t.Errorf("zero at %v, before the grace period after the last traffic (%v + %v)", zeroAt, lastDone, sloGrace)
	}
	if n := provisionedAt(pts, lateAt-time.Millisecond); n != 0 {
		t.Errorf("%d replicas just before the late request, want 0", n)
	}

	// The late request woke the fleet by the poke (not the next tick) and
	// was served after the startup delay.
	late := res.Records[len(res.Records)-1]
	if late.TTFT < sloStartup || late.TTFT > sloStartup+2*time.Second {
		t.Errorf("late request TTFT %v, want the startup delay %v plus a prefill", late.TTFT, sloStartup)
	}
	if n := provisionedAt(pts, lateAt); n != 1 {
		t.Errorf("%d replicas provisioned at the late arrival, want 1 (poke)", n)
	}
	if res.Stats.Pokes < 2 || res.Stats.ColdStarts < high {
		t.Errorf("%d pokes, %d cold starts", res.Stats.Pokes, res.Stats.ColdStarts)
	}
	var poked int
	for _, d := range sc.Decisions {
		if d.Poked {
			poked++
		}
	}
	if poked != res.Stats.Pokes {
		t.Errorf("%d poked decisions, %d pokes", poked, res.Stats.Pokes)
	}
	if res.Stats.ReplicaSeconds <= 0 || res.Stats.GPUSeconds < res.Stats.ReplicaSeconds {
		t.Errorf("replica-seconds %v, GPU-seconds %v", res.Stats.ReplicaSeconds, res.Stats.GPUSeconds)
	}
}

func TestSLOScalerCostsLessThanAFixedFleetOfTheMax(t *testing.T) {
	cfg, _ := sloConfig(t)
	auto := run(t, cfg, twoStep())
	fixed := DefaultConfig()
	fixed.Routing = cfg.Routing
	fixed.Engines = sloMax
	peak := run(t, fixed, twoStep())

	so := SummaryOptions{SLO: stepSLO}
	as, ps := Summarize(auto, so), Summarize(peak, so)
	if as.SLOAttainment == nil || ps.SLOAttainment == nil {
		t.Fatal("no attainment")
	}
	t.Logf("slo: attainment %.4f, %.0f replica-seconds, peak %s; fixed %d: attainment %.4f, %.0f replica-seconds",
		*as.SLOAttainment, auto.Stats.ReplicaSeconds, auto.Stats.PeakReplicas, sloMax, *ps.SLOAttainment, peak.Stats.ReplicaSeconds)
	if *ps.SLOAttainment < *as.SLOAttainment {
		t.Errorf("fixed fleet attainment %v below the autoscaled %v", *ps.SLOAttainment, *as.SLOAttainment)
	}
	if peak.Stats.ReplicaSeconds <= auto.Stats.ReplicaSeconds {
		t.Errorf("fixed fleet %v replica-seconds, not above the autoscaled %v", peak.Stats.ReplicaSeconds, auto.Stats.ReplicaSeconds)
	}
	if want := float64(sloMax) * peak.Stats.End.Seconds(); peak.Stats.ReplicaSeconds != want {
		t.Errorf("fixed fleet replica-seconds %v, want %v", peak.Stats.ReplicaSeconds, want)
	}
	if as.Settings["replicaSeconds"] == "" || !strings.Contains(as.Settings["scaler"], "slo") ||
		!strings.Contains(as.Target, "slo-autoscaled 0..8") || as.Settings["replicasOverTime"] == "" {
		t.Errorf("summary settings %v, target %q", as.Settings, as.Target)
	}
	var b bytes.Buffer
	if err := WriteReplicaCSV(&b, true, "slo", auto.Replicas); err != nil {
		t.Fatal(err)
	}
	if lines := strings.Count(b.String(), "\n"); lines != len(auto.Replicas)+1 {
		t.Errorf("csv has %d lines for %d points", lines, len(auto.Replicas))
	}
}

func TestSLOScalerInputRates(t *testing.T) {
	_, sc := sloConfig(t)
	o := &Observation{Now: 2 * time.Second}
	sc.Input(o)
	o2 := &Observation{Now: 4 * time.Second, Finished: 4, Failed: 1, PromptTokens: 4000, CachedTokens: 1000, CompletionTokens: 400,
		Arrived: 9, ArrivedPromptTokens: 9000,
		Queued: 3, QueueTime: time.Second, InFlight: 5,
		Engines: []EngineMetrics{{ID: "e0", Role: router.RoleBoth, Running: 2, KVUsage: 0.5, PrefillTokens: 8000, PrefillTime: 500 * time.Millisecond,
			DecodeSteps: 10, DecodeSeqs: 40, DecodeTime: 100 * time.Millisecond}}}
	in := sc.Input(o2)
	l := in.Load
	if l.Requests() != 2.5 || l.PromptTokensPerSecond != 2000 || l.UncachedPrefillTokensPerSecond != 1500 ||
		l.OutputTokensPerSecond != 200 || l.MeanPromptTokens != 1000 || l.MeanCachedTokens != 250 || l.MeanOutputTokens != 100 ||
		l.Queued != 3 || l.QueueTime != time.Second || l.InFlight != 5 {
		t.Errorf("load %+v", l)
	}
	// Nine arrived while five ended: the arrival rates lead.
	if l.Arrivals() != 4.5 || l.ArrivedPromptTokensPerSecond != 4500 {
		t.Errorf("arrivals %v/s with %v prompt tokens/s, want 4.5 and 4500", l.Arrivals(), l.ArrivedPromptTokensPerSecond)
	}
	d := in.Pods.Decode
	if d.Ready != 1 || d.Running != 2 || d.PrefillTokensPerSecond != 16000 || d.DecodeStepTime != 10*time.Millisecond || d.DecodeBatch != 4 {
		t.Errorf("decode pods %+v", d)
	}
	// The next tick counts from here.
	o2.Now = 6 * time.Second
	if in := sc.Input(o2); in.Load.PromptTokensPerSecond != 0 || in.Pods.Decode.DecodeStepTime != 0 || in.Load.Arrivals() != 0 || in.Load.ArrivedPromptTokensPerSecond != 0 {
		t.Errorf("unchanged counters give %+v", in)
	}
}
