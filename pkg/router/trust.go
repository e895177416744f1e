package router

import "math"

// Never worse than approximate. The precise index is only as good as the
// token ids the router hashes: an engine that tokenizes differently (another
// tokenizer, another chat template) publishes blocks no request ever
// matches, and an index that trusted it would predict no hits where the
// approximate index, which remembers what the router itself sent, predicts
// them. So each endpoint's predictions are checked against what its engine
// reports cached (usage.prompt_tokens_details.cached_tokens): a recent mean
// absolute error per index, beyond one block of rounding, and decisions read
// the precise index for an endpoint only while its error is not clearly
// worse than the approximate index's. Until enough answers have been seen,
// a decision takes the larger of the two predictions: a hit either index
// knows of is likely real, and a wrong guess costs one request.

const (
	// trustMinObs is how many comparisons precede a verdict.
	trustMinObs = 8
	// trustAlpha weighs the newest comparison in the error averages.
	trustAlpha = 1.0 / 8
)

type trustState struct {
	n              int64
	preErr, apxErr float64
	distrusted     bool
}

// Observation is one request's predictions for its decode endpoint and the
// engine's answer. A prediction is -1 when the decision did not make it.
type Observation struct {
	PreciseHitTokens, ApproxHitTokens int
	// CachedTokens is usage.prompt_tokens_details.cached_tokens.
	CachedTokens int
}

// verdict is what an endpoint's precise predictions are worth.
type verdict uint8

const (
	verdictUnknown verdict = iota // too few comparisons yet
	verdictTrusted
	verdictDistrusted
)

func (t *trustState) verdict() verdict {
	switch {
	case t.distrusted:
		return verdictDistrusted
	case t.n < trustMinObs:
		return verdictUnknown
	}
	return verdictTrusted
}

// observe folds in one comparison; slackP and slackA are the two indexes'
// block sizes (a prediction is a whole number of blocks, the engine's answer
// is not). It reports whether the verdict flipped.
func (t *trustState) observe(o Observation, slackP, slackA int) (flipped bool) {
	if o.PreciseHitTokens < 0 || o.CachedTokens < 0 {
		return false
	}
	ewma := func(avg float64, pred, slack int) float64 {
		e := math.Max(math.Abs(float64(pred-o.CachedTokens))-float64(slack), 0)
		if t.n == 0 {
			return e
		}
		return avg + trustAlpha*(e-avg)
	}
	t.preErr = ewma(t.preErr, o.PreciseHitTokens, slackP)
	if o.ApproxHitTokens >= 0 {
		t.apxErr = ewma(t.apxErr, o.ApproxHitTokens, slackA)
	} else {
		// Nothing to fall back to: only the precise index's own error.
		t.apxErr = math.Inf(1)
	}
	t.n++
	if t.n < trustMinObs {
		return false
	}
	tol := float64(2 * max(slackP, slackA))
	was := t.distrusted
	switch {
	case !t.distrusted && t.preErr > t.apxErr+tol:
		t.distrusted = true
	case t.distrusted && t.preErr <= t.apxErr+tol/2:
		t.distrusted = false
	}
	return was != t.distrusted
}

// Observe checks a decision's predictions for its decode endpoint against
// the cached tokens the engine reported, and reports whether the endpoint's
// precise index just became distrusted (or trusted again), so the caller
// can say so once. Call it when a request's usage arrives.
func (r *Router) Observe(endpointID string, o Observation) (flipped, trusted bool) {
	s := r.slot(endpointID)
	p := &r.precise
	r.whileMapped(endpointID, s, func() {
		p.mu.Lock()
		e := p.endpoint(s)
		flipped = e.trust.observe(o, p.blockSize, r.approxBlock())
		trusted = !e.trust.distrusted
		p.mu.Unlock()
	})
	return flipped, trusted
}

// approxBlock is the approximate index's block size for a request to
// endpoints of the precise index's block size.
func (r *Router) approxBlock() int {
	return max(r.cfg.ApproximateIndex.BlockSize, r.cfg.PreciseIndex.BlockSize)
}
