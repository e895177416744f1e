package kvstore

import (
	"container/heap"
	"context"
	"math"
	"sort"
)

// DeleteBlock removes one block's object (after a manifest that no longer
// names it was committed).
func (s *Store) DeleteBlock(ctx context.Context, sp Space, key uint64) error {
	return s.Delete(ctx, sp.blockKey(key))
}

// Value is what a stored or resident block is worth keeping: how often its
// prefix was hit times how deep it sits in its chain (a deep block saves
// the recomputation of everything before it). A block never hit counts
// once.
func (e BlockEntry) Value() float64 {
	return float64(max(e.Hits, 1)) * float64(max(e.Depth, 1))
}

// Retain bounds the manifest to maxBytes (0: unbounded) and keeps it
// restorable: blocks whose parent it does not name are dropped (a chain is
// only usable from its root), then the least valuable leaves go first, so
// a chain shrinks from its tail and never loses its root while a deeper
// block stays. It returns the dropped block ids, sorted; commit the
// manifest before deleting their objects.
func (m *Manifest) Retain(maxBytes int64) []string {
	var dropped []string
	drop := func(id string) {
		delete(m.Blocks, id)
		dropped = append(dropped, id)
	}
	// Orphans: walk until no block names a missing parent.
	for {
		n := len(dropped)
		for id, e := range m.Blocks {
			if e.Parent != "" {
				if _, ok := m.Blocks[e.Parent]; !ok {
					drop(id)
				}
			}
		}
		if len(dropped) == n {
			break
		}
	}
	total := m.Bytes()
	if maxBytes > 0 && total > maxBytes {
		children := make(map[string]int, len(m.Blocks))
		for _, e := range m.Blocks {
			if e.Parent != "" {
				children[e.Parent]++
			}
		}
		h := &leafHeap{m: m}
		for id := range m.Blocks {
			if children[id] == 0 {
				h.ids = append(h.ids, id)
			}
		}
		heap.Init(h)
		for total > maxBytes && h.Len() > 0 {
			id := heap.Pop(h).(string)
			e := m.Blocks[id]
			total -= e.Bytes
			drop(id)
			if e.Parent != "" {
				if children[e.Parent]--; children[e.Parent] == 0 {
					heap.Push(h, e.Parent)
				}
			}
		}
	}
	sort.Strings(dropped)
	return dropped
}

// leafHeap orders block ids by value, least first (ties: older last use,
// then id, so the order is deterministic).
type leafHeap struct {
	m   *Manifest
	ids []string
}

func (h *leafHeap) Len() int { return len(h.ids) }
func (h *leafHeap) Less(i, j int) bool {
	a, b := h.m.Blocks[h.ids[i]], h.m.Blocks[h.ids[j]]
	if va, vb := a.Value(), b.Value(); va != vb {
		return va < vb
	}
	if !a.LastUse.Equal(b.LastUse) {
		return a.LastUse.Before(b.LastUse)
	}
	return h.ids[i] < h.ids[j]
}
func (h *leafHeap) Swap(i, j int) { h.ids[i], h.ids[j] = h.ids[j], h.ids[i] }
func (h *leafHeap) Push(x any)    { h.ids = append(h.ids, x.(string)) }
func (h *leafHeap) Pop() any {
	n := len(h.ids)
	x := h.ids[n-1]
	h.ids = h.ids[:n-1]
	return x
}

// SelectValuable picks, from candidate blocks (by id, with their chain
// parent, depth, hits and size), the most valuable ones that fit in budget
// bytes (0: all), each with whatever of its prefix is not already stored
// (have reports a block storage already holds, which costs nothing): a
// block is only worth writing with the chain that leads to it. The result
// lists parents before their children, so writing in order never names a
// block whose parent is missing. A candidate whose chain has a gap (a parent
// neither a candidate nor stored) is skipped.
func SelectValuable(cands map[string]BlockEntry, budget int64, have func(id string) bool) []string {
	type cand struct {
		id string
		v  float64
	}
	// Values computed once: the sort compares them without map lookups.
	list := make([]cand, 0, len(cands))
	minBytes := int64(math.MaxInt64)
	for id, e := range cands {
		list = append(list, cand{id, e.Value()})
		minBytes = min(minBytes, e.Bytes)
	}
	sort.Slice(list, func(i, j int) bool {
		if list[i].v != list[j].v {
			return list[i].v > list[j].v
		}
		return list[i].id < list[j].id
	})
	chosen := make(map[string]bool)
	var out []string
	var used int64
	var path []string
	for _, c := range list {
		if budget > 0 && budget-used < minBytes {
			break // no block fits any more
		}
		id := c.id
		if chosen[id] {
			continue
		}
		path = path[:0]
		var cost int64
		ok := true
		for cur := id; cur != "" && !chosen[cur] && !(have != nil && have(cur)); {
			e, found := cands[cur]
			if !found || len(path) > len(cands) {
				ok = false
				break
			}
			path = append(path, cur)
			cost += e.Bytes
			if budget > 0 && used+cost > budget {
				// Over the budget already: the rest of the walk (to a
				// deep chain's root) cannot change the answer.
				ok = false
				break
			}
			cur = e.Parent
		}
		if !ok {
			continue
		}
		used += cost
		for i := len(path) - 1; i >= 0; i-- {
			chosen[path[i]] = true
			out = append(out, path[i])
		}
	}
	return out
}
