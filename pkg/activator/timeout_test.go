package activator

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/llmd-kn/llmd-kn/pkg/apis"
	"github.com/llmd-kn/llmd-kn/pkg/engine"
	"github.com/llmd-kn/llmd-kn/pkg/router"
	"github.com/llmd-kn/llmd-kn/pkg/vllmsim"
)

// stallPod is a pod whose metrics answer and whose completions behave as
// mode says: "ok" streams a complete answer, "hang" never sends headers,
// "stall" sends one event and then nothing. Hung handlers end when the
// test does.
func stallPod(t *testing.T, mode string) (*httptest.Server, *atomic.Int64) {
	t.Helper()
	release := make(chan struct{})
	var calls atomic.Int64
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/metrics" {
			_, _ = w.Write([]byte(vllmPage))
			return
		}
		calls.Add(1)
		_, _ = io.Copy(io.Discard, r.Body)
		if mode == "hang" {
			select {
			case <-release:
			case <-r.Context().Done():
			}
			return
		}
		w.Header().Set("Content-Type", "text/event-stream")
		_, _ = w.Write([]byte("data: {\"choices\":[{\"index\":0,\"text\":\"a\"}]}\n\n"))
		w.(http.Flusher).Flush()
		if mode == "stall" {
			select {
			case <-release:
			case <-r.Context().Done():
			}
			return
		}
		_, _ = w.Write([]byte("data: [DONE]\n\n"))
	}))
	t.Cleanup(func() { close(release); srv.Close() })
	return srv, &calls
}

// TestRevisionTimeoutsEnforced is issue 17's failures 5 and 12: the
// revision's timeouts were not applied (the activator skips queue-proxy),
// so a pod that stopped answering held its requests forever. Now no
// response start in time is a retry on another pod, else a 504; a silence
// inside a stream cuts it with an error event and an aborted response;
// the total timeout is a 504 without retry.
func TestRevisionTimeoutsEnforced(t *testing.T) {
	defer goleak.VerifyNone(t, goleak.IgnoreCurrent())
	cases := []struct {
		name     string
		pods     []string
		to       Timeouts
		status   int
		complete bool // a 200 stream ending in [DONE]
		aborted  bool // a 200 stream cut with an error event
	}{
		{"no response start: retried on another pod", []string{"hang", "ok"}, Timeouts{ResponseStart: 100 * time.Millisecond}, 200, true, false},
		{"no response start anywhere: 504", []string{"hang"}, Timeouts{ResponseStart: 100 * time.Millisecond}, 504, false, false},
		{"total timeout before the answer: 504", []string{"hang"}, Timeouts{Total: 100 * time.Millisecond}, 504, false, false},
		{"silence inside the stream: cut", []string{"stall"}, Timeouts{Idle: 100 * time.Millisecond}, 200, false, true},
		{"total timeout inside the stream: cut", []string{"stall"}, Timeouts{Total: 200 * time.Millisecond}, 200, false, true},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			act, err := New(Options{ScrapeInterval: time.Hour, StaleAfter: 24 * time.Hour})
			if err != nil {
				t.Fatal(err)
			}
			defer act.Close()
			key := RevisionKey{Namespace: "default", Name: "llm-00001"}
			if err := act.UpsertRevision(RevisionConfig{Key: key, Service: "llm", Models: []string{"demo"},
				Spec: apis.Spec{RoutingProfile: "round-robin"}, Timeouts: c.to}); err != nil {
				t.Fatal(err)
			}
			var specs []PodSpec
			for i, mode := range c.pods {
				srv, _ := stallPod(t, mode)
				specs = append(specs, PodSpec{Name: fmt.Sprintf("p%d-%s", i, mode), URL: srv.URL, Role: router.RoleBoth})
			}
			if err := act.SetPods(key, specs); err != nil {
				t.Fatal(err)
			}
			for deadline := time.Now().Add(30 * time.Second); act.Stats()[0].ReadyPods != len(specs); time.Sleep(5 * time.Millisecond) {
				if time.Now().After(deadline) {
					t.Fatal("pods never ready")
				}
			}
			front := httptest.NewServer(act.Handler())
			defer front.Close()
			ctx, cancel := context.WithTimeout(context.Background(), time.Minute) // a hang guard
			defer cancel()
			req, _ := http.NewRequestWithContext(ctx, http.MethodPost, front.URL+"/v1/completions",
				strings.NewReader(`{"model":"demo","prompt":"hi","stream":true}`))
			resp, err := front.Client().Do(req)
			if err != nil {
				t.Fatalf("no answer: %v", err)
			}
			defer resp.Body.Close()
			data, rerr := io.ReadAll(resp.Body)
			if ctx.Err() != nil {
				t.Fatal("the request hung")
			}
			if resp.StatusCode != c.status {
				t.Fatalf("status %d (%q), want %d", resp.StatusCode, data, c.status)
			}
			done := strings.Contains(string(data), "data: [DONE]")
			cut := rerr != nil && strings.Contains(string(data), `data: {"error":`)
			if done != c.complete || cut != c.aborted {
				t.Fatalf("complete %v, cut %v (read error %v, body %q); want %v, %v", done, cut, rerr, data, c.complete, c.aborted)
			}
			if c.status == http.StatusGatewayTimeout && !strings.Contains(string(data), "timeout") {
				t.Errorf("504 body %q does not say which timeout", data)
			}
		})
	}
}

// freezable wraps a pod's handler: while frozen every request to it,
// metrics included, blocks (a SIGSTOPped process, seen from outside) until
// it thaws or the client goes.
type freezable struct {
	h      http.Handler
	mu     sync.Mutex
	frozen chan struct{} // nil: not frozen
}

func (f *freezable) freeze() {
	f.mu.Lock()
	f.frozen = make(chan struct{})
	f.mu.Unlock()
}

func (f *freezable) thaw() {
	f.mu.Lock()
	if f.frozen != nil {
		close(f.frozen)
		f.frozen = nil
	}
	f.mu.Unlock()
}

func (f *freezable) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	f.mu.Lock()
	ch := f.frozen
	f.mu.Unlock()
	if ch != nil {
		select {
		case <-ch:
		case <-r.Context().Done():
			return
		}
	}
	f.h.ServeHTTP(&freezeWriter{ResponseWriter: w, f: f, ctx: r.Context()}, r)
}

// freezeWriter stalls writes while its pod is frozen: a stream in flight
// stops mid-answer.
type freezeWriter struct {
	http.ResponseWriter
	f   *freezable
	ctx context.Context
}

func (w *freezeWriter) Write(b []byte) (int, error) {
	w.f.mu.Lock()
	ch := w.f.frozen
	w.f.mu.Unlock()
	if ch != nil {
		select {
		case <-ch:
		case <-w.ctx.Done():
			return 0, w.ctx.Err()
		}
	}
	return w.ResponseWriter.Write(b)
}

func (w *freezeWriter) Flush() {
	if fl, ok := w.ResponseWriter.(http.Flusher); ok {
		fl.Flush()
	}
}

// TestPodFreezeAndKillUnderStreamedLoad: streams run on two pods; one
// freezes (every request to it stalls, as under SIGSTOP), later the other
// is killed. Every request ends: complete, or failed in a way a client
// sees (an error status, or an error event and an aborted stream); none
// hangs and no stream ends cleanly without [DONE]. After the freeze, new
// requests go to the live pod.
func TestPodFreezeAndKillUnderStreamedLoad(t *testing.T) {
	if testing.Short() {
		t.Skip("streams for several seconds")
	}
	leaks := goleak.IgnoreCurrent()
	var pods []*sim
	for i := range 2 {
		pods = append(pods, startSim(t, fmt.Sprintf("pod-%d", i), engine.RoleBoth, 1, func(c *vllmsim.Config) {
			c.KVEvents.Enable = false
		}))
	}
	// Pod 1 is served through a freezable handler.
	frz := &freezable{h: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		proxyTo(w, r, pods[1].url)
	})}
	front1 := httptest.NewServer(frz)
	defer front1.Close()
	defer frz.thaw()
	act, err := New(Options{ScrapeInterval: 20 * time.Millisecond, StaleAfter: time.Minute})
	if err != nil {
		t.Fatal(err)
	}
	defer act.Close()
	key := RevisionKey{Namespace: "default", Name: "llm-00001"}
	if err := act.UpsertRevision(RevisionConfig{Key: key, Service: "llm", Models: []string{testModel},
		Spec: apis.Spec{RoutingProfile: "round-robin"}, Timeouts: Timeouts{ResponseStart: 2 * time.Second, Idle: 500 * time.Millisecond}}); err != nil {
		t.Fatal(err)
	}
	if err := act.SetPods(key, []PodSpec{{Name: "pod-0", URL: pods[0].url, Role: router.RoleBoth},
		{Name: "pod-1", URL: front1.URL, Role: router.RoleBoth}}); err != nil {
		t.Fatal(err)
	}
	for deadline := time.Now().Add(30 * time.Second); act.Stats()[0].ReadyPods != 2; time.Sleep(5 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("pods never ready")
		}
	}
	front := httptest.NewServer(act.Handler())
	defer front.Close()

	type outcome struct{ ok, failedClean, hung, truncated int }
	run := func(n int, during func()) outcome {
		var mu sync.Mutex
		var o outcome
		var wg sync.WaitGroup
		for i := range n {
			wg.Add(1)
			go func() {
				defer wg.Done()
				r := streamOnce(front.URL, i, time.Minute)
				mu.Lock()
				defer mu.Unlock()
				switch r {
				case "ok":
					o.ok++
				case "hung":
					o.hung++
				case "truncated":
					o.truncated++
				default:
					o.failedClean++
				}
			}()
			if i == n/2 && during != nil {
				wg.Add(1)
				go func() { defer wg.Done(); during() }()
			}
			time.Sleep(20 * time.Millisecond)
		}
		wg.Wait()
		return o
	}
	check := func(phase string, n int, o outcome) {
		t.Logf("%s: sent %d, succeeded %d, failed cleanly %d, hung %d, truncated-but-200 %d", phase, n, o.ok, o.failedClean, o.hung, o.truncated)
		if o.hung != 0 || o.truncated != 0 || o.ok+o.failedClean != n {
			t.Errorf("%s: hung %d, truncated-but-200 %d, accounted %d of %d", phase, o.hung, o.truncated, o.ok+o.failedClean, n)
		}
	}
	const n = 24
	check("pod-1 freezes", n, run(n, frz.freeze))
	// The frozen pod leaves routing (its scrape fails; its streams timed
	// out): new requests complete on the other. (When it leaves depends on
	// the scrape timeout and the machine: the count is only logged.)
	after := run(8, nil)
	check("after the freeze", 8, after)
	if after.ok == 0 {
		t.Errorf("after the freeze nothing completed, want the live pod to serve")
	}
	frz.thaw()
	// Kill pod 0 under load: its streams fail visibly, the rest goes to
	// pod 1 once it is back in routing.
	for deadline := time.Now().Add(30 * time.Second); act.Stats()[0].ReadyPods != 2; time.Sleep(20 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("the thawed pod never came back")
		}
	}
	check("pod-0 killed", n, run(n, pods[0].kill))
	front.Close()
	act.Close()
	front1.Close()
	for _, p := range pods {
		p.kill()
	}
	http.DefaultClient.CloseIdleConnections()
	goleak.VerifyNone(t, leaks)
}

// proxyTo relays r to base (a minimal reverse proxy that streams).
func proxyTo(w http.ResponseWriter, r *http.Request, base string) {
	req, _ := http.NewRequestWithContext(r.Context(), r.Method, base+r.URL.Path, r.Body)
	req.Header = r.Header.Clone()
	resp, err := http.DefaultTransport.RoundTrip(req)
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadGateway)
		return
	}
	defer resp.Body.Close()
	for k, v := range resp.Header {
		w.Header()[k] = v
	}
	w.WriteHeader(resp.StatusCode)
	buf := make([]byte, 4096)
	for {
		n, err := resp.Body.Read(buf)
		if n > 0 {
			if _, werr := w.Write(buf[:n]); werr != nil {
				return
			}
			w.(http.Flusher).Flush()
		}
		if err != nil {
			return
		}
	}
}

// streamOnce sends one streamed completion and says how it ended: "ok"
// (200, [DONE]), "error" (an error status, or an error event then a cut),
// "hung" (no end within guard) or "truncated" (a 200 that ended cleanly
// without [DONE]).
func streamOnce(url string, i int, guard time.Duration) string {
	ctx, cancel := context.WithTimeout(context.Background(), guard)
	defer cancel()
	body := fmt.Sprintf(`{"model":%q,"prompt":%s,"max_tokens":32,"ignore_eos":true,"stream":true}`, testModel, mustJSON(longPrompt(64, uint32(7000+i))))
	req, _ := http.NewRequestWithContext(ctx, http.MethodPost, url+"/v1/completions", strings.NewReader(body))
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		if ctx.Err() != nil {
			return "hung"
		}
		return "error"
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		_, _ = io.Copy(io.Discard, resp.Body)
		return "error"
	}
	done, errEvent := false, false
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		line := sc.Text()
		done = done || line == "data: [DONE]"
		errEvent = errEvent || strings.HasPrefix(line, `data: {"error":`)
	}
	switch {
	case ctx.Err() != nil:
		return "hung"
	case done:
		return "ok"
	case errEvent && sc.Err() != nil:
		return "error"
	default:
		return "truncated"
	}
}
