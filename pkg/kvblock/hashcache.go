package kvblock

import (
	"bytes"
	"sync"

	"github.com/zeebo/xxh3"
)

// CheckpointBlocks is the spacing, in blocks, of the positions at which a
// HashCache can find a cached prompt: a prompt is found by the content of
// its block just before a multiple of CheckpointBlocks. It bounds the work
// of a miss (one probe per checkpoint: 128 for a 128k-token prompt at 16
// tokens per block) and the keys an entry holds; what lies between the
// last matching checkpoint and the end of the common prefix is compared
// block by block, not rehashed.
const CheckpointBlocks = 64

// maxFailedVerifications bounds the candidate entries a lookup compares
// before giving up: a candidate fails only when two prompts share a block
// at the same position but differ before it.
const maxFailedVerifications = 4

// HashCache remembers the block hashes of recent prompts so that a prompt
// that starts with one of them (the next turn of a conversation, another
// question on the same document) hashes only its new blocks: the cached
// hashes of the longest prefix it shares with an entry are reused after
// that prefix's tokens are compared with the entry's (so the result is
// always exactly Hasher.Hashes), and the rest is hashed.
//
// Memory is bounded by a byte budget (least recently used entries go
// first). An entry keeps a reference to the tokens it was given, not a
// copy: callers must not modify a token slice after passing it to Hashes.
// A HashCache is safe for concurrent use; like the rest of this package it
// holds no clock and no global state.
type HashCache struct {
	h        Hasher
	maxBytes int64

	mu    sync.Mutex
	keys  map[uint64]*hashEntry // checkpoint key -> latest entry holding that block there
	lru   hashEntry             // sentinel: lru.next is the most recently used
	bytes int64
	stats HashCacheStats
}

// hashEntry is one cached prompt. Its fields change only under the cache's
// lock, and only to extend it (the next turn of its conversation), so the
// slices a lookup copied under the lock stay valid: the arrays' first
// len(tokens) and len(hashes) elements are never written again.
type hashEntry struct {
	tokens     []uint32 // full blocks only
	hashes     []uint64
	tokensCap  int // of the caller's array the entry keeps alive
	cost       int64
	keys       int // checkpoint keys that point here
	dropped    bool
	prev, next *hashEntry
}

// hit is what a lookup found: an entry and its slices as they were then.
type hit struct {
	e      *hashEntry
	tokens []uint32
	hashes []uint64
}

// HashCacheStats counts a cache's work and size.
type HashCacheStats struct {
	// Lookups counts calls to Hashes; Hits those that reused at least one
	// block; ReusedBlocks and HashedBlocks split the blocks returned.
	Lookups, Hits, ReusedBlocks, HashedBlocks int64
	// Entries and Bytes are the cache's current size.
	Entries int
	Bytes   int64
}

// NewHashCache returns a cache for h's hashes holding at most maxBytes of
// tokens, hashes and bookkeeping.
func NewHashCache(h Hasher, maxBytes int64) *HashCache {
	c := &HashCache{h: h, maxBytes: maxBytes, keys: map[uint64]*hashEntry{}}
	c.lru.next, c.lru.prev = &c.lru, &c.lru
	return c
}

// Hasher returns the hasher whose hashes the cache returns.
func (c *HashCache) Hasher() Hasher { return c.h }

// Hashes appends to dst exactly what c.Hasher().Hashes(nil, tokens) returns,
// reusing the hashes of the longest prefix it finds in the cache, and
// remembers tokens (by reference) for later prompts that extend them.
func (c *HashCache) Hashes(dst []uint64, tokens []uint32) []uint64 {
	bs := c.h.blockSize
	nb := len(tokens) / bs
	start := len(dst)

	var h hit
	m := 0 // leading blocks known equal to h's
	top := nb
	for range maxFailedVerifications {
		cand, cp := c.find(tokens, top)
		if cand.e == nil {
			break
		}
		if bytes.Equal(tokenBytes(cand.tokens[:cp*bs]), tokenBytes(tokens[:cp*bs])) {
			h, m = cand, cp
			break
		}
		top = cp - 1
	}
	if h.e != nil {
		// Past the checkpoint, compare block by block rather than hash.
		for m < len(h.hashes) && m < nb &&
			bytes.Equal(tokenBytes(h.tokens[m*bs:(m+1)*bs]), tokenBytes(tokens[m*bs:(m+1)*bs])) {
			m++
		}
		dst = append(dst, h.hashes[:m]...)
	}
	parent := c.h.root
	if m > 0 {
		parent = dst[len(dst)-1]
	}
	for i := m * bs; i+bs <= len(tokens); i += bs {
		parent = c.h.Next(parent, tokens[i:i+bs])
		dst = append(dst, parent)
	}

	c.mu.Lock()
	defer c.mu.Unlock()
	c.stats.Lookups++
	c.stats.ReusedBlocks += int64(m)
	c.stats.HashedBlocks += int64(nb - m)
	if m > 0 {
		c.stats.Hits++
	}
	switch {
	case m > 0 && m == len(h.hashes) && m < nb && !h.e.dropped && len(h.e.hashes) == m:
		// The next turn of the entry's conversation, which nobody
		// extended meanwhile: extend the entry in place.
		c.extend(h.e, tokens[:nb*bs], cap(tokens), dst[start+m:])
	case nb >= CheckpointBlocks && m < nb:
		c.store(tokens[:nb*bs], dst[start:], cap(tokens))
	case m > 0 && !h.e.dropped:
		c.unlink(h.e)
		c.pushFront(h.e)
	}
	return dst
}

// find returns the entry and checkpoint (in blocks) of the highest
// checkpoint at or below top blocks whose key tokens has, a zero hit if
// none.
func (c *HashCache) find(tokens []uint32, top int) (hit, int) {
	bs := c.h.blockSize
	c.mu.Lock()
	defer c.mu.Unlock()
	if len(c.keys) == 0 {
		return hit{}, 0
	}
	for cp := top / CheckpointBlocks * CheckpointBlocks; cp > 0; cp -= CheckpointBlocks {
		if e := c.keys[checkpointKey(tokens[(cp-1)*bs:cp*bs], cp)]; e != nil {
			return hit{e, e.tokens, e.hashes}, cp
		}
	}
	return hit{}, 0
}

// checkpointKey identifies the block ending at cp blocks by its content and
// position. Prompts that differ before it may share it: a candidate's
// tokens are always compared.
func checkpointKey(block []uint32, cp int) uint64 {
	return xxh3.HashSeed(tokenBytes(block), uint64(cp))
}

// entryCost is what an entry keeps alive: the caller's token array, the
// hashes, the entry and its map entries.
func entryCost(tokensCap, hashesCap int) int64 {
	return int64(tokensCap)*4 + int64(hashesCap)*8 + 96 + int64(hashesCap/CheckpointBlocks)*48
}

// store adds an entry for tokens (full blocks) and their hashes (copied),
// then evicts down to the budget. Called with c.mu held.
func (c *HashCache) store(tokens []uint32, hashes []uint64, tokensCap int) {
	n := &hashEntry{tokens: tokens, hashes: append([]uint64(nil), hashes...), tokensCap: tokensCap}
	n.cost = entryCost(tokensCap, cap(n.hashes))
	if n.cost > c.maxBytes {
		return
	}
	c.addKeys(n, 0)
	c.pushFront(n)
	c.bytes += n.cost
	c.stats.Entries++
	c.evict()
}

// extend makes e the entry of tokens, which extend e's by the blocks whose
// hashes are more. The hashes are appended in place: e's earlier slices,
// which lookups may still read, see only their own length. Called with
// c.mu held.
func (c *HashCache) extend(e *hashEntry, tokens []uint32, tokensCap int, more []uint64) {
	old := len(e.hashes)
	e.tokens, e.tokensCap = tokens, tokensCap
	e.hashes = append(e.hashes, more...)
	c.bytes -= e.cost
	e.cost = entryCost(e.tokensCap, cap(e.hashes))
	c.bytes += e.cost
	c.addKeys(e, old)
	c.unlink(e)
	c.pushFront(e)
	c.evict()
}

// addKeys points the keys of e's checkpoints beyond from blocks to e.
func (c *HashCache) addKeys(e *hashEntry, from int) {
	bs := c.h.blockSize
	for cp := (from/CheckpointBlocks + 1) * CheckpointBlocks; cp <= len(e.hashes); cp += CheckpointBlocks {
		k := checkpointKey(e.tokens[(cp-1)*bs:cp*bs], cp)
		old := c.keys[k]
		if old == e {
			continue // two of its checkpoints share a key
		}
		if old != nil {
			if old.keys--; old.keys == 0 {
				c.dropUnlinked(old) // no longer reachable
			}
		}
		c.keys[k] = e
		e.keys++
	}
}

// evict drops the least recently used entries until the cache is within
// its budget.
func (c *HashCache) evict() {
	for c.bytes > c.maxBytes && c.lru.prev != &c.lru {
		c.drop(c.lru.prev)
	}
}

// drop removes e and the keys that still point to it.
func (c *HashCache) drop(e *hashEntry) {
	bs := c.h.blockSize
	for cp := CheckpointBlocks; cp <= len(e.hashes); cp += CheckpointBlocks {
		k := checkpointKey(e.tokens[(cp-1)*bs:cp*bs], cp)
		if c.keys[k] == e {
			delete(c.keys, k)
		}
	}
	c.dropUnlinked(e)
}

// dropUnlinked removes e from the list and the accounting; no key points
// to it any more.
func (c *HashCache) dropUnlinked(e *hashEntry) {
	if e.dropped {
		return
	}
	e.dropped, e.keys = true, 0
	c.unlink(e)
	c.bytes -= e.cost
	c.stats.Entries--
}

func (c *HashCache) unlink(e *hashEntry) {
	e.prev.next, e.next.prev = e.next, e.prev
	e.prev, e.next = nil, nil
}

func (c *HashCache) pushFront(e *hashEntry) {
	e.prev, e.next = &c.lru, c.lru.next
	c.lru.next.prev = e
	c.lru.next = e
}

// Stats returns the cache's counters and size.
func (c *HashCache) Stats() HashCacheStats {
	c.mu.Lock()
	defer c.mu.Unlock()
	st := c.stats
	st.Bytes = c.bytes
	return st
}
