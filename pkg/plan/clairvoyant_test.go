package plan

import (
	"context"
	"math/rand/v2"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/llmd-kn/llmd-kn/pkg/autoscaler"
	"github.com/llmd-kn/llmd-kn/pkg/bench"
	"github.com/llmd-kn/llmd-kn/pkg/workload"
)

func TestClairvoyantBoundByHand(t *testing.T) {
	s := time.Second
	for _, tc := range []struct {
		name           string
		need           []int
		startup, grace time.Duration
		replicaSeconds float64
		coldStarts     int
		provisioned    []Step
	}{
		// Level 1 waits out the 30 s grace after 20 s, which reaches the
		// next need at 50 s: it stays up to 60 + 30. Level 2 starts a
		// cold start before 50. Counted from 0 to the end (70 s).
		{"grace bridges", []int{1, 1, 0, 0, 0, 2, 0}, 10 * s, 30 * s, 70 + 20, 2,
			[]Step{{-10 * s, 1}, {40 * s, 2}, {60 * s, 1}, {90 * s, 0}}},
		// A gap longer than grace + cold start: stop after the grace and
		// start again a cold start ahead.
		{"long gap", []int{1, 0, 0, 0, 0, 0, 0, 0, 0, 1}, 10 * s, 30 * s, 40 + 20, 2,
			[]Step{{-10 * s, 1}, {40 * s, 0}, {80 * s, 1}, {130 * s, 0}}},
		// No grace: a gap no longer than a cold start is kept.
		{"cold start bridges", []int{1, 0, 1, 0, 0, 0, 1}, 10 * s, 0, 30 + 20, 2,
			[]Step{{-10 * s, 1}, {30 * s, 0}, {50 * s, 1}, {70 * s, 0}}},
		{"instant", []int{2, 1, 0, 3}, 0, 0, 20 + 10 + 30, 5,
			[]Step{{0, 2}, {10 * s, 1}, {20 * s, 0}, {30 * s, 3}, {40 * s, 0}}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			lb := LowerBound{Window: 10 * s, Replicas: tc.need, End: time.Duration(len(tc.need)) * 10 * s}
			cb, err := ComputeClairvoyantBound(lb, tc.startup, tc.grace, 2)
			if err != nil {
				t.Fatal(err)
			}
			if cb.ReplicaSeconds != tc.replicaSeconds || cb.GPUSeconds != 2*tc.replicaSeconds || cb.ColdStarts != tc.coldStarts {
				t.Errorf("replica-seconds %v, GPU-seconds %v, cold starts %d; want %v, %v, %d", cb.ReplicaSeconds, cb.GPUSeconds, cb.ColdStarts,
					tc.replicaSeconds, 2*tc.replicaSeconds, tc.coldStarts)
			}
			if d := cmp.Diff(tc.provisioned, cb.Provisioned); d != "" {
				t.Errorf("provisioned (-want +got):\n%s", d)
			}
			// Every window's need is ready throughout the window.
			for k, n := range tc.need {
				for _, at := range []time.Duration{time.Duration(k) * 10 * s, time.Duration(k)*10*s + 9*s} {
					if got := cb.At(at - tc.startup); n > 0 && got < n {
						t.Errorf("window %d needs %d, %d asked for a cold start ahead of %s", k, n, got, at)
					}
				}
			}
		})
	}
	if _, err := ComputeClairvoyantBound(LowerBound{Window: 0}, 0, 0, 1); err == nil {
		t.Error("zero window accepted")
	}
	if _, err := ComputeClairvoyantBound(LowerBound{Window: s}, -s, 0, 1); err == nil {
		t.Error("negative startup accepted")
	}
}

// burstyTrace is a seeded bursty workload: bursts of 2,000-token prompts
// at random rates with idle gaps between them.
func burstyTrace(seed uint64) workload.Source {
	r := rand.New(rand.NewPCG(seed, seed^0x5eed))
	var reqs []workload.Request
	at := time.Duration(0)
	for range 2 {
		rate := 2 + 20*r.Float64()
		end := at + time.Duration(5+r.IntN(10))*time.Second
		for ; at < end; at += time.Duration(float64(time.Second) * r.ExpFloat64() / rate) {
			reqs = append(reqs, workload.NewRequest(len(reqs), at, tokens(stepPrompt, uint32(len(reqs)+1)), stepOutput))
		}
		at += time.Duration(10+r.IntN(70)) * time.Second
	}
	return workload.Requests(reqs)
}

// The clairvoyant bound never exceeds the GPU-seconds of a policy that
// attains as much: the SLO decider, Knative's KPA at several targets, and
// fixed fleets, on seeded bursty traces.
func TestClairvoyantBoundIsBelowEveryPolicy(t *testing.T) {
	if testing.Short() {
		t.Skip("runs every policy on three traces")
	}
	for _, seed := range []uint64{1, 2, 3} {
		base := DefaultConfig()
		base.Routing = "least-request"
		a := base.AutoscalerConfig(Replicas{}, Replicas{Decode: sloMax})
		a.ScaleToZeroGracePeriod = sloGrace
		a.SLO.TTFT, a.SLO.TPOT = 2*time.Second, 100*time.Millisecond
		slo := bench.SLO{TTFT: a.SLO.TTFT, TPOT: a.SLO.TPOT}
		fixed := base
		fixed.Engines = sloMax
		ref := run(t, fixed, burstyTrace(seed))
		lb, err := ComputeLowerBound(ref.Records, a, base.Profile, 10*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		cb, err := ComputeClairvoyantBound(lb, sloStartup, sloGrace, base.Profile.Accelerator.Count)
		if err != nil {
			t.Fatal(err)
		}
		if cb.GPUSeconds < lb.GPUSeconds {
			t.Errorf("seed %d: clairvoyant %.0f below the instant bound %.0f", seed, cb.GPUSeconds, lb.GPUSeconds)
		}
		replay := base
		replay.Scaler, replay.Engines, replay.StartupDelay = cb.Scaler(base.ScaleInterval), cb.Initial(), sloStartup
		rres := run(t, replay, burstyTrace(seed))
		bound := AttainmentOf(rres.Records, slo).Both

		auto := func(sc Scaler) Config {
			c := base
			c.Engines, c.Scaler, c.StartupDelay = 0, sc, sloStartup
			return c
		}
		policies := map[string]Config{}
		for _, n := range []int{1, 2} {
			c := base
			c.Engines = n
			policies["fixed-"+string(rune('0'+n))] = c
		}
		for _, pct := range []float64{90, 99} {
			ac := a
			ac.SLO.Percentile, ac.ColdStart = pct, sloStartup
			sc, err := NewSLOScaler(ac, base.Profile)
			if err != nil {
				t.Fatal(err)
			}
			policies["slo-p"+string(rune('0'+int(pct)/10))+string(rune('0'+int(pct)%10))] = auto(sc)
		}
		fc := a
		fc.SLO.Percentile, fc.ColdStart, fc.Forecast = 90, sloStartup, autoscaler.DefaultForecast()
		sc, err := NewSLOScaler(fc, base.Profile)
		if err != nil {
			t.Fatal(err)
		}
		policies["slo-forecast"] = auto(sc)
		for _, target := range []float64{2, 16} {
			kpa, err := NewKPAScaler(KPAConfig{Target: target, MaxScale: sloMax, ScaleToZeroGrace: sloGrace})
			if err != nil {
				t.Fatal(err)
			}
			policies["kpa"] = auto(kpa)
			res, err := Run(context.Background(), policies["kpa"], burstyTrace(seed))
			if err != nil {
				t.Fatal(err)
			}
			if at := AttainmentOf(res.Records, slo).Both; at >= bound && res.Stats.GPUSeconds < cb.GPUSeconds {
				t.Errorf("seed %d: kpa-%g attains %.4f (bound %.4f) with %.0f GPU-seconds, below the clairvoyant bound %.0f",
					seed, target, at, bound, res.Stats.GPUSeconds, cb.GPUSeconds)
			}
		}
		delete(policies, "kpa")
		for name, c := range policies {
			res := run(t, c, burstyTrace(seed))
			if at := AttainmentOf(res.Records, slo).Both; at >= bound && res.Stats.GPUSeconds < cb.GPUSeconds {
				t.Errorf("seed %d: %s attains %.4f (bound %.4f) with %.0f GPU-seconds, below the clairvoyant bound %.0f",
					seed, name, at, bound, res.Stats.GPUSeconds, cb.GPUSeconds)
			}
		}
		t.Logf("seed %d: instant %.0f, clairvoyant %.0f GPU-s (replayed %.0f at attainment %.4f)", seed, lb.GPUSeconds, cb.GPUSeconds, rres.Stats.GPUSeconds, bound)
	}
}
