package reconciler

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/llmd-kn/llmd-kn/pkg/autoscaler"
)

// apiFixture is a StatsAPI over a fake clock with one known revision.
type apiFixture struct {
	now    time.Time
	api    *StatsAPI
	srv    *httptest.Server
	pokes  []string
	recent []RevisionRecommendation
}

func newAPIFixture(t *testing.T) *apiFixture {
	f := &apiFixture{now: time.Unix(1_000_000, 0)}
	f.api = &StatsAPI{
		Stats: NewStats(),
		Now:   func() time.Time { return f.now },
		Poke: func(ns, name string) error {
			if ns+"/"+name != "default/chat-00001" {
				return ErrUnknownRevision
			}
			f.pokes = append(f.pokes, ns+"/"+name)
			return nil
		},
		Recommendations: func() []RevisionRecommendation { return f.recent },
	}
	f.srv = httptest.NewServer(f.api.Handler())
	t.Cleanup(f.srv.Close)
	return f
}

func (f *apiFixture) post(t *testing.T, path, body string) (int, string) {
	t.Helper()
	resp, err := http.Post(f.srv.URL+path, "application/json", strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

func report(activator string, requests, prompt, completion int64, queued int) string {
	return fmt.Sprintf(`{"activator":%q,"revisions":[{"revision":"default/chat-00001","requestsByTier":{"standard":%d},
		"promptTokens":%d,"completionTokens":%d,"uncachedPrefillTokens":%d,"queuedByTier":{"standard":%d},"inFlight":2,
		"readyPods":1,"pods":1,"window":"30s","samples":3,"predictedCachedTokens":0,"disaggregated":0,"ttftP90":0.25}]}`,
		activator, requests, prompt, completion, prompt, queued)
}

func TestStatsAPIRejectsBadInput(t *testing.T) {
	f := newAPIFixture(t)
	for _, tc := range []struct {
		name, path, body string
		code             int
		msg              string
	}{
		{"not JSON", "/v1/stats", `{"activator":`, http.StatusBadRequest, "invalid JSON"},
		{"wrong type names the field", "/v1/stats", `{"activator":"a","revisions":[{"revision":"default/x","inFlight":"many"}]}`,
			http.StatusBadRequest, "field revisions.inFlight"},
		{"missing activator", "/v1/stats", `{"revisions":[]}`, http.StatusBadRequest, "field activator: required"},
		{"revision not namespace/name", "/v1/stats", `{"activator":"a","revisions":[{"revision":"chat"}]}`,
			http.StatusBadRequest, `field revisions[0].revision: "chat" is not namespace/name`},
		{"two values", "/v1/stats", `{"activator":"a"} {}`, http.StatusBadRequest, "more than one value"},
		{"too large", "/v1/stats", `{"activator":"` + strings.Repeat("a", MaxStatsBody) + `"}`, http.StatusBadRequest, "body larger than"},
		{"poke without name", "/v1/poke", `{"namespace":"default"}`, http.StatusBadRequest, "field name: required"},
		{"poke of an unknown revision", "/v1/poke", `{"namespace":"default","name":"other"}`, http.StatusNotFound, "default/other: unknown revision"},
		{"poke bad JSON", "/v1/poke", `[1]`, http.StatusBadRequest, "invalid JSON"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			code, body := f.post(t, tc.path, tc.body)
			if code != tc.code || !strings.Contains(body, tc.msg) {
				t.Errorf("got %d %q, want %d containing %q", code, body, tc.code, tc.msg)
			}
		})
	}
	resp, err := http.Get(f.srv.URL + "/v1/stats")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusMethodNotAllowed {
		t.Errorf("GET /v1/stats: %d, want 405", resp.StatusCode)
	}
	if _, ok := f.api.Stats.Load(f.now, "default/x"); ok {
		t.Error("a rejected report was recorded")
	}
}

func TestStatsAPIPoke(t *testing.T) {
	f := newAPIFixture(t)
	if code, body := f.post(t, "/v1/poke", `{"namespace":"default","name":"chat-00001"}`); code != http.StatusAccepted {
		t.Fatalf("poke: %d %s", code, body)
	}
	if len(f.pokes) != 1 {
		t.Errorf("pokes: %v", f.pokes)
	}
}

// TestStatsLoadSumsActivators feeds two activators' reports and checks
// the rates, the sum and that a silent activator is dropped.
func TestStatsLoadSumsActivators(t *testing.T) {
	f := newAPIFixture(t)
	send := func(body string) {
		t.Helper()
		if code, msg := f.post(t, "/v1/stats", body); code != http.StatusAccepted {
			t.Fatalf("stats: %d %s", code, msg)
		}
	}
	send(report("act-a", 10, 1000, 100, 0))
	send(report("act-b", 0, 0, 0, 1))
	l, ok := f.api.Stats.Load(f.now, "default/chat-00001")
	if !ok || l.Queued != 1 || l.InFlight != 4 || l.OutputTokensPerSecond != 0 {
		t.Fatalf("first reports (gauges only): ok %v, %+v", ok, l)
	}
	f.now = f.now.Add(time.Second)
	send(report("act-a", 30, 5000, 500, 0)) // 20 req/s, 4000 prompt tok/s, 400 out tok/s
	f.now = f.now.Add(time.Second)
	send(report("act-b", 10, 2000, 100, 3)) // 5 req/s over 2 s, 1000 prompt tok/s, 50 out tok/s
	l, _ = f.api.Stats.Load(f.now, "default/chat-00001")
	if got := l.Requests(); got != 25 {
		t.Errorf("requests/s = %v, want 25", got)
	}
	if l.PromptTokensPerSecond != 5000 || l.UncachedPrefillTokensPerSecond != 5000 || l.OutputTokensPerSecond != 450 || l.Queued != 3 {
		t.Errorf("load %+v", l)
	}
	// Means weighted by request rate: (20*200 + 5*200)/25 prompt tokens.
	if l.MeanPromptTokens != 200 || l.TTFT.P90 != 250*time.Millisecond {
		t.Errorf("mean prompt %v, ttft p90 %v", l.MeanPromptTokens, l.TTFT.P90)
	}
	if _, ok := f.api.Stats.Load(f.now, "default/other"); ok {
		t.Error("a revision nobody reported has a load")
	}
	if got := f.api.Stats.Activators(f.now, "default/chat-00001"); !slices.Equal(got, []string{"act-a", "act-b"}) {
		t.Errorf("activators %v, want both", got)
	}
	// act-a goes silent past ActivatorSilence; act-b keeps reporting.
	f.now = f.now.Add(ActivatorSilence)
	send(report("act-b", 10, 2000, 100, 0))
	l, _ = f.api.Stats.Load(f.now, "default/chat-00001")
	if l.Requests() != 0 || l.InFlight != 2 {
		t.Errorf("after act-a went silent: %+v", l)
	}
	if got := f.api.Stats.Activators(f.now, "default/chat-00001"); !slices.Equal(got, []string{"act-b"}) {
		t.Errorf("activators after act-a went silent: %v, want act-b", got)
	}
	// An activator that stops reporting a revision forgets it.
	send(`{"activator":"act-b","revisions":[]}`)
	if _, ok := f.api.Stats.Load(f.now, "default/chat-00001"); ok {
		t.Error("revision still has a load after its last activator dropped it")
	}
}

func TestStatsAPIRecommendations(t *testing.T) {
	f := newAPIFixture(t)
	f.recent = []RevisionRecommendation{
		{Namespace: "b", Name: "x", Mode: "act", Decode: 2},
		{Namespace: "a", Name: "y", Mode: "advise", Decode: 1, Prefill: 1, Recommendation: autoscaler.Recommendation{Advisory: true}},
	}
	resp, err := http.Get(f.srv.URL + "/v1/recommendations")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var got []RevisionRecommendation
	if err := json.NewDecoder(resp.Body).Decode(&got); err != nil {
		t.Fatal(err)
	}
	if len(got) != 2 || got[0].Namespace != "a" || !got[0].Recommendation.Advisory || got[1].Decode != 2 {
		t.Errorf("got %+v", got)
	}
	f.recent = nil
	resp2, err := http.Get(f.srv.URL + "/v1/recommendations")
	if err != nil {
		t.Fatal(err)
	}
	defer resp2.Body.Close()
	b, _ := io.ReadAll(resp2.Body)
	if strings.TrimSpace(string(b)) != "[]" {
		t.Errorf("empty list: %q", b)
	}
}

// TestStatsArrivalsAndPodTelemetry: arrival rates add up over activators
// like completions do; the pods' telemetry comes from the newest report
// (every activator scrapes the same pods), in the activator's JSON.
func TestStatsArrivalsAndPodTelemetry(t *testing.T) {
	f := newAPIFixture(t)
	rep := func(activator string, arrived, prompt int64, running int) string {
		return fmt.Sprintf(`{"activator":%q,"revisions":[{"revision":"default/chat-00001","arrivedByTier":{"standard":%d},
			"arrivedPromptTokens":%d,"roles":{"decode":{"ready":2,"running":%d,"waiting":1,"kvUsage":0.5},
			"prefill":{"ready":1,"running":0,"waiting":3,"kvUsage":0.1}}}]}`, activator, arrived, prompt, running)
	}
	// act-b reports 100 ms after act-a, each once a second.
	for _, body := range []string{rep("act-a", 0, 0, 7), rep("act-b", 0, 0, 7), rep("act-a", 10, 1000, 9), rep("act-b", 4, 400, 11)} {
		if code, msg := f.post(t, "/v1/stats", body); code != http.StatusAccepted {
			t.Fatalf("stats: %d %s", code, msg)
		}
		if strings.Contains(body, "act-a") {
			f.now = f.now.Add(100 * time.Millisecond)
		} else {
			f.now = f.now.Add(900 * time.Millisecond)
		}
	}
	f.now = f.now.Add(-900 * time.Millisecond)
	l, _ := f.api.Stats.Load(f.now, "default/chat-00001")
	if l.Arrivals() != 14 || l.ArrivedPromptTokensPerSecond != 1400 {
		t.Errorf("arrivals %v/s, prompt tokens %v/s: want 14 and 1400 (summed over activators)", l.Arrivals(), l.ArrivedPromptTokensPerSecond)
	}
	pods, ok := f.api.Stats.Pods(f.now, "default/chat-00001")
	if !ok || pods.Decode.Running != 11 || pods.Decode.Waiting != 1 || pods.Decode.KVUsage != 0.5 || pods.Prefill.Waiting != 3 {
		t.Errorf("pods %+v (ok %v): want the newest report's (act-b: 11 running decodes), not a sum", pods, ok)
	}
	if _, ok := f.api.Stats.Pods(f.now.Add(2*ActivatorSilence), "default/chat-00001"); ok {
		t.Error("telemetry older than ActivatorSilence is still used")
	}
}
