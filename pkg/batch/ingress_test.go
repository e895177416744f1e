package batch

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	cloudevents "github.com/cloudevents/sdk-go/v2"
	"github.com/cloudevents/sdk-go/v2/binding"
	"github.com/cloudevents/sdk-go/v2/event"
	cehttp "github.com/cloudevents/sdk-go/v2/protocol/http"

	"github.com/llmd-kn/llmd-kn/internal/simtest"
	"github.com/llmd-kn/llmd-kn/pkg/kvstore"
)

const testModel = "test-model"

// engine is a real simulator behind a real loopback server that counts
// the inference requests it serves and the tier each named.
type engine struct {
	url   string
	calls atomic.Int64
	mu    sync.Mutex
	tiers []string
	// gate, when set, holds every inference after the first holdAfter
	// until closed.
	gate      chan struct{}
	entered   chan struct{}
	holdAfter int64
	// prompts counts the requests per first message (the Batch API
	// tests' lines are "question N").
	prompts map[string]int
}

// sent is how many requests the engine got for a line of inputFile.
func (e *engine) sent(line int) int {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.prompts[fmt.Sprintf("question %d", line)]
}

func startEngine(t *testing.T) *engine {
	t.Helper()
	sim, _ := simtest.Start(t, testModel)
	e := &engine{prompts: map[string]int{}}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method == http.MethodPost {
			// Read the body first: only then does the server notice a
			// client that gives up (and cancel r.Context()).
			body, _ := io.ReadAll(r.Body)
			r.Body = io.NopCloser(bytes.NewReader(body))
			n := e.calls.Add(1)
			var req struct {
				Messages []struct {
					Content string `json:"content"`
				} `json:"messages"`
			}
			_ = json.Unmarshal(body, &req)
			e.mu.Lock()
			if len(req.Messages) > 0 {
				e.prompts[req.Messages[0].Content]++
			}
			e.tiers = append(e.tiers, r.Header.Get(TierHeader))
			gate, entered, holdAfter := e.gate, e.entered, e.holdAfter
			e.mu.Unlock()
			if gate != nil && n > holdAfter {
				select {
				case entered <- struct{}{}:
				default:
				}
				select {
				case <-gate:
				case <-r.Context().Done():
					return
				}
			}
		}
		sim.Handler().ServeHTTP(w, r)
	}))
	t.Cleanup(srv.Close)
	e.url = srv.URL
	return e
}

func chatEvent(id string, model string) event.Event {
	ev := cloudevents.NewEvent()
	ev.SetID(id)
	ev.SetSource("/tests/batch")
	ev.SetType(TypeRequest)
	body := map[string]any{"messages": []map[string]string{{"role": "user", "content": "Summarise the quarterly report"}}, "max_tokens": 4}
	if model != "" {
		body["model"] = model
	}
	_ = ev.SetData(cloudevents.ApplicationJSON, body)
	return ev
}

func newIngress(t *testing.T, be Backend, opts IngressOptions) (*Ingress, string) {
	t.Helper()
	opts.Backend = be
	if opts.SinkBackoff == 0 {
		opts.SinkBackoff = time.Millisecond
	}
	in, err := NewIngress(opts)
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(in)
	t.Cleanup(func() { srv.Close(); in.Close() })
	return in, srv.URL
}

func sender(t *testing.T) cloudevents.Client {
	t.Helper()
	c, err := cloudevents.NewClientHTTP()
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// sink is a real CloudEvents SDK receiver on loopback; down makes it
// answer 503 to the first n deliveries.
type sink struct {
	url  string
	got  chan event.Event
	down atomic.Int64
	hits atomic.Int64
}

func startSink(t *testing.T) *sink {
	t.Helper()
	s := &sink{got: make(chan event.Event, 100)}
	p, err := cloudevents.NewHTTP()
	if err != nil {
		t.Fatal(err)
	}
	h, err := cloudevents.NewHTTPReceiveHandler(context.Background(), p, func(ev event.Event) { s.got <- ev })
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		s.hits.Add(1)
		if s.down.Add(-1) >= 0 {
			w.WriteHeader(http.StatusServiceUnavailable)
			return
		}
		h.ServeHTTP(w, r)
	}))
	t.Cleanup(srv.Close)
	s.url = srv.URL
	return s
}

func (s *sink) next(t *testing.T) event.Event {
	t.Helper()
	select {
	case ev := <-s.got:
		return ev
	case <-time.After(20 * time.Second):
		t.Fatal("no event reached the sink")
	}
	return event.Event{}
}

func checkResponse(t *testing.T, ev *event.Event, reqID string) {
	t.Helper()
	if ev == nil {
		t.Fatal("no reply event")
	}
	if ev.Type() != TypeResponse || ev.Subject() != reqID || ev.Extensions()[ExtRequestSource] != "/tests/batch" {
		t.Fatalf("reply %s", ev)
	}
	var resp struct {
		Model   string `json:"model"`
		Choices []struct {
			Message struct{ Content string } `json:"message"`
		} `json:"choices"`
		Usage struct {
			CompletionTokens int `json:"completion_tokens"`
		} `json:"usage"`
	}
	if err := json.Unmarshal(ev.Data(), &resp); err != nil || len(resp.Choices) != 1 || resp.Usage.CompletionTokens == 0 || resp.Model != testModel {
		t.Fatalf("response data %s: %v", ev.Data(), err)
	}
}

func TestReplyModes(t *testing.T) {
	eng := startEngine(t)
	_, url := newIngress(t, HTTPBackend{URL: eng.url}, IngressOptions{})
	c := sender(t)
	ctx := cloudevents.ContextWithTarget(context.Background(), url)

	t.Run("binary", func(t *testing.T) {
		reply, res := c.Request(ctx, chatEvent("bin-1", testModel))
		if !cloudevents.IsACK(res) {
			t.Fatal(res)
		}
		checkResponse(t, reply, "bin-1")
	})
	t.Run("structured, model omitted", func(t *testing.T) {
		reply, res := c.Request(binding.WithForceStructured(ctx), chatEvent("str-1", ""))
		if !cloudevents.IsACK(res) {
			t.Fatal(res)
		}
		checkResponse(t, reply, "str-1")
	})
	t.Run("batched", func(t *testing.T) {
		evs := []event.Event{chatEvent("b-1", testModel), chatEvent("b-2", ""), chatEvent("b-3", testModel)}
		req, err := cehttp.NewHTTPRequestFromEvents(context.Background(), url, evs)
		if err != nil {
			t.Fatal(err)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		if resp.StatusCode != 200 || resp.Header.Get("Content-Type") != event.ApplicationCloudEventsBatchJSON {
			t.Fatalf("status %d %s", resp.StatusCode, resp.Header.Get("Content-Type"))
		}
		out, err := cehttp.NewEventsFromHTTPResponse(resp)
		if err != nil || len(out) != 3 {
			t.Fatalf("%d events, %v", len(out), err)
		}
		for i := range out {
			checkResponse(t, &out[i], evs[i].ID())
		}
	})
	eng.mu.Lock()
	defer eng.mu.Unlock()
	for _, tier := range eng.tiers {
		if tier != "batch" {
			t.Fatalf("an event ran in tier %q, want batch", tier)
		}
	}
}

func TestDuplicatesAnsweredOnce(t *testing.T) {
	eng := startEngine(t)
	in, url := newIngress(t, HTTPBackend{URL: eng.url}, IngressOptions{})
	c := sender(t)
	ctx := cloudevents.ContextWithTarget(context.Background(), url)
	var ids []string
	var wg sync.WaitGroup
	var mu sync.Mutex
	for i := 0; i < 4; i++ { // concurrent redeliveries share the first one's work
		wg.Add(1)
		go func() {
			defer wg.Done()
			reply, res := c.Request(ctx, chatEvent("dup-1", testModel))
			if !cloudevents.IsACK(res) || reply == nil {
				t.Error(res)
				return
			}
			mu.Lock()
			ids = append(ids, reply.ID())
			mu.Unlock()
		}()
	}
	wg.Wait()
	reply, _ := c.Request(ctx, chatEvent("dup-1", testModel))
	if got := eng.calls.Load(); got != 1 {
		t.Fatalf("%d inferences for one event delivered 5 times", got)
	}
	for _, id := range append(ids, reply.ID()) {
		if id != ids[0] {
			t.Fatalf("result ids differ: %v", ids)
		}
	}
	if s := in.Stats(); s.Duplicates != 4 || s.Answered != 1 {
		t.Fatalf("stats %+v", s)
	}
	// Same id from another source is another event.
	other := chatEvent("dup-1", testModel)
	other.SetSource("/tests/other")
	if _, res := c.Request(ctx, other); !cloudevents.IsACK(res) || eng.calls.Load() != 2 {
		t.Fatalf("%v, %d calls", res, eng.calls.Load())
	}
}

func TestDedupeSurvivesRestart(t *testing.T) {
	eng := startEngine(t)
	store, err := kvstore.Open(context.Background(), t.TempDir(), kvstore.Options{})
	if err != nil {
		t.Fatal(err)
	}
	c := sender(t)
	var first string
	for i := 0; i < 2; i++ { // two activator lifetimes on the same storage
		_, url := newIngress(t, HTTPBackend{URL: eng.url}, IngressOptions{Store: store})
		reply, res := c.Request(cloudevents.ContextWithTarget(context.Background(), url), chatEvent("restart-1", testModel))
		if !cloudevents.IsACK(res) {
			t.Fatal(res)
		}
		if i == 0 {
			first = reply.ID()
		} else if reply.ID() != first {
			t.Fatal("a restarted ingress computed a new result")
		}
	}
	if eng.calls.Load() != 1 {
		t.Fatalf("%d inferences across a restart", eng.calls.Load())
	}
}

func TestMalformed(t *testing.T) {
	eng := startEngine(t)
	snk := startSink(t)
	_, url := newIngress(t, HTTPBackend{URL: eng.url}, IngressOptions{
		Limits: Limits{MaxBodyBytes: 4096},
		Sink:   func(*http.Request) string { return snk.url },
	})
	binary := func(mut func(h http.Header)) http.Header {
		h := http.Header{"Ce-Specversion": {"1.0"}, "Ce-Id": {"m-1"}, "Ce-Source": {"/tests/batch"}, "Ce-Type": {TypeRequest}, "Content-Type": {"application/json"}}
		mut(h)
		return h
	}
	chat := `{"model":"test-model","messages":[{"role":"user","content":"hi"}]}`
	cases := []struct {
		name   string
		header http.Header
		body   string
		want   string
		named  bool // the error event can name the request
	}{
		{"missing id", binary(func(h http.Header) { h.Del("Ce-Id") }), chat, "id", false},
		{"missing source", binary(func(h http.Header) { h.Del("Ce-Source") }), chat, "source", false},
		{"wrong type", binary(func(h http.Header) { h.Set("Ce-Type", "com.example.other") }), chat, "type", true},
		{"wrong content type", binary(func(h http.Header) { h.Set("Content-Type", "text/plain") }), chat, "datacontenttype", true},
		{"not a CloudEvent", http.Header{"Content-Type": {"application/json"}}, chat, "not a CloudEvent", false},
		{"unsupported structured format", http.Header{"Content-Type": {"application/cloudevents+xml"}}, "<x/>", "structured mode", false},
		{"not an OpenAI request", binary(func(http.Header) {}), `{"hello":"world"}`, "messages (chat) or prompt", true},
		{"not JSON", binary(func(http.Header) {}), `hello`, "not a JSON object", true},
		{"empty messages", binary(func(http.Header) {}), `{"messages":[]}`, "data.messages", true},
		{"model not a string", binary(func(http.Header) {}), `{"model":1,"prompt":"x"}`, "data.model", true},
		{"bad deadline", binary(func(h http.Header) { h.Set("Ce-Llmddeadline", "tomorrow") }), chat, ExtDeadline, true},
		{"oversized", binary(func(http.Header) {}), `{"prompt":"` + strings.Repeat("x", 5000) + `"}`, "over the limit", false},
		{"bad batch", http.Header{"Content-Type": {event.ApplicationCloudEventsBatchJSON}}, `[{"specversion":"1.0"}]`, "event 0 of the batch", false},
		{"empty batch", http.Header{"Content-Type": {event.ApplicationCloudEventsBatchJSON}}, `[]`, "no events", false},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			req, _ := http.NewRequest(http.MethodPost, url, strings.NewReader(tc.body))
			req.Header = tc.header
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			var body struct {
				Error struct{ Message string }
			}
			_ = json.NewDecoder(resp.Body).Decode(&body)
			resp.Body.Close()
			if resp.StatusCode != http.StatusBadRequest || !strings.Contains(body.Error.Message, tc.want) {
				t.Fatalf("status %d, message %q; want 400 naming %q", resp.StatusCode, body.Error.Message, tc.want)
			}
			ev := snk.next(t)
			var d ErrorData
			_ = json.Unmarshal(ev.Data(), &d)
			if ev.Type() != TypeError || d.Reason != ReasonMalformed || !strings.Contains(d.Message, tc.want) {
				t.Fatalf("error event %s", ev)
			}
			if tc.named && ev.Subject() != "m-1" {
				t.Fatalf("error event subject %q, want the request id", ev.Subject())
			}
		})
	}
	if eng.calls.Load() != 0 {
		t.Fatal("a malformed event reached the engine")
	}
}

func TestSinkDelivery(t *testing.T) {
	eng := startEngine(t)
	snk := startSink(t)
	snk.down.Store(2) // the sink refuses twice, then takes it
	in, url := newIngress(t, HTTPBackend{URL: eng.url}, IngressOptions{Sink: func(*http.Request) string { return snk.url }})
	c := sender(t)
	ctx := cloudevents.ContextWithTarget(context.Background(), url)
	reply, res := c.Request(ctx, chatEvent("sink-1", testModel))
	var hr *cehttp.Result
	if !cloudevents.IsACK(res) || !errors.As(res, &hr) || hr.StatusCode != http.StatusAccepted || reply != nil {
		t.Fatalf("want 202 and no reply, got %v %v", res, reply)
	}
	ev := snk.next(t)
	checkResponse(t, &ev, "sink-1")
	if snk.hits.Load() != 3 {
		t.Fatalf("%d delivery attempts, want 3", snk.hits.Load())
	}
	// A duplicate is accepted and its stored result delivered again (same
	// id: at least once, recognisably the same), with no second inference.
	if _, res := c.Request(ctx, chatEvent("sink-1", testModel)); !cloudevents.IsACK(res) {
		t.Fatal(res)
	}
	if again := snk.next(t); again.ID() != ev.ID() || eng.calls.Load() != 1 {
		t.Fatalf("duplicate: %s, %d calls", again.ID(), eng.calls.Load())
	}
	// Errors go to the sink as error events.
	tooHigh := chatEvent("sink-2", testModel)
	tooHigh.SetExtension(ExtTier, "critical")
	if _, res := c.Request(ctx, tooHigh); !cloudevents.IsACK(res) {
		t.Fatal(res)
	}
	errEv := snk.next(t)
	var d ErrorData
	_ = json.Unmarshal(errEv.Data(), &d)
	if errEv.Type() != TypeError || d.Reason != ReasonTierNotAllowed || errEv.Subject() != "sink-2" {
		t.Fatalf("error event %s", errEv)
	}
	// The count lands after the sink answered.
	waitFor(t, func() bool { return in.Stats().Delivered == 3 })
	if s := in.Stats(); s.Lost != 0 || s.Answered != 1 || s.Failed != 1 {
		t.Fatalf("stats %+v", s)
	}
}

func TestSinkDownDeadLetter(t *testing.T) {
	eng := startEngine(t)
	dead := httptest.NewServer(http.NotFoundHandler())
	deadURL := dead.URL
	dead.Close() // nothing listens there
	dls := startSink(t)
	store, _ := kvstore.Open(context.Background(), t.TempDir(), kvstore.Options{})

	t.Run("dead-letter sink", func(t *testing.T) {
		in, url := newIngress(t, HTTPBackend{URL: eng.url}, IngressOptions{
			Sink: func(*http.Request) string { return deadURL }, DeadLetterSink: dls.url, SinkRetries: 3})
		if _, res := sender(t).Request(cloudevents.ContextWithTarget(context.Background(), url), chatEvent("dl-1", testModel)); !cloudevents.IsACK(res) {
			t.Fatal(res)
		}
		ev := dls.next(t)
		checkResponse(t, &ev, "dl-1")
		if ev.Extensions()[ExtDeliveryError] == nil {
			t.Fatalf("dead letter without the delivery error: %s", ev)
		}
		waitFor(t, func() bool { return in.Stats().DeadLettered == 1 })
	})
	t.Run("storage", func(t *testing.T) {
		in, url := newIngress(t, HTTPBackend{URL: eng.url}, IngressOptions{
			Sink: func(*http.Request) string { return deadURL }, DeadLetterSink: deadURL, Store: store, SinkRetries: 2})
		if _, res := sender(t).Request(cloudevents.ContextWithTarget(context.Background(), url), chatEvent("dl-2", testModel)); !cloudevents.IsACK(res) {
			t.Fatal(res)
		}
		waitFor(t, func() bool { return in.Stats().DeadLettered == 1 })
		objs, err := store.List(context.Background(), "batch/deadletter/", 0)
		if err != nil || len(objs) != 1 {
			t.Fatalf("dead letters in storage: %v %v", objs, err)
		}
		raw, _ := store.Get(context.Background(), objs[0].Key)
		var ev event.Event
		if err := json.Unmarshal(raw, &ev); err != nil {
			t.Fatal(err)
		}
		checkResponse(t, &ev, "dl-2")
		if in.Stats().Lost != 0 {
			t.Fatal("a result was lost")
		}
	})
}

func TestResumeAfterRestart(t *testing.T) {
	eng := startEngine(t)
	eng.gate, eng.entered = make(chan struct{}), make(chan struct{}, 1)
	snk := startSink(t)
	store, _ := kvstore.Open(context.Background(), t.TempDir(), kvstore.Options{})
	opts := IngressOptions{Store: store, Sink: func(*http.Request) string { return snk.url }}
	in1, url := newIngress(t, HTTPBackend{URL: eng.url}, opts)
	if _, res := sender(t).Request(cloudevents.ContextWithTarget(context.Background(), url), chatEvent("resume-1", testModel)); !cloudevents.IsACK(res) {
		t.Fatal(res)
	}
	<-eng.entered // the work is running when the activator stops
	in1.Close()
	eng.mu.Lock()
	close(eng.gate)
	eng.gate = nil
	eng.mu.Unlock()

	in2, _ := newIngress(t, HTTPBackend{URL: eng.url}, opts)
	n, err := in2.Resume(context.Background())
	if err != nil || n != 1 {
		t.Fatalf("resumed %d, %v", n, err)
	}
	ev := snk.next(t)
	checkResponse(t, &ev, "resume-1")
	// Once delivered, it is not resumed again.
	waitFor(t, func() bool {
		in3, err := NewIngress(IngressOptions{Backend: HTTPBackend{URL: eng.url}, Store: store})
		if err != nil {
			return false
		}
		defer in3.Close()
		n, _ := in3.Resume(context.Background())
		return n == 0
	})
}

func TestTiersAndDeadlines(t *testing.T) {
	eng := startEngine(t)
	rank := map[string]int{"critical": 100, "standard": 50, "batch": 10, "scavenger": 1}
	now := time.Date(2026, 12, 6, 12, 0, 0, 0, time.UTC)
	_, url := newIngress(t, HTTPBackend{URL: eng.url}, IngressOptions{
		Tiers: TierPolicy{Default: "batch", Rank: func(n string) (int, bool) { r, ok := rank[n]; return r, ok }},
		Now:   func() time.Time { return now },
	})
	c := sender(t)
	ctx := cloudevents.ContextWithTarget(context.Background(), url)
	cases := []struct {
		tier     string
		deadline time.Time
		reason   string
	}{
		{"scavenger", time.Time{}, ""},
		{"standard", time.Time{}, ReasonTierNotAllowed},
		{"nosuch", time.Time{}, ReasonTierNotAllowed},
		{"", now.Add(-time.Second), ReasonDeadlineExceeded},
	}
	for i, tc := range cases {
		ev := chatEvent("tier-"+string(rune('a'+i)), testModel)
		if tc.tier != "" {
			ev.SetExtension(ExtTier, tc.tier)
		}
		if !tc.deadline.IsZero() {
			ev.SetExtension(ExtDeadline, tc.deadline)
		}
		reply, res := c.Request(ctx, ev)
		if !cloudevents.IsACK(res) || reply == nil {
			t.Fatalf("%+v: %v", tc, res)
		}
		if tc.reason == "" {
			checkResponse(t, reply, ev.ID())
			continue
		}
		var d ErrorData
		_ = json.Unmarshal(reply.Data(), &d)
		if reply.Type() != TypeError || d.Reason != tc.reason {
			t.Fatalf("%+v: reply %s", tc, reply)
		}
	}
	eng.mu.Lock()
	defer eng.mu.Unlock()
	if len(eng.tiers) != 1 || eng.tiers[0] != "scavenger" {
		t.Fatalf("engine saw tiers %v", eng.tiers)
	}
}

func TestOverloadAnswers503(t *testing.T) {
	busy := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method == http.MethodGet {
			_, _ = w.Write([]byte(`{"data":[{"id":"m"}]}`))
			return
		}
		w.Header().Set("Retry-After", "1")
		w.WriteHeader(http.StatusTooManyRequests)
		_, _ = w.Write([]byte(`{"error":{"message":"batch tier shed"}}`))
	}))
	defer busy.Close()
	_, url := newIngress(t, HTTPBackend{URL: busy.URL}, IngressOptions{})
	req, _ := cehttp.NewHTTPRequestFromEvent(context.Background(), url, chatEvent("busy-1", ""))
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	ev, err := cehttp.NewEventFromHTTPResponse(resp)
	if resp.StatusCode != http.StatusServiceUnavailable || err != nil || ev.Type() != TypeError {
		t.Fatalf("status %d, %v, %v: want 503 with an error event so Eventing redelivers", resp.StatusCode, ev, err)
	}
}

func waitFor(t *testing.T, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatal("condition not met in 20 s")
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func FuzzDecode(f *testing.F) {
	ev := chatEvent("f-1", testModel)
	structured, _ := json.Marshal(ev)
	batch, _ := json.Marshal([]event.Event{ev})
	f.Add("application/cloudevents+json", "", structured)
	f.Add(event.ApplicationCloudEventsBatchJSON, "", batch)
	f.Add("application/json", "1.0", []byte(`{"prompt":"x"}`))
	f.Add("application/json", "", []byte(`{}`))
	f.Fuzz(func(t *testing.T, ct, spec string, body []byte) {
		h := http.Header{"Content-Type": {ct}}
		if spec != "" {
			h.Set("Ce-Specversion", spec)
			h.Set("Ce-Id", "x")
			h.Set("Ce-Source", "/s")
			h.Set("Ce-Type", TypeRequest)
		}
		reqs, _, err := DecodeBytes(h, bytes.Clone(body), Limits{MaxBodyBytes: 1 << 16, MaxEvents: 16})
		if err != nil {
			var de *DecodeError
			if !errors.As(err, &de) {
				t.Fatalf("error of type %T", err)
			}
			return
		}
		for _, r := range reqs {
			if r.Path != PathChat && r.Path != PathCompletion || r.Event.Type() != TypeRequest || r.Event.ID() == "" {
				t.Fatalf("accepted %+v", r)
			}
		}
	})
}

func TestHandlerBackendAbort(t *testing.T) {
	be := HandlerBackend{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = w.Write([]byte(`{"partial":`))
		panic(http.ErrAbortHandler)
	})}
	if _, err := be.Do(context.Background(), Call{Path: PathChat, Body: []byte(`{}`)}); err == nil {
		t.Fatal("an aborted answer passed as an answer")
	}
	// An aborted answer is transient: the request is tried again.
	out := infer(context.Background(), be, PathChat, map[string]json.RawMessage{"model": json.RawMessage(`"m"`)}, "batch", Origin{}, Retry{Attempts: 2, Base: time.Millisecond})
	if out.Reason != ReasonBackendError || !out.Transient {
		t.Fatalf("%+v", out)
	}
}
