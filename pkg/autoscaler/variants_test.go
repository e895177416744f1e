package autoscaler

import (
	"math"
	"strings"
	"testing"
	"time"

	"github.com/llmd-kn/llmd-kn/pkg/engine"
)

func variantsH100A100(t *testing.T) []Variant {
	t.Helper()
	h, err := engine.BuiltinProfile("llama-3.1-8b-h100")
	if err != nil {
		t.Fatal(err)
	}
	a, err := engine.BuiltinProfile("llama-3.1-8b-a100")
	if err != nil {
		t.Fatal(err)
	}
	// Relative prices per GPU-hour, illustrative: an A100 at 45% of an H100.
	return []Variant{{Name: "h100", Profile: h, Cost: 1}, {Name: "a100", Profile: a, Cost: 0.45}}
}

// load is rate requests/s of prompt/cached/output tokens each.
func load(rate, prompt, cached, output float64) Load {
	return Load{
		RequestsPerSecond:              map[string]float64{"standard": rate},
		PromptTokensPerSecond:          rate * prompt,
		UncachedPrefillTokensPerSecond: rate * (prompt - cached),
		OutputTokensPerSecond:          rate * output,
		MeanPromptTokens:               prompt, MeanCachedTokens: cached, MeanOutputTokens: output,
	}
}

func variantConfig(ttft, tpot time.Duration) Config {
	c := DefaultConfig()
	c.SLO = SLO{TTFT: ttft, TPOT: tpot, Percentile: 90}
	return c
}

func TestPlanVariantsSingleVariantMatchesLoadFunctions(t *testing.T) {
	vs := variantsH100A100(t)[:1]
	cfg := variantConfig(time.Second, 50*time.Millisecond)
	l := load(20, 2000, 500, 200)
	p, err := PlanVariants(cfg, vs, Demand{Interactive: l})
	if err != nil {
		t.Fatal(err)
	}
	pc := PrefillLoadFunction(&vs[0].Profile, &cfg, 2000, 500, 1)
	dc := DecodeLoadFunction(&vs[0].Profile, &cfg, 2100, 1)
	want := int(math.Ceil(l.UncachedPrefillTokensPerSecond/pc.TokensPerSecond + l.OutputTokensPerSecond/dc.TokensPerSecond))
	if !p.Feasible || p.Replicas[0] != want {
		t.Fatalf("plan %s, want %d replicas (the decider's load functions)", p.String(vs), want)
	}
}

func TestPlanVariantsPicksTheCheapestMixForTheTraffic(t *testing.T) {
	vs := variantsH100A100(t)
	cases := []struct {
		name  string
		cfg   Config
		d     Demand
		check func(p VariantPlan) bool
		why   string
	}{
		{
			name:  "decode-bound chat prefers the cheaper accelerator",
			cfg:   variantConfig(2*time.Second, 100*time.Millisecond),
			d:     Demand{Interactive: load(10, 300, 0, 600)},
			check: func(p VariantPlan) bool { return p.Replicas[1] > 0 && p.Replicas[0] == 0 },
			why:   "A100 decode at 0.6 of the bandwidth costs 0.45: cheaper per token",
		},
		{
			name:  "long prompts under a tight TTFT need the faster accelerator",
			cfg:   variantConfig(800*time.Millisecond, 50*time.Millisecond),
			d:     Demand{Interactive: load(8, 8000, 0, 100)},
			check: func(p VariantPlan) bool { return p.Replicas[0] > 0 && p.Interactive[1] == 0 },
			why:   "an A100 prefills 8k tokens in about 930 ms, over the 800 ms target: it cannot meet the TTFT at all",
		},
		{
			name: "batch work goes to the cheap variant beside interactive work on the fast one",
			cfg:  variantConfig(800*time.Millisecond, 50*time.Millisecond),
			d:    Demand{Interactive: load(8, 8000, 0, 100), Batch: load(30, 1000, 0, 500)},
			check: func(p VariantPlan) bool {
				return p.Replicas[0] > 0 && p.Replicas[1] > 0 && p.Interactive[1] == 0 && p.Batch[1] > 0
			},
			why: "batch load is latency tolerant: it fills A100s",
		},
		{
			name:  "idle keeps nothing",
			cfg:   variantConfig(time.Second, 50*time.Millisecond),
			d:     Demand{},
			check: func(p VariantPlan) bool { return p.Replicas[0] == 0 && p.Replicas[1] == 0 && p.CostPerHour == 0 },
			why:   "no load, no replicas",
		},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			p, err := PlanVariants(c.cfg, vs, c.d)
			if err != nil {
				t.Fatal(err)
			}
			t.Logf("%s (interactive %.2f, batch %.2f)", p.String(vs), p.Interactive, p.Batch)
			if !p.Feasible || !c.check(p) {
				t.Fatalf("plan %s: %s", p.String(vs), c.why)
			}
			// No single-variant plan is cheaper.
			for i := range vs {
				one, err := PlanVariants(c.cfg, vs[i:i+1], c.d)
				if err == nil && one.Feasible && one.CostPerHour < p.CostPerHour-1e-9 {
					t.Errorf("only %s costs %.2f/h, below the mix's %.2f/h", vs[i].Name, one.CostPerHour, p.CostPerHour)
				}
			}
		})
	}
}

func TestPlanVariantsBoundsAndErrors(t *testing.T) {
	vs := variantsH100A100(t)
	cfg := variantConfig(time.Second, 50*time.Millisecond)
	vs[0].MaxScale, vs[1].MaxScale = 2, 2
	p, err := PlanVariants(cfg, vs, Demand{Interactive: load(500, 2000, 0, 300)})
	if err != nil {
		t.Fatal(err)
	}
	if p.Feasible || p.Replicas[0] != 2 || p.Replicas[1] != 2 {
		t.Fatalf("overload: %s feasible=%v, want every variant at its max and not feasible", p.String(vs), p.Feasible)
	}
	vs[1].MinScale = 1
	if p, _ := PlanVariants(cfg, vs, Demand{}); p.Replicas[1] != 1 {
		t.Fatalf("min-scale not kept: %s", p.String(vs))
	}
	bad := []struct {
		vs   []Variant
		want string
	}{
		{nil, "no variants"},
		{[]Variant{{Name: "x", Profile: vs[0].Profile, Cost: 0}}, `"x": cost`},
		{[]Variant{{Name: "x", Profile: vs[0].Profile, Cost: 1, MinScale: 3, MaxScale: 2}}, "bounds"},
		{[]Variant{vs[0], vs[0], vs[0], vs[0], vs[0]}, "at most 4"},
	}
	for _, b := range bad {
		if _, err := PlanVariants(cfg, b.vs, Demand{}); err == nil || !strings.Contains(err.Error(), b.want) {
			t.Errorf("error %v, want %q", err, b.want)
		}
	}
}
