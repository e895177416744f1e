package plan

import (
	"errors"
	"fmt"
	"math"
	"time"

	"github.com/llmd-kn/llmd-kn/pkg/autoscaler"
	"github.com/llmd-kn/llmd-kn/pkg/bench"
	"github.com/llmd-kn/llmd-kn/pkg/engine"
)

// LowerBound (the "instant bound") is the offline optimum of an
// autoscaler that knows the whole trace and whose replicas start and stop
// instantly, scale-to-zero grace included: per window, the fewest replicas whose load functions (the SLO
// decider's, pkg/autoscaler) cover the load that arrived in the window,
// with no cold start and no hysteresis. No online policy that plans with
// the same load functions provisions less.
type LowerBound struct {
	Window time.Duration `json:"window"`
	// Replicas has one count per window, from time 0.
	Replicas []int `json:"replicas"`
	// ReplicaSeconds sums the counts times the window; GPUSeconds
	// multiplies by the accelerators per replica.
	ReplicaSeconds float64 `json:"replicaSeconds"`
	GPUSeconds     float64 `json:"gpuSeconds"`
	Peak           int     `json:"peak"`
	// ScaleEvents counts the windows whose count differs from the previous
	// window's.
	ScaleEvents int `json:"scaleEvents"`
	// End is the end of the last window (the last answer).
	End time.Duration `json:"end"`
}

// ComputeLowerBound computes the lower bound of a run's records for
// engines of profile prof planned with the decider configuration a (SLO,
// batch limits, target utilization). A window's load is the uncached
// prompt tokens of the requests that arrived in it (cached as the run found
// them) and the output tokens generated in it (each request's spread evenly
// from its first token to its end); the window ends with the last answer.
// A deployment without P/D is assumed: one replica time-shares prefill and
// decode, so the two roles' fractions add, as the decider counts them, and
// a window needs at least the replicas whose decodes meet the TPOT target
// with the window's prefill chunks among them (autoscaler.ColocatedNeed).
func ComputeLowerBound(recs []bench.Record, a autoscaler.Config, prof engine.Profile, window time.Duration) (LowerBound, error) {
	lb := LowerBound{Window: window}
	if window <= 0 {
		return lb, fmt.Errorf("lower bound: window must be positive, got %s", window)
	}
	if a.Disaggregated {
		return lb, errors.New("lower bound: only for deployments without P/D")
	}
	if err := a.Validate(); err != nil {
		return lb, fmt.Errorf("lower bound: %w", err)
	}
	type load struct {
		n                      int
		prompt, cached, output float64 // of the requests that arrived
		decode                 float64 // output tokens generated in the window
		sec                    float64 // the window's length (the last one is cut)
	}
	var loads []load
	at := func(k int) *load {
		for len(loads) <= k {
			loads = append(loads, load{sec: window.Seconds()})
		}
		return &loads[k]
	}
	var end time.Duration
	for i := range recs {
		r := &recs[i]
		if r.Scheduled < 0 {
			continue
		}
		prompt, cached, output := r.PromptLen, 0, r.MaxTokens
		if r.HasUsage {
			prompt, cached, output = r.PromptTokens, min(r.CachedTokens, r.PromptTokens), r.CompletionTokens
		}
		l := at(int(r.Scheduled / window))
		l.n++
		l.prompt += float64(prompt)
		l.cached += float64(cached)
		l.output += float64(output)
		// Output tokens are generated from the first token to the end, at
		// an even pace; a request that did not finish counts at arrival.
		from, to := r.Scheduled+r.TTFT, r.Scheduled+r.E2E
		end = max(end, r.Scheduled, to)
		if !r.OK() || r.TTFT <= 0 || to <= from {
			l.decode += float64(output)
			continue
		}
		per := float64(output) / (to - from).Seconds()
		for k := int(from / window); time.Duration(k)*window < to; k++ {
			lo, hi := max(from, time.Duration(k)*window), min(to, time.Duration(k+1)*window)
			at(k).decode += per * (hi - lo).Seconds()
		}
	}
	lb.End = end
	if n := len(loads); n > 0 {
		if cut := (end - time.Duration(n-1)*window).Seconds(); cut > 0 && cut < loads[n-1].sec {
			loads[n-1].sec = cut
		}
	}
	lb.Replicas = make([]int, len(loads))
	prompt, cached, output := float64(a.AssumedPromptTokens), 0.0, float64(a.AssumedOutputTokens)
	for k, l := range loads {
		if l.n > 0 {
			n := float64(l.n)
			prompt, cached, output = l.prompt/n, l.cached/n, l.output/n
		}
		if l.n == 0 && l.decode == 0 {
			continue
		}
		pc := autoscaler.PrefillLoadFunction(&prof, &a, prompt, cached, 1)
		dc := autoscaler.DecodeLoadFunction(&prof, &a, prompt+output/2, 1)
		prefillRate, outputRate := (l.prompt-l.cached)/l.sec, l.decode/l.sec
		need := prefillRate/pc.TokensPerSecond + outputRate/dc.TokensPerSecond
		// Prefill chunks slow the co-located decodes: at least the replicas
		// that keep TPOT under the target at the percentile.
		shape := autoscaler.Shape{Prompt: prompt, Cached: cached, Output: output}
		need = max(need, autoscaler.ColocatedNeed(&prof, &a, shape, prefillRate, outputRate, 1))
		lb.Replicas[k] = max(1, int(math.Ceil(need-1e-9)))
	}
	prev := 0
	for k, c := range lb.Replicas {
		lb.ReplicaSeconds += float64(c) * loads[k].sec
		lb.Peak = max(lb.Peak, c)
		if c != prev {
			lb.ScaleEvents++
		}
		prev = c
	}
	lb.GPUSeconds = lb.ReplicaSeconds * float64(max(prof.Accelerator.Count, 1))
	return lb, nil
}
