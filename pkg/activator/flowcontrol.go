package activator

import (
	"container/list"
	"context"
	"fmt"
	"math"
	"net/http"
	"sync"
	"sync/atomic"
	"time"
)

// RejectError is a request the activator will not serve: its HTTP status,
// the Retry-After it suggests and why, in words a client understands.
type RejectError struct {
	Status     int
	RetryAfter time.Duration
	Reason     string
	// Kind is the metric label: shed, queue_full, queue_timeout or
	// bad_request.
	Kind string
}

func (e *RejectError) Error() string { return e.Reason }

// Gate says whether a request of a tier may be dispatched to a revision now,
// given how many requests the flow controller has admitted and not yet seen
// finish. It returns ready=false when the revision has no ready endpoint
// (scale from zero: the request waits and the autoscaler is poked).
type Gate func(t Tier, admitted int) (ready, ok bool)

// FlowLimits bound a revision's queue.
type FlowLimits struct {
	MaxQueued      int   // requests waiting, all tiers together (default 10,000, Knative's)
	MaxQueuedBytes int64 // request bytes waiting (default 1 GiB)
}

// FlowController holds a revision's requests in per-tier FIFO queues and
// dispatches them highest tier first when the gate opens; a tier's queue
// waits while a higher tier's head cannot go. Nothing waits forever (each
// tier has a queue deadline, and once the revision has pods a tier with a
// TTFT target waits at most its target) and nothing is dropped silently:
// every refusal is a RejectError. A request that is predicted not to start
// within its budget (half its target) is refused when it arrives (429 with
// a Retry-After from the drain rate), not after waiting; 503 is for a
// revision without pods.
type FlowController struct {
	gate   Gate
	limits FlowLimits
	tiers  []string // highest priority first
	table  *Tiers
	poke   func()
	// drain is the revision's start rate (requests/s; 0: unknown) and now
	// its clock; see withRates.
	drain func() float64
	now   func() time.Time
	// pods is how many ready decode pods the revision has (the tiers'
	// per-pod caps scale with it); nil counts one.
	pods func() int
	// yieldFree reports whether some ready decode pod has no request of a
	// tier above t without its first byte (Tier.YieldToInteractive); nil:
	// always. yieldHeld is set before it is asked, so that a first byte
	// after the pods were read wakes the queue (wake).
	yieldFree func(t Tier) bool
	yieldHeld atomic.Bool

	mu       sync.Mutex
	queues   map[string]*list.List
	queued   int
	bytes    int64
	admitted int
	// admittedIn counts the admitted requests by tier (Tier.MaxPerPod).
	admittedIn map[string]int
	// unstartedIn counts, for the tiers with a prefill gate
	// (Tier.MaxPrefillPerPod), the admitted requests without their first
	// response byte yet (grant.start).
	unstartedIn map[string]int
	// lastDispatch is when each tier last had a request dispatched, since
	// when its queue has been non-empty.
	lastDispatch map[string]time.Time
	since        map[string]time.Time
	// dispatched counts each tier's dispatches: the rate the tiers above
	// a tier take from the drain rate (shedEarlyLocked), and whether a
	// tier has traffic (higherActive).
	dispatched map[string]*rateMeter
}

type waiter struct {
	tier     Tier
	size     int64
	admitted chan struct{}
	grant    *grant // set when admitted
	err      error
	elem     *list.Element
}

// NewFlowController builds a controller for one revision. poke is called
// (without blocking the caller for long) when a request starts waiting for a
// revision with no ready endpoint.
func NewFlowController(tiers *Tiers, limits FlowLimits, gate Gate, poke func()) *FlowController {
	if limits.MaxQueued <= 0 {
		limits.MaxQueued = 10000
	}
	if limits.MaxQueuedBytes <= 0 {
		limits.MaxQueuedBytes = 1 << 30
	}
	f := &FlowController{gate: gate, limits: limits, tiers: tiers.Names(), table: tiers, poke: poke, queues: map[string]*list.List{},
		drain: func() float64 { return 0 }, now: time.Now,
		lastDispatch: map[string]time.Time{}, since: map[string]time.Time{}, dispatched: map[string]*rateMeter{},
		admittedIn: map[string]int{}, unstartedIn: map[string]int{}}
	for _, n := range f.tiers {
		f.queues[n] = list.New()
		f.dispatched[n] = &rateMeter{}
	}
	return f
}

// withRates gives the controller the revision's start rate (requests per
// second, for predicting queue waits and Retry-After) and its clock.
func (f *FlowController) withRates(drain func() float64, now func() time.Time) *FlowController {
	f.drain, f.now = drain, now
	return f
}

// withPods gives the controller the revision's count of ready decode pods,
// by which the tiers' per-pod caps (Tier.MaxPerPod) scale.
func (f *FlowController) withPods(pods func() int) *FlowController {
	f.pods = pods
	return f
}

// withYield gives the controller the test of Tier.YieldToInteractive: some
// ready decode pod has no request of a higher tier without its first byte.
func (f *FlowController) withYield(free func(t Tier) bool) *FlowController {
	f.yieldFree = free
	return f
}

// atCapLocked reports whether tier t has as many requests admitted as its
// per-pod cap allows the revision's pods, or as many without their first
// byte as its prefill gate allows, or yields and every ready decode pod
// has a higher tier's request without its first byte (f.mu held).
func (f *FlowController) atCapLocked(t Tier) bool {
	if t.MaxPerPod <= 0 && t.MaxPrefillPerPod <= 0 && !t.YieldToInteractive {
		return false
	}
	n := 1
	if f.pods != nil && (t.MaxPerPod > 0 || t.MaxPrefillPerPod > 0) {
		n = f.pods()
	}
	if t.MaxPerPod > 0 && f.admittedIn[t.Name] >= t.MaxPerPod*n {
		return true
	}
	if t.MaxPrefillPerPod > 0 && f.unstartedIn[t.Name] >= t.MaxPrefillPerPod*n {
		return true
	}
	if t.YieldToInteractive && f.yieldFree != nil {
		f.yieldHeld.Store(true) // before the pods' counters are read
		return !f.yieldFree(t)
	}
	return false
}

// wake re-runs the dispatch after a first byte (or a request's end before
// it) on a pod, where a request held by Tier.YieldToInteractive may have
// been waiting for it: a lock only when one was asked since the last wake.
func (f *FlowController) wake() {
	if f.yieldHeld.Swap(false) {
		f.Notify()
	}
}

// admitLocked counts a request of tier t as admitted (f.mu held) and
// returns its grant.
func (f *FlowController) admitLocked(t Tier) *grant {
	f.admitted++
	f.admittedIn[t.Name]++
	g := &grant{f: f, tier: t.Name, prefill: t.MaxPrefillPerPod > 0}
	if g.prefill {
		f.unstartedIn[t.Name]++
	}
	f.markDispatch(t.Name)
	return g
}

// grant is one admitted request's place in the flow controller: start at
// its first response byte (the prefill gate's count), release at its end.
type grant struct {
	f       *FlowController
	tier    string
	prefill bool // counted in unstartedIn until start or release
	started atomic.Bool
	once    sync.Once
}

// start ends the request's prefill for its tier's prefill gate: its first
// response byte came. Idempotent; a no-op for a tier without the gate.
func (g *grant) start() {
	if g == nil || !g.prefill || !g.started.CompareAndSwap(false, true) {
		return
	}
	f := g.f
	f.mu.Lock()
	f.unstartedIn[g.tier]--
	f.dispatchLocked()
	f.mu.Unlock()
}

// release ends the request (idempotent).
func (g *grant) release() {
	g.once.Do(func() {
		f := g.f
		f.mu.Lock()
		f.admitted--
		f.admittedIn[g.tier]--
		if g.prefill && g.started.CompareAndSwap(false, true) {
			f.unstartedIn[g.tier]--
		}
		f.dispatchLocked()
		f.mu.Unlock()
	})
}

// Stats is a snapshot of the queues.
type FlowStats struct {
	Queued   map[string]int
	Bytes    int64
	Admitted int
}

// Stats returns queue lengths per tier and the admitted count.
func (f *FlowController) Stats() FlowStats {
	f.mu.Lock()
	defer f.mu.Unlock()
	s := FlowStats{Queued: map[string]int{}, Bytes: f.bytes, Admitted: f.admitted}
	for n, q := range f.queues {
		s.Queued[n] = q.Len()
	}
	return s
}

// queueBudget is how long a request of tier t is allowed to be predicted
// to wait in the queue, on arrival, while the revision has pods: its
// admission budget where it has a TTFT target, else its queue deadline.
func queueBudget(t Tier) time.Duration {
	if b := admitBudget(t); b > 0 && b < time.Duration(t.MaxQueueTime) {
		return b
	}
	return time.Duration(t.MaxQueueTime)
}

// queueDeadline is how long a request of tier t that was queued waits
// while the revision has pods before it may be refused: its whole TTFT
// target where it has one, else its queue deadline. The decision to refuse
// is made on arrival (shedEarlyLocked); past this bound (the prediction was
// wrong) a request is refused only once its tier's queue stops moving (a
// pod froze, higher tiers take every start), never while it moves.
func queueDeadline(t Tier) time.Duration {
	if t.TTFT > 0 && time.Duration(t.TTFT) < time.Duration(t.MaxQueueTime) {
		return time.Duration(t.TTFT)
	}
	return time.Duration(t.MaxQueueTime)
}

// higherActive reports whether a tier above t with a TTFT target had a
// request dispatched within rateWindow. It does not take f.mu (the gate
// calls it with f.mu held): the meters lock themselves.
func (f *FlowController) higherActive(t Tier, now time.Time) bool {
	for _, name := range f.tiers {
		if name == t.Name {
			return false
		}
		if o, ok := f.table.Get(name); ok && o.TTFT > 0 && f.dispatched[name].rate(now) > 0 {
			return true
		}
	}
	return false
}

// Acquire waits until a request of tier t and size bytes may be dispatched,
// and returns a release function to call when it has finished. It fails
// with a RejectError when the request cannot start within its tier's budget
// (predicted on arrival from the queue ahead of it and the rate left to its
// tier: answered at once), when the queue is full (lower tiers are shed
// first), when it waited its whole target (the prediction was wrong) and
// its tier's queue has stopped moving, or its tier's queue deadline, or
// with ctx's error when the client goes away.
func (f *FlowController) Acquire(ctx context.Context, t Tier, size int64) (release func(), err error) {
	g, err := f.acquire(ctx, t, size, nil)
	if err != nil {
		return nil, err
	}
	return g.release, nil
}

// acquire is Acquire; enter (if not nil) is called once the request is
// dispatched or queued, not when it is refused on arrival: the activator
// counts it as arrived load then (a request refused on arrival never
// reaches a pod and counts apart).
func (f *FlowController) acquire(ctx context.Context, t Tier, size int64, enter func()) (g *grant, err error) {
	if enter == nil {
		enter = func() {}
	}
	f.mu.Lock()
	q, known := f.queues[t.Name]
	if !known {
		f.mu.Unlock()
		return nil, &RejectError{Status: http.StatusBadRequest, Kind: "bad_request", Reason: fmt.Sprintf("unknown SLO tier %q", t.Name)}
	}
	ready, ok := f.gate(t, f.admitted)
	if ready && ok && !f.aheadOf(t) && !f.atCapLocked(t) {
		g := f.admitLocked(t)
		f.mu.Unlock()
		enter()
		return g, nil
	}
	if ready {
		if rej := f.shedEarlyLocked(t); rej != nil {
			f.mu.Unlock()
			return nil, rej
		}
	}
	for f.queued+1 > f.limits.MaxQueued || f.bytes+size > f.limits.MaxQueuedBytes {
		if !f.shedBelow(t) {
			f.mu.Unlock()
			status := http.StatusServiceUnavailable
			if t.Sheddable || ready {
				status = http.StatusTooManyRequests
			}
			return nil, &RejectError{Status: status, RetryAfter: f.retryAfterLocked(t), Kind: "queue_full",
				Reason: fmt.Sprintf("the revision's queue is full (%d requests, %d bytes waiting)", f.queued, f.bytes)}
		}
	}
	w := &waiter{tier: t, size: size, admitted: make(chan struct{})}
	if q.Len() == 0 {
		f.since[t.Name] = f.now()
	}
	w.elem = q.PushBack(w)
	f.queued++
	f.bytes += size
	f.mu.Unlock()
	enter()
	if !ready && f.poke != nil && t.Name != BatchTier {
		// Batch work alone wakes a revision only as its batch budget
		// allows: the autoscaler decides at its next tick.
		f.poke()
	}

	timer := time.NewTimer(time.Duration(t.MaxQueueTime))
	defer timer.Stop()
	var budgetC <-chan time.Time
	var recheck *time.Timer
	if b := queueDeadline(t); b < time.Duration(t.MaxQueueTime) {
		recheck = time.NewTimer(b)
		defer recheck.Stop()
		budgetC = recheck.C
	}
wait:
	for {
		select {
		case <-w.admitted:
			if w.err != nil {
				return nil, w.err
			}
			return w.grant, nil
		case <-ctx.Done():
			err = ctx.Err()
			break wait
		case <-budgetC:
			// Past its target (the prediction on arrival was wrong). It
			// keeps its place while its tier's queue moves: it is near
			// the head, and a refusal now would cost its client the wait
			// it has had and a retry, and count as a slow shed. It is
			// refused once the revision has pods and the queue has not
			// moved for the tier's stuck window (a pod froze, higher
			// tiers take every start); checked again every window. While
			// the revision has no pod (scale from zero) it waits up to
			// the tier's queue deadline.
			f.mu.Lock()
			ready, _ := f.gate(t, f.admitted)
			stuck := f.stuckLocked(t, f.now())
			f.mu.Unlock()
			if ready && stuck > stuckWindow(t) {
				err = &RejectError{Status: http.StatusTooManyRequests, RetryAfter: f.retryAfter(t), Kind: "queue_timeout",
					Reason: fmt.Sprintf("the revision could not start the request within the %s tier's target of %v; its queue has not moved for %v",
						t.Name, queueDeadline(t), stuck.Round(time.Millisecond))}
				break wait
			}
			recheck.Reset(stuckWindow(t))
		case <-timer.C:
			f.mu.Lock()
			ready, _ := f.gate(t, f.admitted)
			f.mu.Unlock()
			rej := &RejectError{Status: http.StatusServiceUnavailable, RetryAfter: time.Second, Kind: "queue_timeout",
				Reason: fmt.Sprintf("request waited the %s tier's limit of %v in the activator without capacity",
					t.Name, time.Duration(t.MaxQueueTime))}
			if t.Sheddable || ready {
				rej.Status, rej.RetryAfter = http.StatusTooManyRequests, f.retryAfter(t)
			}
			err = rej
			break wait
		}
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	select {
	case <-w.admitted:
		// Admitted (or shed) while we gave up: honour a shed, undo an admission.
		if w.err != nil {
			return nil, w.err
		}
		f.admitted--
		f.admittedIn[t.Name]--
		if w.grant.prefill {
			f.unstartedIn[t.Name]--
		}
		f.dispatchLocked()
		return nil, err
	default:
	}
	f.removeLocked(w)
	return nil, err
}

// shedEarlyLocked refuses, on arrival, a request of tier t that is not
// predicted to start within its queue budget. Refusing then costs the
// client a round trip; waiting would have cost it the budget too, and a
// refusal after waiting is no use to it. Two predictions:
//
//   - its tier's queue has not moved for the budget (or rateWindow,
//     whichever is shorter): the revision starts none of them;
//   - strict priority order: it starts after every request queued in its
//     tier and the tiers above, and after the higher tiers' requests that
//     arrive meanwhile. With C the revision's start rate (the pods' first
//     bytes, or the dispatches if more) and H the higher tiers' dispatch
//     rate, it waits (queued ahead + 1) / (C - H); without bound when H
//     takes all of C.
func (f *FlowController) shedEarlyLocked(t Tier) *RejectError {
	budget := queueBudget(t)
	now := f.now()
	if q := f.queues[t.Name]; q.Len() > 0 {
		if stuck := f.stuckLocked(t, now); stuck > stuckWindow(t) {
			return &RejectError{Status: http.StatusTooManyRequests, RetryAfter: f.retryAfterLocked(t), Kind: "shed",
				Reason: fmt.Sprintf("shed: the revision is saturated; the %s tier's queue has not moved for %v", t.Name, stuck.Round(time.Millisecond))}
		}
	}
	ahead, c, left := f.aheadLocked(t, now)
	if c <= 0 {
		return nil // no rate known yet
	}
	wait := time.Duration(math.MaxInt64)
	if left > 0 {
		wait = time.Duration(min(float64(ahead+1)/left*float64(time.Second), float64(math.MaxInt64/2)))
	}
	if wait > budget {
		return &RejectError{Status: http.StatusTooManyRequests, RetryAfter: f.retryAfterLocked(t), Kind: "shed",
			Reason: fmt.Sprintf("shed: the revision is saturated; %d requests wait ahead and %.1f/s of the %.1f/s it starts are left to the %s tier, over its budget of %v",
				ahead, max(left, 0), c, t.Name, budget)}
	}
	return nil
}

// stuckWindow is how long tier t's queue may go without moving before its
// requests are refused: its queue budget, at most rateWindow.
func stuckWindow(t Tier) time.Duration { return min(queueBudget(t), rateWindow) }

// stuckLocked is how long tier t's queue has not moved: since its last
// dispatch, or since it last became non-empty if later (0 when empty).
func (f *FlowController) stuckLocked(t Tier, now time.Time) time.Duration {
	if f.queues[t.Name].Len() == 0 {
		return 0
	}
	moved := f.since[t.Name]
	if d := f.lastDispatch[t.Name]; d.After(moved) {
		moved = d
	}
	return now.Sub(moved)
}

func (f *FlowController) markDispatch(tier string) {
	now := f.now()
	f.lastDispatch[tier] = now
	f.dispatched[tier].add(now)
}

// aheadLocked returns, for a request of tier t arriving now, how many
// requests wait ahead of it in strict priority order (its tier and
// higher), the revision's start rate c (the pods' first bytes, or the
// dispatches if more; 0: unknown) and the part of it left to t once the
// higher tiers have taken theirs.
func (f *FlowController) aheadLocked(t Tier, now time.Time) (ahead int, c, left float64) {
	var higher, dispatched float64
	above := true
	for _, name := range f.tiers {
		r := f.dispatched[name].rate(now)
		dispatched += r
		if above {
			ahead += f.queues[name].Len()
		}
		if name == t.Name {
			above = false
		}
		if above {
			higher += r
		}
	}
	c = math.Max(f.drain(), dispatched)
	return ahead, c, c - higher
}

// retryAfterLocked is when a request of tier t would start: the queue
// ahead of it drained at the rate left to its tier, in whole seconds from
// 1 to 60 (1 while the rate is not known, 60 when the higher tiers take
// all of it).
func (f *FlowController) retryAfterLocked(t Tier) time.Duration {
	ahead, c, left := f.aheadLocked(t, f.now())
	if c <= 0 {
		return time.Second
	}
	s := 60.0
	if left > 0 {
		s = math.Ceil(float64(ahead+1) / left)
	}
	return time.Duration(min(max(s, 1), 60)) * time.Second
}

func (f *FlowController) retryAfter(t Tier) time.Duration {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.retryAfterLocked(t)
}

// Notify re-evaluates the gate; call it when endpoint state changes.
func (f *FlowController) Notify() {
	f.mu.Lock()
	f.dispatchLocked()
	f.mu.Unlock()
}

// dispatchLocked admits waiting requests, highest tier first, FIFO within a
// tier, while the gate allows; a lower tier does not go while a higher
// tier's head waits (it would take the place the head waits for), nor
// while a higher tier's head waits for its per-pod cap or prefill gate.
func (f *FlowController) dispatchLocked() {
	for _, name := range f.tiers {
		q := f.queues[name]
		for q.Len() > 0 {
			w := q.Front().Value.(*waiter)
			if f.atCapLocked(w.tier) {
				return
			}
			if ready, ok := f.gate(w.tier, f.admitted); !ready || !ok {
				return
			}
			f.removeLocked(w)
			w.grant = f.admitLocked(w.tier)
			close(w.admitted)
		}
	}
}

// aheadOf reports whether any request of tier t's priority or higher waits.
func (f *FlowController) aheadOf(t Tier) bool {
	for _, name := range f.tiers {
		if f.queues[name].Len() > 0 {
			return true
		}
		if name == t.Name {
			return false
		}
	}
	return false
}

// shedBelow refuses the newest waiting sheddable request of a tier below
// t's priority, making room; it reports whether it found one.
func (f *FlowController) shedBelow(t Tier) bool {
	for i := len(f.tiers) - 1; i >= 0; i-- {
		name := f.tiers[i]
		if name == t.Name {
			return false
		}
		q := f.queues[name]
		if q.Len() == 0 {
			continue
		}
		w := q.Back().Value.(*waiter)
		if !w.tier.Sheddable {
			continue
		}
		f.removeLocked(w)
		w.err = &RejectError{Status: http.StatusTooManyRequests, RetryAfter: 5 * time.Second, Kind: "shed",
			Reason: fmt.Sprintf("shed: the revision is saturated and higher-priority work needs the %s tier's place in the queue", name)}
		close(w.admitted)
		return true
	}
	return false
}

func (f *FlowController) removeLocked(w *waiter) {
	f.queues[w.tier.Name].Remove(w.elem)
	f.queued--
	f.bytes -= w.size
}
