package plan

import (
	"context"
	"errors"
	"fmt"
	"slices"

	"github.com/llmd-kn/llmd-kn/pkg/bench"
	"github.com/llmd-kn/llmd-kn/pkg/workload"
)

// Point is one run of a capacity question: a replica count and how well it
// met the SLO.
type Point struct {
	Routing  string   `json:"routing"`
	Replicas Replicas `json:"replicas"`
	// SLOAttainment is the fraction of all requests that met the SLO.
	SLOAttainment            float64 `json:"sloAttainment"`
	TTFTP50                  float64 `json:"ttftP50Seconds"`
	TTFTP90                  float64 `json:"ttftP90Seconds"`
	TPOTP90                  float64 `json:"tpotP90Seconds"`
	GoodputRequestsPerSecond float64 `json:"goodputRequestsPerSecond"`
	OutputTokensPerSecond    float64 `json:"outputTokensPerSecond"`
	CacheHitRate             float64 `json:"cacheHitRate"`
	Completed                int     `json:"completed"`
	Failed                   int     `json:"failed"`
}

// PointOf extracts a Point from a run's summary.
func PointOf(routing string, r Replicas, s *bench.RunSummary) Point {
	p := Point{
		Routing: routing, Replicas: r,
		TTFTP50: s.LatencySeconds.TTFT.P50, TTFTP90: s.LatencySeconds.TTFT.P90, TPOTP90: s.LatencySeconds.TPOT.P90,
		OutputTokensPerSecond: s.Throughput.OutputTokensPerSecond, CacheHitRate: s.Tokens.CacheHitRate,
		Completed: s.Requests.Completed, Failed: s.Requests.Failed + s.Requests.Dropped,
	}
	if s.SLOAttainment != nil {
		p.SLOAttainment = *s.SLOAttainment
	}
	if s.Goodput != nil {
		p.GoodputRequestsPerSecond = s.Goodput.RequestsPerSecond
	}
	return p
}

// Evaluator runs the deployment at a replica count and returns the run's
// summary. Evaluate is the real one; tests use others.
type Evaluator func(ctx context.Context, r Replicas) (bench.RunSummary, error)

// Evaluate returns an Evaluator that runs w through cfg with the given
// replica counts (Engines and PrefillEngines replaced), summarized with o
// and named "<routing>@<replicas>".
func Evaluate(cfg Config, w *workload.Workload, o SummaryOptions) Evaluator {
	return func(ctx context.Context, r Replicas) (bench.RunSummary, error) {
		c := cfg
		c.Engines, c.PrefillEngines = r.Decode, r.Prefill
		so := o
		so.Name = c.routingName() + "@" + r.String()
		sum, _, err := RunWorkload(ctx, c, w, so)
		return sum, err
	}
}

// Sweep evaluates every replica count in order: the SLO attainment curve.
// visit, if not nil, sees each run as it finishes.
func Sweep(ctx context.Context, eval Evaluator, routing string, counts []Replicas, visit func(Point, *bench.RunSummary)) ([]Point, error) {
	pts := make([]Point, 0, len(counts))
	for _, r := range counts {
		sum, err := eval(ctx, r)
		if err != nil {
			return pts, fmt.Errorf("replicas %s: %w", r, err)
		}
		p := PointOf(routing, r, &sum)
		if visit != nil {
			visit(p, &sum)
		}
		pts = append(pts, p)
	}
	return pts, nil
}

// Range is an inclusive range of replica counts.
type Range struct{ Min, Max int }

// Capacity is the answer to "how many replicas does this workload need".
type Capacity struct {
	Routing string `json:"routing"`
	// Target is the SLO attainment asked for.
	Target float64 `json:"target"`
	// Found says whether some count in the search space met the target;
	// Replicas is then the smallest (fewest engines in total, then fewest
	// prefill engines).
	Found    bool     `json:"found"`
	Replicas Replicas `json:"replicas"`
	// Points are the runs made, in the order made.
	Points []Point `json:"points"`
}

// FindCapacity finds the smallest replica count whose SLO attainment
// reaches target: for each prefill count in prefill (a single 0 without
// P/D), a bisection over decode, taking attainment to grow with decode
// replicas (more engines never route a request worse in this model, though
// a prefix-aware router's cache spread can make the curve flat). Runs are
// memoized; visit, if not nil, sees each.
func FindCapacity(ctx context.Context, eval Evaluator, routing string, target float64, prefill, decode Range, visit func(Point, *bench.RunSummary)) (Capacity, error) {
	c := Capacity{Routing: routing, Target: target}
	if !(target > 0 && target <= 1) {
		return c, fmt.Errorf("target attainment must be in (0, 1], got %v", target)
	}
	if prefill.Min < 0 || prefill.Max < prefill.Min || decode.Min < 1 || decode.Max < decode.Min {
		return c, errors.New("capacity search: empty or invalid replica ranges")
	}
	memo := map[Replicas]float64{}
	meets := func(r Replicas) (bool, error) {
		if a, ok := memo[r]; ok {
			return a >= target, nil
		}
		sum, err := eval(ctx, r)
		if err != nil {
			return false, fmt.Errorf("replicas %s: %w", r, err)
		}
		p := PointOf(routing, r, &sum)
		memo[r] = p.SLOAttainment
		c.Points = append(c.Points, p)
		if visit != nil {
			visit(p, &sum)
		}
		return p.SLOAttainment >= target, nil
	}
	for p := prefill.Min; p <= prefill.Max; p++ {
		hi := decode.Max
		if c.Found {
			// Only a smaller total can improve on what was found.
			hi = min(hi, c.Replicas.Total()-p-1)
		}
		if hi < decode.Min {
			continue
		}
		d, ok, err := SearchMin(decode.Min, hi, func(d int) (bool, error) { return meets(Replicas{Prefill: p, Decode: d}) })
		if err != nil {
			return c, err
		}
		if ok {
			c.Found, c.Replicas = true, Replicas{Prefill: p, Decode: d}
		}
	}
	slices.SortStableFunc(c.Points, func(a, b Point) int {
		if a.Replicas.Prefill != b.Replicas.Prefill {
			return a.Replicas.Prefill - b.Replicas.Prefill
		}
		return a.Replicas.Decode - b.Replicas.Decode
	})
	return c, nil
}

// SearchMin returns the smallest n in [lo, hi] for which ok holds, taking
// ok to be monotone (false then true); found is false when ok(hi) fails.
// It calls ok O(log(hi−lo)) times, hi first.
func SearchMin(lo, hi int, ok func(int) (bool, error)) (n int, found bool, err error) {
	if hi < lo {
		return 0, false, nil
	}
	good, err := ok(hi)
	if err != nil || !good {
		return 0, false, err
	}
	for lo < hi {
		mid := lo + (hi-lo)/2
		good, err := ok(mid)
		if err != nil {
			return 0, false, err
		}
		if good {
			hi = mid
		} else {
			lo = mid + 1
		}
	}
	return hi, true, nil
}
