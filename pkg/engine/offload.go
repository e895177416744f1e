package engine

// Read-only views of the prefix cache for a caller that offloads it to, or
// restores it from, shared storage (the simulator's KV offload). The engine
// itself does no I/O: the caller reads and writes the bytes and passes what
// storage holds as Request.StoredTokens.

// CachedPrefix returns how many of the leading block hashes the prefix
// cache holds, consecutively from the first.
func (e *Engine) CachedPrefix(hashes []uint64) int {
	n := 0
	for _, h := range hashes {
		if _, ok := e.pool.cached[h]; !ok {
			break
		}
		n++
	}
	return n
}

// IsCached reports whether the prefix cache holds the block with hash h.
func (e *Engine) IsCached(h uint64) bool {
	_, ok := e.pool.cached[h]
	return ok
}

// PreloadBlock is one block read back from storage for Preload.
type PreloadBlock struct {
	Hash uint64
	// Parent is the chain's previous block (HasParent false at a root).
	Parent    uint64
	HasParent bool
	// Tokens are the block's token ids when storage kept them (BlockSize
	// of them); nil: unknown, and no KV event is published for it.
	Tokens []uint32
}

// Preload puts blocks read back from storage into the prefix cache as
// free, cached blocks, as a replica's prefetch at start-up does: a later
// request finds them as ordinary prefix hits. blocks must list parents
// before children. It takes only free blocks that hold no cached content
// (it never evicts anything to make room), at most maxBlocks, and returns
// how many it added. Each added block whose tokens are known is announced
// with a BlockStored event (with KV events on), delivered by the next
// Step, so that a router's index learns of it as of any stored block.
func (e *Engine) Preload(blocks []PreloadBlock, maxBlocks int) int {
	n := 0
	for _, pb := range blocks {
		if n >= maxBlocks || e.pool.numFree == 0 || e.pool.hashed[e.pool.head] {
			break
		}
		if _, ok := e.pool.cached[pb.Hash]; ok {
			continue
		}
		b := e.pool.alloc()
		e.pool.store(b, pb.Hash)
		e.pool.release(b)
		n++
		if e.cfg.DisableKVEvents || len(pb.Tokens) != e.cfg.BlockSize {
			continue
		}
		e.pending = append(e.pending, KVEvent{Kind: BlockStored, Hashes: []uint64{pb.Hash}, Parent: pb.Parent, HasParent: pb.HasParent,
			TokenIDs: append([]uint32(nil), pb.Tokens...), BlockSize: e.cfg.BlockSize})
	}
	return n
}

// BlockHashes returns the keys of the prompt's full blocks, chained as the
// prefix cache keys them (what CachedPrefix and IsCached take), in dst's
// storage (its contents are replaced).
func (e *Engine) BlockHashes(dst []uint64, prompt []uint32) []uint64 {
	h, _ := e.chain.ExtendChain(dst[:0], nil, prompt)
	return h
}

// SaltKey is what a cache_salt moves block hashes by (never 0).
func SaltKey(salt string) uint64 {
	h := uint64(0xcbf29ce484222325)
	for i := 0; i < len(salt); i++ {
		h = (h ^ uint64(salt[i])) * 0x100000001b3
	}
	return h | 1
}

// SaltHashes moves a salted request's block hashes (as the chain computed
// them) by its salt key, in place: each is still determined by the whole
// prefix, now also by the salt.
func SaltHashes(hs []uint64, key uint64) {
	for i, h := range hs {
		h ^= key
		h ^= h >> 33
		h *= 0xff51afd7ed558ccd
		h ^= h >> 33
		hs[i] = h
	}
}
