package autoscaler

import (
	"errors"
	"fmt"
	"math"
	"sort"
	"time"

	"github.com/llmd-kn/llmd-kn/pkg/engine"
)

// Variant is one way of serving a model: revisions of the same
// llm-d.ai/model on different accelerators or configurations, each with a
// cost (llm-d.ai/accelerator, llm-d.ai/variant-cost). The variant planner
// chooses how many replicas of each to run.
type Variant struct {
	Name    string
	Profile engine.Profile
	// Cost is per replica-hour, in any unit common to the variants.
	Cost float64
	// MaxScale bounds the variant's replicas (0: MaxVariantReplicas);
	// MinScale is kept even when the load needs fewer.
	MinScale, MaxScale int
}

// MaxVariantReplicas bounds a variant without a MaxScale.
const MaxVariantReplicas = 64

// Demand is the offered load at one time, split by latency class:
// Interactive must meet the SLO of the planner's Config; Batch is
// latency-tolerant (the batch tier) and only needs throughput, so it goes
// to the cheapest capacity, including what interactive load leaves idle.
type Demand struct {
	Interactive, Batch Load
}

// VariantPlan is the planner's answer: replicas per variant (in the order
// the variants were given), the load each carries, and the cost per hour.
type VariantPlan struct {
	Replicas []int
	// Interactive and Batch are the replica-equivalents of each class's
	// load placed on each variant.
	Interactive, Batch []float64
	CostPerHour        float64
	// Feasible is false when no mix within the bounds carries the demand
	// (the plan is then every variant at its maximum).
	Feasible bool
}

// String is a compact form for logs and reports: name=replicas ...
func (p VariantPlan) String(vs []Variant) string {
	s := ""
	for i, n := range p.Replicas {
		if i > 0 {
			s += " "
		}
		s += fmt.Sprintf("%s=%d", vs[i].Name, n)
	}
	return s + fmt.Sprintf(" cost=%.2f/h", p.CostPerHour)
}

// BatchSLO is the latency the planner allows batch load: capacity is then
// bounded by throughput and KV memory rather than by latency.
var BatchSLO = SLO{TTFT: time.Hour, TPOT: time.Second, Percentile: 50}

// perUnit is what one replica of a variant does for one unit of each
// class's load: the replicas a class's whole load would need on it.
type perUnit struct {
	interactive, batch float64 // replicas for the class's whole load; +Inf: cannot
}

// PlanVariants chooses the cheapest replica counts over variants that carry
// the demand, for a non-disaggregated model (one role). Each variant's
// capacity comes from the same load functions as the decider's, under cfg's
// SLO for interactive load and BatchSLO for batch load. A variant that cannot
// meet the interactive SLO at all (e.g. its prefill of the mean prompt alone
// exceeds the TTFT target) takes only batch load.
//
// The search is exact for the fractional split: with the replica counts
// fixed, giving interactive load to the variants in increasing order of
// interactive-over-batch cost leaves the most room for batch load (the
// exchange argument of the fractional knapsack), so feasibility of a count
// vector is a greedy check; counts are enumerated up to the bounds (at most
// a few hundred thousand vectors for three variants).
func PlanVariants(cfg Config, variants []Variant, d Demand) (VariantPlan, error) {
	if len(variants) == 0 {
		return VariantPlan{}, errors.New("autoscaler: no variants")
	}
	if len(variants) > 4 {
		return VariantPlan{}, fmt.Errorf("autoscaler: %d variants: the planner handles at most 4", len(variants))
	}
	if err := cfg.Validate(); err != nil {
		return VariantPlan{}, err
	}
	units := make([]perUnit, len(variants))
	hi := make([]int, len(variants))
	lo := make([]int, len(variants))
	space := 1
	for i, v := range variants {
		if !(v.Cost > 0) || math.IsInf(v.Cost, 0) {
			return VariantPlan{}, fmt.Errorf("autoscaler: variant %q: cost must be a positive number", v.Name)
		}
		if v.MinScale < 0 || v.MaxScale < 0 || (v.MaxScale > 0 && v.MinScale > v.MaxScale) {
			return VariantPlan{}, fmt.Errorf("autoscaler: variant %q: bad bounds %d..%d", v.Name, v.MinScale, v.MaxScale)
		}
		units[i] = variantUnits(cfg, &variants[i].Profile, d)
		hi[i] = v.MaxScale
		if hi[i] == 0 {
			hi[i] = MaxVariantReplicas
		}
		lo[i] = v.MinScale
		space *= hi[i] - lo[i] + 1
	}
	if space > 5_000_000 {
		return VariantPlan{}, fmt.Errorf("autoscaler: %d replica combinations: lower the variants' max-scale", space)
	}
	// Interactive load first on the variants where it costs least relative
	// to batch load.
	order := make([]int, len(variants))
	for i := range order {
		order[i] = i
	}
	sort.SliceStable(order, func(a, b int) bool {
		return ratio(units[order[a]]) < ratio(units[order[b]])
	})

	best := VariantPlan{CostPerHour: math.Inf(1)}
	counts := append([]int(nil), lo...)
	for {
		cost := 0.0
		for i, n := range counts {
			cost += float64(n) * variants[i].Cost
		}
		if cost < best.CostPerHour-1e-9 {
			if inter, batch, ok := split(counts, units, order); ok {
				best = VariantPlan{Replicas: append([]int(nil), counts...), Interactive: inter, Batch: batch, CostPerHour: cost, Feasible: true}
			}
		}
		// Next count vector (odometer).
		i := 0
		for ; i < len(counts); i++ {
			if counts[i] < hi[i] {
				counts[i]++
				break
			}
			counts[i] = lo[i]
		}
		if i == len(counts) {
			break
		}
	}
	if !best.Feasible {
		best = VariantPlan{Replicas: hi, CostPerHour: 0}
		for i, n := range hi {
			best.CostPerHour += float64(n) * variants[i].Cost
		}
		best.Interactive, best.Batch, _ = split(hi, units, order)
	}
	return best, nil
}

func ratio(u perUnit) float64 {
	switch {
	case math.IsInf(u.interactive, 1):
		return math.Inf(1)
	case u.batch == 0:
		return 0
	}
	return u.interactive / u.batch
}

// split places the demand on replica counts: interactive load in order, then
// batch load in the room left. It reports the replica-equivalents of each
// class per variant and whether everything fit.
func split(counts []int, units []perUnit, order []int) (inter, batch []float64, ok bool) {
	inter = make([]float64, len(counts))
	batch = make([]float64, len(counts))
	room := make([]float64, len(counts))
	for i, n := range counts {
		room[i] = float64(n)
	}
	leftI, leftB := 1.0, 1.0 // fractions of each class's load still to place
	for _, i := range order {
		if leftI <= 1e-12 || math.IsInf(units[i].interactive, 1) {
			continue
		}
		if units[i].interactive == 0 {
			leftI = 0
			continue
		}
		take := min(leftI, room[i]/units[i].interactive)
		inter[i] = take * units[i].interactive
		room[i] -= inter[i]
		leftI -= take
	}
	for i := len(order) - 1; i >= 0; i-- { // batch where interactive is least efficient
		v := order[i]
		if leftB <= 1e-12 || math.IsInf(units[v].batch, 1) {
			continue
		}
		if units[v].batch == 0 {
			leftB = 0
			continue
		}
		take := min(leftB, room[v]/units[v].batch)
		batch[v] = take * units[v].batch
		room[v] -= batch[v]
		leftB -= take
	}
	return inter, batch, leftI <= 1e-9 && leftB <= 1e-9
}

// variantUnits is the replicas of one variant each class's whole load would
// need, from the load functions (prefill and decode fractions add, as one
// replica time-shares both).
func variantUnits(cfg Config, p *engine.Profile, d Demand) perUnit {
	need := func(c Config, l *Load) (float64, bool) {
		if !l.active() {
			return 0, true
		}
		prompt, cached, output := l.MeanPromptTokens, l.MeanCachedTokens, l.MeanOutputTokens
		if prompt <= 0 {
			prompt = float64(c.AssumedPromptTokens)
		}
		if output <= 0 {
			output = float64(c.AssumedOutputTokens)
		}
		ctx := l.MeanContextTokens
		if ctx <= 0 {
			ctx = prompt + output/2
		}
		pc := PrefillLoadFunction(p, &c, prompt, min(cached, prompt), 1)
		dc := DecodeLoadFunction(p, &c, ctx, 1)
		if !pc.Feasible || !dc.Feasible {
			return math.Inf(1), false
		}
		uncached := l.UncachedPrefillTokensPerSecond
		if uncached == 0 && l.PromptTokensPerSecond > 0 {
			uncached = l.PromptTokensPerSecond * (1 - min(cached, prompt)/prompt)
		}
		return uncached/pc.TokensPerSecond + l.OutputTokensPerSecond/dc.TokensPerSecond, true
	}
	var u perUnit
	u.interactive, _ = need(cfg, &d.Interactive)
	bc := cfg
	bc.SLO = BatchSLO
	u.batch, _ = need(bc, &d.Batch)
	return u
}
