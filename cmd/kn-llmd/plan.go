package main

import (
	"fmt"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/llmd-kn/llmd-kn/pkg/activator"
	"github.com/llmd-kn/llmd-kn/pkg/bench"
	"github.com/llmd-kn/llmd-kn/pkg/engine"
	"github.com/llmd-kn/llmd-kn/pkg/plan"
	"github.com/llmd-kn/llmd-kn/pkg/workload"
)

// planFlags are `kn-llmd plan`'s flags: the workload flags are bench's,
// parsed by the same code; the rest are plan.Options, which pkg/plan
// validates and turns into a job.
type planFlags struct {
	wl benchFlags
	o  plan.Options
}

const planLong = `Replay a workload through a model of a deployment in virtual time and
write the same report as kn-llmd bench (summary.json, SVG charts, report.md).

The model runs the real router (pkg/router, any routing profile) in front of
N engine models (pkg/engine, per profile and role) and reproduces the
activator's request path: metrics scraped every --scrape-interval, its own
in-flight accounting, KV events reaching the precise index after
--kv-event-delay, the P/D two-step, and flow control with the standard
tier's limits. An hour of trace on eight engines takes seconds.

Each routing profile in --routing is one run of the same workload; the report
compares them side by side. Runs can be added to a kn-llmd bench report with
kn-llmd bench --include DIR/summary.json (and the other way round).

Capacity questions (need --slo-ttft and/or --slo-tpot):
  --sweep-replicas 1..16      one run per decode-capable replica count (also
                              "2,4,8" or "4..32:4"); with P/D, --sweep-prefill
                              sweeps the prefill count too (a grid)
  --find-capacity             the smallest replica count (per role with P/D)
                              whose SLO attainment reaches --target-attainment:
                              a bisection up to --max-replicas for each prefill
                              count of --sweep-prefill (default --prefill-engines)
They write capacity.json, capacity.md and attainment_vs_replicas.svg, and the
report of each routing profile's run at its capacity (or at the largest
count tried when none met the target).

Autoscaling: --autoscaler slo lets the SLO autoscaler's decider
(slo.autoscaling.llm-d.ai, pkg/autoscaler) choose the replica counts every
2s between --min-engines and --engines (prefill between 0 and
--prefill-engines with P/D), against --slo-ttft/--slo-tpot (the decider's
defaults, 1s and 50ms, when not given). New engines take --startup-delay;
a request arriving with no engine ready pokes the decider at once, waits in
the activator's queue and is served once an engine is up. Engines go to zero
after --scale-to-zero-grace without traffic. Each run's replica-seconds (and
GPU-seconds) are in the report's settings and printed; replicas.csv has the
replica counts over time of every run.

Autoscaling comparison: --autoscaler with a list of policies (or kpa,
static-peak or lower-bound alone) runs each on the workload with one routing
profile and writes autoscaling.md and autoscaling.json (SLO attainment for
TTFT, TPOT and both; latencies at --slo-percentile; GPU-seconds; cold starts;
scale events) besides the usual report:
  fixed        --engines replicas throughout
  slo          the SLO decider, --min-engines..--engines
  slo-forecast the same with its arrival forecast (Holt's linear trend,
               over the cold start and a tick)
  kpa          Knative's KPA decider (knative.dev/serving/pkg/autoscaler/scaling)
               fed the activator's concurrency, once per --kpa-target
  static-peak  the fewest fixed replicas (up to --engines) reaching
               --target-attainment, searched as --find-capacity does
  lower-bound  the offline optimum: per --lower-bound-window, the fewest
               replicas whose load functions cover the load (from the token
               counts of the fixed fleet at --engines), no cold starts
--panic-threshold and --scale-down-delay set both autoscalers alike.

Workload flags are kn-llmd bench's: exactly one of --workload FILE,
--trace mooncake:PATH|azure:PATH or --dataset shared-prefix|random|prefix-repetition,
with --rate/--arrival or --ladder, --speedup, --rate-scale, --max-requests,
--duration and --seed (which also seeds the router and the engines).

KV offload: --kv-offload on-scale-down models llm-d.ai/kv-offload as the
simulator does it: an engine that leaves (scale-down, scale to zero)
flushes its most valuable resident blocks (hits x prefix depth, within
--kv-offload-max-bytes) to shared storage, and a request whose prefix
storage holds beyond the engine's GPU cache restores it (the profile's
storage bandwidth and per-object latency) instead of recomputing it;
--kv-prefetch-bytes makes a new engine preload the hottest stored chains
while it cold-starts (ready once both are done).
--kv-offload off,on-scale-down runs each routing profile twice (the second
named <routing>-kv-offload). With --autoscaler slo and --min-engines 0,
each run prints the TTFT of the first minute after each scale from zero;
--idle-every and --idle-gap insert idle gaps into the workload so that it
scales to zero.

KV tiers: --kv-cpu-tier-bytes and --kv-disk-tier-bytes give every
aggregated engine vLLM's OffloadingConnector tiers below its GPU cache
(every computed block written through to CPU, CPU evictions to disk,
prefixes the GPU evicted loaded at the profile's tier bandwidths instead of
recomputed, reported as cached tokens); --kv-tiers off,on runs each routing
profile without and with them.

Batch soak: --batch-soak N measures how much of the capacity interactive
traffic leaves idle a backlog of N batch requests (--batch-input-len,
--batch-output-len; --batch-concurrency outstanding at once, as the Batch
API sends a file) uses, and what it costs the interactive tiers, on
--engines fixed engines with vLLM's priority policy and the first --routing
profile: the workload is rate-scaled (--speedup for traces) to --soak-load
of the capacity of its mean shape (a saturating closed loop), split
--critical-share critical and the rest standard, and run alone and with the
backlog (held in the batch tier: --batch-max-saturation); the batch shape's
capacity is measured alone. It writes batch-soak.md and batch-soak.json.`

const planExample = `  # llm-d's shared-prefix ladder on 8 Qwen3-32B engines (2xH100 each), every built-in routing profile
  kn-llmd plan --dataset shared-prefix --ladder llm-d --profile qwen3-32b-2xh100 --engines 8 \
      --block-size 64 --slo-ttft 2s --slo-tpot 100ms --out out/plan-ladder

  # The Mooncake trace at its own timestamps on 8 Llama-3.1-8B engines
  kn-llmd plan --trace mooncake:../shared/data/mooncake/synthetic_trace.jsonl --engines 8 --out out/plan-mooncake

  # Scale to zero with and without KV offload: the Mooncake trace at a tenth of its rate, idle 10m after every 5m
  kn-llmd plan --trace mooncake:../shared/data/mooncake/synthetic_trace.jsonl --speedup 0.1 --idle-every 5m --idle-gap 10m \
      --autoscaler slo --min-engines 0 --engines 4 --startup-delay 60s --routing default --kv-offload off,on-scale-down --out out/plan-offload

  # How many engines does the Azure code trace need for TTFT <= 1s at 99%?
  kn-llmd plan --trace azure:../shared/data/azure/AzureLLMInferenceTrace_code.csv --routing default \
      --slo-ttft 1s --find-capacity --target-attainment 0.99 --out out/capacity`

func newPlanCmd() *cobra.Command {
	f := &planFlags{}
	cmd := &cobra.Command{
		Use:     "plan",
		Short:   "Replay a workload through a virtual-time model of a deployment: routing comparisons and capacity planning",
		Long:    planLong,
		Example: planExample,
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			job, err := f.job(cmd)
			if err != nil {
				return err
			}
			cmd.SilenceUsage = true
			ctx, stop := signal.NotifyContext(cmd.Context(), os.Interrupt, syscall.SIGTERM)
			defer stop()
			return job.Run(ctx, cmd.OutOrStdout())
		},
	}
	fl := cmd.Flags()
	d := plan.DefaultOptions()
	w := &f.wl
	w.addWorkloadFlags(fl, "replay")
	fl.Int64Var(&w.seed, "seed", 0, "seed of the router, the engines and (when given) the workload's prompts and arrivals")

	fl.IntVar(&f.o.Engines, "engines", d.Engines, "decode-capable engines (role both; role decode with --prefill-engines)")
	fl.IntVar(&f.o.PrefillEngines, "prefill-engines", d.PrefillEngines, "prefill engines; more than 0 runs prefill/decode disaggregation")
	fl.StringVar(&f.o.Profile, "profile", d.Profile, "engine profile (model on accelerator): "+strings.Join(engine.BuiltinProfileNames(), ", "))
	fl.StringVar(&f.o.Routing, "routing", d.Routing, "routing profiles to compare, comma-separated (one run each)")
	fl.StringVar(&f.o.RouterConfig, "router-config", d.RouterConfig, "router configuration file (YAML, as the config-llmd-router ConfigMap); default: the built-in one with the precise index at --block-size")
	fl.IntVar(&f.o.PDThreshold, "pd-threshold", d.PDThreshold, "uncached prompt tokens from which a profile with a P/D decider disaggregates")
	fl.IntVar(&f.o.BlockSize, "block-size", d.BlockSize, "engines' KV block size in tokens (vLLM --block-size)")
	fl.IntVar(&f.o.MaxNumSeqs, "max-num-seqs", d.MaxNumSeqs, "engines' running-batch bound (vLLM --max-num-seqs)")
	fl.StringVar(&f.o.MaxNumBatchedTokens, "max-num-batched-tokens", d.MaxNumBatchedTokens, "engines' per-step token budget (vLLM --max-num-batched-tokens): a token count, or auto: chosen from --slo-tpot as the webhook and kn-llmd local do (8192 without a TPOT target)")
	fl.IntVar(&f.o.NumBlocks, "num-blocks", d.NumBlocks, "engines' KV capacity in blocks (0: derived from the profile)")
	fl.IntVar(&f.o.MaxModelLen, "max-model-len", d.MaxModelLen, "engines' context bound (0: the model's)")
	fl.StringVar(&f.o.Model, "model", d.Model, "model name requests carry (default: the profile's model)")
	fl.BoolVar(&f.o.NoIgnoreEOS, "no-ignore-eos", d.NoIgnoreEOS, "let engines stop before max_tokens (as bench --no-ignore-eos)")

	fl.DurationVar(&f.o.ScrapeInterval, "scrape-interval", d.ScrapeInterval, "how often the activator reads each engine's metrics")
	fl.DurationVar(&f.o.StaleAfter, "stale-after", d.StaleAfter, "age at which scraped metrics count as unknown")
	fl.DurationVar(&f.o.KVEventDelay, "kv-event-delay", d.KVEventDelay, "lag from an engine step's end to its KV events reaching the router")
	fl.DurationVar(&f.o.Overhead, "overhead", d.Overhead, "network and proxy time added to every request hop to an engine")
	fl.DurationVar(&f.o.Timeout, "timeout", d.Timeout, "client timeout per request, from send to the end of the stream (0: none)")
	fl.BoolVar(&f.o.FlowControl, "flow-control", d.FlowControl, "hold requests in the activator while the pool is saturated (the standard tier)")
	fl.Float64Var(&f.o.MaxSaturation, "flow-max-saturation", d.MaxSaturation, "pool saturation under which requests are dispatched (0: no limit)")
	fl.DurationVar(&f.o.MaxQueueTime, "flow-max-queue-time", d.MaxQueueTime, "longest wait in the activator before a 503")
	fl.IntVar(&f.o.MaxQueued, "flow-max-queued", d.MaxQueued, "most requests waiting in the activator before a 503")

	fl.StringVar(&f.o.Out, "out", d.Out, "report directory (required); files in it are replaced")
	fl.DurationVar(&f.o.SLOTTFT, "slo-ttft", d.SLOTTFT, "TTFT target for SLO attainment and goodput (0: none)")
	fl.DurationVar(&f.o.SLOTPOT, "slo-tpot", d.SLOTPOT, "TPOT target for SLO attainment and goodput (0: none)")
	fl.DurationVar(&f.o.Bucket, "bucket", d.Bucket, "time-series interval of the report")
	fl.BoolVar(&f.o.SaveRecords, "save-records", d.SaveRecords, "also write every request's measurements as <run>.records.jsonl")
	fl.StringArrayVar(&f.o.Include, "include", d.Include, "summary.json of other runs (bench or plan) to report alongside (repeatable)")

	fl.StringVar(&f.o.SweepReplicas, "sweep-replicas", d.SweepReplicas, "replica counts to sweep: A..B, A..B:STEP or a list (replaces --engines)")
	fl.StringVar(&f.o.SweepPrefill, "sweep-prefill", d.SweepPrefill, "prefill counts to sweep or search with P/D: A..B or a list (replaces --prefill-engines)")
	fl.BoolVar(&f.o.FindCapacity, "find-capacity", d.FindCapacity, "search the smallest replica count meeting --target-attainment")
	fl.Float64Var(&f.o.TargetAttainment, "target-attainment", d.TargetAttainment, "SLO attainment (fraction of requests) a capacity must reach")
	fl.IntVar(&f.o.MaxReplicas, "max-replicas", d.MaxReplicas, "largest decode-capable count --find-capacity tries")

	fl.StringVar(&f.o.Autoscaler, "autoscaler", d.Autoscaler, "replica counts: fixed (--engines, --prefill-engines) or slo (the SLO autoscaler, up to those); "+
		"a comma-separated list of fixed, slo, slo-forecast, kpa, static-peak, instant-bound (formerly lower-bound) and clairvoyant compares them (see Autoscaling)")
	fl.IntVar(&f.o.MinEngines, "min-engines", d.MinEngines, "with --autoscaler slo or kpa: fewest decode-capable engines (0 allows scale to zero)")
	fl.DurationVar(&f.o.StartupDelay, "startup-delay", d.StartupDelay, "with --autoscaler slo or kpa: time for a new engine to become ready (cold start)")
	fl.DurationVar(&f.o.ScaleToZeroGrace, "scale-to-zero-grace", d.ScaleToZeroGrace, "with --autoscaler slo or kpa: time without traffic before scaling to zero")
	fl.Float64Var(&f.o.SLOPercentile, "slo-percentile", d.SLOPercentile, "in an autoscaling comparison: the percentile the SLO decider plans for and the report's latencies are at")
	fl.StringVar(&f.o.KPATarget, "kpa-target", d.KPATarget, "with --autoscaler kpa: Knative's concurrency target per replica (autoscaling.knative.dev/target); a list runs one kpa per target")
	fl.Float64Var(&f.o.KPAUtilization, "kpa-utilization", d.KPAUtilization, "with --autoscaler kpa: target utilization as a fraction (0: Knative's default, 0.7)")
	fl.Float64Var(&f.o.PanicThreshold, "panic-threshold", d.PanicThreshold, "with --autoscaler slo or kpa: panic mode starts when the panic window wants this percentage of the ready replicas (Knative's panic-threshold-percentage)")
	fl.DurationVar(&f.o.ScaleDownDelay, "scale-down-delay", d.ScaleDownDelay, "with --autoscaler slo or kpa: hold the highest recommendation this long before scaling down (Knative's scale-down-delay)")
	fl.DurationVar(&f.o.LowerBoundWindow, "lower-bound-window", d.LowerBoundWindow, "with --autoscaler instant-bound or clairvoyant: the bounds' window")
	fl.StringVar(&f.o.KVOffload, "kv-offload", d.KVOffload, "KV offload to shared storage (llm-d.ai/kv-offload): off, on-scale-down, or off,on-scale-down to compare (one run each; see KV offload)")
	fl.StringVar(&f.o.KVOffloadMaxBytes, "kv-offload-max-bytes", d.KVOffloadMaxBytes, "with --kv-offload: stored KV bytes bound, e.g. 200Gi (llm-d.ai/kv-offload-max-bytes; default unbounded)")
	fl.StringVar(&f.o.KVPrefetchBytes, "kv-prefetch-bytes", d.KVPrefetchBytes, "with --kv-offload: what a new engine loads of the hottest stored KV while it starts, e.g. 4Gi (llm-d.ai/kv-prefetch-bytes; default none)")
	fl.StringVar(&f.o.KVCPUTierBytes, "kv-cpu-tier-bytes", d.KVCPUTierBytes, "CPU memory for KV blocks below each engine's GPU cache, e.g. 64Gi (llm-d.ai/kv-cpu-tier-bytes; vLLM's OffloadingConnector: written through, loaded instead of recomputed; default none)")
	fl.StringVar(&f.o.KVDiskTierBytes, "kv-disk-tier-bytes", d.KVDiskTierBytes, "local disk for KV blocks the CPU tier evicts, e.g. 500Gi (llm-d.ai/kv-disk-tier-bytes; default none)")
	fl.StringVar(&f.o.KVTiers, "kv-tiers", "on", "with tier sizes: on, off, or off,on to compare (one run each; the tiered run is named <routing>-kv-tiers)")
	fl.DurationVar(&f.o.KVOffloadDeadline, "kv-offload-deadline", d.KVOffloadDeadline, "with --kv-offload: cap of an engine's modelled flush time (llm-d.ai/kv-offload-deadline)")
	fl.IntVar(&f.o.BatchSoak, "batch-soak", d.BatchSoak, "run a batch soak with a backlog of this many batch requests (see Batch soak)")
	fl.IntVar(&f.o.BatchInputLen, "batch-input-len", d.BatchInputLen, "with --batch-soak: prompt tokens per batch request")
	fl.IntVar(&f.o.BatchOutputLen, "batch-output-len", d.BatchOutputLen, "with --batch-soak: output tokens per batch request")
	fl.IntVar(&f.o.BatchConcurrency, "batch-concurrency", d.BatchConcurrency, "with --batch-soak: batch requests outstanding at once (the Batch API's per-batch concurrency)")
	fl.Float64Var(&f.o.BatchMaxSaturation, "batch-max-saturation", d.BatchMaxSaturation, "with --batch-soak: pool saturation under which batch requests are dispatched (the batch tier's maxSaturation; 0: no limit)")
	fl.IntVar(&f.o.BatchMaxPerPod, "batch-max-per-pod", d.BatchMaxPerPod, "with --batch-soak: most batch requests in flight on one engine (the batch tier's maxPerPod; 0: no cap)")
	fl.IntVar(&f.o.BatchMaxPrefillPerPod, "batch-max-prefill-per-pod", d.BatchMaxPrefillPerPod, "with --batch-soak: most batch requests on one engine without their first token (the batch tier's maxPrefillPerPod; 0: no gate)")
	fl.BoolVar(&f.o.BatchYield, "batch-yield", d.BatchYield, "with --batch-soak: hold batch off an engine while an interactive request there has no first token (the batch tier's yieldToInteractive)")
	fl.Float64Var(&f.o.SoakLoad, "soak-load", d.SoakLoad, "with --batch-soak: the interactive traffic's share of capacity")
	fl.Float64Var(&f.o.CriticalShare, "critical-share", d.CriticalShare, "with --batch-soak: share of the interactive requests in the critical tier (the rest standard)")
	return cmd
}

// job validates the flags and opens the workload, exactly as bench reads it.
func (f *planFlags) job(cmd *cobra.Command) (*plan.Job, error) {
	changed := cmd.Flags().Changed
	o := f.o
	o.Seed, o.Changed, o.Command = uint64(f.wl.seed), changed, commandLine(cmd)
	tiers := activator.DefaultTiers()
	for name, slo := range map[string]*bench.SLO{"critical": &o.SoakCritical, "standard": &o.SoakStandard} {
		if t, ok := tiers.Get(name); ok {
			*slo = bench.SLO{TTFT: time.Duration(t.TTFT), TPOT: time.Duration(t.TPOT)}
		}
	}
	j, err := plan.NewJob(o)
	if err != nil {
		return nil, err
	}
	spec, base, err := f.wl.spec(changed)
	if err != nil {
		return nil, err
	}
	w, err := workload.Open(spec, base)
	if err != nil {
		return nil, fmt.Errorf("workload: %w", err)
	}
	if err := j.SetWorkload(spec, base, w); err != nil {
		return nil, err
	}
	return j, nil
}

// commandLine is the invocation with the flags given, in a canonical form,
// less --out (where the report went).
func commandLine(cmd *cobra.Command) string {
	line := cmd.CommandPath()
	cmd.Flags().Visit(func(f *pflag.Flag) {
		if f.Name != "out" {
			line += " --" + f.Name + "=" + f.Value.String()
		}
	})
	return line
}
