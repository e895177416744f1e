package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/llmd-kn/llmd-kn/pkg/autoscaler"
	"github.com/llmd-kn/llmd-kn/pkg/engine"
	"github.com/llmd-kn/llmd-kn/pkg/plan"
	"github.com/llmd-kn/llmd-kn/pkg/workload"
)

type variantFlags struct {
	wl             benchFlags
	variants       []string
	ttft, tpot     time.Duration
	percentile     float64
	window         time.Duration
	batchFraction  float64
	cachedFraction float64
	out            string
}

const variantsLong = `Plan the cheapest mix of a model's variants (revisions of one llm-d.ai/model
on different accelerators, each with llm-d.ai/variant-cost) for a workload,
window by window, and compare it with serving everything on each variant
alone. Interactive requests must meet --slo-ttft and --slo-tpot at
--slo-percentile; a --batch-fraction of the requests is latency-tolerant
batch work that goes to the cheapest capacity. Replica needs come from the
SLO autoscaler's load functions (pkg/autoscaler) for each variant's engine
profile.

This is an offline capacity and cost plan from the arrivals (no queueing,
no cold starts), not a simulation of the mixed fleet.

Each --variant is NAME=PROFILE:COST[:MAX-REPLICAS], COST per replica-hour in
any unit common to the variants. Workload flags are kn-llmd bench's.`

func newPlanVariantsCmd() *cobra.Command {
	f := &variantFlags{}
	cmd := &cobra.Command{
		Use:   "variants",
		Short: "Cheapest mix of a model's variants across accelerators for a workload, against each variant alone",
		Long:  variantsLong,
		Example: `  kn-llmd plan variants --trace azure:../shared/data/azure/AzureLLMInferenceTrace_code.csv \
    --variant h100=llama-3.1-8b-h100:1 --variant a100=llama-3.1-8b-a100:0.45 --batch-fraction 0.3`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error { return f.run(cmd) },
	}
	fl := cmd.Flags()
	f.wl.addWorkloadFlags(fl, "plan")
	fl.Int64Var(&f.wl.seed, "seed", 0, "seed of the workload's prompts and arrivals (when generated)")
	fl.StringArrayVar(&f.variants, "variant", nil, "a variant NAME=PROFILE:COST[:MAX-REPLICAS]; repeat for each (2 to 4)")
	fl.DurationVar(&f.ttft, "slo-ttft", 2*time.Second, "TTFT target of interactive requests")
	fl.DurationVar(&f.tpot, "slo-tpot", 100*time.Millisecond, "TPOT target of interactive requests")
	fl.Float64Var(&f.percentile, "slo-percentile", 90, "percentile the targets apply to")
	fl.DurationVar(&f.window, "window", time.Minute, "planning window")
	fl.Float64Var(&f.batchFraction, "batch-fraction", 0, "share of requests that are batch-tier work, in [0, 1]")
	fl.Float64Var(&f.cachedFraction, "cached-fraction", 0, "share of every prompt served from the prefix cache, in [0, 1)")
	fl.StringVar(&f.out, "out", "", "also write variants.md and variants.json (per window) into this directory")
	return cmd
}

// parseVariant reads NAME=PROFILE:COST[:MAX].
func parseVariant(s string) (autoscaler.Variant, error) {
	name, rest, ok := strings.Cut(s, "=")
	parts := strings.Split(rest, ":")
	if !ok || name == "" || len(parts) < 2 || len(parts) > 3 {
		return autoscaler.Variant{}, fmt.Errorf("--variant %q: want NAME=PROFILE:COST[:MAX-REPLICAS]", s)
	}
	prof, err := engine.BuiltinProfile(parts[0])
	if err != nil {
		return autoscaler.Variant{}, fmt.Errorf("--variant %q: %w", s, err)
	}
	cost, err := strconv.ParseFloat(parts[1], 64)
	if err != nil || !(cost > 0) || cost > 1e9 {
		return autoscaler.Variant{}, fmt.Errorf("--variant %q: cost %q must be a positive number", s, parts[1])
	}
	v := autoscaler.Variant{Name: name, Profile: prof, Cost: cost}
	if len(parts) == 3 {
		n, err := strconv.Atoi(parts[2])
		if err != nil || n < 1 || n > autoscaler.MaxVariantReplicas {
			return autoscaler.Variant{}, fmt.Errorf("--variant %q: max replicas %q must be an integer from 1 to %d", s, parts[2], autoscaler.MaxVariantReplicas)
		}
		v.MaxScale = n
	}
	return v, nil
}

func (f *variantFlags) run(cmd *cobra.Command) error {
	if len(f.variants) < 2 || len(f.variants) > 4 {
		return fmt.Errorf("--variant: give 2 to 4 variants, got %d", len(f.variants))
	}
	o := plan.VariantOptions{Window: f.window, BatchFraction: f.batchFraction, CachedFraction: f.cachedFraction}
	seen := map[string]bool{}
	for _, s := range f.variants {
		v, err := parseVariant(s)
		if err != nil {
			return err
		}
		if seen[v.Name] {
			return fmt.Errorf("--variant: name %q given twice", v.Name)
		}
		seen[v.Name] = true
		o.Variants = append(o.Variants, v)
	}
	o.Config = autoscaler.DefaultConfig()
	o.Config.SLO = autoscaler.SLO{TTFT: f.ttft, TPOT: f.tpot, Percentile: f.percentile}
	if err := o.Config.Validate(); err != nil {
		return fmt.Errorf("--slo-*: %w", err)
	}
	spec, base, err := f.wl.spec(cmd.Flags().Changed)
	if err != nil {
		return err
	}
	w, err := workload.Open(spec, base)
	if err != nil {
		return fmt.Errorf("workload: %w", err)
	}
	if w.Len() == 0 {
		return errors.New("workload: no requests (check --duration and --max-requests)")
	}
	cmd.SilenceUsage = true
	rep, err := plan.PlanVariants(w.All(), o)
	if err != nil {
		return err
	}
	out := cmd.OutOrStdout()
	if err := plan.WriteVariantsMarkdown(out, o, rep); err != nil {
		return err
	}
	if f.out == "" {
		return nil
	}
	if err := os.MkdirAll(f.out, 0o755); err != nil {
		return err
	}
	var md strings.Builder
	fmt.Fprintf(&md, "Command: `kn-llmd plan variants %s`\n\n", strings.Join(os.Args[min(len(os.Args), 3):], " "))
	if err := plan.WriteVariantsMarkdown(&md, o, rep); err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(f.out, "variants.md"), []byte(md.String()), 0o644); err != nil {
		return err
	}
	data, err := json.MarshalIndent(rep, "", " ")
	if err != nil {
		return err
	}
	return os.WriteFile(filepath.Join(f.out, "variants.json"), data, 0o644)
}
