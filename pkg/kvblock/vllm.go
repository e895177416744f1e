package kvblock

import (
	"crypto/sha256"
	"encoding/binary"
	"fmt"

	"github.com/zeebo/xxh3"
)

// VLLMHasher hashes blocks as vLLM's prefix cache does with
// --prefix-caching-hash-algo sha256_cbor (or xxhash_cbor): a block's hash
// is the digest of the canonical CBOR encoding of the tuple
// (parent_hash, tuple(token_ids), extra_keys), the first block's parent
// being NONE_HASH, the digest of the CBOR text string PYTHONHASHSEED. Only
// blocks without extra keys (no LoRA, multimodal input or cache salt) are
// modelled, so extra_keys is always None.
//
// It is what a vLLM stand-in uses so that its hashes are vLLM's; the router
// never computes these (it keys blocks with Hasher, from the token ids the
// engines publish). Digests are 32 bytes (SHA-256) or 16 (XXH3-128); Key
// folds one to the 64-bit integer vLLM publishes in its KV events by
// default (VLLM_KV_EVENTS_USE_INT_BLOCK_HASHES=1): the last 8 bytes,
// big-endian.
type VLLMHasher struct {
	blockSize int
	algo      string
	root      []byte
}

// vLLM's CBOR-based hash algorithms.
const (
	AlgoSHA256CBOR = "sha256_cbor"
	AlgoXXHashCBOR = "xxhash_cbor"
)

// NewVLLMHasher returns the hasher of a vLLM engine with the given block
// size, algorithm and PYTHONHASHSEED (vLLM draws a random root when the
// variable is unset; a stand-in must be given one).
func NewVLLMHasher(blockSize int, algo, pythonHashSeed string) (VLLMHasher, error) {
	if blockSize <= 0 || blockSize > 1<<16 {
		return VLLMHasher{}, fmt.Errorf("kvblock: block size %d out of range [1, 65536]", blockSize)
	}
	switch algo {
	case AlgoSHA256CBOR, AlgoXXHashCBOR:
	default:
		return VLLMHasher{}, fmt.Errorf("kvblock: hash algorithm %q not supported (want %s or %s)", algo, AlgoSHA256CBOR, AlgoXXHashCBOR)
	}
	h := VLLMHasher{blockSize: blockSize, algo: algo}
	h.root = h.digest(cborText(nil, pythonHashSeed))
	return h, nil
}

// BlockSize returns the number of tokens per block.
func (h VLLMHasher) BlockSize() int { return h.blockSize }

// Root returns NONE_HASH, the parent digest of a sequence's first block.
func (h VLLMHasher) Root() []byte { return h.root }

func (h VLLMHasher) digest(b []byte) []byte {
	if h.algo == AlgoXXHashCBOR {
		d := xxh3.Hash128(b).Bytes()
		return d[:]
	}
	d := sha256.Sum256(b)
	return d[:]
}

// Next returns the digest of a full block of tokens after the block whose
// digest is parent (nil: the first block).
func (h VLLMHasher) Next(parent []byte, tokens []uint32) []byte {
	if parent == nil {
		parent = h.root
	}
	buf := make([]byte, 0, 16+len(parent)+5*len(tokens))
	buf = cborHead(buf, 4, 3) // (parent, tokens, extra_keys)
	buf = cborHead(buf, 2, uint64(len(parent)))
	buf = append(buf, parent...)
	buf = cborHead(buf, 4, uint64(len(tokens)))
	for _, t := range tokens {
		buf = cborHead(buf, 0, uint64(t))
	}
	buf = append(buf, 0xf6) // None
	return h.digest(buf)
}

// Key is the integer form of a digest that vLLM's KV events carry.
func Key(digest []byte) uint64 {
	var b [8]byte
	n := min(len(digest), 8)
	copy(b[8-n:], digest[len(digest)-n:])
	return binary.BigEndian.Uint64(b[:])
}

// Extend appends the keys of the full blocks of tokens not yet covered by
// have, chaining from last (the digest of have's last block, nil when have
// is empty), and returns them with the digest of the new last block.
func (h VLLMHasher) Extend(have []uint64, last []byte, tokens []uint32) ([]uint64, []byte) {
	for i := len(have) * h.blockSize; i+h.blockSize <= len(tokens); i += h.blockSize {
		last = h.Next(last, tokens[i:i+h.blockSize])
		have = append(have, Key(last))
	}
	return have, last
}

// ExtendChain is Extend, for the Chain interface.
func (h VLLMHasher) ExtendChain(have []uint64, state []byte, tokens []uint32) ([]uint64, []byte) {
	return h.Extend(have, state, tokens)
}

// cborHead appends a CBOR head of major type major and argument n in its
// shortest form (RFC 8949 §4.2.1, as canonical encoders write it).
func cborHead(dst []byte, major byte, n uint64) []byte {
	m := major << 5
	switch {
	case n < 24:
		return append(dst, m|byte(n))
	case n <= 0xff:
		return append(dst, m|24, byte(n))
	case n <= 0xffff:
		return binary.BigEndian.AppendUint16(append(dst, m|25), uint16(n))
	case n <= 0xffffffff:
		return binary.BigEndian.AppendUint32(append(dst, m|26), uint32(n))
	}
	return binary.BigEndian.AppendUint64(append(dst, m|27), n)
}

func cborText(dst []byte, s string) []byte {
	return append(cborHead(dst, 3, uint64(len(s))), s...)
}
