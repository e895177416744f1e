package activator

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/llmd-kn/llmd-kn/pkg/apis"
	"github.com/llmd-kn/llmd-kn/pkg/router"
)

func TestForwardStreamsChunksAsTheyCome(t *testing.T) {
	release := make(chan struct{})
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("X-Hop") != "" || r.Header.Get("Connection") != "" {
			t.Errorf("hop-by-hop header forwarded: %v", r.Header)
		}
		w.Header().Set("Content-Type", "text/event-stream")
		fmt.Fprint(w, "data: {\"choices\":[{\"text\":\"a\"}]}\n\n")
		w.(http.Flusher).Flush()
		<-release
		fmt.Fprint(w, "data: {\"choices\":[],\"usage\":{\"prompt_tokens\":5,\"completion_tokens\":2,\"total_tokens\":7,\"prompt_tokens_details\":{\"cached_tokens\":4}}}\n\ndata: [DONE]\n\n")
	}))
	defer up.Close()
	p := NewProxy()
	var meter *Meter
	front := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		meter = NewMeter(time.Now(), true, time.Now)
		r.Header.Set("Connection", "X-Hop")
		r.Header.Set("X-Hop", "1")
		if err := p.Forward(r.Context(), w, r, up.URL, "/v1/completions", []byte(`{}`), meter); err != nil {
			t.Error(err)
		}
	}))
	defer front.Close()
	resp, err := http.Post(front.URL, "application/json", strings.NewReader(`{}`))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	buf := make([]byte, 256)
	n, err := resp.Body.Read(buf)
	if err != nil || !strings.Contains(string(buf[:n]), `"text":"a"`) {
		t.Fatalf("first event not delivered before the stream ended: %q %v", buf[:n], err)
	}
	close(release)
	rest := make([]byte, 4096)
	total := ""
	for {
		n, err := resp.Body.Read(rest)
		total += string(rest[:n])
		if err != nil {
			break
		}
	}
	if !strings.HasSuffix(total, "data: [DONE]\n\n") {
		t.Fatalf("stream tail %q", total)
	}
	r := meter.Finish()
	if r.Events != 2 || r.Usage == nil || r.Usage.CachedTokens() != 4 || r.Usage.CompletionTokens != 2 {
		t.Fatalf("meter: %+v usage %+v", r, r.Usage)
	}
}

func TestForwardRetryableOnlyBeforeFirstByte(t *testing.T) {
	draining := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.WriteHeader(http.StatusServiceUnavailable)
	}))
	defer draining.Close()
	closed := httptest.NewServer(http.NotFoundHandler())
	closedURL := closed.URL
	closed.Close()
	p := NewProxy()
	for name, base := range map[string]string{"draining pod": draining.URL, "connection refused": closedURL} {
		rec := httptest.NewRecorder()
		in := httptest.NewRequest(http.MethodPost, "/v1/completions", nil)
		err := p.Forward(context.Background(), rec, in, base, "/v1/completions", []byte(`{}`), nil)
		var re *RetryableError
		if !errors.As(err, &re) {
			t.Errorf("%s: %v, want retryable", name, err)
		}
		if rec.Body.Len() != 0 || len(rec.Header()) != 0 {
			t.Errorf("%s: wrote to the client before failing over", name)
		}
	}
	// A 400 is the endpoint's answer, passed through, not retried.
	bad := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		http.Error(w, `{"error":{"message":"bad"}}`, http.StatusBadRequest)
	}))
	defer bad.Close()
	rec := httptest.NewRecorder()
	err := p.Forward(context.Background(), rec, httptest.NewRequest(http.MethodPost, "/", nil), bad.URL, "/", []byte(`{}`), nil)
	if err != nil || rec.Code != http.StatusBadRequest {
		t.Fatalf("400 passthrough: err=%v code=%d", err, rec.Code)
	}
}

func TestForwardClientGoneCancelsUpstream(t *testing.T) {
	started, cancelled := make(chan struct{}), make(chan struct{})
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.WriteHeader(200)
		w.(http.Flusher).Flush()
		close(started)
		<-r.Context().Done()
		close(cancelled)
	}))
	defer up.Close()
	p := NewProxy()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error)
	go func() {
		done <- p.Forward(ctx, httptest.NewRecorder(), httptest.NewRequest(http.MethodPost, "/", nil), up.URL, "/", []byte(`{}`), nil)
	}()
	// Cancel once the upstream has the request (a cancel before it was
	// sent would never reach the upstream).
	select {
	case <-started:
	case <-time.After(30 * time.Second):
		t.Fatal("upstream never got the request")
	}
	cancel()
	select {
	case <-cancelled:
	case <-time.After(30 * time.Second):
		t.Fatal("upstream request not cancelled")
	}
	if err := <-done; !errors.Is(err, context.Canceled) {
		t.Fatalf("got %v", err)
	}
}

func TestPrefillSpeaksVLLMProtocol(t *testing.T) {
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		var body map[string]json.RawMessage
		if err := json.NewDecoder(r.Body).Decode(&body); err != nil {
			t.Error(err)
		}
		var kv map[string]any
		_ = json.Unmarshal(body["kv_transfer_params"], &kv)
		if string(body["max_tokens"]) != "1" || string(body["stream"]) != "false" || body["stream_options"] != nil ||
			kv["do_remote_decode"] != true || kv["do_remote_prefill"] != false {
			t.Errorf("prefill request not as vLLM expects: %s", fmt.Sprint(body))
		}
		fmt.Fprint(w, `{"choices":[{"text":"x","finish_reason":"length"}],"usage":{"prompt_tokens":100,"completion_tokens":1,"total_tokens":101,"prompt_tokens_details":{"cached_tokens":64}},"kv_transfer_params":{"do_remote_prefill":true,"remote_block_ids":[1,2],"remote_engine_id":"e","remote_host":"h","remote_port":1}}`)
	}))
	defer up.Close()
	req, err := ParseLLMRequest(KindCompletion, []byte(`{"model":"m","prompt":"hi","max_tokens":50,"stream":true,"stream_options":{"include_usage":true}}`))
	if err != nil {
		t.Fatal(err)
	}
	res, err := NewProxy().Prefill(context.Background(), httptest.NewRequest(http.MethodPost, "/", nil), up.URL, "/v1/completions", req)
	if err != nil {
		t.Fatal(err)
	}
	if res.CachedTokens != 64 || !strings.Contains(string(res.KVTransferParams), `"remote_block_ids":[1,2]`) {
		t.Fatalf("prefill result %+v %s", res, res.KVTransferParams)
	}
	if v, _ := req.Field("max_tokens"); string(v) != "50" {
		t.Fatal("prefill modified the caller's body")
	}
}

func TestUsageIsAskedForAndHiddenFromClientsThatDidNot(t *testing.T) {
	req, err := ParseLLMRequest(KindCompletion, []byte(`{"prompt":"a","stream":true}`))
	if err != nil {
		t.Fatal(err)
	}
	if v, _ := req.Field("stream_options"); !askUsage(req) || string(req.AppendBody(nil)) != `{"prompt":"a","stream":true,"stream_options":{"include_usage":true}}` {
		t.Fatalf("stream_options %s", v)
	}
	for in, want := range map[string]string{
		`{"include_usage":false,"continuous_usage_stats":true}`: `{"include_usage":true,"continuous_usage_stats":true}`,
		`{ "continuous_usage_stats":true }`:                     `{"include_usage":true, "continuous_usage_stats":true }`,
		`{}`:                                                    `{"include_usage":true}`,
		`null`:                                                  `{"include_usage":true}`,
	} {
		req, _ := ParseLLMRequest(KindCompletion, []byte(`{"prompt":"a","stream":true,"stream_options":`+in+`}`))
		if v, _ := req.Field("stream_options"); !askUsage(req) {
			t.Fatalf("%s: not asked (%s)", in, v)
		}
		if v, _ := req.Field("stream_options"); string(v) != want {
			t.Fatalf("stream_options %s became %s, want %s", in, v, want)
		}
	}
	asked, _ := ParseLLMRequest(KindCompletion, []byte(`{"prompt":"a","stream":true,"stream_options":{"include_usage":true}}`))
	if askUsage(asked) {
		t.Fatal("a client that asked for usage would lose it")
	}
	rec := httptest.NewRecorder()
	s := &usageFilter{ResponseWriter: rec, streaming: true, strip: true}
	stream := "data: {\"choices\":[{\"text\":\"a\"}],\"usage\":null}\n\n" +
		"data: {\"choices\":[],\"usage\":{\"prompt_tokens\":1}}\n\ndata: [DONE]\n\n"
	for _, part := range []string{stream[:10], stream[10:70], stream[70:]} {
		if _, err := s.Write([]byte(part)); err != nil {
			t.Fatal(err)
		}
	}
	s.close()
	if got := rec.Body.String(); got != "data: {\"choices\":[{\"text\":\"a\"}],\"usage\":null}\n\ndata: [DONE]\n\n" {
		t.Fatalf("relayed %q", got)
	}
}

func TestUsageRewrittenForDisaggregatedAnswers(t *testing.T) {
	rec := httptest.NewRecorder()
	f := &usageFilter{ResponseWriter: rec, streaming: true, rewrite: true, cached: 64}
	_, _ = f.Write([]byte("data: {\"choices\":[{\"text\":\"a\"}],\"usage\":null}\n\ndata: {\"choices\":[],\"usage\":{\"prompt_tokens\":100,\"prompt_tokens_details\":{\"cached_tokens\":99}}}\n\ndata: [DONE]\n\n"))
	f.close()
	if got := rec.Body.String(); !strings.Contains(got, `"cached_tokens":64`) || strings.Contains(got, "99") || !strings.HasSuffix(got, "data: [DONE]\n\n") {
		t.Fatalf("stream %q", got)
	}
	rec = httptest.NewRecorder()
	rec.Header().Set("Content-Length", "999")
	f = &usageFilter{ResponseWriter: rec, rewrite: true, cached: 32}
	f.WriteHeader(200)
	_, _ = f.Write([]byte(`{"choices":[{"text":"x"}],"usage":{"prompt_tokens":50,`))
	_, _ = f.Write([]byte(`"prompt_tokens_details":{"cached_tokens":49}}}`))
	f.close()
	if got := rec.Body.String(); !strings.Contains(got, `"cached_tokens":32`) || rec.Header().Get("Content-Length") != "" {
		t.Fatalf("body %q, content-length %q", got, rec.Header().Get("Content-Length"))
	}
}

// TestUpstreamFailureMidStreamReachesTheClient: a pod that dies after the
// first event must not look like a complete answer: the client gets an SSE
// error event and an aborted response, never a clean end.
func TestUpstreamFailureMidStreamReachesTheClient(t *testing.T) {
	pod := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/metrics" {
			_, _ = w.Write([]byte(vllmPage))
			return
		}
		_, _ = io.Copy(io.Discard, r.Body)
		w.Header().Set("Content-Type", "text/event-stream")
		_, _ = w.Write([]byte("data: {\"choices\":[{\"index\":0,\"text\":\"a\"}]}\n\n"))
		w.(http.Flusher).Flush()
		conn, _, err := w.(http.Hijacker).Hijack()
		if err != nil {
			t.Error(err)
			return
		}
		_ = conn.Close()
	}))
	defer pod.Close()
	act, err := New(Options{ScrapeInterval: time.Hour, StaleAfter: 24 * time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	defer act.Close()
	key := RevisionKey{Namespace: "default", Name: "llm-00001"}
	if err := act.UpsertRevision(RevisionConfig{Key: key, Service: "llm", Models: []string{"demo"}, Spec: apis.Spec{RoutingProfile: "default"}}); err != nil {
		t.Fatal(err)
	}
	if err := act.SetPods(key, []PodSpec{{Name: "p0", URL: pod.URL, Role: router.RoleBoth}}); err != nil {
		t.Fatal(err)
	}
	for deadline := time.Now().Add(30 * time.Second); act.Stats()[0].ReadyPods != 1; time.Sleep(5 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("pod never ready")
		}
	}
	front := httptest.NewServer(act.Handler())
	defer front.Close()
	resp, err := http.Post(front.URL+"/v1/completions", "application/json", strings.NewReader(`{"model":"demo","prompt":"hi","stream":true}`))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(resp.Body)
	if err == nil {
		t.Fatalf("the broken stream ended cleanly: %q", data)
	}
	if !strings.Contains(string(data), `"text":"a"`) || !strings.Contains(string(data), `data: {"error":`) {
		t.Fatalf("stream %q: want the first event, then an error event", data)
	}
}

// doneCanceller records what is written and cancels the request's context
// once the stream's [DONE] went out: what a client that hangs up right
// after it (OpenAI's SDKs do) causes on the server.
type doneCanceller struct {
	*httptest.ResponseRecorder
	cancel context.CancelFunc
	after  string // cancel once the body ends with this
}

func (d doneCanceller) Write(b []byte) (int, error) {
	n, err := d.ResponseRecorder.Write(b)
	if strings.HasSuffix(d.Body.String(), d.after) {
		d.cancel()
	}
	return n, err
}

func TestForwardClientHangingUpAfterDoneIsNotAFailure(t *testing.T) {
	// The endpoint sends [DONE], then holds the connection open: its EOF
	// can only come after the client has gone.
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/event-stream")
		_, _ = io.WriteString(w, "data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"hi\"}}]}\n\n")
		_, _ = io.WriteString(w, "data: [DONE]\n\n")
		w.(http.Flusher).Flush()
		<-r.Context().Done()
	}))
	defer up.Close()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	rec := doneCanceller{httptest.NewRecorder(), cancel, "data: [DONE]\n\n"}
	err := NewProxy().Forward(ctx, rec, httptest.NewRequest(http.MethodPost, "/", nil), up.URL, "/v1/chat/completions", []byte(`{}`), nil)
	if err != nil {
		t.Fatalf("a stream whose [DONE] reached the client failed: %v", err)
	}
	// Without [DONE], the same hang-up is the client's cancellation.
	up2 := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/event-stream")
		_, _ = io.WriteString(w, "data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"hi\"}}]}\n\n")
		w.(http.Flusher).Flush()
		<-r.Context().Done()
	}))
	defer up2.Close()
	ctx2, cancel2 := context.WithCancel(context.Background())
	defer cancel2()
	rec2 := doneCanceller{httptest.NewRecorder(), cancel2, "}]}\n\n"}
	if err := NewProxy().Forward(ctx2, rec2, httptest.NewRequest(http.MethodPost, "/", nil), up2.URL, "/v1/chat/completions", []byte(`{}`), nil); err == nil {
		t.Fatal("a stream cut before [DONE] by the client's hang-up returned no error")
	}
}
