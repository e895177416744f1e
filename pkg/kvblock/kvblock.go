// Package kvblock defines how a token sequence maps to KV-cache block hashes.
//
// The engine model, the simulator and the router all compute block hashes with
// this one function, so a router can predict exactly which blocks an engine
// holds. A block's hash chains its parent's hash with the block's token ids
// (as vLLM's prefix cache does), so equal hashes mean equal prefixes. Only full
// blocks are hashed. The hash is XXH3-64 (the block's token bytes, seeded
// with the parent hash) rather than vLLM's SHA-256, so that hashing a
// 32k-token prompt costs about 25 µs on the routing path; the chaining,
// seeding and block granularity are vLLM's.
//
// This package is pure: no I/O, no clock, no global state.
package kvblock

import (
	"encoding/binary"
	"fmt"
	"unsafe"

	"github.com/zeebo/xxh3"
)

// DefaultBlockSize is vLLM's default KV-cache block size in tokens.
const DefaultBlockSize = 16

// Hasher computes chained block hashes for one block size and seed.
// The zero value is not usable; build one with NewHasher.
type Hasher struct {
	blockSize int
	root      uint64
}

// NewHasher returns a hasher for blocks of blockSize tokens. The seed plays
// the role of vLLM's PYTHONHASHSEED-derived root hash: engines that should
// share cache keys must share it.
func NewHasher(blockSize int, seed uint64) (Hasher, error) {
	if blockSize <= 0 || blockSize > 1<<16 {
		return Hasher{}, fmt.Errorf("kvblock: block size %d out of range [1, 65536]", blockSize)
	}
	var b [16]byte
	binary.LittleEndian.PutUint64(b[:8], seed)
	binary.LittleEndian.PutUint64(b[8:], uint64(blockSize))
	return Hasher{blockSize: blockSize, root: xxh3.Hash(b[:])}, nil
}

// MustHasher is NewHasher for constants known to be valid.
func MustHasher(blockSize int, seed uint64) Hasher {
	h, err := NewHasher(blockSize, seed)
	if err != nil {
		panic(err)
	}
	return h
}

// BlockSize returns the number of tokens per block.
func (h Hasher) BlockSize() int { return h.blockSize }

// Root returns the parent hash of the first block.
func (h Hasher) Root() uint64 { return h.root }

// Next returns the hash of a full block of tokens whose parent block hash is
// parent (Root for the first block): XXH3-64 of the tokens' little-endian
// bytes, seeded with the parent hash.
func (h Hasher) Next(parent uint64, tokens []uint32) uint64 {
	return xxh3.HashSeed(tokenBytes(tokens), parent)
}

// Hashes appends to dst the hashes of every full block of tokens and returns
// the extended slice. A trailing partial block is not hashed.
func (h Hasher) Hashes(dst []uint64, tokens []uint32) []uint64 {
	parent := h.root
	for i := 0; i+h.blockSize <= len(tokens); i += h.blockSize {
		parent = h.Next(parent, tokens[i:i+h.blockSize])
		dst = append(dst, parent)
	}
	return dst
}

// Extend hashes the full blocks of tokens that are not yet covered by have
// (hashes of the leading blocks, as returned by Hashes) and appends them.
func (h Hasher) Extend(have []uint64, tokens []uint32) []uint64 {
	parent := h.root
	if len(have) > 0 {
		parent = have[len(have)-1]
	}
	for i := len(have) * h.blockSize; i+h.blockSize <= len(tokens); i += h.blockSize {
		parent = h.Next(parent, tokens[i:i+h.blockSize])
		have = append(have, parent)
	}
	return have
}

// Chain is how an engine hashes a sequence's blocks into its prefix-cache
// keys: Hasher (this package's fast hash) or VLLMHasher (vLLM's digests).
type Chain interface {
	BlockSize() int
	// ExtendChain appends to have the keys of the full blocks of tokens
	// beyond len(have) and returns them with the chain's state after the
	// last one; state is what the previous call returned (nil for an empty
	// have).
	ExtendChain(have []uint64, state []byte, tokens []uint32) ([]uint64, []byte)
}

// ExtendChain is Extend; the chain needs no state beyond the last key.
func (h Hasher) ExtendChain(have []uint64, _ []byte, tokens []uint32) ([]uint64, []byte) {
	return h.Extend(have, tokens), nil
}

// littleEndian reports whether this machine stores integers little-endian,
// in which case token ids are hashed in place without a copy.
var littleEndian = func() bool {
	x := uint16(1)
	return *(*byte)(unsafe.Pointer(&x)) == 1
}()

// tokenBytes returns the little-endian byte view of tokens.
func tokenBytes(tokens []uint32) []byte {
	if len(tokens) == 0 {
		return nil
	}
	if littleEndian {
		return unsafe.Slice((*byte)(unsafe.Pointer(&tokens[0])), len(tokens)*4)
	}
	b := make([]byte, len(tokens)*4)
	for i, t := range tokens {
		binary.LittleEndian.PutUint32(b[i*4:], t)
	}
	return b
}
