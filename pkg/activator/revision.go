package activator

import (
	"context"
	"errors"
	"math"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"github.com/go-zeromq/zmq4"

	"github.com/llmd-kn/llmd-kn/pkg/apis"
	"github.com/llmd-kn/llmd-kn/pkg/kvblock"
	"github.com/llmd-kn/llmd-kn/pkg/kvevents"
	"github.com/llmd-kn/llmd-kn/pkg/router"
)

// RevisionKey names a Knative revision.
type RevisionKey struct {
	Namespace, Name string
}

func (k RevisionKey) String() string { return k.Namespace + "/" + k.Name }

// RevisionConfig is what the activator needs to know of a revision.
type RevisionConfig struct {
	Key RevisionKey
	// Service is the Knative Service the revision belongs to; Host routing
	// (`{service}.{namespace}.{domain}` and `{tag}-{service}...`) reaches
	// the Service's routed revision.
	Service string
	// Models are the model names clients may ask for.
	Models []string
	// Tags are the Service's traffic tags that route here, as hosts
	// {tag}-{service}.{namespace}.{domain}; a tag named like an SLO tier
	// also selects that tier. Hosts with other tags are not this revision's.
	Tags []string
	// Spec is the parsed llm-d configuration (pkg/apis).
	Spec apis.Spec
	// Rates describe the engines' speed for the ttft-cost scorer; zero
	// values leave it to the scorer's default profile.
	Rates router.Rates
	// PriorityScheduling says the pods run vLLM with
	// --scheduling-policy priority: the activator then sends each
	// request's tier as vLLM's priority field, so that inside the engine
	// too a critical request overtakes waiting batch work.
	PriorityScheduling bool
	// MaxModelLen is the engines' context length (vLLM's --max-model-len);
	// zero: learned from the pods' /v1/models. Requests over it are
	// refused before they count as load.
	MaxModelLen int
	// MaxNumSeqs is the engines' --max-num-seqs (0: not known). Under
	// priority scheduling a pod that runs fewer has a place for a higher
	// tier's request, which vLLM starts at once by preempting lower-tier
	// work for KV-cache blocks: where the KV cache, not max_num_seqs,
	// bounds a pod full of lower tiers, their requests do not stand in a
	// higher tier's way (admission.go).
	MaxNumSeqs int
	// Timeouts are the revision's timeoutSeconds,
	// responseStartTimeoutSeconds and idleTimeoutSeconds (zero: the
	// tier's default), enforced by the activator as Knative's timeout
	// handler does, since it calls the pods without queue-proxy.
	Timeouts Timeouts
}

// Timeouts bound an upstream request (zero: none of this kind).
type Timeouts struct {
	// Total bounds the whole request (Knative's timeoutSeconds).
	Total time.Duration
	// ResponseStart bounds the wait for the pod's response headers
	// (responseStartTimeoutSeconds): before it, the request is retried on
	// another pod or answered 504.
	ResponseStart time.Duration
	// Idle bounds the time between two reads of the answer
	// (idleTimeoutSeconds): after the first byte the answer is cut with an
	// error event and an aborted response.
	Idle time.Duration
}

// or returns t with its zero fields taken from d.
func (t Timeouts) or(d Timeouts) Timeouts {
	if t.Total <= 0 {
		t.Total = d.Total
	}
	if t.ResponseStart <= 0 {
		t.ResponseStart = d.ResponseStart
	}
	if t.Idle <= 0 {
		t.Idle = d.Idle
	}
	return t
}

// PodSpec describes one pod of a revision.
type PodSpec struct {
	// Name is unique within the revision (the pod name).
	Name string
	// URL is the pod's HTTP base, e.g. http://10.0.0.7:8000.
	URL  string
	Role router.Role
	// KVEvents is the pod's ZMQ KV-event endpoint (tcp://host:port), empty
	// when it publishes none.
	KVEvents string
}

// pod is the activator's live view of one pod.
type pod struct {
	spec PodSpec

	mu        sync.Mutex
	metrics   PodMetrics
	scrapedAt time.Time
	healthy   bool
	down      bool // the proxy could not reach it; cleared by a good scrape
	// fails counts the pod's consecutive upstream failures (timeouts, a
	// failure mid-answer); from ejectAfter on, it leaves routing until
	// ejectedUntil (outlier detection).
	fails        int
	ejectedUntil time.Time
	// slots is how many requests the pod runs at once: the most it ran
	// once requests had waited (admission.go); 0 until then.
	slots int
	// starts counts the requests that got their first byte from the pod.
	starts rateMeter

	inflight       atomic.Int64
	inflightTokens atomic.Int64
	// queued counts, by tier in the tier table's order (highest priority
	// first), the streamed requests sent to the pod that have not had
	// their first byte: those waiting in its queue or in prefill.
	queued []atomic.Int64
	// active counts, by tier in the same order, the requests sent to the
	// pod that have not ended (Tier.MaxPerPod).
	active []atomic.Int64
	// unstarted counts, by tier in the same order, the requests routed to
	// the pod without their first response byte yet, streamed or not
	// (Tier.MaxPrefillPerPod, Tier.YieldToInteractive); counted only when a
	// tier has one of those rules (Tiers.prefill).
	unstarted []atomic.Int64
	kv        kvCounts
	cancel    context.CancelFunc
	done      chan struct{}

	// Touched by the pod's watch goroutine only.
	modelLenKnown bool
	modelLenAsked time.Time
}

// revision is one revision's routing state: its pods, its router (prefix
// indexes shared by its pods) and its flow control.
type revision struct {
	key  RevisionKey
	name string // key.String(), for labels and logs
	m    *revMetrics
	// conf is replaced whole when the revision's configuration changes
	// (UpsertRevision) while requests read it.
	conf atomic.Pointer[revisionConf]
	rt   *router.Router
	// hashes remembers recent prompts' block hashes for rt (nil: none);
	// the request's tokens are never modified, so the cache may keep them.
	hashes *kvblock.HashCache
	flow   *FlowController
	stats  *revisionStats
	a      *Activator
	// modelLen is the pods' max_model_len (contextlen.go).
	modelLen modelLen

	mu   sync.RWMutex
	pods map[string]*pod
	list []*pod

	tokNext atomic.Uint32 // rotation of the engine tokenizer among pods
	tok     tokStats      // tokenization figures (tokenize.go)

	storage storageRun // the shared KV storage's feed (kvstorage.go)
}

// revisionConf is a revision's configuration and the scheduler built from it.
type revisionConf struct {
	cfg   RevisionConfig
	sched *router.Scheduler
}

func (rev *revision) config() *RevisionConfig      { return &rev.conf.Load().cfg }
func (rev *revision) scheduler() *router.Scheduler { return rev.conf.Load().sched }

// reconfigure replaces the configuration; the scheduler comes from the
// revision's own router, so that the prefix indexes its pods' KV events
// and past decisions filled keep serving the new one.
func (rev *revision) reconfigure(cfg RevisionConfig) error {
	sched, err := rev.rt.Scheduler(cfg.Spec.RoutingProfile)
	if err != nil {
		return err
	}
	rev.conf.Store(&revisionConf{cfg: cfg, sched: sched.WithPDThreshold(cfg.Spec.PDThreshold)})
	rev.startStorageFeed()
	return nil
}

func (a *Activator) newRevision(cfg RevisionConfig) (*revision, error) {
	rt, err := router.New(a.opts.RouterConfig, router.Options{Seed: a.opts.Seed ^ uint64(len(cfg.Key.Name))})
	if err != nil {
		return nil, err
	}
	sched, err := rt.Scheduler(cfg.Spec.RoutingProfile)
	if err != nil {
		return nil, err
	}
	rev := &revision{key: cfg.Key, name: cfg.Key.String(), m: a.metrics.forRevision(cfg.Key.String(), a.opts.Tiers.Names()),
		rt: rt, a: a, pods: map[string]*pod{}, stats: newRevisionStats()}
	if a.opts.HashCacheBytes > 0 {
		rev.hashes = rt.NewHashCache(a.opts.HashCacheBytes)
	}
	rev.conf.Store(&revisionConf{cfg: cfg, sched: sched.WithPDThreshold(cfg.Spec.PDThreshold)})
	key := cfg.Key
	rev.flow = NewFlowController(a.opts.Tiers, a.opts.Flow, rev.gate, func() {
		if a.opts.Poke != nil {
			a.opts.Poke(key)
		}
	}).withRates(rev.drain, a.opts.Now).withPods(rev.decodePods).withYield(rev.yieldFree)
	rev.storage.ctx, rev.storage.stop = context.WithCancel(context.Background())
	rev.startStorageFeed()
	return rev, nil
}

// decodePods counts the revision's routable decode-capable pods.
func (rev *revision) decodePods() int {
	now := rev.a.opts.Now()
	rev.mu.RLock()
	defer rev.mu.RUnlock()
	n := 0
	for _, p := range rev.list {
		if p.spec.Role == router.RolePrefill {
			continue
		}
		p.mu.Lock()
		up := p.routableLocked(now)
		p.mu.Unlock()
		if up {
			n++
		}
	}
	return n
}

// yieldFree reports whether some routable decode pod has no request of a
// tier above t without its first byte (Tier.YieldToInteractive).
func (rev *revision) yieldFree(t Tier) bool {
	tiers := rev.a.opts.Tiers
	now := rev.a.opts.Now()
	rev.mu.RLock()
	defer rev.mu.RUnlock()
	for _, p := range rev.list {
		if p.spec.Role == router.RolePrefill || p.higherUnstarted(tiers, t) {
			continue
		}
		p.mu.Lock()
		up := p.routableLocked(now)
		p.mu.Unlock()
		if up {
			return true
		}
	}
	return false
}

// higherUnstarted reports whether the pod has a request of a tier above t
// without its first byte.
func (p *pod) higherUnstarted(tiers *Tiers, t Tier) bool {
	for i := range p.unstarted {
		if tiers.above(i, t) && p.unstarted[i].Load() > 0 {
			return true
		}
	}
	return false
}

// room reports whether the pod may take one more request of tier t (index
// ti) under its per-pod cap, its prefill gate and yielding.
func (p *pod) room(tiers *Tiers, t Tier, ti int) bool {
	if t.MaxPerPod > 0 && ti < len(p.active) && p.active[ti].Load() >= int64(t.MaxPerPod) {
		return false
	}
	if t.MaxPrefillPerPod > 0 && ti < len(p.unstarted) && p.unstarted[ti].Load() >= int64(t.MaxPrefillPerPod) {
		return false
	}
	return !t.YieldToInteractive || !p.higherUnstarted(tiers, t)
}

// claim counts a request of tier t (index ti) routed to pod name as
// without its first byte (pod.unstarted) and returns the counter to
// decrement at its first byte or its end; nil when nothing is counted.
// With check, a claim past the tier's prefill gate, or while the pod has a
// higher tier's request without its first byte where the tier yields, is
// undone and refused (ok false): another request took the pod's room
// since the router read it, and the request is routed again without it.
func (rev *revision) claim(name string, t Tier, ti int, check bool) (held *atomic.Int64, ok bool) {
	p := rev.pod(name)
	if p == nil || ti < 0 || ti >= len(p.unstarted) {
		return nil, true
	}
	held = &p.unstarted[ti]
	n := held.Add(1)
	if check && ((t.MaxPrefillPerPod > 0 && n > int64(t.MaxPrefillPerPod)) || (t.YieldToInteractive && p.higherUnstarted(rev.a.opts.Tiers, t))) {
		held.Add(-1)
		rev.flow.wake()
		return nil, false
	}
	return held, true
}

// atCap names the decode pods without room for a request of tier t
// (pod.room: Tier.MaxPerPod, MaxPrefillPerPod, YieldToInteractive), for
// the router to leave out; nil when the tier has none of those rules or
// no decode pod has room (the flow controller admitted the request within
// the pods' totals, so one is about to free a place; kn-llmd plan does
// the same).
func (rev *revision) atCap(t Tier) map[string]bool {
	tiers := rev.a.opts.Tiers
	ti := tiers.index(t.Name)
	if (t.MaxPerPod <= 0 && t.MaxPrefillPerPod <= 0 && !t.YieldToInteractive) || ti < 0 {
		return nil
	}
	rev.mu.RLock()
	defer rev.mu.RUnlock()
	var full map[string]bool
	decode := 0
	for _, p := range rev.list {
		if p.spec.Role == router.RolePrefill {
			continue
		}
		decode++
		if !p.room(tiers, t, ti) {
			if full == nil {
				full = map[string]bool{}
			}
			full[p.spec.Name] = true
		}
	}
	if len(full) == decode {
		return nil
	}
	return full
}

// setPods starts watching new pods and stops watching removed ones.
func (rev *revision) setPods(specs []PodSpec) {
	rev.mu.Lock()
	keep := make(map[string]bool, len(specs))
	for _, s := range specs {
		keep[s.Name] = true
		if p, ok := rev.pods[s.Name]; ok && p.spec == s {
			continue
		} else if ok {
			rev.stopPodLocked(p)
		}
		ctx, cancel := context.WithCancel(context.Background())
		n := len(rev.a.opts.Tiers.order)
		p := &pod{spec: s, cancel: cancel, done: make(chan struct{}), queued: make([]atomic.Int64, n), active: make([]atomic.Int64, n),
			unstarted: make([]atomic.Int64, n)}
		rev.pods[s.Name] = p
		go rev.watch(ctx, p)
	}
	for name, p := range rev.pods {
		if !keep[name] {
			rev.stopPodLocked(p)
		}
	}
	rev.list = rev.list[:0]
	live := make([]string, 0, len(rev.pods))
	for _, p := range rev.pods {
		rev.list = append(rev.list, p)
		live = append(live, p.spec.Name)
	}
	rev.mu.Unlock()
	rev.rt.Retain(live)
	rev.flow.Notify()
}

func (rev *revision) stopPodLocked(p *pod) {
	p.cancel()
	delete(rev.pods, p.spec.Name)
}

func (rev *revision) close() {
	rev.storage.stop()
	rev.mu.Lock()
	for _, p := range rev.pods {
		rev.stopPodLocked(p)
	}
	rev.list = nil
	rev.mu.Unlock()
}

// watch scrapes a pod's metrics on the activator's interval and follows
// its KV events, until the pod is removed.
func (rev *revision) watch(ctx context.Context, p *pod) {
	defer close(p.done)
	if p.spec.KVEvents != "" {
		go rev.subscribe(ctx, p)
	}
	opts := rev.a.opts
	t := time.NewTicker(opts.ScrapeInterval)
	defer t.Stop()
	every := IdleScrapeEvery(opts.ScrapeInterval, opts.StaleAfter)
	skipped := 0
	for {
		if skipped < every-1 && p.quiet() {
			skipped++
			rev.flow.Notify()
			select {
			case <-ctx.Done():
				return
			case <-t.C:
			}
			continue
		}
		skipped = 0
		sctx, cancel := context.WithTimeout(ctx, scrapeTimeout)
		m, err := Scrape(sctx, opts.ScrapeClient, p.spec.URL)
		cancel()
		if ctx.Err() != nil {
			return
		}
		p.mu.Lock()
		if err == nil {
			p.metrics, p.scrapedAt, p.healthy, p.down = m, opts.Now(), true, false
			if (m.Waiting > 0 || p.slots > 0) && m.Running > p.slots {
				// The most it was seen running while requests waited
				// (or since): a step's token budget can hold back a
				// few waiting requests with slots free.
				p.slots = m.Running
			}
		} else {
			p.healthy = false
		}
		p.mu.Unlock()
		if err == nil {
			rev.learnModelLen(ctx, p)
		}
		rev.flow.Notify()
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// IdleScrapeEvery is how many scrape ticks a quiet pod waits between two
// scrapes: 4 (200 ms at the default 50 ms), fewer where that would come
// near StaleAfter (never beyond half of it), so a quiet pod is never stale.
// An idle pod's page does not change; reading hundreds of them every tick
// was most of an idle activator's CPU. pkg/plan skips the same ticks.
func IdleScrapeEvery(interval, staleAfter time.Duration) int {
	if interval <= 0 {
		return 1
	}
	return max(1, min(4, int(staleAfter/(2*interval))))
}

// quiet reports whether the pod's last scrape found it idle (nothing
// running or waiting) and nothing this activator sent is in flight: its
// metrics cannot have changed but for other clients' requests, so the
// watcher reads them less often. A request sent to it makes it not quiet
// at the next tick.
func (p *pod) quiet() bool {
	if p.inflight.Load() != 0 {
		return false
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.healthy && !p.down && p.metrics.Running == 0 && p.metrics.Waiting == 0
}

// subscribe follows a pod's KV events over ZMQ into the precise index,
// reconnecting while the pod lives. A gap in sequence numbers means lost
// events: the pod's index entries are dropped rather than trusted.
func (rev *revision) subscribe(ctx context.Context, p *pod) {
	log := rev.a.opts.Logger.With("revision", rev.key.String(), "pod", p.spec.Name)
	for ctx.Err() == nil {
		sub := zmq4.NewSub(ctx, zmq4.WithDialerRetry(250*time.Millisecond), zmq4.WithDialerMaxRetries(-1))
		if err := sub.Dial(p.spec.KVEvents); err != nil {
			_ = sub.Close()
			if !sleepCtx(ctx, time.Second) {
				return
			}
			continue
		}
		_ = sub.SetOption(zmq4.OptionSubscribe, "")
		var st kvStream
		for ctx.Err() == nil {
			msg, err := sub.Recv()
			if err != nil {
				break
			}
			_, seq, payload, err := kvevents.ParseMessage(msg.Frames)
			if err != nil {
				p.kv.rejected.Add(1)
				log.Debug("bad KV event message", "err", err)
				continue
			}
			rev.applyKV(p, &st, seq, payload)
		}
		_ = sub.Close()
		if !sleepCtx(ctx, 250*time.Millisecond) {
			return
		}
	}
}

func sleepCtx(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}

// snapshot builds the router's view of the pods, leaving out excluded ones.
func (rev *revision) snapshot(dst []router.Endpoint, exclude map[string]bool) []router.Endpoint {
	now := rev.a.opts.Now()
	stale := rev.a.opts.StaleAfter
	rev.mu.RLock()
	defer rev.mu.RUnlock()
	for _, p := range rev.list {
		if exclude[p.spec.Name] {
			continue
		}
		p.mu.Lock()
		e := router.Endpoint{
			ID: p.spec.Name, Address: p.spec.URL, Role: p.spec.Role,
			Ready:   p.routableLocked(now),
			Stale:   now.Sub(p.scrapedAt) > stale,
			Waiting: p.metrics.Waiting, Running: p.metrics.Running, KVUsage: p.metrics.KVUsage,
			BlockSize: p.metrics.BlockSize, NumBlocks: p.metrics.NumBlocks,
			Rates: rev.config().Rates,
		}
		p.mu.Unlock()
		e.InFlight = int(p.inflight.Load())
		e.InFlightTokens = int(p.inflightTokens.Load())
		dst = append(dst, e)
	}
	return dst
}

// Outlier detection, as Envoy's consecutive-errors ejection: a pod whose
// requests time out or fail mid-answer ejectAfter times in a row leaves
// routing for ejectBase, doubled at each ejection in a row, at most
// ejectMax; an answer that completes resets it. Scrapes do not bring it
// back earlier (a pod whose /metrics answers can still hang its requests).
const (
	ejectAfter = 2
	ejectBase  = 5 * time.Second
	ejectMax   = 5 * time.Minute
)

// podFailed records an upstream failure of pod name.
func (rev *revision) podFailed(name string) {
	p := rev.pod(name)
	if p == nil {
		return
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	p.fails++
	if p.fails >= ejectAfter {
		d := ejectBase << min(p.fails-ejectAfter, 10)
		p.ejectedUntil = rev.a.opts.Now().Add(min(d, ejectMax))
	}
}

// podOK records an answer of pod name that completed.
func (rev *revision) podOK(name string) {
	if p := rev.pod(name); p != nil {
		p.mu.Lock()
		p.fails = 0
		p.mu.Unlock()
	}
}

// routableLocked says whether the pod takes requests now (p.mu held).
func (p *pod) routableLocked(now time.Time) bool {
	return p.healthy && !p.down && !now.Before(p.ejectedUntil)
}

func (rev *revision) pod(name string) *pod {
	rev.mu.RLock()
	defer rev.mu.RUnlock()
	return rev.pods[name]
}

// gate is the flow controller's admission test: a ready decode-capable pod
// must exist; for a tier with a TTFT target, some pod must be predicted to
// start the request within the tier's admission budget, leaving a higher
// tier's next request room to start within its own (under priority
// scheduling, some free slots: admission.go); and
// the pool's saturation (llm-d's detector: per pod max(waiting/5, kv/0.8),
// stale pods saturated, averaged) must be under the tier's limit. Requests
// admitted but not yet visible in the pods' metrics count as waiting, so
// one scrape interval cannot admit a flood.
func (rev *revision) gate(t Tier, admitted int) (ready, ok bool) {
	now := rev.a.opts.Now()
	stale := rev.a.opts.StaleAfter
	if own, reserve := rev.a.opts.Tiers.budgets(t); own > 0 || reserve > 0 {
		ws := rev.waits(nil, admitted, t)
		if len(ws) == 0 {
			return false, false
		}
		// Room is kept for a higher tier only while one with a target
		// has traffic: a revision serving standard requests alone is
		// held to standard's budget, not to critical's for requests
		// that never come.
		if reserve > 0 && !rev.flow.higherActive(t, now) {
			reserve = 0
		}
		var keep float64
		if rev.config().PriorityScheduling {
			// The pods order their queues by tier (vLLM's priority
			// scheduling): waits counted only the tier's and higher
			// tiers' requests. They do not preempt for a slot: while a
			// higher tier with a target has traffic, a lower tier starts
			// only where it leaves some slots free for it (keepFree).
			if reserve > 0 {
				keep = keepFree(ws)
			}
			reserve = 0
		}
		if !admits(ws, own, reserve, keep) {
			return true, false
		}
		if t.MaxSaturation == 0 {
			return true, true
		}
	}
	rev.mu.RLock()
	defer rev.mu.RUnlock()
	var sat float64
	n := 0
	var inflight int64
	for _, p := range rev.list {
		if p.spec.Role == router.RolePrefill {
			continue
		}
		p.mu.Lock()
		up := p.routableLocked(now)
		isStale := now.Sub(p.scrapedAt) > stale
		m := p.metrics
		p.mu.Unlock()
		if !up {
			continue
		}
		n++
		if isStale {
			sat++
			continue
		}
		fl := p.inflight.Load()
		inflight += fl
		waiting := max(float64(m.Waiting), float64(fl-int64(m.Running)))
		sat += math.Max(waiting/5, m.KVUsage/0.8)
	}
	if n == 0 {
		return false, false
	}
	sat /= float64(n)
	if pending := int64(admitted) - inflight; pending > 0 {
		sat += float64(pending) / 5 / float64(n)
	}
	return true, t.MaxSaturation == 0 || sat < t.MaxSaturation
}

// errNoPod is returned when every pod failed before the first byte.
var errNoPod = errors.New("no ready endpoint")

// statusFor maps a routing failure to a status.
func statusFor(err error) int {
	if errors.Is(err, router.ErrNoEndpoint) || errors.Is(err, errNoPod) {
		return http.StatusServiceUnavailable
	}
	var te *TimeoutError
	if errors.As(err, &te) {
		return http.StatusGatewayTimeout
	}
	return http.StatusBadGateway
}
