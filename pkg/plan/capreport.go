package plan

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"html"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"github.com/llmd-kn/llmd-kn/pkg/bench"
)

// Files WriteCapacity writes.
const (
	CapacityJSON  = "capacity.json"
	CapacityMD    = "capacity.md"
	CapacityChart = "attainment_vs_replicas.svg"
)

// CapacityReport is the answer to a capacity question for one workload:
// per routing profile, the runs made and the smallest replica count that
// met the target.
type CapacityReport struct {
	Deployment string             `json:"deployment"`
	Workload   bench.WorkloadInfo `json:"workload"`
	SLO        bench.SLOTargets   `json:"slo"`
	Target     float64            `json:"targetAttainment"`
	Results    []Capacity         `json:"results"`
}

// CapacityFromPoints answers the capacity question from a sweep's points:
// the smallest total (then fewest prefill engines) meeting target, without
// assuming the curve is monotone.
func CapacityFromPoints(routing string, target float64, pts []Point) Capacity {
	c := Capacity{Routing: routing, Target: target, Points: pts}
	for _, p := range pts {
		if p.SLOAttainment < target {
			continue
		}
		if !c.Found || p.Replicas.Total() < c.Replicas.Total() ||
			(p.Replicas.Total() == c.Replicas.Total() && p.Replicas.Prefill < c.Replicas.Prefill) {
			c.Found, c.Replicas = true, p.Replicas
		}
	}
	return c
}

// WriteCapacity writes capacity.json, capacity.md and the attainment chart
// into dir.
func WriteCapacity(dir string, r CapacityReport) error {
	if len(r.Results) == 0 {
		return errors.New("write capacity: no results")
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("write capacity: %w", err)
	}
	js, err := json.MarshalIndent(r, "", "  ")
	if err != nil {
		return fmt.Errorf("write capacity: %w", err)
	}
	files := map[string][]byte{
		CapacityJSON:  append(js, '\n'),
		CapacityMD:    capacityMarkdown(&r),
		CapacityChart: attainmentChart(&r),
	}
	for _, name := range []string{CapacityJSON, CapacityChart, CapacityMD} {
		if err := os.WriteFile(filepath.Join(dir, name), files[name], 0o644); err != nil {
			return fmt.Errorf("write capacity: %w", err)
		}
	}
	return nil
}

func capacityMarkdown(r *CapacityReport) []byte {
	var b bytes.Buffer
	fmt.Fprintf(&b, "# Capacity\n\n")
	fmt.Fprintf(&b, "- Deployment: %s\n- Workload: %s\n", r.Deployment, r.Workload.Description)
	var slo []string
	if r.SLO.TTFTSeconds > 0 {
		slo = append(slo, fmt.Sprintf("TTFT ≤ %gs", r.SLO.TTFTSeconds))
	}
	if r.SLO.TPOTSeconds > 0 {
		slo = append(slo, fmt.Sprintf("TPOT ≤ %gs", r.SLO.TPOTSeconds))
	}
	fmt.Fprintf(&b, "- SLO: %s; target attainment %.1f%% of all requests\n\n", strings.Join(slo, ", "), 100*r.Target)
	b.WriteString("| routing | smallest replica count meeting the target |\n|---|---|\n")
	for _, c := range r.Results {
		ans := "none in the range tried"
		if c.Found {
			ans = "**" + c.Replicas.String() + "**"
		}
		fmt.Fprintf(&b, "| %s | %s |\n", c.Routing, ans)
	}
	fmt.Fprintf(&b, "\n![SLO attainment against replicas](%s)\n", CapacityChart)
	for _, c := range r.Results {
		fmt.Fprintf(&b, "\n## %s\n\n", c.Routing)
		b.WriteString("| replicas | SLO attainment | TTFT p50 | TTFT p90 | TPOT p90 | goodput req/s | output tok/s | cache hit | failed |\n")
		b.WriteString("|---|---:|---:|---:|---:|---:|---:|---:|---:|\n")
		for _, p := range c.Points {
			fmt.Fprintf(&b, "| %s | %.1f%% | %.3fs | %.3fs | %.1fms | %.2f | %.0f | %.1f%% | %d |\n",
				p.Replicas, 100*p.SLOAttainment, p.TTFTP50, p.TTFTP90, 1000*p.TPOTP90,
				p.GoodputRequestsPerSecond, p.OutputTokensPerSecond, 100*p.CacheHitRate, p.Failed)
		}
	}
	return b.Bytes()
}

// attainmentChart draws SLO attainment against total replicas, one line
// per routing profile (and prefill count, with P/D), and the target.
func attainmentChart(r *CapacityReport) []byte {
	type series struct {
		name string
		pts  []Point
	}
	var ss []series
	maxX := 1
	for _, c := range r.Results {
		byPrefill := map[int][]Point{}
		var keys []int
		for _, p := range c.Points {
			if _, ok := byPrefill[p.Replicas.Prefill]; !ok {
				keys = append(keys, p.Replicas.Prefill)
			}
			byPrefill[p.Replicas.Prefill] = append(byPrefill[p.Replicas.Prefill], p)
			maxX = max(maxX, p.Replicas.Total())
		}
		slices.Sort(keys)
		for _, k := range keys {
			pts := byPrefill[k]
			slices.SortFunc(pts, func(a, b Point) int { return a.Replicas.Total() - b.Replicas.Total() })
			name := c.Routing
			if len(keys) > 1 || k > 0 {
				name += fmt.Sprintf(" (%d prefill)", k)
			}
			ss = append(ss, series{name, pts})
		}
	}
	const w, h, left, right, top, bottom = 720, 420, 60, 180, 40, 50
	pw, ph := float64(w-left-right), float64(h-top-bottom)
	x := func(v int) float64 { return left + pw*float64(v)/float64(maxX) }
	y := func(v float64) float64 { return top + ph*(1-v) }
	palette := []string{"#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf"}
	var b bytes.Buffer
	fmt.Fprintf(&b, `<svg xmlns="http://www.w3.org/2000/svg" width="%d" height="%d" viewBox="0 0 %d %d" font-family="sans-serif" font-size="12">`+"\n", w, h, w, h)
	fmt.Fprintf(&b, `<rect width="%d" height="%d" fill="white"/>`+"\n", w, h)
	fmt.Fprintf(&b, `<text x="%d" y="22" font-size="14">SLO attainment against replicas</text>`+"\n", left)
	for i := 0; i <= 5; i++ {
		v := float64(i) / 5
		fmt.Fprintf(&b, `<line x1="%d" x2="%.1f" y1="%.1f" y2="%.1f" stroke="#ddd"/><text x="%d" y="%.1f" text-anchor="end">%.0f%%</text>`+"\n",
			left, left+pw, y(v), y(v), left-6, y(v)+4, 100*v)
	}
	step := max(1, maxX/16)
	for v := 0; v <= maxX; v += step {
		fmt.Fprintf(&b, `<text x="%.1f" y="%d" text-anchor="middle">%d</text>`+"\n", x(v), h-bottom+16, v)
	}
	fmt.Fprintf(&b, `<text x="%.1f" y="%d" text-anchor="middle">replicas (total engines)</text>`+"\n", left+pw/2, h-12)
	fmt.Fprintf(&b, `<line x1="%d" x2="%.1f" y1="%.1f" y2="%.1f" stroke="#444" stroke-dasharray="6 4"/><text x="%.1f" y="%.1f">target %.0f%%</text>`+"\n",
		left, left+pw, y(r.Target), y(r.Target), left+pw+6, y(r.Target)+4, 100*r.Target)
	for i, s := range ss {
		col := palette[i%len(palette)]
		var pts []string
		for _, p := range s.pts {
			pts = append(pts, fmt.Sprintf("%.1f,%.1f", x(p.Replicas.Total()), y(p.SLOAttainment)))
		}
		fmt.Fprintf(&b, `<polyline fill="none" stroke="%s" stroke-width="2" points="%s"/>`+"\n", col, strings.Join(pts, " "))
		for _, p := range s.pts {
			fmt.Fprintf(&b, `<circle cx="%.1f" cy="%.1f" r="3" fill="%s"/>`+"\n", x(p.Replicas.Total()), y(p.SLOAttainment), col)
		}
		ly := top + 24 + 18*i
		fmt.Fprintf(&b, `<line x1="%.1f" x2="%.1f" y1="%d" y2="%d" stroke="%s" stroke-width="2"/><text x="%.1f" y="%d">%s</text>`+"\n",
			left+pw+10, left+pw+30, ly, ly, col, left+pw+34, ly+4, html.EscapeString(s.name))
	}
	b.WriteString("</svg>\n")
	return b.Bytes()
}
