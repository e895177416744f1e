package autoscaler

import (
	"math"
	"time"

	"github.com/llmd-kn/llmd-kn/pkg/engine"
)

// PrefillCapacity is what one prefill replica sustains under the TTFT
// target.
type PrefillCapacity struct {
	// TokensPerSecond is the uncached prefill tokens/s the replica sustains
	// with TTFT at the percentile under the target: Utilization x
	// Throughput.
	TokensPerSecond float64 `json:"tokensPerSecond"`
	// Throughput is the saturated rate: full token-budget steps of
	// mean-prompt chunks.
	Throughput float64 `json:"throughput"`
	// Latency is one mean prompt's prefill alone (chunked by the token
	// budget), plus its KV transfer to decode when disaggregated.
	Latency time.Duration `json:"latency"`
	// Utilization is the planned fraction of Throughput.
	Utilization float64 `json:"utilization"`
	// Feasible is false when Latency alone exceeds the TTFT target: no
	// number of replicas meets it, and Utilization falls back to the
	// target utilization (throughput planning).
	Feasible bool `json:"feasible"`
}

// DecodeCapacity is what one decode replica sustains under the TPOT target.
type DecodeCapacity struct {
	// Sequences is the largest batch of concurrent sequences whose step
	// time at the mean context stays under the TPOT target, within
	// MaxNumSeqs and the KV capacity.
	Sequences int `json:"sequences"`
	// StepTime is the decode step time at Sequences.
	StepTime time.Duration `json:"stepTime"`
	// TokensPerSecond is the planned output tokens/s: target utilization x
	// Sequences / StepTime.
	TokensPerSecond float64 `json:"tokensPerSecond"`
	// KVLimited is true when the KV capacity, not TPOT, bounds Sequences.
	KVLimited bool `json:"kvLimited"`
	// Feasible is false when even one sequence misses the TPOT target.
	Feasible bool `json:"feasible"`
}

// PrefillLoadFunction computes one replica's prefill capacity for prompts of
// promptTokens of which cachedTokens hit the prefix cache, with step times
// multiplied by correction.
//
// Queueing model: requests arrive as a Poisson stream and each needs
// s = uncached/Throughput seconds of the replica (deterministic service:
// M/D/1). The M/D/1 mean wait is Wq = rho s / (2 (1 - rho)). For the tail we
// use the usual exponential approximation of the conditional wait: a request
// waits with probability rho, and then for an exponential time of mean
// Wq/rho, so P(W > t) = rho exp(-t rho/Wq) and the p-quantile of the wait is
// t_p = s / (2 (1 - rho)) ln(rho / (1 - p)) for rho > 1 - p, else 0.
// TTFT_p ~ t_p + Latency; the planned utilization is the largest rho (at
// most the target utilization) with TTFT_p under the target, found by
// bisection (t_p grows with rho).
func PrefillLoadFunction(p *engine.Profile, cfg *Config, promptTokens, cachedTokens, correction float64) PrefillCapacity {
	uncached := max(1, int(math.Round(promptTokens-cachedTokens)))
	cached := max(0, int(math.Round(cachedTokens)))
	budget := cfg.MaxNumBatchedTokens
	q := min(uncached, budget)
	k := max(1, min(budget/q, cfg.MaxNumSeqs))
	batch := make([]engine.StepInput, k)
	for i := range batch {
		batch[i] = engine.StepInput{Query: q, Context: cached}
	}
	step := p.StepTime(batch).Seconds() * correction
	out := PrefillCapacity{Throughput: float64(k*q) / step}
	var lat float64
	for done := 0; done < uncached; done += budget {
		n := min(budget, uncached-done)
		lat += p.StepTime([]engine.StepInput{{Query: n, Context: cached + done}}).Seconds() * correction
	}
	if cfg.Disaggregated {
		lat += p.TransferTime(uncached + cached).Seconds()
	}
	out.Latency = seconds(lat)
	slack := cfg.SLO.TTFT.Seconds() - lat
	if slack <= 0 {
		out.Utilization = cfg.TargetUtilization
		out.TokensPerSecond = out.Utilization * out.Throughput
		return out
	}
	out.Feasible = true
	s := float64(uncached) / out.Throughput
	tail := 1 - cfg.SLO.Percentile/100
	wait := func(rho float64) float64 {
		if rho <= tail {
			return 0
		}
		return s / (2 * (1 - rho)) * math.Log(rho/tail)
	}
	lo, hi := 0.0, cfg.TargetUtilization
	if wait(hi) <= slack {
		lo = hi
	} else {
		for range 60 {
			mid := (lo + hi) / 2
			if wait(mid) <= slack {
				lo = mid
			} else {
				hi = mid
			}
		}
	}
	out.Utilization = lo
	out.TokensPerSecond = lo * out.Throughput
	return out
}

// DecodeLoadFunction computes one replica's decode capacity at a mean
// context of contextTokens, with step times multiplied by correction: the
// largest batch n of one-token decodes whose step time stays under the
// TPOT target, bounded by MaxNumSeqs and by the KV cache (n x (context+1)
// tokens must fit). Step time grows with n, so a binary search finds it.
func DecodeLoadFunction(p *engine.Profile, cfg *Config, contextTokens, correction float64) DecodeCapacity {
	ctx := max(0, int(math.Round(contextTokens)))
	kvSeqs := p.KVCapacityTokens() / (ctx + 1)
	limit := min(cfg.MaxNumSeqs, kvSeqs)
	out := DecodeCapacity{KVLimited: kvSeqs < cfg.MaxNumSeqs}
	step := func(n int) float64 {
		batch := make([]engine.StepInput, n)
		for i := range batch {
			batch[i] = engine.StepInput{Query: 1, Context: ctx}
		}
		return p.StepTime(batch).Seconds() * correction
	}
	target := cfg.SLO.TPOT.Seconds()
	n := 1
	if limit >= 1 && step(1) <= target {
		out.Feasible = true
		lo, hi := 1, limit // step(lo) <= target
		for lo < hi {
			mid := (lo + hi + 1) / 2
			if step(mid) <= target {
				lo = mid
			} else {
				hi = mid - 1
			}
		}
		n = lo
		if n < limit {
			out.KVLimited = false
		}
	}
	out.Sequences = n
	st := step(n)
	out.StepTime = seconds(st)
	out.TokensPerSecond = cfg.TargetUtilization * float64(n) / st
	return out
}

func seconds(s float64) time.Duration { return time.Duration(s * float64(time.Second)) }
