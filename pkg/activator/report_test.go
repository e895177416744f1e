package activator_test

import (
	"context"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/llmd-kn/llmd-kn/internal/simtest"
	"github.com/llmd-kn/llmd-kn/pkg/activator"
	"github.com/llmd-kn/llmd-kn/pkg/apis"
	"github.com/llmd-kn/llmd-kn/pkg/autoscaler"
	"github.com/llmd-kn/llmd-kn/pkg/router"
)

// TestStatsReachTheAutoscaler: after a request through the activator, the
// autoscaler's stats endpoint (a real HTTP server here) receives, every
// interval, the contract's JSON: the activator's name and one entry per
// revision that decodes into autoscaler.Snapshot with the request counted.
func TestStatsReachTheAutoscaler(t *testing.T) {
	_, simAddr := simtest.Start(t, "demo")

	type report struct {
		raw map[string]json.RawMessage
		at  time.Time
	}
	var mu sync.Mutex
	var reports []report
	scaler := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodPost || r.URL.Path != activator.StatsPath || r.Header.Get("Content-Type") != "application/json" {
			http.Error(w, "unexpected "+r.Method+" "+r.URL.Path, http.StatusNotFound)
			return
		}
		var raw map[string]json.RawMessage
		if err := json.NewDecoder(r.Body).Decode(&raw); err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		mu.Lock()
		reports = append(reports, report{raw, time.Now()})
		mu.Unlock()
		w.WriteHeader(http.StatusAccepted)
	}))
	t.Cleanup(scaler.Close)

	reg := prometheus.NewRegistry()
	rep, err := activator.NewReporter(activator.ReporterOptions{URL: scaler.URL + "/", Activator: "llmd-activator-7d9f-x2", Interval: 100 * time.Millisecond, Registerer: reg})
	if err != nil {
		t.Fatal(err)
	}
	act, err := activator.New(activator.Options{Poke: rep.Poke, ScrapeInterval: 20 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(act.Close)
	key := activator.RevisionKey{Namespace: "team-a", Name: "llm-00001"}
	if err := act.UpsertRevision(activator.RevisionConfig{Key: key, Service: "llm", Models: []string{"demo"}, Spec: defaultSpec()}); err != nil {
		t.Fatal(err)
	}
	if err := act.SetPods(key, []activator.PodSpec{{Name: "pod-0", URL: "http://" + simAddr, Role: router.RoleBoth}}); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { rep.Run(ctx, act.Stats); close(done) }()
	t.Cleanup(func() { cancel(); <-done })

	front := httptest.NewServer(act.Handler())
	t.Cleanup(front.Close)
	resp, err := http.Post(front.URL+"/v1/completions", "application/json", strings.NewReader(`{"model":"demo","prompt":"Knative is","max_tokens":5}`))
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Fatalf("request: %d %s", resp.StatusCode, body)
	}
	sent := time.Now()

	var last report
	for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		mu.Lock()
		n := len(reports)
		if n > 0 {
			last = reports[n-1]
		}
		mu.Unlock()
		// Periodic, and a report after the request counts it (the
		// activator accounts for a request just after its answer ends).
		if n >= 2 && last.at.After(sent) && strings.Contains(string(last.raw["revisions"]), `"requestsByTier":{"standard":1}`) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no periodic stats reports counting the request (%d reports, last %s)", n, last.raw["revisions"])
		}
	}
	if len(last.raw) != 2 || string(last.raw["activator"]) != `"llmd-activator-7d9f-x2"` {
		t.Fatalf("report keys: %v", last.raw)
	}
	var revs []map[string]json.RawMessage
	if err := json.Unmarshal(last.raw["revisions"], &revs); err != nil || len(revs) != 1 {
		t.Fatalf("revisions: %s (%v)", last.raw["revisions"], err)
	}
	// Every field the autoscaler reads is present under its JSON name.
	for _, k := range []string{"revision", "requestsByTier", "errors", "promptTokens", "completionTokens", "cachedTokens",
		"uncachedPrefillTokens", "queuedByTier", "inFlight", "ttftP50", "ttftP90", "tpotP50", "tpotP90"} {
		if _, ok := revs[0][k]; !ok {
			t.Errorf("revision stats lack %q: %v", k, revs[0])
		}
	}
	var snaps []autoscaler.Snapshot
	if err := json.Unmarshal(last.raw["revisions"], &snaps); err != nil {
		t.Fatal(err)
	}
	if s := snaps[0]; s.Revision != "team-a/llm-00001" || s.RequestsByTier["standard"] != 1 || s.CompletionTokens != 5 || s.PromptTokens == 0 {
		t.Fatalf("snapshot %+v", s)
	}
	if f := counter(t, reg, "llmd_activator_autoscaler_report_failures_total", "stats"); f != 0 {
		t.Fatalf("%v failed stats reports", f)
	}
}

// TestPokesNeverBlockAndCoalesce: pokes go out at once, one per revision
// within the window, and an unreachable autoscaler costs a request
// nothing: Poke returns immediately and the failure is counted.
func TestPokesNeverBlockAndCoalesce(t *testing.T) {
	var mu sync.Mutex
	got := map[activator.PokeRequest]int{}
	scaler := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		var p activator.PokeRequest
		if r.URL.Path != activator.PokePath || json.NewDecoder(r.Body).Decode(&p) != nil {
			http.Error(w, "bad poke", http.StatusBadRequest)
			return
		}
		mu.Lock()
		got[p]++
		mu.Unlock()
		w.WriteHeader(http.StatusAccepted)
	}))
	t.Cleanup(scaler.Close)
	const window = 300 * time.Millisecond
	rep, err := activator.NewReporter(activator.ReporterOptions{URL: scaler.URL, Activator: "a", Interval: time.Hour, PokeWindow: window})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { rep.Run(ctx, func() []activator.RevisionStats { return nil }); close(done) }()
	t.Cleanup(func() { cancel(); <-done })
	a, b := activator.RevisionKey{Namespace: "ns", Name: "a"}, activator.RevisionKey{Namespace: "ns", Name: "b"}
	count := func(k activator.RevisionKey) int {
		mu.Lock()
		defer mu.Unlock()
		return got[activator.PokeRequest{Namespace: k.Namespace, Name: k.Name}]
	}
	start := time.Now()
	for range 100 {
		rep.Poke(a)
		rep.Poke(b)
	}
	// The pokes coalesce within the window, which counts from the first
	// one: exactly one each when the loop took less than the window (a
	// machine that stalled this goroutine longer rightly lets more out).
	if took := time.Since(start); took < window {
		waitFor(t, func() bool { return count(a) == 1 && count(b) == 1 })
		time.Sleep(window + 100*time.Millisecond) // past the window: the next poke goes out
		rep.Poke(a)
		waitFor(t, func() bool { return count(a) == 2 })
		if count(b) != 1 {
			t.Fatalf("b poked %d times", count(b))
		}
	} else {
		t.Logf("200 pokes took %v, more than the %v window: coalescing not checked", took, window)
		waitFor(t, func() bool { return count(a) >= 1 && count(b) >= 1 })
	}

	// An autoscaler that does not answer: Poke still returns at once. The
	// client would wait a minute for each poke; 1000 pokes return within
	// the hang guard.
	dead, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { dead.Close() }) // accepts nothing: connections hang until the client's timeout
	rep2, err := activator.NewReporter(activator.ReporterOptions{URL: "http://" + dead.Addr().String(), Activator: "a",
		Interval: time.Hour, Client: &http.Client{Timeout: time.Minute}})
	if err != nil {
		t.Fatal(err)
	}
	ctx2, cancel2 := context.WithCancel(context.Background())
	done2 := make(chan struct{})
	go func() { rep2.Run(ctx2, func() []activator.RevisionStats { return nil }); close(done2) }()
	t.Cleanup(func() { cancel2(); <-done2 })
	poked := make(chan struct{})
	go func() {
		defer close(poked)
		for i := range 1000 {
			rep2.Poke(activator.RevisionKey{Namespace: "ns", Name: string(rune('a' + i%26))})
		}
	}()
	select {
	case <-poked:
	case <-time.After(30 * time.Second):
		t.Fatal("1000 pokes to an autoscaler that does not answer did not return")
	}

	// A failed poke is counted.
	refused, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	refusedURL := "http://" + refused.Addr().String()
	refused.Close()
	reg3 := prometheus.NewRegistry()
	rep3, err := activator.NewReporter(activator.ReporterOptions{URL: refusedURL, Activator: "a", Interval: time.Hour, Registerer: reg3})
	if err != nil {
		t.Fatal(err)
	}
	ctx3, cancel3 := context.WithCancel(context.Background())
	done3 := make(chan struct{})
	go func() { rep3.Run(ctx3, func() []activator.RevisionStats { return nil }); close(done3) }()
	t.Cleanup(func() { cancel3(); <-done3 })
	rep3.Poke(a)
	waitFor(t, func() bool { return counter(t, reg3, "llmd_activator_autoscaler_report_failures_total", "poke") >= 1 })

	if _, err := activator.NewReporter(activator.ReporterOptions{URL: "llmd-autoscaler:8090", Activator: "a"}); err == nil ||
		!strings.Contains(err.Error(), "http(s) base URL") {
		t.Fatalf("bad URL: %v", err)
	}
	// The token moves replicas: never in clear off this host.
	if _, err := activator.NewReporter(activator.ReporterOptions{URL: "http://llmd-autoscaler.llmd-kn.svc:8090", Activator: "a",
		TokenFile: "/var/run/token"}); err == nil || !strings.Contains(err.Error(), "in clear") {
		t.Fatalf("a token over plain http to another host: %v", err)
	}
	for _, u := range []string{"http://127.0.0.1:8090", "http://localhost:8090", "http://[::1]:8090", "https://llmd-autoscaler.llmd-kn.svc:8090"} {
		if _, err := activator.NewReporter(activator.ReporterOptions{URL: u, Activator: "a", TokenFile: "/var/run/token"}); err != nil {
			t.Errorf("%s with a token: %v", u, err)
		}
	}
	if _, err := activator.NewReporter(activator.ReporterOptions{URL: "https://x:1", Activator: "a", CAFile: "/nonexistent/ca.crt"}); err == nil ||
		!strings.Contains(err.Error(), "CA bundle") {
		t.Fatalf("a missing CA file: %v", err)
	}
}

func waitFor(t *testing.T, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(30 * time.Second); time.Now().Before(deadline); time.Sleep(10 * time.Millisecond) {
		if cond() {
			return
		}
	}
	t.Fatal("timed out")
}

// counter reads a counter of reg by name and its one label's value.
func counter(t *testing.T, reg *prometheus.Registry, name, label string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		for _, m := range mf.GetMetric() {
			if len(m.GetLabel()) == 1 && m.GetLabel()[0].GetValue() == label {
				return m.GetCounter().GetValue()
			}
		}
	}
	return 0
}

func defaultSpec() apis.Spec {
	spec, _, err := activator.ParseRevisionSpec(nil, "annotations", activator.NewVocabulary(activator.DefaultTiers(), router.DefaultConfig()))
	if err != nil {
		panic(err)
	}
	return spec
}
