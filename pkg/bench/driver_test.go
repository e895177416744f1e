package bench

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/llmd-kn/llmd-kn/pkg/workload"
)

// requestsAt makes a workload of requests at the given offsets, each with
// a prompt of promptLen ids and maxTokens output tokens.
func requestsAt(promptLen, maxTokens int, at ...time.Duration) workload.Source {
	reqs := make([]workload.Request, len(at))
	for i, a := range at {
		prompt := make([]uint32, promptLen)
		for j := range prompt {
			prompt[j] = uint32(1000 + i + j)
		}
		reqs[i] = workload.NewRequest(i, a, prompt, maxTokens)
	}
	return workload.Requests(reqs)
}

// realPrompts takes n requests of a generated workload, whose ids decode to
// text that re-encodes to the same ids.
func realPrompts(t *testing.T, n int) workload.Source {
	t.Helper()
	spec, err := workload.ParseSpec([]byte(fmt.Sprintf("kind: random\nrandom: {inputLen: 40, outputLen: 5, numPrompts: %d}\narrival: {kind: constant, rate: 200}\n", n)))
	if err != nil {
		t.Fatal(err)
	}
	w, err := workload.Open(spec, "")
	if err != nil {
		t.Fatal(err)
	}
	return w.Source()
}

func TestRunCompletions(t *testing.T) {
	srv := &fakeVLLM{gap: 5 * ms, cached: 3}
	ts := httptest.NewServer(srv)
	defer ts.Close()
	live := &Live{}
	res, err := Run(context.Background(), Config{URL: ts.URL, Model: "m1", Live: live}, requestsAt(10, 4, 0, 20*ms, 40*ms))
	if err != nil {
		t.Fatal(err)
	}
	if len(res.Records) != 3 || res.Interrupted {
		t.Fatalf("%d records, interrupted %v", len(res.Records), res.Interrupted)
	}
	for i, r := range res.Records {
		if !r.OK() {
			t.Fatalf("record %d failed: %s %s", i, r.Error, r.Detail)
		}
		if r.Index != i || r.Chunks != 4 || len(r.ITL) != 3 || !r.HasUsage ||
			r.PromptTokens != 10 || r.CompletionTokens != 4 || r.CachedTokens != 3 || r.Status != 200 {
			t.Errorf("record %d = %+v", i, r)
		}
		// The server sleeps 5 ms before each of the 3 chunks after the
		// first, so the stream takes at least 15 ms; the gaps are measured
		// on arrival (a busy client may read two chunks back to back, so
		// no single gap has a floor), and they add up to the time from
		// the first chunk to the last.
		if r.TTFT <= 0 || r.E2E < 3*5*ms {
			t.Errorf("record %d: TTFT %v, E2E %v: want a positive TTFT and E2E ≥ 3 gaps of 5ms", i, r.TTFT, r.E2E)
		}
		var sum time.Duration
		for _, g := range r.ITL {
			if g <= 0 {
				t.Errorf("record %d: gap %v", i, g)
			}
			sum += g
		}
		if sum > r.E2E-r.TTFT {
			t.Errorf("record %d: gaps add up to %v, more than E2E - TTFT = %v", i, sum, r.E2E-r.TTFT)
		}
	}
	for _, fr := range srv.requests() {
		if fr.Path != "/v1/completions" || fr.Model != "m1" || fr.PromptLen != 10 || fr.MaxTokens != 4 ||
			!fr.Stream || !fr.Usage || fr.IgnoreEOS == nil || !*fr.IgnoreEOS || fr.Text {
			t.Errorf("server got %+v", fr)
		}
	}
	if s := live.Snapshot(); s.Total != 3 || s.Sent != 3 || s.Completed != 3 || s.InFlight != 0 || s.Chunks != 12 {
		t.Errorf("live %+v", s)
	}
}

func TestRunTextAndChat(t *testing.T) {
	for _, tc := range []struct {
		name string
		cfg  Config
		path string
	}{
		{"completions text", Config{Prompt: PromptText, NoIgnoreEOS: true}, "/v1/completions"},
		{"chat", Config{API: APIChat}, "/v1/chat/completions"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			srv := &fakeVLLM{roleDelay: 30 * ms}
			ts := httptest.NewServer(srv)
			defer ts.Close()
			cfg := tc.cfg
			cfg.URL, cfg.Model = ts.URL+"/", "m"
			res, err := Run(context.Background(), cfg, realPrompts(t, 2))
			if err != nil {
				t.Fatal(err)
			}
			for _, r := range res.Records {
				if !r.OK() || r.Chunks != 5 || r.PromptTokens != 40 {
					t.Errorf("record %+v", r)
				}
				// The role-only chunk comes at once; the first token 30ms
				// later is what TTFT measures.
				if cfg.API == APIChat && r.TTFT < 30*ms {
					t.Errorf("TTFT %v counts the role-only chunk", r.TTFT)
				}
			}
			for _, fr := range srv.requests() {
				// Text re-encodes to the 40 prompt ids.
				if fr.Path != tc.path || !fr.Text || fr.PromptLen != 40 || fr.MaxTokens != 5 {
					t.Errorf("server got %+v", fr)
				}
				if wantEOS := !cfg.NoIgnoreEOS; (fr.IgnoreEOS != nil) != wantEOS {
					t.Errorf("ignore_eos sent %v, want %v", fr.IgnoreEOS != nil, wantEOS)
				}
			}
		})
	}
}

// TestRunOpenLoop: a server that holds the first request it gets until
// the three others have arrived must not delay their sends: a closed loop
// would never send them, and the held request would fail at the hang guard.
func TestRunOpenLoop(t *testing.T) {
	var n atomic.Int32
	others := make(chan struct{}, 3)
	fast := &fakeVLLM{}
	ts := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if n.Add(1) == 1 {
			for range 3 {
				select {
				case <-others:
				case <-time.After(30 * time.Second):
					http.Error(w, "the later requests never came: a closed loop", http.StatusGatewayTimeout)
					return
				case <-r.Context().Done():
					return
				}
			}
			fast.ServeHTTP(w, r)
			return
		}
		others <- struct{}{}
		fast.ServeHTTP(w, r)
	}))
	defer ts.Close()
	at := []time.Duration{0, 50 * ms, 100 * ms, 150 * ms}
	res, err := Run(context.Background(), Config{URL: ts.URL, Model: "m"}, requestsAt(5, 2, at...))
	if err != nil {
		t.Fatal(err)
	}
	recs := res.Records
	if len(recs) != 4 {
		t.Fatalf("%d records", len(recs))
	}
	for i, r := range recs {
		if !r.OK() {
			t.Fatalf("record %d: %s %s", i, r.Error, r.Detail)
		}
		if late := r.Sent - r.Scheduled; late < 0 {
			t.Errorf("record %d sent %v before it was due", i, -late)
		}
	}
	s := Summarize("open", recs, SummaryOptions{})
	if s.LatencySeconds.Lateness.Count != 4 {
		t.Errorf("lateness %+v", s.LatencySeconds.Lateness)
	}
	if s.Concurrency.Max < 2 || res.MaxInFlight < 2 {
		t.Errorf("concurrency %+v, max in flight %d: requests did not overlap", s.Concurrency, res.MaxInFlight)
	}
	t.Logf("lateness max %.1f ms", s.LatencySeconds.Lateness.Max*1e3)
}

func TestRunErrors(t *testing.T) {
	mux := http.NewServeMux()
	mux.HandleFunc("/503", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(http.StatusServiceUnavailable)
		fmt.Fprint(w, `{"object":"error","message":"overloaded","type":"ServiceUnavailableError","code":503}`)
	})
	mux.HandleFunc("/400", func(w http.ResponseWriter, r *http.Request) {
		w.WriteHeader(http.StatusBadRequest)
		fmt.Fprint(w, `{"error":{"message":"prompt too long","type":"BadRequestError","code":400}}`)
	})
	// The request timeout is what /slow tests; it is long enough for a busy
	// client to read the chunk sent before the server stalls.
	const timeout = 2 * time.Second
	sse := func(w http.ResponseWriter, chunks int) {
		w.Header().Set("Content-Type", "text/event-stream")
		for i := range chunks {
			w.Write(chunkBytes(i))
		}
		w.(http.Flusher).Flush()
	}
	mux.HandleFunc("/cut", func(w http.ResponseWriter, r *http.Request) {
		sse(w, 2)
		panic(http.ErrAbortHandler) // drop the connection mid-stream
	})
	mux.HandleFunc("/nodone", func(w http.ResponseWriter, r *http.Request) {
		sse(w, 2) // then a clean end, but no [DONE]
	})
	mux.HandleFunc("/errevent", func(w http.ResponseWriter, r *http.Request) {
		sse(w, 1)
		fmt.Fprint(w, "data: {\"error\": {\"object\": \"error\", \"message\": \"engine died\", \"type\": \"InternalServerError\", \"code\": 500}}\n\n")
	})
	mux.HandleFunc("/json", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		fmt.Fprint(w, `{"choices":[{"text":"not streamed"}]}`)
	})
	mux.HandleFunc("/slow", func(w http.ResponseWriter, r *http.Request) {
		sse(w, 1)
		sleepCtx(r, time.Minute)
	})
	ts := httptest.NewServer(mux)
	defer ts.Close()

	// A port nobody listens on.
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	refused := "http://" + l.Addr().String()
	l.Close()

	tests := []struct {
		url    string
		kind   ErrorKind
		status int
		chunks int
		detail string
	}{
		{ts.URL + "/503", ErrHTTP5xx, 503, 0, "overloaded"},
		{ts.URL + "/400", ErrHTTP4xx, 400, 0, "prompt too long"},
		{refused, ErrConnection, 0, 0, "refused"},
		{ts.URL + "/cut", ErrStreamCut, 200, 2, "before [DONE]"},
		{ts.URL + "/nodone", ErrStreamCut, 200, 2, "before [DONE]"},
		{ts.URL + "/errevent", ErrStreamError, 200, 1, "engine died"},
		{ts.URL + "/json", ErrProtocol, 200, 0, "not an event stream"},
		{ts.URL + "/slow", ErrTimeout, 200, 1, "within 2s"},
	}
	var all []Record
	for _, tt := range tests {
		t.Run(strings.TrimPrefix(tt.url, ts.URL), func(t *testing.T) {
			res, err := Run(context.Background(), Config{URL: tt.url, Model: "m", RequestTimeout: timeout}, requestsAt(3, 4, 0))
			if err != nil {
				t.Fatal(err)
			}
			r := res.Records[0]
			if r.Error != tt.kind || r.Status != tt.status || r.Chunks != tt.chunks || !strings.Contains(r.Detail, tt.detail) {
				t.Errorf("got %s status %d, %d chunks, %q; want %s status %d, %d chunks, detail with %q",
					r.Error, r.Status, r.Chunks, r.Detail, tt.kind, tt.status, tt.chunks, tt.detail)
			}
			if r.E2E <= 0 {
				t.Errorf("E2E %v", r.E2E)
			}
			all = append(all, r)
		})
	}
	s := Summarize("errors", all, SummaryOptions{})
	want := map[string]int{"http_5xx": 1, "http_4xx": 1, "connection": 1, "stream_cut": 2, "stream_error": 1, "protocol": 1, "timeout": 1}
	if fmt.Sprint(s.Requests.Errors) != fmt.Sprint(want) || s.Requests.Failed != 8 || s.Requests.Sent != 8 {
		t.Errorf("requests %+v, want errors %v", s.Requests, want)
	}
	if fmt.Sprint(s.Requests.ByStatus) != "map[400:1 503:1]" {
		t.Errorf("by status %v", s.Requests.ByStatus)
	}
}

// TestRunHardCap: beyond the hard cap requests are dropped and counted.
func TestRunHardCap(t *testing.T) {
	// The server holds the requests it gets until the driver has dropped
	// two (or a hang guard passes), so the two in flight are still in
	// flight when the next ones are due, however busy the machine.
	live := &Live{}
	held := &fakeVLLM{}
	ts := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		for deadline := time.Now().Add(30 * time.Second); live.Snapshot().Dropped < 2 && time.Now().Before(deadline); {
			time.Sleep(ms)
		}
		held.ServeHTTP(w, r)
	}))
	defer ts.Close()
	res, err := Run(context.Background(), Config{URL: ts.URL, Model: "m", HardCap: 2, Live: live}, requestsAt(3, 1, 0, 0, 0, 10*ms))
	if err != nil {
		t.Fatal(err)
	}
	var ok, dropped int
	for _, r := range res.Records {
		switch r.Error {
		case "":
			ok++
		case ErrDropped:
			dropped++
		default:
			t.Errorf("record %+v", r)
		}
	}
	if ok != 2 || dropped != 2 || res.MaxInFlight != 2 {
		t.Errorf("%d ok, %d dropped, max in flight %d; want 2, 2, 2", ok, dropped, res.MaxInFlight)
	}
	s := Summarize("cap", res.Records, SummaryOptions{})
	if s.Requests.Dropped != 2 || s.Requests.Sent != 2 || s.Requests.Failed != 0 || s.Requests.Errors["dropped"] != 2 {
		t.Errorf("requests %+v", s.Requests)
	}
}

// TestRunMaxConcurrency: a concurrency limit holds requests back and the
// wait shows as lateness.
func TestRunMaxConcurrency(t *testing.T) {
	ts := httptest.NewServer(&fakeVLLM{headerDelay: 60 * ms})
	defer ts.Close()
	res, err := Run(context.Background(), Config{URL: ts.URL, Model: "m", MaxConcurrency: 1}, requestsAt(3, 1, 0, 0, 0))
	if err != nil {
		t.Fatal(err)
	}
	if res.MaxInFlight != 1 {
		t.Errorf("max in flight %d, want 1", res.MaxInFlight)
	}
	if late := res.Records[2].Sent - res.Records[2].Scheduled; late < 110*ms {
		t.Errorf("third request %v late, want ≥ 2 × 60ms", late)
	}
	for _, r := range res.Records {
		if !r.OK() {
			t.Errorf("record %+v", r)
		}
	}
}

// TestRunCancel: cancelling ends the run promptly; in-flight requests are
// canceled and requests not yet due have no record.
func TestRunCancel(t *testing.T) {
	// The run is canceled once the server holds the first request (which
	// it would hold for a minute; the second is due in an hour).
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var canceledAt atomic.Int64
	slow := &fakeVLLM{headerDelay: time.Minute}
	ts := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		canceledAt.Store(time.Now().UnixNano())
		cancel()
		slow.ServeHTTP(w, r)
	}))
	defer ts.Close()
	guard := time.AfterFunc(30*time.Second, cancel) // a hang guard, should the request never arrive
	defer guard.Stop()
	res, err := Run(ctx, Config{URL: ts.URL, Model: "m"}, requestsAt(3, 1, 0, time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	if at := canceledAt.Load(); at == 0 {
		t.Fatal("the request never reached the server")
	} else if d := time.Since(time.Unix(0, at)); d > 20*time.Second {
		t.Errorf("run took %v after cancel", d)
	}
	if !res.Interrupted || len(res.Records) != 1 || res.Records[0].Error != ErrCanceled {
		t.Errorf("interrupted %v, records %+v", res.Interrupted, res.Records)
	}
}

func TestConfigValidation(t *testing.T) {
	src := func() workload.Source { return requestsAt(1, 1, 0) }
	for _, tc := range []struct {
		cfg  Config
		want string
	}{
		{Config{URL: "http://x"}, "model is required"},
		{Config{URL: "ftp://x", Model: "m"}, "scheme"},
		{Config{URL: "http://", Model: "m"}, "no host"},
		{Config{URL: "http://x", Model: "m", API: "embeddings"}, "api must be"},
		{Config{URL: "http://x", Model: "m", API: APIChat, Prompt: PromptTokenIDs}, "completions API"},
		{Config{URL: "http://x", Model: "m", Prompt: "bytes"}, "prompt format"},
		{Config{URL: "http://x", Model: "m", MaxConcurrency: 20000}, "max concurrency"},
		{Config{URL: "http://x", Model: "m", RequestTimeout: -1}, "timeout"},
	} {
		if _, err := Run(context.Background(), tc.cfg, src()); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%+v: error %v, want one with %q", tc.cfg, err, tc.want)
		}
	}
	for base, want := range map[string]string{
		"http://h:8000":                    "http://h:8000/v1/completions",
		"http://h:8000/":                   "http://h:8000/v1/completions",
		"https://gw/ns/svc/v1/completions": "https://gw/ns/svc/v1/completions",
	} {
		if got, err := EndpointURL(base, APICompletions); err != nil || got != want {
			t.Errorf("EndpointURL(%q) = %q, %v; want %q", base, got, err, want)
		}
	}
	if got, _ := EndpointURL("http://h", APIChat); got != "http://h/v1/chat/completions" {
		t.Errorf("chat URL %q", got)
	}
}

func TestParseHeaders(t *testing.T) {
	h, err := ParseHeaders([]string{"authorization: Bearer x", "X-Tier:  batch "})
	if err != nil || h.Get("Authorization") != "Bearer x" || h.Get("X-Tier") != "batch" {
		t.Errorf("%v %v", h, err)
	}
	for _, bad := range []string{"novalue", ": x", "a b: c"} {
		if _, err := ParseHeaders([]string{bad}); err == nil {
			t.Errorf("%q accepted", bad)
		}
	}
}
