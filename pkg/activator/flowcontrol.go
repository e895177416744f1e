package activator

import (
	"container/list"
	"context"
	"fmt"
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
// dispatches them highest tier first when the gate opens. Nothing waits
// forever (each tier has a queue deadline) and nothing is dropped silently:
// every refusal is a RejectError.
type FlowController struct {
	gate   Gate
	limits FlowLimits
	tiers  []string // highest priority first
	poke   func()

	mu       sync.Mutex
	queues   map[string]*list.List
	queued   int
	bytes    int64
	admitted int
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
	f := &FlowController{gate: gate, limits: limits, tiers: tiers.Names(), poke: poke, queues: map[string]*list.List{}}
	for _, n := range f.tiers {
		f.queues[n] = list.New()
	}
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

// Acquire waits until a request of tier t and size bytes may be dispatched,
// and returns a release function to call when it has finished. It fails
// with a RejectError when the queue is full (lower tiers are shed first),
// when the tier's queue deadline passes, or with ctx's error when the client
// goes away.
func (f *FlowController) Acquire(ctx context.Context, t Tier, size int64) (release func(), err error) {
	f.mu.Lock()
	q, known := f.queues[t.Name]
	if !known {
		f.mu.Unlock()
		return nil, &RejectError{Status: http.StatusBadRequest, Kind: "bad_request", Reason: fmt.Sprintf("unknown SLO tier %q", t.Name)}
	}
	if !f.aheadOf(t) {
		if ready, ok := f.gate(t, f.admitted); ready && ok {
			f.admitted++
			f.mu.Unlock()
			return f.releaser(), nil
		}
	}
	for f.queued+1 > f.limits.MaxQueued || f.bytes+size > f.limits.MaxQueuedBytes {
		if !f.shedBelow(t) {
			f.mu.Unlock()
			status := http.StatusServiceUnavailable
			if t.Sheddable {
				status = http.StatusTooManyRequests
			}
			return nil, &RejectError{Status: status, RetryAfter: time.Second, Kind: "queue_full",
				Reason: fmt.Sprintf("the revision's queue is full (%d requests, %d bytes waiting)", f.queued, f.bytes)}
		}
	}
	w := &waiter{tier: t, size: size, admitted: make(chan struct{})}
	w.elem = q.PushBack(w)
	f.queued++
	f.bytes += size
	ready, _ := f.gate(t, f.admitted)
	f.mu.Unlock()
	if !ready && f.poke != nil && t.Name != BatchTier {
		// Batch work alone wakes a revision only as its batch budget
		// allows: the autoscaler decides at its next tick.
		f.poke()
	}

	timer := time.NewTimer(time.Duration(t.MaxQueueTime))
	defer timer.Stop()
	select {
	case <-w.admitted:
		if w.err != nil {
			return nil, w.err
		}
		return f.releaser(), nil
	case <-ctx.Done():
		err = ctx.Err()
	case <-timer.C:
		err = &RejectError{Status: http.StatusServiceUnavailable, RetryAfter: time.Second, Kind: "queue_timeout",
			Reason: fmt.Sprintf("request waited the %s tier's limit of %v in the activator without capacity",
				t.Name, time.Duration(t.MaxQueueTime))}
		if t.Sheddable {
			err.(*RejectError).Status = http.StatusTooManyRequests
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
// tier, while the gate allows.
func (f *FlowController) dispatchLocked() {
	for _, name := range f.tiers {
		q := f.queues[name]
		for q.Len() > 0 {
			w := q.Front().Value.(*waiter)
			if ready, ok := f.gate(w.tier, f.admitted); !ready || !ok {
				break
			}
			f.removeLocked(w)
			f.admitted++
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
