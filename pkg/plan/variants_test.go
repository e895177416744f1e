package plan

import (
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/llmd-kn/llmd-kn/pkg/autoscaler"
	"github.com/llmd-kn/llmd-kn/pkg/engine"
	"github.com/llmd-kn/llmd-kn/pkg/workload"
)

func twoVariants(t *testing.T) []autoscaler.Variant {
	t.Helper()
	h, err := engine.BuiltinProfile("llama-3.1-8b-h100")
	if err != nil {
		t.Fatal(err)
	}
	a, err := engine.BuiltinProfile("llama-3.1-8b-a100")
	if err != nil {
		t.Fatal(err)
	}
	return []autoscaler.Variant{{Name: "h100", Profile: h, Cost: 1}, {Name: "a100", Profile: a, Cost: 0.45}}
}

// requests makes n requests per second for d of prompt/output tokens.
func variantRequests(rate int, d time.Duration, prompt, output int) []workload.Request {
	var out []workload.Request
	for i := 0; time.Duration(i)*time.Second/time.Duration(rate) < d; i++ {
		r := workload.NewRequest(i, time.Duration(i)*time.Second/time.Duration(rate), make([]uint32, prompt), output)
		out = append(out, r)
	}
	return out
}

func TestPlanVariantsMixIsNeverDearerThanOneVariant(t *testing.T) {
	vs := twoVariants(t)
	cfg := autoscaler.DefaultConfig()
	cfg.SLO = autoscaler.SLO{TTFT: 800 * time.Millisecond, TPOT: 50 * time.Millisecond, Percentile: 90}
	// Long prompts: an A100 cannot prefill 8k tokens within 800 ms, so
	// interactive work needs H100s; batch work may go to A100s.
	reqs := variantRequests(8, 3*time.Minute, 8000, 100)
	o := VariantOptions{Config: cfg, Variants: vs, Window: time.Minute, BatchFraction: 0.5}
	rep, err := PlanVariants(slices.Values(reqs), o)
	if err != nil {
		t.Fatal(err)
	}
	if len(rep.Windows) != 3 {
		t.Fatalf("%d windows, want 3", len(rep.Windows))
	}
	var md strings.Builder
	if err := WriteVariantsMarkdown(&md, o, rep); err != nil {
		t.Fatal(err)
	}
	t.Log("\n" + md.String())
	if rep.Mix.Infeasible != 0 || rep.Mix.GPUHours[0] == 0 || rep.Mix.GPUHours[1] == 0 {
		t.Errorf("mix %+v: want both variants used and every window served", rep.Mix)
	}
	if rep.Single[1].Infeasible != 3 {
		t.Errorf("A100 alone: %d windows over capacity, want all 3 (TTFT out of reach)", rep.Single[1].Infeasible)
	}
	for _, s := range rep.Single {
		if s.Infeasible == 0 && s.Cost < rep.Mix.Cost-1e-9 {
			t.Errorf("%s costs %.3f, below the mix's %.3f", s.Name, s.Cost, rep.Mix.Cost)
		}
	}
	for _, w := range rep.Windows {
		if w.Interactive == 0 || w.Batch == 0 || w.Interactive+w.Batch != 8 {
			t.Errorf("window at %s: interactive %.2f + batch %.2f req/s, want a split of 8", w.Start, w.Interactive, w.Batch)
		}
	}
}

func TestPlanVariantsRejectsBadOptions(t *testing.T) {
	vs := twoVariants(t)
	cfg := autoscaler.DefaultConfig()
	for _, c := range []struct {
		o    VariantOptions
		want string
	}{
		{VariantOptions{Config: cfg, Variants: vs}, "window"},
		{VariantOptions{Config: cfg, Window: time.Minute}, "variant"},
		{VariantOptions{Config: cfg, Variants: vs, Window: time.Minute, BatchFraction: 2}, "batch fraction"},
		{VariantOptions{Config: cfg, Variants: vs, Window: time.Minute, CachedFraction: 1}, "cached fraction"},
	} {
		if _, err := PlanVariants(slices.Values(variantRequests(1, time.Second, 10, 10)), c.o); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("error %v, want %q", err, c.want)
		}
	}
}
