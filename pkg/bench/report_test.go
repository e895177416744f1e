package bench

import (
	"bytes"
	"encoding/json"
	"encoding/xml"
	"errors"
	"io"
	"math"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"
)

// twoRuns are a run with a ladder and SLO targets and one without.
func twoRuns() []RunSummary {
	spec := json.RawMessage(`{"kind":"random","arrival":{"kind":"ladder","steps":[{"rate":1,"duration":"2s"}]}}`)
	a := Summarize("alpha <&>", handRecords(), SummaryOptions{
		Target:   "http://127.0.0.1:8000/v1/completions",
		Model:    "demo",
		Workload: WorkloadInfo{Description: "random | hand-made", Spec: spec},
		Settings: map[string]string{"api": "completions", "maxConcurrency": "unlimited"},
		Start:    time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC),
		SLO:      SLO{TTFT: 250 * ms, TPOT: 150 * ms},
		Ladder:   []LoadStep{{1, 2 * time.Second}, {2, 2 * time.Second}, {5, 10 * time.Second}},
	})
	recs := handRecords()
	for i := range recs {
		// A much slower run (the CDF chart goes logarithmic).
		recs[i].E2E += 19 * recs[i].TTFT
		recs[i].TTFT *= 20
		recs[i].HasQueue, recs[i].Queue = true, time.Duration(i)*ms
	}
	b := Summarize("beta", recs[:3], SummaryOptions{Mode: ModeVirtualTime, Target: "8 engines", Interrupted: true})
	return []RunSummary{a, b}
}

func TestWriteReport(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "out")
	runs := twoRuns()
	if err := WriteReport(dir, runs); err != nil {
		t.Fatal(err)
	}

	// summary.json reads back into the same values.
	got, err := ReadSummary(filepath.Join(dir, SummaryFile))
	if err != nil {
		t.Fatal(err)
	}
	if got.SchemaVersion != SchemaVersion || len(got.Runs) != 2 {
		t.Fatalf("version %d, %d runs", got.SchemaVersion, len(got.Runs))
	}
	wantJS, _ := json.Marshal(Summary{SchemaVersion, runs})
	gotJS, _ := json.Marshal(got)
	if !bytes.Equal(wantJS, gotJS) {
		t.Errorf("summary.json does not round-trip:\n got %s\nwant %s", gotJS, wantJS)
	}
	if !reflect.DeepEqual(got.Runs[0].LatencySeconds, runs[0].LatencySeconds) || !got.Runs[0].Start.Equal(runs[0].Start) ||
		*got.Runs[0].SLOAttainment != *runs[0].SLOAttainment || got.Runs[1].LatencySeconds.Queue == nil {
		t.Error("typed fields differ after the round trip")
	}

	// The documented top-level keys are there, spelled as documented.
	var generic struct {
		Runs []map[string]json.RawMessage `json:"runs"`
	}
	raw, _ := os.ReadFile(filepath.Join(dir, SummaryFile))
	if err := json.Unmarshal(raw, &generic); err != nil {
		t.Fatal(err)
	}
	for _, k := range []string{"name", "mode", "workload", "durationSeconds", "slo", "requests", "tokens", "latencySeconds",
		"throughput", "sloAttainment", "goodput", "concurrency", "ttftCDF", "bucketSeconds", "timeSeries", "ladder", "errorExamples"} {
		if _, ok := generic.Runs[0][k]; !ok {
			t.Errorf("run has no %q", k)
		}
	}

	// Every chart is well-formed SVG, and report.md embeds each.
	md, err := os.ReadFile(filepath.Join(dir, ReportFile))
	if err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{ChartTTFTCDF, ChartLatency, ChartThroughput, ChartRequests, ChartLadderTTFT, ChartLadderTokens} {
		data, err := os.ReadFile(filepath.Join(dir, name))
		if err != nil {
			t.Fatal(err)
		}
		checkSVG(t, name, data)
		if !bytes.Contains(md, []byte("]("+name+")")) {
			t.Errorf("report.md does not embed %s", name)
		}
	}
	if cdf, _ := os.ReadFile(filepath.Join(dir, ChartTTFTCDF)); !bytes.Contains(cdf, []byte("alpha &lt;&amp;&gt;")) {
		t.Error("the CDF legend does not name the run, escaped")
	}
	for _, want := range []string{
		"](summary.json)",
		"| metric | alpha &lt;&&gt; | beta |",        // one comparison table, a column a run
		"| TTFT | 200 ms / 280 ms / 298 ms | 4.00 s", // hand-computed percentiles
		"| SLO attainment | 16.7 % | — |",
		"| failed | 2 (http_5xx 1, stream_cut 1) | 0 |",
		"random \\| hand-made", // pipes escaped
		"(interrupted)",
		"| server queue time |",
		"## Rate ladder",
		"## Errors",
		"overloaded",
	} {
		if !bytes.Contains(md, []byte(want)) {
			t.Errorf("report.md lacks %q", want)
		}
	}
	if t.Failed() {
		t.Logf("report.md:\n%s", md)
	}
	leftovers, _ := filepath.Glob(filepath.Join(dir, ".*"))
	if len(leftovers) > 0 {
		t.Errorf("temporary files left: %v", leftovers)
	}
}

func TestWriteReportWithoutLadder(t *testing.T) {
	dir := t.TempDir()
	runs := twoRuns()[1:]
	if err := WriteReport(dir, runs); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(dir, ChartLadderTTFT)); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("ladder chart written without a ladder: %v", err)
	}
	md, _ := os.ReadFile(filepath.Join(dir, ReportFile))
	if bytes.Contains(md, []byte(ChartLadderTTFT)) || bytes.Contains(md, []byte("## Rate ladder")) {
		t.Error("report.md mentions a ladder")
	}
	if err := WriteReport(dir, nil); err == nil {
		t.Error("no runs: no error")
	}
}

func TestReadSummaryVersion(t *testing.T) {
	p := filepath.Join(t.TempDir(), "s.json")
	os.WriteFile(p, []byte(`{"schemaVersion": 99, "runs": []}`), 0o644)
	if _, err := ReadSummary(p); err == nil || !strings.Contains(err.Error(), "schema version 99") {
		t.Errorf("error %v", err)
	}
}

func TestWriteRecords(t *testing.T) {
	p := filepath.Join(t.TempDir(), RecordsFile("a/b c"))
	if filepath.Base(p) != "a_b_c.records.jsonl" {
		t.Errorf("file name %s", filepath.Base(p))
	}
	recs := handRecords()
	if err := WriteRecords(p, recs); err != nil {
		t.Fatal(err)
	}
	f, _ := os.Open(p)
	defer f.Close()
	dec := json.NewDecoder(f)
	var back []Record
	for {
		var r Record
		if err := dec.Decode(&r); err == io.EOF {
			break
		} else if err != nil {
			t.Fatal(err)
		}
		back = append(back, r)
	}
	if !reflect.DeepEqual(back, recs) {
		t.Errorf("records do not round-trip")
	}
}

// checkSVG parses data as XML and checks that it is an svg document.
func checkSVG(t *testing.T, name string, data []byte) {
	t.Helper()
	dec := xml.NewDecoder(bytes.NewReader(data))
	root := ""
	for {
		tok, err := dec.Token()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Errorf("%s is not well-formed XML: %v", name, err)
			return
		}
		if se, ok := tok.(xml.StartElement); ok && root == "" {
			root = se.Name.Local
			if se.Name.Space != "http://www.w3.org/2000/svg" {
				t.Errorf("%s: namespace %q", name, se.Name.Space)
			}
		}
	}
	if root != "svg" {
		t.Errorf("%s: root element %q", name, root)
	}
	if bytes.Contains(data, []byte("NaN")) || bytes.Contains(data, []byte("Inf")) {
		t.Errorf("%s has NaN or Inf coordinates", name)
	}
}

func TestChartEdgeCases(t *testing.T) {
	for name, c := range map[string]*chart{
		"empty":        {title: "t"},
		"single point": {title: "t", series: []series{{name: "a", pts: []point{{1, 1}}}}},
		"all NaN":      {title: "t", series: []series{{name: "a", pts: []point{{1, math.NaN()}}}}},
		"log with zeros": {title: "t", logX: true, series: []series{{name: "a", step: true,
			pts: []point{{0, 0}, {0.001, 0.5}, {30, 1}}}}},
		"negative": {title: "t", series: []series{{name: "a", pts: []point{{-5, -1}, {5, 1e7}}}}},
	} {
		checkSVG(t, name, c.render())
	}
}

func TestTicks(t *testing.T) {
	if got := linearTicks(0, 1); !reflect.DeepEqual(got, []float64{0, 0.2, 0.4, 0.6000000000000001, 0.8, 1}) {
		t.Errorf("linear ticks %v", got)
	}
	if got := logTicks(0.01, 100); !reflect.DeepEqual(got, []float64{0.01, 0.1, 1, 10, 100}) {
		t.Errorf("log ticks %v", got)
	}
	ts := linearTicks(0, 1)
	if l := tickLabel(ts[3], ts, false); l != "0.6" {
		t.Errorf("label %q", l)
	}
	for v, want := range map[float64]string{0: "0 s", 0.0004: "400 µs", 0.2345: "234 ms", 4: "4.00 s", 123.4: "123 s"} {
		if got := secs(v); got != want {
			t.Errorf("secs(%v) = %q, want %q", v, got, want)
		}
	}
}
