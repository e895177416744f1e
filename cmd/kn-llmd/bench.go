package main

import (
	"errors"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/llmd-kn/llmd-kn/pkg/bench"
	"github.com/llmd-kn/llmd-kn/pkg/workload"
)

// benchFlags are `kn-llmd bench`'s flags.
type benchFlags struct {
	url, name, model    string
	runs                []string
	api, promptFormat   string
	noIgnoreEOS         bool
	headers             []string
	workloadFile, trace string
	dataset, arrival    string
	rate                float64
	ladder              string
	speedup, rateScale  float64
	idleEvery, idleGap  time.Duration
	maxRequests         int
	duration            time.Duration
	seed                int64
	maxConcurrency      int
	hardCap             int
	timeout             time.Duration
	out                 string
	sloTTFT, sloTPOT    time.Duration
	bucket, cooldown    time.Duration
	saveRecords         bool
	progress            string
	include             []string
}

const benchLong = `Replay a workload against OpenAI-compatible endpoints in real time and
write a report: summary.json (schema: go doc github.com/llmd-kn/llmd-kn/pkg/bench),
SVG charts and report.md.

Requests are sent open loop: each at its scheduled time whether or not
earlier ones have finished. Every request streams (stream_options.include_usage)
and asks for exactly the workload's output length (max_tokens with vLLM's
ignore_eos). The report gives TTFT, TPOT, inter-token latency and end-to-end
latency (p50/p90/p99), throughput, SLO attainment and goodput for the
--slo-* targets, the prefix-cache hit rate from usage.cached_tokens, errors
by kind, and the load generator's own lateness.

Targets. One run:   --url URL [--name NAME]
         Several:   --run NAME=URL --run NAME=URL ...
Runs happen one after the other with the same workload and are compared
side by side (one table, one chart per metric). A URL with no path gets
/v1/completions (or /v1/chat/completions with --api chat); a URL with a path
is used as given. Without --model each run uses the first model its server
lists at /v1/models.

Workload: exactly one of
  --workload FILE           a pkg/workload spec (YAML or JSON); relative trace
                            paths in it are relative to FILE
  --trace mooncake:PATH     the Mooncake JSONL trace, at its own timestamps
  --trace azure:PATH        the Azure LLM inference CSV trace, at its timestamps
  --dataset NAME            a generator with its default parameters:
                            shared-prefix (llm-d's benchmark), random,
                            prefix-repetition
Arrivals (replace the workload's): --rate R (Poisson; --arrival constant for
evenly spaced), or --ladder llm-d | RATE:DURATION,RATE:DURATION,...
Limits and scaling (replace the workload's): --speedup, --rate-scale,
--max-requests, --duration, --seed.

Press Ctrl-C to stop: the report is written with what was measured.`

const benchExample = `  # The simulator, a Poisson load of 5 req/s of vLLM's random dataset for a minute
  kn-llmd bench --url http://127.0.0.1:8000 --dataset random --rate 5 --duration 1m --out out/

  # llm-d's shared-prefix ladder, twice as fast, two routing setups side by side
  kn-llmd bench --dataset shared-prefix --ladder llm-d --speedup 2 \
      --run default=http://127.0.0.1:8080 --run round-robin=http://127.0.0.1:8081 \
      --slo-ttft 2s --slo-tpot 100ms --out out/ladder

  # Ten minutes of the Mooncake trace replayed at 4x
  kn-llmd bench --url http://gw.example.com/ns/svc --model llama \
      --trace mooncake:../shared/data/mooncake/synthetic_trace.jsonl --speedup 4 --duration 10m --out out/mooncake`

// addWorkloadFlags registers the workload flags bench and plan share; verb
// is what the command does with a request ("send", "replay").
func (f *benchFlags) addWorkloadFlags(fl *pflag.FlagSet, verb string) {
	fl.StringVar(&f.workloadFile, "workload", "", "workload spec file (YAML or JSON)")
	fl.StringVar(&f.trace, "trace", "", "trace to replay: mooncake:PATH or azure:PATH")
	fl.StringVar(&f.dataset, "dataset", "", "generated dataset with default parameters: shared-prefix, random or prefix-repetition")
	fl.Float64Var(&f.rate, "rate", 0, "arrival rate in requests per second (Poisson unless --arrival constant)")
	fl.StringVar(&f.arrival, "arrival", "", "with --rate: poisson (default) or constant")
	fl.StringVar(&f.ladder, "ladder", "", "rate ladder: llm-d, or RATE:DURATION steps separated by commas (e.g. 2:30s,4:30s)")
	fl.Float64Var(&f.speedup, "speedup", 0, "divide every arrival time by this (2 = twice as fast)")
	fl.Float64Var(&f.rateScale, "rate-scale", 0, "multiply generated arrival rates (not trace timestamps) by this")
	fl.IntVar(&f.maxRequests, "max-requests", 0, verb+" at most this many requests (0: the workload's)")
	fl.DurationVar(&f.duration, "duration", 0, verb+" only requests scheduled before this time (0: the workload's)")
	fl.DurationVar(&f.idleEvery, "idle-every", 0, "with --idle-gap: insert an idle gap after every this much of arrival time (scale to zero and cold starts)")
	fl.DurationVar(&f.idleGap, "idle-gap", 0, "with --idle-every: length of each idle gap")
}

func newBenchCmd() *cobra.Command {
	f := &benchFlags{}
	cmd := &cobra.Command{
		Use:     "bench",
		Short:   "Replay a workload against OpenAI-compatible endpoints and report latency, throughput and SLO attainment",
		Long:    benchLong,
		Example: benchExample,
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			suite, err := f.suite(cmd)
			if err != nil {
				return err
			}
			cmd.SilenceUsage = true
			ctx, stop := signal.NotifyContext(cmd.Context(), os.Interrupt, syscall.SIGTERM)
			defer stop()
			_, err = suite.Run(ctx)
			if suite.Out != "" {
				if _, serr := os.Stat(filepath.Join(suite.Out, bench.ReportFile)); serr == nil {
					fmt.Fprintf(cmd.OutOrStdout(), "report: %s\n", filepath.Join(suite.Out, bench.ReportFile))
				}
			}
			if err != nil && ctx.Err() != nil {
				return errors.New("interrupted; the report holds what was measured")
			}
			return err
		},
	}
	fl := cmd.Flags()
	fl.StringVar(&f.url, "url", "http://127.0.0.1:8000", "endpoint of a single run (see --run for several)")
	fl.StringVar(&f.name, "name", "run", "name of the single run in the report")
	fl.StringArrayVar(&f.runs, "run", nil, "a run as NAME=URL; repeat to compare several (replaces --url and --name)")
	fl.StringVar(&f.model, "model", "", "model to request (default: the first model the server lists at /v1/models)")
	fl.StringVar(&f.api, "api", "completions", "OpenAI API: completions or chat")
	fl.StringVar(&f.promptFormat, "prompt-format", "", "how prompts are sent: ids (token ids; completions only) or text (default: ids for completions, text for chat)")
	fl.BoolVar(&f.noIgnoreEOS, "no-ignore-eos", false, `do not send vLLM's "ignore_eos": true (outputs may be shorter)`)
	fl.StringArrayVar(&f.headers, "header", nil, `header added to every request, "Name: value" (repeatable; never written to the report); "Host: NAME" sends to the URL's address with that Host (e.g. a traffic tag's critical-{svc}.{ns}.localhost)`)

	f.addWorkloadFlags(fl, "send")
	fl.Int64Var(&f.seed, "seed", 0, "seed of generated prompts and arrivals (default: the workload's, else 0)")

	fl.IntVar(&f.maxConcurrency, "max-concurrency", 0, "most requests in flight; more wait, which shows as lateness (0: unlimited)")
	fl.IntVar(&f.hardCap, "hard-cap", bench.DefaultHardCap, "safety bound on requests in flight; beyond it requests are dropped and counted")
	fl.DurationVar(&f.timeout, "timeout", bench.DefaultRequestTimeout, "per-request timeout, from send to the end of the stream")

	fl.StringVar(&f.out, "out", "", "report directory (required); files in it are replaced")
	fl.DurationVar(&f.sloTTFT, "slo-ttft", 0, "TTFT target for SLO attainment and goodput (0: none)")
	fl.DurationVar(&f.sloTPOT, "slo-tpot", 0, "TPOT target for SLO attainment and goodput (0: none)")
	fl.DurationVar(&f.bucket, "bucket", time.Second, "time-series interval of the report")
	fl.DurationVar(&f.cooldown, "cooldown", 0, "pause between runs")
	fl.BoolVar(&f.saveRecords, "save-records", false, "also write every request's measurements as <run>.records.jsonl")
	fl.StringVar(&f.progress, "progress", "auto", "progress display on stderr: auto (a bar on a terminal, lines every 5s otherwise), bar, lines or none")
	fl.StringArrayVar(&f.include, "include", nil, "summary.json of earlier runs (bench or plan) to report alongside (repeatable)")
	return cmd
}

// suite validates the flags and builds the suite they describe.
func (f *benchFlags) suite(cmd *cobra.Command) (*bench.Suite, error) {
	changed := cmd.Flags().Changed
	s := &bench.Suite{
		SLO:         bench.SLO{TTFT: f.sloTTFT, TPOT: f.sloTPOT},
		Out:         f.out,
		SaveRecords: f.saveRecords,
		Log:         cmd.OutOrStdout(),
	}
	if f.out == "" {
		return nil, errors.New("--out is required: the directory to write the report to")
	}

	// Targets.
	if len(f.runs) > 0 {
		if changed("url") || changed("name") {
			return nil, errors.New("--run replaces --url and --name: give either --run NAME=URL (repeatable) or --url [--name]")
		}
		for _, r := range f.runs {
			name, u, ok := strings.Cut(r, "=")
			name = strings.TrimSpace(name)
			if !ok || name == "" || u == "" {
				return nil, fmt.Errorf("--run %q: want NAME=URL", r)
			}
			s.Targets = append(s.Targets, bench.Target{Name: name, URL: u, Model: f.model})
		}
	} else {
		if f.name == "" {
			return nil, errors.New("--name must not be empty")
		}
		s.Targets = []bench.Target{{Name: f.name, URL: f.url, Model: f.model}}
	}

	// Driver.
	api := bench.API(f.api)
	if api != bench.APICompletions && api != bench.APIChat {
		return nil, fmt.Errorf("--api must be completions or chat, got %q", f.api)
	}
	pf := bench.PromptFormat(f.promptFormat)
	switch {
	case pf == "":
	case pf != bench.PromptTokenIDs && pf != bench.PromptText:
		return nil, fmt.Errorf("--prompt-format must be ids or text, got %q", f.promptFormat)
	case pf == bench.PromptTokenIDs && api == bench.APIChat:
		return nil, errors.New("--prompt-format ids needs --api completions: chat messages carry text")
	}
	hdr, err := bench.ParseHeaders(f.headers)
	if err != nil {
		return nil, fmt.Errorf("--header: %w", err)
	}
	if f.hardCap < 1 {
		return nil, fmt.Errorf("--hard-cap must be positive, got %d", f.hardCap)
	}
	if f.maxConcurrency < 0 || f.maxConcurrency > f.hardCap {
		return nil, fmt.Errorf("--max-concurrency must be in [0, --hard-cap = %d], got %d", f.hardCap, f.maxConcurrency)
	}
	if f.timeout <= 0 {
		return nil, fmt.Errorf("--timeout must be positive, got %s", f.timeout)
	}
	s.Config = bench.Config{
		API: api, Prompt: pf, NoIgnoreEOS: f.noIgnoreEOS, Header: hdr,
		MaxConcurrency: f.maxConcurrency, HardCap: f.hardCap, RequestTimeout: f.timeout,
	}

	// Report.
	for name, d := range map[string]time.Duration{"slo-ttft": f.sloTTFT, "slo-tpot": f.sloTPOT, "cooldown": f.cooldown} {
		if d < 0 {
			return nil, fmt.Errorf("--%s must not be negative, got %s", name, d)
		}
	}
	if f.bucket < time.Millisecond {
		return nil, fmt.Errorf("--bucket must be at least 1ms, got %s", f.bucket)
	}
	s.Bucket, s.Cooldown = f.bucket, f.cooldown
	switch f.progress {
	case "auto":
		s.ProgressMode = bench.ProgressLines
		if bench.IsTerminal(os.Stderr) {
			s.ProgressMode = bench.ProgressBar
		}
	case "bar":
		s.ProgressMode = bench.ProgressBar
	case "lines":
		s.ProgressMode = bench.ProgressLines
	case "none":
		s.ProgressMode = bench.ProgressNone
	default:
		return nil, fmt.Errorf("--progress must be auto, bar, lines or none, got %q", f.progress)
	}
	s.Progress = cmd.ErrOrStderr()
	for _, p := range f.include {
		sum, err := bench.ReadSummary(p)
		if err != nil {
			return nil, fmt.Errorf("--include: %w", err)
		}
		s.Include = append(s.Include, sum.Runs...)
	}

	// Workload.
	spec, base, err := f.spec(changed)
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
	s.Workload, s.Info = w, bench.DescribeWorkload(spec, w)
	if err := s.Validate(); err != nil {
		return nil, err
	}
	return s, nil
}

// spec builds the workload spec from --workload, --trace or --dataset and
// the flags that override it; base is the directory relative trace paths
// are taken from.
func (f *benchFlags) spec(changed func(string) bool) (workload.Spec, string, error) {
	given := 0
	for _, v := range []string{f.workloadFile, f.trace, f.dataset} {
		if v != "" {
			given++
		}
	}
	if given != 1 {
		return workload.Spec{}, "", errors.New("give one workload: --workload FILE, --trace mooncake:PATH|azure:PATH or --dataset shared-prefix|random|prefix-repetition")
	}
	var spec workload.Spec
	base := "."
	switch {
	case f.workloadFile != "":
		data, err := os.ReadFile(f.workloadFile)
		if err != nil {
			return spec, "", fmt.Errorf("--workload: %w", err)
		}
		if spec, err = workload.ParseSpec(data); err != nil {
			return spec, "", fmt.Errorf("--workload %s: %w", f.workloadFile, err)
		}
		base = filepath.Dir(f.workloadFile)
	case f.trace != "":
		kind, path, ok := strings.Cut(f.trace, ":")
		if !ok || path == "" || (kind != workload.KindMooncake && kind != workload.KindAzure) {
			return spec, "", fmt.Errorf("--trace %q: want mooncake:PATH or azure:PATH", f.trace)
		}
		if _, err := os.Stat(path); err != nil {
			return spec, "", fmt.Errorf("--trace: %w", err)
		}
		spec = workload.Spec{Kind: kind, Path: path}
	default:
		switch f.dataset {
		case workload.KindSharedPrefix, workload.KindRandom, workload.KindPrefixRepetition:
			spec = workload.Spec{Kind: f.dataset}
		default:
			return spec, "", fmt.Errorf("--dataset must be shared-prefix, random or prefix-repetition, got %q (other settings: --workload FILE)", f.dataset)
		}
	}

	// Arrivals.
	if changed("arrival") && !changed("rate") {
		return spec, "", errors.New("--arrival needs --rate")
	}
	if changed("rate") && changed("ladder") {
		return spec, "", errors.New("--rate and --ladder both set arrivals: give one")
	}
	if changed("rate") {
		if !(f.rate > 0) {
			return spec, "", fmt.Errorf("--rate must be positive, got %v", f.rate)
		}
		kind := workload.ArrivalPoisson
		switch f.arrival {
		case "", workload.ArrivalPoisson:
		case workload.ArrivalConstant:
			kind = workload.ArrivalConstant
		default:
			return spec, "", fmt.Errorf("--arrival must be poisson or constant, got %q", f.arrival)
		}
		spec.Arrival = workload.Arrival{Kind: kind, Rate: f.rate}
	}
	if changed("ladder") {
		a, err := parseLadder(f.ladder)
		if err != nil {
			return spec, "", fmt.Errorf("--ladder: %w", err)
		}
		spec.Arrival = a
	}
	if spec.Arrival.Kind == "" && (spec.Kind != workload.KindMooncake && spec.Kind != workload.KindAzure) {
		return spec, "", fmt.Errorf("a %s workload has no timestamps: give --rate or --ladder", spec.Kind)
	}

	// Scaling and limits.
	if changed("speedup") {
		if !(f.speedup > 0) {
			return spec, "", fmt.Errorf("--speedup must be positive, got %v", f.speedup)
		}
		spec.Speedup = f.speedup
	}
	if changed("rate-scale") {
		if !(f.rateScale > 0) {
			return spec, "", fmt.Errorf("--rate-scale must be positive, got %v", f.rateScale)
		}
		spec.RateScale = f.rateScale
	}
	if changed("max-requests") {
		if f.maxRequests < 1 {
			return spec, "", fmt.Errorf("--max-requests must be positive, got %d", f.maxRequests)
		}
		spec.MaxRequests = f.maxRequests
	}
	if changed("duration") {
		if f.duration <= 0 {
			return spec, "", fmt.Errorf("--duration must be positive, got %s", f.duration)
		}
		spec.MaxDuration = workload.Duration{Duration: f.duration}
	}
	if changed("idle-every") || changed("idle-gap") {
		spec.IdleEvery, spec.IdleGap = workload.Duration{Duration: f.idleEvery}, workload.Duration{Duration: f.idleGap}
	}
	if changed("seed") {
		spec.Seed = f.seed
	}
	if err := spec.Validate(); err != nil {
		if f.workloadFile == "" {
			// The spec was built from flags: name the flags.
			return spec, "", fmt.Errorf("workload: %s", specToFlags.Replace(err.Error()))
		}
		return spec, "", fmt.Errorf("workload: %w", err)
	}
	return spec, base, nil
}

// specToFlags renames a workload spec's fields in its errors after the
// flags that set them.
var specToFlags = strings.NewReplacer(
	"rateScale", "--rate-scale", "speedup", "--speedup",
	"maxRequests", "--max-requests", "maxDuration", "--duration", "idleEvery", "--idle-every", "idleGap", "--idle-gap",
	"arrival.rate", "--rate", "arrival.steps", "--ladder steps",
)

// parseLadder reads "llm-d" or "RATE:DURATION,RATE:DURATION,...".
func parseLadder(s string) (workload.Arrival, error) {
	if s == workload.LadderPresetLLMD {
		return workload.Arrival{Kind: workload.ArrivalLadder, Preset: s}, nil
	}
	a := workload.Arrival{Kind: workload.ArrivalLadder}
	for i, step := range strings.Split(s, ",") {
		r, d, ok := strings.Cut(strings.TrimSpace(step), ":")
		if !ok {
			return a, fmt.Errorf("step %d %q: want RATE:DURATION such as 5:30s (or the preset llm-d)", i+1, step)
		}
		rate, err := strconv.ParseFloat(r, 64)
		if err != nil || rate < 0 {
			return a, fmt.Errorf("step %d: rate %q is not a non-negative number", i+1, r)
		}
		dur, err := time.ParseDuration(d)
		if err != nil || dur <= 0 {
			return a, fmt.Errorf("step %d: duration %q is not a positive duration such as 30s", i+1, d)
		}
		a.Steps = append(a.Steps, workload.Step{Rate: rate, Duration: workload.Duration{Duration: dur}})
	}
	return a, nil
}
