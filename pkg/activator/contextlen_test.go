package activator_test

import (
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/llmd-kn/llmd-kn/internal/simtest"
	"github.com/llmd-kn/llmd-kn/pkg/activator"
	"github.com/llmd-kn/llmd-kn/pkg/router"
)

// hugePrompt stands for issue 17's 3,000,001-token prompt (which the race
// detector takes minutes to parse): n token ids, n over the context
// length.
func hugePrompt(n int) string {
	var b strings.Builder
	b.WriteString(`{"model":"demo","max_tokens":8,"prompt":[`)
	for i := range n {
		if i > 0 {
			b.WriteByte(',')
		}
		b.WriteByte('7')
	}
	b.WriteString(`]}`)
	return b.String()
}

// TestContextLengthCheckedBeforeLoad: issue 17's failure 7. A prompt over
// the model's max_model_len (learned from the pod's /v1/models, or
// configured for a revision at zero) is refused by the activator with
// vLLM's 400 and never counts as arrived load nor pokes the autoscaler;
// a request within it goes through.
func TestContextLengthCheckedBeforeLoad(t *testing.T) {
	_, simAddr := simtest.Start(t, "demo")
	var pokes atomic.Int64
	act, err := activator.New(activator.Options{ScrapeInterval: 20 * time.Millisecond, MaxBodyBytes: 16 << 20,
		Poke: func(activator.RevisionKey) { pokes.Add(1) }})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(act.Close)
	up := activator.RevisionKey{Namespace: "team-a", Name: "llm-00001"}
	zero := activator.RevisionKey{Namespace: "team-a", Name: "cold-00001"}
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	must(act.UpsertRevision(activator.RevisionConfig{Key: up, Service: "llm", Models: []string{"demo"}, Spec: defaultSpec()}))
	must(act.SetPods(up, []activator.PodSpec{{Name: "pod-0", URL: "http://" + simAddr, Role: router.RoleBoth}}))
	must(act.UpsertRevision(activator.RevisionConfig{Key: zero, Service: "cold", Models: []string{"cold"}, Spec: defaultSpec(), MaxModelLen: 4096}))
	front := httptest.NewServer(act.Handler())
	t.Cleanup(front.Close)

	stats := func(key activator.RevisionKey) activator.RevisionStats {
		for _, s := range act.Stats() {
			if s.Revision == key.String() {
				return s
			}
		}
		t.Fatalf("no stats of %s", key)
		return activator.RevisionStats{}
	}
	deadline := time.Now().Add(10 * time.Second)
	for stats(up).MaxModelLen == 0 {
		if time.Now().After(deadline) {
			t.Fatal("the pod's max_model_len was never learned from /v1/models")
		}
		time.Sleep(10 * time.Millisecond)
	}
	maxLen := stats(up).MaxModelLen

	post := func(host, body string) (int, string) {
		req, _ := http.NewRequest(http.MethodPost, front.URL+"/v1/completions", strings.NewReader(body))
		req.Host = host
		req.Header.Set("Content-Type", "application/json")
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	hugeTokens := maxLen + 1
	if code, msg := post("llm.team-a.localhost", hugePrompt(hugeTokens)); code != http.StatusBadRequest ||
		!strings.Contains(msg, "maximum context length is") || !strings.Contains(msg, fmt.Sprintf("%d tokens (%d in the messages, 8 in the completion)", hugeTokens+8, hugeTokens)) {
		t.Errorf("%d-token prompt: %d %.200s; want 400 with vLLM's context-length message", hugeTokens, code, msg)
	}
	over := `{"model":"cold","max_tokens":1,"prompt":[` + strings.TrimSuffix(strings.Repeat("7,", 4096), ",") + `]}`
	if code, msg := post("cold.team-a.localhost", over); code != http.StatusBadRequest || !strings.Contains(msg, "maximum context length is 4096") {
		t.Errorf("revision at zero, 4097 tokens over its configured 4096: %d %.200s; want 400", code, msg)
	}
	for _, key := range []activator.RevisionKey{up, zero} {
		if s := stats(key); s.ArrivedPromptTokens != 0 || len(s.ArrivedByTier) != 0 || len(s.RequestsByTier) != 0 {
			t.Errorf("%s: the refused request counted as load: arrived %v (%d prompt tokens), requests %v",
				key, s.ArrivedByTier, s.ArrivedPromptTokens, s.RequestsByTier)
		}
	}
	if n := pokes.Load(); n != 0 {
		t.Errorf("%d pokes for refused requests, want 0", n)
	}
	// Within the limit: served, and counted.
	if code, msg := post("llm.team-a.localhost", `{"model":"demo","max_tokens":4,"prompt":"Knative is"}`); code != http.StatusOK {
		t.Fatalf("a short prompt: %d %s", code, msg)
	}
	if s := stats(up); s.ArrivedByTier["standard"] != 1 {
		t.Errorf("arrivals %v after a good request, want standard 1", s.ArrivedByTier)
	}
	// Exactly at the limit the activator lets the engine decide.
	ids := strings.TrimSuffix(strings.Repeat("7,", maxLen-4), ",")
	if code, msg := post("llm.team-a.localhost", `{"model":"demo","max_tokens":5,"prompt":[`+ids+`]}`); code != http.StatusBadRequest || !strings.Contains(msg, "maximum context length") {
		t.Errorf("prompt %d + max_tokens 5 > %d: %d %.200s, want 400", maxLen-4, maxLen, code, msg)
	}
}

// A pod's /v1/models lists its LoRA adapters with a parent, as vLLM lists
// --lora-modules: the activator routes a request for one on the adapter's
// own blocks.
func TestFetchModelsListsAdapters(t *testing.T) {
	pod := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/v1/models" {
			http.NotFound(w, r)
			return
		}
		io.WriteString(w, `{"object":"list","data":[
			{"id":"meta-llama/Llama-3.1-8B-Instruct","object":"model","root":"meta-llama/Llama-3.1-8B-Instruct","parent":null,"max_model_len":32768},
			{"id":"sql-lora","object":"model","root":"/adapters/sql","parent":"meta-llama/Llama-3.1-8B-Instruct","max_model_len":32768},
			{"id":"odd","object":"model","parent":"odd"}]}`)
	}))
	defer pod.Close()
	m, err := activator.FetchModels(t.Context(), pod.Client(), pod.URL)
	if err != nil {
		t.Fatal(err)
	}
	if m.MaxModelLen != 32768 || len(m.Adapters) != 1 || m.Adapters[0] != "sql-lora" {
		t.Fatalf("got %+v, want max_model_len 32768 and the adapter sql-lora alone (a model that is its own parent is not one)", m)
	}
}
