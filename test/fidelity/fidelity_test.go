// Package fidelity_test checks that the two instruments of llmd-kn agree:
// the same workload through `kn-llmd local` (simulated pods in real time,
// measured by pkg/bench) and through `kn-llmd plan` (the same engine model,
// router and activator accounting in virtual time) gives TTFT p50 and p90
// within 15 % per routing profile, and the same ranking of the profiles.
//
// The real-time side runs at a time scale (modelled time passes 1/scale
// times faster than wall time), so its wall latencies are divided by the
// scale before they are compared; the activator's own wall-clock constants
// (its 50 ms metrics scrape, the KV-event path) are converted the other way
// into the plan's configuration. Nothing is fitted: every plan knob is the
// real path's setting expressed in modelled time.
//
// Measured on the shared 2-core machine: overhead 13–17 ms modelled, TTFT
// local/plan ratios 0.92–1.03 (p50) and 0.98–0.99 (p90), 60 s wall.
//
// The test drives a few hundred streams for about a minute of wall time and
// needs a machine that keeps up with the time scale, so it runs only with
// LLMD_FIDELITY=1 and without the race detector:
//
//	LLMD_FIDELITY=1 go test -count=1 -v -run Fidelity ./test/fidelity
package fidelity_test

import (
	"context"
	"fmt"
	"io"
	"math"
	"os"
	"slices"
	"sort"
	"testing"
	"time"

	"github.com/llmd-kn/llmd-kn/pkg/bench"
	"github.com/llmd-kn/llmd-kn/pkg/engine"
	"github.com/llmd-kn/llmd-kn/pkg/local"
	"github.com/llmd-kn/llmd-kn/pkg/plan"
	"github.com/llmd-kn/llmd-kn/pkg/workload"
)

const (
	// simProfile is the engines' model and accelerator, on both sides.
	simProfile = "llama-3.1-8b-h100"
	model      = "meta-llama/Llama-3.1-8B-Instruct"
	pods       = 4
	// scale is the simulated pods' time scale: one modelled second takes
	// scale seconds of wall time.
	scale = 0.5
	// activatorScrape is the activator's metrics scrape interval in wall
	// time (pkg/activator's default); kvEventLag is a generous bound on
	// the in-process ZMQ hop of KV events, also in wall time.
	activatorScrape = 50 * time.Millisecond
	activatorStale  = 500 * time.Millisecond
	kvEventLag      = 2 * time.Millisecond
	// tolerance is the largest relative TTFT difference allowed.
	tolerance = 0.15
)

// profiles are the routing profiles compared: one blind to the prefix
// cache and one that follows it, whose TTFTs differ several-fold on a
// shared-prefix workload.
var profiles = []string{"round-robin", "default"}

// spec is the workload in modelled time: llm-d's shared-prefix shape,
// scaled down so that the engines are busy (prefill of the long system
// prompts dominates TTFT unless the router finds the cached prefix) but
// never saturated.
func spec() workload.Spec {
	return workload.Spec{
		Kind: workload.KindSharedPrefix,
		Seed: 7,
		SharedPrefix: &workload.SharedPrefixConfig{
			Groups: 80, PromptsPerGroup: 50, SystemPromptLen: 6000, QuestionLen: 1000, OutputLen: 50,
		},
		Arrival:     workload.Arrival{Kind: workload.ArrivalPoisson, Rate: 15},
		MaxRequests: 750,
	}
}

// probeSpec measures the real path's cost that the engine model does not
// have (HTTP, JSON, the activator's proxying and routing, the simulator's
// request handling): requests of the workload's prompt length, one output
// token, spaced so that every engine is idle, go through both instruments;
// the median of their TTFT differences is the plan's Overhead.
func probeSpec() workload.Spec {
	return workload.Spec{
		Kind:        workload.KindRandom,
		Seed:        11,
		Random:      &workload.RandomConfig{NumPrompts: 16, InputLen: 7000, OutputLen: 1},
		Arrival:     workload.Arrival{Kind: workload.ArrivalConstant, Rate: 2},
		MaxRequests: 16,
	}
}

type ttft struct{ p50, p90 float64 } // modelled seconds

func TestFidelity(t *testing.T) {
	if os.Getenv("LLMD_FIDELITY") == "" {
		t.Skip("set LLMD_FIDELITY=1 to compare local+bench with plan (about a minute of wall time)")
	}
	if raceEnabled {
		t.Skip("the race detector slows the simulated pods below their time scale")
	}
	start := time.Now()
	real := make(map[string]ttft)
	overhead := make(map[string]time.Duration)
	for _, p := range profiles {
		got, oh, err := runLocal(t, p)
		if err != nil {
			t.Fatalf("%s: local: %v", p, err)
		}
		real[p], overhead[p] = got, oh
		t.Logf("%s: real path overhead %s (modelled time)", p, oh.Round(100*time.Microsecond))
	}
	t.Logf("real time: %s wall", time.Since(start).Round(time.Second))
	modelled := make(map[string]ttft)
	for _, p := range profiles {
		got, err := runPlan(p, overhead[p])
		if err != nil {
			t.Fatalf("%s: plan: %v", p, err)
		}
		modelled[p] = got
	}
	t.Logf("%-12s %23s %23s", "profile", "TTFT p50 local/plan", "TTFT p90 local/plan")
	for _, p := range profiles {
		r, m := real[p], modelled[p]
		t.Logf("%-12s %7.3fs %7.3fs %5.2f %7.3fs %7.3fs %5.2f", p, r.p50, m.p50, r.p50/m.p50, r.p90, m.p90, r.p90/m.p90)
	}
	for _, p := range profiles {
		r, m := real[p], modelled[p]
		for _, q := range []struct {
			name       string
			real, plan float64
		}{{"p50", r.p50, m.p50}, {"p90", r.p90, m.p90}} {
			if d := math.Abs(q.real-q.plan) / q.plan; d > tolerance {
				t.Errorf("%s: TTFT %s local+bench %.3fs vs plan %.3fs: %.0f%% apart (tolerance %.0f%%)",
					p, q.name, q.real, q.plan, 100*d, 100*tolerance)
			}
		}
	}
	for _, q := range []struct {
		name string
		get  func(ttft) float64
	}{{"p50", func(v ttft) float64 { return v.p50 }}, {"p90", func(v ttft) float64 { return v.p90 }}} {
		if a, b := ranking(real, q.get), ranking(modelled, q.get); !slices.Equal(a, b) {
			t.Errorf("TTFT %s ranking: local+bench %v, plan %v", q.name, a, b)
		}
	}
}

// ranking orders the profiles from the lowest TTFT to the highest.
func ranking(m map[string]ttft, get func(ttft) float64) []string {
	r := slices.Clone(profiles)
	sort.SliceStable(r, func(i, j int) bool { return get(m[r[i]]) < get(m[r[j]]) })
	return r
}

func openWorkload(s workload.Spec, speedup float64) (*workload.Workload, error) {
	s.Speedup = speedup
	return workload.Open(s, "")
}

// runLocal runs the workload through an in-process `kn-llmd local` with
// routing profile p, at the time scale, and returns its TTFT percentiles
// in modelled time, and the real path's overhead measured with probeSpec.
func runLocal(t *testing.T, p string) (ttft, time.Duration, error) {
	manifest := fmt.Sprintf(`apiVersion: serving.knative.dev/v1
kind: Service
metadata:
  name: llm
  namespace: default
spec:
  template:
    metadata:
      annotations:
        autoscaling.knative.dev/min-scale: "%d"
        autoscaling.knative.dev/max-scale: "%d"
        llm-d.ai/routing-profile: %s
        llm-d.ai/sim-profile: %s
    spec:
      containers:
      - image: vllm/vllm-openai:v0.11.0
        args: [--model, %s]
`, pods, pods, p, simProfile, model)
	svcs, err := local.Parse(p+".yaml", []byte(manifest), local.DefaultVocabulary())
	if err != nil {
		return ttft{}, 0, err
	}
	rt, err := local.New(local.Options{Services: svcs, Addr: "127.0.0.1:0", MetricsAddr: "off",
		SimTimeScale: scale, GracePeriod: 2 * time.Second, DrainTimeout: 5 * time.Second, PodOutput: io.Discard})
	if err != nil {
		return ttft{}, 0, err
	}
	defer rt.Close()
	if err := rt.Start(); err != nil {
		return ttft{}, 0, err
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	if err := rt.WaitReady(ctx); err != nil {
		return ttft{}, 0, err
	}
	pw, err := openWorkload(probeSpec(), 1/scale)
	if err != nil {
		return ttft{}, 0, err
	}
	probe, err := bench.Run(ctx, bench.Config{URL: rt.APIURL(), Model: model}, pw.Source())
	if err != nil {
		return ttft{}, 0, err
	}
	pp, err := runPlanRecords(p, 0, probeSpec())
	if err != nil {
		return ttft{}, 0, err
	}
	var diffs []time.Duration
	for i, r := range probe.Records {
		if r.Error != "" || i >= len(pp) {
			return ttft{}, 0, fmt.Errorf("probe %d failed: %s", i, r.Error)
		}
		diffs = append(diffs, time.Duration(float64(r.TTFT)/scale)-pp[i].TTFT)
	}
	slices.Sort(diffs)
	overhead := max(0, diffs[len(diffs)/2])

	w, err := openWorkload(spec(), 1/scale)
	if err != nil {
		return ttft{}, 0, err
	}
	res, err := bench.Run(ctx, bench.Config{URL: rt.APIURL(), Model: model}, w.Source())
	if err != nil {
		return ttft{}, 0, err
	}
	sum := bench.Summarize(p, res.Records, bench.SummaryOptions{})
	if n := sum.Requests.Completed; n != w.Len() {
		return ttft{}, 0, fmt.Errorf("%d of %d requests completed (errors %v)", n, w.Len(), sum.ErrorExamples)
	}
	if late := sum.LatencySeconds.Lateness.P90; late > 0.005 {
		t.Logf("%s: the generator ran %.1f ms late at p90: the machine is too busy for the time scale", p, 1000*late)
	}
	l := sum.LatencySeconds.TTFT
	return ttft{l.P50 / scale, l.P90 / scale}, overhead, nil
}

// runPlan runs the workload through plan with routing profile p, the real
// path's constants in modelled time and the measured overhead per hop.
func runPlan(p string, overhead time.Duration) (ttft, error) {
	recs, err := runPlanRecords(p, overhead, spec())
	if err != nil {
		return ttft{}, err
	}
	sum := bench.Summarize(p, recs, bench.SummaryOptions{Mode: bench.ModeVirtualTime})
	if n := sum.Requests.Completed; n != len(recs) {
		return ttft{}, fmt.Errorf("%d of %d requests completed", n, len(recs))
	}
	l := sum.LatencySeconds.TTFT
	return ttft{l.P50, l.P90}, nil
}

func runPlanRecords(p string, overhead time.Duration, s workload.Spec) ([]bench.Record, error) {
	prof, err := engine.BuiltinProfile(simProfile)
	if err != nil {
		return nil, err
	}
	cfg := plan.DefaultConfig()
	cfg.Profile = prof
	cfg.Engines = pods
	cfg.Routing = p
	cfg.Model = model
	cfg.ScrapeInterval = time.Duration(float64(activatorScrape) / scale)
	cfg.StaleAfter = time.Duration(float64(activatorStale) / scale)
	cfg.KVEventDelay = time.Duration(float64(kvEventLag) / scale)
	cfg.Overhead = overhead
	w, err := openWorkload(s, 1)
	if err != nil {
		return nil, err
	}
	res, err := plan.Run(context.Background(), cfg, w.Source())
	if err != nil {
		return nil, err
	}
	return res.Records, nil
}
