package plan

import (
	"errors"
	"fmt"
	"io"
	"iter"
	"strings"
	"time"

	"github.com/llmd-kn/llmd-kn/pkg/autoscaler"
	"github.com/llmd-kn/llmd-kn/pkg/workload"
)

// VariantOptions configure PlanVariants: the model's variants (one revision
// per accelerator, llm-d.ai/accelerator and llm-d.ai/variant-cost), the SLO
// interactive load must meet (Config.SLO), the planning window, and which
// share of the workload is latency-tolerant batch work.
type VariantOptions struct {
	Config   autoscaler.Config
	Variants []autoscaler.Variant
	// Window is the planning interval (the decider's stable window is a
	// natural choice).
	Window time.Duration
	// BatchFraction of the requests, picked by a hash of their index (so
	// the choice is the same in every run), are batch-tier work.
	BatchFraction float64
	// CachedFraction of every prompt counts as served from the prefix
	// cache (0: all prompt tokens are prefilled).
	CachedFraction float64
}

// VariantWindow is one planning window's demand and plan.
type VariantWindow struct {
	Start       time.Duration            `json:"start"`
	Interactive float64                  `json:"interactiveRequestsPerSecond"`
	Batch       float64                  `json:"batchRequestsPerSecond"`
	Plan        autoscaler.VariantPlan   `json:"plan"`
	Single      []autoscaler.VariantPlan `json:"single"`
}

// VariantTotals sum a policy's plans over the workload.
type VariantTotals struct {
	Name string `json:"name"`
	// Cost is the sum of cost per hour x window length, in the variants'
	// cost unit x hours.
	Cost float64 `json:"cost"`
	// GPUHours per variant (replicas x window x accelerators per replica).
	GPUHours []float64 `json:"gpuHours"`
	// Infeasible counts windows whose demand the policy cannot carry within
	// the bounds (their cost is the bounds' maximum).
	Infeasible int `json:"infeasibleWindows"`
}

// VariantReport is PlanVariants' result: per window, and totals for the
// mixed plan and for each variant alone.
type VariantReport struct {
	Window  time.Duration   `json:"window"`
	Windows []VariantWindow `json:"windows"`
	Mix     VariantTotals   `json:"mix"`
	Single  []VariantTotals `json:"single"`
}

// PlanVariants plans, window by window, the cheapest mix of variants for
// the load of a workload (pkg/autoscaler.PlanVariants) and compares it with
// serving everything on each variant alone. It is an offline plan from the
// arrivals (no queueing, no cold starts): a statement about capacity and
// cost, not a simulation of the mixed fleet.
func PlanVariants(reqs iter.Seq[workload.Request], o VariantOptions) (VariantReport, error) {
	rep := VariantReport{Window: o.Window}
	switch {
	case o.Window <= 0:
		return rep, fmt.Errorf("variants: window must be positive, got %s", o.Window)
	case len(o.Variants) == 0:
		return rep, errors.New("variants: at least one variant is required")
	case !(o.BatchFraction >= 0 && o.BatchFraction <= 1):
		return rep, fmt.Errorf("variants: batch fraction must be in [0, 1], got %v", o.BatchFraction)
	case !(o.CachedFraction >= 0 && o.CachedFraction < 1):
		return rep, fmt.Errorf("variants: cached fraction must be in [0, 1), got %v", o.CachedFraction)
	}
	type acc struct{ n, prompt, output float64 }
	type window struct{ inter, batch acc }
	var ws []window
	for r := range reqs {
		k := int(r.At / o.Window)
		for len(ws) <= k {
			ws = append(ws, window{})
		}
		a := &ws[k].inter
		if isBatch(r.Index, o.BatchFraction) {
			a = &ws[k].batch
		}
		a.n++
		a.prompt += float64(r.PromptLen)
		a.output += float64(r.MaxTokens)
	}
	sec := o.Window.Seconds()
	toLoad := func(a acc) autoscaler.Load {
		if a.n == 0 {
			return autoscaler.Load{}
		}
		return autoscaler.Load{
			RequestsPerSecond:              map[string]float64{"": a.n / sec},
			PromptTokensPerSecond:          a.prompt / sec,
			UncachedPrefillTokensPerSecond: a.prompt * (1 - o.CachedFraction) / sec,
			OutputTokensPerSecond:          a.output / sec,
			MeanPromptTokens:               a.prompt / a.n,
			MeanCachedTokens:               a.prompt / a.n * o.CachedFraction,
			MeanOutputTokens:               a.output / a.n,
		}
	}
	nv := len(o.Variants)
	rep.Mix = VariantTotals{Name: "mix", GPUHours: make([]float64, nv)}
	rep.Single = make([]VariantTotals, nv)
	for i, v := range o.Variants {
		rep.Single[i] = VariantTotals{Name: v.Name + " only", GPUHours: make([]float64, nv)}
	}
	hours := sec / 3600
	add := func(t *VariantTotals, p autoscaler.VariantPlan, offset int) {
		t.Cost += p.CostPerHour * hours
		if !p.Feasible {
			t.Infeasible++
		}
		for j, n := range p.Replicas {
			v := o.Variants[offset+j]
			t.GPUHours[offset+j] += float64(n) * float64(max(v.Profile.Accelerator.Count, 1)) * hours
		}
	}
	for k, w := range ws {
		d := autoscaler.Demand{Interactive: toLoad(w.inter), Batch: toLoad(w.batch)}
		p, err := autoscaler.PlanVariants(o.Config, o.Variants, d)
		if err != nil {
			return rep, fmt.Errorf("variants: %w", err)
		}
		vw := VariantWindow{Start: time.Duration(k) * o.Window, Interactive: w.inter.n / sec, Batch: w.batch.n / sec, Plan: p}
		add(&rep.Mix, p, 0)
		for i := range o.Variants {
			sp, err := autoscaler.PlanVariants(o.Config, o.Variants[i:i+1], d)
			if err != nil {
				return rep, fmt.Errorf("variants: %w", err)
			}
			vw.Single = append(vw.Single, sp)
			add(&rep.Single[i], sp, i)
		}
		rep.Windows = append(rep.Windows, vw)
	}
	return rep, nil
}

// isBatch picks a deterministic share of request indexes (SplitMix64).
func isBatch(index int, fraction float64) bool {
	if fraction <= 0 {
		return false
	}
	z := uint64(index) + 0x9e3779b97f4a7c15
	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9
	z = (z ^ (z >> 27)) * 0x94d049bb133111eb
	z ^= z >> 31
	return float64(z>>11)/(1<<53) < fraction
}

// WriteVariantsMarkdown writes the totals as a markdown table.
func WriteVariantsMarkdown(w io.Writer, o VariantOptions, rep VariantReport) error {
	var b strings.Builder
	fmt.Fprintf(&b, "| plan | cost | %s | windows over capacity |\n", variantHeader(o.Variants))
	fmt.Fprintf(&b, "| --- | ---: |%s ---: |\n", strings.Repeat(" ---: |", len(o.Variants)))
	row := func(t VariantTotals) {
		fmt.Fprintf(&b, "| %s | %.2f |", t.Name, t.Cost)
		for _, g := range t.GPUHours {
			fmt.Fprintf(&b, " %.2f |", g)
		}
		fmt.Fprintf(&b, " %d of %d |\n", t.Infeasible, len(rep.Windows))
	}
	row(rep.Mix)
	for _, s := range rep.Single {
		row(s)
	}
	_, err := io.WriteString(w, b.String())
	return err
}

func variantHeader(vs []autoscaler.Variant) string {
	parts := make([]string, len(vs))
	for i, v := range vs {
		parts[i] = fmt.Sprintf("GPU-h %s (%s, cost %.2f/h)", v.Name, v.Profile.Accelerator.Name, v.Cost)
	}
	return strings.Join(parts, " | ")
}
