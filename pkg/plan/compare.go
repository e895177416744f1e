package plan

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"time"

	"github.com/llmd-kn/llmd-kn/pkg/apis"
	"github.com/llmd-kn/llmd-kn/pkg/autoscaler"
	"github.com/llmd-kn/llmd-kn/pkg/bench"
	"github.com/llmd-kn/llmd-kn/pkg/workload"
)

// Autoscaling comparison policies, in report order. InstantBound was
// called lower-bound; the old name is still accepted.
const (
	PolicyFixed = "fixed"
	PolicySLO   = "slo"
	// PolicySLOForecast is the SLO decider with the arrival forecast
	// (autoscaler.DefaultForecast).
	PolicySLOForecast  = "slo-forecast"
	PolicyKPA          = "kpa"
	PolicyStaticPeak   = "static-peak"
	PolicyInstantBound = "instant-bound"
	PolicyClairvoyant  = "clairvoyant"
	policyLowerBound   = "lower-bound"
)

// ComparePolicies lists the policies a comparison takes.
var ComparePolicies = []string{PolicyFixed, PolicySLO, PolicySLOForecast, PolicyKPA, PolicyStaticPeak, PolicyInstantBound, PolicyClairvoyant}

// CanonicalPolicy maps an accepted policy name to its canonical one ("" if
// unknown).
func CanonicalPolicy(p string) string {
	if p == policyLowerBound {
		return PolicyInstantBound
	}
	if slices.Contains(ComparePolicies, p) {
		return p
	}
	return ""
}

// IsBound reports whether a policy is a bound (computed from another run's
// token counts, not a policy of its own).
func IsBound(p string) bool { return p == PolicyInstantBound || p == PolicyClairvoyant }

// Comparison is an autoscaling comparison: each policy runs the workload
// (kpa once per target) and the report compares SLO attainment,
// GPU-seconds, cold starts and scale events, against the bounds.
type Comparison struct {
	Policies   []string
	KPATargets []float64
	// SLO is the SLO decider's configuration (its SLO is the report's).
	SLO autoscaler.Config
	KPA KPAConfig
	// Fixed is the fixed count, the autoscalers' and static peak's
	// largest.
	Fixed int
	// Target is static peak's attainment target.
	Target float64
	// Window is the bounds' window.
	Window     time.Duration
	Startup    time.Duration
	MinEngines int
	// Command is the invocation, for the report.
	Command string
	// Out is the report directory; Records also writes every run's
	// records; Include are runs of other summaries to report alongside.
	Out     string
	Records bool
	Include []bench.RunSummary
}

// ReplicasCSV is the file of every run's replica counts over time.
const ReplicasCSV = "replicas.csv"

// Run runs the comparison of base (its Routing set) on w and writes the
// report into c.Out; progress lines go to out.
func (c *Comparison) Run(ctx context.Context, base Config, w *workload.Workload, so SummaryOptions, out io.Writer) error {
	slo := bench.SLO{TTFT: c.SLO.SLO.TTFT, TPOT: c.SLO.SLO.TPOT}
	so.SLO = slo
	rep := AutoscalingReport{
		Workload: so.Workload.Description,
		Deployment: fmt.Sprintf("kn-llmd plan, %s engines (%d GPU each), routing %s, step budget %d tokens, at most %d replicas; autoscalers from %d, cold start %s, scale-to-zero grace %s, panic threshold %g%%, scale-down delay %s",
			base.Profile.Name, max(base.Profile.Accelerator.Count, 1), base.Routing, base.budget(), c.Fixed, c.MinEngines, c.Startup, c.SLO.ScaleToZeroGracePeriod,
			c.SLO.PanicThresholdPercentage, c.SLO.ScaleDownDelay),
		SLO:        slo,
		Percentile: c.SLO.SLO.Percentile,
		Command:    c.Command,
	}
	var runs []bench.RunSummary
	var csv bytes.Buffer
	var boundRecs []bench.Record
	runOne := func(name, detail string, cfg Config) (*Result, PolicyResult, error) {
		o := so
		o.Name = name
		start := time.Now()
		sum, res, err := RunWorkload(ctx, cfg, w, o)
		if err != nil {
			return nil, PolicyResult{}, fmt.Errorf("%s: %w", name, err)
		}
		p := PolicyOf(name, detail, res, slo, c.SLO.SLO.Percentile)
		fmt.Fprintf(out, "%s: attainment %.4f (TTFT %.4f, TPOT %.4f), %.0f GPU-seconds, peak %d, %d cold starts, %d scale events (%s wall)\n",
			name, p.Attainment.Both, p.Attainment.TTFT, p.Attainment.TPOT, p.GPUSeconds, p.Peak, p.ColdStarts, p.ScaleEvents, time.Since(start).Round(time.Millisecond))
		if err := WriteReplicaCSV(&csv, len(runs) == 0, name, res.Replicas); err != nil {
			return nil, p, err
		}
		if c.Records {
			if err := bench.WriteRecords(filepath.Join(c.Out, bench.RecordsFile(name)), res.Records); err != nil {
				return nil, p, err
			}
		}
		runs = append(runs, sum)
		return res, p, nil
	}
	autoscaled := func(sc Scaler) Config {
		cfg := base
		cfg.Scaler, cfg.Engines, cfg.StartupDelay = sc, c.MinEngines, c.Startup
		return cfg
	}
	for _, p := range c.Policies {
		switch p {
		case PolicyFixed:
			cfg := base
			cfg.Engines = c.Fixed
			res, pr, err := runOne(PolicyFixed, fmt.Sprintf("%d replicas", c.Fixed), cfg)
			if err != nil {
				return err
			}
			rep.Policies = append(rep.Policies, pr)
			boundRecs = res.Records
		case PolicySLO:
			sc, err := NewSLOScaler(c.SLO, base.Profile)
			if err != nil {
				return err
			}
			_, pr, err := runOne(PolicySLO, "SLO decider, "+apis.AutoscalerClass, autoscaled(sc))
			if err != nil {
				return err
			}
			rep.Policies = append(rep.Policies, pr)
		case PolicySLOForecast:
			a := c.SLO
			a.Forecast = autoscaler.DefaultForecast()
			sc, err := NewSLOScaler(a, base.Profile)
			if err != nil {
				return err
			}
			detail := fmt.Sprintf("SLO decider with the arrival forecast (Holt, level %g, trend %g, %s ahead)",
				a.Forecast.Level, a.Forecast.Trend, a.ColdStart+a.TickInterval)
			_, pr, err := runOne(PolicySLOForecast, detail, autoscaled(sc))
			if err != nil {
				return err
			}
			rep.Policies = append(rep.Policies, pr)
		case PolicyKPA:
			for _, t := range c.KPATargets {
				k := c.KPA
				k.Target = t
				sc, err := NewKPAScaler(k)
				if err != nil {
					return err
				}
				detail := fmt.Sprintf("Knative KPA, concurrency target %g x %.3g", t, sc.Spec().TargetValue/t)
				_, pr, err := runOne(fmt.Sprintf("kpa-%g", t), detail, autoscaled(sc))
				if err != nil {
					return err
				}
				rep.Policies = append(rep.Policies, pr)
			}
		case PolicyStaticPeak:
			eval := Evaluate(base, w, so)
			found, err := FindCapacity(ctx, eval, base.Routing, c.Target, Range{}, Range{Min: 1, Max: c.Fixed},
				func(pt Point, _ *bench.RunSummary) {
					fmt.Fprintf(out, "  static %d replicas: attainment %.4f\n", pt.Replicas.Decode, pt.SLOAttainment)
				})
			if err != nil {
				return fmt.Errorf("static-peak: %w", err)
			}
			n, detail := found.Replicas.Decode, fmt.Sprintf("fewest fixed replicas with attainment >= %g: %d", c.Target, found.Replicas.Decode)
			if !found.Found {
				n, detail = c.Fixed, fmt.Sprintf("no count up to %d reaches %g", c.Fixed, c.Target)
			}
			cfg := base
			cfg.Engines = n
			_, pr, err := runOne(PolicyStaticPeak, detail, cfg)
			if err != nil {
				return err
			}
			rep.Policies = append(rep.Policies, pr)
		}
	}
	if slices.ContainsFunc(c.Policies, IsBound) {
		if boundRecs == nil {
			// The bounds read the token counts of the fixed fleet at the
			// maximum, whether or not it is reported: the same for every
			// comparison of the workload.
			cfg := base
			cfg.Engines = c.Fixed
			res, err := Run(ctx, cfg, w.Source())
			if err != nil {
				return fmt.Errorf("bounds: %w", err)
			}
			boundRecs = res.Records
		}
		lb, err := ComputeLowerBound(boundRecs, c.SLO, base.Profile, c.Window)
		if err != nil {
			return err
		}
		if slices.Contains(c.Policies, PolicyInstantBound) {
			rep.Policies = append(rep.Policies, PolicyOfBound(lb))
			fmt.Fprintf(out, "instant-bound: %.0f GPU-seconds, peak %d\n", lb.GPUSeconds, lb.Peak)
		}
		if slices.Contains(c.Policies, PolicyClairvoyant) {
			cb, err := ComputeClairvoyantBound(lb, c.Startup, c.SLO.ScaleToZeroGracePeriod, base.Profile.Accelerator.Count)
			if err != nil {
				return err
			}
			// Replayed, so that its attainment is measured.
			cfg := base
			cfg.Scaler, cfg.Engines, cfg.StartupDelay = cb.Scaler(base.ScaleInterval), cb.Initial(), c.Startup
			_, pr, err := runOne(PolicyClairvoyant, "", cfg)
			if err != nil {
				return err
			}
			rep.Policies = append(rep.Policies, PolicyOfClairvoyant(cb, &pr))
			fmt.Fprintf(out, "clairvoyant: %.0f GPU-seconds (replayed: %.0f), peak %d\n", cb.GPUSeconds, pr.GPUSeconds, cb.Peak)
		}
	}
	if err := WriteAutoscaling(c.Out, rep); err != nil {
		return err
	}
	if err := bench.WriteReport(c.Out, append(runs, c.Include...)); err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(c.Out, ReplicasCSV), csv.Bytes(), 0o644); err != nil {
		return err
	}
	fmt.Fprintf(out, "autoscaling: %s\n", filepath.Join(c.Out, AutoscalingMD))
	return nil
}
