package plan

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"math"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/llmd-kn/llmd-kn/pkg/bench"
	"github.com/llmd-kn/llmd-kn/pkg/engine"
	"github.com/llmd-kn/llmd-kn/pkg/workload"
)

// Files of a batch soak.
const (
	SoakJSON = "batch-soak.json"
	SoakMD   = "batch-soak.md"
)

// SoakOptions configure a batch soak (Soak).
type SoakOptions struct {
	// Load is the interactive traffic's share of the deployment's capacity
	// (0.6): the workload is rate-scaled to it.
	Load float64
	// Batch is the backlog (its Until is set by Soak).
	Batch BatchConfig
	// CriticalShare of the interactive requests are critical, the rest
	// standard.
	CriticalShare float64
	// CapacityWindow is how long each capacity run lasts (5 min).
	CapacityWindow time.Duration
	// Critical and Standard are the tiers' targets (the activator's default
	// tier table: 500ms/50ms and 2s/100ms).
	Critical, Standard bench.SLO
	// Command is the command line, for the report.
	Command string
}

// TierFigures are one tier's interactive figures in a run.
type TierFigures struct {
	Requests int `json:"requests"`
	Failed   int `json:"failed"`
	// TTFTP90 and TPOTP90 are over the completed requests, in seconds;
	// Attainment against the tier's targets (failed requests are misses).
	// TTFTP50 and TTFTMean are there beside p90: over the few hundred
	// requests sent while batch ran, a p90 moves by several percent with
	// any change to the run (a seed, one more token of step budget), the
	// mean and median far less.
	TTFTP50    float64    `json:"ttftP50Seconds"`
	TTFTMean   float64    `json:"ttftMeanSeconds"`
	TTFTP90    float64    `json:"ttftP90Seconds"`
	TPOTP90    float64    `json:"tpotP90Seconds"`
	Attainment Attainment `json:"attainment"`
}

// SoakResult is a batch soak's figures.
type SoakResult struct {
	Command  string `json:"command,omitempty"`
	Profile  string `json:"profile"`
	Engines  int    `json:"engines"`
	Routing  string `json:"routing"`
	Workload string `json:"workload"`
	// InteractiveCapacity is the deployment's throughput (requests/s) on
	// a saturating closed loop of the workload's own requests (in order,
	// prompts and prefix sharing as in the trace); RateScale the
	// factor applied to the workload's arrivals to reach Load of it.
	InteractiveCapacity float64 `json:"interactiveCapacityRps"`
	MeanPrompt          float64 `json:"meanPromptTokens"`
	MeanOutput          float64 `json:"meanOutputTokens"`
	Load                float64 `json:"load"`
	RateScale           float64 `json:"rateScale"`
	// InteractiveRate is the scaled workload's request rate; Utilization
	// its share of InteractiveCapacity (what it leaves idle is 1 minus it).
	InteractiveRate float64 `json:"interactiveRps"`
	Utilization     float64 `json:"utilization"`
	Duration        float64 `json:"durationSeconds"`
	// BatchCapacity is the batch shape's throughput alone (output
	// tokens/s, no saturation gate, saturating concurrency).
	BatchCapacity float64 `json:"batchCapacityOutputTokensPerSecond"`
	// Batch: the backlog; its throughput (output tokens/s and requests/s)
	// over Window (from its start to the end of the workload or to its
	// draining), IdleUsed the share of the idle capacity it used:
	// throughput / ((1 - Utilization) x BatchCapacity).
	Batch           BatchConfig `json:"batch"`
	BatchCompleted  int         `json:"batchCompleted"`
	BatchRetries    int         `json:"batchRetries"`
	BatchFailed     int         `json:"batchFailed"`
	Window          float64     `json:"windowSeconds"`
	BatchTokensRate float64     `json:"batchOutputTokensPerSecond"`
	BatchRate       float64     `json:"batchRps"`
	IdleUsed        float64     `json:"idleCapacityUsed"`
	// Alone and WithBatch are the interactive tiers' figures without and
	// with the backlog.
	Alone     map[string]TierFigures `json:"alone"`
	WithBatch map[string]TierFigures `json:"withBatch"`
	// AloneBeside and WithBatchBeside are the same over the interactive
	// requests sent while batch work ran (from its first request to the
	// end of Window), the same requests in both runs: where the backlog
	// drains early, the whole run's figures dilute its effect.
	AloneBeside     map[string]TierFigures `json:"aloneBesideBatch,omitempty"`
	WithBatchBeside map[string]TierFigures `json:"withBatchBesideBatch,omitempty"`
}

// emptySource yields no request.
type emptySource struct{}

func (emptySource) Next() (workload.Request, bool) { return workload.Request{}, false }
func (emptySource) Len() int                       { return 0 }

// Soak measures how much of the capacity an interactive workload leaves
// idle a batch backlog uses, and what the backlog costs the interactive
// tiers: the workload (opened from spec, rate-scaled to opts.Load of the
// deployment's capacity for its own requests) runs on base's fixed engines
// alone, then with the backlog; the batch shape's capacity is measured
// alone. Engines run vLLM's priority policy (the activator sends each
// tier's priority). Each run is deterministic for a seed.
func Soak(ctx context.Context, base Config, spec workload.Spec, baseDir string, opts SoakOptions) (*SoakResult, error) {
	if !(opts.Load > 0 && opts.Load < 1) {
		return nil, fmt.Errorf("soak: load must be in (0, 1), got %v", opts.Load)
	}
	if opts.Batch.Requests < 1 {
		return nil, fmt.Errorf("soak: a batch backlog is required, got %d requests", opts.Batch.Requests)
	}
	if opts.CapacityWindow <= 0 {
		opts.CapacityWindow = 5 * time.Minute
	}
	base.Scaler = nil
	base.Engine.Policy = engine.PolicyPriority
	base.CriticalShare = opts.CriticalShare
	base.Batch = BatchConfig{}

	w, err := workload.Open(spec, baseDir)
	if err != nil {
		return nil, fmt.Errorf("soak: workload: %w", err)
	}
	var n int
	var prompt, output float64
	var last time.Duration
	for r := range w.All() {
		n++
		prompt += float64(r.PromptLen)
		output += float64(r.MaxTokens)
		last = r.At
	}
	if n < 2 || last <= 0 {
		return nil, fmt.Errorf("soak: the workload needs at least two requests over a positive duration")
	}
	res := &SoakResult{Command: opts.Command, Profile: base.Profile.Name, Engines: base.Engines, Routing: base.Routing,
		MeanPrompt: prompt / float64(n), MeanOutput: output / float64(n), Load: opts.Load, Batch: opts.Batch}
	seqs := base.Engine.MaxNumSeqs
	if seqs <= 0 {
		seqs = 256
	}
	saturating := func(in, out int) BatchConfig {
		c := opts.Batch
		c.Requests, c.InputLen, c.OutputLen = 1<<30, max(in, 1), max(out, 1)
		c.Concurrency, c.MaxSaturation, c.MaxPerPod, c.MaxPrefillPerPod, c.YieldToInteractive, c.Start, c.Until = seqs*max(base.Engines, 1), 0, 0, 0, false, 0, opts.CapacityWindow
		return c
	}
	// Capacity of the interactive shape: requests completed after a fifth
	// of the window (past the ramp), per second.
	capRun := func(c BatchConfig) (*BatchResult, error) {
		cfg := base
		cfg.Batch = c
		r, err := Run(ctx, cfg, emptySource{})
		if err != nil {
			return nil, err
		}
		return r.Batch, nil
	}
	// Each of the workload's requests once, in order (a repeat would hit
	// the prefix cache the first pass filled): the window ends with the
	// last one sent if that comes first. The front marks the backlog
	// drained only when it next tries to send; a run whose last request
	// ends before the window does not get there, so every request sent
	// (none refused for good) ends the window as well: a generated
	// dataset of short requests runs out within the first minute.
	own := saturating(int(math.Round(res.MeanPrompt)), int(math.Round(res.MeanOutput)))
	own.Dataset, own.Requests = w.Dataset(), n
	ci, err := capRun(own)
	if err != nil {
		return nil, fmt.Errorf("soak: interactive capacity: %w", err)
	}
	to := opts.CapacityWindow
	if ci.Drained > 0 || ci.Completed+ci.Failed >= n {
		to = min(to, ci.LastSent)
	}
	from := to / 5
	reqs, _ := windowed(ci.Records, from, to)
	if to > from {
		res.InteractiveCapacity = reqs / (to - from).Seconds()
	}
	if res.InteractiveCapacity <= 0 {
		return nil, fmt.Errorf("soak: no capacity measured for the workload's shape")
	}
	rate := float64(n) / last.Seconds()
	res.RateScale = opts.Load * res.InteractiveCapacity / rate
	scaled := spec
	if spec.Kind == workload.KindMooncake || spec.Kind == workload.KindAzure {
		scaled.Speedup = max(spec.Speedup, 1) * res.RateScale
	} else {
		scaled.RateScale = max(spec.RateScale, 1) * res.RateScale
	}
	sw, err := workload.Open(scaled, baseDir)
	if err != nil {
		return nil, fmt.Errorf("soak: scaled workload: %w", err)
	}
	res.Workload = fmt.Sprintf("%s x%.3g (%d requests)", spec.Kind, res.RateScale, sw.Len())

	alone, err := Run(ctx, base, sw.Source())
	if err != nil {
		return nil, fmt.Errorf("soak: interactive alone: %w", err)
	}
	end := workloadEnd(alone.Records)
	res.Duration = end.Seconds()
	res.InteractiveRate = float64(len(alone.Records)) / end.Seconds()
	res.Utilization = res.InteractiveRate / res.InteractiveCapacity
	res.Alone = tierFigures(alone, opts)

	mixed := base
	mixed.Batch = opts.Batch
	mixed.Batch.Until = 0
	with, err := Run(ctx, mixed, sw.Source())
	if err != nil {
		return nil, fmt.Errorf("soak: with the batch backlog: %w", err)
	}
	res.WithBatch = tierFigures(with, opts)
	b := with.Batch
	stop := workloadEnd(with.Records)
	if b.Drained > 0 && b.Drained < stop {
		stop = b.Drained
	}
	res.Window = (stop - b.Started).Seconds()
	beside := func(i int) bool { s := with.Records[i].Sent; return s >= b.Started && s < stop }
	res.AloneBeside = tierFiguresOf(alone, opts, beside)
	res.WithBatchBeside = tierFiguresOf(with, opts, beside)
	res.BatchCompleted, res.BatchRetries, res.BatchFailed = b.Completed, b.Retries, b.Failed
	if res.Window > 0 {
		r, tok := windowed(b.Records, b.Started, stop)
		res.BatchRate, res.BatchTokensRate = r/res.Window, tok/res.Window
	}

	cb, err := capRun(saturating(opts.Batch.InputLen, opts.Batch.OutputLen))
	if err != nil {
		return nil, fmt.Errorf("soak: batch capacity: %w", err)
	}
	from = opts.CapacityWindow / 5
	_, tok := windowed(cb.Records, from, opts.CapacityWindow)
	res.BatchCapacity = tok / (opts.CapacityWindow - from).Seconds()
	if idle := (1 - res.Utilization) * res.BatchCapacity; idle > 0 {
		res.IdleUsed = res.BatchTokensRate / idle
	}
	return res, nil
}

// windowed counts the completed records that ended within [from, to) and
// their output tokens.
func windowed(recs []bench.Record, from, to time.Duration) (requests, tokens float64) {
	for i := range recs {
		r := &recs[i]
		if end := r.Sent + r.E2E; r.OK() && end >= from && end < to {
			requests++
			tokens += float64(r.CompletionTokens)
		}
	}
	return requests, tokens
}

// workloadEnd is when the last workload request ended.
func workloadEnd(recs []bench.Record) time.Duration {
	var end time.Duration
	for i := range recs {
		end = max(end, recs[i].Sent+recs[i].E2E)
	}
	return end
}

func tierFigures(res *Result, opts SoakOptions) map[string]TierFigures {
	return tierFiguresOf(res, opts, func(int) bool { return true })
}

// tierFiguresOf is tierFigures over the workload requests (by index) keep
// selects.
func tierFiguresOf(res *Result, opts SoakOptions, keep func(i int) bool) map[string]TierFigures {
	by := map[string][]bench.Record{}
	for i := range res.Records {
		if !keep(i) {
			continue
		}
		t := "standard"
		if res.Tiers != nil {
			t = res.Tiers[i]
		}
		by[t] = append(by[t], res.Records[i])
	}
	out := map[string]TierFigures{}
	for t, recs := range by {
		slo := opts.Standard
		if t == "critical" {
			slo = opts.Critical
		}
		f := TierFigures{Requests: len(recs), Attainment: AttainmentOf(recs, slo)}
		var ttft, tpot []float64
		for i := range recs {
			r := &recs[i]
			if !r.OK() {
				f.Failed++
				continue
			}
			ttft = append(ttft, r.TTFT.Seconds())
			if v, ok := recordTPOT(r); ok {
				tpot = append(tpot, v)
			}
		}
		f.TTFTP50, f.TTFTP90, f.TPOTP90 = quantile(ttft, 0.5), quantile(ttft, 0.9), quantile(tpot, 0.9)
		if len(ttft) > 0 {
			var sum float64
			for _, v := range ttft {
				sum += v
			}
			f.TTFTMean = sum / float64(len(ttft))
		}
		out[t] = f
	}
	return out
}

// WriteSoak writes batch-soak.json and batch-soak.md into dir.
func WriteSoak(dir string, r *SoakResult) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	j, err := json.MarshalIndent(r, "", "  ")
	if err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(dir, SoakJSON), append(j, '\n'), 0o644); err != nil {
		return err
	}
	var b strings.Builder
	WriteSoakTable(&b, r)
	return os.WriteFile(filepath.Join(dir, SoakMD), []byte(b.String()), 0o644)
}

// WriteSoakTable writes the soak's figures as Markdown.
func WriteSoakTable(w io.Writer, r *SoakResult) {
	fmt.Fprintf(w, "Deployment: %d x %s, routing %s, vLLM priority scheduling. Workload: %s; mean shape %.0f prompt / %.0f output tokens.\n\n",
		r.Engines, r.Profile, r.Routing, r.Workload, r.MeanPrompt, r.MeanOutput)
	fmt.Fprintf(w, "| quantity | value |\n| --- | ---: |\n")
	fmt.Fprintf(w, "| interactive capacity (saturating closed loop of the workload's requests) | %.2f req/s |\n", r.InteractiveCapacity)
	fmt.Fprintf(w, "| interactive rate (%.3gx the trace) | %.2f req/s = %.0f %% of capacity |\n", r.RateScale, r.InteractiveRate, 100*r.Utilization)
	fmt.Fprintf(w, "| batch capacity alone (%d in / %d out) | %.0f output tok/s |\n", r.Batch.InputLen, r.Batch.OutputLen, r.BatchCapacity)
	fmt.Fprintf(w, "| batch backlog / completed / failed (error lines) / retried attempts | %d / %d / %d / %d |\n", r.Batch.Requests, r.BatchCompleted, r.BatchFailed, r.BatchRetries)
	fmt.Fprintf(w, "| batch throughput over %.0f s | %.2f req/s, %.0f output tok/s |\n", r.Window, r.BatchRate, r.BatchTokensRate)
	fmt.Fprintf(w, "| **idle capacity used by batch** (goal >= 80 %%) | **%.0f %%** |\n\n", 100*r.IdleUsed)
	fmt.Fprintf(w, "| tier | requests | TTFT p90 alone | TTFT p90 with batch | change (goal <= +5 %%) | TPOT p90 alone | TPOT p90 with batch | attainment alone | attainment with batch |\n")
	fmt.Fprintf(w, "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |\n")
	writeTierRows(w, r.Alone, r.WithBatch)
	if r.AloneBeside != nil {
		fmt.Fprintf(w, "\nThe same over the interactive requests sent while batch ran (the same requests in both runs):\n\n")
		fmt.Fprintf(w, "| tier | requests | TTFT p90 alone | TTFT p90 with batch | change | TPOT p90 alone | TPOT p90 with batch | attainment alone | attainment with batch |\n")
		fmt.Fprintf(w, "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |\n")
		writeTierRows(w, r.AloneBeside, r.WithBatchBeside)
		fmt.Fprintf(w, "\nTheir TTFT mean and median (steadier than a p90 over a few hundred requests):\n\n")
		fmt.Fprintf(w, "| tier | TTFT mean alone | with batch | change | TTFT p50 alone | with batch | change |\n")
		fmt.Fprintf(w, "| --- | ---: | ---: | ---: | ---: | ---: | ---: |\n")
		for _, t := range []string{"critical", "standard"} {
			a, ok := r.AloneBeside[t]
			if !ok {
				continue
			}
			m := r.WithBatchBeside[t]
			fmt.Fprintf(w, "| %s | %.0f ms | %.0f ms | %+.1f %% | %.0f ms | %.0f ms | %+.1f %% |\n", t,
				1000*a.TTFTMean, 1000*m.TTFTMean, pctChange(a.TTFTMean, m.TTFTMean), 1000*a.TTFTP50, 1000*m.TTFTP50, pctChange(a.TTFTP50, m.TTFTP50))
		}
	}
	if r.Command != "" {
		fmt.Fprintf(w, "\nCommand: `%s`\n", r.Command)
	}
}

// pctChange is the change from a to b in percent (NaN without a).
func pctChange(a, b float64) float64 {
	if !(a > 0) {
		return math.NaN()
	}
	return 100 * (b/a - 1)
}

// writeTierRows writes a row per interactive tier: alone against with batch.
func writeTierRows(w io.Writer, alone, with map[string]TierFigures) {
	for _, t := range []string{"critical", "standard"} {
		a, ok := alone[t]
		if !ok {
			continue
		}
		m := with[t]
		change := math.NaN()
		if a.TTFTP90 > 0 {
			change = 100 * (m.TTFTP90/a.TTFTP90 - 1)
		}
		fmt.Fprintf(w, "| %s | %d | %.0f ms | %.0f ms | %+.1f %% | %.1f ms | %.1f ms | %.1f %% | %.1f %% |\n", t, a.Requests,
			1000*a.TTFTP90, 1000*m.TTFTP90, change, 1000*a.TPOTP90, 1000*m.TPOTP90, 100*a.Attainment.Both, 100*m.Attainment.Both)
	}
}
