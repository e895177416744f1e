package router

import (
	"errors"
	"sync"

	"github.com/cespare/xxhash/v2"
	"github.com/llmd-kn/llmd-kn/pkg/kvblock"
)

// The precise index mirrors the engines' prefix caches from their KV
// events, with keys of its own. An engine names its blocks with its own
// hashes (vLLM: SHA-256 or xxhash over CBOR, seeded by PYTHONHASHSEED, at the
// engine's block size), which the router neither can nor should compute;
// what it can read is the token ids every BlockStored event carries. So the
// index hashes those tokens into its own keys (kvblock.Hasher at the
// index's block size, the same function that hashes a request's prompt)
// and keeps a map from each engine hash to what it learned about that block:
// where it ends in its sequence, the chained key state there, and the keys
// of the router blocks it completes. BlockRemoved events, which carry only
// engine hashes, resolve through that map; a block announced by several
// engines (or twice by one, or on several media) is reference-counted.
//
// Router and engine block sizes are independent: a router block of 64
// tokens over engine blocks of 16 is completed by every fourth engine block;
// its key is published for an endpoint when that endpoint holds every engine
// block under it, and withdrawn when the completing block leaves (engines
// evict a sequence's tail before its head: vLLM frees a request's blocks in
// reverse order). Blocks in GPU memory are the prefix cache; blocks on
// other media (CPU, disk tiers of offloading connectors, and the shared
// storage's pseudo-endpoint) are keyed in a table per medium and count at
// their tier's cost (tiers.go).

// KVEvent is a change to an engine's prefix cache, as vLLM publishes it. The
// caller converts from its transport (vLLM's msgpack over ZMQ, or
// pkg/engine's events in process).
type KVEvent struct {
	Kind KVEventKind
	// Hashes are the engine's block hashes (any function: they are only
	// matched against each other).
	Hashes []uint64
	// Parent is the engine hash of the block before Hashes[0]; HasParent is
	// false when the first block starts a sequence.
	Parent    uint64
	HasParent bool
	// TokenIDs are the tokens of the stored blocks, BlockSize per hash
	// (BlockStored). The index's keys are computed from them.
	TokenIDs  []uint32
	BlockSize int
	// Medium is where the blocks live: "" or "GPU" (the prefix cache),
	// "CPU", "STORAGE" or "Disk" (vLLM's offloading connector's tiers:
	// CPU memory, the disk below it); any other value ranks as the
	// dearest tier.
	Medium string
	// LoraName is the adapter the blocks belong to, "" for the base model;
	// an adapter's blocks get keys apart from the base model's.
	LoraName string
}

// Errors of Apply: events it could not use.
var (
	// ErrEventShape: a BlockStored event whose tokens are not BlockSize per
	// hash.
	ErrEventShape = errors.New("router: BlockStored event's token_ids are not block_size per block hash")
)

// medium indexes holding counts.
type medium uint8

const (
	mediumGPU medium = iota
	mediumCPU
	mediumDisk
	mediumOther
	// mediumStorage is the shared storage's, set by Router.ApplyStorage
	// only (no event string maps to it).
	mediumStorage
	numMedia
)

func mediumOf(s string) medium {
	switch s {
	case "", "GPU", "gpu":
		return mediumGPU
	case "CPU", "cpu":
		return mediumCPU
	case "STORAGE", "Disk", "disk":
		// vLLM's MEDIUM_STORAGE is the connector's tier below CPU (local
		// NVMe or a filesystem), older vLLM's "Disk".
		return mediumDisk
	}
	return mediumOther
}

// engBlock is what the index knows of one engine block, shared by every
// endpoint holding it.
type engBlock struct {
	refs int32 // endpoints holding it, on any medium
	size int32 // the engine's block size
	end  int64 // tokens from the start of the sequence to the block's end
	// parent is the engine hash of the block before, when hasParent.
	parent    uint64
	hasParent bool
	// chain is the key of the last full router block ending at or before
	// end (the sequence's root when none); tail the tokens after it, up to
	// end.
	chain uint64
	tail  []uint32
	// keys are the router keys whose last token lies in this block.
	keys []uint64
}

func (b *engBlock) start() int64 { return b.end - int64(b.size) }

func (b *engBlock) keysOrNil() []uint64 {
	if b == nil {
		return nil
	}
	return b.keys
}

// holding counts one endpoint's announcements of one engine block by medium.
type holding [numMedia]uint16

func (h holding) empty() bool { return h == holding{} }

// preciseIndex is guarded by mu; Router.Apply drives it.
type preciseIndex struct {
	mu sync.RWMutex
	t  *holderTable // router key -> endpoints holding it on GPU
	// tiers are the tables of the other media, made on first use.
	tiers     [numMedia]*holderTable
	width     int
	salt      uint64
	ep        []preciseEndpoint
	blocks    map[uint64]*engBlock // engine hash -> block
	blockSize int
	hasher    kvblock.Hasher
	maxBlocks int
}

type preciseEndpoint struct {
	// seen: events arrive for this endpoint, so its entries are data, not
	// absence of data.
	seen bool
	held map[uint64]holding
	// keys counts the router keys set for this endpoint in t, tierKeys
	// those in the tier tables; media the engine blocks held per medium.
	keys     int
	tierKeys int
	// storage marks the shared storage's pseudo-endpoint: not bounded by
	// maxBlocks (the manifest feed bounds it).
	storage bool
	media   [numMedia]int
	resets  int // overflows of maxBlocks that cleared the endpoint
	// Counters of what Apply did with this endpoint's events.
	stored, removed, unmatched, rejected int64
	trust                                trustState
}

// endpoint returns slot s's record, making it if needed; the caller holds
// mu for writing.
func (p *preciseIndex) endpoint(s int32) *preciseEndpoint {
	for int(s) >= len(p.ep) {
		p.ep = append(p.ep, preciseEndpoint{})
	}
	e := &p.ep[s]
	if e.held == nil {
		e.held = make(map[uint64]holding)
	}
	return e
}

// root is the chain state a sequence starts from: the base model's, or an
// adapter's own.
func (p *preciseIndex) root(lora string) uint64 {
	if lora == "" {
		return p.hasher.Root()
	}
	return fmix(p.hasher.Root() ^ xxhash.Sum64String(lora))
}

// requestRoot is the chain state a request's prompt starts from: its
// adapter's root, moved by its cache salt (which no event carries, so a
// salted chain matches only what the router recorded for that salt).
func (p *preciseIndex) requestRoot(lora, salt string) uint64 {
	r := p.root(lora)
	if salt != "" {
		r = fmix(r ^ xxhash.Sum64String("cache_salt\x00"+salt))
	}
	return r
}

// chainState is where a BlockStored event continues a sequence.
type chainState struct {
	ok        bool
	end       int64
	chain     uint64
	tail      []uint32
	parent    uint64
	hasParent bool
}

// startState returns the state before an event's first block; ok is false
// when the parent is unknown (its event was lost, or preceded this index).
func (p *preciseIndex) startState(ev *KVEvent) chainState {
	if !ev.HasParent {
		return chainState{ok: true, chain: p.root(ev.LoraName)}
	}
	b := p.blocks[ev.Parent]
	if b == nil {
		return chainState{}
	}
	return chainState{ok: true, end: b.end, chain: b.chain, tail: b.tail, parent: ev.Parent, hasParent: true}
}

// block returns the engine block h that continues st with tokens, making it
// if new, and the state after it. A known hash whose position disagrees
// with st is a collision or a lie: nil.
func (p *preciseIndex) block(h uint64, st chainState, tokens []uint32) (*engBlock, chainState) {
	end := st.end + int64(len(tokens))
	if b := p.blocks[h]; b != nil {
		if b.end != end {
			return nil, chainState{}
		}
		return b, chainState{ok: true, end: b.end, chain: b.chain, tail: b.tail, parent: h, hasParent: true}
	}
	b := &engBlock{size: int32(len(tokens)), end: end, parent: st.parent, hasParent: st.hasParent, chain: st.chain}
	r := p.blockSize
	tail := st.tail
	if len(tail)+len(tokens) >= r {
		// Complete router blocks: the first from the tail and the head of
		// tokens, the rest from tokens alone.
		i := 0
		if len(tail) > 0 {
			buf := make([]uint32, 0, r)
			buf = append(append(buf, tail...), tokens[:r-len(tail)]...)
			b.chain = p.hasher.Next(b.chain, buf)
			b.keys = append(b.keys, b.chain)
			i = r - len(tail)
		}
		for ; i+r <= len(tokens); i += r {
			b.chain = p.hasher.Next(b.chain, tokens[i:i+r])
			b.keys = append(b.keys, b.chain)
		}
		tail = tokens[i:]
	} else {
		tail = append(append(make([]uint32, 0, len(tail)+len(tokens)), tail...), tokens...)
	}
	if len(tail) > 0 {
		b.tail = append([]uint32(nil), tail...)
	}
	p.blocks[h] = b
	return b, chainState{ok: true, end: b.end, chain: b.chain, tail: b.tail, parent: h, hasParent: true}
}

// covered reports whether endpoint e holds, on medium m, every engine
// block before b that lies in the router block ending at keyEnd.
func (p *preciseIndex) covered(e *preciseEndpoint, b *engBlock, keyEnd int64, m medium) bool {
	keyStart := keyEnd - int64(p.blockSize)
	for cur := b; cur.start() > keyStart; {
		if !cur.hasParent {
			return false
		}
		h := cur.parent
		if e.held[h][m] == 0 {
			return false
		}
		if cur = p.blocks[h]; cur == nil {
			return false
		}
	}
	return true
}

// keyEnds calls f with each key of b and the token position where its
// router block ends.
func (p *preciseIndex) keyEnds(b *engBlock, f func(key uint64, end int64)) {
	last := b.end / int64(p.blockSize) * int64(p.blockSize)
	for i, k := range b.keys {
		f(k, last-int64(len(b.keys)-1-i)*int64(p.blockSize))
	}
}

// store records that slot s holds engine block h (block b) on medium m,
// and reports whether the slot went over its bound: more blocks than an
// engine can hold means removals were lost.
func (p *preciseIndex) store(s int32, h uint64, b *engBlock, m medium) (overflow bool) {
	e := p.endpoint(s)
	hd := e.held[h]
	if hd.empty() {
		b.refs++
	}
	if hd[m] == 0 {
		e.media[m]++
	}
	if hd[m] < ^uint16(0) {
		hd[m]++
	}
	e.held[h] = hd
	if hd[m] == 1 {
		t := p.table(m)
		p.keyEnds(b, func(k uint64, end int64) {
			if p.covered(e, b, end, m) && t.add(k, int(s)) {
				if m == mediumGPU {
					e.keys++
				} else {
					e.tierKeys++
				}
			}
		})
	}
	e.stored++
	if e.storage {
		return false
	}
	// Bounded per medium: an engine's CPU and disk tiers legitimately hold
	// many times its GPU blocks (a 500 GiB disk tier of 2 MiB blocks is
	// 256,000), so a bound on their sum cleared such an endpoint as if it
	// had lost removals.
	return e.media[m] > p.maxBlocks
}

// table returns medium m's key table, making it if needed; the caller
// holds mu for writing.
func (p *preciseIndex) table(m medium) *holderTable {
	if m == mediumGPU {
		return p.t
	}
	if p.tiers[m] == nil {
		p.tiers[m] = newHolderTable(p.width, p.salt)
	}
	return p.tiers[m]
}

// hasTiers reports whether any block is held off GPU.
func (p *preciseIndex) hasTiers() bool {
	for _, t := range p.tiers {
		if t != nil && t.len() > 0 {
			return true
		}
	}
	return false
}

// widen widens every table to w words per key.
func (p *preciseIndex) widen(w int) {
	p.width = max(p.width, w)
	p.t.widen(w)
	for _, t := range p.tiers {
		if t != nil {
			t.widen(w)
		}
	}
}

// clearSlotShard clears slot s from one shard of every table, updating
// the endpoint's key counts.
func (p *preciseIndex) clearSlotShard(s int32, shard int) {
	var e *preciseEndpoint
	if int(s) < len(p.ep) {
		e = &p.ep[s]
	}
	n := p.t.clearSlotShard(int(s), shard)
	if e != nil && e.keys > 0 {
		e.keys -= n
	}
	for _, t := range p.tiers {
		if t != nil {
			n := t.clearSlotShard(int(s), shard)
			if e != nil && e.tierKeys > 0 {
				e.tierKeys -= n
			}
		}
	}
}

// remove drops one announcement of engine block h on medium m from slot s.
func (p *preciseIndex) remove(s int32, h uint64, m medium) {
	e := p.endpoint(s)
	hd, ok := e.held[h]
	if !ok || hd[m] == 0 {
		e.unmatched++
		return
	}
	e.removed++
	hd[m]--
	b := p.blocks[h]
	if hd[m] == 0 {
		e.media[m]--
		if t := p.tiers[m]; m == mediumGPU || t != nil {
			if m == mediumGPU {
				t = p.t
			}
			for _, k := range b.keysOrNil() {
				if t.remove(k, int(s)) {
					if m == mediumGPU {
						e.keys--
					} else {
						e.tierKeys--
					}
				}
			}
		}
	}
	if !hd.empty() {
		e.held[h] = hd
		return
	}
	delete(e.held, h)
	p.release(h, b)
}

// release drops one endpoint's reference to engine block h.
func (p *preciseIndex) release(h uint64, b *engBlock) {
	if b == nil {
		return
	}
	if b.refs--; b.refs <= 0 {
		delete(p.blocks, h)
	}
}

// releaseAll drops slot s's engine blocks (not its table entries, which the
// caller clears shard by shard) and resets its counts.
func (p *preciseIndex) releaseAll(s int32) {
	if int(s) >= len(p.ep) {
		return
	}
	e := &p.ep[s]
	for h := range e.held {
		p.release(h, p.blocks[h])
	}
	e.held = nil
	e.media = [numMedia]int{}
}

// PreciseEndpointStats describes what the precise index holds and has done
// for one endpoint.
type PreciseEndpointStats struct {
	// Seen: KV events have arrived for the endpoint.
	Seen bool
	// Keys are the router blocks predicted cached on GPU, TierKeys those
	// held on other media; GPUBlocks, CPUBlocks, DiskBlocks, OtherBlocks
	// and StorageBlocks the engine blocks announced per medium.
	Keys, TierKeys                                               int
	GPUBlocks, CPUBlocks, DiskBlocks, OtherBlocks, StorageBlocks int
	// Stored and Removed count block announcements applied; Unmatched those
	// that could not be resolved (a BlockStored whose parent is unknown, a
	// BlockRemoved of a block never stored); Rejected events refused
	// (malformed, conflicting).
	Stored, Removed, Unmatched, Rejected int64
	// Resets counts clears after the endpoint exceeded maxBlocksPerEndpoint.
	Resets int
	// Trusted is false while the endpoint's precise predictions are
	// persistently wrong and decisions use the approximate index for it.
	Trusted bool
	// PreciseError and ApproxError are the recent mean absolute errors, in
	// tokens, of each index's predictions for this endpoint against what it
	// reported cached; Observations counts the comparisons.
	PreciseError, ApproxError float64
	Observations              int64
}

// PreciseEndpoint reports the precise index's view of an endpoint.
func (r *Router) PreciseEndpoint(id string) PreciseEndpointStats {
	r.slots.mu.RLock()
	s := r.slots.lookup(id)
	r.slots.mu.RUnlock()
	p := &r.precise
	p.mu.RLock()
	defer p.mu.RUnlock()
	if s < 0 || int(s) >= len(p.ep) {
		return PreciseEndpointStats{Trusted: true}
	}
	e := &p.ep[s]
	return PreciseEndpointStats{
		Seen: e.seen, Keys: e.keys, TierKeys: e.tierKeys,
		GPUBlocks: e.media[mediumGPU], CPUBlocks: e.media[mediumCPU], DiskBlocks: e.media[mediumDisk],
		OtherBlocks: e.media[mediumOther], StorageBlocks: e.media[mediumStorage],
		Stored: e.stored, Removed: e.removed, Unmatched: e.unmatched, Rejected: e.rejected,
		Resets: e.resets, Trusted: !e.trust.distrusted,
		PreciseError: e.trust.preErr, ApproxError: e.trust.apxErr, Observations: e.trust.n,
	}
}
