package router

import "math/bits"

// holderTable maps a block key to the set of endpoint slots holding that
// block: open-addressing hash tables with linear probing whose values are
// bitsets of w 64-bit words. One lookup answers for every endpoint, which is
// what makes a decision over many endpoints cost about as much as one over a
// single endpoint.
//
// Keys are spread over 64 shards, each its own table, so that growing,
// shrinking or clearing never pauses the owner for more than one shard's
// worth of entries (a single table of millions of keys would stall every
// decision for tens of milliseconds while it rehashes). Deletion shifts
// entries back (no tombstones), so shards stay compact under churn; a
// shard grows at 3/4 load and shrinks below 1/8. Not safe for concurrent
// use: its owner locks.
type holderTable struct {
	shards [numShards]shard
	w      int
	salt   uint64
}

type shard struct {
	keys  []uint64 // 0 marks an empty cell
	rows  []uint64 // w words per cell
	n     int
	shift uint
}

const (
	shardBits     = 6
	numShards     = 1 << shardBits
	minShardCells = 16
	// zeroKey stands for the key 0, which marks empty cells. Hash outputs
	// are 0 with probability 2^-64.
	zeroKey = 0x9e3779b97f4a7c15
)

func newHolderTable(w int, salt uint64) *holderTable {
	t := &holderTable{w: max(w, 1), salt: salt}
	for i := range t.shards {
		t.shards[i].alloc(minShardCells, t.w)
	}
	return t
}

func (s *shard) alloc(cells, w int) {
	s.keys = make([]uint64, cells)
	s.rows = make([]uint64, cells*w)
	s.shift = uint(64 - bits.TrailingZeros(uint(cells)))
	s.n = 0
}

// mixed spreads a key: the salt and the multiplication defeat keys an
// adversary chose to collide. Its top bits pick the shard, the next ones
// the cell (home).
func (t *holderTable) mixed(k uint64) uint64 { return (k ^ t.salt) * 0x9e3779b97f4a7c15 }

func (s *shard) home(h uint64) int { return int((h << shardBits) >> s.shift) }

func normKey(k uint64) uint64 {
	if k == 0 {
		return zeroKey
	}
	return k
}

// cell returns k's shard and cell, cell -1 when absent.
func (t *holderTable) cell(k uint64) (*shard, int) {
	k = normKey(k)
	h := t.mixed(k)
	s := &t.shards[h>>(64-shardBits)]
	m := len(s.keys) - 1
	for i := s.home(h); ; i = (i + 1) & m {
		switch s.keys[i] {
		case k:
			return s, i
		case 0:
			return s, -1
		}
	}
}

// holders returns the bitset of slots holding k, nil when none.
func (t *holderTable) holders(k uint64) []uint64 {
	s, i := t.cell(k)
	if i < 0 {
		return nil
	}
	return s.rows[i*t.w : i*t.w+t.w]
}

// add marks slot s as holding k and reports whether it was new.
func (t *holderTable) add(k uint64, slot int) bool {
	k = normKey(k)
	h := t.mixed(k)
	s := &t.shards[h>>(64-shardBits)]
	if (s.n+1)*4 > len(s.keys)*3 {
		s.resize(len(s.keys)*2, t)
	}
	m := len(s.keys) - 1
	i := s.home(h)
	for s.keys[i] != k && s.keys[i] != 0 {
		i = (i + 1) & m
	}
	if s.keys[i] == 0 {
		s.keys[i] = k
		s.n++
	}
	p := &s.rows[i*t.w+slot>>6]
	bit := uint64(1) << (slot & 63)
	if *p&bit != 0 {
		return false
	}
	*p |= bit
	return true
}

// remove unmarks slot on k, dropping k when no slot holds it, and reports
// whether slot held k.
func (t *holderTable) remove(k uint64, slot int) bool {
	s, i := t.cell(k)
	if i < 0 {
		return false
	}
	p := &s.rows[i*t.w+slot>>6]
	bit := uint64(1) << (slot & 63)
	if *p&bit == 0 {
		return false
	}
	*p &^= bit
	if isZero(s.rows[i*t.w : i*t.w+t.w]) {
		s.deleteAt(i, t)
		if s.n*8 < len(s.keys) && len(s.keys) > minShardCells {
			s.resize(len(s.keys)/2, t)
		}
	}
	return true
}

// deleteAt empties cell i and shifts back the entries of its probe run.
func (s *shard) deleteAt(i int, t *holderTable) {
	m, w := len(s.keys)-1, t.w
	for j := (i + 1) & m; s.keys[j] != 0; j = (j + 1) & m {
		// The entry at j may fill the hole at i if its home is no closer
		// to j than i is.
		if (j-s.home(t.mixed(s.keys[j])))&m >= (j-i)&m {
			s.keys[i] = s.keys[j]
			copy(s.rows[i*w:i*w+w], s.rows[j*w:j*w+w])
			i = j
		}
	}
	s.keys[i] = 0
	clear(s.rows[i*w : i*w+w])
	s.n--
}

// resize rehashes the shard into cells cells, dropping keys no slot holds.
func (s *shard) resize(cells int, t *holderTable) {
	keys, rows, w := s.keys, s.rows, t.w
	s.alloc(max(cells, minShardCells), w)
	m := len(s.keys) - 1
	for c, k := range keys {
		r := rows[c*w : c*w+w]
		if k == 0 || isZero(r) {
			continue
		}
		i := s.home(t.mixed(k))
		for s.keys[i] != 0 {
			i = (i + 1) & m
		}
		s.keys[i] = k
		copy(s.rows[i*w:i*w+w], r)
		s.n++
	}
}

// widen makes room for slots up to 64*w-1.
func (t *holderTable) widen(w int) {
	if w <= t.w {
		return
	}
	for i := range t.shards {
		s := &t.shards[i]
		rows := make([]uint64, len(s.keys)*w)
		for c := range s.keys {
			copy(rows[c*w:], s.rows[c*t.w:c*t.w+t.w])
		}
		s.rows = rows
	}
	t.w = w
}

// clearSlotShard forgets everything slot holds in one shard and returns
// how many keys that was: callers clear a slot shard by shard, releasing
// their lock in between.
func (t *holderTable) clearSlotShard(slot, shard int) (cleared int) {
	s := &t.shards[shard]
	word, bit := slot>>6, uint64(1)<<(slot&63)
	for c := range s.keys {
		if p := &s.rows[c*t.w+word]; *p&bit != 0 {
			*p &^= bit
			cleared++
		}
	}
	cells := len(s.keys)
	for cells > minShardCells && s.n*8 < cells {
		cells /= 2
	}
	s.resize(cells, t) // drops the keys nobody holds any more
	return cleared
}

// len is the number of keys.
func (t *holderTable) len() int {
	n := 0
	for i := range t.shards {
		n += t.shards[i].n
	}
	return n
}

// holdings counts (slot, key) pairs.
func (t *holderTable) holdings() int {
	n := 0
	for i := range t.shards {
		for _, x := range t.shards[i].rows {
			n += bits.OnesCount64(x)
		}
	}
	return n
}

func (t *holderTable) bytes() int64 {
	var b int64
	for i := range t.shards {
		b += int64(len(t.shards[i].keys)) * int64(8+8*t.w)
	}
	return b
}

func isZero(r []uint64) bool {
	for _, x := range r {
		if x != 0 {
			return false
		}
	}
	return true
}

// prefixer finds, for a chain of block keys and a set of slots, how many
// leading blocks each slot holds. It relies on each slot's holdings being
// prefix-closed along a chain (holding block i implies holding blocks < i),
// which engines maintain by evicting a sequence's tail before its head (vLLM
// frees blocks in reverse order; so does pkg/engine) and which the
// approximate index maintains by recording a prompt's head as most recent.
// Under that invariant the answer equals a block-by-block walk that stops at
// each slot's first miss, but costs O(groups · log blocks) lookups instead of
// O(blocks): a bisection that only descends where the holder set changes.
// Where an index violates the invariant (a lost removal event), the answer
// is the length up to the last boundary the bisection sampled.
type prefixer struct {
	t       *holderTable
	keys    []uint64
	out     []int32 // by slot
	buf     []uint64
	lookups int
}

// run fills p.out[s] for every slot s in want (out must be zero there).
func (p *prefixer) run(want []uint64) {
	n, w := len(p.keys), p.t.w
	if n == 0 || isZero(want) {
		return
	}
	depth := bits.Len(uint(n)) + 3
	if cap(p.buf) < depth*w {
		p.buf = make([]uint64, depth*w)
	}
	p.buf = p.buf[:depth*w]
	clear(p.buf)
	zero := p.buf[0:w]
	m0 := p.buf[w : 2*w]
	p.holders(0, want, zero, m0)
	if isZero(m0) {
		return
	}
	if n == 1 {
		p.assign(m0, zero, 1)
		return
	}
	mn := p.buf[2*w : 3*w]
	p.holders(n-1, m0, zero, mn)
	p.assign(mn, zero, int32(n))
	p.solve(0, n-1, m0, mn, 3)
}

// holders writes into dst the slots of within that hold keys[i], plus must.
func (p *prefixer) holders(i int, within, must, dst []uint64) {
	p.lookups++
	r := p.t.holders(p.keys[i])
	if r == nil {
		copy(dst, must)
		return
	}
	for k := range dst {
		dst[k] = r[k]&within[k] | must[k]
	}
}

// solve handles blocks lo < i < hi given the holder sets at lo and hi
// (mhi ⊆ mlo): the slots in mlo but not mhi hold between lo+1 and hi blocks.
func (p *prefixer) solve(lo, hi int, mlo, mhi []uint64, depth int) {
	if equalWords(mlo, mhi) {
		return
	}
	if hi == lo+1 {
		p.assign(mlo, mhi, int32(hi))
		return
	}
	w := p.t.w
	mid := int(uint(lo+hi) >> 1)
	mm := p.buf[depth*w : (depth+1)*w]
	p.holders(mid, mlo, mhi, mm)
	p.solve(lo, mid, mlo, mm, depth+1)
	p.solve(mid, hi, mm, mhi, depth+1)
}

// assign sets out[s] = n for the slots in a but not in b.
func (p *prefixer) assign(a, b []uint64, n int32) {
	for k := range a {
		x := a[k] &^ b[k]
		for x != 0 {
			s := k<<6 | bits.TrailingZeros64(x)
			x &= x - 1
			p.out[s] = n
		}
	}
}

func equalWords(a, b []uint64) bool {
	for k := range a {
		if a[k] != b[k] {
			return false
		}
	}
	return true
}
