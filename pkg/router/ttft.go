package router

import (
	"math"

	"github.com/llmd-kn/llmd-kn/pkg/engine"
)

// ttftCost predicts each endpoint's time to first token for this request
// and scores min(TTFT)/TTFT, so the fastest endpoint scores 1 and one twice
// as slow 0.5. The model is vLLM's scheduler seen from outside:
//
//   - Ahead of the request are Q prompt tokens still to prefill: the
//     router's own in-flight prefill work (InFlightTokens), or, when the
//     engine reports more waiting requests than that explains (traffic from
//     elsewhere), waiting × waitingRequestTokens.
//   - The request adds U = prompt − predicted cached tokens (precise index
//     where it has data for the endpoint, else approximate).
//   - Each step has a budget of B tokens (max_num_batched_tokens), of which
//     the R running sequences take one each for decode, so Q+U tokens need
//     n = ceil((Q+U)/(B−R)) steps.
//   - Those steps cost the larger of compute, (Q + U + n·R)/prefill rate plus
//     attention's quadratic part a·U·(cached + U/2) for this request, and
//     memory, n steps of at least the current step time (weights and the
//     running batch's KV are read every step).
//   - Predicted cached tokens that are not in the endpoint's GPU cache
//     (its CPU or disk tier, shared storage) add their load time (tiers.go).
//   - A prefill endpoint in a disaggregated request adds the KV transfer of
//     the tokens the decode endpoint does not hold.
//
// Stale endpoints keep their last scraped load but never less than the
// router's own accounting: unknown is not idle.
type ttftCost struct {
	fallback      Rates
	waitingTokens int
	tiers         TierCosts
}

func (*ttftCost) usesPrefix() (bool, bool) { return true, true }

func (s *ttftCost) score(c *cycle, cands []int, out []float64) {
	best := math.Inf(1)
	for k, i := range cands {
		t := s.predict(c, i)
		c.ttft[i] = t
		out[k] = t
		best = min(best, t)
	}
	for k := range cands {
		if out[k] > 0 {
			out[k] = best / out[k]
		} else {
			out[k] = 1
		}
	}
	c.ttftOK = c.stage == stageDecode
}

// predict returns endpoint i's predicted TTFT in seconds.
func (s *ttftCost) predict(c *cycle, i int) float64 {
	e := &c.eps[i]
	r := e.Rates.withDefaults(s.fallback)
	hit, usedTiers := c.hit(i)
	u := float64(max(c.prompt-hit, 1))
	q := float64(e.InFlightTokens)
	if w := float64(e.Waiting) * float64(s.waitingTokens); w > q {
		q = w
	}
	run := float64(e.Running)
	if e.Stale {
		run = max(run, float64(e.InFlight))
	}
	perStep := max(float64(r.MaxBatchedTokens)-run, 1)
	steps := math.Ceil((q + u) / perStep)
	compute := (q+u+steps*run)/r.PrefillTokensPerSecond + r.AttentionSecondsPerTokenPair*u*(float64(hit)+u/2)
	t := max(compute, steps*r.StepSeconds)
	if usedTiers {
		// Blocks from CPU, disk or storage load before the prefill runs.
		t += c.loadSeconds(i, &s.tiers)
	}
	if c.stage == stagePrefill && r.KVTransferTokensPerSecond > 0 {
		t += float64(max(c.prompt-c.decodeHit, 0)) / r.KVTransferTokensPerSecond
	}
	return t
}

func (r Rates) withDefaults(d Rates) Rates {
	if !(r.PrefillTokensPerSecond > 0) {
		r.PrefillTokensPerSecond = d.PrefillTokensPerSecond
	}
	if !(r.AttentionSecondsPerTokenPair > 0) {
		r.AttentionSecondsPerTokenPair = d.AttentionSecondsPerTokenPair
	}
	if !(r.StepSeconds > 0) {
		r.StepSeconds = d.StepSeconds
	}
	if r.MaxBatchedTokens <= 0 {
		r.MaxBatchedTokens = d.MaxBatchedTokens
	}
	if !(r.KVTransferTokensPerSecond > 0) {
		r.KVTransferTokensPerSecond = d.KVTransferTokensPerSecond
	}
	return r
}

// DefaultMaxBatchedTokens is vLLM's default per-step token budget.
const DefaultMaxBatchedTokens = 8192

// RatesFromProfile derives an engine's rates from its roofline profile, the
// same model pkg/engine steps with: dense prefill at 2·params FLOPs per
// token and attention at 4·layers·heads·headDim FLOPs per (token, context
// token) pair, both at peak·MFU; the step time of running sequences of
// meanContext tokens each (one sequence if running is 0); KV transfer at the
// profile's link bandwidth. maxBatchedTokens 0 means vLLM's 8192.
func RatesFromProfile(p *engine.Profile, maxBatchedTokens, running, meanContext int) Rates {
	m := p.Model
	flops := p.Accelerator.PeakFlops * float64(p.Accelerator.Count) * p.MFU
	batch := make([]engine.StepInput, max(running, 1))
	for i := range batch {
		batch[i] = engine.StepInput{Query: 1, Context: meanContext}
	}
	if maxBatchedTokens <= 0 {
		maxBatchedTokens = DefaultMaxBatchedTokens
	}
	r := Rates{
		PrefillTokensPerSecond:       flops / (2 * m.Params),
		AttentionSecondsPerTokenPair: 4 * float64(m.Layers*m.AttentionHeads*m.HeadDim) / flops,
		StepSeconds:                  p.StepTime(batch).Seconds(),
		MaxBatchedTokens:             maxBatchedTokens,
	}
	if kv := p.KVBytesPerToken(); kv > 0 {
		r.KVTransferTokensPerSecond = p.KVLinkBandwidth / kv
	}
	return r
}
