package router

import (
	"math/rand/v2"
	"testing"
)

// TestHolderTableMatchesMap drives random adds and removes across more than
// 64 slots and checks every answer against a map of sets.
func TestHolderTableMatchesMap(t *testing.T) {
	rng := rand.New(rand.NewPCG(7, 7))
	tab := newHolderTable(1, 99)
	ref := map[uint64]map[int]bool{}
	const slots = 130
	tab.widen((slots + 63) / 64)
	// A small key space forces collisions, long probe runs and deletions
	// from their middle; key 0 exercises its stand-in.
	key := func() uint64 { return uint64(rng.IntN(3000)) * 0xbf58476d1ce4e5b9 >> uint(rng.IntN(2)*40) }
	for step := range 200000 {
		k, s := key(), rng.IntN(slots)
		if rng.IntN(3) > 0 && step < 150000 {
			got := tab.add(k, s)
			if want := !ref[k][s]; got != want {
				t.Fatalf("step %d: add(%x, %d) = %v, want %v", step, k, s, got, want)
			}
			if ref[k] == nil {
				ref[k] = map[int]bool{}
			}
			ref[k][s] = true
		} else {
			got := tab.remove(k, s)
			if want := ref[k][s]; got != want {
				t.Fatalf("step %d: remove(%x, %d) = %v, want %v", step, k, s, got, want)
			}
			delete(ref[k], s)
			if len(ref[k]) == 0 {
				delete(ref, k)
			}
		}
	}
	if tab.len() != len(ref) {
		t.Fatalf("table has %d keys, want %d", tab.len(), len(ref))
	}
	holdings := 0
	for k, set := range ref {
		row := tab.holders(k)
		if row == nil {
			t.Fatalf("key %x lost", k)
		}
		for s := range slots {
			if got := row[s>>6]&(1<<(s&63)) != 0; got != set[s] {
				t.Fatalf("key %x slot %d: %v, want %v", k, s, got, set[s])
			}
		}
		holdings += len(set)
	}
	if got := tab.holdings(); got != holdings {
		t.Fatalf("holdings %d, want %d", got, holdings)
	}
}

func TestHolderTableShrinksWhenEmptied(t *testing.T) {
	tab := newHolderTable(1, 0)
	for k := uint64(1); k <= 100000; k++ {
		tab.add(k, 3)
	}
	big := tab.bytes()
	for k := uint64(1); k <= 100000; k++ {
		tab.remove(k, 3)
	}
	if tab.len() != 0 || tab.bytes() != newHolderTable(1, 0).bytes() {
		t.Fatalf("after removing everything: %d keys in %d bytes (was %d bytes)", tab.len(), tab.bytes(), big)
	}
}

func TestHolderTableClearSlot(t *testing.T) {
	tab := newHolderTable(2, 0)
	for k := uint64(1); k <= 1000; k++ {
		tab.add(k, 70)
		if k%2 == 0 {
			tab.add(k, 5)
		}
	}
	for i := range numShards {
		tab.clearSlotShard(70, i)
	}
	if tab.len() != 500 || tab.holdings() != 500 {
		t.Fatalf("after clearing slot 70: %d keys, %d holdings; want 500 and 500", tab.len(), tab.holdings())
	}
	if tab.holders(3) != nil || tab.holders(4) == nil {
		t.Fatal("clearSlot kept a key only slot 70 held, or dropped one slot 5 holds")
	}
}

// TestPrefixerMatchesWalk checks the bisection against a block-by-block walk
// on prefix-closed holdings: each slot holds a random-length prefix of one
// of a few chains that share heads.
func TestPrefixerMatchesWalk(t *testing.T) {
	rng := rand.New(rand.NewPCG(3, 4))
	for trial := range 300 {
		slots := 1 + rng.IntN(150)
		w := (slots + 63) / 64
		tab := newHolderTable(w, uint64(trial))
		n := 1 + rng.IntN(3000)
		query := make([]uint64, n)
		for i := range query {
			query[i] = rng.Uint64()
		}
		want := make([]int32, 64*w)
		mask := make([]uint64, w)
		for s := range slots {
			if rng.IntN(5) == 0 {
				continue // not asked about
			}
			mask[s>>6] |= 1 << (s & 63)
			// Holds a prefix of the query, then possibly blocks of a
			// diverging chain.
			l := rng.IntN(n + 1)
			if rng.IntN(4) == 0 {
				l = n
			}
			for i := range l {
				tab.add(query[i], s)
			}
			for range rng.IntN(50) {
				tab.add(rng.Uint64(), s)
			}
			want[s] = int32(l)
		}
		// Blocks held by slots not asked about must not count.
		for i := range n {
			if rng.IntN(3) == 0 && slots < 64*w {
				tab.add(query[i], 64*w-1)
			}
		}
		got := make([]int32, 64*w)
		p := prefixer{t: tab, keys: query, out: got}
		p.run(mask)
		for s := range slots {
			if mask[s>>6]&(1<<(s&63)) == 0 {
				continue
			}
			if got[s] != want[s] {
				t.Fatalf("trial %d: slot %d holds %d leading blocks, prefixer says %d", trial, s, want[s], got[s])
			}
		}
		if p.lookups > n+2 {
			t.Fatalf("trial %d: %d lookups for %d blocks", trial, p.lookups, n)
		}
	}
}

func TestPrefixerLookupsAreLogarithmic(t *testing.T) {
	tab := newHolderTable(1, 0)
	n := 2048
	keys := make([]uint64, n)
	for i := range keys {
		keys[i] = uint64(i + 1)
	}
	// Four groups of endpoints with different depths.
	depths := []int{100, 700, 1500, 2048}
	for s := range 64 {
		for i := range depths[s%4] {
			tab.add(keys[i], s)
		}
	}
	out := make([]int32, 64)
	p := prefixer{t: tab, keys: keys, out: out}
	p.run([]uint64{^uint64(0)})
	for s := range 64 {
		if int(out[s]) != depths[s%4] {
			t.Fatalf("slot %d: %d, want %d", s, out[s], depths[s%4])
		}
	}
	if p.lookups > 4*12 {
		t.Fatalf("%d lookups for 4 groups over %d blocks; want O(groups·log n)", p.lookups, n)
	}
}
