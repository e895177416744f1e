package activator

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/llmd-kn/llmd-kn/pkg/apis"
	"github.com/llmd-kn/llmd-kn/pkg/router"
)

// holdPod is a pod (a real server on loopback) whose completions wait for
// the test: each is announced on arrived, writes its first byte (an SSE
// event) only once the test closes its first channel, and ends when the
// test closes its end channel. So the tests below are about order, not
// time: the first bytes come when the test says.
type holdPod struct {
	name    string
	srv     *httptest.Server
	arrived chan *heldReq
	// check, if set, is called at each arrival with the requests on the
	// pod that have no first byte yet; a non-empty answer is a violation.
	check func(unstarted []*heldReq, h *heldReq) string

	mu         sync.Mutex
	unstarted  []*heldReq
	violations []string
}

// heldReq is one completion on a holdPod. mode, set before first or end
// is closed: "" answers in full, "abort" fails before the first byte (the
// connection is cut before any header), "cut" fails after it.
type heldReq struct {
	pod    *holdPod
	prompt string
	first  chan struct{}
	end    chan struct{}
	mode   string
}

func startHoldPod(t *testing.T, name string) *holdPod {
	t.Helper()
	p := &holdPod{name: name, arrived: make(chan *heldReq, 64)}
	p.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/metrics" {
			_, _ = w.Write([]byte(vllmPage))
			return
		}
		if !strings.HasPrefix(r.URL.Path, "/v1/") || r.URL.Path == "/v1/models" {
			http.NotFound(w, r)
			return
		}
		var body struct {
			Prompt string `json:"prompt"`
		}
		_ = json.NewDecoder(r.Body).Decode(&body)
		h := &heldReq{pod: p, prompt: body.Prompt, first: make(chan struct{}), end: make(chan struct{})}
		p.mu.Lock()
		if p.check != nil {
			if v := p.check(append([]*heldReq(nil), p.unstarted...), h); v != "" {
				p.violations = append(p.violations, v)
			}
		}
		p.unstarted = append(p.unstarted, h)
		p.mu.Unlock()
		p.arrived <- h
		started := false
		defer func() {
			if !started {
				p.started(h)
			}
		}()
		select {
		case <-h.first:
		case <-r.Context().Done():
			return
		}
		if h.mode == "abort" {
			panic(http.ErrAbortHandler)
		}
		w.Header().Set("Content-Type", "text/event-stream")
		_, _ = w.Write([]byte("data: {\"choices\":[{\"index\":0,\"text\":\"a\"}]}\n\n"))
		p.started(h) // before the flush: the activator may see the byte once it is out
		started = true
		w.(http.Flusher).Flush()
		select {
		case <-h.end:
		case <-r.Context().Done():
			return
		}
		if h.mode == "cut" {
			panic(http.ErrAbortHandler)
		}
		_, _ = w.Write([]byte("data: [DONE]\n\n"))
	}))
	t.Cleanup(p.srv.Close)
	return p
}

func (p *holdPod) started(h *heldReq) {
	p.mu.Lock()
	defer p.mu.Unlock()
	for i, u := range p.unstarted {
		if u == h {
			p.unstarted = append(p.unstarted[:i], p.unstarted[i+1:]...)
			return
		}
	}
}

func (p *holdPod) failures() []string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return append([]string(nil), p.violations...)
}

// next is the next request to arrive at any of pods (bounded: 30 s).
func next(t *testing.T, pods ...*holdPod) *heldReq {
	t.Helper()
	cases := make([]chan *heldReq, len(pods))
	for i, p := range pods {
		cases[i] = p.arrived
	}
	deadline := time.After(30 * time.Second)
	for {
		for _, c := range cases {
			select {
			case h := <-c:
				return h
			default:
			}
		}
		select {
		case <-deadline:
			t.Fatal("no request arrived at a pod within 30 s")
		case <-time.After(2 * time.Millisecond):
		}
	}
}

// none checks that no request waits to be taken from pods' arrivals.
func none(t *testing.T, pods ...*holdPod) {
	t.Helper()
	for _, p := range pods {
		select {
		case h := <-p.arrived:
			t.Fatalf("request %q arrived at %s", h.prompt, p.name)
		default:
		}
	}
}

// holdFixture is an activator in front of hold pods, with tiers from doc;
// its scrapes are an hour apart, so that nothing but the request path
// (first bytes, ends) moves a held queue.
func holdFixture(t *testing.T, doc string, scrape time.Duration, pods ...*holdPod) (*Activator, *revision, string) {
	t.Helper()
	tiers, err := ParseTiers([]byte(doc))
	if err != nil {
		t.Fatal(err)
	}
	act, err := New(Options{Tiers: tiers, ScrapeInterval: scrape, StaleAfter: 24 * time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(act.Close)
	key := RevisionKey{Namespace: "default", Name: "llm-00001"}
	if err := act.UpsertRevision(RevisionConfig{Key: key, Service: "llm", Models: []string{"demo"},
		Spec: apis.Spec{RoutingProfile: "round-robin"}}); err != nil {
		t.Fatal(err)
	}
	var specs []PodSpec
	for _, p := range pods {
		specs = append(specs, PodSpec{Name: p.name, URL: p.srv.URL, Role: router.RoleBoth})
	}
	if err := act.SetPods(key, specs); err != nil {
		t.Fatal(err)
	}
	until(t, func() bool { return act.Stats()[0].ReadyPods == len(pods) })
	front := httptest.NewServer(act.Handler())
	t.Cleanup(front.Close)
	act.mu.Lock()
	rev := act.revs[key]
	act.mu.Unlock()
	return act, rev, front.URL
}

// client sends streamed completions and keeps their outcomes; Cleanup
// cancels every one still running and waits for them.
type client struct {
	url string
	wg  sync.WaitGroup
	mu  sync.Mutex
	out map[string]string // prompt -> "200" or the error / status
}

func newClient(t *testing.T, url string) *client {
	c := &client{url: url, out: map[string]string{}}
	t.Cleanup(c.wg.Wait)
	return c
}

// send sends prompt in tier; the returned function cancels it.
func (c *client) send(t *testing.T, tier, prompt string) context.CancelFunc {
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	c.wg.Add(1)
	go func() {
		defer c.wg.Done()
		req, _ := http.NewRequestWithContext(ctx, http.MethodPost, c.url+"/v1/completions",
			strings.NewReader(fmt.Sprintf(`{"model":"demo","prompt":%q,"stream":true}`, prompt)))
		req.Header.Set(TierHeader, tier)
		outcome := ""
		if resp, err := http.DefaultClient.Do(req); err != nil {
			outcome = "error: " + err.Error()
		} else {
			data, rerr := io.ReadAll(resp.Body)
			resp.Body.Close()
			outcome = fmt.Sprint(resp.StatusCode)
			if rerr != nil || !strings.Contains(string(data), "[DONE]") {
				outcome += fmt.Sprintf(" incomplete (%v)", rerr)
			}
		}
		c.mu.Lock()
		c.out[prompt] = outcome
		c.mu.Unlock()
	}()
	return cancel
}

func (c *client) outcome(prompt string) (string, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	o, ok := c.out[prompt]
	return o, ok
}

// prefillCounts are the revision's counts of requests without their first
// byte: each pod's, by tier name, and the flow controller's (the prefill
// gate's), by tier name; zero entries left out.
func prefillCounts(rev *revision) (pods map[string]map[string]int64, flow map[string]int) {
	names := rev.a.opts.Tiers.Names()
	pods = map[string]map[string]int64{}
	rev.mu.RLock()
	for name, p := range rev.pods {
		for i := range p.unstarted {
			if n := p.unstarted[i].Load(); n != 0 {
				if pods[name] == nil {
					pods[name] = map[string]int64{}
				}
				pods[name][names[i]] = n
			}
		}
	}
	rev.mu.RUnlock()
	flow = map[string]int{}
	rev.flow.mu.Lock()
	for k, n := range rev.flow.unstartedIn {
		if n != 0 {
			flow[k] = n
		}
	}
	rev.flow.mu.Unlock()
	return pods, flow
}

const holdTiers = `tiers:
- name: standard
  priority: 50
  maxQueueTime: 60s
- name: batch
  priority: 0
  sheddable: true
  maxQueueTime: 10m
`

// TestBatchPrefillGateOnTheRealPath: with the batch tier's
// maxPrefillPerPod at 1 and two pods, six batch requests sent at once
// reach the pods one per pod, the other four wait in the activator, and
// each first byte lets exactly one more go (to the pod that wrote it: the
// other still has one without its first byte), with no new arrival to
// move the queue. No batch request ever reaches a pod that has another
// without its first byte. The counts return to zero once all have ended.
func TestBatchPrefillGateOnTheRealPath(t *testing.T) {
	a, b := startHoldPod(t, "pod-a"), startHoldPod(t, "pod-b")
	for _, p := range []*holdPod{a, b} {
		p.check = func(unstarted []*heldReq, h *heldReq) string {
			if len(unstarted) > 0 {
				return fmt.Sprintf("%s reached %s while %q had no first byte", h.prompt, h.pod.name, unstarted[0].prompt)
			}
			return ""
		}
	}
	_, rev, url := holdFixture(t, holdTiers+"  maxPrefillPerPod: 1\n", time.Hour, a, b)
	c := newClient(t, url)
	for i := range 6 {
		c.send(t, "batch", fmt.Sprintf("b%d", i))
	}
	h1, h2 := next(t, a, b), next(t, a, b)
	if h1.pod == h2.pod {
		t.Fatalf("%s and %s both went to %s", h1.prompt, h2.prompt, h1.pod.name)
	}
	until(t, func() bool { return rev.flow.Stats().Queued["batch"] == 4 })
	none(t, a, b)
	held := []*heldReq{h1, h2}
	for q := 3; q >= 0; q-- {
		h := held[0]
		held = held[1:]
		close(h.first)
		n := next(t, a, b)
		if n.pod != h.pod {
			t.Fatalf("after %s's first byte on %s, %s went to %s", h.prompt, h.pod.name, n.prompt, n.pod.name)
		}
		until(t, func() bool { return rev.flow.Stats().Queued["batch"] == q })
		none(t, a, b)
		held = append(held, n)
		close(h.end)
	}
	for _, h := range held {
		close(h.first)
		close(h.end)
	}
	c.wg.Wait()
	for i := range 6 {
		if o, _ := c.outcome(fmt.Sprintf("b%d", i)); o != "200" {
			t.Errorf("b%d: %s", i, o)
		}
	}
	for _, p := range []*holdPod{a, b} {
		if v := p.failures(); len(v) > 0 {
			t.Errorf("%s: %q", p.name, v)
		}
	}
	until(t, func() bool { pods, flow := prefillCounts(rev); return len(pods) == 0 && len(flow) == 0 })
}

// TestBatchYieldsToInteractiveOnTheRealPath: with the batch tier's
// yieldToInteractive, a batch request goes to the pod without an
// interactive request awaiting its first byte; while every pod has one, a
// batch request waits in the activator (not on a pod), and the first
// interactive first byte lets it go to that pod, with no new arrival to
// move the queue. At no batch arrival does its pod hold an interactive
// request without its first byte.
func TestBatchYieldsToInteractiveOnTheRealPath(t *testing.T) {
	a, b := startHoldPod(t, "pod-a"), startHoldPod(t, "pod-b")
	for _, p := range []*holdPod{a, b} {
		p.check = func(unstarted []*heldReq, h *heldReq) string {
			if !strings.HasPrefix(h.prompt, "b") {
				return ""
			}
			for _, u := range unstarted {
				if strings.HasPrefix(u.prompt, "s") {
					return fmt.Sprintf("%s reached %s while %q had no first byte", h.prompt, h.pod.name, u.prompt)
				}
			}
			return ""
		}
	}
	_, rev, url := holdFixture(t, holdTiers+"  yieldToInteractive: true\n", time.Hour, a, b)
	c := newClient(t, url)
	c.send(t, "standard", "s0")
	s0 := next(t, a, b)
	other := map[*holdPod]*holdPod{a: b, b: a}
	c.send(t, "batch", "b0")
	if h := next(t, a, b); h.pod != other[s0.pod] {
		t.Fatalf("b0 went to %s, where s0 awaits its first byte", h.pod.name)
	} else {
		close(h.first)
		close(h.end)
	}
	// Interactive requests until both pods hold one without a first byte.
	var s1 *heldReq
	var more []*heldReq // on s0's pod
	for i := 1; s1 == nil; i++ {
		if i > 8 {
			t.Fatal("8 standard requests never reached the second pod")
		}
		c.send(t, "standard", fmt.Sprintf("s%d", i))
		if h := next(t, a, b); h.pod != s0.pod {
			s1 = h
		} else {
			more = append(more, h)
		}
	}
	c.send(t, "batch", "b1")
	until(t, func() bool { return rev.flow.Stats().Queued["batch"] == 1 })
	none(t, a, b)
	close(s1.first) // only s1's pod is free now
	h := next(t, a, b)
	if h.prompt != "b1" || h.pod != s1.pod {
		t.Fatalf("after s1's first byte on %s, %s went to %s", s1.pod.name, h.prompt, h.pod.name)
	}
	close(h.first)
	close(h.end)
	close(s1.end)
	for _, h := range append(more, s0) {
		close(h.first)
		close(h.end)
	}
	if o := func() string { c.wg.Wait(); o, _ := c.outcome("b1"); return o }(); o != "200" {
		t.Errorf("b1: %s", o)
	}
	for _, p := range []*holdPod{a, b} {
		if v := p.failures(); len(v) > 0 {
			t.Errorf("%s: %q", p.name, v)
		}
	}
}

// TestPrefillCountsNeverLeak: the pods' and the flow controller's counts of
// requests without their first byte return to zero after an answer in
// full, a failure before the first byte (the pod cuts the connection), a
// client that goes away before its first byte, one that goes away after
// it, and a failure after the first byte, for a batch tier with both rules
// and an interactive tier.
func TestPrefillCountsNeverLeak(t *testing.T) {
	cases := []struct {
		name string
		mode string // the pod's: "", "abort" (before the first byte), "cut" (after)
		// cancel: the client goes away "before" or "after" the first byte.
		cancel string
	}{
		{"answer in full", "", ""},
		{"failure after the first byte", "cut", ""},
		{"client gone before the first byte", "", "before"},
		{"client gone after the first byte", "", "after"},
		{"failure before the first byte", "abort", ""},
	}
	for _, tier := range []string{"batch", "standard"} {
		for _, tc := range cases {
			t.Run(tier+"/"+tc.name, func(t *testing.T) {
				p := startHoldPod(t, "pod-a")
				_, rev, url := holdFixture(t, holdTiers+"  maxPrefillPerPod: 1\n  yieldToInteractive: true\n", 20*time.Millisecond, p)
				c := newClient(t, url)
				cancel := c.send(t, tier, "x")
				h := next(t, p)
				if pods, flow := prefillCounts(rev); pods["pod-a"][tier] != 1 || (tier == "batch") != (flow["batch"] == 1) {
					t.Fatalf("while awaiting the first byte: pods %v, flow %v", pods, flow)
				}
				h.mode = tc.mode
				if tc.cancel == "before" {
					cancel()
				} else {
					close(h.first)
				}
				if tc.cancel == "after" {
					until(t, func() bool { pods, _ := prefillCounts(rev); return len(pods) == 0 })
					cancel()
				} else if tc.mode != "abort" {
					close(h.end)
				}
				c.wg.Wait()
				o, _ := c.outcome("x")
				if tc.mode == "" && tc.cancel == "" && o != "200" {
					t.Fatalf("outcome %s, want 200", o)
				}
				until(t, func() bool { pods, flow := prefillCounts(rev); return len(pods) == 0 && len(flow) == 0 })
			})
		}
	}
}
