package bench

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/llmd-kn/llmd-kn/pkg/workload"
)

// modelsServer is a fakeVLLM that also lists model at /v1/models.
func modelsServer(f http.Handler, model string) *httptest.Server {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /v1/models", func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, `{"object":"list","data":[{"id":%q,"object":"model"},{"id":"other","object":"model"}]}`, model)
	})
	mux.Handle("/", f)
	return httptest.NewServer(mux)
}

func smallWorkload(t *testing.T, arrival string) (workload.Spec, *workload.Workload) {
	t.Helper()
	spec, err := workload.ParseSpec([]byte("kind: random\nrandom: {inputLen: 20, outputLen: 3, numPrompts: 8}\narrival: " + arrival + "\n"))
	if err != nil {
		t.Fatal(err)
	}
	w, err := workload.Open(spec, "")
	if err != nil {
		t.Fatal(err)
	}
	return spec, w
}

func TestSuite(t *testing.T) {
	fa, fb := &fakeVLLM{gap: ms}, &fakeVLLM{gap: 2 * ms}
	a, b := modelsServer(fa, "model-a"), modelsServer(fb, "model-b")
	defer a.Close()
	defer b.Close()
	spec, w := smallWorkload(t, "{kind: ladder, steps: [{rate: 100, duration: 40ms}, {rate: 200, duration: 40ms}]}")
	earlier := Summarize("plan", handRecords(), SummaryOptions{Mode: ModeVirtualTime})
	dir := t.TempDir()
	var log, progress bytes.Buffer
	s := &Suite{
		Targets:      []Target{{Name: "a", URL: a.URL, Model: "given"}, {Name: "b", URL: b.URL + "/v1/completions"}},
		Workload:     w,
		Info:         DescribeWorkload(spec, w),
		SLO:          SLO{TTFT: time.Second},
		Out:          dir,
		SaveRecords:  true,
		Include:      []RunSummary{earlier},
		Progress:     &progress,
		ProgressMode: ProgressLines,
		Log:          &log,
	}
	runs, err := s.Run(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if len(runs) != 2 || runs[0].Model != "given" || runs[1].Model != "model-b" {
		t.Fatalf("runs %d, models %q %q: want the given model, then the server's first", len(runs), runs[0].Model, runs[1].Model)
	}
	for _, r := range runs {
		if r.Requests.Completed != w.Len() || len(r.Ladder) != 2 || r.Settings["api"] != "completions" || r.Workload.Description == "" {
			t.Errorf("run %s: %d completed of %d, %d ladder steps, settings %v", r.Name, r.Requests.Completed, w.Len(), len(r.Ladder), r.Settings)
		}
	}
	if got := fa.requests()[0].Model; got != "given" {
		t.Errorf("server a got model %q", got)
	}
	sum, err := ReadSummary(filepath.Join(dir, SummaryFile))
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, r := range sum.Runs {
		names = append(names, r.Name)
	}
	if strings.Join(names, ",") != "a,b,plan" {
		t.Errorf("report runs %v, want a, b, then the included plan", names)
	}
	for _, f := range []string{"a.records.jsonl", "b.records.jsonl", ReportFile} {
		if _, err := os.Stat(filepath.Join(dir, f)); err != nil {
			t.Error(err)
		}
	}
	if lines := strings.Split(strings.TrimSpace(log.String()), "\n"); len(lines) != 2 || !strings.HasPrefix(lines[1], "b: 8/8 completed") {
		t.Errorf("log %q", log.String())
	}
	if !strings.Contains(progress.String(), "a 100% 8/8 done") {
		t.Errorf("progress %q", progress.String())
	}
}

func TestSuiteInterrupted(t *testing.T) {
	// The suite is interrupted once the server holds the first two
	// requests of target x (due at 0 and 0.5 s; it would hold them 5 s).
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var got atomic.Int32
	f := &fakeVLLM{headerDelay: 5 * time.Second}
	srv := modelsServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if got.Add(1) == 2 {
			cancel()
		}
		f.ServeHTTP(w, r)
	}), "m")
	defer srv.Close()
	guard := time.AfterFunc(30*time.Second, cancel) // a hang guard
	defer guard.Stop()
	_, w := smallWorkload(t, "{kind: constant, rate: 2}")
	dir := t.TempDir()
	s := &Suite{Targets: []Target{{Name: "x", URL: srv.URL}, {Name: "y", URL: srv.URL}}, Workload: w, Out: dir}
	runs, err := s.Run(ctx)
	if !errors.Is(err, context.Canceled) {
		t.Errorf("error %v, want the context's", err)
	}
	if len(runs) != 1 || !runs[0].Interrupted || runs[0].Requests.Errors["canceled"] < 2 {
		t.Fatalf("runs %+v", runs)
	}
	sum, err := ReadSummary(filepath.Join(dir, SummaryFile))
	if err != nil || len(sum.Runs) != 1 || !sum.Runs[0].Interrupted {
		t.Errorf("written summary %+v, %v", sum, err)
	}
}

func TestSuiteValidate(t *testing.T) {
	_, w := smallWorkload(t, "{kind: constant, rate: 2}")
	ok := Suite{Targets: []Target{{Name: "a", URL: "http://h"}}, Workload: w, Out: "d"}
	for _, tc := range []struct {
		edit func(*Suite)
		want string
	}{
		{func(s *Suite) { s.Targets = nil }, "no target"},
		{func(s *Suite) { s.Workload = nil }, "no workload"},
		{func(s *Suite) { s.Out = "" }, "no output directory"},
		{func(s *Suite) { s.Targets = append(s.Targets, Target{Name: "a", URL: "http://g"}) }, `two runs are named "a"`},
		{func(s *Suite) { s.Include = []RunSummary{{Name: "a"}} }, `two runs are named "a"`},
		{func(s *Suite) { s.Targets[0].Name = "" }, "no name"},
		{func(s *Suite) { s.Targets[0].URL = "h:80" }, `run "a": url`},
		{func(s *Suite) { s.SLO.TTFT = -1 }, "negative"},
	} {
		s := ok
		s.Targets = append([]Target(nil), ok.Targets...)
		tc.edit(&s)
		if err := s.Validate(); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("error %v, want one with %q", err, tc.want)
		}
	}
	if err := ok.Validate(); err != nil {
		t.Error(err)
	}
}

func TestModels(t *testing.T) {
	for in, want := range map[string]string{
		"http://h/v1/completions":             "http://h/v1/models",
		"http://h/ns/svc/v1/chat/completions": "http://h/ns/svc/v1/models",
		"http://h/v1/completions?x=1":         "http://h/v1/models",
	} {
		if got, err := ModelsURL(in); err != nil || got != want {
			t.Errorf("ModelsURL(%q) = %q, %v; want %q", in, got, err, want)
		}
	}
	if _, err := ModelsURL("http://h/generate"); err == nil {
		t.Error("no error for a path without /completions")
	}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Host == "critical-llm.default.localhost" {
			fmt.Fprint(w, `{"data":[{"id":"by-host"}]}`)
			return
		}
		if r.Header.Get("Authorization") != "Bearer k" {
			w.WriteHeader(http.StatusUnauthorized)
			fmt.Fprint(w, `{"error":{"message":"bad key"}}`)
			return
		}
		fmt.Fprint(w, `{"data":[]}`)
	}))
	defer srv.Close()
	_, err := DiscoverModel(context.Background(), nil, srv.URL+"/v1/completions", nil)
	if err == nil || !strings.Contains(err.Error(), "401 Unauthorized: bad key") {
		t.Errorf("error %v", err)
	}
	_, err = DiscoverModel(context.Background(), nil, srv.URL+"/v1/completions", http.Header{"Authorization": {"Bearer k"}})
	if err == nil || !strings.Contains(err.Error(), "lists no model") {
		t.Errorf("error %v", err)
	}
	// A Host header is the Host the request is sent with (a traffic tag's).
	if got, err := DiscoverModel(context.Background(), nil, srv.URL+"/v1/completions", http.Header{"Host": {"critical-llm.default.localhost"}}); err != nil || got != "by-host" {
		t.Errorf("with a Host header: %q, %v", got, err)
	}
}

func TestLadderStepsAndDescription(t *testing.T) {
	spec, err := workload.ParseSpec([]byte(`
kind: random
random: {inputLen: 10, outputLen: 2, numPrompts: 100000}
arrival: {kind: ladder, steps: [{rate: 2, duration: 10s}, {rate: 4, duration: 10s}, {rate: 8, duration: 10s}]}
speedup: 2
rateScale: 1.5
maxDuration: 8s
`))
	if err != nil {
		t.Fatal(err)
	}
	w, err := workload.Open(spec, "")
	if err != nil {
		t.Fatal(err)
	}
	// Run time: steps of 5 s at 2·1.5·2 = 6 and 12 req/s, the second cut at 8 s.
	got := LadderSteps(w)
	want := []LoadStep{{6, 5 * time.Second}, {12, 3 * time.Second}}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("steps %v, want %v", got, want)
	}
	info := DescribeWorkload(spec, w)
	for _, part := range []string{"random", "ladder of 3 steps", "speedup 2", "rate ×1.5", "first 8s", fmt.Sprintf(": %d requests over", w.Len())} {
		if !strings.Contains(info.Description, part) {
			t.Errorf("description %q lacks %q", info.Description, part)
		}
	}
	if !bytes.Contains(info.Spec, []byte(`"kind":"random"`)) {
		t.Errorf("spec %s", info.Spec)
	}
	spec, _ = workload.ParseSpec([]byte("kind: shared-prefix\narrival: {kind: ladder, preset: llm-d}\n"))
	w, _ = workload.Open(spec, "")
	if steps := LadderSteps(w); len(steps) != 17 || steps[0] != (LoadStep{15, 50 * time.Second}) {
		t.Errorf("llm-d ladder %v", steps)
	}
	_, w = smallWorkload(t, "{kind: constant, rate: 2}")
	if LadderSteps(w) != nil {
		t.Error("ladder steps without a ladder")
	}
}
