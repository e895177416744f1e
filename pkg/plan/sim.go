package plan

import (
	"context"
	"errors"
	"fmt"
	"math"
	"time"

	"github.com/llmd-kn/llmd-kn/pkg/bench"
	"github.com/llmd-kn/llmd-kn/pkg/engine"
	"github.com/llmd-kn/llmd-kn/pkg/router"
	"github.com/llmd-kn/llmd-kn/pkg/workload"
)

// Result is one run of the model.
type Result struct {
	// Records has one entry per request of the workload, in arrival order,
	// as a client would have measured it.
	Records []bench.Record
	// Config is the configuration the run used.
	Config Config
	Stats  Stats
	// Engines are the engines that ran, in the order they were created.
	Engines []EngineResult
	// Replicas is the replica count over time: one point at the start and
	// one at every instant the counts changed.
	Replicas []ReplicaPoint
	// Tiers names each record's SLO tier (critical or standard) when
	// Config.CriticalShare split the workload; nil otherwise (all standard).
	Tiers []string
	// Batch is what Config.Batch's backlog did; nil without one.
	Batch *BatchResult
}

// ReplicaPoint is the deployment's replica counts from At until the next
// point. Provisioned counts every engine asked for and not yet gone
// (starting, ready and draining): what holds accelerators.
type ReplicaPoint struct {
	At          time.Duration `json:"at"`
	Ready       Replicas      `json:"ready"`
	Provisioned Replicas      `json:"provisioned"`
}

// EngineResult is one engine's life in a run.
type EngineResult struct {
	ID   string
	Role router.Role
	// Started and Stopped bound the engine's life (Stopped is the end of
	// the run unless Removed by the scaler).
	Started, Stopped time.Duration
	Removed          bool
	// Stats are the engine's counters at the end.
	Stats engine.Stats
}

// Stats are facts about a run beyond what the records show.
type Stats struct {
	// End is the virtual time of the last event; Events counts them.
	End    time.Duration
	Events int64
	// Steps and Preemptions are summed over the engines; BusySeconds is
	// the engines' step time and EngineSeconds their provisioned time
	// (from start to the end of the run, or to their removal).
	Steps, Preemptions         int64
	BusySeconds, EngineSeconds float64
	// CPUTierHitTokens and DiskTierHitTokens sum the prompt tokens the
	// engines loaded from their KV tiers instead of computing them.
	CPUTierHitTokens, DiskTierHitTokens int64
	// Decisions counts routing decisions; Disaggregated those sent through
	// a prefill engine; PDFallbacks those whose prefill was refused.
	Decisions, Disaggregated, PDFallbacks int
	// PredictedCachedTokens sums the decisions' predicted prefix hits (on
	// the decode engine) where the profile predicts them.
	PredictedCachedTokens int64
	// KVEvents says whether the engines published KV events (the profile
	// reads the precise index); KVBatches counts the batches applied and
	// KVApplyErrors those the router rejected.
	KVEvents                 bool
	KVBatches, KVApplyErrors int64
	// Rejected counts flow-control refusals (queue full or deadline);
	// TimedOut client timeouts; PeakQueued the longest flow-control queue.
	Rejected, TimedOut, PeakQueued int
	// Peak counts of engines up at once.
	PeakReplicas Replicas
	// ReplicaSeconds is the provisioned engine time, from the moment an
	// engine is asked for (its startup included) to its removal or the end
	// of the run; GPUSeconds multiplies it by the profile's accelerators per
	// engine. ColdStarts counts engines asked for after the start of the
	// run; Pokes the scale-from-zero signals sent to a Poker.
	ReplicaSeconds, GPUSeconds float64
	ColdStarts, Pokes          int
	// ScaleEvents counts the scaler's answers that changed the desired
	// counts.
	ScaleEvents int
	// KVOffload is what the modelled KV offload did (zero when off).
	KVOffload KVOffloadStats
}

// request stages.
const (
	stQueued  uint8 = iota // waiting for flow control
	stPrefill              // at (or on its way to) the prefill engine
	stDecode               // at (or on its way to) the decode engine
)

// flight is a request the activator is handling.
type flight struct {
	n     int // arrival number: index into records and flights
	id    string
	req   workload.Request
	sent  time.Duration
	stage uint8
	// inQueue: waiting in the flow-control queue.
	inQueue bool
	// tier is the request's SLO tier (tierStandard, tierCritical,
	// tierBatch).
	tier uint8
	d    *router.Decision
	// decode and prefill are node indexes (prefill -1 without P/D).
	decode, prefill int
	disagg          bool
	released        bool // the prefill engine's held blocks were released
	uncached        int  // in-flight prefill tokens counted on the decode engine
	firstSeen       bool
	prefilled       int // the prefill engine's cached tokens
	lastAt          time.Duration
	chunks          int
	itl             []time.Duration
}

// node is one engine and the activator's view of it.
type node struct {
	idx  int
	id   string
	role router.Role
	eng  *engine.Engine

	started, healthy, draining, gone bool
	addedAt, startedAt, goneAt       time.Duration
	phase                            time.Duration

	busy   bool
	kickAt time.Duration // pending kick, -1 for none
	res    *engine.StepResult

	// Scraped metrics.
	waiting, running     int
	kvUsage              float64
	blockSize, numBlocks int
	scrapedAt            time.Duration
	skipped              int // scrape ticks skipped while quiet

	// The activator's own accounting; batch counts the batch tier's
	// requests in flight on it (the batch tier's per-pod cap).
	inflight, inflightTokens int
	batch                    int
	// batchPrefill and interPrefill count the batch and interactive
	// requests sent to it without their first token yet (the prefill gate,
	// yielding).
	batchPrefill, interPrefill int

	kv     []*kvBatch // KV batches not yet delivered, oldest first
	kvHead int

	// Step telemetry (EngineMetrics).
	prefillTokens, decodeSteps, decodeSeqs int64
	prefillTime, decodeTime                time.Duration

	// KV offload: the blocks this engine served (nil: none or off) and
	// the modelled time its flush kept it provisioned after it left.
	seen     map[uint64]*blockUse
	flushFor time.Duration
}

type kvBatch struct {
	events []router.KVEvent
	hashes []uint64
	tokens []uint32
}

type sim struct {
	ctx       context.Context
	cfg       Config
	idleEvery int // scrape ticks between two scrapes of a quiet engine
	q         eventQueue
	rt        *router.Router
	sched     *router.Scheduler
	rates     router.Rates
	model     string
	kvEvents  bool
	base      time.Time
	now       time.Duration
	err       error

	nodes  []*node
	eps    []router.Endpoint
	epNode []int

	src      workload.Source
	pending  workload.Request // the next arrival
	srcDone  bool
	arrived  int
	active   int
	finished int
	failed   int
	records  []bench.Record
	flights  []*flight
	freeF    []*flight
	freeD    []*router.Decision
	freeKV   []*kvBatch
	prompt   []uint32
	promptOf int // arrival number whose prompt s.prompt holds, -1 none
	arena    []time.Duration

	// Flow control. queued counts the interactive tiers' waiting
	// requests (fifo); bqueued the batch tier's (bfifo).
	fifo      []int
	fifoHead  int
	queued    int
	admitted  int
	bfifo     []int
	bfifoHead int
	bqueued   int

	// The batch front (nil without Config.Batch), each record's tier, and
	// the batch tier's share of the counters (Observation).
	batch                                                       *batchState
	batchPrefill                                                int // batch requests sent without a first token
	tierOf                                                      []uint8
	batchArrived, batchFinished, batchFailed, batchInFlight     int
	batchArrivedPromptTokens                                    int64
	batchPromptTokens, batchCachedTokens, batchCompletionTokens int64

	// Token counters of finished requests (Observation).
	promptTokens, cachedTokens, completionTokens int64
	arrivedPromptTokens                          int64
	// activeSeconds integrates active over virtual time up to activeAt
	// (Observation.ConcurrencySeconds).
	activeSeconds float64
	activeAt      time.Duration

	obs      Observation
	stats    Stats
	kvo      *kvOffload // nil: KV offload off
	engines  []EngineResult
	replicas []ReplicaPoint
	desired  Replicas
}

// arenaChunk is how many inter-token gaps one arena allocation holds.
const arenaChunk = 1 << 20

// Run replays src through the deployment cfg describes and returns what a
// client would have measured. It fails on an invalid configuration, on a
// Scaler asking for the impossible, or when ctx ends (checked every few
// thousand events).
func Run(ctx context.Context, cfg Config, src workload.Source) (*Result, error) {
	cfg.RouterConfig = cfg.routerConfig() // parse the built-in one once
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("plan: %w", err)
	}
	rc := cfg.RouterConfig
	rt, err := router.New(rc, router.Options{Seed: cfg.Seed})
	if err != nil {
		return nil, fmt.Errorf("plan: %w", err)
	}
	sched, err := rt.Scheduler(cfg.Routing)
	if err != nil {
		return nil, fmt.Errorf("plan: %w", err)
	}
	kv, err := readsPreciseIndex(rc, sched.Profile())
	if err != nil {
		return nil, fmt.Errorf("plan: %w", err)
	}
	s := &sim{
		ctx:      ctx,
		cfg:      cfg,
		rt:       rt,
		sched:    sched.WithPDThreshold(cfg.PDThreshold),
		rates:    router.RatesFromProfile(&cfg.Profile, cfg.Engine.MaxNumBatchedTokens, 32, 4096),
		model:    cfg.Model,
		kvEvents: kv,
		base:     time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC),
		src:      src,
		promptOf: -1,
	}
	s.idleEvery = idleScrapeEvery(cfg.ScrapeInterval, cfg.StaleAfter)
	if cfg.KVOffload.Enabled {
		probe, err := engine.New(cfg.engineConfig(engine.RoleBoth, 0, false))
		if err != nil {
			return nil, fmt.Errorf("plan: %w", err)
		}
		st := probe.Stats()
		s.kvo = newKVOffload(&cfg, st.BlockSize, st.NumBlocks)
	}
	if s.model == "" {
		s.model = cfg.Profile.Model.Name
	}
	s.stats.KVEvents = kv
	if n := src.Len(); n > 0 {
		s.records = make([]bench.Record, 0, n)
		s.flights = make([]*flight, 0, n)
	}
	if cfg.Batch.Requests > 0 {
		if s.batch, err = newBatchState(cfg.Batch, cfg.Seed); err != nil {
			return nil, fmt.Errorf("plan: %w", err)
		}
	}
	if err := s.run(); err != nil {
		return nil, err
	}
	res := &Result{Records: s.records, Config: cfg, Stats: s.stats, Engines: s.engines, Replicas: s.replicas}
	s.splitTiers(res)
	return res, nil
}

func (s *sim) run() error {
	want := Replicas{Prefill: s.cfg.PrefillEngines, Decode: s.cfg.Engines}
	for range want.Prefill {
		s.startNode(s.addNode(router.RolePrefill))
	}
	role := router.RoleBoth
	if s.cfg.pd() {
		role = router.RoleDecode
	}
	for range want.Decode {
		s.startNode(s.addNode(role))
	}
	s.notePeak()
	s.noteReplicas()
	s.desired = want
	if s.cfg.Scaler != nil {
		s.q.schedule(0, evScale, 0, 0, 0)
	}
	if s.batch != nil {
		s.q.schedule(s.cfg.Batch.Start, evBatch, 0, 0, 0)
	}
	s.nextArrival()
	for s.q.Len() > 0 && s.err == nil {
		if s.srcDone && s.active == 0 && s.batchIdle() {
			break
		}
		if s.q.work == 0 {
			return fmt.Errorf("plan: %d requests can no longer progress at %s (no engine can take them); check the engine limits", s.active, s.now)
		}
		if s.stats.Events&4095 == 0 && s.ctx.Err() != nil {
			return s.ctx.Err()
		}
		e := s.q.next()
		s.now = e.at
		s.stats.Events++
		s.handle(e)
		s.q.recycle(e)
	}
	if s.err != nil {
		return s.err
	}
	s.stats.End = s.now
	for _, n := range s.nodes {
		end := s.now
		if n.gone {
			end = n.goneAt
		}
		// A flushing engine holds its accelerators until its flush ends.
		s.stats.ReplicaSeconds += (end + n.flushFor - n.addedAt).Seconds()
		if !n.started {
			continue
		}
		st := n.eng.Stats()
		s.stats.Steps += st.Steps
		s.stats.Preemptions += st.Preemptions
		s.stats.CPUTierHitTokens += st.CPUTierHitTokens
		s.stats.DiskTierHitTokens += st.DiskTierHitTokens
		s.stats.BusySeconds += st.BusyTime.Seconds()
		s.stats.EngineSeconds += (end - n.startedAt).Seconds()
		s.engines = append(s.engines, EngineResult{ID: n.id, Role: n.role, Started: n.startedAt, Stopped: end, Removed: n.gone, Stats: st})
	}
	s.stats.GPUSeconds = s.stats.ReplicaSeconds * float64(max(s.cfg.Profile.Accelerator.Count, 1))
	return nil
}

func (s *sim) handle(e *event) {
	switch e.kind {
	case evStepEnd:
		s.stepEnd(s.nodes[e.node])
	case evKV:
		s.deliverKV(s.nodes[e.node])
	case evStart:
		s.startNode(s.nodes[e.node])
	case evScrape:
		s.scrape(s.nodes[e.node], true)
		s.dispatchQueued()
	case evSend:
		if f := s.flight(e.req); f != nil && f.stage == e.stage {
			s.add(f)
		}
	case evArrival:
		s.arrive()
		s.nextArrival()
	case evBatch:
		s.batchLaunch()
	case evQueueTimeout:
		if f := s.flight(e.req); f != nil && f.inQueue {
			limit := s.cfg.Flow.MaxQueueTime
			if f.tier == tierBatch {
				limit = s.cfg.Batch.MaxQueueTime
			} else {
				s.stats.Rejected++
			}
			s.fail(f, bench.ErrHTTP5xx, 503, fmt.Sprintf("request waited the tier's limit of %v in the activator without capacity", limit))
		}
	case evTimeout:
		if f := s.flight(e.req); f != nil {
			s.stats.TimedOut++
			s.fail(f, bench.ErrTimeout, 0, fmt.Sprintf("no complete answer within %v", s.cfg.RequestTimeout))
		}
	case evScale:
		s.scale()
		s.q.schedule(s.now+s.cfg.ScaleInterval, evScale, 0, 0, 0)
	case evKick:
		n := s.nodes[e.node]
		if n.kickAt == e.at {
			n.kickAt = -1
		}
		if !n.busy && !n.gone && n.eng.Pending() {
			s.step(n)
		}
	}
}

// Engines.

func (s *sim) addNode(role router.Role) *node {
	idx := len(s.nodes)
	name := "decode"
	erole := engine.RoleDecode
	switch role {
	case router.RolePrefill:
		name, erole = "prefill", engine.RolePrefill
	case router.RoleBoth:
		name, erole = "engine", engine.RoleBoth
	}
	eng, err := engine.New(s.cfg.engineConfig(erole, s.cfg.Seed^uint64(idx+1)*0x9e3779b97f4a7c15, s.kvEvents))
	if err != nil {
		s.err = fmt.Errorf("plan: engine: %w", err)
		eng = nil
	}
	// Each engine is scraped on its own phase, as the activator's
	// per-pod tickers are: spread by the golden ratio.
	frac := math.Mod(float64(idx)*0.6180339887498949, 1)
	n := &node{idx: idx, id: fmt.Sprintf("%s-%d", name, idx), role: role, eng: eng, kickAt: -1, addedAt: s.now,
		phase: time.Duration(frac * float64(s.cfg.ScrapeInterval))}
	s.nodes = append(s.nodes, n)
	return n
}

// startNode brings an engine up: it is scraped at once (and so becomes
// ready) and then every ScrapeInterval on its phase.
func (s *sim) startNode(n *node) {
	if n.gone || n.started || n.eng == nil {
		return
	}
	n.started, n.startedAt = true, s.now
	s.scrape(n, false)
	s.q.schedule(s.now+n.phase, evScrape, n.idx, 0, 0)
	s.noteReplicas()
	s.dispatchQueued()
}

// scrape reads an engine's gauges as the activator's scrape of /metrics
// does; again schedules the next scrape.
func (s *sim) scrape(n *node, again bool) {
	if n.gone {
		return
	}
	if again {
		// A quiet engine is read every IdleScrapeEvery ticks, as the
		// activator's watcher does.
		if n.skipped < s.idleEvery-1 && n.healthy && n.waiting == 0 && n.running == 0 && n.inflight == 0 {
			n.skipped++
			s.q.schedule(s.now+s.cfg.ScrapeInterval, evScrape, n.idx, 0, 0)
			return
		}
		n.skipped = 0
	}
	st := n.eng.Stats()
	n.waiting, n.running, n.kvUsage = st.Waiting, st.Running, st.KVUsage
	n.blockSize, n.numBlocks = st.BlockSize, st.NumBlocks
	n.scrapedAt, n.healthy = s.now, true
	if again {
		s.q.schedule(s.now+s.cfg.ScrapeInterval, evScrape, n.idx, 0, 0)
	}
}

// idleScrapeEvery is pkg/activator's IdleScrapeEvery (a test keeps the
// two equal): a quiet engine is read every 4th tick, fewer where that
// would come near StaleAfter.
func idleScrapeEvery(interval, staleAfter time.Duration) int {
	if interval <= 0 {
		return 1
	}
	return max(1, min(4, int(staleAfter/(2*interval))))
}

// kick makes an idle engine start a step at time at (after the other
// events of that instant) if it then has work.
func (s *sim) kick(n *node, at time.Duration) {
	// A busy engine looks for work when its step ends.
	if n.gone || n.busy || (n.kickAt >= 0 && n.kickAt <= at) {
		return
	}
	n.kickAt = at
	s.q.schedule(at, evKick, n.idx, 0, 0)
}

func (s *sim) step(n *node) {
	res := n.eng.Step(s.base.Add(s.now))
	if s.kvEvents && len(res.Events) > 0 {
		s.queueKV(n, res.Events, s.now+res.Duration+s.cfg.KVEventDelay)
	}
	if res.Idle {
		if !res.WakeAt.IsZero() {
			s.kick(n, res.WakeAt.Sub(s.base))
		}
		return
	}
	n.busy, n.res = true, res
	switch {
	case res.NumTokens == res.NumSeqs:
		n.decodeSteps++
		n.decodeSeqs += int64(res.NumSeqs)
		n.decodeTime += res.Duration
	case 2*res.NumTokens >= s.budget():
		n.prefillTokens += int64(res.NumTokens)
		n.prefillTime += res.Duration
	}
	s.q.schedule(s.now+res.Duration, evStepEnd, n.idx, 0, 0)
}

// stepEnd delivers a step's outputs, at the step's end.
func (s *sim) stepEnd(n *node) {
	res := n.res
	n.busy, n.res = false, nil
	for i := range res.Outputs {
		s.output(n, &res.Outputs[i])
	}
	if n.eng.Pending() {
		s.kick(n, s.now)
	}
	s.maybeGone(n)
}

// queueKV copies a step's KV events (the engine reuses its buffers) for
// delivery at time at. The router keys blocks by their token ids, as it
// does a real vLLM's.
func (s *sim) queueKV(n *node, evs []engine.KVEvent, at time.Duration) {
	var b *kvBatch
	if k := len(s.freeKV); k > 0 {
		b = s.freeKV[k-1]
		s.freeKV = s.freeKV[:k-1]
	} else {
		b = new(kvBatch)
	}
	b.events, b.hashes, b.tokens = b.events[:0], b.hashes[:0], b.tokens[:0]
	for i := range evs {
		e := &evs[i]
		h0, t0 := len(b.hashes), len(b.tokens)
		b.hashes = append(b.hashes, e.Hashes...)
		b.tokens = append(b.tokens, e.TokenIDs...)
		b.events = append(b.events, router.KVEvent{
			Kind: router.KVEventKind(e.Kind), Hashes: b.hashes[h0:len(b.hashes):len(b.hashes)],
			Parent: e.Parent, HasParent: e.HasParent, BlockSize: e.BlockSize,
			TokenIDs: b.tokens[t0:len(b.tokens):len(b.tokens)],
			Medium:   e.Medium, // "" (GPU), or a tier's CPU / STORAGE
		})
	}
	n.kv = append(n.kv, b)
	s.q.schedule(at, evKV, n.idx, 0, 0)
}

// deliverKV applies an engine's oldest pending KV batch: the delay is the
// same for all, so batches arrive in the order their steps ended.
func (s *sim) deliverKV(n *node) {
	if n.kvHead >= len(n.kv) {
		return // dropped with a removed engine
	}
	b := n.kv[n.kvHead]
	n.kv[n.kvHead] = nil
	n.kvHead++
	if n.kvHead == len(n.kv) {
		n.kv, n.kvHead = n.kv[:0], 0
	}
	if err := s.rt.Apply(n.id, b.events...); err != nil {
		s.stats.KVApplyErrors++
	}
	s.stats.KVBatches++
	s.freeKV = append(s.freeKV, b)
}

// Requests.

func (s *sim) nextArrival() {
	r, ok := s.src.Next()
	if !ok {
		s.srcDone = true
		return
	}
	s.pending = r
	s.q.schedule(r.At, evArrival, 0, 0, 0)
}

func (s *sim) flight(n int) *flight {
	if n < 0 || n >= len(s.flights) {
		return nil
	}
	return s.flights[n]
}

// arrive handles the pending request reaching the activator.
func (s *sim) arrive() {
	tier := tierStandard
	if criticalOf(s.pending.Index, s.cfg.CriticalShare) {
		tier = tierCritical
	}
	s.admit(s.pending, tier)
}

// admit handles request r of tier reaching the activator: a workload
// request, or one the batch front sends.
func (s *sim) admit(r workload.Request, tier uint8) {
	n := s.arrived
	s.arrived++
	s.arrivedPromptTokens += int64(r.PromptLen)
	if tier == tierBatch {
		s.batchArrived++
		s.batchArrivedPromptTokens += int64(r.PromptLen)
	}
	s.noteActive()
	s.active++
	s.records = append(s.records, bench.Record{
		Index: r.Index, Scheduled: r.At, Sent: r.At, PromptLen: r.PromptLen, MaxTokens: r.MaxTokens,
	})
	if s.batch != nil || s.cfg.CriticalShare > 0 {
		s.tierOf = append(s.tierOf, tier)
	}
	var f *flight
	if k := len(s.freeF); k > 0 {
		f = s.freeF[k-1]
		s.freeF = s.freeF[:k-1]
	} else {
		f = new(flight)
	}
	*f = flight{n: n, id: itoa(n), req: r, sent: s.now, stage: stQueued, decode: -1, prefill: -1, tier: tier}
	s.flights = append(s.flights, f)
	if s.cfg.RequestTimeout > 0 && tier != tierBatch {
		s.q.schedule(s.now+s.cfg.RequestTimeout, evTimeout, 0, n, 0)
	}
	fc := s.cfg.Flow
	if !fc.Enabled {
		s.dispatch(f)
		return
	}
	if tier == tierBatch {
		s.admitBatch(f)
		return
	}
	// Acquire: straight through when nobody waits and the gate is open.
	if s.queued == 0 && s.gate() {
		s.admitted++
		s.dispatch(f)
		return
	}
	if s.queued+1 > fc.MaxQueued {
		s.stats.Rejected++
		s.fail(f, bench.ErrHTTP5xx, 503, fmt.Sprintf("the revision's queue is full (%d requests waiting)", s.queued))
		return
	}
	s.fifo = append(s.fifo, n)
	f.inQueue = true
	s.queued++
	s.stats.PeakQueued = max(s.stats.PeakQueued, s.queued)
	s.q.schedule(s.now+fc.MaxQueueTime, evQueueTimeout, 0, n, 0)
	s.maybePoke()
}

// gate is the activator's flow-control admission test (revision.gate): a
// ready decode-capable engine must exist and llm-d's pool saturation must
// be under the tier's limit, counting requests admitted but not yet seen
// by any engine as waiting.
func (s *sim) gate() bool { return s.gateAt(s.cfg.Flow.MaxSaturation) }

// gateAt is gate with the saturation limit m (0: none).
func (s *sim) gateAt(m float64) bool {
	var sat float64
	up, inflight := 0, 0
	for _, n := range s.nodes {
		if n.role == router.RolePrefill || !n.up() {
			continue
		}
		up++
		if s.stale(n) {
			sat++
			continue
		}
		inflight += n.inflight
		waiting := max(float64(n.waiting), float64(n.inflight-n.running))
		sat += math.Max(waiting/5, n.kvUsage/0.8)
	}
	if up == 0 {
		return false
	}
	sat /= float64(up)
	if pending := s.admitted - inflight; pending > 0 {
		sat += float64(pending) / 5 / float64(up)
	}
	return m == 0 || sat < m
}

func (n *node) up() bool { return n.started && n.healthy && !n.draining && !n.gone }

func (s *sim) stale(n *node) bool { return !n.healthy || s.now-n.scrapedAt > s.cfg.StaleAfter }

// dispatchQueued admits waiting requests in order while the gate allows
// (the flow controller's Notify and release).
func (s *sim) dispatchQueued() {
	for s.fifoHead < len(s.fifo) {
		f := s.flight(s.fifo[s.fifoHead])
		if f == nil || f.stage != stQueued {
			s.fifoHead++
			continue
		}
		if !s.gate() {
			break
		}
		s.fifoHead++
		f.inQueue = false
		s.queued--
		s.admitted++
		s.dispatch(f)
	}
	if s.fifoHead == len(s.fifo) {
		s.fifo, s.fifoHead = s.fifo[:0], 0
	} else if s.fifoHead > 4096 && s.fifoHead > len(s.fifo)/2 {
		s.fifo = s.fifo[:copy(s.fifo, s.fifo[s.fifoHead:])]
		s.fifoHead = 0
	}
	s.dispatchBatch()
}

// snapshot is the router's view of the engines (revision.snapshot).
func (s *sim) snapshot() []router.Endpoint {
	s.eps, s.epNode = s.eps[:0], s.epNode[:0]
	for _, n := range s.nodes {
		if !n.started || n.draining || n.gone {
			continue
		}
		s.eps = append(s.eps, router.Endpoint{
			ID: n.id, Role: n.role, Ready: n.healthy, Stale: s.stale(n),
			Waiting: n.waiting, Running: n.running, KVUsage: n.kvUsage,
			BlockSize: n.blockSize, NumBlocks: n.numBlocks,
			InFlight: n.inflight, InFlightTokens: n.inflightTokens,
			Rates: s.rates,
		})
		s.epNode = append(s.epNode, n.idx)
	}
	return s.eps
}

// promptFor returns f's prompt token ids in a shared buffer, valid until
// the next call for another request.
func (s *sim) promptFor(f *flight) []uint32 {
	if s.promptOf != f.n {
		s.prompt = f.req.AppendPrompt(s.prompt[:0])
		s.promptOf = f.n
	}
	return s.prompt
}

// dispatch routes an admitted request and sends it on (activator.serve and
// attempt).
func (s *sim) dispatch(f *flight) {
	rec := &s.records[f.n]
	rec.Queue, rec.HasQueue = s.now-f.sent, true
	var d *router.Decision
	if k := len(s.freeD); k > 0 {
		d = s.freeD[k-1]
		s.freeD = s.freeD[:k-1]
	} else {
		d = new(router.Decision)
	}
	f.d = d
	req := router.Request{Model: s.model, Tier: tierNames[f.tier], Tokens: s.promptFor(f), ExpectedOutput: f.req.MaxTokens}
	eps := s.snapshot()
	if f.tier == tierBatch {
		eps = s.underBatchCap(eps)
	}
	if err := s.sched.Decide(d, &req, eps); err != nil {
		s.fail(f, bench.ErrHTTP5xx, 503, "no endpoint could take the request: "+err.Error())
		return
	}
	s.stats.Decisions++
	if f.tier == tierBatch {
		s.batchInFlight++
	}
	if d.PrefixHitTokens > 0 {
		s.stats.PredictedCachedTokens += int64(d.PrefixHitTokens)
	}
	f.decode = s.epNode[d.Decode]
	if d.Disaggregated {
		f.prefill, f.disagg = s.epNode[d.Prefill], true
		f.stage = stPrefill
		s.nodes[f.prefill].inflight++
		s.stats.Disaggregated++
		s.send(f)
		return
	}
	s.sendDecode(f)
}

// sendDecode sends the request to its decode engine: in-flight accounting,
// then Router.Record, as activator.attempt does just before proxying.
func (s *sim) sendDecode(f *flight) {
	d := f.d
	n := s.nodes[f.decode]
	f.stage = stDecode
	f.uncached = max(d.PromptTokens-max(d.PrefixHitTokens, 0), 0)
	n.inflight++
	if f.tier == tierBatch {
		n.batch++
		n.batchPrefill++
		s.batchPrefill++
	} else {
		n.interPrefill++
	}
	n.inflightTokens += f.uncached
	s.rt.Record(d)
	s.send(f)
}

// send delivers the request to the engine of its stage after Overhead.
func (s *sim) send(f *flight) {
	if s.cfg.Overhead > 0 {
		s.q.schedule(s.now+s.cfg.Overhead, evSend, 0, f.n, f.stage)
		return
	}
	s.add(f)
}

// add hands the request to an engine.
func (s *sim) add(f *flight) {
	if f.stage == stPrefill {
		n := s.nodes[f.prefill]
		err := n.eng.Add(s.base.Add(s.now), engine.Request{
			ID: f.id, Prompt: s.promptFor(f), MaxTokens: 1, IgnoreEOS: true, RemoteDecode: true, Priority: s.priority(f),
		})
		if err != nil {
			// A failed prefill falls back to decoding alone.
			n.inflight--
			s.stats.PDFallbacks++
			f.disagg, f.d.Disaggregated, f.prefill = false, false, -1
			s.maybeGone(n)
			s.sendDecode(f)
			return
		}
		s.kick(n, s.now)
		return
	}
	n := s.nodes[f.decode]
	stored := 0
	if s.offloads(n) && !f.disagg {
		stored = s.prepareRestore(n, s.promptFor(f))
	}
	err := n.eng.Add(s.base.Add(s.now), engine.Request{
		ID: f.id, Prompt: s.promptFor(f), MaxTokens: f.req.MaxTokens, IgnoreEOS: s.cfg.IgnoreEOS, RemotePrefill: f.disagg, Priority: s.priority(f),
		StoredTokens: stored,
	})
	if err != nil {
		switch {
		case errors.Is(err, engine.ErrTooLong), errors.Is(err, engine.ErrBadRequest):
			s.fail(f, bench.ErrHTTP4xx, 400, err.Error())
		case errors.Is(err, engine.ErrQueueFull):
			s.fail(f, bench.ErrHTTP5xx, 503, err.Error())
		default:
			s.fail(f, bench.ErrHTTP5xx, 500, err.Error())
		}
		return
	}
	s.kick(n, s.now)
}

// output handles one engine output at the end of its step.
func (s *sim) output(n *node, o *engine.Output) {
	f := s.flight(parseID(o.ID))
	if f == nil {
		return
	}
	if f.stage == stPrefill && n.idx == f.prefill {
		// The prefill answer is back at the activator: send the decode
		// request.
		n.inflight--
		f.prefilled = o.CachedTokens
		s.sendDecode(f)
		return
	}
	if f.stage != stDecode || n.idx != f.decode {
		return
	}
	rec := &s.records[f.n]
	if o.FirstToken {
		rec.TTFT = s.now - f.sent
		f.firstSeen = true
		n.inflightTokens -= f.uncached
		s.firstByte(n, f)
		f.itl = s.reserveITL(f.req.MaxTokens - 1)
		if f.disagg {
			s.releasePrefill(f)
		}
	} else {
		f.itl = append(f.itl, s.now-f.lastAt)
	}
	f.lastAt = s.now
	f.chunks++
	if !o.Finished {
		return
	}
	rec.E2E = s.now - f.sent
	rec.Chunks, rec.ITL = f.chunks, f.itl
	rec.HasUsage, rec.Status = true, 200
	rec.PromptTokens, rec.CompletionTokens = o.PromptTokens, o.NumOutput
	rec.CachedTokens = o.CachedTokens
	if !f.disagg {
		// Restored from storage (KV offload): reported with the cached
		// tokens, as the simulator's usage does.
		rec.CachedTokens += o.ExternalTokens
	}
	if f.disagg {
		// As the activator reports a disaggregated answer: what no engine
		// had to compute is what the prefill engine found in its cache.
		rec.CachedTokens = f.prefilled
	}
	if d := f.d; !f.disagg && d.PreciseHitTokens >= 0 {
		// As activator.account: the router checks its predictions against
		// the engine's answer.
		s.rt.Observe(d.DecodeID, router.Observation{PreciseHitTokens: d.PreciseHitTokens, ApproxHitTokens: d.ApproxHitTokens, CachedTokens: rec.CachedTokens})
	}
	s.promptTokens += int64(rec.PromptTokens)
	s.cachedTokens += int64(min(rec.CachedTokens, rec.PromptTokens))
	s.completionTokens += int64(rec.CompletionTokens)
	if f.tier == tierBatch {
		s.batchPromptTokens += int64(rec.PromptTokens)
		s.batchCachedTokens += int64(min(rec.CachedTokens, rec.PromptTokens))
		s.batchCompletionTokens += int64(rec.CompletionTokens)
		n.batch--
	}
	n.inflight--
	s.finish(f, false)
}

// firstByte ends f's prefill on decode engine n for the batch tier's
// prefill gate and yielding (its first token, or its end without one); a
// waiting batch request may go then.
func (s *sim) firstByte(n *node, f *flight) {
	if f.tier == tierBatch {
		n.batchPrefill--
		s.batchPrefill--
	} else {
		n.interPrefill--
	}
	if s.batch != nil && s.cfg.Flow.Enabled && (s.cfg.Batch.MaxPrefillPerPod > 0 || s.cfg.Batch.YieldToInteractive) {
		s.dispatchBatch()
	}
}

// releasePrefill frees the prefill engine's held blocks once the decode
// engine has them (NIXL's notification).
func (s *sim) releasePrefill(f *flight) {
	if f.released || f.prefill < 0 {
		return
	}
	f.released = true
	p := s.nodes[f.prefill]
	if p.eng.Release(f.id) && p.eng.Pending() {
		s.kick(p, s.now)
	}
	s.maybeGone(p)
}

// reserveITL returns an empty slice with room for n gaps, carved from a
// shared arena so that a run makes few allocations for them.
func (s *sim) reserveITL(n int) []time.Duration {
	if n <= 0 {
		return nil
	}
	if n > arenaChunk/8 {
		return make([]time.Duration, 0, n)
	}
	if cap(s.arena)-len(s.arena) < n {
		s.arena = make([]time.Duration, 0, arenaChunk)
	}
	l := len(s.arena)
	s.arena = s.arena[:l+n]
	return s.arena[l : l : l+n]
}

// fail ends a request with an error, undoing what its stage holds.
func (s *sim) fail(f *flight, kind bench.ErrorKind, status int, detail string) {
	rec := &s.records[f.n]
	rec.Error, rec.Status, rec.Detail = kind, status, detail
	rec.E2E = s.now - f.sent
	rec.Chunks, rec.ITL = f.chunks, f.itl
	switch f.stage {
	case stQueued:
		if f.inQueue {
			f.inQueue = false
			if f.tier == tierBatch {
				s.bqueued--
			} else {
				s.queued--
			}
		}
	case stPrefill:
		n := s.nodes[f.prefill]
		n.inflight--
		if n.eng.Abort(f.id) && n.eng.Pending() {
			s.kick(n, s.now)
		}
		s.maybeGone(n)
	case stDecode:
		n := s.nodes[f.decode]
		n.inflight--
		if f.tier == tierBatch {
			n.batch--
		}
		if !f.firstSeen {
			n.inflightTokens -= f.uncached
			s.firstByte(n, f)
		}
		if n.eng.Abort(f.id) && n.eng.Pending() {
			s.kick(n, s.now)
		}
		if f.disagg {
			s.releasePrefill(f)
		}
		s.maybeGone(n)
	}
	s.finish(f, true)
}

// finish retires a request: its flow-control admission is released, which
// may admit others.
func (s *sim) finish(f *flight, failed bool) {
	wasAdmitted := f.d != nil
	n, tier := f.n, f.tier
	if f.d != nil {
		s.freeD = append(s.freeD, f.d)
	}
	s.flights[f.n] = nil
	*f = flight{}
	s.freeF = append(s.freeF, f)
	s.noteActive()
	s.active--
	if failed {
		s.failed++
	} else {
		s.finished++
	}
	if tier == tierBatch {
		if failed {
			s.batchFailed++
		} else {
			s.batchFinished++
		}
		if wasAdmitted {
			s.batchInFlight--
		}
	}
	if s.cfg.Flow.Enabled && wasAdmitted {
		s.admitted--
		s.dispatchQueued()
	}
	if tier == tierBatch {
		s.batchEnded(&s.records[n])
	}
}

// noteActive brings the integral of the active requests up to now; call
// it before active changes.
func (s *sim) noteActive() {
	s.activeSeconds += float64(s.active) * (s.now - s.activeAt).Seconds()
	s.activeAt = s.now
}

// parseID reads the arrival number back from an engine request id.
func parseID(id string) int {
	n := 0
	for i := 0; i < len(id); i++ {
		c := id[i]
		if c < '0' || c > '9' {
			return -1
		}
		n = n*10 + int(c-'0')
	}
	return n
}

// Scaling.

func (s *sim) scale() {
	s.apply(s.cfg.Scaler.Scale(s.observe()))
}

// maybePoke sends the activator's scale-from-zero signal to a Scaler that
// takes it (Poker) when a request was queued by flow control and no
// decode-capable engine is ready, as the flow controller pokes, and applies
// the answer at once. Without flow control nothing buffers a request: with
// no engine ready it fails, as it does in the activator.
func (s *sim) maybePoke() {
	p, ok := s.cfg.Scaler.(Poker)
	if !ok {
		return
	}
	for _, n := range s.nodes {
		if n.role != router.RolePrefill && n.up() {
			return
		}
	}
	s.stats.Pokes++
	s.apply(p.Poke(s.observe()))
}

// observe fills s.obs with the deployment's state now.
func (s *sim) observe() *Observation {
	o := &s.obs
	s.noteActive()
	*o = Observation{Now: s.now, Engines: o.Engines[:0], Queued: s.queued + s.bqueued, Arrived: s.arrived, ArrivedPromptTokens: s.arrivedPromptTokens, Finished: s.finished, Failed: s.failed,
		PromptTokens: s.promptTokens, CachedTokens: s.cachedTokens, CompletionTokens: s.completionTokens,
		Active: s.active, ConcurrencySeconds: s.activeSeconds,
		Batch: BatchObservation{Queued: s.bqueued, InFlight: s.batchInFlight, Arrived: s.batchArrived, Finished: s.batchFinished, Failed: s.batchFailed,
			ArrivedPromptTokens: s.batchArrivedPromptTokens, PromptTokens: s.batchPromptTokens, CachedTokens: s.batchCachedTokens, CompletionTokens: s.batchCompletionTokens}}
	for k := s.fifoHead; k < len(s.fifo); k++ {
		if f := s.flight(s.fifo[k]); f != nil && f.inQueue {
			o.QueueTime = s.now - f.sent
			break
		}
	}
	for _, n := range s.nodes {
		if n.gone || n.draining {
			continue
		}
		r := &o.Starting
		if n.up() {
			r = &o.Ready
			o.Engines = append(o.Engines, EngineMetrics{ID: n.id, Role: n.role, Waiting: n.waiting, Running: n.running, KVUsage: n.kvUsage, InFlight: n.inflight,
				PrefillTokens: n.prefillTokens, PrefillTime: n.prefillTime, DecodeSteps: n.decodeSteps, DecodeSeqs: n.decodeSeqs, DecodeTime: n.decodeTime})
		}
		if n.role == router.RolePrefill {
			r.Prefill++
		} else {
			r.Decode++
		}
		o.InFlight += n.inflight
	}
	return o
}

// apply resizes the deployment to a Scaler's answer.
func (s *sim) apply(want Replicas) {
	if want.Prefill < 0 || want.Decode < 0 {
		s.err = fmt.Errorf("plan: scaler asked for negative replicas %+v at %s", want, s.now)
		return
	}
	if want.Prefill > 0 && !s.cfg.pd() {
		s.err = fmt.Errorf("plan: scaler asked for %d prefill engines at %s, but the deployment does not run P/D (set Disaggregated)", want.Prefill, s.now)
		return
	}
	decodeRole := router.RoleBoth
	if s.cfg.pd() {
		decodeRole = router.RoleDecode
	}
	if want != s.desired {
		s.stats.ScaleEvents++
		s.desired = want
	}
	s.resize(router.RolePrefill, want.Prefill)
	s.resize(decodeRole, want.Decode)
	s.notePeak()
	s.noteReplicas()
}

// budget is the engines' per-step token budget.
func (s *sim) budget() int { return s.cfg.budget() }

// noteReplicas appends a replica point when the counts changed.
func (s *sim) noteReplicas() {
	var p ReplicaPoint
	p.At = s.now
	for _, n := range s.nodes {
		if n.gone {
			continue
		}
		r := &p.Provisioned.Decode
		if n.role == router.RolePrefill {
			r = &p.Provisioned.Prefill
		}
		*r++
		if n.up() {
			if n.role == router.RolePrefill {
				p.Ready.Prefill++
			} else {
				p.Ready.Decode++
			}
		}
	}
	if k := len(s.replicas); k > 0 {
		last := &s.replicas[k-1]
		if last.Ready == p.Ready && last.Provisioned == p.Provisioned {
			return
		}
		if last.At == p.At {
			*last = p
			return
		}
	}
	s.replicas = append(s.replicas, p)
}

// resize starts or drains engines of a role to reach want. New engines are
// ready after StartupDelay; drained ones take no new request and leave when
// their work is done.
func (s *sim) resize(role router.Role, want int) {
	var live []*node
	for _, n := range s.nodes {
		if n.role == role && !n.gone && !n.draining {
			live = append(live, n)
		}
	}
	for k := len(live); k < want; k++ {
		n := s.addNode(role)
		if s.now > 0 {
			s.stats.ColdStarts++
		}
		delay := s.cfg.StartupDelay
		if s.offloads(n) && s.now > 0 {
			// A prefetch overlaps the cold start; the engine is ready
			// when both are done.
			delay = max(delay, s.prefetch(n))
		}
		if delay == 0 {
			s.startNode(n)
		} else {
			s.q.schedule(s.now+delay, evStart, n.idx, 0, 0)
		}
	}
	// The newest engines go first, those not yet up before those serving.
	cut := len(live) - want
	for k := len(live) - 1; k >= 0 && cut > 0; k-- {
		if n := live[k]; !n.started {
			n.gone, n.goneAt = true, s.now
			cut--
		}
	}
	for k := len(live) - 1; k >= 0 && cut > 0; k-- {
		if n := live[k]; !n.gone {
			n.draining = true
			s.maybeGone(n)
			cut--
		}
	}
}

// maybeGone removes a draining engine whose work is done.
func (s *sim) maybeGone(n *node) {
	if !n.draining || n.gone || n.busy || n.inflight > 0 || n.eng.Pending() || n.eng.Stats().Held > 0 {
		return
	}
	n.gone, n.goneAt = true, s.now
	if s.offloads(n) && n.started {
		n.flushFor = s.flush(n)
	}
	clear(n.kv)
	n.kv, n.kvHead = nil, 0
	s.rt.Forget(n.id)
	s.noteReplicas()
}

func (s *sim) notePeak() {
	var r Replicas
	for _, n := range s.nodes {
		if n.gone || n.draining {
			continue
		}
		if n.role == router.RolePrefill {
			r.Prefill++
		} else {
			r.Decode++
		}
	}
	s.stats.PeakReplicas.Prefill = max(s.stats.PeakReplicas.Prefill, r.Prefill)
	s.stats.PeakReplicas.Decode = max(s.stats.PeakReplicas.Decode, r.Decode)
}
