package bench

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
)

// Files WriteReport writes into its directory.
const (
	SummaryFile       = "summary.json"
	ReportFile        = "report.md"
	ChartTTFTCDF      = "ttft_cdf.svg"
	ChartLatency      = "latency_over_time.svg"
	ChartThroughput   = "throughput_over_time.svg"
	ChartRequests     = "requests_over_time.svg"
	ChartLadderTTFT   = "ttft_vs_offered.svg"
	ChartLadderTokens = "throughput_vs_offered.svg"
	recordsFileSuffix = ".records.jsonl"
)

// WriteReport writes summary.json, the SVG charts and report.md for runs
// into dir, creating it if needed and replacing files of an earlier report.
// The ladder charts are written only when some run has a ladder. Each file
// is written whole or not at all (through a temporary file and a rename).
func WriteReport(dir string, runs []RunSummary) error {
	if len(runs) == 0 {
		return errors.New("write report: no runs")
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("write report: %w", err)
	}
	sum := Summary{SchemaVersion: SchemaVersion, Runs: runs}
	js, err := json.MarshalIndent(sum, "", "  ")
	if err != nil {
		return fmt.Errorf("write report: encode %s: %w", SummaryFile, err)
	}
	files := map[string][]byte{SummaryFile: append(js, '\n')}
	for name, c := range charts(runs) {
		files[name] = c.render()
	}
	files[ReportFile] = markdown(runs, files)
	names := make([]string, 0, len(files))
	for name := range files {
		names = append(names, name)
	}
	slices.Sort(names)
	for _, name := range names {
		if err := writeFileAtomic(filepath.Join(dir, name), files[name]); err != nil {
			return fmt.Errorf("write report: %w", err)
		}
	}
	return nil
}

// ReadSummary reads a summary.json written by WriteReport. A file of a later
// schema version is an error.
func ReadSummary(path string) (Summary, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return Summary{}, err
	}
	var s Summary
	if err := json.Unmarshal(data, &s); err != nil {
		return Summary{}, fmt.Errorf("%s: %w", path, err)
	}
	if s.SchemaVersion < 1 || s.SchemaVersion > SchemaVersion {
		return Summary{}, fmt.Errorf("%s: schema version %d, this build reads 1 to %d", path, s.SchemaVersion, SchemaVersion)
	}
	return s, nil
}

// WriteRecords writes records as JSON lines (one Record each) to path, for
// analysis beyond the summary.
func WriteRecords(path string, records []Record) error {
	var b bytes.Buffer
	enc := json.NewEncoder(&b)
	for i := range records {
		if err := enc.Encode(&records[i]); err != nil {
			return err
		}
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return err
	}
	return writeFileAtomic(path, b.Bytes())
}

// RecordsFile is the name WriteRecords output gets for a run in a report
// directory: the run name with anything but letters, digits, '-', '_' and
// '.' replaced.
func RecordsFile(run string) string {
	b := []byte(run)
	for i, c := range b {
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '_' || c == '.') {
			b[i] = '_'
		}
	}
	return string(b) + recordsFileSuffix
}

func writeFileAtomic(path string, data []byte) error {
	f, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".*")
	if err != nil {
		return err
	}
	_, werr := f.Write(data)
	cerr := f.Close()
	if err := errors.Join(werr, cerr); err != nil {
		os.Remove(f.Name())
		return err
	}
	if err := os.Chmod(f.Name(), 0o644); err != nil {
		os.Remove(f.Name())
		return err
	}
	if err := os.Rename(f.Name(), path); err != nil {
		os.Remove(f.Name())
		return err
	}
	return nil
}

// charts builds the report's charts by file name.
func charts(runs []RunSummary) map[string]*chart {
	cdfChart := &chart{title: "TTFT distribution", xLabel: "time to first token (s)", yLabel: "fraction of completed requests", yRange: [2]float64{0, 1}}
	lat := &chart{title: "TTFT over time (solid p50, dashed p90; by send time)", xLabel: "time since start (s)", yLabel: "TTFT (s)", yFrom0: true, xFrom0: true}
	thr := &chart{title: "Output tokens per second over time", xLabel: "time since start (s)", yLabel: "output tokens/s", yFrom0: true, xFrom0: true}
	req := &chart{title: "Requests per second over time (solid completed, dashed offered)", xLabel: "time since start (s)", yLabel: "requests/s", yFrom0: true, xFrom0: true}
	ladTTFT := &chart{title: "TTFT p90 against offered load", xLabel: "offered load (requests/s)", yLabel: "TTFT p90 (s)", yFrom0: true, xFrom0: true}
	ladTok := &chart{title: "Output throughput against offered load", xLabel: "offered load (requests/s)", yLabel: "output tokens/s", yFrom0: true, xFrom0: true}

	lo, hi := math.Inf(1), 0.0
	ladders := false
	for i, r := range runs {
		col := colour(i)
		cdf := series{name: r.Name, colour: col, step: true}
		for _, p := range r.TTFTCDF {
			cdf.pts = append(cdf.pts, point{p.Seconds, p.Q})
			if p.Seconds > 0 {
				lo, hi = min(lo, p.Seconds), max(hi, p.Seconds)
			}
		}
		cdfChart.series = append(cdfChart.series, cdf)

		p50 := series{name: r.Name + " p50", colour: col}
		p90 := series{name: r.Name + " p90", colour: col, dashed: true}
		tok := series{name: r.Name, colour: col}
		done := series{name: r.Name + " completed", colour: col}
		off := series{name: r.Name + " offered", colour: col, dashed: true}
		for _, b := range r.TimeSeries {
			p50.pts = append(p50.pts, point{b.StartSeconds, orNaN(b.TTFTP50)})
			p90.pts = append(p90.pts, point{b.StartSeconds, orNaN(b.TTFTP90)})
			// The last bucket ends with the run.
			if w := min(r.BucketSeconds, r.DurationSeconds-b.StartSeconds); w > 0 {
				tok.pts = append(tok.pts, point{b.StartSeconds, float64(b.OutputTokens) / w})
				done.pts = append(done.pts, point{b.StartSeconds, float64(b.Completed) / w})
			}
			off.pts = append(off.pts, point{b.StartSeconds, b.OfferedRate})
		}
		lat.series = append(lat.series, p50, p90)
		thr.series = append(thr.series, tok)
		req.series = append(req.series, done, off)

		if len(r.Ladder) > 0 {
			ladders = true
			lt := series{name: r.Name, colour: col, markers: true}
			lk := series{name: r.Name, colour: col, markers: true}
			for _, s := range r.Ladder {
				y := math.NaN()
				if s.TTFT.Count > 0 {
					y = s.TTFT.P90
				}
				lt.pts = append(lt.pts, point{s.OfferedRate, y})
				lk.pts = append(lk.pts, point{s.OfferedRate, s.OutputTokensPerSecond})
			}
			// Ladders may revisit a rate (llm-d's warm-up): draw in
			// rate order so the line reads left to right.
			byX := func(a, b point) int { return cmpFloat(a.x, b.x) }
			slices.SortStableFunc(lt.pts, byX)
			slices.SortStableFunc(lk.pts, byX)
			ladTTFT.series = append(ladTTFT.series, lt)
			ladTok.series = append(ladTok.series, lk)
		}
	}
	// TTFTs that span orders of magnitude (0.5 s against 90 s) read
	// better on a log axis.
	cdfChart.logX = hi > 0 && hi/lo >= 100

	out := map[string]*chart{
		ChartTTFTCDF:    cdfChart,
		ChartLatency:    lat,
		ChartThroughput: thr,
		ChartRequests:   req,
	}
	if ladders {
		out[ChartLadderTTFT] = ladTTFT
		out[ChartLadderTokens] = ladTok
	}
	return out
}

func cmpFloat(a, b float64) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}

func orNaN(p *float64) float64 {
	if p == nil {
		return math.NaN()
	}
	return *p
}

// markdown renders report.md; files are the other files of the report, whose
// charts it embeds.
func markdown(runs []RunSummary, files map[string][]byte) []byte {
	var b bytes.Buffer
	b.WriteString("# Benchmark report\n\n")
	names := make([]string, len(runs))
	for i, r := range runs {
		names[i] = r.Name
	}
	fmt.Fprintf(&b, "%d run(s): %s. Numbers are in [`%s`](%s) (schema version %d, documented in package `github.com/llmd-kn/llmd-kn/pkg/bench`).\n\n",
		len(runs), cellEscaper.Replace(strings.Join(names, ", ")), SummaryFile, SummaryFile, SchemaVersion)

	b.WriteString("## Runs\n\n")
	table(&b, []string{"run", "mode", "target", "model", "workload", "start", "duration", "SLO"}, func(row func(...string)) {
		for _, r := range runs {
			start := "—"
			if !r.Start.IsZero() {
				start = r.Start.UTC().Format("2006-01-02 15:04:05Z")
			}
			dur := secs(r.DurationSeconds)
			if r.Interrupted {
				dur += " (interrupted)"
			}
			row(r.Name, r.Mode, orDash(r.Target), orDash(r.Model), orDash(r.Workload.Description), start, dur, sloText(r.SLO))
		}
	})

	b.WriteString("## Comparison\n\nLatencies are p50 / p90 / p99 over completed requests; lateness is the load generator's own delay in sending (p50 / p99 / max).\n\n")
	header := append([]string{"metric"}, names...)
	table(&b, header, func(row func(...string)) {
		metric := func(label string, f func(r *RunSummary) string) {
			cells := []string{label}
			for i := range runs {
				cells = append(cells, f(&runs[i]))
			}
			row(cells...)
		}
		metric("requests sent / completed", func(r *RunSummary) string {
			return fmt.Sprintf("%d / %d", r.Requests.Sent, r.Requests.Completed)
		})
		metric("failed", func(r *RunSummary) string { return failedText(r) })
		metric("dropped by generator", func(r *RunSummary) string { return strconv.Itoa(r.Requests.Dropped) })
		metric("TTFT", func(r *RunSummary) string { return triple(r.LatencySeconds.TTFT) })
		metric("TPOT", func(r *RunSummary) string { return triple(r.LatencySeconds.TPOT) })
		metric("ITL", func(r *RunSummary) string { return triple(r.LatencySeconds.ITL) })
		metric("E2E latency", func(r *RunSummary) string { return triple(r.LatencySeconds.E2E) })
		if slices.ContainsFunc(runs, func(r RunSummary) bool { return r.LatencySeconds.Queue != nil }) {
			metric("server queue time", func(r *RunSummary) string {
				if r.LatencySeconds.Queue == nil {
					return "—"
				}
				return triple(*r.LatencySeconds.Queue)
			})
		}
		metric("SLO attainment", func(r *RunSummary) string {
			if r.SLOAttainment == nil {
				return "—"
			}
			return pct(*r.SLOAttainment)
		})
		metric("goodput (requests/s)", func(r *RunSummary) string {
			if r.Goodput == nil {
				return "—"
			}
			return rate(r.Goodput.RequestsPerSecond)
		})
		metric("goodput (output tokens/s)", func(r *RunSummary) string {
			if r.Goodput == nil {
				return "—"
			}
			return rate(r.Goodput.OutputTokensPerSecond)
		})
		metric("offered requests/s", func(r *RunSummary) string { return rate(r.Throughput.OfferedRequestsPerSecond) })
		metric("completed requests/s", func(r *RunSummary) string { return rate(r.Throughput.RequestsPerSecond) })
		metric("output tokens/s", func(r *RunSummary) string { return rate(r.Throughput.OutputTokensPerSecond) })
		metric("total tokens/s", func(r *RunSummary) string { return rate(r.Throughput.TotalTokensPerSecond) })
		metric("prompt cache hit rate", func(r *RunSummary) string {
			if r.Tokens.Prompt == 0 {
				return "—"
			}
			return pct(r.Tokens.CacheHitRate)
		})
		metric("in flight (max / mean)", func(r *RunSummary) string {
			return fmt.Sprintf("%d / %.1f", r.Concurrency.Max, r.Concurrency.Mean)
		})
		metric("generator lateness", func(r *RunSummary) string {
			d := r.LatencySeconds.Lateness
			if d.Count == 0 {
				return "—"
			}
			return secs(d.P50) + " / " + secs(d.P99) + " / " + secs(d.Max)
		})
	})

	b.WriteString("## Charts\n\n")
	for _, c := range []struct{ file, alt string }{
		{ChartTTFTCDF, "TTFT CDF per run"},
		{ChartLatency, "TTFT over time"},
		{ChartThroughput, "output tokens per second over time"},
		{ChartRequests, "requests per second over time"},
		{ChartLadderTTFT, "TTFT p90 against offered load"},
		{ChartLadderTokens, "output throughput against offered load"},
	} {
		if _, ok := files[c.file]; ok {
			fmt.Fprintf(&b, "![%s](%s)\n\n", c.alt, c.file)
		}
	}

	if slices.ContainsFunc(runs, func(r RunSummary) bool { return len(r.Ladder) > 0 }) {
		b.WriteString("## Rate ladder\n\nPer step: offered requests/s, TTFT p90 of the requests scheduled in the step, output tokens/s delivered during it, and SLO attainment.\n\n")
		steps := 0
		for _, r := range runs {
			steps = max(steps, len(r.Ladder))
		}
		h := []string{"step", "rate"}
		for _, r := range runs {
			h = append(h, r.Name+" offered", r.Name+" TTFT p90", r.Name+" out tok/s", r.Name+" SLO")
		}
		table(&b, h, func(row func(...string)) {
			for k := range steps {
				cells := []string{strconv.Itoa(k + 1), "—"}
				for _, r := range runs {
					if k >= len(r.Ladder) {
						cells = append(cells, "—", "—", "—", "—")
						continue
					}
					s := r.Ladder[k]
					cells[1] = rate(s.Rate)
					p90, att := "—", "—"
					if s.TTFT.Count > 0 {
						p90 = secs(s.TTFT.P90)
					}
					if s.SLOAttainment != nil {
						att = pct(*s.SLOAttainment)
					}
					cells = append(cells, rate(s.OfferedRate), p90, rate(s.OutputTokensPerSecond), att)
				}
				row(cells...)
			}
		})
	}

	if slices.ContainsFunc(runs, func(r RunSummary) bool { return len(r.Requests.Errors) > 0 }) {
		b.WriteString("## Errors\n\n")
		table(&b, []string{"run", "kind", "count", "example"}, func(row func(...string)) {
			for _, r := range runs {
				for _, k := range sortedKeys(r.Requests.Errors) {
					row(r.Name, k, strconv.Itoa(r.Requests.Errors[k]), orDash(r.ErrorExamples[k]))
				}
			}
		})
		if slices.ContainsFunc(runs, func(r RunSummary) bool { return len(r.Requests.ByStatus) > 0 }) {
			table(&b, []string{"run", "HTTP status", "count"}, func(row func(...string)) {
				for _, r := range runs {
					for _, k := range sortedKeys(r.Requests.ByStatus) {
						row(r.Name, k, strconv.Itoa(r.Requests.ByStatus[k]))
					}
				}
			})
		}
	}

	if slices.ContainsFunc(runs, func(r RunSummary) bool { return len(r.Settings) > 0 }) {
		b.WriteString("## Settings\n\n")
		table(&b, []string{"run", "setting", "value"}, func(row func(...string)) {
			for _, r := range runs {
				for _, k := range sortedKeys(r.Settings) {
					row(r.Name, k, r.Settings[k])
				}
			}
		})
	}
	return b.Bytes()
}

// table writes a Markdown table, escaping cells.
func table(b *bytes.Buffer, header []string, rows func(row func(...string))) {
	line := func(cells []string) {
		b.WriteString("|")
		for _, c := range cells {
			b.WriteString(" ")
			b.WriteString(cell(c))
			b.WriteString(" |")
		}
		b.WriteString("\n")
	}
	line(header)
	b.WriteString("|")
	for range header {
		b.WriteString(" --- |")
	}
	b.WriteString("\n")
	rows(func(cells ...string) { line(cells) })
	b.WriteString("\n")
}

// cellEscaper keeps a cell one cell (pipes, newlines) and plain text (no
// HTML tags).
var cellEscaper = strings.NewReplacer("|", `\|`, "\n", " ", "\r", " ", "<", "&lt;", ">", "&gt;")

func cell(s string) string {
	s = cellEscaper.Replace(s)
	if s == "" {
		return "—"
	}
	return s
}

func orDash(s string) string {
	if s == "" {
		return "—"
	}
	return s
}

func sortedKeys[V any](m map[string]V) []string {
	ks := make([]string, 0, len(m))
	for k := range m {
		ks = append(ks, k)
	}
	slices.Sort(ks)
	return ks
}

func sloText(s SLOTargets) string {
	var parts []string
	if s.TTFTSeconds > 0 {
		parts = append(parts, "TTFT ≤ "+secs(s.TTFTSeconds))
	}
	if s.TPOTSeconds > 0 {
		parts = append(parts, "TPOT ≤ "+secs(s.TPOTSeconds))
	}
	if len(parts) == 0 {
		return "—"
	}
	return strings.Join(parts, ", ")
}

func failedText(r *RunSummary) string {
	if r.Requests.Failed == 0 {
		return "0"
	}
	var parts []string
	for _, k := range sortedKeys(r.Requests.Errors) {
		if k != string(ErrDropped) {
			parts = append(parts, fmt.Sprintf("%s %d", k, r.Requests.Errors[k]))
		}
	}
	return fmt.Sprintf("%d (%s)", r.Requests.Failed, strings.Join(parts, ", "))
}

func triple(d Dist) string {
	if d.Count == 0 {
		return "—"
	}
	return secs(d.P50) + " / " + secs(d.P90) + " / " + secs(d.P99)
}

// secs prints seconds readably: µs, ms or s with three significant digits.
func secs(v float64) string {
	a := math.Abs(v)
	switch {
	case a == 0:
		return "0 s"
	case a < 1e-3:
		return sig3(v*1e6) + " µs"
	case a < 1:
		return sig3(v*1e3) + " ms"
	default:
		return sig3(v) + " s"
	}
}

// sig3 prints v with three significant digits, without exponent.
func sig3(v float64) string {
	a := math.Abs(v)
	dec := 0
	switch {
	case a < 10:
		dec = 2
	case a < 100:
		dec = 1
	}
	return strconv.FormatFloat(v, 'f', dec, 64)
}

func rate(v float64) string {
	if v >= 100 {
		return strconv.FormatFloat(v, 'f', 0, 64)
	}
	return sig3(v)
}

func pct(v float64) string { return strconv.FormatFloat(100*v, 'f', 1, 64) + " %" }
