package plan

import (
	"container/heap"
	"strconv"
	"time"
)

// evKind is what an event does. Its value is also the order of events at
// the same instant: outputs of a finished step first, so that what they
// cause (a decode request after a prefill) and what arrives at that instant
// all join the next step, which starts last (evKick).
type evKind uint8

const (
	evStepEnd      evKind = iota // an engine step ends: deliver its outputs
	evKV                         // an engine's KV events reach the router
	evStart                      // a new engine comes up
	evScrape                     // the activator scrapes an engine's metrics
	evSend                       // a request reaches an engine (after Overhead)
	evArrival                    // the next workload request arrives
	evQueueTimeout               // a request's flow-control deadline
	evTimeout                    // a request's client timeout
	evScale                      // the scaler's tick
	evBatch                      // the batch front sends (backlog start, a slot freed, a retry)
	evKick                       // an idle engine with work starts a step
)

// periodic events recur for as long as the run lasts; the others are work.
func (k evKind) periodic() bool { return k == evScrape || k == evScale }

type event struct {
	at   time.Duration
	kind evKind
	seq  uint64
	// node is the engine of engine events; req the request of request
	// events; stage which send (prefill or decode) for evSend.
	node  int32
	stage uint8
	req   int
}

// eventQueue is a min-heap of events by (at, kind, seq), through
// container/heap. Events are pointers from a free list, so pushing one
// into the heap's interface does not allocate.
type eventQueue struct {
	h    []*event
	free []*event
	seq  uint64
	work int // pending non-periodic events
}

func (q *eventQueue) Len() int { return len(q.h) }

func (q *eventQueue) Less(i, j int) bool {
	a, b := q.h[i], q.h[j]
	if a.at != b.at {
		return a.at < b.at
	}
	if a.kind != b.kind {
		return a.kind < b.kind
	}
	return a.seq < b.seq
}

func (q *eventQueue) Swap(i, j int) { q.h[i], q.h[j] = q.h[j], q.h[i] }

func (q *eventQueue) Push(x any) { q.h = append(q.h, x.(*event)) }

func (q *eventQueue) Pop() any {
	n := len(q.h) - 1
	e := q.h[n]
	q.h[n] = nil
	q.h = q.h[:n]
	return e
}

// schedule queues an event.
func (q *eventQueue) schedule(at time.Duration, kind evKind, node int, req int, stage uint8) {
	var e *event
	if n := len(q.free); n > 0 {
		e = q.free[n-1]
		q.free = q.free[:n-1]
	} else {
		e = new(event)
	}
	q.seq++
	*e = event{at: at, kind: kind, seq: q.seq, node: int32(node), req: req, stage: stage}
	if !kind.periodic() {
		q.work++
	}
	heap.Push(q, e)
}

// next removes the earliest event; the caller gives it back with recycle.
func (q *eventQueue) next() *event {
	e := heap.Pop(q).(*event)
	if !e.kind.periodic() {
		q.work--
	}
	return e
}

func (q *eventQueue) recycle(e *event) { q.free = append(q.free, e) }

func itoa(n int) string { return strconv.Itoa(n) }
