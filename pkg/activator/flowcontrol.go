package activator

import (
	"container/list"
	"context"
	"fmt"
	"math"
	"net/http"
	"sync"
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
// TTFT target waits at most its admission budget) and nothing is dropped
// silently: every refusal is a RejectError. A request that is predicted not
// to start in time is refused when it arrives (429 with a Retry-After from
// the drain rate), not after waiting; 503 is for a revision without pods.
type FlowController struct {
	gate   Gate
	limits FlowLimits
	tiers  []string // highest priority first
	poke   func()
	// drain is the revision's start rate (requests/s; 0: unknown) and now
	// its clock; see withRates.
	drain func() float64
	now   func() time.Time

	mu       sync.Mutex
	queues   map[string]*list.List
	queued   int
	bytes    int64
	admitted int
	// lastDispatch is when each tier last had a request dispatched, since
	// when its queue has been non-empty.
	lastDispatch map[string]time.Time
	since        map[string]time.Time
	// dispatched counts each tier's dispatches: while its queue is
	// backlogged, the rate at which it drains (what higher tiers leave).
	dispatched map[string]*rateMeter
}

type waiter struct {
	tier     Tier
	size     int64
	admitted chan struct{}
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
	f := &FlowController{gate: gate, limits: limits, tiers: tiers.Names(), poke: poke, queues: map[string]*list.List{},
		drain: func() float64 { return 0 }, now: time.Now,
		lastDispatch: map[string]time.Time{}, since: map[string]time.Time{}, dispatched: map[string]*rateMeter{}}
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

// queueBudget is how long a request of tier t may wait in the queue while
// the revision has pods: its admission budget where it has a TTFT target,
// else its queue deadline.
func queueBudget(t Tier) time.Duration {
	if b := admitBudget(t); b > 0 && b < time.Duration(t.MaxQueueTime) {
		return b
	}
	return time.Duration(t.MaxQueueTime)
}

// Acquire waits until a request of tier t and size bytes may be dispatched,
// and returns a release function to call when it has finished. It fails
// with a RejectError when the request cannot start within its tier's budget
// (predicted on arrival from the queue ahead of it and the drain rate, or
// its budget passed while it waited), when the queue is full (lower tiers
// are shed first), when the tier's queue deadline passes, or with ctx's
// error when the client goes away.
func (f *FlowController) Acquire(ctx context.Context, t Tier, size int64) (release func(), err error) {
	f.mu.Lock()
	q, known := f.queues[t.Name]
	if !known {
		f.mu.Unlock()
		return nil, &RejectError{Status: http.StatusBadRequest, Kind: "bad_request", Reason: fmt.Sprintf("unknown SLO tier %q", t.Name)}
	}
	ready, ok := f.gate(t, f.admitted)
	if ready && ok && !f.aheadOf(t) {
		f.admitted++
		f.markDispatch(t.Name)
		f.mu.Unlock()
		return f.releaser(), nil
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
			return nil, &RejectError{Status: status, RetryAfter: f.retryAfterLocked(), Kind: "queue_full",
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
	if !ready && f.poke != nil && t.Name != BatchTier {
		// Batch work alone wakes a revision only as its batch budget
		// allows: the autoscaler decides at its next tick.
		f.poke()
	}

	timer := time.NewTimer(time.Duration(t.MaxQueueTime))
	defer timer.Stop()
	var budgetC <-chan time.Time
	if b := queueBudget(t); b < time.Duration(t.MaxQueueTime) {
		bt := time.NewTimer(b)
		defer bt.Stop()
		budgetC = bt.C
	}
wait:
	for {
		select {
		case <-w.admitted:
			if w.err != nil {
				return nil, w.err
			}
			return f.releaser(), nil
		case <-ctx.Done():
			err = ctx.Err()
			break wait
		case <-budgetC:
			// Past its budget: refused if the revision has pods (they
			// could not take it in time); while it has none (scale from
			// zero) it waits up to the tier's queue deadline.
			budgetC = nil
			f.mu.Lock()
			ready, _ := f.gate(t, f.admitted)
			f.mu.Unlock()
			if ready {
				err = &RejectError{Status: http.StatusTooManyRequests, RetryAfter: f.retryAfter(), Kind: "queue_timeout",
					Reason: fmt.Sprintf("the revision could not start the request within the %s tier's budget of %v", t.Name, queueBudget(t))}
				break wait
			}
		case <-timer.C:
			f.mu.Lock()
			ready, _ := f.gate(t, f.admitted)
			f.mu.Unlock()
			rej := &RejectError{Status: http.StatusServiceUnavailable, RetryAfter: time.Second, Kind: "queue_timeout",
				Reason: fmt.Sprintf("request waited the %s tier's limit of %v in the activator without capacity",
					t.Name, time.Duration(t.MaxQueueTime))}
			if t.Sheddable || ready {
				rej.Status, rej.RetryAfter = http.StatusTooManyRequests, f.retryAfter()
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
		f.dispatchLocked()
		return nil, err
	default:
	}
	f.removeLocked(w)
	return nil, err
}

// shedEarlyLocked refuses, on arrival, a request of tier t that is not
// predicted to start within its queue budget: its tier's queue has not
// moved for the budget (or rateWindow, whichever is shorter), or the
// requests ahead of it (its tier and higher) at the revision's drain rate
// would take longer than the budget; once its tier's queue has been
// backlogged for rateWindow, its own queue at its own dispatch rate. Refusing then costs the client
// nothing but a round trip; waiting would have cost it the budget too.
func (f *FlowController) shedEarlyLocked(t Tier) *RejectError {
	budget := queueBudget(t)
	now := f.now()
	if q := f.queues[t.Name]; q.Len() > 0 {
		moved := f.since[t.Name]
		if d := f.lastDispatch[t.Name]; d.After(moved) {
			moved = d
		}
		if stuck := now.Sub(moved); stuck > min(budget, rateWindow) {
			return &RejectError{Status: http.StatusTooManyRequests, RetryAfter: f.retryAfterLocked(), Kind: "shed",
				Reason: fmt.Sprintf("shed: the revision is saturated; the %s tier's queue has not moved for %v", t.Name, stuck.Round(time.Millisecond))}
		}
	}
	d := f.drain()
	ahead := 0
	for _, name := range f.tiers {
		ahead += f.queues[name].Len()
		if name == t.Name {
			break
		}
	}
	if q := f.queues[t.Name]; q.Len() > 0 && now.Sub(f.since[t.Name]) >= rateWindow {
		// Backlogged for the whole window: its queue drains at its own
		// dispatch rate, what the higher tiers leave it.
		ahead, d = q.Len(), f.dispatched[t.Name].rate(now)
	}
	if d <= 0 {
		return nil
	}
	if wait := time.Duration(float64(ahead+1) / d * float64(time.Second)); wait > budget {
		return &RejectError{Status: http.StatusTooManyRequests, RetryAfter: f.retryAfterLocked(), Kind: "shed",
			Reason: fmt.Sprintf("shed: the revision is saturated; %d requests wait ahead at %.1f/s, over the %s tier's budget of %v",
				ahead, d, t.Name, budget)}
	}
	return nil
}

func (f *FlowController) markDispatch(tier string) {
	now := f.now()
	f.lastDispatch[tier] = now
	f.dispatched[tier].add(now)
}

// retryAfterLocked is when the revision's queue will have drained at its
// current start rate, in whole seconds from 1 to 60 (1 while the rate is
// not known).
func (f *FlowController) retryAfterLocked() time.Duration {
	d := f.drain()
	if d <= 0 {
		return time.Second
	}
	s := math.Ceil(float64(f.queued+1) / d)
	return time.Duration(min(max(s, 1), 60)) * time.Second
}

func (f *FlowController) retryAfter() time.Duration {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.retryAfterLocked()
}

func (f *FlowController) releaser() func() {
	var once sync.Once
	return func() {
		once.Do(func() {
			f.mu.Lock()
			f.admitted--
			f.dispatchLocked()
			f.mu.Unlock()
		})
	}
}

// Notify re-evaluates the gate; call it when endpoint state changes.
func (f *FlowController) Notify() {
	f.mu.Lock()
	f.dispatchLocked()
	f.mu.Unlock()
}

// dispatchLocked admits waiting requests, highest tier first, FIFO within a
// tier, while the gate allows; a lower tier does not go while a higher
// tier's head waits (it would take the place the head waits for).
func (f *FlowController) dispatchLocked() {
	for _, name := range f.tiers {
		q := f.queues[name]
		for q.Len() > 0 {
			w := q.Front().Value.(*waiter)
			if ready, ok := f.gate(w.tier, f.admitted); !ready || !ok {
				return
			}
			f.removeLocked(w)
			f.admitted++
			f.markDispatch(name)
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
