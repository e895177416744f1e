// Package fidelity_test checks that the two instruments of llmd-kn agree:
// the same workload through `kn-llmd local` (simulated pods in real time,
// measured by pkg/bench) and through `kn-llmd plan` (the same engine model,
// router and activator accounting in virtual time) gives the same TTFT
// distribution per routing profile, at every decile, and the same ranking
// of the profiles at p50 and p90.
//
// "The same" is a band with two widths (band_test.go): 15 % in value, and
// in rank the sampling spread of a quantile, derived from the sample size
// and measured across plan replicas that carry the real path's timing
// noise. A p50 that falls between two modes (cache hits and misses under
// round-robin) is judged by the share of requests on each side, which the
// data determines, not by its value, which it does not: that is what made
// the former "p50 within 15 %" check fail at random.
//
// The real-time side runs at a time scale (modelled time passes 1/scale
// times faster than wall time), so its wall latencies are divided by the
// scale before they are compared; the activator's own wall-clock constants
// (its 50 ms metrics scrape, the KV-event path) are converted the other way
// into the plan's configuration. Nothing is fitted: every plan knob is the
// real path's setting expressed in modelled time, and the path's own
// overhead is measured by probes on an idle deployment.
//
// The test drives a few hundred streams for about a minute of wall time and
// needs a machine that keeps up with the time scale, so it runs only with
// LLMD_FIDELITY=1 and without the race detector (LLMD_FIDELITY_OUT=DIR
// also writes both instruments' TTFTs there):
//
//	LLMD_FIDELITY=1 go test -count=1 -v -run Fidelity ./test/fidelity
package fidelity_test

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/llmd-kn/llmd-kn/pkg/activator"
	"github.com/llmd-kn/llmd-kn/pkg/bench"
	"github.com/llmd-kn/llmd-kn/pkg/engine"
	"github.com/llmd-kn/llmd-kn/pkg/local"
	"github.com/llmd-kn/llmd-kn/pkg/plan"
	"github.com/llmd-kn/llmd-kn/pkg/vllmsim"
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
	// tolerance is the largest relative TTFT difference allowed where the
	// distribution is steep (see band_test.go for where it is not).
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

// replicas is how many times plan replays the workload with the real
// path's timing noise (see replica), to measure how far a run's quantiles
// move in rank from one run to the next. Plan runs them in about a second.
const replicas = 16

func TestFidelity(t *testing.T) {
	if os.Getenv("LLMD_FIDELITY") == "" {
		t.Skip("set LLMD_FIDELITY=1 to compare local+bench with plan (about a minute of wall time)")
	}
	if raceEnabled {
		t.Skip("the race detector slows the simulated pods below their time scale")
	}
	start := time.Now()
	real := make(map[string]sample)
	lateness := make(map[string][]time.Duration)
	var diffs []time.Duration
	busy := map[string]string{}
	for _, p := range profiles {
		got, d, late, lag, err := runLocal(t, p)
		if why := tooBusy(late, lag); err == nil && why != "" {
			// The generator or the simulated pods could not keep to the
			// time scale: the machine was too busy for this run to
			// measure the path (simulated pods that miss their clock look
			// like queueing). That is a property of the run, known before
			// any comparison, so the run is repeated once; a second busy
			// run is compared as it is, and a disagreement says that the
			// machine was busy.
			t.Logf("%s: %s: the machine is too busy for the time scale; running again once", p, why)
			time.Sleep(5 * time.Second)
			got, d, late, lag, err = runLocal(t, p)
		}
		if err != nil {
			t.Fatalf("%s: local: %v", p, err)
		}
		real[p], lateness[p] = got, late
		busy[p] = tooBusy(late, lag)
		diffs = append(diffs, d...)
	}
	// The real path's overhead: the median of both profiles' probes (the
	// profiles' routing costs differ by microseconds; pooling halves the
	// noise of a 16-probe median, which moved the low quantiles by ±5 %).
	// Its confidence interval is slack in the band: a probe that waited on
	// a busy machine moved the median by 5 ms once, 10 % of a cache hit.
	slices.Sort(diffs)
	ohLo, oh, ohHi := medianCI(diffs)
	oh = max(0, oh)
	slack := max(oh-ohLo, ohHi-oh).Seconds()
	t.Logf("real path overhead %s (modelled time; %s to %s at %g standard deviations; probes %s to %s)",
		oh.Round(100*time.Microsecond), ohLo.Round(100*time.Microsecond), ohHi.Round(100*time.Microsecond), float64(bandZ),
		diffs[0].Round(100*time.Microsecond), diffs[len(diffs)-1].Round(100*time.Microsecond))
	overhead := map[string]time.Duration{}
	for _, p := range profiles {
		overhead[p] = oh
	}
	t.Logf("real time: %s wall", time.Since(start).Round(time.Second))

	// The plan side: the same arrivals as the real run, and the replicas
	// that measure the spread, all after the real runs so that they do not
	// compete with the simulated pods for CPU.
	start = time.Now()
	modelled := make(map[string]sample)
	spread := make(map[string]map[float64]float64)
	for _, p := range profiles {
		got, err := runPlan(p, overhead[p], nil)
		if err != nil {
			t.Fatalf("%s: plan: %v", p, err)
		}
		modelled[p] = got
		reps, err := runReplicas(p, overhead[p], lateness[p])
		if err != nil {
			t.Fatalf("%s: plan: %v", p, err)
		}
		spread[p] = make(map[float64]float64)
		for _, q := range deciles {
			spread[p][q] = rankSpread(reps, q)
		}
	}
	t.Logf("plan: %d runs in %s wall", len(profiles)*(1+replicas), time.Since(start).Round(100*time.Millisecond))
	if dir := os.Getenv("LLMD_FIDELITY_OUT"); dir != "" {
		writeSamples(t, dir, real, modelled)
	}

	for _, p := range profiles {
		for _, q := range deciles {
			a := agree(real[p], modelled[p], q, spread[p][q], tolerance, slack)
			if a.ok() {
				t.Logf("%-12s %v", p, a)
			} else {
				t.Errorf("%-12s %v: TTFT distributions apart (value tolerance %.0f%%, overhead slack %.1f ms, rank spread across replicas %.3f)%s",
					p, a, 100*tolerance, 1000*slack, spread[p][q], busyNote(busy[p]))
			}
		}
	}
	for _, q := range []float64{0.5, 0.9} {
		get := func(s sample) float64 { return s.quantile(q) }
		if a, b := ranking(real, get), ranking(modelled, get); !slices.Equal(a, b) {
			t.Errorf("TTFT p%.0f ranking: local+bench %v, plan %v", 100*q, a, b)
		}
	}
}

// tooLate is the generator's p90 lateness (modelled time) beyond which a
// real run did not keep to its time scale: four times what an idle machine
// shows (under 5 ms of wall time, 10 ms modelled, at the test's scale), far
// below what a machine with ten runnable jobs per core showed (a quarter of
// a second). At 50 ms a run 44.6 ms late (load 8 on two cores: three
// engineers compiling beside it) was compared and failed at default's
// p60-p80 (real 1.4-2.5x plan).
const tooLate = 20 * time.Millisecond

// quantileOf is the q-quantile of xs (nearest rank; 0 when empty).
func quantileOf(xs []time.Duration, q float64) time.Duration {
	if len(xs) == 0 {
		return 0
	}
	s := slices.Clone(xs)
	slices.Sort(s)
	return s[min(len(s)-1, int(q*float64(len(s))))]
}

// podsTooLate is the modelled time a simulated pod's engine clock may drop
// (vllmsim.ClockLag) before the run counts as too busy: each dropped
// millisecond delays every request queued on that pod by as much. Quiet
// runs dropped none, or up to 54 ms on one pod; a run beside a load of 6
// on two cores dropped 130-165 ms per pod under round-robin and put its
// TTFT p90 at the band's edge (real 0.576 s, band up to 0.589 s), with the
// generator on time. The CI failures this check answers were
// round-robin's p90 alone: the profile whose tail is queueing.
const podsTooLate = 100 * time.Millisecond

// tooBusy says why a real run did not keep to its time scale ("" when it
// did): the generator's p90 lateness or a simulated pod's dropped time.
func tooBusy(late []time.Duration, lag vllmsim.ClockLag) string {
	var why []string
	if l := quantileOf(late, 0.9); l > tooLate {
		why = append(why, fmt.Sprintf("the generator ran %s late at p90 (modelled time)", l.Round(time.Millisecond)))
	}
	if lag.Dropped > podsTooLate {
		why = append(why, fmt.Sprintf("a simulated pod's clock dropped %s of modelled time (a step started %s late)",
			lag.Dropped.Round(time.Millisecond), lag.Late.Round(time.Millisecond)))
	}
	return strings.Join(why, "; ")
}

// busyNote says, beside a disagreement, that the real run could not keep
// to its time scale, so that nobody reads it as the router's fault.
func busyNote(why string) string {
	if why == "" {
		return ""
	}
	return "; the real run was too busy twice (" + why + "): the machine was too busy to measure"
}

// ranking orders the profiles from the lowest TTFT to the highest.
func ranking(m map[string]sample, get func(sample) float64) []string {
	r := slices.Clone(profiles)
	sort.SliceStable(r, func(i, j int) bool { return get(m[r[i]]) < get(m[r[j]]) })
	return r
}

// writeSamples saves both instruments' TTFTs (modelled seconds) for
// offline analysis of run-to-run spread.
func writeSamples(t *testing.T, dir string, real, modelled map[string]sample) {
	out := map[string]map[string]sample{"real": real, "plan": modelled}
	b, err := json.Marshal(out)
	if err != nil {
		t.Fatal(err)
	}
	name := filepath.Join(dir, fmt.Sprintf("fidelity-%d.json", time.Now().UnixNano()))
	if err := os.WriteFile(name, b, 0o644); err != nil {
		t.Fatal(err)
	}
}

func openWorkload(s workload.Spec, speedup float64) (*workload.Workload, error) {
	s.Speedup = speedup
	return workload.Open(s, "")
}

// fidelityTiers is the activator's tier table in the real run: the
// default one without its TTFT targets. Plan does not model the activator's
// admission by predicted wait (issue 17: a tier with a TTFT target is sent
// only where it is predicted to start within half of it, under priority
// scheduling, which kn-llmd local's simulated pods use, only to a pod with
// a free slot while one has, and a lower tier keeps room for a higher
// one's next request). With the default table it held requests in the
// activator and left pods with a queue out of round-robin's rotation in
// the first seconds' burst of cache misses (its wait prediction, queued
// requests over a two-second start rate with the places learnt from a
// pod's queue, runs ahead of the pods), and round-robin's TTFT p90 came out
// 1.15-1.48x plan's in about one run in six; the requests sent after the
// first 10 s agreed within 5 ms on average. Without targets no pod is left
// out (overBudget) and nothing is held: both instruments compare routing
// and the engines, not admission.
func fidelityTiers() (*activator.Tiers, error) {
	var kept []string
	for _, l := range strings.Split(activator.DefaultTiersYAML, "\n") {
		if !strings.HasPrefix(strings.TrimSpace(l), "ttft:") {
			kept = append(kept, l)
		}
	}
	return activator.ParseTiers([]byte(strings.Join(kept, "\n")))
}

// runLocal runs the workload through an in-process `kn-llmd local` with
// routing profile p, at the time scale, and returns its TTFTs in modelled
// time, the probes' differences from plan (the real path's overhead, see
// probeSpec) and each request's lateness (modelled time).
func runLocal(t *testing.T, p string) (sample, []time.Duration, []time.Duration, vllmsim.ClockLag, error) {
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
		return nil, nil, nil, vllmsim.ClockLag{}, err
	}
	tiers, err := fidelityTiers()
	if err != nil {
		return nil, nil, nil, vllmsim.ClockLag{}, err
	}
	rt, err := local.New(local.Options{Services: svcs, Tiers: tiers, Addr: "127.0.0.1:0", MetricsAddr: "off",
		SimTimeScale: scale, GracePeriod: 2 * time.Second, DrainTimeout: 5 * time.Second, PodOutput: io.Discard})
	if err != nil {
		return nil, nil, nil, vllmsim.ClockLag{}, err
	}
	defer rt.Close()
	if err := rt.Start(); err != nil {
		return nil, nil, nil, vllmsim.ClockLag{}, err
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	if err := rt.WaitReady(ctx); err != nil {
		return nil, nil, nil, vllmsim.ClockLag{}, err
	}
	pw, err := openWorkload(probeSpec(), 1/scale)
	if err != nil {
		return nil, nil, nil, vllmsim.ClockLag{}, err
	}
	probe, err := bench.Run(ctx, bench.Config{URL: rt.APIURL(), Model: model}, pw.Source())
	if err != nil {
		return nil, nil, nil, vllmsim.ClockLag{}, err
	}
	pp, err := runPlanRecords(p, 0, probeSpec(), nil)
	if err != nil {
		return nil, nil, nil, vllmsim.ClockLag{}, err
	}
	var diffs []time.Duration
	for i, r := range probe.Records {
		if r.Error != "" || i >= len(pp) {
			return nil, nil, nil, vllmsim.ClockLag{}, fmt.Errorf("probe %d failed: %s", i, r.Error)
		}
		diffs = append(diffs, time.Duration(float64(r.TTFT)/scale)-pp[i].TTFT)
	}

	w, err := openWorkload(spec(), 1/scale)
	if err != nil {
		return nil, nil, nil, vllmsim.ClockLag{}, err
	}
	res, err := bench.Run(ctx, bench.Config{URL: rt.APIURL(), Model: model}, w.Source())
	if err != nil {
		return nil, nil, nil, vllmsim.ClockLag{}, err
	}
	sum := bench.Summarize(p, res.Records, bench.SummaryOptions{})
	if n := sum.Requests.Completed; n != w.Len() {
		return nil, nil, nil, vllmsim.ClockLag{}, fmt.Errorf("%d of %d requests completed (errors %v)", n, w.Len(), sum.ErrorExamples)
	}
	if late := sum.LatencySeconds.Lateness.P90; late > 0.005 {
		t.Logf("%s: the generator ran %.1f ms late at p90: the machine is too busy for the time scale", p, 1000*late)
	}
	late := make([]time.Duration, len(res.Records))
	for i, r := range res.Records {
		late[i] = time.Duration(float64(r.Sent-r.Scheduled) / scale)
	}
	return ttfts(res.Records, scale), diffs, late, rt.SimClockLag(), nil
}

// ttfts are the records' TTFTs in modelled seconds (wall time divided by
// the time scale for the real run).
func ttfts(recs []bench.Record, scale float64) sample {
	xs := make([]float64, len(recs))
	for i, r := range recs {
		xs[i] = r.TTFT.Seconds() / scale
	}
	return newSample(xs)
}

// replica is one replay of the workload in plan with the timing noise of
// the real path: its own seed for the router's tie-breaks and the engines'
// sampling, a random phase of the activator's scrape against the arrivals,
// and each arrival late by a draw from the real run's measured lateness.
type replica struct {
	seed     uint64
	lateness []time.Duration
}

// shift returns the arrivals of src moved as the replica says.
func (r *replica) shift(src workload.Source, scrape time.Duration) workload.Source {
	rng := rand.New(rand.NewPCG(r.seed, 0x5eed))
	phase := time.Duration(rng.Int64N(int64(scrape)))
	var reqs []workload.Request
	for {
		q, ok := src.Next()
		if !ok {
			break
		}
		q.At += phase
		if len(r.lateness) > 0 {
			q.At += max(0, r.lateness[rng.IntN(len(r.lateness))])
		}
		reqs = append(reqs, q)
	}
	slices.SortStableFunc(reqs, func(a, b workload.Request) int { return cmp.Compare(a.At, b.At) })
	return workload.Requests(reqs)
}

// runPlan runs the workload through plan with routing profile p, the real
// path's constants in modelled time and the measured overhead per hop, as
// replica rep (nil: the real run's own arrivals), and returns its TTFTs.
func runPlan(p string, overhead time.Duration, rep *replica) (sample, error) {
	recs, err := runPlanRecords(p, overhead, spec(), rep)
	if err != nil {
		return nil, err
	}
	sum := bench.Summarize(p, recs, bench.SummaryOptions{Mode: bench.ModeVirtualTime})
	if n := sum.Requests.Completed; n != len(recs) {
		return nil, fmt.Errorf("%d of %d requests completed", n, len(recs))
	}
	return ttfts(recs, 1), nil
}

// runReplicas runs the replicas, two at a time (plan is single threaded
// and the machine has two cores).
func runReplicas(p string, overhead time.Duration, lateness []time.Duration) ([]sample, error) {
	reps := make([]sample, replicas)
	errs := make([]error, replicas)
	var wg sync.WaitGroup
	sem := make(chan struct{}, 2)
	for i := range replicas {
		wg.Add(1)
		go func() {
			defer wg.Done()
			sem <- struct{}{}
			defer func() { <-sem }()
			reps[i], errs[i] = runPlan(p, overhead, &replica{seed: uint64(i + 1), lateness: lateness})
		}()
	}
	wg.Wait()
	return reps, errors.Join(errs...)
}

func runPlanRecords(p string, overhead time.Duration, s workload.Spec, rep *replica) ([]bench.Record, error) {
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
	// The per-step token budget kn-llmd local chose for its pods (none is
	// in the manifest's args): the same on both sides.
	svcs, err := local.Parse("budget.yaml", []byte(fmt.Sprintf(`apiVersion: serving.knative.dev/v1
kind: Service
metadata: {name: llm}
spec:
  template:
    metadata:
      annotations: {llm-d.ai/sim-profile: %s}
    spec:
      containers:
      - image: vllm/vllm-openai:v0.11.0
        args: [--model, %s]
`, simProfile, model)), local.DefaultVocabulary())
	if err != nil {
		return nil, err
	}
	cfg.Engine.MaxNumBatchedTokens = svcs[0].Engine.MaxNumBatchedTokens
	w, err := openWorkload(s, 1)
	if err != nil {
		return nil, err
	}
	src := w.Source()
	if rep != nil {
		cfg.Seed = rep.seed
		src = rep.shift(src, cfg.ScrapeInterval)
	}
	res, err := plan.Run(context.Background(), cfg, src)
	if err != nil {
		return nil, err
	}
	return res.Records, nil
}
