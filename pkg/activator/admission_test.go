package activator

import (
	"context"
	"errors"
	"fmt"
	"math"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/llmd-kn/llmd-kn/pkg/apis"
	"github.com/llmd-kn/llmd-kn/pkg/engine"
)

func TestRateMeter(t *testing.T) {
	t0 := time.Unix(1000, 0)
	var m rateMeter
	if r := m.rate(t0); r != 0 {
		t.Fatalf("empty meter: %v", r)
	}
	// 10 events over the first second: 10/s over the time seen so far.
	for i := range 10 {
		m.add(t0.Add(time.Duration(i) * 100 * time.Millisecond))
	}
	if r := m.rate(t0.Add(time.Second)); math.Abs(r-10) > 0.01 {
		t.Fatalf("rate after 1 s: %v, want 10", r)
	}
	// A second later the first has left the 2 s window: 9 in 2 s.
	if r := m.rate(t0.Add(2 * time.Second)); math.Abs(r-4.5) > 0.01 {
		t.Fatalf("rate after 2 s: %v, want 4.5", r)
	}
	// Out of the window: nothing.
	if r := m.rate(t0.Add(5 * time.Second)); r != 0 {
		t.Fatalf("rate after 5 s: %v, want 0", r)
	}
	// A late event counts again.
	m.add(t0.Add(10 * time.Second))
	if r := m.rate(t0.Add(10 * time.Second)); math.Abs(r-0.5) > 0.01 {
		t.Fatalf("one event in the window: %v, want 0.5", r)
	}
}

func TestPodWait(t *testing.T) {
	inf := math.Inf(1)
	cases := []struct {
		name string
		w    podWait
		want float64
	}{
		{"slots unknown, nothing queued", podWait{load: 50, rate: 1}, 0},
		{"slots unknown, three queued", podWait{load: 50, queued: 3, ahead: 3, rate: 1}, 4},
		{"a free slot", podWait{load: 3, queued: 0, slots: 4, rate: 1}, 0},
		{"full: the next start", podWait{load: 4, slots: 4, rate: 2}, 0.5},
		{"five queued ahead", podWait{load: 9, queued: 5, ahead: 5, slots: 4, rate: 2}, 3},
		{"priority: five queued, none of its tier or higher", podWait{load: 9, queued: 5, ahead: 0, slots: 4, rate: 2}, 0.5},
		{"priority: two of its tier queued", podWait{load: 9, queued: 5, ahead: 2, slots: 4, rate: 2}, 1.5},
		{"full, ours in flight, no start seen", podWait{load: 4, slots: 4, mine: 1}, inf},
		{"full of others' requests, no start seen", podWait{load: 4, slots: 4}, 0},
		// Under priority scheduling, lower tiers' long work that started
		// nothing in the window does not make the pod look frozen to a
		// higher tier that has nothing waiting there (a batch flood must
		// not get critical requests shed); its own tier waiting does.
		{"priority: full of lower tiers, no start seen", podWait{load: 4, slots: 4, mine: 4, byPriority: true}, 0},
		{"priority: its tier waiting, no start seen", podWait{load: 5, queued: 1, ahead: 1, slots: 4, mine: 5, byPriority: true}, inf},
	}
	for _, c := range cases {
		if got := c.w.wait(); got != c.want {
			t.Errorf("%s: wait %v, want %v", c.name, got, c.want)
		}
	}
}

func TestAdmitsLeavesRoomForHigherTiers(t *testing.T) {
	free := podWait{name: "a", load: 0, slots: 1, rate: 1}
	busy := podWait{name: "b", load: 1, slots: 1, rate: 1} // next start in 1 s
	cases := []struct {
		name         string
		ws           []podWait
		own, reserve time.Duration
		want         bool
	}{
		{"no pod", nil, time.Second, 0, false},
		{"a free slot, own budget", []podWait{free}, 250 * time.Millisecond, 0, true},
		{"full pod over budget", []podWait{busy}, 250 * time.Millisecond, 0, false},
		{"full pod within a loose budget", []podWait{busy}, 2 * time.Second, 0, true},
		// The last free slot is a higher tier's.
		{"last free slot reserved", []podWait{free, busy}, 4 * time.Second, 250 * time.Millisecond, false},
		{"two free slots: one for it, one left", []podWait{free, free}, 4 * time.Second, 250 * time.Millisecond, true},
		{"no budget of its own, reserve kept", []podWait{free, free}, 0, 250 * time.Millisecond, true},
		{"no budget of its own, reserve taken", []podWait{free}, 0, 250 * time.Millisecond, false},
	}
	for _, c := range cases {
		if got := admits(c.ws, c.own, c.reserve, 0); got != c.want {
			t.Errorf("%s: admits %v, want %v", c.name, got, c.want)
		}
	}
	own, reserve := DefaultTiers().budgets(tier(t, "batch"))
	if own != 0 || reserve != 250*time.Millisecond {
		t.Errorf("batch budgets %v, %v: want none of its own and critical's 250ms", own, reserve)
	}
	own, reserve = DefaultTiers().budgets(tier(t, "critical"))
	if own != 250*time.Millisecond || reserve != 0 {
		t.Errorf("critical budgets %v, %v: want 250ms and no reserve", own, reserve)
	}
}

// Under priority scheduling a lower tier starts only at once and where it
// leaves keepFree slots for a higher tier: the engine does not preempt
// for a slot, so a critical request arriving at a pod full of lower-tier
// work would wait for one of them to finish.
func TestAdmitsKeepsSlotsFreeUnderPriority(t *testing.T) {
	pod := func(load float64, slots int) podWait {
		return podWait{load: load, slots: slots, rate: 8, queued: math.Max(load-float64(slots), 0)}
	}
	cases := []struct {
		name string
		ws   []podWait
		keep float64
		want bool
	}{
		{"two free of 16, keep 1", []podWait{pod(7, 8), pod(7, 8)}, 1, true},
		{"one free of 16, keep 1: it is the higher tier's", []podWait{pod(7, 8), pod(8, 8)}, 1, false},
		{"full: it would wait in the pod", []podWait{pod(8, 8), pod(9, 8)}, 1, false},
		{"one free, nothing kept", []podWait{pod(7, 8), pod(8, 8)}, 0, true},
		{"slots unknown, nothing waits: no reserve is possible", []podWait{{load: 3, rate: 8}}, 1, true},
		{"slots unknown, requests wait", []podWait{{load: 3, queued: 1, ahead: 1, rate: 8}}, 1, false},
	}
	for _, c := range cases {
		if got := admits(c.ws, 2*time.Second, 0, c.keep); got != c.want {
			t.Errorf("%s: admits %v, want %v", c.name, got, c.want)
		}
	}
	for _, c := range []struct {
		slots []int
		want  float64
	}{{[]int{8, 8}, 1}, {[]int{1, 1}, 0}, {[]int{256}, 25}, {[]int{0, 0}, 0}} {
		var ws []podWait
		for _, n := range c.slots {
			ws = append(ws, podWait{slots: n})
		}
		if got := keepFree(ws); got != c.want {
			t.Errorf("keepFree(%v) = %v, want %v", c.slots, got, c.want)
		}
	}
}

// fakeClock is a settable clock for the flow controller.
type fakeClock struct{ now time.Time }

func (c *fakeClock) Now() time.Time { return c.now }

// A request that the queue ahead of it and the drain rate say cannot start
// within its budget is refused on arrival (no waiting), with a Retry-After
// from the drain rate; a tier whose queue has not moved is refused too.
func TestFlowShedsOnArrival(t *testing.T) {
	g := &capGate{ready: true, capacity: 0}
	clock := &fakeClock{now: time.Unix(1000, 0)}
	// Targets in hours, so that no real timer fires during the test.
	tiers, err := ParseTiers([]byte(`tiers:
- {name: critical, priority: 100, ttft: 1h, maxQueueTime: 2h}
- {name: standard, priority: 50, ttft: 2h, maxQueueTime: 4h}
- {name: batch, priority: 0, sheddable: true, maxQueueTime: 10m}
`))
	if err != nil {
		t.Fatal(err)
	}
	get := func(name string) Tier { tr, _ := tiers.Get(name); return tr }
	drain := 1.0 / 1200 // a start every 20 minutes
	f := NewFlowController(tiers, FlowLimits{}, g.gate, nil).withRates(func() float64 { return drain }, clock.Now)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	// critical's budget is 30 minutes: the first in line starts within
	// it, and a second one does not.
	go func() { _, _ = f.Acquire(ctx, get("critical"), 1) }()
	waitQueued(t, f, 1)
	_, err = f.Acquire(ctx, get("critical"), 1)
	var rej *RejectError
	if !errors.As(err, &rej) || rej.Status != http.StatusTooManyRequests || rej.Kind != "shed" {
		t.Fatalf("second critical request: %v, want a 429 shed on arrival", err)
	}
	// Retry-After: two queued (with it) at one per 20 minutes, at most 60 s.
	if rej.RetryAfter != time.Minute {
		t.Errorf("Retry-After %v, want 60s", rej.RetryAfter)
	}
	// A batch request queues (its budget is 10 minutes; at 1/s two are
	// ahead for 2 s) until its queue has not moved for rateWindow; then
	// the next is refused.
	drain = 1
	go func() { _, _ = f.Acquire(ctx, get("batch"), 1) }()
	waitQueued(t, f, 2)
	clock.now = clock.now.Add(rateWindow + time.Millisecond)
	drain = 0.1
	_, err = f.Acquire(ctx, get("batch"), 1)
	if !errors.As(err, &rej) || rej.Status != http.StatusTooManyRequests || rej.Kind != "shed" {
		t.Fatalf("batch request behind a starved batch queue: %v, want a 429 shed", err)
	}
	// Retry-After from the drain rate: 3 / 0.1 = 30 s.
	if rej.RetryAfter != 30*time.Second {
		t.Errorf("Retry-After %v, want 30s", rej.RetryAfter)
	}
	// Without pods nothing is shed on arrival: it waits for one.
	g.set(false, 0)
	ctx2, cancel2 := context.WithTimeout(ctx, 20*time.Millisecond)
	defer cancel2()
	if _, err := f.Acquire(ctx2, get("standard"), 1); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("standard request without pods: %v, want it to wait", err)
	}
}

// Once the revision has pods, a request of a tier with a TTFT target that
// was queued (predicted to start in time) waits at most its whole target
// in the queue: 429, not the tier's whole queue deadline.
func TestFlowBudgetBoundsTheWait(t *testing.T) {
	g := &capGate{ready: true, capacity: 0}
	tr, _ := ParseTiers([]byte("tiers:\n- {name: critical, priority: 1, ttft: 40ms, maxQueueTime: 1h}\n"))
	f := NewFlowController(tr, FlowLimits{}, g.gate, nil)
	crit, _ := tr.Get("critical")
	done := make(chan error, 1)
	go func() { _, err := f.Acquire(context.Background(), crit, 1); done <- err }()
	select {
	case err := <-done:
		var rej *RejectError
		if !errors.As(err, &rej) || rej.Status != http.StatusTooManyRequests || rej.Kind != "queue_timeout" {
			t.Fatalf("got %v, want a 429 at the target", err)
		}
	case <-time.After(30 * time.Second): // a hang guard, not a threshold
		t.Fatal("the request waited past its target")
	}
}

// A lower tier does not overtake a higher tier's waiting head, even where
// its own gate is open: it would take the place the head waits for.
func TestFlowLowerTierWaitsBehindHigher(t *testing.T) {
	var mu sync.Mutex
	criticalOpen := false
	gate := func(tr Tier, _ int) (bool, bool) {
		mu.Lock()
		defer mu.Unlock()
		return true, tr.Name != "critical" || criticalOpen
	}
	f := NewFlowController(DefaultTiers(), FlowLimits{}, gate, nil)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	order := make(chan string, 2)
	for i, name := range []string{"critical", "standard"} {
		go func() {
			if rel, err := f.Acquire(ctx, tier(t, name), 1); err == nil {
				order <- name
				rel()
			}
		}()
		waitQueued(t, f, i+1)
	}
	f.Notify()
	if st := f.Stats(); st.Queued["standard"] != 1 {
		t.Fatalf("standard went past a waiting critical request: %+v", st)
	}
	mu.Lock()
	criticalOpen = true
	mu.Unlock()
	f.Notify()
	got := map[string]bool{<-order: true, <-order: true}
	if !got["critical"] || !got["standard"] {
		t.Fatalf("dispatched %v, want both", got)
	}
}

// A request is refused on arrival when the tiers above it take the rate it
// would start at, even with nothing queued: strict priority puts their
// future arrivals ahead of it too. Nothing is refused later for the same
// reason: a queued request's bound is its whole target.
func TestFlowShedsBehindHigherTiersOnArrival(t *testing.T) {
	clock := &fakeClock{now: time.Unix(1000, 0)}
	tiers, err := ParseTiers([]byte(`tiers:
- {name: critical, priority: 100, ttft: 1h, maxQueueTime: 2h}
- {name: standard, priority: 50, ttft: 2h, maxQueueTime: 4h}
`))
	if err != nil {
		t.Fatal(err)
	}
	get := func(name string) Tier { tr, _ := tiers.Get(name); return tr }
	g := &capGate{ready: true, capacity: 1000}
	// The pods' first bytes lag the dispatches: the rate is the larger.
	drain := 5.0
	f := NewFlowController(tiers, FlowLimits{}, g.gate, nil).withRates(func() float64 { return drain }, clock.Now)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	// 20 critical requests dispatched over 2 s (19 in the window at the
	// end): all the revision starts.
	for range 20 {
		rel, err := f.Acquire(ctx, get("critical"), 1)
		if err != nil {
			t.Fatalf("critical with capacity: %v", err)
		}
		defer rel()
		clock.now = clock.now.Add(100 * time.Millisecond)
	}
	g.set(true, 0) // the pods are full
	_, err = f.Acquire(ctx, get("standard"), 1)
	var rej *RejectError
	if !errors.As(err, &rej) || rej.Status != http.StatusTooManyRequests || rej.Kind != "shed" {
		t.Fatalf("standard behind critical taking the whole rate: %v, want a 429 shed on arrival", err)
	}
	// A faster drain leaves standard 10.5/s; its budget (1 h) holds
	// thousands, so it queues.
	drain = 20
	go func() { _, _ = f.Acquire(ctx, get("standard"), 1) }()
	waitQueued(t, f, 1)
	if d := queueDeadline(get("standard")); d != 2*time.Hour {
		t.Errorf("standard's queue deadline %v, want its whole target", d)
	}
	if d := queueDeadline(tier(t, "critical")); d != 500*time.Millisecond {
		t.Errorf("default critical's queue deadline %v, want 500ms", d)
	}
	if d := queueDeadline(tier(t, "batch")); d != 10*time.Minute {
		t.Errorf("default batch's queue deadline %v, want its maxQueueTime", d)
	}
}

// Under priority scheduling a request is routed to a pod with a free slot
// where one has it: the engine does not preempt for a slot, so on the full
// pod it would wait for a running request to finish, even within its
// budget. Without priority scheduling the budget alone decides.
// twoPods is an activator on a fixed clock in front of two simulated pods,
// pod-0 and pod-1, and their revision.
func twoPods(t *testing.T, clock *fakeClock, mods ...func(*Options)) (*fixture, *revision) {
	t.Helper()
	var sims []*sim
	for i := range 2 {
		sims = append(sims, startSim(t, fmt.Sprintf("pod-%d", i), engine.RoleBoth, 0.01, nil))
	}
	f := newFixtureOpts(t, func(o *Options) {
		o.Now = clock.Now
		for _, m := range mods {
			m(o)
		}
	}, apis.Spec{}, sims...)
	f.act.mu.Lock()
	defer f.act.mu.Unlock()
	return f, f.act.revs[f.key]
}

func TestOverBudgetPrefersAFreeSlotUnderPriority(t *testing.T) {
	clock := &fakeClock{now: time.Unix(1000, 0)}
	f, rev := twoPods(t, clock)
	// pod-0 runs 8 of 8 of ours and started one 100 ms ago: 10/s, a
	// critical request would start there in 100 ms (within its 250 ms);
	// pod-1 has 8 slots and nothing on it.
	for i, p := range []*pod{rev.pod("pod-0"), rev.pod("pod-1")} {
		p.mu.Lock()
		p.slots = 8
		p.mu.Unlock()
		if i == 0 {
			p.inflight.Store(8)
			p.starts.add(clock.now.Add(-100 * time.Millisecond))
		}
	}
	defer rev.pod("pod-0").inflight.Store(0)
	crit := tier(t, "critical")
	if over := rev.overBudget(crit); over != nil {
		t.Fatalf("without priority scheduling: %v left out, want none (both within the budget)", over)
	}
	f.act.mu.Lock()
	rev.config().PriorityScheduling = true
	f.act.mu.Unlock()
	if over := rev.overBudget(crit); len(over) != 1 || !over["pod-0"] {
		t.Fatalf("under priority scheduling: %v left out, want the full pod-0", over)
	}
	// Both full: none is left out (the request was admitted; the router
	// picks).
	rev.pod("pod-1").inflight.Store(8)
	rev.pod("pod-1").starts.add(clock.now.Add(-100 * time.Millisecond))
	defer rev.pod("pod-1").inflight.Store(0)
	if over := rev.overBudget(crit); over != nil {
		t.Fatalf("both full: %v left out, want none", over)
	}
}

// On one arrival a lower tier is predicted to wait at least as long as a
// higher one: the requests of its tier and the higher ones are ahead of
// it, and the higher tiers' dispatch rate is taken from the rate it starts
// at. So, with equal budgets, wherever a tier is refused on arrival every
// tier below it is refused too, and as the revision's start rate falls
// batch is refused first, then standard, then critical. (The real-time
// TestOverloadShedsBeforeQueuesExplode shows this only as a tendency: its
// tiers' budgets differ and its rate is the machine's.)
func TestFlowShedOrderOnArrival(t *testing.T) {
	clock := &fakeClock{now: time.Unix(1000, 0)}
	// Equal budgets of one hour (in hours, so that no real timer fires).
	tiers, err := ParseTiers([]byte(`tiers:
- {name: critical, priority: 100, ttft: 2h, maxQueueTime: 3h}
- {name: standard, priority: 50, ttft: 2h, maxQueueTime: 3h}
- {name: batch, priority: 0, sheddable: true, maxQueueTime: 1h}
`))
	if err != nil {
		t.Fatal(err)
	}
	order := []string{"critical", "standard", "batch"}
	g := &capGate{ready: true, capacity: 0} // the pods are full
	var drain float64                       // 0 while the queues fill: no rate known, nothing refused
	f := NewFlowController(tiers, FlowLimits{}, g.gate, nil).withRates(func() float64 { return drain }, clock.Now)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	// One request of each tier waits: 1, 2 and 3 requests are ahead of
	// (or level with) a new critical, standard and batch request.
	for i, name := range order {
		tr, _ := tiers.Get(name)
		go func() { _, _ = f.Acquire(ctx, tr, 1) }()
		waitQueued(t, f, i+1)
	}
	refused := func() []bool {
		var r []bool
		for _, name := range order {
			tr, _ := tiers.Get(name)
			f.mu.Lock()
			r = append(r, f.shedEarlyLocked(tr) != nil)
			f.mu.Unlock()
		}
		return r
	}
	hour := time.Hour.Seconds()
	for _, c := range []struct {
		name string
		// higher is the critical tier's dispatch rate (requests/s over
		// the last rateWindow), taken before the lower tiers.
		higher float64
		rates  []float64 // the pods' start rates to try
		want   string    // how many tiers, from the bottom, each refuses
	}{
		// Without higher-tier traffic a request waits (ahead+1)/rate:
		// 2, 3 and 4 requests per hour are the thresholds.
		{"by queue", 0, []float64{0.5 / hour, 2.5 / hour, 3.5 / hour, 4.5 / hour, 1}, "[3 2 1 0 0]"},
		// Critical takes about 5/s of the rate: the lower tiers have what
		// is left (none at that rate), critical all of it.
		// The pods' start rates are added to the rate critical's dispatches
		// show.
		{"behind critical's traffic", 5, []float64{0, 2.5 / hour, 3.5 / hour, 4.5 / hour, 5}, "[2 2 1 0 0]"},
	} {
		// The queues moved within rateWindow (a queue that has not is
		// refused whatever the rate): the clock advances under 2 s.
		f.mu.Lock()
		for i := range int(c.higher * rateWindow.Seconds()) {
			f.markDispatch("critical")
			if i < int(c.higher*rateWindow.Seconds())-1 {
				clock.now = clock.now.Add(time.Duration(float64(time.Second) / c.higher))
			}
		}
		f.mu.Unlock()
		taken := f.dispatched["critical"].rate(clock.now)
		var got []int
		for _, rate := range c.rates {
			drain = taken + rate
			r := refused()
			n := 0
			for i := len(r) - 1; i >= 0 && r[i]; i-- {
				n++
			}
			for i := range r[:len(r)-n] {
				if r[i] {
					t.Errorf("%s, start rate %g/s: refused %v (%v), want every tier below a refused one refused", c.name, rate, r, order)
					break
				}
			}
			got = append(got, n)
		}
		if fmt.Sprint(got) != c.want {
			t.Errorf("%s: tiers refused from the bottom at start rates %v: %v, want %s", c.name, c.rates, got, c.want)
		}
	}
}

// Where the KV cache, not max_num_seqs, bounds a pod full of batch work
// (three running, slots learned as three), a critical request is admitted
// at once under priority scheduling once the pods' max_num_seqs is known
// and the pod runs fewer: vLLM starts it by preempting batch for KV-cache
// blocks. Without max_num_seqs, or with the pod at it (vLLM does not
// preempt for a place among max_num_seqs), the batch work stands in its
// way as before and its predicted wait (1 s at one start a second) is over
// its 250 ms budget.
func TestAdmitsCriticalOnAKVBoundPodOfBatch(t *testing.T) {
	clock := &fakeClock{now: time.Unix(1000, 0)}
	s := startSim(t, "pod-0", engine.RoleBoth, 0.01, nil)
	f := newFixtureOpts(t, func(o *Options) { o.Now = clock.Now }, apis.Spec{}, s)
	f.act.mu.Lock()
	rev := f.act.revs[f.key]
	f.act.mu.Unlock()
	batch := f.act.opts.Tiers.index("batch")
	p := rev.pod("pod-0")
	fill := func(n int64) {
		p.mu.Lock()
		p.slots = int(n)
		p.mu.Unlock()
		p.inflight.Store(n)
		p.active[batch].Store(n)
	}
	defer fill(0)
	p.starts.add(clock.now.Add(-time.Second))
	crit := tier(t, "critical")
	admitted := func() bool {
		ready, ok := rev.gate(crit, 0)
		if !ready {
			t.Fatal("the revision has a ready pod")
		}
		return ok
	}
	fill(3) // three batch requests running, what the KV cache holds
	f.act.mu.Lock()
	rev.config().PriorityScheduling = true
	f.act.mu.Unlock()
	if admitted() {
		t.Fatal("max_num_seqs not known: critical admitted, want it to wait behind the batch work (the old prediction)")
	}
	f.act.mu.Lock()
	rev.config().MaxNumSeqs = 8
	f.act.mu.Unlock()
	if !admitted() {
		t.Fatal("max_num_seqs 8, 3 running batch requests: critical refused, want it admitted (vLLM preempts batch for KV blocks)")
	}
	if over := rev.overBudget(crit); over != nil {
		t.Errorf("the KV-bound pod left out of critical's routing: %v", over)
	}
	fill(8) // at max_num_seqs: no place for it until one ends
	if admitted() {
		t.Fatal("the pod at max_num_seqs: critical admitted, want it to wait (vLLM does not preempt for a place among max_num_seqs)")
	}
	fill(3)
	f.act.mu.Lock()
	rev.config().PriorityScheduling = false
	f.act.mu.Unlock()
	if admitted() {
		t.Fatal("without priority scheduling: critical admitted, want it to wait (first come, first served)")
	}
}

// A queued request past its target (the prediction on arrival was wrong)
// keeps its place while its tier's queue moves, and is refused (429) once
// the queue has not moved for the tier's stuck window: a refusal near the
// head of a moving queue would cost its client the wait and a retry.
func TestFlowQueuedPastTargetWaitsWhileItsQueueMoves(t *testing.T) {
	clock := &fakeClock{now: time.Unix(1000, 0)}
	// A 40 ms target (real timers); the queue's movement is on the fake
	// clock.
	tiers, err := ParseTiers([]byte("tiers:\n- {name: critical, priority: 1, ttft: 40ms, maxQueueTime: 1h}\n"))
	if err != nil {
		t.Fatal(err)
	}
	crit, _ := tiers.Get("critical")
	g := &capGate{ready: true, capacity: 0}
	f := NewFlowController(tiers, FlowLimits{}, g.gate, nil).withRates(func() float64 { return 0 }, clock.Now)
	done := make(chan error, 1)
	go func() { _, err := f.Acquire(context.Background(), crit, 1); done <- err }()
	waitQueued(t, f, 1)
	// Its tier's queue moves (a request of it dispatched now, on the
	// fake clock, which then stands still): past its target it waits on.
	f.mu.Lock()
	f.markDispatch("critical")
	f.mu.Unlock()
	time.Sleep(200 * time.Millisecond) // its target and a few stuck windows, or less on a slow machine: it waits either way
	select {
	case err := <-done:
		t.Fatalf("refused while its queue moves: %v", err)
	default:
	}
	// The queue stops: refused at the next check.
	f.mu.Lock()
	clock.now = clock.now.Add(time.Second)
	f.mu.Unlock()
	select {
	case err := <-done:
		var rej *RejectError
		if !errors.As(err, &rej) || rej.Status != http.StatusTooManyRequests || rej.Kind != "queue_timeout" {
			t.Fatalf("got %v, want a 429 once its queue stopped", err)
		}
	case <-time.After(30 * time.Second): // a hang guard, not a threshold
		t.Fatal("the request waited on after its queue stopped moving")
	}
}

// A request beside one in its prefill (dispatched, no first byte yet) on a
// pod whose slots its metrics never showed: with the engines'
// --max-num-seqs known, the pod has a free place and the request starts at
// once. Without it, the one in prefill counts as queued and, at the low
// start rate of a quiet revision (0.5/s), the second was predicted to wait
// 4 s and refused (429s at 0.5 req/s, found by the real-time KV-offload
// run).
func TestAdmitsBesideARequestInPrefill(t *testing.T) {
	clock := &fakeClock{now: time.Unix(1000, 0)}
	s := startSim(t, "pod-0", engine.RoleBoth, 0.01, nil)
	f := newFixtureOpts(t, func(o *Options) { o.Now = clock.Now }, apis.Spec{}, s)
	f.act.mu.Lock()
	rev := f.act.revs[f.key]
	f.act.mu.Unlock()
	std := tier(t, "standard")
	p := rev.pod("pod-0")
	p.mu.Lock()
	p.slots = 0 // never learned
	p.mu.Unlock()
	i := f.act.opts.Tiers.index("standard")
	p.inflight.Store(1)
	p.queued[i].Store(1)
	defer func() { p.inflight.Store(0); p.queued[i].Store(0) }()
	p.starts.add(clock.now.Add(-2 * time.Second))
	p.starts.add(clock.now.Add(-time.Second))
	admitted := func() bool {
		ready, ok := rev.gate(std, 0)
		if !ready {
			t.Fatal("the revision has a ready pod")
		}
		return ok
	}
	if admitted() {
		t.Fatal("max_num_seqs not known, one request in prefill at 1 start/s: admitted, want the old prediction (a wait over the budget)")
	}
	f.act.mu.Lock()
	rev.config().MaxNumSeqs = 256
	f.act.mu.Unlock()
	if !admitted() {
		t.Fatal("max_num_seqs 256, one request in prefill: refused, want it admitted (255 free places)")
	}
	if over := rev.overBudget(std); len(over) != 0 {
		t.Errorf("the pod left out of routing: %v", over)
	}
}

// A lower tier keeps room for a higher tier's next request only while that
// tier has traffic: without priority scheduling, a standard request
// predicted to start in about 500 ms (within its own 1 s budget, over
// critical's 250 ms) is admitted and routed to the busy pod while no critical request
// was dispatched in the rate window, and held to critical's budget once
// one was. (A revision serving standard requests alone held them in the
// activator and left busy pods out of routing for critical requests that
// never came: the fidelity test's round-robin tail, issue 17.)
func TestReserveOnlyWhileAHigherTierHasTraffic(t *testing.T) {
	clock := &fakeClock{now: time.Unix(1000, 0)}
	f, rev := twoPods(t, clock)
	std := tier(t, "standard")
	si := f.act.opts.Tiers.index("standard")
	// Both pods full (8 of 8 slots) and starting 20 requests in the last
	// 1.9 s (10.5/s); pod-0 has 4 standard requests waiting: a fifth
	// starts there in 475 ms, a sixth in 570 ms. pod-1 has 12 waiting
	// (1.23 s).
	for i, p := range []*pod{rev.pod("pod-0"), rev.pod("pod-1")} {
		p.mu.Lock()
		p.slots = 8
		p.mu.Unlock()
		q := int64(4)
		if i == 1 {
			q = 12
		}
		p.inflight.Store(8 + q)
		p.queued[si].Store(q)
		for k := range 20 { // oldest first: the meter's span starts at its first event
			p.starts.add(clock.now.Add(-time.Duration(19-k) * 100 * time.Millisecond))
		}
	}
	defer func() {
		for _, p := range []*pod{rev.pod("pod-0"), rev.pod("pod-1")} {
			p.inflight.Store(0)
			p.queued[si].Store(0)
		}
	}()
	admitted := func() bool {
		ready, ok := rev.gate(std, 0)
		if !ready {
			t.Fatal("the revision has ready pods")
		}
		return ok
	}
	if !admitted() {
		t.Error("no critical traffic: a standard request predicted to start in 475 ms (its budget 1 s) was held")
	}
	if over := rev.overBudget(std); len(over) != 1 || !over["pod-1"] {
		t.Errorf("no critical traffic: %v left out of routing, want pod-1 alone (over standard's 1 s)", over)
	}
	rev.flow.mu.Lock()
	rev.flow.markDispatch("critical")
	rev.flow.mu.Unlock()
	if admitted() {
		t.Error("critical traffic in the window: a standard request that leaves critical's next request 570 ms was admitted")
	}
	if over := rev.overBudget(std); over != nil {
		t.Errorf("critical traffic: %v left out; want none (every pod over critical's 250 ms: the router picks among all)", over)
	}
}

// A tier table without targets leaves routing to the profile: under
// priority scheduling a full pod is left out only for a target's sake (a
// free slot elsewhere lets a request start at once), so without any, no
// pod is (kn-llmd local's pods schedule by priority: round-robin there
// skipped pods with a queue in bursts, which plan does not model).
func TestNoTargetsNoPodLeftOut(t *testing.T) {
	var kept []string
	for _, l := range strings.Split(DefaultTiersYAML, "\n") {
		if !strings.HasPrefix(strings.TrimSpace(l), "ttft:") {
			kept = append(kept, l)
		}
	}
	noTargets, err := ParseTiers([]byte(strings.Join(kept, "\n")))
	if err != nil {
		t.Fatal(err)
	}
	clock := &fakeClock{now: time.Unix(1000, 0)}
	f, rev := twoPods(t, clock, func(o *Options) { o.Tiers = noTargets })
	f.act.mu.Lock()
	rev.config().PriorityScheduling = true
	f.act.mu.Unlock()
	p := rev.pod("pod-0")
	p.mu.Lock()
	p.slots = 8
	p.mu.Unlock()
	p.inflight.Store(9)
	p.queued[noTargets.index("standard")].Store(1)
	p.starts.add(clock.now.Add(-100 * time.Millisecond))
	defer func() { p.inflight.Store(0); p.queued[noTargets.index("standard")].Store(0) }()
	for _, name := range []string{"critical", "standard", "batch"} {
		tr, _ := noTargets.Get(name)
		if over := rev.overBudget(tr); over != nil {
			t.Errorf("%s without targets: %v left out, want none", name, over)
		}
	}
	// With the default table, a standard request keeps to pod-1's free
	// slot (the check above is not vacuous).
	if over := rev.overBudget(tier(t, "standard")); len(over) != 1 || !over["pod-0"] {
		t.Errorf("standard with its target: %v left out, want the full pod-0", over)
	}
}
