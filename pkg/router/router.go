package router

import (
	"cmp"
	"errors"
	"fmt"
	"slices"
	"sync"
	"sync/atomic"
	"unsafe"

	"github.com/llmd-kn/llmd-kn/pkg/kvblock"
)

// ErrNoEndpoint is returned when no endpoint passes a profile's filters.
var ErrNoEndpoint = errors.New("router: no endpoint passes the profile's filters")

// Options configure a Router.
type Options struct {
	// Seed makes tie-breaks and random pickers reproducible: a Router
	// given the same seed, configuration and sequence of calls makes the
	// same decisions.
	Seed uint64
}

// Router holds a configuration's profiles and the state they share: the
// two prefix indexes and the pickers' state. It is safe for concurrent use:
// decisions take read locks on the indexes for their lookups (a few
// microseconds); Record, Apply and Forget take an index's write lock for
// bounded chunks of work (at most 256 hashes, or one of 64 table shards),
// so no writer holds decisions back for long.
type Router struct {
	cfg       *Config
	seed      uint64
	calls     atomic.Uint64
	profiles  map[string]*profile
	preHasher kvblock.Hasher

	slots   slotRegistry
	approx  approxIndex
	precise preciseIndex

	cycles sync.Pool
}

// profile is a profileSpec with this Router's picker instance.
type profile struct {
	spec   *profileSpec
	picker picker
}

// New builds a Router from a configuration (nil: the built-in one).
func New(cfg *Config, opts Options) (*Router, error) {
	if cfg == nil {
		cfg = DefaultConfig()
	}
	if cfg.specs == nil {
		return nil, errors.New("router: configuration not built by ParseConfig")
	}
	h, err := kvblock.NewHasher(cfg.PreciseIndex.BlockSize, cfg.PreciseIndex.HashSeed)
	if err != nil {
		return nil, err
	}
	salt := fmix(opts.Seed ^ 0x5bd1e9955bd1e995)
	r := &Router{
		cfg:       cfg,
		seed:      opts.Seed,
		profiles:  make(map[string]*profile, len(cfg.specs)),
		preHasher: h,
		slots:     slotRegistry{ids: map[string]int32{}},
		approx:    approxIndex{t: newHolderTable(1, salt)},
		precise: preciseIndex{
			t:         newHolderTable(1, salt),
			width:     1,
			salt:      salt,
			blocks:    make(map[uint64]*engBlock),
			blockSize: cfg.PreciseIndex.BlockSize,
			hasher:    h,
			maxBlocks: cfg.PreciseIndex.MaxBlocksPerEndpoint,
		},
	}
	r.cycles.New = func() any { return new(cycle) }
	for name, s := range cfg.specs {
		r.profiles[name] = &profile{spec: s, picker: s.picker.impl.newPicker()}
	}
	return r, nil
}

// NewHashCache returns a cache of this Router's block hashes holding at most
// maxBytes (see Request.HashCache). It holds no state of the Router: the
// caller keeps it, typically one per Router, shared by its requests.
func (r *Router) NewHashCache(maxBytes int64) *kvblock.HashCache {
	return kvblock.NewHashCache(r.preHasher, maxBytes)
}

// Config returns the Router's configuration.
func (r *Router) Config() *Config { return r.cfg }

// Scheduler decides with one profile.
type Scheduler struct {
	r           *Router
	p, prefill  *profile
	pdThreshold int
}

// Scheduler returns the scheduler of a profile ("" for the default
// profile). It is cheap; the activator keeps one per revision.
func (r *Router) Scheduler(name string) (*Scheduler, error) {
	if name == "" {
		name = r.cfg.DefaultProfile
	}
	p, ok := r.profiles[name]
	if !ok {
		return nil, fmt.Errorf("router: unknown profile %q (have %v)", name, r.cfg.ProfileNames())
	}
	s := &Scheduler{r: r, p: p}
	if pd := p.spec.pd; pd != nil {
		s.prefill = r.profiles[pd.prefillProfile]
		s.pdThreshold = pd.threshold
	}
	return s, nil
}

// WithPDThreshold returns a copy of s that disaggregates from tokens
// uncached prompt tokens (the llm-d.ai/pd-threshold-tokens annotation).
func (s *Scheduler) WithPDThreshold(tokens int) *Scheduler {
	c := *s
	c.pdThreshold = max(tokens, 0)
	return &c
}

// Profile is the scheduler's profile name.
func (s *Scheduler) Profile() string { return s.p.spec.name }

// Decide chooses endpoints for req among eps and writes the outcome into d.
// It neither changes eps nor keeps references to req or eps; it records
// nothing: call Router.Record once the request is sent.
func (s *Scheduler) Decide(d *Decision, req *Request, eps []Endpoint) error {
	r, spec := s.r, s.p.spec
	d.reset(spec.name)
	if len(eps) == 0 {
		return ErrNoEndpoint
	}
	c := r.cycles.Get().(*cycle)
	defer func() {
		c.release()
		r.cycles.Put(c)
	}()
	c.reset(r, req, eps, d, r.seed^r.calls.Add(1)*0xd1342543de82ef95)
	d.PromptTokens = c.prompt
	if spec.approx || spec.precise {
		// Hash up front, outside the lock, and so that Record has the keys
		// even when no plugin ended up looking them up.
		c.hashes(spec.approx)
	}
	// Slots must not be recycled while this decision uses them.
	r.slots.mu.RLock()
	defer r.slots.mu.RUnlock()
	i := c.run(s.p, &d.Scores, &d.Totals, &d.Candidates)
	if i < 0 {
		return ErrNoEndpoint
	}
	d.Decode, d.DecodeID = i, eps[i].ID
	d.decodeCap = r.lruCapacity(&eps[i])
	if c.ttftOK {
		d.PredictedTTFT = c.ttft[i]
	}
	if spec.approx || spec.precise {
		d.PrefixHitTokens = c.hitTokens(i)
		d.PreciseHitTokens, d.ApproxHitTokens = c.predictions(i)
	}
	if s.prefill != nil && d.PrefixHitTokens >= 0 && c.prompt-d.PrefixHitTokens >= s.pdThreshold {
		c.stage, c.decodeHit = stagePrefill, d.PrefixHitTokens
		if j := c.run(s.prefill, &d.PrefillScores, &d.PrefillTotals, nil); j >= 0 && j != i {
			d.Prefill, d.PrefillID, d.Disaggregated = j, eps[j].ID, true
			d.PrefillHitTokens = c.hitTokens(j)
			d.prefillCap = r.lruCapacity(&eps[j])
		}
	}
	// Keys exist when a profile of this decision reads the approximate
	// index; then the index must learn where the prompt went.
	d.recordApprox = len(d.approxKeys) > 0
	return nil
}

func (r *Router) lruCapacity(e *Endpoint) int {
	switch c := r.cfg.ApproximateIndex.LRUCapacity; {
	case c > 0:
		return c
	case e.NumBlocks > 0:
		return e.NumBlocks
	}
	return DefaultLRUCapacity
}

// Record notes in the approximate index that the decision's endpoints now
// hold the request's prompt blocks (llm-d does this just before sending).
// It is a no-op for decisions whose profiles do not use that index. Call it
// once per request sent, after Decide, with the same Decision.
func (r *Router) Record(d *Decision) {
	if !d.recordApprox || d.DecodeID == "" {
		return
	}
	rec := func(id string, capacity int) {
		s := r.slot(id)
		r.whileMapped(id, s, func() {
			r.approx.mu.Lock()
			r.approx.record(s, d.approxKeys, capacity)
			r.approx.mu.Unlock()
		})
	}
	rec(d.DecodeID, d.decodeCap)
	if d.Disaggregated {
		rec(d.PrefillID, d.prefillCap)
	}
}

// applyChunk bounds how many hashes Apply handles per lock acquisition, so
// that a long BlockStored event does not hold decisions back.
const applyChunk = 256

// Apply updates the precise index with an endpoint's KV events, in order.
// Events it cannot use are counted, reported (the first error) and skipped;
// the others apply. Events of one endpoint must be applied in order (one
// goroutine per endpoint); if the endpoint is forgotten meanwhile, the rest
// of the call is dropped.
func (r *Router) Apply(endpointID string, events ...KVEvent) error {
	if endpointID == StorageEndpoint {
		return fmt.Errorf("router: endpoint id %q is reserved for ApplyStorage", endpointID)
	}
	return r.apply(endpointID, false, events)
}

// ApplyStorage updates the precise index with changes to what the shared
// KV storage holds (the revision's kvstore manifest), as KV events of a
// pseudo-endpoint (StorageEndpoint) every endpoint can restore from at
// storage cost; the events' Medium is ignored. The caller bounds what it
// feeds (the pseudo-endpoint is not bounded by maxBlocksPerEndpoint).
func (r *Router) ApplyStorage(events ...KVEvent) error {
	return r.apply(StorageEndpoint, true, events)
}

func (r *Router) apply(endpointID string, storage bool, events []KVEvent) error {
	p := &r.precise
	s := r.slot(endpointID)
	mediumOf := mediumOf
	if storage {
		mediumOf = func(string) medium { return mediumStorage }
	}
	// step runs f under the index lock while the slot is still the
	// endpoint's.
	step := func(f func()) bool {
		return r.whileMapped(endpointID, s, func() {
			p.mu.Lock()
			f()
			p.mu.Unlock()
		})
	}
	if !step(func() {
		e := p.endpoint(s)
		e.seen, e.storage = true, storage
	}) {
		return nil
	}
	var err error
	for i := range events {
		ev := &events[i]
		switch ev.Kind {
		case BlockStored:
			n, bs := len(ev.Hashes), ev.BlockSize
			if bs < 1 || len(ev.TokenIDs) != n*bs {
				if !step(func() { p.endpoint(s).rejected++ }) {
					return err
				}
				err = cmp.Or(err, fmt.Errorf("%w: event %d has %d tokens for %d blocks of %d", ErrEventShape, i, len(ev.TokenIDs), n, bs))
				continue
			}
			m := mediumOf(ev.Medium)
			var st chainState
			for lo := 0; lo < n; lo += applyChunk {
				hi := min(lo+applyChunk, n)
				overflow, stop := false, false
				if !step(func() {
					if lo == 0 {
						st = p.startState(ev)
					}
					e := p.endpoint(s)
					for j := lo; j < hi; j++ {
						if !st.ok {
							// The chain is unknown from here on.
							e.unmatched += int64(n - j)
							stop = true
							return
						}
						var b *engBlock
						if b, st = p.block(ev.Hashes[j], st, ev.TokenIDs[j*bs:(j+1)*bs]); b == nil {
							e.rejected++
							continue
						}
						overflow = p.store(s, ev.Hashes[j], b, m) || overflow
					}
				}) {
					return err
				}
				if overflow && !r.clearPrecise(endpointID, s, true) {
					return err
				}
				if stop {
					break
				}
			}
		case BlockRemoved:
			m := mediumOf(ev.Medium)
			for hs := range slices.Chunk(ev.Hashes, applyChunk) {
				if !step(func() {
					for _, h := range hs {
						p.remove(s, h, m)
					}
				}) {
					return err
				}
			}
		case AllBlocksCleared:
			if !r.clearPrecise(endpointID, s, false) {
				return err
			}
		default:
			err = cmp.Or(err, fmt.Errorf("router: event %d: unknown kind %v", i, ev.Kind))
		}
	}
	return err
}

// clearPrecise drops everything the precise index holds for slot s: its
// engine blocks at once, its keys one table shard at a time.
func (r *Router) clearPrecise(id string, s int32, overflow bool) bool {
	p := &r.precise
	if !r.whileMapped(id, s, func() {
		p.mu.Lock()
		p.releaseAll(s)
		if overflow {
			p.endpoint(s).resets++
		}
		p.mu.Unlock()
	}) {
		return false
	}
	for i := range numShards {
		if !r.whileMapped(id, s, func() {
			p.mu.Lock()
			if e := p.endpoint(s); e.keys > 0 || e.tierKeys > 0 {
				p.clearSlotShard(s, i)
			}
			p.mu.Unlock()
		}) {
			return false
		}
	}
	return true
}

// slot returns the endpoint's slot, numbering it if new.
func (r *Router) slot(id string) int32 {
	r.slots.mu.RLock()
	s := r.slots.lookup(id)
	r.slots.mu.RUnlock()
	if s >= 0 {
		return s
	}
	r.slots.mu.Lock()
	defer r.slots.mu.Unlock()
	s, grew := r.slots.assign(id)
	if grew {
		w := r.slots.words()
		r.approx.mu.Lock()
		r.approx.t.widen(w)
		r.approx.mu.Unlock()
		r.precise.mu.Lock()
		r.precise.widen(w)
		r.precise.mu.Unlock()
	}
	return s
}

// whileMapped runs f if id still has slot s, holding the registry's read
// lock so that the slot cannot be recycled meanwhile, and reports whether
// it ran.
func (r *Router) whileMapped(id string, s int32, f func()) bool {
	r.slots.mu.RLock()
	defer r.slots.mu.RUnlock()
	if r.slots.lookup(id) != s {
		return false
	}
	f()
	return true
}

// Forget drops everything the indexes hold for an endpoint (a deleted
// pod), freeing its slot for another. Decisions made meanwhile no longer
// see the endpoint's index data.
func (r *Router) Forget(endpointID string) {
	r.slots.mu.Lock()
	s := r.slots.lookup(endpointID)
	if s >= 0 {
		r.slots.detach(s)
	}
	r.slots.mu.Unlock()
	if s >= 0 {
		r.drain(s)
	}
}

// Retain forgets every endpoint not in live. The activator calls it when
// its endpoint set changes, which bounds the indexes by the live endpoints.
func (r *Router) Retain(live []string) {
	keep := make(map[string]bool, len(live)+1)
	keep[StorageEndpoint] = true
	for _, id := range live {
		keep[id] = true
	}
	var gone []int32
	r.slots.mu.Lock()
	for s, id := range r.slots.names {
		if id != "" && !keep[id] {
			r.slots.detach(int32(s))
			gone = append(gone, int32(s))
		}
	}
	r.slots.mu.Unlock()
	for _, s := range gone {
		r.drain(s)
	}
}

// drain clears a detached slot from both indexes, a shard at a time, and
// frees it. Nothing else touches a detached slot.
func (r *Router) drain(s int32) {
	r.approx.mu.Lock()
	hadApprox := r.approx.detach(s)
	r.approx.mu.Unlock()
	r.precise.mu.Lock()
	hadPrecise := int(s) < len(r.precise.ep) && (r.precise.ep[s].keys > 0 || r.precise.ep[s].tierKeys > 0)
	r.precise.releaseAll(s)
	if int(s) < len(r.precise.ep) {
		r.precise.ep[s] = preciseEndpoint{}
	}
	r.precise.mu.Unlock()
	for i := range numShards {
		if hadApprox {
			r.approx.mu.Lock()
			r.approx.t.clearSlotShard(int(s), i)
			r.approx.mu.Unlock()
		}
		if hadPrecise {
			r.precise.mu.Lock()
			r.precise.clearSlotShard(s, i)
			r.precise.mu.Unlock()
		}
	}
	r.slots.mu.Lock()
	r.slots.free = append(r.slots.free, s)
	r.slots.mu.Unlock()
}

// Stats reports the size of the indexes.
func (r *Router) Stats() Stats {
	var st Stats
	r.slots.mu.RLock()
	st.Slots = len(r.slots.names)
	r.slots.mu.RUnlock()

	a := &r.approx
	a.mu.RLock()
	st.Approximate = IndexStats{Keys: a.t.len(), Bytes: a.t.bytes()}
	for _, l := range a.lru {
		if l != nil {
			st.Approximate.Endpoints++
			st.Approximate.Holdings += len(l.pos)
			st.Approximate.Bytes += l.bytes()
		}
	}
	a.mu.RUnlock()

	p := &r.precise
	p.mu.RLock()
	st.Precise = IndexStats{Keys: p.t.len(), Bytes: p.t.bytes() + int64(cap(p.ep))*int64(unsafe.Sizeof(preciseEndpoint{}))}
	st.PreciseEngineBlocks = len(p.blocks)
	// An engine block costs its map entry and record (about 120 bytes) and
	// its tail tokens; a holding about 24 bytes of an endpoint's map.
	st.Precise.Bytes += int64(len(p.blocks)) * 120
	for _, b := range p.blocks {
		st.Precise.Bytes += int64(cap(b.tail))*4 + int64(cap(b.keys))*8
	}
	for i := range p.ep {
		e := &p.ep[i]
		if e.seen {
			st.Precise.Endpoints++
		}
		st.Precise.Holdings += e.keys
		st.Precise.Bytes += int64(len(e.held)) * 24
		st.PreciseResets += e.resets
	}
	p.mu.RUnlock()
	return st
}
