package bench

import (
	"context"
	"errors"
	"fmt"
	"io"
	"path/filepath"
	"strconv"
	"time"

	"github.com/llmd-kn/llmd-kn/pkg/workload"
)

// Target is one run of a Suite: a name for the report and an endpoint.
type Target struct {
	Name string
	// URL is as Config.URL.
	URL string
	// Model is sent in every request; empty means the first model the
	// server lists at /v1/models.
	Model string
}

// Suite is what `kn-llmd bench` does: the same workload against each target
// in turn, one report comparing them.
type Suite struct {
	Targets  []Target
	Workload *workload.Workload
	// Info describes the workload in the report.
	Info WorkloadInfo
	// Config is the driver configuration shared by every run; its URL,
	// Model and Live are set per target.
	Config Config
	SLO    SLO
	// Bucket is the time-series interval (0: one second).
	Bucket time.Duration
	// Out is the report directory. The report is rewritten after each run,
	// so a long suite that fails or is interrupted keeps what it measured.
	Out string
	// SaveRecords also writes each run's records as <run>.records.jsonl.
	SaveRecords bool
	// Include are runs measured elsewhere (an earlier summary.json, a
	// `kn-llmd plan` result) reported after this suite's own.
	Include []RunSummary
	// Cooldown is a pause between runs, for the servers to settle.
	Cooldown time.Duration
	// Progress receives the progress display in ProgressMode; Log a line
	// per finished run. Either may be nil.
	Progress     io.Writer
	ProgressMode ProgressMode
	Log          io.Writer
}

// Validate checks the suite without contacting any server.
func (s *Suite) Validate() error {
	if len(s.Targets) == 0 {
		return errors.New("no target to run")
	}
	if s.Workload == nil {
		return errors.New("no workload")
	}
	if s.Out == "" {
		return errors.New("no output directory")
	}
	names := map[string]bool{}
	for _, r := range s.Include {
		names[r.Name] = true
	}
	for _, t := range s.Targets {
		if t.Name == "" {
			return fmt.Errorf("run for %s has no name", t.URL)
		}
		if names[t.Name] {
			return fmt.Errorf("two runs are named %q", t.Name)
		}
		names[t.Name] = true
		if _, err := EndpointURL(t.URL, s.Config.API); err != nil {
			return fmt.Errorf("run %q: %w", t.Name, err)
		}
	}
	if s.SLO.TTFT < 0 || s.SLO.TPOT < 0 {
		return errors.New("SLO targets must not be negative")
	}
	return nil
}

// Run runs every target in order and writes the report. It returns the
// summaries written; after a cancellation it writes the runs so far (the
// interrupted one marked) and returns ctx's error.
func (s *Suite) Run(ctx context.Context) ([]RunSummary, error) {
	if err := s.Validate(); err != nil {
		return nil, err
	}
	var runs []RunSummary
	report := func() error {
		return WriteReport(s.Out, append(append([]RunSummary(nil), runs...), s.Include...))
	}
	for i, t := range s.Targets {
		if i > 0 && s.Cooldown > 0 {
			select {
			case <-time.After(s.Cooldown):
			case <-ctx.Done():
				return runs, errors.Join(ctx.Err(), report())
			}
		}
		sum, err := s.runOne(ctx, t)
		if err != nil {
			if len(runs) > 0 {
				err = errors.Join(err, report())
			}
			return runs, err
		}
		runs = append(runs, sum)
		if err := report(); err != nil {
			return runs, err
		}
		if s.Log != nil {
			fmt.Fprintln(s.Log, OneLine(&sum))
		}
		if sum.Interrupted {
			return runs, ctx.Err()
		}
	}
	return runs, nil
}

func (s *Suite) runOne(ctx context.Context, t Target) (RunSummary, error) {
	cfg := s.Config
	if err := cfg.validateForTarget(t); err != nil {
		return RunSummary{}, fmt.Errorf("run %q: %w", t.Name, err)
	}
	if cfg.Model == "" {
		dctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		m, err := DiscoverModel(dctx, cfg.Client, cfg.URL, cfg.Header)
		cancel()
		if err != nil {
			return RunSummary{}, fmt.Errorf("run %q: no model given, and asking the server failed: %w", t.Name, err)
		}
		cfg.Model = m
	}
	cfg.Live = &Live{}
	stop := ShowProgress(s.Progress, t.Name, cfg.Live, s.modeFor(), s.Workload.Duration())
	res, err := Run(ctx, cfg, s.Workload.Source())
	stop()
	if err != nil {
		return RunSummary{}, fmt.Errorf("run %q: %w", t.Name, err)
	}
	if s.SaveRecords {
		if err := WriteRecords(filepath.Join(s.Out, RecordsFile(t.Name)), res.Records); err != nil {
			return RunSummary{}, fmt.Errorf("run %q: records: %w", t.Name, err)
		}
	}
	conc := "unlimited"
	if cfg.MaxConcurrency > 0 {
		conc = strconv.Itoa(cfg.MaxConcurrency)
	}
	return Summarize(t.Name, res.Records, SummaryOptions{
		Mode:        ModeRealTime,
		Target:      cfg.URL,
		Model:       cfg.Model,
		Workload:    s.Info,
		Start:       res.Start,
		Interrupted: res.Interrupted,
		SLO:         s.SLO,
		Bucket:      s.Bucket,
		Ladder:      LadderSteps(s.Workload),
		Settings: map[string]string{
			"api":            string(cfg.API),
			"promptFormat":   string(cfg.Prompt),
			"ignoreEOS":      strconv.FormatBool(!cfg.NoIgnoreEOS),
			"maxConcurrency": conc,
			"hardCap":        strconv.Itoa(cfg.HardCap),
			"requestTimeout": cfg.RequestTimeout.String(),
		},
	}), nil
}

func (s *Suite) modeFor() ProgressMode {
	if s.Progress == nil {
		return ProgressNone
	}
	return s.ProgressMode
}

// validateForTarget fills cfg for target t and checks it as Run will, so
// that a bad configuration is reported before the model is looked up.
func (cfg *Config) validateForTarget(t Target) error {
	cfg.URL, cfg.Model = t.URL, t.Model
	model := cfg.Model
	if model == "" {
		cfg.Model = "placeholder" // checked for real once discovered
	}
	err := cfg.validate()
	cfg.Model = model
	return err
}

// OneLine sums a run up in one line, for logs.
func OneLine(r *RunSummary) string {
	l := r.LatencySeconds
	line := fmt.Sprintf("%s: %d/%d completed, %d failed, %d dropped; TTFT p50 %s p90 %s; TPOT p50 %s; %s output tok/s",
		r.Name, r.Requests.Completed, r.Requests.Total, r.Requests.Failed, r.Requests.Dropped,
		orDashDist(l.TTFT, l.TTFT.P50), orDashDist(l.TTFT, l.TTFT.P90), orDashDist(l.TPOT, l.TPOT.P50),
		rate(r.Throughput.OutputTokensPerSecond))
	if r.SLOAttainment != nil {
		line += fmt.Sprintf("; SLO attainment %s", pct(*r.SLOAttainment))
	}
	if r.Interrupted {
		line += " (interrupted)"
	}
	return line
}

func orDashDist(d Dist, v float64) string {
	if d.Count == 0 {
		return "—"
	}
	return secs(v)
}
