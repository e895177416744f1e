// Package engine is a step-driven model of one vLLM V1 engine: continuous
// batching with chunked prefill under a token budget, a KV cache in blocks
// with prefix caching and LRU eviction, preemption by recompute, the
// prefill/decode roles of disaggregated serving, KV events, and step times
// from a roofline of the accelerator.
//
// The engine is pure: it never reads the clock, starts no goroutine and holds
// no global state. The caller passes the time to Add and Step and decides
// what a step's duration means: the simulator sleeps it (real time), a
// discrete-event planner jumps over it (virtual time). An Engine is not safe
// for concurrent use; its owner serialises calls.
package engine

import (
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/llmd-kn/llmd-kn/pkg/kvblock"
	"github.com/llmd-kn/llmd-kn/pkg/tokenizer"
)

// Role is what part of a request an engine computes.
type Role int

const (
	// RoleBoth computes prefill and decode (an ordinary vLLM).
	RoleBoth Role = iota
	// RolePrefill computes prompts and holds their KV for a decode engine.
	RolePrefill
	// RoleDecode generates tokens from KV that a prefill engine computed.
	RoleDecode
)

func (r Role) String() string {
	switch r {
	case RolePrefill:
		return "prefill"
	case RoleDecode:
		return "decode"
	default:
		return "both"
	}
}

// ParseRole parses "prefill", "decode" or "both".
func ParseRole(s string) (Role, error) {
	switch s {
	case "both", "":
		return RoleBoth, nil
	case "prefill":
		return RolePrefill, nil
	case "decode":
		return RoleDecode, nil
	}
	return 0, fmt.Errorf("unknown role %q (want prefill, decode or both)", s)
}

// Config configures one engine. Zero fields take vLLM's defaults.
type Config struct {
	Profile Profile
	Role    Role
	// BlockSize is the KV block size in tokens (16).
	BlockSize int
	// MaxNumSeqs bounds the running batch (256).
	MaxNumSeqs int
	// MaxNumBatchedTokens is the per-step token budget (8192).
	MaxNumBatchedTokens int
	// MaxModelLen bounds prompt plus output (the profile's model length).
	MaxModelLen int
	// MaxWaiting bounds the waiting queue; Add fails with ErrQueueFull past
	// it. 0 means unbounded.
	MaxWaiting int
	// NumBlocks overrides the KV capacity derived from the profile.
	NumBlocks int
	// HashSeed seeds the block hashes (vLLM's PYTHONHASHSEED).
	HashSeed uint64
	// Hashing, when set, computes the prefix-cache keys instead (a
	// simulator hashes as vLLM does, kvblock.VLLMHasher); its block size
	// must be BlockSize. Default: kvblock.Hasher seeded with HashSeed.
	Hashing kvblock.Chain
	// Seed seeds generated tokens and output lengths.
	Seed uint64
	// HeldTimeout frees a prefill engine's held blocks that no decode
	// engine pulled (vLLM's NIXL abort timeout, 480 s).
	HeldTimeout time.Duration
	// DisableKVEvents skips building KV events (a planner that does not
	// need them saves the allocations).
	DisableKVEvents bool
	// Policy is vLLM's --scheduling-policy: FCFS (default) or Priority,
	// where the waiting queue is ordered by (Request.Priority, arrival)
	// and preemption takes the running request that sorts last.
	Policy Policy
	// CPUTierBytes and DiskTierBytes size the engine's KV tiers below the
	// GPU cache (vLLM's OffloadingConnector; see tiers.go). 0: no tier.
	CPUTierBytes, DiskTierBytes int64
}

// Policy is a scheduling policy.
type Policy int

const (
	PolicyFCFS Policy = iota
	PolicyPriority
)

func (p Policy) String() string {
	if p == PolicyPriority {
		return "priority"
	}
	return "fcfs"
}

// ParsePolicy parses vLLM's --scheduling-policy values.
func ParsePolicy(s string) (Policy, error) {
	switch s {
	case "fcfs", "":
		return PolicyFCFS, nil
	case "priority":
		return PolicyPriority, nil
	}
	return 0, fmt.Errorf("unknown scheduling policy %q (want fcfs or priority)", s)
}

// Request is one generation request.
type Request struct {
	ID        string
	Prompt    []uint32
	MaxTokens int
	// IgnoreEOS generates exactly MaxTokens tokens; otherwise the request
	// stops at a length drawn from its seed, at most MaxTokens.
	IgnoreEOS bool
	// Seed fixes the generated tokens; 0 derives it from the engine seed
	// and the request id.
	Seed uint64
	// RemoteDecode (prefill role): compute the prompt, emit one token, and
	// hold the blocks until Release.
	RemoteDecode bool
	// RemotePrefill (decode role): the KV of all prompt tokens but the last
	// arrives from a prefill engine; the engine pays the transfer time for
	// the part it does not hold locally.
	RemotePrefill bool
	// Priority orders the waiting queue under PolicyPriority: lower is
	// served first (vLLM's convention). It must be 0 under FCFS.
	Priority int
	// StoredTokens is how many leading prompt tokens have their KV in
	// shared storage (the caller knows what the store holds). Whole blocks
	// of them that the local cache lacks are restored, at the profile's
	// RestoreTime, instead of computed; the profile must model storage.
	// 0 (the default) changes nothing.
	StoredTokens int
	// CacheSalt is vLLM's cache_salt: the request's blocks are cached apart
	// from every other salt's and the unsalted ones (their hashes are moved
	// by the salt, as vLLM hashes it into the first block's extra keys), so
	// tenants never share a prefix. "" is unsalted.
	CacheSalt string
}

// FinishReason says why a request ended.
type FinishReason string

const (
	FinishNone   FinishReason = ""
	FinishStop   FinishReason = "stop"
	FinishLength FinishReason = "length"
	FinishAbort  FinishReason = "abort"
)

// Output is what one step produced for one request. Slices are valid until
// the next call to Step.
type Output struct {
	ID        string
	NewTokens []uint32
	// FirstToken marks the output that carries the request's first token.
	FirstToken   bool
	NumOutput    int
	PromptTokens int
	// CachedTokens is the prompt tokens found in the local prefix cache at
	// admission; ExternalTokens those that arrived from a prefill engine
	// or were restored from shared storage.
	CachedTokens   int
	ExternalTokens int
	Finished       bool
	FinishReason   FinishReason
	// Held (prefill role): the blocks stay allocated for a decode engine.
	Held     bool
	BlockIDs []int
}

// KVEventKind names a KV event as vLLM does.
type KVEventKind uint8

const (
	BlockStored KVEventKind = iota + 1
	BlockRemoved
	AllBlocksCleared
)

func (k KVEventKind) String() string {
	switch k {
	case BlockStored:
		return "BlockStored"
	case BlockRemoved:
		return "BlockRemoved"
	case AllBlocksCleared:
		return "AllBlocksCleared"
	}
	return "Unknown"
}

// KVEvent is a change to the prefix cache, as vLLM publishes it.
type KVEvent struct {
	Kind   KVEventKind
	Hashes []uint64
	// Parent is the hash of the block before the first stored one;
	// HasParent is false for a sequence's first block.
	Parent    uint64
	HasParent bool
	TokenIDs  []uint32
	BlockSize int
	// Medium is where the blocks are: MediumGPU (empty) for the prefix
	// cache, MediumCPU or MediumStorage for the tiers below it.
	Medium string
}

// StepResult is the outcome of one step.
type StepResult struct {
	// Duration is the modelled step time; outputs happen at now+Duration.
	Duration time.Duration
	// Idle is set when nothing could be scheduled; WakeAt, when not zero,
	// is the earliest time a pending KV transfer completes.
	Idle      bool
	WakeAt    time.Time
	NumSeqs   int
	NumTokens int
	Outputs   []Output
	Events    []KVEvent
}

// Stats is a snapshot of the engine's gauges and counters.
type Stats struct {
	Running, Waiting, Loading, Held int
	NumBlocks, FreeBlocks           int
	BlockSize                       int
	// KVUsage is 1 - free/total blocks, vLLM's kv_cache_usage_perc.
	KVUsage float64
	// PrefixQueries and PrefixHits count tokens, as vLLM does.
	PrefixQueries, PrefixHits      int64
	PromptTokens, GenerationTokens int64
	Preemptions, Finished, Aborted int64
	Steps                          int64
	BusyTime                       time.Duration
	CachedBlocks                   int
	ExternalTokens                 int64
	// CPUTierHitTokens and DiskTierHitTokens count prompt tokens loaded
	// from the tiers instead of computed; TierStoredBlocks the blocks
	// written to the first tier; CPUTierBlocks and DiskTierBlocks what
	// the tiers hold now.
	CPUTierHitTokens, DiskTierHitTokens int64
	TierStoredBlocks                    int64
	CPUTierBlocks, DiskTierBlocks       int
}

// Errors Add returns; the simulator maps them to HTTP statuses.
var (
	ErrQueueFull   = errors.New("waiting queue is full")
	ErrTooLong     = errors.New("request exceeds the model's maximum context length")
	ErrBadRequest  = errors.New("invalid request")
	ErrDuplicateID = errors.New("duplicate request id")
)

type state uint8

const (
	stWaiting state = iota
	stLoading
	stRunning
	stHeld
)

type seq struct {
	req        Request
	salt       uint64 // SaltKey(req.CacheSalt), 0 unsalted
	tokens     []uint32
	promptLen  int
	stopAt     int
	natural    bool
	hashes     []uint64
	hstate     []byte // the hashing chain's state after hashes
	numCached  int    // hashes[:numCached] are registered in the cache
	blocks     []int32
	computed   int
	admitted   bool
	counted    bool
	loaded     bool
	loadTo     int // computed tokens once a load completes
	cachedToks int
	external   int
	state      state
	readyAt    time.Time
	heldUntil  time.Time
	rng        uint64
	first      bool
	arrival    uint64
}

// Engine is one modelled vLLM engine.
type Engine struct {
	cfg      Config
	hasher   kvblock.Hasher
	chain    kvblock.Chain
	pool     *blockPool
	seqs     map[string]*seq
	waiting  []*seq // FCFS; front at index 0
	running  []*seq
	loading  []*seq
	held     []*seq
	stats    Stats
	res      StepResult
	pending  []KVEvent
	batch    []StepInput
	sched    []schedItem
	hits     []int32
	vocab    []uint32
	arrivals uint64
	tiers    []*tier
}

// before reports whether a is served before b under the priority policy.
func before(a, b *seq) bool {
	if a.req.Priority != b.req.Priority {
		return a.req.Priority < b.req.Priority
	}
	return a.arrival < b.arrival
}

// enqueue puts s in the waiting queue: under FCFS at the back, or at the
// front when it returns (preempted, or its remote KV arrived); under the
// priority policy in (priority, arrival) order, so a returning request
// regains its place.
func (e *Engine) enqueue(s *seq, front bool) {
	i := len(e.waiting)
	if e.cfg.Policy == PolicyPriority {
		for i > 0 && before(s, e.waiting[i-1]) {
			i--
		}
	} else if front {
		i = 0
	}
	e.waiting = append(e.waiting, nil)
	copy(e.waiting[i+1:], e.waiting[i:])
	e.waiting[i] = s
}

// victim is the running request to preempt: the last admitted under FCFS,
// the one that sorts last by (priority, arrival) under the priority policy.
func (e *Engine) victim() *seq {
	v := e.running[len(e.running)-1]
	if e.cfg.Policy == PolicyPriority {
		for _, s := range e.running {
			if before(v, s) {
				v = s
			}
		}
	}
	return v
}

type schedItem struct {
	s *seq
	n int
}

// New builds an engine; it validates the profile and the limits.
func New(cfg Config) (*Engine, error) {
	if err := cfg.Profile.Validate(); err != nil {
		return nil, err
	}
	if cfg.BlockSize == 0 {
		cfg.BlockSize = kvblock.DefaultBlockSize
	}
	if cfg.MaxNumSeqs == 0 {
		cfg.MaxNumSeqs = 256
	}
	if cfg.MaxNumBatchedTokens == 0 {
		cfg.MaxNumBatchedTokens = 8192
	}
	if cfg.MaxModelLen == 0 {
		cfg.MaxModelLen = cfg.Profile.Model.MaxModelLen
	}
	if cfg.HeldTimeout == 0 {
		cfg.HeldTimeout = 480 * time.Second
	}
	switch {
	case cfg.BlockSize < 1 || cfg.BlockSize > 1024:
		return nil, fmt.Errorf("engine: block size %d out of range [1, 1024]", cfg.BlockSize)
	case cfg.MaxNumSeqs < 1:
		return nil, fmt.Errorf("engine: max_num_seqs %d must be positive", cfg.MaxNumSeqs)
	case cfg.MaxNumBatchedTokens < 1:
		return nil, fmt.Errorf("engine: max_num_batched_tokens %d must be positive", cfg.MaxNumBatchedTokens)
	case cfg.MaxModelLen < 2:
		return nil, fmt.Errorf("engine: max_model_len %d too small", cfg.MaxModelLen)
	case cfg.MaxWaiting < 0 || cfg.NumBlocks < 0 || cfg.CPUTierBytes < 0 || cfg.DiskTierBytes < 0:
		return nil, fmt.Errorf("engine: negative limit")
	}
	n := cfg.NumBlocks
	if n == 0 {
		n = cfg.Profile.KVCapacityTokens() / cfg.BlockSize
	}
	if n < 1 {
		return nil, fmt.Errorf("engine: no KV blocks")
	}
	h, err := kvblock.NewHasher(cfg.BlockSize, cfg.HashSeed)
	if err != nil {
		return nil, err
	}
	chain := cfg.Hashing
	if chain == nil {
		chain = h
	} else if chain.BlockSize() != cfg.BlockSize {
		return nil, fmt.Errorf("engine: hashing block size %d, engine block size %d", chain.BlockSize(), cfg.BlockSize)
	}
	e := &Engine{
		cfg:    cfg,
		hasher: h,
		chain:  chain,
		seqs:   make(map[string]*seq),
		vocab:  tokenizer.GeneratedVocab(),
	}
	if err := e.setupTiers(); err != nil {
		return nil, err
	}
	e.pool = newBlockPool(n, e.evicted)
	e.stats.NumBlocks = n
	e.stats.BlockSize = cfg.BlockSize
	return e, nil
}

// Config returns the effective configuration (defaults filled in).
func (e *Engine) Config() Config { return e.cfg }

// Hasher returns the default block hasher, which computes the cache keys
// unless Config.Hashing replaced it.
func (e *Engine) Hasher() kvblock.Hasher { return e.hasher }

// NumBlocks is the KV capacity in blocks.
func (e *Engine) NumBlocks() int { return e.pool.size() }

// Add queues a request that arrives at now.
func (e *Engine) Add(now time.Time, r Request) error {
	switch {
	case r.ID == "":
		return fmt.Errorf("%w: empty request id", ErrBadRequest)
	case len(r.Prompt) == 0:
		return fmt.Errorf("%w: empty prompt", ErrBadRequest)
	case r.MaxTokens < 1:
		return fmt.Errorf("%w: max_tokens must be at least 1, got %d", ErrBadRequest, r.MaxTokens)
	case r.RemoteDecode && e.cfg.Role == RoleDecode:
		return fmt.Errorf("%w: a decode engine cannot serve a remote-decode (prefill) request", ErrBadRequest)
	case r.RemotePrefill && e.cfg.Role == RolePrefill:
		return fmt.Errorf("%w: a prefill engine cannot serve a remote-prefill (decode) request", ErrBadRequest)
	case r.StoredTokens < 0 || r.StoredTokens > len(r.Prompt):
		return fmt.Errorf("%w: stored tokens %d outside the prompt's %d", ErrBadRequest, r.StoredTokens, len(r.Prompt))
	case r.StoredTokens > 0 && !e.cfg.Profile.HasStorage():
		return fmt.Errorf("%w: stored tokens given but profile %q models no shared storage", ErrBadRequest, e.cfg.Profile.Name)
	case r.StoredTokens > 0 && r.RemotePrefill:
		return fmt.Errorf("%w: a remote-prefill request cannot also restore from storage", ErrBadRequest)
	case r.Priority != 0 && e.cfg.Policy != PolicyPriority:
		return fmt.Errorf("%w: priority %d requested but priority scheduling is not enabled", ErrBadRequest, r.Priority)
	}
	if len(r.Prompt)+r.MaxTokens > e.cfg.MaxModelLen {
		return fmt.Errorf("%w: this model's maximum context length is %d tokens; the request has %d prompt and %d completion tokens",
			ErrTooLong, e.cfg.MaxModelLen, len(r.Prompt), r.MaxTokens)
	}
	if need := (len(r.Prompt) + r.MaxTokens + e.cfg.BlockSize - 1) / e.cfg.BlockSize; need > e.pool.size() {
		return fmt.Errorf("%w: the request needs %d KV blocks, the engine has %d", ErrTooLong, need, e.pool.size())
	}
	if _, dup := e.seqs[r.ID]; dup {
		return fmt.Errorf("%w: %q", ErrDuplicateID, r.ID)
	}
	if e.cfg.MaxWaiting > 0 && len(e.waiting) >= e.cfg.MaxWaiting {
		return ErrQueueFull
	}
	e.arrivals++
	s := &seq{req: r, promptLen: len(r.Prompt), first: true, arrival: e.arrivals}
	s.tokens = make([]uint32, len(r.Prompt), len(r.Prompt)+r.MaxTokens)
	copy(s.tokens, r.Prompt)
	s.hashes, s.hstate = e.chain.ExtendChain(make([]uint64, 0, (len(r.Prompt)+r.MaxTokens)/e.cfg.BlockSize+1), nil, s.tokens)
	if r.CacheSalt != "" {
		s.salt = SaltKey(r.CacheSalt)
		SaltHashes(s.hashes, s.salt)
	}
	seed := r.Seed
	if seed == 0 {
		seed = e.cfg.Seed ^ strHash(r.ID)
	}
	s.rng = seed
	s.stopAt = r.MaxTokens
	if r.RemoteDecode {
		s.stopAt = 1
	} else if !r.IgnoreEOS {
		// A natural answer length between 16 and 271 tokens.
		if nat := 16 + int(splitmix(&s.rng)%256); nat < s.stopAt {
			s.stopAt, s.natural = nat, true
		}
	}
	e.seqs[r.ID] = s
	e.enqueue(s, false)
	return nil
}

// Abort removes a request wherever it is and frees its blocks. It reports
// whether the request was known.
func (e *Engine) Abort(id string) bool {
	s, ok := e.seqs[id]
	if !ok {
		return false
	}
	switch s.state {
	case stWaiting:
		e.waiting = remove(e.waiting, s)
	case stLoading:
		e.loading = remove(e.loading, s)
	case stRunning:
		e.running = remove(e.running, s)
	case stHeld:
		e.held = remove(e.held, s)
	}
	e.freeBlocks(s)
	delete(e.seqs, id)
	if s.state != stHeld {
		e.stats.Aborted++
	}
	return true
}

// Release frees the blocks a prefill engine holds for request id once the
// decode engine has pulled them. It reports whether they were held.
func (e *Engine) Release(id string) bool {
	s, ok := e.seqs[id]
	if !ok || s.state != stHeld {
		return false
	}
	return e.Abort(id)
}

// HeldBlocks returns the blocks a prefill engine holds for id.
func (e *Engine) HeldBlocks(id string) ([]int, bool) {
	s, ok := e.seqs[id]
	if !ok || s.state != stHeld {
		return nil, false
	}
	return blockIDs(s.blocks), true
}

// ResetPrefixCache forgets all cached blocks, as vLLM's reset_prefix_cache
// does; it fails while requests hold blocks.
func (e *Engine) ResetPrefixCache() bool {
	if !e.pool.clearCache() {
		return false
	}
	for _, s := range e.seqs {
		s.numCached = 0
	}
	if !e.cfg.DisableKVEvents {
		e.pending = append(e.pending, KVEvent{Kind: AllBlocksCleared})
	}
	return true
}

// Stats returns a snapshot of gauges and counters.
func (e *Engine) Stats() Stats {
	st := e.stats
	st.Running = len(e.running)
	st.Waiting = len(e.waiting) + len(e.loading)
	st.Loading = len(e.loading)
	st.Held = len(e.held)
	st.FreeBlocks = e.pool.numFree
	st.KVUsage = 1 - float64(e.pool.numFree)/float64(e.pool.size())
	st.CachedBlocks = len(e.pool.cached)
	st.CPUTierBlocks, st.DiskTierBlocks = e.TierBlocks()
	return st
}

// Pending reports whether any request is queued, loading or running.
func (e *Engine) Pending() bool {
	return len(e.waiting)+len(e.running)+len(e.loading) > 0
}

// Step schedules and runs one engine step starting at now. The returned
// result is reused by the next call.
func (e *Engine) Step(now time.Time) *StepResult {
	r := &e.res
	// Events from outside a step (ResetPrefixCache) are delivered now.
	r.Events = append(r.Events[:0], e.pending...)
	e.pending = e.pending[:0]
	r.Outputs = r.Outputs[:0]
	r.Duration, r.Idle, r.WakeAt, r.NumSeqs, r.NumTokens = 0, false, time.Time{}, 0, 0

	e.expireHeld(now)
	e.finishLoads(now)
	e.schedule(now)

	if len(e.sched) == 0 {
		r.Idle = true
		for _, s := range e.loading {
			if r.WakeAt.IsZero() || s.readyAt.Before(r.WakeAt) {
				r.WakeAt = s.readyAt
			}
		}
		return r
	}
	e.batch = e.batch[:0]
	for _, it := range e.sched {
		e.batch = append(e.batch, StepInput{Query: it.n, Context: it.s.computed})
		r.NumTokens += it.n
	}
	r.NumSeqs = len(e.sched)
	r.Duration = e.cfg.Profile.StepTime(e.batch)
	e.stats.Steps++
	e.stats.BusyTime += r.Duration

	end := now.Add(r.Duration)
	for _, it := range e.sched {
		e.advance(it.s, it.n, end)
	}
	return r
}

// schedule fills e.sched: running requests first (decodes and unfinished
// prefill chunks), preempting from the back when blocks run out, then
// waiting requests in FCFS order while the token budget, the sequence limit
// and free blocks allow (vLLM V1's scheduler).
func (e *Engine) schedule(now time.Time) {
	e.sched = e.sched[:0]
	budget := e.cfg.MaxNumBatchedTokens
	preempted := false
	for i := 0; i < len(e.running) && budget > 0; {
		s := e.running[i]
		n := min(len(s.tokens)-s.computed, budget)
		ok := true
		for !e.allocSlots(s, n) {
			v := e.victim()
			vi := slices.Index(e.running, v)
			e.running = remove(e.running, v)
			// Under the priority policy the victim may already be
			// scheduled in this step: undo that.
			for k, it := range e.sched {
				if it.s == v {
					budget += it.n
					e.sched = slices.Delete(e.sched, k, k+1)
					break
				}
			}
			e.preempt(v)
			preempted = true
			if v == s {
				ok = false
				break
			}
			if vi < i {
				i--
			}
		}
		if !ok {
			// s went back to waiting; e.running[i] is the next request,
			// which may still fit in what s freed (vLLM stops here and
			// schedules it in the next step; going on saves an empty step).
			continue
		}
		e.sched = append(e.sched, schedItem{s, n})
		budget -= n
		i++
	}
	// After a preemption vLLM admits nothing new in the same step; when the
	// preemption left nothing scheduled at all, admitting now (the freed
	// blocks make room) avoids reporting an idle step with work pending.
	if preempted && len(e.sched) > 0 {
		return
	}
	bs := e.cfg.BlockSize
	for len(e.waiting) > 0 && budget > 0 && len(e.running) < e.cfg.MaxNumSeqs {
		s := e.waiting[0]
		if !s.admitted {
			// Longest cached prefix, leaving at least one token to compute.
			maxHit := min((len(s.tokens)-1)/bs, len(s.hashes))
			e.hits = e.pool.lookup(s.hashes[:maxHit], e.hits[:0])
			hitTokens := len(e.hits) * bs
			remote := 0
			if s.req.RemotePrefill && !s.loaded {
				remote = max(0, s.promptLen-1-hitTokens)
			}
			cpuBlocks, diskBlocks := 0, 0
			if len(e.tiers) > 0 && remote == 0 {
				// The tiers continue the GPU hit, whole blocks, leaving at
				// least one token to compute; again after a preemption
				// (vLLM's connector is asked at every admission).
				cpuBlocks, diskBlocks = e.tierLookup(s.hashes, len(e.hits), maxHit)
			}
			first := !s.counted
			tierTokens := (cpuBlocks + diskBlocks) * bs
			restore := 0
			if s.req.StoredTokens > 0 && !s.loaded {
				// Whole blocks, leaving at least one token to compute.
				restore = max(0, min(s.req.StoredTokens, s.promptLen-1)/bs*bs-hitTokens-tierTokens)
			}
			target := hitTokens + min(len(s.tokens)-hitTokens, budget)
			if remote > 0 {
				target = s.promptLen - 1
			} else if restore > 0 || tierTokens > 0 {
				target = hitTokens + tierTokens + restore
			}
			need := (target+bs-1)/bs - len(e.hits)
			avail := e.pool.numFree
			for _, b := range e.hits {
				if e.pool.ref[b] == 0 {
					avail--
				}
			}
			if need > avail {
				break
			}
			for _, b := range e.hits {
				e.pool.touch(b)
			}
			s.blocks = append(s.blocks[:0], e.hits...)
			s.numCached = len(e.hits)
			s.computed = hitTokens
			s.admitted = true
			if !s.counted {
				s.counted = true
				s.cachedToks = hitTokens
				e.stats.PrefixQueries += int64(s.promptLen)
				e.stats.PrefixHits += int64(hitTokens)
			}
			if remote > 0 || restore > 0 || tierTokens > 0 {
				if !e.allocSlots(s, target-s.computed) {
					panic("engine: block accounting out of sync")
				}
				e.waiting = e.waiting[1:]
				s.state = stLoading
				s.loaded = true
				s.loadTo = target
				if remote > 0 {
					s.external = remote
					s.readyAt = now.Add(e.cfg.Profile.TransferTime(remote))
				} else {
					if first || restore > 0 {
						// What the answer reports is fixed at the first
						// admission, as vLLM's num_cached_tokens.
						s.external = tierTokens + restore
					}
					s.readyAt = now.Add(e.cfg.Profile.TierLoadTime(cpuBlocks*bs, diskBlocks*bs) + e.cfg.Profile.RestoreTime(restore))
					e.stats.CPUTierHitTokens += int64(cpuBlocks * bs)
					e.stats.DiskTierHitTokens += int64(diskBlocks * bs)
				}
				e.loading = append(e.loading, s)
				continue
			}
		}
		n := min(len(s.tokens)-s.computed, budget)
		if !e.allocSlots(s, n) {
			break
		}
		e.waiting = e.waiting[1:]
		s.state = stRunning
		e.running = append(e.running, s)
		e.sched = append(e.sched, schedItem{s, n})
		budget -= n
	}
}

// allocSlots makes sure s has blocks for computed+n tokens.
func (e *Engine) allocSlots(s *seq, n int) bool {
	bs := e.cfg.BlockSize
	need := (s.computed+n+bs-1)/bs - len(s.blocks)
	if need <= 0 {
		return true
	}
	if need > e.pool.numFree {
		return false
	}
	for range need {
		s.blocks = append(s.blocks, e.pool.alloc())
	}
	return true
}

// preempt frees a running request's blocks and puts it back at the front
// of the waiting queue; it will recompute (with whatever prefix survives in
// the cache).
func (e *Engine) preempt(s *seq) {
	e.freeBlocks(s)
	s.computed = 0
	s.admitted = false
	s.state = stWaiting
	e.enqueue(s, true)
	e.stats.Preemptions++
}

// freeBlocks releases s's blocks in reverse order, so that the tail of a
// sequence is evicted before its (more shareable) head.
func (e *Engine) freeBlocks(s *seq) {
	for i := len(s.blocks) - 1; i >= 0; i-- {
		e.pool.release(s.blocks[i])
	}
	s.blocks = s.blocks[:0]
	s.numCached = 0
}

// finishLoads moves requests whose remote or restored KV has arrived to the
// front of the waiting queue with the loaded tokens computed (all but the
// last prompt token for a remote prefill).
func (e *Engine) finishLoads(now time.Time) {
	j := 0
	for _, s := range e.loading {
		if s.readyAt.After(now) {
			e.loading[j] = s
			j++
			continue
		}
		s.computed = s.loadTo
		s.state = stWaiting
		e.cacheFull(s)
		e.enqueue(s, true)
	}
	clear(e.loading[j:])
	e.loading = e.loading[:j]
}

func (e *Engine) expireHeld(now time.Time) {
	for i := 0; i < len(e.held); {
		s := e.held[i]
		if s.heldUntil.After(now) {
			i++
			continue
		}
		e.Abort(s.req.ID)
	}
}

// advance applies a step's work to s: n more tokens computed, new full
// blocks cached, and a token sampled once every known token is computed.
func (e *Engine) advance(s *seq, n int, end time.Time) {
	s.computed += n
	if s.computed < s.promptLen {
		e.stats.PromptTokens += int64(n)
	} else {
		e.stats.PromptTokens += int64(max(0, s.promptLen-(s.computed-n)))
	}
	e.cacheFull(s)
	if s.computed < len(s.tokens) {
		return // a prefill chunk that did not reach the end of the prompt
	}
	tok := e.vocab[splitmix(&s.rng)%uint64(len(e.vocab))]
	s.tokens = append(s.tokens, tok)
	e.stats.GenerationTokens++
	out := Output{
		ID:             s.req.ID,
		NewTokens:      s.tokens[len(s.tokens)-1:],
		FirstToken:     s.first,
		NumOutput:      len(s.tokens) - s.promptLen,
		PromptTokens:   s.promptLen,
		CachedTokens:   s.cachedToks,
		ExternalTokens: s.external,
	}
	s.first = false
	if out.NumOutput >= s.stopAt {
		out.Finished = true
		out.FinishReason = FinishLength
		if s.natural {
			out.FinishReason = FinishStop
		}
		e.running = remove(e.running, s)
		e.stats.Finished++
		e.stats.ExternalTokens += int64(s.external)
		if s.req.RemoteDecode {
			s.state = stHeld
			s.heldUntil = end.Add(e.cfg.HeldTimeout)
			out.Held = true
			out.BlockIDs = blockIDs(s.blocks)
			e.held = append(e.held, s)
		} else {
			e.freeBlocks(s)
			delete(e.seqs, s.req.ID)
		}
	}
	e.res.Outputs = append(e.res.Outputs, out)
}

// cacheFull registers the full, computed blocks of s in the prefix cache
// and records a BlockStored event for those newly stored.
func (e *Engine) cacheFull(s *seq) {
	bs := e.cfg.BlockSize
	full := min(s.computed/bs, len(s.blocks))
	if full <= s.numCached {
		return
	}
	n0 := len(s.hashes)
	s.hashes, s.hstate = e.chain.ExtendChain(s.hashes, s.hstate, s.tokens[:full*bs])
	if s.salt != 0 {
		SaltHashes(s.hashes[n0:], s.salt)
	}
	e.tierPut(s, s.numCached, full-1)
	first := -1
	for i := s.numCached; i < full; i++ {
		stored := e.pool.store(s.blocks[i], s.hashes[i])
		if stored && first < 0 {
			first = i
		}
		if (!stored || i == full-1) && first >= 0 {
			last := i
			if !stored {
				last = i - 1
			}
			e.storedEvent(s, first, last)
			first = -1
		}
	}
	s.numCached = full
}

func (e *Engine) storedEvent(s *seq, first, last int) {
	if e.cfg.DisableKVEvents {
		return
	}
	bs := e.cfg.BlockSize
	ev := KVEvent{
		Kind:      BlockStored,
		Hashes:    append([]uint64(nil), s.hashes[first:last+1]...),
		TokenIDs:  append([]uint32(nil), s.tokens[first*bs:(last+1)*bs]...),
		BlockSize: bs,
	}
	if first > 0 {
		ev.Parent, ev.HasParent = s.hashes[first-1], true
	}
	e.res.Events = append(e.res.Events, ev)
}

func (e *Engine) evicted(h uint64) {
	if e.cfg.DisableKVEvents {
		return
	}
	ev := e.res.Events
	if n := len(ev); n > 0 && ev[n-1].Kind == BlockRemoved {
		ev[n-1].Hashes = append(ev[n-1].Hashes, h)
		return
	}
	e.res.Events = append(ev, KVEvent{Kind: BlockRemoved, Hashes: []uint64{h}})
}

func remove(list []*seq, s *seq) []*seq {
	for i, x := range list {
		if x == s {
			copy(list[i:], list[i+1:])
			list[len(list)-1] = nil
			return list[:len(list)-1]
		}
	}
	return list
}

func blockIDs(bs []int32) []int {
	out := make([]int, len(bs))
	for i, b := range bs {
		out[i] = int(b)
	}
	return out
}

// splitmix is SplitMix64: a tiny, well-mixed, deterministic generator.
func splitmix(x *uint64) uint64 {
	*x += 0x9e3779b97f4a7c15
	z := *x
	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9
	z = (z ^ (z >> 27)) * 0x94d049bb133111eb
	return z ^ (z >> 31)
}

func strHash(s string) uint64 {
	h := uint64(14695981039346656037)
	for i := 0; i < len(s); i++ {
		h ^= uint64(s[i])
		h *= 1099511628211
	}
	return h
}
