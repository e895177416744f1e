package fidelity_test

import (
	"cmp"
	"fmt"
	"math"
	"slices"
	"testing"
)

// The agreement criterion, kept apart from the runs so that it can be
// tested on its own (TestBand* below run in every `make test`).
//
// Why not "p50 within 15 %": on a shared-prefix workload under round-robin,
// about half of the requests find their system prompt cached on the pod
// they land on (TTFT ≈ 0.06 s) and half do not (≈ 0.27 s). The p50 falls in
// the gap between the two modes, where moving the rank by two requests in a
// hundred moves the value by 20–50 %: across workload seeds the plan's own
// p50 ranges from 0.14 s to 0.26 s. A fixed value tolerance at a quantile
// the data does not determine is a coin flip, whichever instrument is right.
//
// The criterion is a Lévy-type band, both ways: the real quantile q must
// lie between the plan's quantiles at q−δ and q+δ, widened by the model
// tolerance (15 %, as before) in value, and the plan's quantile q between
// the real ones at q∓δ likewise. Where the
// distribution is steep (most quantiles) Q(q−δ) ≈ Q(q+δ) and this is the
// old ±15 % check; in a gap it asks that the two instruments agree on the
// share of requests on each side of it (the cache-hit share), to within δ.
//
// δ is derived from the data, not chosen: z standard deviations of a run's
// rank at q, the larger of two measures. One is the binomial spread
// √(q(1−q)/n) of a q-quantile's rank in a sample of n independent
// requests: the confidence interval of the quantile itself. The other is
// measured in the test: plan replays the workload several times with the
// real path's timing noise (its own seeds for tie-breaks and sampling, a
// random scrape phase, each arrival late by a draw from the real run's
// measured lateness), and the spread of the replicas' ranks is how much a
// run moves from the next one. The two instruments replay the same
// arrivals, so their ranks differ by less than two independent samples'
// would, and the band is conservative: the closing note of issue 15 lists
// the rank differences measured over repeated runs against δ.
//
// What the band does not do: it measured, across workload seeds, a rank
// spread up to 3.5 times the binomial one at p90 (each seed has its own
// bursts). That spread is between workloads, not between two instruments
// replaying one, and is not used.

// medianCI is the distribution-free confidence interval of the median of
// sorted xs: the order statistics bandZ standard deviations of the
// binomial rank either side of the middle.
func medianCI[T cmp.Ordered](xs []T) (lo, mid, hi T) {
	n := len(xs)
	h := bandZ * math.Sqrt(float64(n)) / 2
	l := max(0, int(math.Floor(float64(n)/2-h)))
	u := min(n-1, int(math.Ceil(float64(n)/2+h)))
	return xs[l], xs[n/2], xs[u]
}

// sample is a sorted set of TTFTs in modelled seconds.
type sample []float64

func newSample(xs []float64) sample {
	s := slices.Clone(xs)
	slices.Sort(s)
	return s
}

// quantile interpolates linearly between the ranks around q·(n−1), as
// pkg/bench's summaries do.
func (s sample) quantile(q float64) float64 {
	n := len(s)
	if n == 0 {
		return math.NaN()
	}
	q = min(1, max(0, q))
	h := q * float64(n-1)
	lo := int(math.Floor(h))
	if lo >= n-1 {
		return s[n-1]
	}
	return s[lo] + (h-float64(lo))*(s[lo+1]-s[lo])
}

// rank is the empirical distribution function at x: the share of the
// sample below x, counting ties as half.
func (s sample) rank(x float64) float64 {
	below, _ := slices.BinarySearch(s, x)
	upto := below
	for upto < len(s) && s[upto] == x {
		upto++
	}
	return (float64(below) + float64(upto-below)/2) / float64(len(s))
}

// rankSpread is the standard deviation, across replicas of one workload
// (different seeds), of each replica's rank of the pooled q-quantile: how
// far a single run's q-quantile moves in rank from run to run.
func rankSpread(reps []sample, q float64) float64 {
	var pooled []float64
	for _, r := range reps {
		pooled = append(pooled, r...)
	}
	x := newSample(pooled).quantile(q)
	var sum, sum2 float64
	for _, r := range reps {
		f := r.rank(x)
		sum += f
		sum2 += f * f
	}
	k := float64(len(reps))
	if k < 2 {
		return 0
	}
	mean := sum / k
	return math.Sqrt(max(0, (sum2-k*mean*mean)/(k-1)))
}

// deciles are the quantiles checked: the whole distribution but its tails,
// where a run of 750 requests has too few samples to say anything.
var deciles = []float64{0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9}

// bandZ is the number of standard deviations the rank band spans on each
// side: a 0.3 % chance per check for an independent sample, far less for
// two instruments replaying the same arrivals.
const bandZ = 3

// agreement is one quantile's check.
type agreement struct {
	q          float64
	real, plan float64 // the q-quantiles
	delta      float64 // the rank half-width
	spread     float64 // the rank spread measured across replicas
	lo, hi     float64 // the band real must fall in (from the plan)
	plo, phi   float64 // the band plan must fall in (from the real run)
	realRank   float64 // real's q-quantile's rank in the plan's sample
}

func (a agreement) ok() bool {
	return a.real >= a.lo && a.real <= a.hi && a.plan >= a.plo && a.plan <= a.phi
}

func (a agreement) String() string {
	return fmt.Sprintf("p%02.0f real %.3fs plan %.3fs (%.2f) bands [%.3fs, %.3fs] [%.3fs, %.3fs] rank %.3f ± %.3f (replicas %.3f)",
		100*a.q, a.real, a.plan, a.real/a.plan, a.lo, a.hi, a.plo, a.phi, a.realRank, a.delta, a.spread)
}

// agree checks the real sample's q-quantile against the plan's, with the
// rank half-width from spread (the rank spread measured across replicas)
// and the sample size, the value tolerance tol, and slack seconds added
// to each side: the uncertainty of the real path's overhead, which plan
// adds to every request as a constant measured by probes.
func agree(real, plan sample, q, spread, tol, slack float64) agreement {
	n := float64(min(len(real), len(plan)))
	s := max(math.Sqrt(q*(1-q)/n), spread)
	d := bandZ * s
	a := agreement{q: q, real: real.quantile(q), plan: plan.quantile(q), delta: d, spread: spread}
	a.lo = (plan.quantile(q-d) - slack) / (1 + tol)
	a.hi = (plan.quantile(q+d) + slack) * (1 + tol)
	a.plo = (real.quantile(q-d) - slack) / (1 + tol)
	a.phi = (real.quantile(q+d) + slack) * (1 + tol)
	a.realRank = plan.rank(a.real)
	return a
}

func TestBandSteepDistributionKeepsValueTolerance(t *testing.T) {
	// A smooth distribution: the band is the old ±15 % plus a little.
	var xs []float64
	for i := range 1000 {
		xs = append(xs, 0.2+0.2*float64(i)/1000) // uniform on [0.2, 0.4)
	}
	plan := newSample(xs)
	a := agree(plan, plan, 0.5, 0, 0.15, 0)
	if !a.ok() {
		t.Fatalf("identical samples disagree: %v", a)
	}
	if a.hi/a.plan > 1.15*1.1 || a.plan/a.lo > 1.15*1.1 {
		t.Errorf("band much wider than the value tolerance on a steep distribution: %v", a)
	}
	for _, f := range []float64{0.8, 1.25} { // 20 % and 25 % off
		shifted := make([]float64, len(xs))
		for i, x := range xs {
			shifted[i] = x * f
		}
		if a := agree(newSample(shifted), plan, 0.5, 0, 0.15, 0); a.ok() {
			t.Errorf("a sample %.0f%% off passes: %v", 100*(f-1), a)
		}
	}
}

func TestBandGapFollowsTheShareOnEachSide(t *testing.T) {
	// Two modes (cache hit 0.06 s, miss 0.27 s) and the median in the gap:
	// the check is about the hit share, not the value of p50.
	mix := func(hits, n int) sample {
		var xs []float64
		for i := range n {
			if i < hits {
				xs = append(xs, 0.06+0.0001*float64(i%10))
			} else {
				xs = append(xs, 0.27+0.0001*float64(i%10))
			}
		}
		return newSample(xs)
	}
	plan := mix(490, 1000) // p50 lands on the miss mode
	real := mix(510, 1000) // p50 on the hit mode: 4.5× apart in value
	if a := agree(real, plan, 0.5, 0.02, 0.15, 0); !a.ok() {
		t.Errorf("a 2-point difference in hit share fails: %v", a)
	}
	for _, hits := range []int{300, 700} {
		failed := false
		for _, q := range deciles {
			failed = failed || !agree(mix(hits, 1000), plan, q, 0.02, 0.15, 0).ok()
		}
		if !failed {
			t.Errorf("hit share %d%% against 49%% passes at every decile", hits/10)
		}
	}
	// p90 is inside the miss mode: the value tolerance applies there.
	if a := agree(real, plan, 0.9, 0.02, 0.15, 0); !a.ok() {
		t.Errorf("p90 inside one mode fails: %v", a)
	}
}

func TestBandSlackCoversTheOverheadsUncertainty(t *testing.T) {
	var xs, lower []float64
	for i := range 1000 {
		x := 0.05 + 0.001*float64(i%20)
		xs, lower = append(xs, x), append(lower, x-0.012) // 12 ms less overhead
	}
	plan, real := newSample(xs), newSample(lower)
	if a := agree(real, plan, 0.1, 0, 0.15, 0); a.ok() {
		t.Errorf("a 12 ms shift on 50 ms passes without slack: %v", a)
	}
	if a := agree(real, plan, 0.1, 0, 0.15, 0.006); !a.ok() {
		t.Errorf("a 12 ms shift on 50 ms fails with 6 ms of slack: %v", a)
	}
}

func TestMedianCI(t *testing.T) {
	xs := make([]int, 32)
	for i := range xs {
		xs[i] = i
	}
	lo, mid, hi := medianCI(xs)
	if mid != 16 || lo >= mid || hi <= mid || lo < 0 || hi > 31 {
		t.Errorf("medianCI(0..31) = %d, %d, %d", lo, mid, hi)
	}
	if lo, _, hi := medianCI([]int{7}); lo != 7 || hi != 7 {
		t.Errorf("medianCI of one value = %d, %d", lo, hi)
	}
}

func TestRankSpread(t *testing.T) {
	same := newSample([]float64{1, 2, 3, 4})
	if s := rankSpread([]sample{same, same, same}, 0.5); s != 0 {
		t.Errorf("identical replicas: spread %v, want 0", s)
	}
	lo, hi := newSample([]float64{1, 1, 1, 2}), newSample([]float64{1, 2, 2, 2})
	if s := rankSpread([]sample{lo, hi}, 0.5); s < 0.3 {
		t.Errorf("replicas with the median on either side: spread %v, want ≥ 0.3", s)
	}
}
