package router

import (
	"sync"

	"github.com/llmd-kn/llmd-kn/pkg/engine"
)

// slotRegistry numbers endpoints for the indexes' bitsets. Numbers are
// reused after Forget, so the bitsets stay as narrow as the live endpoint
// set. Lock order: slotRegistry.mu, then an index's mu.
type slotRegistry struct {
	mu    sync.RWMutex
	ids   map[string]int32
	names []string // by slot; "" when free
	free  []int32
}

// lookup returns the slot of id or -1; the caller holds mu (read or write).
func (r *slotRegistry) lookup(id string) int32 {
	if s, ok := r.ids[id]; ok {
		return s
	}
	return -1
}

// assign returns the slot of id, numbering it if new; the caller holds mu
// for writing.
func (r *slotRegistry) assign(id string) (s int32, grew bool) {
	if s, ok := r.ids[id]; ok {
		return s, false
	}
	if n := len(r.free); n > 0 {
		s = r.free[n-1]
		r.free = r.free[:n-1]
		r.names[s] = id
	} else {
		s = int32(len(r.names))
		r.names = append(r.names, id)
		grew = true
	}
	r.ids[id] = s
	return s, grew
}

// detach unmaps slot s from its endpoint; the slot is free once drained.
func (r *slotRegistry) detach(s int32) {
	delete(r.ids, r.names[s])
	r.names[s] = ""
}

// words is the bitset width that numbers every slot.
func (r *slotRegistry) words() int { return max(1, (len(r.names)+63)/64) }

// approxIndex is llm-d's estimated prefix cache: for each endpoint, an LRU of
// the block keys of prompts the router sent there, with a capacity in
// blocks. It is updated by Router.Record, read by decisions.
type approxIndex struct {
	mu  sync.RWMutex
	t   *holderTable
	lru []*lru // by slot
}

// lru is one endpoint's recency list over block keys: nodes in arrays, a
// map from key to node. head is the most recently used.
type lru struct {
	pos              map[uint64]int32
	key              []uint64
	prev, next       []int32
	head, tail, free int32
	cap              int
}

func newLRU(capacity int) *lru {
	return &lru{pos: make(map[uint64]int32), head: -1, tail: -1, free: -1, cap: capacity}
}

func (l *lru) unlink(n int32) {
	p, x := l.prev[n], l.next[n]
	if p >= 0 {
		l.next[p] = x
	} else {
		l.head = x
	}
	if x >= 0 {
		l.prev[x] = p
	} else {
		l.tail = p
	}
}

func (l *lru) pushFront(n int32) {
	l.prev[n], l.next[n] = -1, l.head
	if l.head >= 0 {
		l.prev[l.head] = n
	} else {
		l.tail = n
	}
	l.head = n
}

// touch makes k most recent; it reports whether k is new.
func (l *lru) touch(k uint64) bool {
	if n, ok := l.pos[k]; ok {
		if n != l.head {
			l.unlink(n)
			l.pushFront(n)
		}
		return false
	}
	var n int32
	if l.free >= 0 {
		n = l.free
		l.free = l.next[n]
		l.key[n] = k
	} else {
		n = int32(len(l.key))
		if len(l.key) == cap(l.key) {
			// Grow toward the capacity, not past it: a full list is
			// the steady state and append's doubling would overshoot.
			c := min(max(2*len(l.key), 64), l.cap)
			if c <= len(l.key) {
				c = len(l.key) + 1
			}
			l.key = append(make([]uint64, 0, c), l.key...)
			l.prev = append(make([]int32, 0, c), l.prev...)
			l.next = append(make([]int32, 0, c), l.next...)
		}
		l.key = append(l.key, k)
		l.prev = append(l.prev, -1)
		l.next = append(l.next, -1)
	}
	l.pos[k] = n
	l.pushFront(n)
	return true
}

// evict drops the least recent key and returns it.
func (l *lru) evict() uint64 {
	n := l.tail
	k := l.key[n]
	l.unlink(n)
	delete(l.pos, k)
	l.next[n] = l.free
	l.free = n
	return k
}

func (l *lru) bytes() int64 {
	// A Go map of uint64 to int32 costs about 36 bytes per entry (measured
	// at 31,250 entries); nodes cost 16.
	return int64(len(l.pos))*36 + int64(cap(l.key))*16
}

// record makes slot s hold keys, most recent first, evicting beyond
// capacity. Keys go in from the last block to the first so that a prompt's
// head is more recent than its tail: eviction then takes tails first, as an
// engine does, and each endpoint's holdings stay prefix-closed.
func (a *approxIndex) record(s int32, keys []uint64, capacity int) {
	for int(s) >= len(a.lru) {
		a.lru = append(a.lru, nil)
	}
	l := a.lru[s]
	if l == nil {
		l = newLRU(capacity)
		a.lru[s] = l
	}
	l.cap = capacity
	for i := len(keys) - 1; i >= 0; i-- {
		k := keys[i]
		if _, held := l.pos[k]; !held {
			// Make room first, so that a full list reuses the evicted
			// node instead of growing by one.
			for len(l.pos) >= l.cap && l.tail >= 0 {
				a.t.remove(l.evict(), int(s))
			}
		}
		if l.touch(k) {
			a.t.add(k, int(s))
		}
	}
	for len(l.pos) > l.cap {
		a.t.remove(l.evict(), int(s))
	}
}

// detach drops slot s's recency list and reports whether it had one; the
// caller then clears the slot from the table, shard by shard.
func (a *approxIndex) detach(s int32) bool {
	if int(s) < len(a.lru) && a.lru[s] != nil {
		a.lru[s] = nil
		return true
	}
	return false
}

// KVEventKind names a KV event as vLLM does: the engine model's kinds.
type KVEventKind = engine.KVEventKind

const (
	BlockStored      = engine.BlockStored
	BlockRemoved     = engine.BlockRemoved
	AllBlocksCleared = engine.AllBlocksCleared
)

// IndexStats describes one prefix index.
type IndexStats struct {
	// Endpoints with index data; Keys distinct blocks; Holdings
	// (endpoint, block) pairs.
	Endpoints, Keys, Holdings int
	// Bytes approximates the heap the index holds.
	Bytes int64
}

// Stats describes both indexes.
type Stats struct {
	Approximate, Precise IndexStats
	// Slots numbers the endpoints the indexes know (live and recyclable).
	Slots int
	// PreciseResets counts endpoints cleared because they exceeded
	// preciseIndex.maxBlocksPerEndpoint (lost BlockRemoved events).
	PreciseResets int
	// PreciseEngineBlocks counts the engine blocks the precise index maps
	// to its keys (shared by the endpoints holding them).
	PreciseEngineBlocks int
}
