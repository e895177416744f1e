// Command routingtables prints the Markdown tables of
// docs/benchmarks/routing.md from the summary.json files that
// test/bench/routing.sh writes: one section per report directory, an
// overall table (one row per routing profile) and, for a rate ladder, TTFT
// p90 and output throughput per ladder step.
//
// A directory with a capacity.json (a `kn-llmd plan --sweep-replicas` run)
// gives the SLO attainment per replica count and routing profile instead.
//
// Usage: go run ./test/bench/routingtables TITLE=DIR [TITLE=DIR...]
package main

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/llmd-kn/llmd-kn/pkg/bench"
	"github.com/llmd-kn/llmd-kn/pkg/plan"
)

func main() {
	if len(os.Args) < 2 {
		fmt.Fprintln(os.Stderr, "usage: routingtables TITLE=DIR [TITLE=DIR...]")
		os.Exit(2)
	}
	var b strings.Builder
	for _, arg := range os.Args[1:] {
		title, dir, ok := strings.Cut(arg, "=")
		if !ok {
			fmt.Fprintf(os.Stderr, "routingtables: %q: want TITLE=DIR\n", arg)
			os.Exit(2)
		}
		if data, err := os.ReadFile(filepath.Join(dir, plan.CapacityJSON)); err == nil {
			var rep plan.CapacityReport
			if err := json.Unmarshal(data, &rep); err != nil {
				fmt.Fprintln(os.Stderr, "routingtables:", err)
				os.Exit(1)
			}
			capacity(&b, title, &rep)
			continue
		}
		sum, err := bench.ReadSummary(filepath.Join(dir, bench.SummaryFile))
		if err != nil {
			fmt.Fprintln(os.Stderr, "routingtables:", err)
			os.Exit(1)
		}
		section(&b, title, sum.Runs)
	}
	fmt.Print(b.String())
}

func section(b *strings.Builder, title string, runs []bench.RunSummary) {
	if len(runs) == 0 {
		return
	}
	r0 := &runs[0]
	fmt.Fprintf(b, "### %s\n\n", title)
	fmt.Fprintf(b, "%s; %s. SLO: TTFT ≤ %gs and TPOT ≤ %gs.\n\n", r0.Target[:strings.LastIndex(r0.Target, ", routing")], r0.Workload.Description,
		r0.SLO.TTFTSeconds, r0.SLO.TPOTSeconds)
	b.WriteString("| routing | completed / total | TTFT p50 | TTFT p90 | TPOT p50 | cache hit rate | output tok/s | goodput req/s | SLO attainment |\n")
	b.WriteString("|---|---:|---:|---:|---:|---:|---:|---:|---:|\n")
	for i := range runs {
		r := &runs[i]
		l := &r.LatencySeconds
		good, att := "—", "—"
		if r.Goodput != nil {
			good = fmt.Sprintf("%.2f", r.Goodput.RequestsPerSecond)
		}
		if r.SLOAttainment != nil {
			att = fmt.Sprintf("%.1f %%", 100**r.SLOAttainment)
		}
		fmt.Fprintf(b, "| %s | %d / %d | %s | %s | %s | %.1f %% | %.0f | %s | %s |\n", r.Name,
			r.Requests.Completed, r.Requests.Total, secs(l.TTFT.P50), secs(l.TTFT.P90), secs(l.TPOT.P50),
			100*r.Tokens.CacheHitRate, r.Throughput.OutputTokensPerSecond, good, att)
	}
	b.WriteString("\n")
	if len(r0.Ladder) == 0 {
		return
	}
	ladder := func(name string, v func(*bench.LadderStep) string) {
		fmt.Fprintf(b, "%s:\n\n| step (req/s) |", name)
		for i := range runs {
			fmt.Fprintf(b, " %s |", runs[i].Name)
		}
		b.WriteString("\n|---|")
		b.WriteString(strings.Repeat("---:|", len(runs)))
		b.WriteString("\n")
		for k := range r0.Ladder {
			fmt.Fprintf(b, "| %g |", r0.Ladder[k].Rate)
			for i := range runs {
				if k < len(runs[i].Ladder) {
					fmt.Fprintf(b, " %s |", v(&runs[i].Ladder[k]))
				} else {
					b.WriteString(" — |")
				}
			}
			b.WriteString("\n")
		}
		b.WriteString("\n")
	}
	ladder("TTFT p90 per ladder step (completed requests scheduled in the step; — where none completed)", func(s *bench.LadderStep) string {
		if s.TTFT.Count == 0 {
			return "—"
		}
		return secs(s.TTFT.P90)
	})
	ladder("Output tokens/s per ladder step (tokens delivered during the step)", func(s *bench.LadderStep) string { return fmt.Sprintf("%.0f", s.OutputTokensPerSecond) })
}

func secs(v float64) string {
	switch {
	case v == 0:
		return "0"
	case v < 0.01:
		return fmt.Sprintf("%.1f ms", 1000*v)
	case v < 1:
		return fmt.Sprintf("%.0f ms", 1000*v)
	case v < 10:
		return fmt.Sprintf("%.2f s", v)
	}
	return fmt.Sprintf("%.1f s", v)
}

func capacity(b *strings.Builder, title string, r *plan.CapacityReport) {
	fmt.Fprintf(b, "### %s\n\n", title)
	fmt.Fprintf(b, "%s; %s. SLO attainment (TTFT ≤ %gs and TPOT ≤ %gs) by replica count; target %.0f %%.\n\n",
		r.Deployment, r.Workload.Description, r.SLO.TTFTSeconds, r.SLO.TPOTSeconds, 100*r.Target)
	b.WriteString("| replicas |")
	for _, c := range r.Results {
		fmt.Fprintf(b, " %s |", c.Routing)
	}
	b.WriteString("\n|---|" + strings.Repeat("---:|", len(r.Results)) + "\n")
	var rows []plan.Replicas
	seen := map[plan.Replicas]bool{}
	for _, c := range r.Results {
		for _, p := range c.Points {
			if !seen[p.Replicas] {
				seen[p.Replicas] = true
				rows = append(rows, p.Replicas)
			}
		}
	}
	for _, rep := range rows {
		fmt.Fprintf(b, "| %s |", rep)
		for _, c := range r.Results {
			cell := "—"
			for _, p := range c.Points {
				if p.Replicas == rep {
					cell = fmt.Sprintf("%.1f %%", 100*p.SLOAttainment)
				}
			}
			fmt.Fprintf(b, " %s |", cell)
		}
		b.WriteString("\n")
	}
	b.WriteString("| **smallest meeting the target** |")
	for _, c := range r.Results {
		if c.Found {
			fmt.Fprintf(b, " **%s** |", c.Replicas)
		} else {
			b.WriteString(" none |")
		}
	}
	b.WriteString("\n\n")
}
