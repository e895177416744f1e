package native

import (
	"strings"
	"sync"
)

// Byte-level BPE over token ids: a word (a pre-token's bytes) starts as one
// symbol per byte, and the lowest-ranked adjacent pair is merged until none
// is left, the leftmost first among equals. This is the order of the Rust
// tokenizers and of transformers.js.

// byteLevelChars is GPT-2's map from a byte to the character that stands
// for it in vocabularies: printable bytes are themselves, the others are
// shifted to U+0100 and up.
func byteLevelChars() [256]rune {
	var m [256]rune
	n := 0
	for b := 0; b < 256; b++ {
		if b >= '!' && b <= '~' || b >= 0xA1 && b <= 0xAC || b >= 0xAE {
			m[b] = rune(b)
		} else {
			m[b] = rune(256 + n)
			n++
		}
	}
	return m
}

type merge struct {
	rank uint32
	id   uint32
}

func pairKey(a, b uint32) uint64 { return uint64(a)<<32 | uint64(b) }

type symbol struct {
	id         uint32
	prev, next int32
	alive      bool
}

type candidate struct {
	rank uint32
	pos  int32
	id   uint32
}

// scratch is per-call working memory, pooled.
type scratch struct {
	syms []symbol
	heap []candidate
}

func (c candidate) less(d candidate) bool {
	return c.rank < d.rank || c.rank == d.rank && c.pos < d.pos
}

func (s *scratch) push(c candidate) {
	s.heap = append(s.heap, c)
	h := s.heap
	i := len(h) - 1
	for i > 0 {
		p := (i - 1) / 2
		if !h[i].less(h[p]) {
			break
		}
		h[i], h[p] = h[p], h[i]
		i = p
	}
}

func (s *scratch) pop() candidate {
	h := s.heap
	top := h[0]
	n := len(h) - 1
	h[0] = h[n]
	h = h[:n]
	i := 0
	for {
		l, r, m := 2*i+1, 2*i+2, i
		if l < n && h[l].less(h[m]) {
			m = l
		}
		if r < n && h[r].less(h[m]) {
			m = r
		}
		if m == i {
			break
		}
		h[i], h[m] = h[m], h[i]
		i = m
	}
	s.heap = h
	return top
}

// wordCache remembers the ids of short words (pre-tokens), as the Rust
// tokenizers' BPE cache does: natural text repeats its words, and a map
// lookup is far cheaper than the merges. Bounded: when full it is emptied.
type wordCache struct {
	mu sync.RWMutex
	m  map[string][]uint32
}

const (
	maxCachedWord = 48
	maxWords      = 1 << 16
)

func (c *wordCache) get(word string) ([]uint32, bool) {
	c.mu.RLock()
	ids, ok := c.m[word]
	c.mu.RUnlock()
	return ids, ok
}

func (c *wordCache) put(word string, ids []uint32) {
	c.mu.Lock()
	if len(c.m) >= maxWords || c.m == nil {
		c.m = make(map[string][]uint32, 1024)
	}
	c.m[strings.Clone(word)] = append([]uint32(nil), ids...)
	c.mu.Unlock()
}

// bpe appends the ids of one pre-token to dst.
func (t *Tokenizer) bpe(dst []uint32, word string, s *scratch) []uint32 {
	if len(word) == 1 {
		return append(dst, t.byteID[word[0]])
	}
	if t.ignoreMerges {
		if id, ok := t.vocab[word]; ok {
			return append(dst, id)
		}
	}
	if len(word) > maxCachedWord {
		return t.merge(dst, word, s)
	}
	if ids, ok := t.words.get(word); ok {
		return append(dst, ids...)
	}
	n := len(dst)
	dst = t.merge(dst, word, s)
	t.words.put(word, dst[n:])
	return dst
}

// merge runs the BPE merges on one word.
func (t *Tokenizer) merge(dst []uint32, word string, s *scratch) []uint32 {
	syms := s.syms[:0]
	for i := 0; i < len(word); i++ {
		syms = append(syms, symbol{id: t.byteID[word[i]], prev: int32(i - 1), next: int32(i + 1), alive: true})
	}
	syms[len(syms)-1].next = -1
	s.heap = s.heap[:0]
	for i := 0; i+1 < len(syms); i++ {
		if m, ok := t.merges[pairKey(syms[i].id, syms[i+1].id)]; ok {
			s.push(candidate{rank: m.rank, pos: int32(i), id: m.id})
		}
	}
	for len(s.heap) > 0 {
		c := s.pop()
		left := &syms[c.pos]
		if !left.alive || left.next < 0 {
			continue
		}
		right := &syms[left.next]
		// A stale candidate: the pair at pos changed since it was queued.
		if m, ok := t.merges[pairKey(left.id, right.id)]; !ok || m.id != c.id {
			continue
		}
		left.id = c.id
		right.alive = false
		left.next = right.next
		if left.next >= 0 {
			syms[left.next].prev = c.pos
		}
		if left.prev >= 0 {
			p := &syms[left.prev]
			if m, ok := t.merges[pairKey(p.id, left.id)]; ok {
				s.push(candidate{rank: m.rank, pos: left.prev, id: m.id})
			}
		}
		if left.next >= 0 {
			if m, ok := t.merges[pairKey(left.id, syms[left.next].id)]; ok {
				s.push(candidate{rank: m.rank, pos: c.pos, id: m.id})
			}
		}
	}
	for i := int32(0); i >= 0; i = syms[i].next {
		dst = append(dst, syms[i].id)
	}
	s.syms = syms
	return dst
}
