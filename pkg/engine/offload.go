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
