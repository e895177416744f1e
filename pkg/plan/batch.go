package plan

import (
	"errors"
	"fmt"
	"math"
	"time"

	"github.com/llmd-kn/llmd-kn/pkg/bench"
	"github.com/llmd-kn/llmd-kn/pkg/engine"
	"github.com/llmd-kn/llmd-kn/pkg/router"
	"github.com/llmd-kn/llmd-kn/pkg/workload"
)

// BatchConfig is a backlog of batch-tier work run beside the workload, as
// the activator's batch front runs a Batch API file: Concurrency requests
// outstanding at a time from Start, the next one sent as one ends, every
// request held by the activator in the batch tier (dispatched only while
// the pool's saturation is under MaxSaturation and no interactive request
// waits; MaxQueueTime bounds the wait, then the request is retried after
// RetryAfter, as both batch ways in retry a 429 or 503). The zero value
// (Requests 0) runs no batch work.
type BatchConfig struct {
	// Requests is the backlog's size; InputLen and OutputLen its requests'
	// prompt and output lengths (a random dataset's, seeded by Seed).
	Requests            int
	InputLen, OutputLen int
	// Concurrency is how many are outstanding at once (the Batch API's
	// per-batch concurrency).
	Concurrency int
	// Start is when the backlog is submitted; Until when the batch front
	// stops sending new requests (0: when the workload's last request has
	// ended). Requests sent by then still finish.
	Start, Until time.Duration
	// MaxSaturation, MaxQueueTime: the batch tier's limits (0.8, 10 min:
	// the activator's default tier table); RetryAfter the wait before a
	// refused request is sent again (1 s).
	MaxSaturation float64
	MaxQueueTime  time.Duration
	RetryAfter    time.Duration
	// MaxPerPod is the batch tier's per-pod cap (the activator's tier
	// table, maxPerPod): batch requests are dispatched only while fewer
	// than MaxPerPod per ready decode engine are in flight, each to an
	// engine with fewer than MaxPerPod of them. 0: no cap.
	MaxPerPod int
	// MaxPrefillPerPod is the batch tier's prefill gate (the tier table's
	// maxPrefillPerPod): batch requests are dispatched only while fewer
	// than MaxPrefillPerPod per ready decode engine are sent without their
	// first token yet, each to an engine with fewer than that of them
	// (at most that many batch prefills share an engine's steps). 0: none.
	MaxPrefillPerPod int
	// YieldToInteractive holds batch off an engine while an interactive
	// request sent to it has no first token yet (waiting or in prefill
	// there); batch waits while every engine has one (the tier table's
	// yieldToInteractive). The activator counts to the first response
	// byte, which for a non-streamed answer is its end; the plan counts
	// every request to its first token (as for MaxPrefillPerPod).
	YieldToInteractive bool
	// Dataset, when set, gives the backlog's requests in order (item i is
	// its request i; set Requests to its length not to repeat prompts)
	// instead of a random dataset of InputLen/OutputLen: a capacity run of
	// a trace's own requests.
	Dataset workload.Dataset `json:"-"`
}

// DefaultBatch is a backlog of n requests with the batch tier's defaults
// (activator.DefaultTiersYAML: maxSaturation 0.8, maxPerPod 32, maxQueueTime
// 10m) and the Batch API's concurrency (batch.DefaultBatchConcurrency).
func DefaultBatch(n int) BatchConfig {
	return BatchConfig{Requests: n, InputLen: 1024, OutputLen: 256, Concurrency: 256,
		MaxSaturation: 0.8, MaxPerPod: 32, MaxQueueTime: 10 * time.Minute, RetryAfter: time.Second}
}

// Tiers of a plan run's requests (SLO tier names in the router's request,
// vLLM priorities under the priority policy, as the activator's default
// tier table maps them).
const (
	tierStandard uint8 = iota
	tierCritical
	tierBatch
)

var tierNames = [...]string{tierStandard: "standard", tierCritical: "critical", tierBatch: "batch"}
var tierPriority = [...]int{tierStandard: 50, tierCritical: 0, tierBatch: 100}

// criticalOf reports whether the workload request with index i is sent in
// the critical tier: a fixed hash of the index under share, so that two
// runs of one workload split it alike.
func criticalOf(i int, share float64) bool {
	if share <= 0 {
		return false
	}
	h := uint64(i)*0x9E3779B97F4A7C15 + 0x632BE59BD9B4E019
	h ^= h >> 29
	h *= 0xBF58476D1CE4E5B9
	h ^= h >> 32
	return float64(h%1_000_000) < share*1_000_000
}

func (b *BatchConfig) validate() error {
	if b.Requests == 0 {
		return nil
	}
	switch {
	case b.Requests < 0:
		return fmt.Errorf("batch: requests must not be negative, got %d", b.Requests)
	case b.Concurrency < 1:
		return fmt.Errorf("batch: concurrency must be positive, got %d", b.Concurrency)
	case b.InputLen < 1 || b.OutputLen < 1:
		return fmt.Errorf("batch: input and output lengths must be positive, got %d and %d", b.InputLen, b.OutputLen)
	case b.Start < 0 || b.Until < 0:
		return errors.New("batch: start and until must not be negative")
	case b.MaxSaturation < 0 || math.IsNaN(b.MaxSaturation) || math.IsInf(b.MaxSaturation, 0):
		return fmt.Errorf("batch: max saturation must be a non-negative number, got %v", b.MaxSaturation)
	case b.MaxQueueTime <= 0:
		return fmt.Errorf("batch: max queue time must be positive, got %s", b.MaxQueueTime)
	case b.MaxPerPod < 0:
		return fmt.Errorf("batch: max per pod must not be negative, got %d", b.MaxPerPod)
	case b.MaxPrefillPerPod < 0:
		return fmt.Errorf("batch: max prefill per pod must not be negative, got %d", b.MaxPrefillPerPod)
	case b.RetryAfter <= 0:
		return fmt.Errorf("batch: retry-after must be positive, got %s", b.RetryAfter)
	}
	return nil
}

// BatchResult is what the batch backlog did in a run.
type BatchResult struct {
	// Records has one entry per attempt, in the order they were sent.
	Records []bench.Record
	// Completed counts the backlog's requests served; Retries the
	// attempts refused for want of capacity (429, 503) and sent again;
	// Failed the requests refused for themselves (an error line).
	Completed, Retries, Failed int
	// PromptTokens and CompletionTokens sum over the completed requests.
	PromptTokens, CompletionTokens int64
	// Started is when the first batch request was sent, LastSent the
	// last; Drained when the backlog ran out (0 when it did not within the
	// run); End when the last batch request ended.
	Started, LastSent, Drained, End time.Duration
}

// retryItem is a refused backlog item and when it may be sent again.
type retryItem struct {
	item int
	at   time.Duration
}

// batchPrompts bounds the distinct prompts of a backlog.
const batchPrompts = 100_000

// batchState is the batch front of a run.
type batchState struct {
	cfg     BatchConfig
	ds      workload.Dataset
	next    int         // next backlog item to send
	retry   []retryItem // items refused, to send again from their time
	out     int         // requests outstanding (queued or in flight)
	stopped bool
	started bool
	res     BatchResult
}

func newBatchState(cfg BatchConfig, seed uint64) (*batchState, error) {
	if cfg.Dataset != nil {
		if cfg.Dataset.Len() == 0 {
			return nil, errors.New("batch: the dataset has no requests")
		}
		return &batchState{cfg: cfg, ds: cfg.Dataset}, nil
	}
	// Distinct prompts for the first batchPrompts items; later items reuse
	// them in turn (only capacity runs go that far).
	ds, err := workload.NewRandom(workload.RandomConfig{NumPrompts: min(cfg.Requests, batchPrompts), InputLen: cfg.InputLen, OutputLen: cfg.OutputLen}, seed^0xba7c4)
	if err != nil {
		return nil, fmt.Errorf("batch: %w", err)
	}
	return &batchState{cfg: cfg, ds: ds}, nil
}

// batchIdle reports whether the batch front has nothing more to do.
func (s *sim) batchIdle() bool {
	b := s.batch
	if b == nil || b.stopped {
		return true
	}
	if b.cfg.Until == 0 {
		return b.out == 0 // the workload is done: the front stops at its next send
	}
	return b.out == 0 && b.next >= b.cfg.Requests && len(b.retry) == 0
}

// batchLaunch sends batch requests until Concurrency are outstanding, the
// backlog is empty, or the front has stopped (Until, or the workload's end).
func (s *sim) batchLaunch() {
	b := s.batch
	if b == nil || b.stopped {
		return
	}
	if (b.cfg.Until > 0 && s.now >= b.cfg.Until) || (b.cfg.Until == 0 && s.srcDone && s.active == b.out) {
		b.stopped = true
		return
	}
	for b.out < b.cfg.Concurrency {
		var item int
		switch {
		case len(b.retry) > 0 && b.retry[0].at <= s.now:
			// Only once its wait is over: a refusal within this loop
			// (a full queue) must not be sent again at the same instant.
			item = b.retry[0].item
			b.retry = b.retry[1:]
		case b.next < b.cfg.Requests:
			item = b.next
			b.next++
		default:
			if b.res.Drained == 0 && b.out == 0 && len(b.retry) == 0 {
				b.res.Drained = s.now
			}
			return
		}
		if !b.started {
			b.started, b.res.Started = true, s.now
		}
		if n := b.ds.Len(); n > 0 {
			item %= n
		}
		r := b.ds.Request(item)
		b.res.LastSent = s.now
		r.At, r.Index = s.now, item
		b.out++
		s.admit(r, tierBatch)
	}
}

// batchEnded is the end of a batch attempt: a success counts, a refusal
// for want of capacity is sent again after RetryAfter, any other failure
// is final; each frees a slot for the next.
func (s *sim) batchEnded(rec *bench.Record) {
	b := s.batch
	if b == nil {
		return
	}
	b.out--
	b.res.End = s.now
	delay := time.Duration(0)
	switch {
	case rec.OK():
		b.res.Completed++
		b.res.PromptTokens += int64(rec.PromptTokens)
		b.res.CompletionTokens += int64(rec.CompletionTokens)
	case rec.Status == 429 || rec.Status == 503:
		// Refused for want of capacity: sent again, as both batch ways
		// in retry a 429 or 503.
		b.res.Retries++
		delay = b.cfg.RetryAfter
		b.retry = append(b.retry, retryItem{item: rec.Index, at: s.now + delay})
	default:
		// Refused for itself (too long for the model): an error line.
		b.res.Failed++
	}
	s.q.schedule(s.now+delay, evBatch, 0, 0, 0)
}

// admitBatch is flow control for a batch request (the activator's batch
// tier): dispatched at once when no request waits and the pool's
// saturation is under the batch tier's limit, else held behind every
// interactive request; it never pokes the scaler (a revision at zero wakes
// for batch work at the autoscaler's tick, within its batch budget).
func (s *sim) admitBatch(f *flight) {
	fc := s.cfg.Flow
	if s.queued == 0 && s.bqueued == 0 && s.batchGate() {
		s.admitted++
		s.dispatch(f)
		return
	}
	if s.queued+s.bqueued+1 > fc.MaxQueued {
		s.fail(f, bench.ErrHTTP4xx, 429, fmt.Sprintf("the revision's queue is full (%d requests waiting)", s.queued+s.bqueued))
		return
	}
	s.bfifo = append(s.bfifo, f.n)
	f.inQueue = true
	s.bqueued++
	s.q.schedule(s.now+s.cfg.Batch.MaxQueueTime, evQueueTimeout, 0, f.n, 0)
}

// dispatchBatch admits waiting batch requests, in order, once no
// interactive request waits and while the batch tier's gate allows.
func (s *sim) dispatchBatch() {
	if s.batch == nil || s.queued > 0 {
		return
	}
	for s.bfifoHead < len(s.bfifo) {
		f := s.flight(s.bfifo[s.bfifoHead])
		if f == nil || f.stage != stQueued || !f.inQueue {
			s.bfifoHead++
			continue
		}
		if !s.batchGate() {
			break
		}
		s.bfifoHead++
		f.inQueue = false
		s.bqueued--
		s.admitted++
		s.dispatch(f)
	}
	if s.bfifoHead == len(s.bfifo) {
		s.bfifo, s.bfifoHead = s.bfifo[:0], 0
	} else if s.bfifoHead > 4096 && s.bfifoHead > len(s.bfifo)/2 {
		s.bfifo = s.bfifo[:copy(s.bfifo, s.bfifo[s.bfifoHead:])]
		s.bfifoHead = 0
	}
}

// priority is vLLM's priority field for f under the priority policy (its
// tier's, as the activator sends it), 0 otherwise.
func (s *sim) priority(f *flight) int {
	if s.cfg.Engine.Policy != engine.PolicyPriority {
		return 0
	}
	return tierPriority[f.tier]
}

// splitTiers moves the batch front's records out of res.Records into
// res.Batch and names the workload records' tiers when they were split.
func (s *sim) splitTiers(res *Result) {
	if s.tierOf == nil {
		return
	}
	var recs []bench.Record
	var tiers []string
	if s.batch != nil {
		res.Batch = &s.batch.res
		recs = make([]bench.Record, 0, len(s.records)-s.batchArrived)
	}
	for i := range s.records {
		t := s.tierOf[i]
		switch {
		case t == tierBatch:
			res.Batch.Records = append(res.Batch.Records, s.records[i])
		case s.batch != nil:
			recs = append(recs, s.records[i])
		}
		if t != tierBatch && s.cfg.CriticalShare > 0 {
			tiers = append(tiers, tierNames[t])
		}
	}
	if s.batch != nil {
		res.Records = recs
	}
	res.Tiers = tiers
}

// batchGate is the batch tier's admission test (revision.gate for a tier
// with maxSaturation, maxPerPod and maxPrefillPerPod): the pool's
// saturation under the tier's limit and, with a per-pod cap or prefill
// gate, fewer batch requests admitted (without a first token) than the cap
// (the gate) times the ready decode engines; yielding, some ready decode
// engine with no interactive request awaiting its first token.
func (s *sim) batchGate() bool {
	if !s.gateAt(s.cfg.Batch.MaxSaturation) {
		return false
	}
	c, p, y := s.cfg.Batch.MaxPerPod, s.cfg.Batch.MaxPrefillPerPod, s.cfg.Batch.YieldToInteractive
	if c <= 0 && p <= 0 && !y {
		return true
	}
	up, free := 0, false
	for _, n := range s.nodes {
		if n.role != router.RolePrefill && n.up() {
			up++
			free = free || n.interPrefill == 0
		}
	}
	return (c <= 0 || s.batchInFlight < c*up) && (p <= 0 || s.batchPrefill < p*up) && (!y || free)
}

// batchRoom reports whether decode engine n may take one more batch request
// under the per-pod cap, the prefill gate and yielding.
func (s *sim) batchRoom(n *node) bool {
	b := &s.cfg.Batch
	return (b.MaxPerPod <= 0 || n.batch < b.MaxPerPod) && (b.MaxPrefillPerPod <= 0 || n.batchPrefill < b.MaxPrefillPerPod) &&
		(!b.YieldToInteractive || n.interPrefill == 0)
}

// underBatchCap leaves out of a batch request's endpoints (the snapshot in
// s.eps and s.epNode) the decode engines without room for it (batchRoom),
// as the activator's router does; all of them when no decode engine has
// room.
func (s *sim) underBatchCap(eps []router.Endpoint) []router.Endpoint {
	b := &s.cfg.Batch
	if b.MaxPerPod <= 0 && b.MaxPrefillPerPod <= 0 && !b.YieldToInteractive {
		return eps
	}
	room := false
	for i := range eps {
		if n := s.nodes[s.epNode[i]]; n.role != router.RolePrefill && s.batchRoom(n) {
			room = true
			break
		}
	}
	if !room {
		return eps
	}
	k := 0
	for i := range eps {
		if n := s.nodes[s.epNode[i]]; n.role == router.RolePrefill || s.batchRoom(n) {
			eps[k], s.epNode[k] = eps[i], s.epNode[i]
			k++
		}
	}
	s.eps, s.epNode = eps[:k], s.epNode[:k]
	return s.eps
}
