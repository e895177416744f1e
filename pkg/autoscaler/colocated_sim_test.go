package autoscaler

import (
	"math"
	"math/rand/v2"
	"sort"
	"strconv"
	"time"

	"github.com/llmd-kn/llmd-kn/pkg/engine"
)

// colocatedRun is what simulateColocated measured.
type colocatedRun struct {
	requests                    int
	meanTPOT, p90TPOT           time.Duration
	miss                        float64 // share of requests with TPOT over the target
	prefillTokens, outputTokens float64 // per second of the run
}

// simulateColocated drives one pkg/engine replica (the simulator's engine
// model) in virtual time with Poisson arrivals at rate requests/s: each
// prompt is a shared prefix of s.Cached tokens (a prefix-cache hit after
// the first) and s.Prompt-s.Cached tokens of its own; output lengths are
// geometric with mean s.Output (exactly that many tokens). TPOT is
// (last token - first token) / (tokens - 1), as pkg/bench measures it;
// one-token answers have none and meet any target.
func simulateColocated(p engine.Profile, cfg *Config, s Shape, rate float64, d time.Duration, seed uint64) (colocatedRun, error) {
	e, err := engine.New(engine.Config{Profile: p, MaxNumSeqs: cfg.MaxNumSeqs, MaxNumBatchedTokens: cfg.MaxNumBatchedTokens,
		DisableKVEvents: true, Seed: seed})
	if err != nil {
		return colocatedRun{}, err
	}
	rng := rand.New(rand.NewPCG(seed, 7))
	prefix := make([]uint32, int(s.Cached))
	for i := range prefix {
		prefix[i] = uint32(1000 + i)
	}
	type req struct {
		first, last time.Time
		n           int
	}
	reqs := map[string]*req{}
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	now, end := t0, t0.Add(d)
	next := now.Add(time.Duration(rng.ExpFloat64() / rate * float64(time.Second)))
	var tpots []float64
	var ended, misses int
	var prefill, output float64
	for id := 0; now.Before(end) || len(reqs) > 0; {
		for now.Before(end) && !next.After(now) {
			prompt := append(append(make([]uint32, 0, int(s.Prompt)), prefix...), make([]uint32, int(s.Prompt-s.Cached))...)
			for i := len(prefix); i < len(prompt); i++ {
				prompt[i] = uint32(rng.IntN(100000) + 200000)
			}
			out := 1 + int(math.Floor(math.Log(1-rng.Float64())/math.Log(1-1/s.Output)))
			key := strconv.Itoa(id)
			id++
			if err := e.Add(now, engine.Request{ID: key, Prompt: prompt, MaxTokens: out, IgnoreEOS: true}); err != nil {
				return colocatedRun{}, err
			}
			reqs[key] = &req{}
			next = next.Add(time.Duration(rng.ExpFloat64() / rate * float64(time.Second)))
		}
		res := e.Step(now)
		if res.Idle {
			if !now.Before(end) {
				break
			}
			now = next
			continue
		}
		now = now.Add(res.Duration)
		for _, o := range res.Outputs {
			r := reqs[o.ID]
			if r == nil {
				continue
			}
			if o.FirstToken {
				r.first = now
				prefill += float64(o.PromptTokens - o.CachedTokens)
			}
			r.last, r.n = now, o.NumOutput
			if o.Finished {
				delete(reqs, o.ID)
				output += float64(r.n)
				ended++
				tpot := 0.0
				if r.n > 1 {
					tpot = r.last.Sub(r.first).Seconds() / float64(r.n-1)
					tpots = append(tpots, tpot)
				}
				if tpot > cfg.SLO.TPOT.Seconds() {
					misses++
				}
			}
		}
	}
	run := colocatedRun{requests: ended, miss: float64(misses) / float64(max(ended, 1)),
		prefillTokens: prefill / d.Seconds(), outputTokens: output / d.Seconds()}
	if len(tpots) > 0 {
		var sum float64
		for _, x := range tpots {
			sum += x
		}
		run.meanTPOT = seconds(sum / float64(len(tpots)))
		// The percentile over requests, one-token answers (TPOT 0) included.
		all := append(tpots, make([]float64, ended-len(tpots))...)
		sort.Float64s(all)
		run.p90TPOT = seconds(all[min(len(all)-1, int(math.Ceil(cfg.SLO.Percentile/100*float64(len(all))))-1)])
	}
	return run, nil
}
