package activator

import (
	"math"
	"sync"
	"time"

	"github.com/llmd-kn/llmd-kn/pkg/router"
)

// Admission by predicted wait (issue 17, failure 1). A request of a tier
// with a TTFT target is dispatched to a pod only where it is predicted to
// start within half that target; the other half is what it may wait in the
// activator's queue (FlowController). The prediction is Little's law on
// each pod's own figures:
//
//   - its load: the larger of what it reported (running + waiting) and what
//     the activator has in flight on it, plus its share of the requests the
//     flow controller admitted that have not reached a pod yet;
//   - its slots: the most it was seen running once requests had waited
//     (vLLM's max_num_seqs, or what its KV cache holds); unknown until the
//     pod has been seen full;
//   - its queue: the streamed requests the activator sent it that have not
//     had their first byte (in its waiting queue or in prefill), or the
//     waiting count it reported if larger; under priority scheduling, only
//     those of the request's tier and higher are ahead of it;
//   - its start rate: first bytes from it over the last rateWindow, the
//     rate at which its queue drains.
//
// A new request waits nothing while a slot is free, else (queued ahead of
// it + 1) / rate. A full pod where this activator has requests in flight
// and saw no start in the window is predicted to make it wait without
// bound (it may be frozen); one where it has none is someone else's load,
// of unknown rate, and predicted no wait. So the engines' own queues stay
// bounded per pod by what their drain rate can start in time, and the rest
// waits in the activator, where it can be ordered by tier and shed early.

// admitShare is the part of a tier's TTFT target that a request may spend
// waiting in a pod's queue; the same part bounds its wait in the
// activator's queue once the revision has pods.
const admitShare = 0.5

// admitBudget is the longest predicted wait in a pod for a request of tier
// t (0: the tier has no TTFT target and no such bound).
func admitBudget(t Tier) time.Duration {
	return time.Duration(float64(t.TTFT) * admitShare)
}

// budgets returns the admission budgets that apply to tier t: its own (0:
// no TTFT target) and reserve, the smallest budget of a higher tier (0:
// none). A request of t is dispatched only where it starts within its own
// budget and, once it is placed, a request of that higher tier would still
// start within its budget: lower tiers never take the last place a higher
// tier's next request needs (batch, without a target, goes only where a
// critical request would still start in time after it). The reserve
// applies while a higher tier with a target has had a request dispatched
// within rateWindow (FlowController.higherActive): a revision that serves
// one tier is held to that tier's own budget.
func (ts *Tiers) budgets(t Tier) (own, reserve time.Duration) {
	for _, o := range ts.byName {
		if o.Priority <= t.Priority {
			continue
		}
		if ob := admitBudget(o); ob > 0 && (reserve == 0 || ob < reserve) {
			reserve = ob
		}
	}
	return admitBudget(t), reserve
}

// index is tier name's position in the table's order (highest priority
// first), -1 if unknown.
func (ts *Tiers) index(name string) int {
	for i, n := range ts.order {
		if n == name {
			return i
		}
	}
	return -1
}

// reservedShare is the part of a revision's slots that lower tiers leave
// free for a higher tier's next request where the pods schedule by
// priority (keepFree).
const reservedShare = 0.1

// keepFree is how many slots of the pods ws lower tiers leave free under
// priority scheduling: reservedShare of the known slots, rounded down (none
// on pods too small to spare one). vLLM's priority policy preempts lower
// priorities for KV-cache blocks, not for a place among max_num_seqs: on a
// pod full of lower-tier work a critical request waits for one of them to
// finish (issue 17 measured critical's TTFT p90 at 678 ms against 500 ms
// at 3x capacity, all of it that wait). A free slot at its arrival is
// what makes it start at once.
func keepFree(ws []podWait) float64 {
	var slots int
	for _, w := range ws {
		slots += w.slots
	}
	return math.Floor(float64(slots) * reservedShare)
}

// free is how many more requests the pod starts at once (+Inf: slots not
// known and nothing waits there).
func (p podWait) free() float64 {
	if p.slots <= 0 {
		if p.queued < 1 {
			return math.Inf(1)
		}
		return 0
	}
	return math.Max(float64(p.slots)-p.load, 0)
}

// admits reports whether the pods can take a request with these budgets.
// With keep > 0 (priority scheduling, a higher tier with a target above
// it), the request must start at once and leave keep slots free for the
// higher tier: it never waits inside a pod, where it would take the next
// freed slot that a higher tier's request needs, but in the activator's
// queue, which hands freed slots to the highest tier first.
func admits(ws []podWait, own, reserve time.Duration, keep float64) bool {
	best, at := math.Inf(1), -1
	for i, w := range ws {
		if v := w.wait(); v < best {
			best, at = v, i
		}
	}
	if at < 0 || own > 0 && best > own.Seconds() {
		return false
	}
	if keep > 0 {
		if best > 0 {
			return false
		}
		var free float64
		for _, w := range ws {
			free += w.free()
		}
		return free >= keep+1
	}
	if reserve <= 0 {
		return true
	}
	// The request goes to the best pod; a higher tier's next request then
	// has that pod with one more, or any other.
	after := ws[at]
	after.load++
	after.queued++
	after.ahead++
	next := after.wait()
	for i, w := range ws {
		if i != at {
			next = math.Min(next, w.wait())
		}
	}
	return next <= reserve.Seconds()
}

// rateWindow is how far back a pod's start rate looks; rateBuckets divide
// it.
const (
	rateWindow  = 2 * time.Second
	rateBuckets = 20
	bucketWidth = rateWindow / rateBuckets
)

// rateMeter counts events in a sliding window of time buckets. Time is an
// input, so that tests drive it.
type rateMeter struct {
	mu      sync.Mutex
	counts  [rateBuckets]int32
	last    int64 // bucket index (time / bucketWidth) of the latest event
	started time.Time
}

// add records one event at now.
func (m *rateMeter) add(now time.Time) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.started.IsZero() {
		m.started = now
	}
	b := now.UnixNano() / int64(bucketWidth)
	m.advance(b)
	m.counts[b%rateBuckets]++
}

// advance clears the buckets between the latest event and bucket b.
func (m *rateMeter) advance(b int64) {
	if b <= m.last {
		return
	}
	for i := m.last + 1; i <= b && i <= m.last+rateBuckets; i++ {
		m.counts[i%rateBuckets] = 0
	}
	m.last = b
}

// rate returns events per second over the window ending at now (over the
// time since the first event while that is shorter, but at least one
// bucket).
func (m *rateMeter) rate(now time.Time) float64 {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.started.IsZero() {
		return 0
	}
	m.advance(now.UnixNano() / int64(bucketWidth))
	var n int32
	for _, c := range m.counts {
		n += c
	}
	span := min(max(now.Sub(m.started), bucketWidth), rateWindow)
	return float64(n) / span.Seconds()
}

// podWait is one pod's figures for the prediction.
type podWait struct {
	name string
	load float64 // requests on it (running and waiting), pending share included
	// yield is the part of load that yields to the request at once: lower
	// tiers' requests on a pod under priority scheduling that runs fewer
	// than max_num_seqs (vLLM preempts the lowest priority when a running
	// request needs a KV block, then admits the waiting higher tier: a
	// step or two on a KV-bound pod). It does not free a place among
	// max_num_seqs, so free() (the slots kept free) counts all of load.
	yield float64
	// queued is how many wait to start on it; ahead those of them a new
	// request queues behind (all, or under priority scheduling those of
	// its tier and higher).
	queued, ahead float64
	slots         int     // 0: not known
	rate          float64 // starts per second
	mine          int64   // requests this activator has in flight on it
	// byPriority: the pod schedules by priority, so lower tiers' work on
	// it yields to the request (vLLM's priority policy).
	byPriority bool
}

// wait predicts how long a new request would wait on the pod before it
// starts (+Inf: it has a queue that does not drain).
func (p podWait) wait() float64 {
	if p.slots > 0 && p.load-p.yield+1 <= float64(p.slots) || p.slots <= 0 && p.queued < 1 {
		return 0 // a free slot
	}
	// It starts after the requests queued ahead of it, at the next slot
	// that frees after theirs.
	ahead := p.ahead + 1
	if p.rate <= 0 {
		if p.mine == 0 {
			// Its load is someone else's (another activator): no
			// evidence that it does not drain.
			return 0
		}
		if p.byPriority && p.ahead < 1 {
			// Nothing of its tier or higher waits there: it is first in
			// line and what fills the pod is lower tiers' work, which
			// yields to it. No start in the window (long low-priority
			// prompts, a slow machine) is no sign of a frozen pod for it;
			// a frozen pod shows as this tier's own requests waiting.
			return 0
		}
		return math.Inf(1)
	}
	return ahead / p.rate
}

// waits fills dst with the ready decode pods' figures for a request of
// tier t; admitted is the flow controller's count of admitted requests, of
// which those not yet in flight on a pod are spread over the pods. Where
// the pods schedule by priority (vLLM's priority policy, which preempts
// lower priorities), a pod's load is what this activator has in flight on
// it in tier t and higher tiers: the rest does not stand in t's way.
func (rev *revision) waits(dst []podWait, admitted int, t Tier) []podWait {
	now := rev.a.opts.Now()
	upTo := len(rev.a.opts.Tiers.order) - 1
	if rev.config().PriorityScheduling {
		upTo = rev.a.opts.Tiers.index(t.Name)
	}
	// Under priority scheduling, lower tiers' requests on a pod that runs
	// fewer than max_num_seqs yield to t's (podWait.yield): where the KV
	// cache bounds the pod, they fill it without standing in t's way.
	// A pod's slots are what its metrics showed (running with a queue
	// beside it), else the engines' --max-num-seqs when known: without
	// either, a request in its prefill (no first byte yet) counts as
	// queued, and at a low start rate one beside it was predicted to wait
	// seconds on a pod with hundreds of free places (429s at 0.5 req/s).
	known := rev.config().MaxNumSeqs
	maxSeqs := int64(0)
	if upTo < len(rev.a.opts.Tiers.order)-1 {
		maxSeqs = int64(known)
	}
	rev.mu.RLock()
	defer rev.mu.RUnlock()
	var inflight int64
	for _, p := range rev.list {
		if p.spec.Role == router.RolePrefill {
			continue
		}
		p.mu.Lock()
		up, m, slots := p.routableLocked(now), p.metrics, p.slots
		if slots <= 0 && known > 0 {
			// A default (vLLM's at least) may be under the pod's own:
			// what it runs at once it has places for.
			slots = max(known, m.Running)
		}
		p.mu.Unlock()
		if !up {
			continue
		}
		fl := p.inflight.Load()
		inflight += fl
		var queued, ahead int64
		for i := range p.queued {
			q := p.queued[i].Load()
			queued += q
			if i <= upTo {
				ahead += q
			}
		}
		if w := int64(m.Waiting); w > queued {
			// Requests from elsewhere (or not streamed) wait too.
			if upTo == len(p.queued)-1 {
				ahead = w
			}
			queued = w
		}
		load := math.Max(float64(m.Running+m.Waiting), float64(fl))
		var yield float64
		if maxSeqs > 0 {
			var lower, mineQueued int64
			for i := range p.active {
				if i > upTo {
					lower += p.active[i].Load()
				}
			}
			for i := range p.queued {
				mineQueued += p.queued[i].Load()
			}
			if running := max(int64(m.Running), fl-mineQueued); running < maxSeqs {
				yield = math.Min(float64(lower), load)
			}
		}
		dst = append(dst, podWait{name: p.spec.Name, load: load, yield: yield,
			queued: float64(queued), ahead: float64(ahead), slots: slots, rate: p.starts.rate(now), mine: fl,
			byPriority: upTo < len(p.queued)-1})
	}
	if pending := int64(admitted) - inflight; pending > 0 && len(dst) > 0 {
		share := float64(pending) / float64(len(dst))
		for i := range dst {
			dst[i].load += share
			dst[i].queued += share
			dst[i].ahead += share
		}
	}
	return dst
}

// overBudget names the pods where a request of tier t is predicted to wait
// longer than its budget, for the router to leave out; nil when the tier
// has no target or no pod is within it (the flow controller admitted the
// request, so the router then picks among all). Where the pods schedule by
// priority and one has a free slot, the budget is 0: a pod without one
// makes the request wait for a running request to finish, as the engine
// does not preempt for a slot (keepFree).
func (rev *revision) overBudget(t Tier) map[string]bool {
	own, reserve := rev.a.opts.Tiers.budgets(t)
	if own == 0 && reserve == 0 {
		// No target at or above the tier: nothing to keep room for, and
		// the routing profile alone picks (a free slot is preferred only
		// for a target's sake).
		return nil
	}
	priority := rev.config().PriorityScheduling
	if priority || reserve > 0 && !rev.flow.higherActive(t, rev.a.opts.Now()) {
		// Under priority scheduling lower tiers yield; otherwise room
		// is kept only while a higher tier has traffic (gate).
		reserve = 0
	}
	budget := own.Seconds()
	if reserve > 0 && (own == 0 || reserve < own) {
		budget = reserve.Seconds()
	}
	if budget <= 0 && !priority {
		return nil
	}
	ws := rev.waits(nil, 0, t)
	if priority {
		for _, w := range ws {
			if w.wait() == 0 {
				budget = 0
				break
			}
		}
	}
	var over map[string]bool
	for _, w := range ws {
		if w.wait() > budget {
			if over == nil {
				over = map[string]bool{}
			}
			over[w.name] = true
		}
	}
	if len(over) == len(ws) {
		return nil
	}
	return over
}

// drain is the revision's start rate: requests per second its pods began
// answering over the last rateWindow.
func (rev *revision) drain() float64 {
	now := rev.a.opts.Now()
	rev.mu.RLock()
	defer rev.mu.RUnlock()
	var r float64
	for _, p := range rev.list {
		if p.spec.Role != router.RolePrefill {
			r += p.starts.rate(now)
		}
	}
	return r
}
