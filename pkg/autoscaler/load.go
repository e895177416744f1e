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
	budget := cfg.prefillBudget()
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

// Shape is a mean request: prompt tokens, those of them served from the
// prefix cache, output tokens, and the mean context of a decoding sequence
// (zero means Prompt + Output/2).
type Shape struct {
	Prompt  float64 `json:"prompt"`
	Cached  float64 `json:"cached"`
	Output  float64 `json:"output"`
	Context float64 `json:"context"`
}

func (s Shape) context() float64 {
	if s.Context > 0 {
		return s.Context
	}
	return s.Prompt + s.Output/2
}

// ColocatedTPOT is the TPOT that the decodes of one replica see while the
// same replica prefills (no P/D): with chunked prefill every step carries
// the running decodes, and a step that also carries a prefill chunk takes
// MixedStep instead of DecodeStep. See PredictColocatedTPOT.
type ColocatedTPOT struct {
	// Batch is the mean number of decoding sequences (Little's law: output
	// tokens/s x the mean step time).
	Batch float64 `json:"batch"`
	// Chunk is the mean prefill tokens of a mixed step.
	Chunk int `json:"chunk"`
	// DecodeStep and MixedStep are the step times without and with a
	// prefill chunk at Batch.
	DecodeStep time.Duration `json:"decodeStep"`
	MixedStep  time.Duration `json:"mixedStep"`
	// Busy is the share of time in mixed steps; MixedFraction the share of
	// a decoding sequence's steps that are mixed.
	Busy          float64 `json:"busy"`
	MixedFraction float64 `json:"mixedFraction"`
	// Mean is the mean TPOT over requests with two or more output tokens;
	// Quantile the TPOT at the SLO percentile over all requests (a request
	// with one output token has none and meets any target); Miss the share
	// of requests whose TPOT exceeds the target.
	Mean     time.Duration `json:"mean"`
	Quantile time.Duration `json:"quantile"`
	Miss     float64       `json:"miss"`
	// Feasible is false when the prefill load alone keeps the replica
	// busy or the decodes overflow the batch limits; Miss is then 1.
	Feasible bool `json:"feasible"`
}

// PredictColocatedTPOT predicts the TPOT of one co-located replica that
// receives prefillRate uncached prompt tokens/s and generates outputRate
// tokens/s, for requests of the given mean shape, with step times (the
// profile's roofline, as the simulator uses) multiplied by correction.
//
// Model. Prompts of u = Prompt - Cached uncached tokens arrive as a
// Poisson stream of rate lambda = prefillRate/u; each needs s = ceil(u /
// room) chunks, room being the token budget left by the decodes. Which
// steps carry a chunk is a two-state Markov chain: after a mixed step
// (MixedStep long) the next one is mixed when the prompt has chunks left
// (probability 1 - 1/s) or a prompt arrived during it (1 - exp(-lambda
// MixedStep)); after a decode step when a prompt arrived during it (1 -
// exp(-lambda DecodeStep)). A mixed step's chunk is the prompts that
// arrived during the previous step, (u/s) lambda T / (1 - exp(-lambda T))
// (at least one prompt's chunk), within room (a fixed point in MixedStep). A request's
// token intervals start right after its own prefill, a mixed step, so its
// first intervals are mixed more often than the average: that is the tail
// short answers see. Output lengths are geometric with the mean Output;
// a request with k intervals, X of them mixed, has TPOT DecodeStep +
// (MixedStep - DecodeStep) X/k. The decode batch is outputRate times the
// mean step time (a second fixed point).
func PredictColocatedTPOT(p *engine.Profile, cfg *Config, s Shape, prefillRate, outputRate, correction float64) ColocatedTPOT {
	return newStepModel(p, s, correction).predict(cfg, s, prefillRate, outputRate, true)
}

// predict is PredictColocatedTPOT on steps' step times; Mean and Quantile
// are left zero unless full is set.
func (steps *stepModel) predict(cfg *Config, s Shape, prefillRate, outputRate float64, full bool) ColocatedTPOT {
	prefillRate, outputRate = max(prefillRate, 0), max(outputRate, 0)
	u := max(1, s.Prompt-s.Cached)
	budget := cfg.MaxNumBatchedTokens
	limit := max(1, min(cfg.MaxNumSeqs, steps.p.KVCapacityTokens()/(steps.ctx+1)))
	lambda := prefillRate / u

	out := ColocatedTPOT{Feasible: true}
	var ch chain
	n := 1.0
	var q float64
	for range 30 {
		seqs := max(1, int(math.Ceil(n-1e-9)))
		if seqs > limit {
			out.Feasible = false
			seqs = limit
		}
		ch.td = steps.decode(seqs)
		room := float64(max(1, budget-seqs))
		chunks := math.Ceil(u / room)
		// The chunk: the prompts that arrived during the previous mixed
		// step (at least one), within room; a prompt longer than room
		// comes in chunks of u/chunks on average.
		base := u / chunks
		q = base
		for range 20 {
			ch.tm = steps.mixed(seqs, int(math.Round(q)))
			next := min(room, base*arrivedGivenOne(lambda*ch.tm))
			done := math.Abs(next-q) < 0.5
			q = next
			if done {
				break
			}
		}
		ch.tm = steps.mixed(seqs, int(math.Round(q)))
		out.Busy = prefillRate / q * ch.tm
		if out.Busy >= 1 {
			out.Feasible = false
			break
		}
		// A run of mixed steps is a busy period of the prefill queue: at
		// least 1/(1 - Busy) prompts of chunks steps each (M/G/1), or
		// the chunks left plus an arrival during the step.
		ch.a = 1 - math.Min(math.Exp(-lambda*ch.tm), 1-out.Busy)/chunks
		ch.b = 1 - math.Exp(-lambda*ch.td)
		if prefillRate == 0 {
			ch.a, ch.b = 0, 0
		}
		next := outputRate * ch.meanStep()
		stop := math.Abs(next-n) < 1e-3*max(n, 1)
		n = next
		if n > float64(limit) {
			n = float64(limit)
			out.Feasible = false
		}
		if stop {
			break
		}
	}
	out.Batch = n
	out.Chunk = int(math.Round(q))
	out.DecodeStep, out.MixedStep = seconds(ch.td), seconds(ch.tm)
	ch.output = max(1, s.Output)
	if !out.Feasible {
		slow := math.Min(math.Max(ch.tm, ch.td), 3600)
		out.Mean, out.Quantile, out.Miss, out.MixedFraction = seconds(slow), seconds(slow), 1, 1
		return out
	}
	out.MixedFraction = ch.stationary()
	out.Busy = out.MixedFraction * ch.tm / ch.meanStep()
	out.Miss = ch.over(cfg.SLO.TPOT.Seconds())
	if !full {
		return out
	}
	out.Mean = seconds(ch.meanTPOT())
	// The quantile: the smallest t with P(TPOT > t) <= tail, between the
	// decode step and the mixed step.
	tail := 1 - cfg.SLO.Percentile/100
	lo, hi := ch.td, math.Max(ch.tm, ch.td)
	if ch.over(lo) <= tail {
		hi = lo
	} else {
		for range 40 {
			mid := (lo + hi) / 2
			if ch.over(mid) <= tail {
				hi = mid
			} else {
				lo = mid
			}
		}
	}
	out.Quantile = seconds(hi)
	return out
}

// arrivedGivenOne is the mean of a Poisson count of mean m given that it
// is at least one (1 at m = 0).
func arrivedGivenOne(m float64) float64 {
	if m < 1e-9 {
		return 1
	}
	return m / -math.Expm1(-m)
}

// ColocatedNeed is the replicas (fractional) among which prefillRate and
// outputRate must be spread for the co-located replicas' TPOT to meet the
// target at the SLO percentile (PredictColocatedTPOT's Miss at most
// 1 - percentile): the TPOT side of prefill/decode interference. It is 0
// with no load, and 0 when even a lone decode misses the target (no
// number of replicas helps; DecodeLoadFunction reports it infeasible).
func ColocatedNeed(p *engine.Profile, cfg *Config, s Shape, prefillRate, outputRate, correction float64) float64 {
	if prefillRate <= 0 && outputRate <= 0 || math.IsNaN(prefillRate) || math.IsNaN(outputRate) ||
		math.IsInf(prefillRate, 0) || math.IsInf(outputRate, 0) {
		return 0
	}
	tail := 1 - cfg.SLO.Percentile/100
	steps := newStepModel(p, s, correction)
	ok := func(r float64) bool {
		t := steps.predict(cfg, s, prefillRate/r, outputRate/r, false)
		return t.Feasible && t.Miss <= tail
	}
	hi := 1.0
	for !ok(hi) {
		if hi >= maxRequired {
			return 0
		}
		hi *= 2
	}
	lo := 0.0
	if hi > 1 {
		lo = hi / 2
	}
	for range 24 {
		mid := (lo + hi) / 2
		if ok(mid) {
			hi = mid
		} else {
			lo = mid
		}
	}
	return hi
}

// stepModel evaluates the profile's step time for n decodes at context ctx,
// alone or with one prefill chunk after cached prompt tokens, times corr;
// it remembers what it computed (a search evaluates the same batches
// often).
type stepModel struct {
	p           *engine.Profile
	ctx, cached int
	corr        float64
	batch       []engine.StepInput
	memo        map[[2]int]float64
}

func newStepModel(p *engine.Profile, s Shape, correction float64) *stepModel {
	if correction <= 0 || math.IsNaN(correction) || math.IsInf(correction, 0) {
		correction = 1
	}
	return &stepModel{p: p, ctx: max(0, int(math.Round(s.context()))), cached: max(0, int(math.Round(s.Cached))),
		corr: correction, memo: map[[2]int]float64{}}
}

func (m *stepModel) decode(n int) float64 { return m.mixed(n, 0) }

func (m *stepModel) mixed(n, chunk int) float64 {
	if t, ok := m.memo[[2]int{n, chunk}]; ok {
		return t
	}
	t := m.step(n, chunk)
	m.memo[[2]int{n, chunk}] = t
	return t
}

func (m *stepModel) step(n, chunk int) float64 {
	m.batch = m.batch[:0]
	for range n {
		m.batch = append(m.batch, engine.StepInput{Query: 1, Context: m.ctx})
	}
	if chunk > 0 {
		m.batch = append(m.batch, engine.StepInput{Query: chunk, Context: m.cached})
	}
	return m.p.StepTime(m.batch).Seconds() * m.corr
}

// chain is the mixed/decode step chain a decoding sequence sees: a step
// after a mixed one is mixed with probability a, after a decode step with
// probability b; mixed steps take tm, decode steps td. Output lengths are
// geometric with mean output; a request's intervals follow its own
// prefill step (mixed).
type chain struct {
	td, tm, a, b, output float64
}

// exactSteps is how many intervals the TPOT distribution follows exactly;
// longer answers use a normal approximation of the mixed-step count.
const exactSteps = 64

func (c *chain) stationary() float64 {
	if c.b <= 0 {
		return 0
	}
	return c.b / (1 - c.a + c.b)
}

// meanStep is the mean step time a decoding sequence sees.
func (c *chain) meanStep() float64 {
	pi := c.stationary()
	return pi*c.tm + (1-pi)*c.td
}

// mixedAfterMixed is E[X_k] for X_k the mixed steps among the k after a
// mixed one: k pi + (1 - pi) rho (1 - rho^k) / (1 - rho), rho = a - b.
func (c *chain) mixedAfterMixed(k float64) float64 {
	pi, rho := c.stationary(), c.a-c.b
	if rho >= 1 {
		return k
	}
	return k*pi + (1-pi)*rho*(1-math.Pow(rho, k))/(1-rho)
}

// meanTPOT is the mean TPOT over requests with two or more tokens.
func (c *chain) meanTPOT() float64 {
	r := 1 / c.output
	pi, rho := c.stationary(), c.a-c.b
	var sum, w float64
	wk, rk := r, 1.0
	for k := 1; k <= 1<<24; k++ {
		wk *= 1 - r
		rk *= rho
		if wk < 1e-9 {
			break
		}
		// E[X_k] / k, as mixedAfterMixed.
		e := pi
		if rho < 1 {
			e += (1 - pi) * rho * (1 - rk) / (1 - rho) / float64(k)
		} else {
			e = 1
		}
		sum += wk * e
		w += wk
	}
	if w == 0 {
		return c.td
	}
	return c.td + (c.tm-c.td)*sum/w
}

// over is the share of requests whose TPOT exceeds t.
func (c *chain) over(t float64) float64 {
	if c.tm <= t && c.td <= t {
		return 0
	}
	r := 1 / c.output // P(length = l) = r (1-r)^(l-1), l >= 1
	if c.td > t {
		return 1 - r // every request with an interval misses
	}
	theta := (t - c.td) / (c.tm - c.td) // TPOT > t <=> X > k theta
	// f[j][0|1]: probability of j mixed steps so far, now in a decode (0)
	// or mixed (1) step; it starts in the request's own prefill step.
	var f, g [exactSteps + 1][2]float64
	f[0][1] = 1
	var miss float64
	wk := r
	for k := 1; k <= exactSteps; k++ {
		wk *= 1 - r // P(length = k+1)
		g = [exactSteps + 1][2]float64{}
		for j := 0; j < k; j++ {
			g[j][0] += f[j][0]*(1-c.b) + f[j][1]*(1-c.a)
			g[j+1][1] += f[j][0]*c.b + f[j][1]*c.a
		}
		f = g
		var over float64
		for j := int(math.Floor(float64(k)*theta+1e-9)) + 1; j <= k; j++ {
			over += f[j][0] + f[j][1]
		}
		miss += wk * over
	}
	// Longer answers: a normal approximation of X_k, in bins of k about
	// 3% wide, each weighted by its lengths' probability.
	pi, rho := c.stationary(), c.a-c.b
	for k := exactSteps + 1; ; {
		hi := k + max(1, k/32)
		w := math.Pow(1-r, float64(k)) - math.Pow(1-r, float64(hi)) // P(k < length <= hi)
		if math.Pow(1-r, float64(k)) < 1e-9 || k > 1<<24 {
			break
		}
		mid := float64(k+hi-1) / 2
		x := math.Floor(mid*theta + 1e-9)
		mu := c.mixedAfterMixed(mid)
		v := mid * pi * (1 - pi)
		if rho > -1 && rho < 1 {
			v *= (1 + rho) / (1 - rho)
		}
		switch {
		case v > 0:
			miss += w * 0.5 * math.Erfc((x+0.5-mu)/math.Sqrt(2*v))
		case mu > x:
			miss += w
		}
		k = hi
	}
	return math.Min(miss, 1)
}

// BurstHeadroom is the factor by which a load of rate arrivals/s is
// scaled so that it covers the arrivals of the next horizon at the SLO
// percentile rather than on average: with N = rate x horizon arrivals
// expected (Poisson), the p-quantile is about N + z_p sqrt(N) (the normal
// approximation, z_p the standard normal quantile), so the factor is 1 +
// z_p / sqrt(N), at most 1 + z_p (one arrival expected, or fewer: the
// replica a single request needs is there anyway). It is 1 with no
// horizon, no rate, or a percentile at or below the median.
//
// This is where the percentile acts at the loads the published traces
// have: the queueing tail of PrefillLoadFunction is far inside a TTFT
// target of seconds, and the colocated TPOT model's tail inside a chunk
// budget chosen for the TPOT target, so at p90 and p99 both plan the same
// replicas; what the percentile buys is headroom against the burst that
// arrives while a new replica cold-starts.
func BurstHeadroom(rate float64, horizon time.Duration, percentile float64) float64 {
	n := rate * horizon.Seconds()
	if !(n > 0) || math.IsInf(n, 0) || !(percentile > 50 && percentile < 100) {
		return 1
	}
	z := math.Sqrt2 * math.Erfinv(2*percentile/100-1)
	return 1 + z/math.Sqrt(max(n, 1))
}
