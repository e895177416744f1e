package activator

import (
	"context"
	"errors"
	"net/http"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// capGate admits while fewer than capacity requests are admitted.
type capGate struct {
	mu       sync.Mutex
	ready    bool
	capacity int
}

func (g *capGate) gate(_ Tier, admitted int) (bool, bool) {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.ready, admitted < g.capacity
}

func (g *capGate) set(ready bool, capacity int) {
	g.mu.Lock()
	g.ready, g.capacity = ready, capacity
	g.mu.Unlock()
}

func tier(t *testing.T, name string) Tier {
	t.Helper()
	tr, ok := DefaultTiers().Get(name)
	if !ok {
		t.Fatalf("no tier %s", name)
	}
	return tr
}

func waitQueued(t *testing.T, f *FlowController, n int) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for time.Now().Before(deadline) {
		total := 0
		for _, v := range f.Stats().Queued {
			total += v
		}
		if total == n {
			return
		}
		time.Sleep(time.Millisecond)
	}
	t.Fatalf("queue never reached %d", n)
}

func TestFlowAdmitsImmediatelyWithCapacity(t *testing.T) {
	g := &capGate{ready: true, capacity: 1}
	f := NewFlowController(DefaultTiers(), FlowLimits{}, g.gate, nil)
	rel, err := f.Acquire(context.Background(), tier(t, "standard"), 10)
	if err != nil {
		t.Fatal(err)
	}
	if f.Stats().Admitted != 1 {
		t.Fatal("not counted as admitted")
	}
	rel()
	rel() // idempotent
	if f.Stats().Admitted != 0 {
		t.Fatalf("admitted = %d after release", f.Stats().Admitted)
	}
}

func TestFlowCriticalOvertakesQueuedBatch(t *testing.T) {
	g := &capGate{ready: true, capacity: 0}
	f := NewFlowController(DefaultTiers(), FlowLimits{}, g.gate, nil)
	order := make(chan string, 2)
	var wg sync.WaitGroup
	start := func(name string) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			rel, err := f.Acquire(context.Background(), tier(t, name), 1)
			if err != nil {
				t.Error(err)
				return
			}
			order <- name
			rel()
		}()
	}
	start("batch")
	waitQueued(t, f, 1)
	start("critical")
	waitQueued(t, f, 2)
	g.set(true, 1)
	f.Notify()
	wg.Wait()
	if first := <-order; first != "critical" {
		t.Fatalf("%s dispatched first, want critical", first)
	}
}

func TestFlowShedsBatchForCriticalWhenFull(t *testing.T) {
	g := &capGate{ready: true, capacity: 0}
	f := NewFlowController(DefaultTiers(), FlowLimits{MaxQueued: 1}, g.gate, nil)
	batchErr := make(chan error, 1)
	go func() {
		_, err := f.Acquire(context.Background(), tier(t, "batch"), 1)
		batchErr <- err
	}()
	waitQueued(t, f, 1)
	crit := make(chan error, 1)
	go func() {
		rel, err := f.Acquire(context.Background(), tier(t, "critical"), 1)
		if err == nil {
			rel()
		}
		crit <- err
	}()
	var rej *RejectError
	if err := <-batchErr; !errors.As(err, &rej) || rej.Status != http.StatusTooManyRequests || rej.RetryAfter <= 0 {
		t.Fatalf("batch request: %v, want a 429 with Retry-After", err)
	}
	waitQueued(t, f, 1)
	g.set(true, 1)
	f.Notify()
	if err := <-crit; err != nil {
		t.Fatalf("critical request: %v", err)
	}
}

// A full queue refuses with 429 while the revision has pods (it is
// overloaded, come back later) and with 503 only while it has none.
func TestFlowQueueFullWithNothingToShed(t *testing.T) {
	for _, ready := range []bool{true, false} {
		g := &capGate{ready: ready, capacity: 0}
		f := NewFlowController(DefaultTiers(), FlowLimits{MaxQueued: 1}, g.gate, nil)
		ctx, cancel := context.WithCancel(context.Background())
		go func() { _, _ = f.Acquire(ctx, tier(t, "critical"), 1) }()
		waitQueued(t, f, 1)
		standard := http.StatusServiceUnavailable
		if ready {
			standard = http.StatusTooManyRequests
		}
		cases := []struct {
			tier   string
			status int
		}{{"standard", standard}, {"batch", http.StatusTooManyRequests}}
		for _, c := range cases {
			_, err := f.Acquire(context.Background(), tier(t, c.tier), 1)
			var rej *RejectError
			if !errors.As(err, &rej) || rej.Status != c.status || rej.RetryAfter <= 0 {
				t.Errorf("pods %v: %s into a full queue: %v, want status %d with Retry-After", ready, c.tier, err, c.status)
			}
		}
		cancel()
		waitQueued(t, f, 0)
	}
}

func TestFlowQueueDeadline(t *testing.T) {
	for _, ready := range []bool{true, false} {
		g := &capGate{ready: ready, capacity: 0}
		tr := tier(t, "standard")
		tr.MaxQueueTime = Duration(20 * time.Millisecond)
		f := NewFlowController(DefaultTiers(), FlowLimits{}, g.gate, nil)
		_, err := f.Acquire(context.Background(), tr, 1)
		want := http.StatusServiceUnavailable
		if ready {
			want = http.StatusTooManyRequests
		}
		var rej *RejectError
		if !errors.As(err, &rej) || rej.Status != want {
			t.Fatalf("pods %v: got %v, want %d after the queue deadline", ready, err, want)
		}
		if st := f.Stats(); st.Queued["standard"] != 0 || st.Bytes != 0 {
			t.Fatalf("timed-out waiter left in queue: %+v", st)
		}
	}
}

func TestFlowClientGoneLeavesNoTrace(t *testing.T) {
	g := &capGate{ready: false}
	var pokes atomic.Int32
	f := NewFlowController(DefaultTiers(), FlowLimits{}, g.gate, func() { pokes.Add(1) })
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error)
	go func() {
		_, err := f.Acquire(ctx, tier(t, "standard"), 100)
		done <- err
	}()
	waitQueued(t, f, 1)
	// The poke follows the enqueue (outside the lock): wait for it.
	for deadline := time.Now().Add(30 * time.Second); pokes.Load() == 0 && time.Now().Before(deadline); {
		time.Sleep(time.Millisecond)
	}
	if pokes.Load() != 1 {
		t.Fatalf("autoscaler poked %d times for a request waiting on a revision at zero", pokes.Load())
	}
	cancel()
	if err := <-done; !errors.Is(err, context.Canceled) {
		t.Fatalf("got %v", err)
	}
	if st := f.Stats(); st.Queued["standard"] != 0 || st.Bytes != 0 || st.Admitted != 0 {
		t.Fatalf("state after cancel: %+v", st)
	}
}

func TestFlowReleaseAdmitsNext(t *testing.T) {
	g := &capGate{ready: true, capacity: 1}
	f := NewFlowController(DefaultTiers(), FlowLimits{}, g.gate, nil)
	rel, err := f.Acquire(context.Background(), tier(t, "standard"), 1)
	if err != nil {
		t.Fatal(err)
	}
	got := make(chan error)
	go func() {
		r2, err := f.Acquire(context.Background(), tier(t, "standard"), 1)
		if err == nil {
			r2()
		}
		got <- err
	}()
	waitQueued(t, f, 1)
	rel()
	if err := <-got; err != nil {
		t.Fatal(err)
	}
}

func TestParseTiersRejectsBadTables(t *testing.T) {
	cases := map[string]string{
		"empty":         "tiers: []",
		"bad name":      "tiers:\n- name: Critical\n  maxQueueTime: 1s\n",
		"duplicate":     "tiers:\n- name: a\n  maxQueueTime: 1s\n- name: a\n  maxQueueTime: 1s\n",
		"no deadline":   "tiers:\n- name: a\n",
		"bad duration":  "tiers:\n- name: a\n  maxQueueTime: soon\n",
		"unknown field": "tiers:\n- name: a\n  maxQueueTime: 1s\n  colour: red\n",
		"negative sat":  "tiers:\n- name: a\n  maxQueueTime: 1s\n  maxSaturation: -1\n",
		"negative ttft": "tiers:\n- name: a\n  maxQueueTime: 1s\n  ttft: -1s\n",
		"negative cap":  "tiers:\n- name: a\n  maxQueueTime: 1s\n  maxPerPod: -1\n",
	}
	for name, doc := range cases {
		if _, err := ParseTiers([]byte(doc)); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
	// The prefill gate and yielding: refused with the field named.
	named := []struct{ name, doc, field string }{
		{"negative prefill gate", "tiers:\n- name: a\n  maxQueueTime: 1s\n  maxPrefillPerPod: -1\n", "tiers[0].maxPrefillPerPod"},
		{"prefill gate not a number", "tiers:\n- name: a\n  maxQueueTime: 1s\n  maxPrefillPerPod: one\n", "maxPrefillPerPod"},
		{"yield not a bool", "tiers:\n- name: a\n  maxQueueTime: 1s\n  yieldToInteractive: sometimes\n", "yieldToInteractive"},
		{"negative cap, second tier", "tiers:\n- name: a\n  maxQueueTime: 1s\n- name: b\n  maxQueueTime: 1s\n  maxPerPod: -2\n", "tiers[1].maxPerPod"},
	}
	for _, c := range named {
		if _, err := ParseTiers([]byte(c.doc)); err == nil || !strings.Contains(err.Error(), c.field) {
			t.Errorf("%s: error %v, want one naming %s", c.name, err, c.field)
		}
	}
	ok, err := ParseTiers([]byte("tiers:\n- name: a\n  priority: 1\n  maxQueueTime: 1s\n- name: b\n  maxQueueTime: 1s\n  maxPrefillPerPod: 2\n  yieldToInteractive: true\n"))
	if err != nil {
		t.Fatal(err)
	}
	if b, _ := ok.Get("b"); b.MaxPrefillPerPod != 2 || !b.YieldToInteractive || !ok.prefill {
		t.Fatalf("tier b read as %+v (counting %v), want maxPrefillPerPod 2 and yielding", b, ok.prefill)
	}
	if d := DefaultTiers(); d.prefill {
		t.Fatal("the default table has a prefill gate or yields: both are off by default")
	}
	// With: a copy with one tier replaced, validated, the original kept.
	d := DefaultTiers()
	batch, _ := d.Get("batch")
	batch.MaxPrefillPerPod, batch.YieldToInteractive = 1, true
	w, err := d.With(batch)
	if err != nil {
		t.Fatal(err)
	}
	if got, _ := w.Get("batch"); got != batch || !w.prefill || !slices.Equal(w.Names(), d.Names()) {
		t.Fatalf("With: batch %+v (counting %v), tiers %v", got, w.prefill, w.Names())
	}
	if orig, _ := d.Get("batch"); orig.MaxPrefillPerPod != 0 || d.prefill {
		t.Fatal("With changed the table it was called on")
	}
	batch.MaxPrefillPerPod = -1
	if _, err := d.With(batch); err == nil || !strings.Contains(err.Error(), "maxPrefillPerPod") {
		t.Fatalf("With a negative prefill gate: %v", err)
	}
	if _, err := d.With(Tier{Name: "gold", MaxQueueTime: Duration(time.Second)}); err == nil || !strings.Contains(err.Error(), "gold") {
		t.Fatalf("With an unknown tier: %v", err)
	}
	tiers := DefaultTiers()
	if got := tiers.Names(); len(got) != 3 || got[0] != "critical" || got[2] != "batch" {
		t.Fatalf("default tiers order %v", got)
	}
}

// TestFlowPerPodCap: a tier with maxPerPod is admitted only while fewer than
// the cap times the pods are admitted: the next one waits (not shed), a
// higher tier without a cap still goes at once, a release admits the
// waiting one, and more pods raise the limit.
func TestFlowPerPodCap(t *testing.T) {
	tiers, err := ParseTiers([]byte(strings.Replace(DefaultTiersYAML, "maxPerPod: 32", "maxPerPod: 2", 1)))
	if err != nil {
		t.Fatal(err)
	}
	batch, _ := tiers.Get("batch")
	standard, _ := tiers.Get("standard")
	if batch.MaxPerPod != 2 {
		t.Fatalf("batch cap %d", batch.MaxPerPod)
	}
	var pods atomic.Int64
	pods.Store(2)
	f := NewFlowController(tiers, FlowLimits{}, func(Tier, int) (bool, bool) { return true, true }, nil).
		withPods(func() int { return int(pods.Load()) })
	var rels []func()
	for range 4 {
		rel, err := f.Acquire(context.Background(), batch, 1)
		if err != nil {
			t.Fatal(err)
		}
		rels = append(rels, rel)
	}
	got := make(chan error, 2)
	waiting := make(chan func(), 2)
	for range 2 {
		go func() {
			rel, err := f.Acquire(context.Background(), batch, 1)
			got <- err
			waiting <- rel
		}()
	}
	waitQueued(t, f, 2)
	rel, err := f.Acquire(context.Background(), standard, 1)
	if err != nil {
		t.Fatalf("standard behind the batch cap: %v", err)
	}
	rel()
	if st := f.Stats(); st.Admitted != 4 || st.Queued["batch"] != 2 {
		t.Fatalf("stats %+v, want 4 admitted and 2 batch waiting", st)
	}
	rels[0]()
	if err := <-got; err != nil {
		t.Fatal(err)
	}
	rels[0] = <-waiting
	waitQueued(t, f, 1)
	pods.Store(3)
	f.Notify()
	if err := <-got; err != nil {
		t.Fatal(err)
	}
	rels = append(rels, <-waiting)
	if st := f.Stats(); st.Admitted != 5 || st.Queued["batch"] != 0 {
		t.Fatalf("stats %+v, want 5 admitted with 3 pods", st)
	}
	for _, r := range rels {
		r()
	}
	if st := f.Stats(); st.Admitted != 0 {
		t.Fatalf("admitted %d after every release", st.Admitted)
	}
}
