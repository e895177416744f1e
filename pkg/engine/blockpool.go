package engine

// blockPool is the KV cache of one engine: a fixed number of blocks, a
// reference count per block, a free list in eviction order (vLLM's
// FreeKVCacheBlockQueue: freed blocks go to the tail, allocation takes the
// head, so the least recently freed block is evicted first), and the prefix
// cache map from block hash to block. A free block keeps its hash until it is
// reallocated, so freed prefixes stay reusable.
type blockPool struct {
	ref     []int32
	hash    []uint64
	hashed  []bool
	prev    []int32
	next    []int32
	head    int32
	tail    int32
	numFree int
	cached  map[uint64]int32
	// onEvict is called with the hash of a cached block that is reallocated.
	onEvict func(h uint64)
}

func newBlockPool(n int, onEvict func(uint64)) *blockPool {
	p := &blockPool{
		ref:     make([]int32, n),
		hash:    make([]uint64, n),
		hashed:  make([]bool, n),
		prev:    make([]int32, n),
		next:    make([]int32, n),
		head:    -1,
		tail:    -1,
		cached:  make(map[uint64]int32),
		onEvict: onEvict,
	}
	for i := range n {
		p.pushTail(int32(i))
	}
	return p
}

func (p *blockPool) size() int { return len(p.ref) }

func (p *blockPool) pushTail(b int32) {
	p.prev[b], p.next[b] = p.tail, -1
	if p.tail >= 0 {
		p.next[p.tail] = b
	} else {
		p.head = b
	}
	p.tail = b
	p.numFree++
}

func (p *blockPool) unlink(b int32) {
	if p.prev[b] >= 0 {
		p.next[p.prev[b]] = p.next[b]
	} else {
		p.head = p.next[b]
	}
	if p.next[b] >= 0 {
		p.prev[p.next[b]] = p.prev[b]
	} else {
		p.tail = p.prev[b]
	}
	p.prev[b], p.next[b] = -1, -1
	p.numFree--
}

// touch takes a reference on a block found in the prefix cache.
func (p *blockPool) touch(b int32) {
	if p.ref[b] == 0 {
		p.unlink(b)
	}
	p.ref[b]++
}

// alloc takes the least recently freed block, evicting its cached hash.
// The caller must have checked numFree.
func (p *blockPool) alloc() int32 {
	b := p.head
	p.unlink(b)
	if p.hashed[b] {
		if p.cached[p.hash[b]] == b {
			delete(p.cached, p.hash[b])
			if p.onEvict != nil {
				p.onEvict(p.hash[b])
			}
		}
		p.hashed[b] = false
	}
	p.ref[b] = 1
	return b
}

// release drops a reference; the block becomes free (still cached) at zero.
func (p *blockPool) release(b int32) {
	p.ref[b]--
	if p.ref[b] == 0 {
		p.pushTail(b)
	}
}

// store records block b as holding the content with hash h. It reports
// false when another block already holds h (the duplicate is not cached).
func (p *blockPool) store(b int32, h uint64) bool {
	if _, dup := p.cached[h]; dup {
		return false
	}
	p.cached[h] = b
	p.hash[b], p.hashed[b] = h, true
	return true
}

// lookup returns how many of the leading hashes are cached, consecutively.
func (p *blockPool) lookup(hashes []uint64, dst []int32) []int32 {
	for _, h := range hashes {
		b, ok := p.cached[h]
		if !ok {
			break
		}
		dst = append(dst, b)
	}
	return dst
}

// clearCache forgets every cached hash of a free block; it reports false and
// does nothing while any block is in use, as vLLM's reset_prefix_cache does.
func (p *blockPool) clearCache() bool {
	if p.numFree != len(p.ref) {
		return false
	}
	clear(p.cached)
	for i := range p.hashed {
		p.hashed[i] = false
	}
	return true
}
