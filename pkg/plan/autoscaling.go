package plan

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/llmd-kn/llmd-kn/pkg/bench"
)

// Files of an autoscaling comparison.
const (
	AutoscalingJSON = "autoscaling.json"
	AutoscalingMD   = "autoscaling.md"
)

// Attainment is the fraction of all requests (failed ones included, as
// misses) that met each target.
type Attainment struct {
	TTFT float64 `json:"ttft"`
	TPOT float64 `json:"tpot"`
	Both float64 `json:"both"`
}

// PolicyResult is one autoscaling policy's figures on a workload.
type PolicyResult struct {
	Policy string `json:"policy"`
	// Detail says how the policy was set (targets, counts).
	Detail     string     `json:"detail,omitempty"`
	Attainment Attainment `json:"attainment"`
	// TTFTP and TPOTP are the latencies at the SLO percentile over the
	// completed requests, in seconds; Failed counts the others.
	TTFTP  float64 `json:"ttftSeconds"`
	TPOTP  float64 `json:"tpotSeconds"`
	Failed int     `json:"failed"`
	// ReplicaSeconds and GPUSeconds are the provisioned time (startups
	// included); Peak the most replicas at once.
	ReplicaSeconds float64 `json:"replicaSeconds"`
	GPUSeconds     float64 `json:"gpuSeconds"`
	Peak           int     `json:"peak"`
	ColdStarts     int     `json:"coldStarts"`
	ScaleEvents    int     `json:"scaleEvents"`
	// Bound marks a bound rather than a policy: the instant bound serves
	// no request; the clairvoyant bound (Clairvoyant) serves them when
	// replayed (Measured), its GPU-seconds the bound's own.
	Bound       bool `json:"bound,omitempty"`
	Clairvoyant bool `json:"clairvoyant,omitempty"`
	Measured    bool `json:"measured,omitempty"`
}

// AttainmentOf measures the records against the targets (zero: none). A
// request with fewer than two output tokens has no TPOT and meets any TPOT
// target, as in bench.
func AttainmentOf(recs []bench.Record, slo bench.SLO) Attainment {
	var a Attainment
	if len(recs) == 0 {
		return a
	}
	var ttft, tpot, both int
	for i := range recs {
		r := &recs[i]
		if !r.OK() {
			continue
		}
		okT := slo.TTFT <= 0 || r.TTFT <= slo.TTFT
		okP := true
		if tp, ok := recordTPOT(r); ok && slo.TPOT > 0 {
			okP = tp <= slo.TPOT.Seconds()
		}
		if okT {
			ttft++
		}
		if okP {
			tpot++
		}
		if okT && okP {
			both++
		}
	}
	n := float64(len(recs))
	return Attainment{TTFT: float64(ttft) / n, TPOT: float64(tpot) / n, Both: float64(both) / n}
}

// recordTPOT is bench's time per output token after the first.
func recordTPOT(r *bench.Record) (float64, bool) {
	n := r.Chunks
	if r.HasUsage {
		n = r.CompletionTokens
	}
	if n < 2 || r.TTFT <= 0 {
		return 0, false
	}
	return (r.E2E - r.TTFT).Seconds() / float64(n-1), true
}

// PolicyOf summarizes a run of a policy against the SLO at percentile pct
// (in (0, 100)).
func PolicyOf(policy, detail string, res *Result, slo bench.SLO, pct float64) PolicyResult {
	p := PolicyResult{Policy: policy, Detail: detail, Attainment: AttainmentOf(res.Records, slo),
		ReplicaSeconds: res.Stats.ReplicaSeconds, GPUSeconds: res.Stats.GPUSeconds,
		Peak: res.Stats.PeakReplicas.Total(), ColdStarts: res.Stats.ColdStarts, ScaleEvents: res.Stats.ScaleEvents}
	var ttft, tpot []float64
	for i := range res.Records {
		r := &res.Records[i]
		if !r.OK() {
			p.Failed++
			continue
		}
		ttft = append(ttft, r.TTFT.Seconds())
		if v, ok := recordTPOT(r); ok {
			tpot = append(tpot, v)
		}
	}
	p.TTFTP, p.TPOTP = quantile(ttft, pct/100), quantile(tpot, pct/100)
	return p
}

// PolicyOfBound presents the instant bound as a policy row.
func PolicyOfBound(lb LowerBound) PolicyResult {
	return PolicyResult{Policy: "instant-bound", Detail: fmt.Sprintf("offline optimum per %s window, instant starts and scale to zero", lb.Window),
		ReplicaSeconds: lb.ReplicaSeconds, GPUSeconds: lb.GPUSeconds, Peak: lb.Peak, ScaleEvents: lb.ScaleEvents, Bound: true}
}

// quantile is the nearest-rank q-quantile of v (0 when empty); v is sorted
// in place.
func quantile(v []float64, q float64) float64 {
	if len(v) == 0 {
		return 0
	}
	slices.Sort(v)
	k := int(float64(len(v))*q+0.999999999) - 1
	return v[min(max(k, 0), len(v)-1)]
}

// AutoscalingReport compares autoscaling policies on one workload.
type AutoscalingReport struct {
	Workload   string         `json:"workload"`
	Deployment string         `json:"deployment"`
	SLO        bench.SLO      `json:"-"`
	TTFT       float64        `json:"sloTTFTSeconds"`
	TPOT       float64        `json:"sloTPOTSeconds"`
	Percentile float64        `json:"percentile"`
	Policies   []PolicyResult `json:"policies"`
	// Command regenerates the report, when the caller knows it.
	Command string `json:"command,omitempty"`
}

// WriteAutoscaling writes autoscaling.json and autoscaling.md into dir.
func WriteAutoscaling(dir string, rep AutoscalingReport) error {
	rep.TTFT, rep.TPOT = rep.SLO.TTFT.Seconds(), rep.SLO.TPOT.Seconds()
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	data, err := json.MarshalIndent(rep, "", "  ")
	if err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(dir, AutoscalingJSON), append(data, '\n'), 0o644); err != nil {
		return err
	}
	return os.WriteFile(filepath.Join(dir, AutoscalingMD), []byte(rep.Markdown()), 0o644)
}

// Markdown is the report's table, GPU-seconds also as a multiple of the
// clairvoyant bound when one is present, else of the instant bound.
func (rep *AutoscalingReport) Markdown() string {
	var b strings.Builder
	fmt.Fprintf(&b, "# Autoscaling comparison\n\n")
	fmt.Fprintf(&b, "- workload: %s\n- deployment: %s\n", rep.Workload, rep.Deployment)
	fmt.Fprintf(&b, "- SLO: TTFT %s, TPOT %s; latencies at p%g; attainment is the fraction of all requests meeting the target\n",
		fmtDur(rep.SLO.TTFT), fmtDur(rep.SLO.TPOT), rep.Percentile)
	if rep.Command != "" {
		fmt.Fprintf(&b, "- command: `%s`\n", rep.Command)
	}
	var bound float64
	boundName := "bound"
	for _, p := range rep.Policies {
		if p.Bound && (bound == 0 || p.Clairvoyant) {
			bound = p.GPUSeconds
			if p.Clairvoyant {
				boundName = "clairvoyant"
			}
		}
	}
	fmt.Fprintf(&b, "\n| policy | attainment TTFT | TPOT | both | TTFT p%g | TPOT p%g | GPU-s | × %s | peak | cold starts | scale events | failed |\n", rep.Percentile, rep.Percentile, boundName)
	b.WriteString("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |\n")
	for _, p := range rep.Policies {
		name := p.Policy
		if p.Detail != "" {
			name += " (" + p.Detail + ")"
		}
		ratio := "–"
		if bound > 0 {
			ratio = fmt.Sprintf("%.2f", p.GPUSeconds/bound)
		}
		if p.Bound && !p.Measured {
			fmt.Fprintf(&b, "| %s | – | – | – | – | – | %.0f | %s | %d | – | %d | – |\n", name, p.GPUSeconds, ratio, p.Peak, p.ScaleEvents)
			continue
		}
		fmt.Fprintf(&b, "| %s | %.4f | %.4f | %.4f | %.3fs | %.1fms | %.0f | %s | %d | %d | %d | %d |\n", name,
			p.Attainment.TTFT, p.Attainment.TPOT, p.Attainment.Both, p.TTFTP, 1000*p.TPOTP, p.GPUSeconds, ratio, p.Peak,
			p.ColdStarts, p.ScaleEvents, p.Failed)
	}
	return b.String()
}

func fmtDur(d time.Duration) string {
	if d <= 0 {
		return "none"
	}
	return d.String()
}
