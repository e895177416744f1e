package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/llmd-kn/llmd-kn/pkg/activator"
	"github.com/llmd-kn/llmd-kn/pkg/autoscaler"
	"github.com/llmd-kn/llmd-kn/pkg/bench"
	"github.com/llmd-kn/llmd-kn/pkg/engine"
	"github.com/llmd-kn/llmd-kn/pkg/plan"
	"github.com/llmd-kn/llmd-kn/pkg/router"
	"github.com/llmd-kn/llmd-kn/pkg/workload"
)

// planFlags are `kn-llmd plan`'s flags. The workload flags are bench's,
// parsed by the same code.
type planFlags struct {
	wl benchFlags

	engines, prefillEngines int
	profile                 string
	routing                 string
	routerConfig            string
	pdThreshold             int
	blockSize               int
	maxNumSeqs              int
	maxBatched              string
	numBlocks, maxModelLen  int
	model                   string
	noIgnoreEOS             bool

	scrapeInterval, staleAfter time.Duration
	kvEventDelay, overhead     time.Duration
	timeout                    time.Duration
	flowControl                bool
	maxSaturation              float64
	maxQueueTime               time.Duration
	maxQueued                  int

	out              string
	sloTTFT, sloTPOT time.Duration
	bucket           time.Duration
	saveRecords      bool
	include          []string

	sweepReplicas, sweepPrefill string
	findCapacity                bool
	targetAttainment            float64
	maxReplicas                 int

	autoscaler       string
	minEngines       int
	startupDelay     time.Duration
	scaleToZeroGrace time.Duration
	sloPercentile    float64
	kpaTarget        string
	kpaUtilization   float64
	lowerBoundWindow time.Duration
	panicThreshold   float64
	scaleDownDelay   time.Duration

	batchSoak                     int
	batchInputLen, batchOutputLen int
	batchConcurrency              int
	soakLoad, criticalShare       float64
	batchMaxSaturation            float64
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
			if job.compare != nil {
				job.compare.Command = commandLine(cmd)
			}
			if job.soak != nil {
				job.soak.Command = commandLine(cmd)
			}
			cmd.SilenceUsage = true
			ctx, stop := signal.NotifyContext(cmd.Context(), os.Interrupt, syscall.SIGTERM)
			defer stop()
			return job.run(ctx, cmd.OutOrStdout())
		},
	}
	fl := cmd.Flags()
	w := &f.wl
	w.addWorkloadFlags(fl, "replay")
	fl.Int64Var(&w.seed, "seed", 0, "seed of the router, the engines and (when given) the workload's prompts and arrivals")

	fl.IntVar(&f.engines, "engines", 8, "decode-capable engines (role both; role decode with --prefill-engines)")
	fl.IntVar(&f.prefillEngines, "prefill-engines", 0, "prefill engines; more than 0 runs prefill/decode disaggregation")
	fl.StringVar(&f.profile, "profile", engine.DefaultProfile, "engine profile (model on accelerator): "+strings.Join(engine.BuiltinProfileNames(), ", "))
	fl.StringVar(&f.routing, "routing", "round-robin,least-request,prefix-approx,kv-precise,ttft-cost,default", "routing profiles to compare, comma-separated (one run each)")
	fl.StringVar(&f.routerConfig, "router-config", "", "router configuration file (YAML, as the config-llmd-router ConfigMap); default: the built-in one with the precise index at --block-size")
	fl.IntVar(&f.pdThreshold, "pd-threshold", plan.DefaultPDThreshold, "uncached prompt tokens from which a profile with a P/D decider disaggregates")
	fl.IntVar(&f.blockSize, "block-size", 16, "engines' KV block size in tokens (vLLM --block-size)")
	fl.IntVar(&f.maxNumSeqs, "max-num-seqs", 256, "engines' running-batch bound (vLLM --max-num-seqs)")
	fl.StringVar(&f.maxBatched, "max-num-batched-tokens", "auto", "engines' per-step token budget (vLLM --max-num-batched-tokens): a token count, or auto: chosen from --slo-tpot as the webhook and kn-llmd local do (8192 without a TPOT target)")
	fl.IntVar(&f.numBlocks, "num-blocks", 0, "engines' KV capacity in blocks (0: derived from the profile)")
	fl.IntVar(&f.maxModelLen, "max-model-len", 0, "engines' context bound (0: the model's)")
	fl.StringVar(&f.model, "model", "", "model name requests carry (default: the profile's model)")
	fl.BoolVar(&f.noIgnoreEOS, "no-ignore-eos", false, "let engines stop before max_tokens (as bench --no-ignore-eos)")

	fl.DurationVar(&f.scrapeInterval, "scrape-interval", plan.DefaultScrapeInterval, "how often the activator reads each engine's metrics")
	fl.DurationVar(&f.staleAfter, "stale-after", plan.DefaultStaleAfter, "age at which scraped metrics count as unknown")
	fl.DurationVar(&f.kvEventDelay, "kv-event-delay", plan.DefaultKVEventDelay, "lag from an engine step's end to its KV events reaching the router")
	fl.DurationVar(&f.overhead, "overhead", 0, "network and proxy time added to every request hop to an engine")
	fl.DurationVar(&f.timeout, "timeout", plan.DefaultRequestTimeout, "client timeout per request, from send to the end of the stream (0: none)")
	fl.BoolVar(&f.flowControl, "flow-control", true, "hold requests in the activator while the pool is saturated (the standard tier)")
	fl.Float64Var(&f.maxSaturation, "flow-max-saturation", 1, "pool saturation under which requests are dispatched (0: no limit)")
	fl.DurationVar(&f.maxQueueTime, "flow-max-queue-time", time.Minute, "longest wait in the activator before a 503")
	fl.IntVar(&f.maxQueued, "flow-max-queued", 10000, "most requests waiting in the activator before a 503")

	fl.StringVar(&f.out, "out", "", "report directory (required); files in it are replaced")
	fl.DurationVar(&f.sloTTFT, "slo-ttft", 0, "TTFT target for SLO attainment and goodput (0: none)")
	fl.DurationVar(&f.sloTPOT, "slo-tpot", 0, "TPOT target for SLO attainment and goodput (0: none)")
	fl.DurationVar(&f.bucket, "bucket", time.Second, "time-series interval of the report")
	fl.BoolVar(&f.saveRecords, "save-records", false, "also write every request's measurements as <run>.records.jsonl")
	fl.StringArrayVar(&f.include, "include", nil, "summary.json of other runs (bench or plan) to report alongside (repeatable)")

	fl.StringVar(&f.sweepReplicas, "sweep-replicas", "", "replica counts to sweep: A..B, A..B:STEP or a list (replaces --engines)")
	fl.StringVar(&f.sweepPrefill, "sweep-prefill", "", "prefill counts to sweep or search with P/D: A..B or a list (replaces --prefill-engines)")
	fl.BoolVar(&f.findCapacity, "find-capacity", false, "search the smallest replica count meeting --target-attainment")
	fl.Float64Var(&f.targetAttainment, "target-attainment", 0.99, "SLO attainment (fraction of requests) a capacity must reach")
	fl.IntVar(&f.maxReplicas, "max-replicas", 64, "largest decode-capable count --find-capacity tries")

	fl.StringVar(&f.autoscaler, "autoscaler", "fixed", "replica counts: fixed (--engines, --prefill-engines) or slo (the SLO autoscaler, up to those); "+
		"a comma-separated list of fixed, slo, kpa, static-peak, instant-bound (formerly lower-bound) and clairvoyant compares them (see Autoscaling)")
	fl.IntVar(&f.minEngines, "min-engines", 0, "with --autoscaler slo or kpa: fewest decode-capable engines (0 allows scale to zero)")
	fl.DurationVar(&f.startupDelay, "startup-delay", 0, "with --autoscaler slo or kpa: time for a new engine to become ready (cold start)")
	fl.DurationVar(&f.scaleToZeroGrace, "scale-to-zero-grace", autoscaler.DefaultConfig().ScaleToZeroGracePeriod, "with --autoscaler slo or kpa: time without traffic before scaling to zero")
	fl.Float64Var(&f.sloPercentile, "slo-percentile", autoscaler.DefaultConfig().SLO.Percentile, "in an autoscaling comparison: the percentile the SLO decider plans for and the report's latencies are at")
	fl.StringVar(&f.kpaTarget, "kpa-target", "16", "with --autoscaler kpa: Knative's concurrency target per replica (autoscaling.knative.dev/target); a list runs one kpa per target")
	fl.Float64Var(&f.kpaUtilization, "kpa-utilization", 0, "with --autoscaler kpa: target utilization as a fraction (0: Knative's default, 0.7)")
	fl.Float64Var(&f.panicThreshold, "panic-threshold", autoscaler.DefaultConfig().PanicThresholdPercentage, "with --autoscaler slo or kpa: panic mode starts when the panic window wants this percentage of the ready replicas (Knative's panic-threshold-percentage)")
	fl.DurationVar(&f.scaleDownDelay, "scale-down-delay", 0, "with --autoscaler slo or kpa: hold the highest recommendation this long before scaling down (Knative's scale-down-delay)")
	fl.DurationVar(&f.lowerBoundWindow, "lower-bound-window", 10*time.Second, "with --autoscaler instant-bound or clairvoyant: the bounds' window")
	def := plan.DefaultBatch(0)
	fl.IntVar(&f.batchSoak, "batch-soak", 0, "run a batch soak with a backlog of this many batch requests (see Batch soak)")
	fl.IntVar(&f.batchInputLen, "batch-input-len", def.InputLen, "with --batch-soak: prompt tokens per batch request")
	fl.IntVar(&f.batchOutputLen, "batch-output-len", def.OutputLen, "with --batch-soak: output tokens per batch request")
	fl.IntVar(&f.batchConcurrency, "batch-concurrency", def.Concurrency, "with --batch-soak: batch requests outstanding at once (the Batch API's per-batch concurrency)")
	fl.Float64Var(&f.batchMaxSaturation, "batch-max-saturation", def.MaxSaturation, "with --batch-soak: pool saturation under which batch requests are dispatched (the batch tier's maxSaturation; 0: no limit)")
	fl.Float64Var(&f.soakLoad, "soak-load", 0.6, "with --batch-soak: the interactive traffic's share of capacity")
	fl.Float64Var(&f.criticalShare, "critical-share", 0.5, "with --batch-soak: share of the interactive requests in the critical tier (the rest standard)")
	return cmd
}

// replicasCSV is the file of every run's replica counts over time.
const replicasCSV = "replicas.csv"

// planJob is a validated `kn-llmd plan` invocation.
type planJob struct {
	cfg      plan.Config
	routings []string
	w        *workload.Workload
	so       plan.SummaryOptions
	out      string
	records  bool
	include  []bench.RunSummary

	// newScaler makes each run's scaler (nil: the fixed counts).
	newScaler func() (plan.Scaler, error)
	// compare is an autoscaling comparison (nil: none).
	compare *plan.Comparison
	// soak is a batch soak (nil: none), over the workload spec.
	soak     *plan.SoakOptions
	spec     workload.Spec
	specBase string

	capacity bool // a sweep or a search
	decode   []int
	prefill  []int
	search   bool
	target   float64
	maxRep   int
}

func (f *planFlags) job(cmd *cobra.Command) (*planJob, error) {
	changed := cmd.Flags().Changed
	if f.out == "" {
		return nil, errors.New("--out is required: the directory to write the report to")
	}
	j := &planJob{out: f.out, records: f.saveRecords}

	// Deployment.
	prof, err := engine.BuiltinProfile(f.profile)
	if err != nil {
		return nil, fmt.Errorf("--profile: %w", err)
	}
	for name, v := range map[string]int{"engines": f.engines, "block-size": f.blockSize, "max-num-seqs": f.maxNumSeqs} {
		if v < 1 {
			return nil, fmt.Errorf("--%s must be positive, got %d", name, v)
		}
	}
	for name, v := range map[string]int{"prefill-engines": f.prefillEngines, "pd-threshold": f.pdThreshold, "num-blocks": f.numBlocks, "max-model-len": f.maxModelLen} {
		if v < 0 {
			return nil, fmt.Errorf("--%s must not be negative, got %d", name, v)
		}
	}
	if f.blockSize > 1024 {
		return nil, fmt.Errorf("--block-size must be at most 1024, got %d", f.blockSize)
	}
	for name, d := range map[string]time.Duration{"kv-event-delay": f.kvEventDelay, "overhead": f.overhead, "timeout": f.timeout,
		"slo-ttft": f.sloTTFT, "slo-tpot": f.sloTPOT} {
		if d < 0 {
			return nil, fmt.Errorf("--%s must not be negative, got %s", name, d)
		}
	}
	for name, d := range map[string]time.Duration{"scrape-interval": f.scrapeInterval, "stale-after": f.staleAfter, "flow-max-queue-time": f.maxQueueTime} {
		if d <= 0 {
			return nil, fmt.Errorf("--%s must be positive, got %s", name, d)
		}
	}
	if f.bucket < time.Millisecond {
		return nil, fmt.Errorf("--bucket must be at least 1ms, got %s", f.bucket)
	}
	if f.maxSaturation < 0 {
		return nil, fmt.Errorf("--flow-max-saturation must not be negative, got %v", f.maxSaturation)
	}
	if f.maxQueued < 1 {
		return nil, fmt.Errorf("--flow-max-queued must be positive, got %d", f.maxQueued)
	}
	if !f.flowControl {
		for _, n := range []string{"flow-max-saturation", "flow-max-queue-time", "flow-max-queued"} {
			if changed(n) {
				return nil, fmt.Errorf("--%s needs --flow-control", n)
			}
		}
	}
	var rc *router.Config
	if f.routerConfig != "" {
		data, err := os.ReadFile(f.routerConfig)
		if err != nil {
			return nil, fmt.Errorf("--router-config: %w", err)
		}
		if rc, err = router.ParseConfig(data); err != nil {
			return nil, fmt.Errorf("--router-config %s: %w", f.routerConfig, err)
		}
	} else if rc, err = plan.RouterConfigFor(f.blockSize, 0); err != nil {
		return nil, err
	}
	cfg := plan.DefaultConfig()
	cfg.Profile = prof
	cfg.Engines, cfg.PrefillEngines = f.engines, f.prefillEngines
	budget, prefillBudget, _, err := plan.ChooseStepBudget(f.maxBatched, &prof, f.sloTPOT, f.prefillEngines > 0 || changed("sweep-prefill"))
	if err != nil {
		return nil, fmt.Errorf("--max-num-batched-tokens: %w", err)
	}
	cfg.Engine = plan.EngineConfig{BlockSize: f.blockSize, MaxNumSeqs: f.maxNumSeqs, MaxNumBatchedTokens: budget, PrefillMaxNumBatchedTokens: prefillBudget,
		NumBlocks: f.numBlocks, MaxModelLen: f.maxModelLen}
	cfg.RouterConfig = rc
	cfg.PDThreshold = f.pdThreshold
	cfg.Model = f.model
	cfg.IgnoreEOS = !f.noIgnoreEOS
	cfg.ScrapeInterval, cfg.StaleAfter = f.scrapeInterval, f.staleAfter
	cfg.KVEventDelay, cfg.Overhead, cfg.RequestTimeout = f.kvEventDelay, f.overhead, f.timeout
	cfg.Flow = plan.FlowConfig{Enabled: f.flowControl, MaxSaturation: f.maxSaturation, MaxQueueTime: f.maxQueueTime, MaxQueued: f.maxQueued}
	cfg.Seed = uint64(f.wl.seed)

	// Routing profiles.
	for _, name := range strings.Split(f.routing, ",") {
		name = strings.TrimSpace(name)
		if name == "" {
			return nil, fmt.Errorf("--routing %q: empty profile name", f.routing)
		}
		if !slices.Contains(rc.ProfileNames(), name) {
			return nil, fmt.Errorf("--routing: unknown profile %q (have %s)", name, strings.Join(rc.ProfileNames(), ", "))
		}
		if slices.Contains(j.routings, name) {
			return nil, fmt.Errorf("--routing: %q given twice", name)
		}
		j.routings = append(j.routings, name)
	}

	// Capacity.
	if changed("sweep-replicas") {
		if changed("engines") {
			return nil, errors.New("--sweep-replicas replaces --engines: give one")
		}
		if j.decode, err = parseCounts(f.sweepReplicas, 1); err != nil {
			return nil, fmt.Errorf("--sweep-replicas: %w", err)
		}
	}
	if changed("sweep-prefill") {
		if changed("prefill-engines") {
			return nil, errors.New("--sweep-prefill replaces --prefill-engines: give one")
		}
		if !changed("sweep-replicas") && !f.findCapacity {
			return nil, errors.New("--sweep-prefill needs --sweep-replicas or --find-capacity")
		}
		if j.prefill, err = parseCounts(f.sweepPrefill, 0); err != nil {
			return nil, fmt.Errorf("--sweep-prefill: %w", err)
		}
		if slices.Contains(j.prefill, 0) && slices.ContainsFunc(j.prefill, func(p int) bool { return p > 0 }) {
			// 0 prefill engines in a P/D deployment is still P/D (decode
			// role); say so rather than mix two topologies silently.
			cfg.Disaggregated = true
		}
	} else {
		j.prefill = []int{f.prefillEngines}
	}
	if slices.ContainsFunc(j.prefill, func(p int) bool { return p > 0 }) {
		cfg.Disaggregated = true
	}
	if f.findCapacity && changed("sweep-replicas") {
		return nil, errors.New("--find-capacity searches, --sweep-replicas sweeps: give one")
	}
	j.search = f.findCapacity
	j.capacity = f.findCapacity || changed("sweep-replicas")
	if changed("target-attainment") && !j.capacity && !strings.Contains(f.autoscaler, "static-peak") {
		return nil, errors.New("--target-attainment needs --sweep-replicas, --find-capacity or --autoscaler static-peak")
	}
	if changed("max-replicas") && !f.findCapacity {
		return nil, errors.New("--max-replicas needs --find-capacity")
	}
	if j.capacity {
		if f.sloTTFT == 0 && f.sloTPOT == 0 {
			return nil, errors.New("capacity questions need an SLO: give --slo-ttft and/or --slo-tpot")
		}
		if !(f.targetAttainment > 0 && f.targetAttainment <= 1) {
			return nil, fmt.Errorf("--target-attainment must be in (0, 1], got %v", f.targetAttainment)
		}
		if f.maxReplicas < 1 {
			return nil, fmt.Errorf("--max-replicas must be positive, got %d", f.maxReplicas)
		}
		j.target, j.maxRep = f.targetAttainment, f.maxReplicas
	}
	policies, err := parsePolicies(f.autoscaler)
	if err != nil {
		return nil, err
	}
	compare := len(policies) > 1 || (policies[0] != "fixed" && policies[0] != "slo")
	autoscaled := slices.Contains(policies, "slo") || slices.Contains(policies, "slo-forecast") || slices.Contains(policies, "kpa")
	if !autoscaled {
		for _, n := range []string{"min-engines", "startup-delay", "scale-to-zero-grace", "panic-threshold", "scale-down-delay"} {
			if changed(n) {
				return nil, fmt.Errorf("--%s needs --autoscaler slo or kpa", n)
			}
		}
	}
	if !slices.Contains(policies, "kpa") {
		for _, n := range []string{"kpa-target", "kpa-utilization"} {
			if changed(n) {
				return nil, fmt.Errorf("--%s needs --autoscaler kpa", n)
			}
		}
	}
	if !compare {
		for _, n := range []string{"lower-bound-window", "slo-percentile"} {
			if changed(n) {
				return nil, fmt.Errorf("--%s needs an autoscaling comparison (--autoscaler with kpa, static-peak, instant-bound, clairvoyant or several policies)", n)
			}
		}
	}
	if autoscaled || compare {
		if j.capacity {
			return nil, errors.New("--autoscaler " + f.autoscaler + " answers no capacity question: drop --sweep-replicas/--find-capacity")
		}
		if !f.flowControl {
			return nil, fmt.Errorf("--autoscaler %s needs --flow-control: requests arriving with no engine ready wait in its queue (and poke the autoscaler)", f.autoscaler)
		}
		if f.minEngines < 0 || f.minEngines > f.engines {
			return nil, fmt.Errorf("--min-engines must be in [0, --engines (%d)], got %d", f.engines, f.minEngines)
		}
		if f.startupDelay < 0 || f.scaleToZeroGrace < 0 {
			return nil, errors.New("--startup-delay and --scale-to-zero-grace must not be negative")
		}
	}
	a := cfg.AutoscalerConfig(plan.Replicas{Decode: f.minEngines}, plan.Replicas{Prefill: f.prefillEngines, Decode: f.engines})
	a.ScaleToZeroGracePeriod = f.scaleToZeroGrace
	a.PanicThresholdPercentage, a.ScaleDownDelay = f.panicThreshold, f.scaleDownDelay
	// The decider keeps headroom at the SLO percentile for the load that
	// arrives while a replica cold-starts.
	a.ColdStart = f.startupDelay
	if f.sloTTFT > 0 {
		a.SLO.TTFT = f.sloTTFT
	}
	if f.sloTPOT > 0 {
		a.SLO.TPOT = f.sloTPOT
	}
	if !(f.sloPercentile > 0 && f.sloPercentile < 100) {
		return nil, fmt.Errorf("--slo-percentile must be in (0, 100), got %v", f.sloPercentile)
	}
	a.SLO.Percentile = f.sloPercentile
	if err := a.Validate(); err != nil {
		return nil, fmt.Errorf("--autoscaler %s: %w", f.autoscaler, err)
	}
	switch {
	case compare:
		if len(j.routings) != 1 {
			return nil, errors.New("an autoscaling comparison runs one routing profile: give one with --routing")
		}
		if cfg.Disaggregated {
			return nil, errors.New("an autoscaling comparison is for deployments without P/D: drop --prefill-engines")
		}
		if !(f.targetAttainment > 0 && f.targetAttainment <= 1) {
			return nil, fmt.Errorf("--target-attainment must be in (0, 1], got %v", f.targetAttainment)
		}
		if f.lowerBoundWindow <= 0 {
			return nil, fmt.Errorf("--lower-bound-window must be positive, got %s", f.lowerBoundWindow)
		}
		c := &plan.Comparison{Policies: policies, SLO: a, Fixed: f.engines, Target: f.targetAttainment,
			Window: f.lowerBoundWindow, Startup: f.startupDelay, MinEngines: f.minEngines,
			KPA: plan.KPAConfig{TargetUtilization: f.kpaUtilization, MinScale: f.minEngines, MaxScale: f.engines, ScaleToZeroGrace: f.scaleToZeroGrace,
				PanicThresholdPercentage: f.panicThreshold, ScaleDownDelay: f.scaleDownDelay}}
		if slices.Contains(policies, "kpa") {
			if c.KPATargets, err = parseTargets(f.kpaTarget); err != nil {
				return nil, fmt.Errorf("--kpa-target: %w", err)
			}
			for _, t := range c.KPATargets {
				k := c.KPA
				k.Target = t
				if _, err := plan.NewKPAScaler(k); err != nil {
					return nil, fmt.Errorf("--kpa-target %g: %w", t, err)
				}
			}
		}
		j.compare = c
	case policies[0] == "slo":
		j.newScaler = func() (plan.Scaler, error) { return plan.NewSLOScaler(a, prof) }
		if cfg.Scaler, err = j.newScaler(); err != nil {
			return nil, fmt.Errorf("--autoscaler slo: %w", err)
		}
		cfg.Engines, cfg.PrefillEngines = f.minEngines, 0
		cfg.StartupDelay = f.startupDelay
	}
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	j.cfg = cfg

	// Workload, exactly as bench reads it.
	spec, base, err := f.wl.spec(changed)
	if err != nil {
		return nil, err
	}
	w, err := workload.Open(spec, base)
	if err != nil {
		return nil, fmt.Errorf("workload: %w", err)
	}
	if w.Len() == 0 {
		return nil, errors.New("workload: no requests (check --duration and --max-requests)")
	}
	j.w = w
	j.spec, j.specBase = spec, base
	if f.batchSoak > 0 {
		if j.capacity || j.compare != nil || j.newScaler != nil {
			return nil, errors.New("--batch-soak runs fixed engines: it does not combine with --autoscaler, --sweep-replicas or --find-capacity")
		}
		if !(f.soakLoad > 0 && f.soakLoad < 1) {
			return nil, fmt.Errorf("--soak-load must be in (0, 1), got %v", f.soakLoad)
		}
		if !(f.criticalShare >= 0 && f.criticalShare <= 1) {
			return nil, fmt.Errorf("--critical-share must be in [0, 1], got %v", f.criticalShare)
		}
		b := plan.DefaultBatch(f.batchSoak)
		b.InputLen, b.OutputLen, b.Concurrency, b.MaxSaturation = f.batchInputLen, f.batchOutputLen, f.batchConcurrency, f.batchMaxSaturation
		c := j.cfg
		c.Batch = b
		if err := c.Validate(); err != nil {
			return nil, fmt.Errorf("--batch-*: %w", err)
		}
		tiers := activatorTierSLOs()
		j.soak = &plan.SoakOptions{Load: f.soakLoad, Batch: b, CriticalShare: f.criticalShare, Critical: tiers["critical"], Standard: tiers["standard"]}
	} else {
		for _, n := range []string{"batch-input-len", "batch-output-len", "batch-concurrency", "batch-max-saturation", "soak-load", "critical-share"} {
			if changed(n) {
				return nil, fmt.Errorf("--%s needs --batch-soak", n)
			}
		}
	}
	j.so = plan.SummaryOptions{
		Workload: bench.DescribeWorkload(spec, w),
		SLO:      bench.SLO{TTFT: f.sloTTFT, TPOT: f.sloTPOT},
		Ladder:   bench.LadderSteps(w),
		Bucket:   f.bucket,
	}
	for _, p := range f.include {
		sum, err := bench.ReadSummary(p)
		if err != nil {
			return nil, fmt.Errorf("--include: %w", err)
		}
		j.include = append(j.include, sum.Runs...)
	}
	names := map[string]bool{}
	for _, r := range j.include {
		names[r.Name] = true
	}
	for _, r := range j.routings {
		if names[r] {
			return nil, fmt.Errorf("--include: a run named %q is also a routing profile of this plan", r)
		}
	}
	return j, nil
}

// parseCounts reads "A..B", "A..B:STEP" or "A,B,C" into ascending counts
// of at least lo.
func parseCounts(s string, lo int) ([]int, error) {
	var out []int
	atoi := func(v string) (int, error) {
		n, err := strconv.Atoi(strings.TrimSpace(v))
		if err != nil {
			return 0, fmt.Errorf("%q is not an integer", v)
		}
		if n < lo {
			return 0, fmt.Errorf("%d is below %d", n, lo)
		}
		return n, nil
	}
	if a, b, ok := strings.Cut(s, ".."); ok {
		step := 1
		if bb, st, ok := strings.Cut(b, ":"); ok {
			b = bb
			n, err := strconv.Atoi(strings.TrimSpace(st))
			if err != nil || n < 1 {
				return nil, fmt.Errorf("step %q must be a positive integer", st)
			}
			step = n
		}
		from, err := atoi(a)
		if err != nil {
			return nil, err
		}
		to, err := atoi(b)
		if err != nil {
			return nil, err
		}
		if to < from {
			return nil, fmt.Errorf("range %s is empty", s)
		}
		for n := from; n <= to; n += step {
			out = append(out, n)
		}
	} else {
		for _, v := range strings.Split(s, ",") {
			n, err := atoi(v)
			if err != nil {
				return nil, err
			}
			out = append(out, n)
		}
		slices.Sort(out)
		out = slices.Compact(out)
	}
	if len(out) > 256 {
		return nil, fmt.Errorf("%d counts: at most 256", len(out))
	}
	return out, nil
}

func (j *planJob) run(ctx context.Context, out io.Writer) error {
	if j.soak != nil {
		cfg := j.cfg
		cfg.Routing = j.routings[0]
		start := time.Now()
		r, err := plan.Soak(ctx, cfg, j.spec, j.specBase, *j.soak)
		if err != nil {
			return err
		}
		if err := plan.WriteSoak(j.out, r); err != nil {
			return err
		}
		plan.WriteSoakTable(out, r)
		fmt.Fprintf(out, "\n(%s wall) report: %s\n", time.Since(start).Round(time.Millisecond), filepath.Join(j.out, plan.SoakMD))
		return nil
	}
	if j.capacity {
		return j.runCapacity(ctx, out)
	}
	if j.compare != nil {
		base := j.cfg
		base.Routing = j.routings[0]
		c := *j.compare
		c.Out, c.Records, c.Include = j.out, j.records, j.include
		return c.Run(ctx, base, j.w, j.so, out)
	}
	var runs []bench.RunSummary
	var csv bytes.Buffer
	for _, name := range j.routings {
		cfg := j.cfg
		cfg.Routing = name
		if j.newScaler != nil {
			sc, err := j.newScaler()
			if err != nil {
				return err
			}
			cfg.Scaler = sc
		}
		start := time.Now()
		sum, res, err := plan.RunWorkload(ctx, cfg, j.w, j.so)
		if err != nil {
			return fmt.Errorf("routing %s: %w", name, err)
		}
		fmt.Fprintf(out, "%s (virtual %s in %s wall, %d events)\n", bench.OneLine(&sum),
			res.Stats.End.Round(time.Millisecond), time.Since(start).Round(time.Millisecond), res.Stats.Events)
		st := &res.Stats
		fmt.Fprintf(out, "  %s: %.1f replica-seconds (%.1f GPU-seconds), peak %s, %d cold starts, %d replica changes\n",
			sum.Name, st.ReplicaSeconds, st.GPUSeconds, st.PeakReplicas, st.ColdStarts, max(len(res.Replicas)-1, 0))
		if err := plan.WriteReplicaCSV(&csv, len(runs) == 0, sum.Name, res.Replicas); err != nil {
			return err
		}
		if j.records {
			if err := bench.WriteRecords(filepath.Join(j.out, bench.RecordsFile(sum.Name)), res.Records); err != nil {
				return err
			}
		}
		runs = append(runs, sum)
	}
	if err := bench.WriteReport(j.out, append(runs, j.include...)); err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(j.out, replicasCSV), csv.Bytes(), 0o644); err != nil {
		return err
	}
	fmt.Fprintf(out, "report: %s\n", filepath.Join(j.out, bench.ReportFile))
	return nil
}

func (j *planJob) runCapacity(ctx context.Context, out io.Writer) error {
	rep := plan.CapacityReport{
		Workload: j.so.Workload,
		SLO:      bench.SLOTargets{TTFTSeconds: j.so.SLO.TTFT.Seconds(), TPOTSeconds: j.so.SLO.TPOT.Seconds()},
		Target:   j.target,
	}
	var runs []bench.RunSummary
	for _, name := range j.routings {
		cfg := j.cfg
		cfg.Routing = name
		if rep.Deployment == "" {
			rep.Deployment = fmt.Sprintf("kn-llmd plan, %s engines", cfg.Profile.Name)
			if cfg.Disaggregated {
				rep.Deployment += " with prefill/decode disaggregation"
			}
		}
		kept := map[plan.Replicas]bench.RunSummary{}
		visit := func(p plan.Point, s *bench.RunSummary) {
			fmt.Fprintf(out, "%s\n", bench.OneLine(s))
			kept[p.Replicas] = *s
		}
		eval := plan.Evaluate(cfg, j.w, j.so)
		var c plan.Capacity
		if j.search {
			res, err := plan.FindCapacity(ctx, eval, name, j.target,
				plan.Range{Min: j.prefill[0], Max: j.prefill[len(j.prefill)-1]}, plan.Range{Min: 1, Max: j.maxRep}, visit)
			if err != nil {
				return fmt.Errorf("routing %s: %w", name, err)
			}
			c = res
		} else {
			var counts []plan.Replicas
			for _, p := range j.prefill {
				for _, d := range j.decode {
					counts = append(counts, plan.Replicas{Prefill: p, Decode: d})
				}
			}
			pts, err := plan.Sweep(ctx, eval, name, counts, visit)
			if err != nil {
				return fmt.Errorf("routing %s: %w", name, err)
			}
			c = plan.CapacityFromPoints(name, j.target, pts)
		}
		rep.Results = append(rep.Results, c)
		pick := c.Replicas
		if !c.Found && len(c.Points) > 0 {
			pick = c.Points[len(c.Points)-1].Replicas
		}
		if s, ok := kept[pick]; ok {
			runs = append(runs, s)
		}
		ans := "none in the range tried"
		if c.Found {
			ans = c.Replicas.String()
		}
		fmt.Fprintf(out, "capacity %s: %s\n", name, ans)
	}
	if err := plan.WriteCapacity(j.out, rep); err != nil {
		return err
	}
	if len(runs) > 0 {
		if err := bench.WriteReport(j.out, append(runs, j.include...)); err != nil {
			return err
		}
	}
	fmt.Fprintf(out, "capacity: %s\n", filepath.Join(j.out, plan.CapacityMD))
	return nil
}

// parsePolicies reads --autoscaler: one policy or a comma-separated list.
func parsePolicies(s string) ([]string, error) {
	var out []string
	for _, p := range strings.Split(s, ",") {
		p = strings.TrimSpace(p)
		c := plan.CanonicalPolicy(p)
		if c == "" {
			return nil, fmt.Errorf("--autoscaler: unknown policy %q (have %s)", p, strings.Join(plan.ComparePolicies, ", "))
		}
		p = c
		if slices.Contains(out, p) {
			return nil, fmt.Errorf("--autoscaler: %q given twice", p)
		}
		out = append(out, p)
	}
	if !slices.ContainsFunc(out, func(p string) bool { return !plan.IsBound(p) }) {
		return nil, fmt.Errorf("--autoscaler %s needs another policy: a bound is computed from a run's token counts", strings.Join(out, ","))
	}
	return out, nil
}

// parseTargets reads a comma-separated list of positive numbers.
func parseTargets(s string) ([]float64, error) {
	var out []float64
	for _, v := range strings.Split(s, ",") {
		t, err := strconv.ParseFloat(strings.TrimSpace(v), 64)
		if err != nil || !(t > 0) || t > 1e6 {
			return nil, fmt.Errorf("%q is not a positive number up to 1e6", v)
		}
		if slices.Contains(out, t) {
			return nil, fmt.Errorf("%g given twice", t)
		}
		out = append(out, t)
	}
	return out, nil
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

// activatorTierSLOs is the activator's default tier table's targets by
// tier name.
func activatorTierSLOs() map[string]bench.SLO {
	t := activator.DefaultTiers()
	out := map[string]bench.SLO{}
	for _, n := range t.Names() {
		tier, _ := t.Get(n)
		out[n] = bench.SLO{TTFT: time.Duration(tier.TTFT), TPOT: time.Duration(tier.TPOT)}
	}
	return out
}
