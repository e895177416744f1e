package kvstore

import (
	"reflect"
	"testing"
)

// chainOf builds a manifest chain a->b->c... with the given hits per block,
// 10 bytes each.
func chainOf(m map[string]BlockEntry, ids []string, hits []int64) {
	parent := ""
	for i, id := range ids {
		m[id] = BlockEntry{Parent: parent, Depth: i + 1, Bytes: 10, Hits: hits[i]}
		parent = id
	}
}

func TestRetain(t *testing.T) {
	for _, tc := range []struct {
		name    string
		build   func(m map[string]BlockEntry)
		max     int64
		dropped []string
	}{
		{"unbounded keeps all", func(m map[string]BlockEntry) { chainOf(m, []string{"a", "b"}, []int64{1, 1}) }, 0, nil},
		{"orphans go even unbounded", func(m map[string]BlockEntry) {
			chainOf(m, []string{"a", "b"}, []int64{1, 1})
			m["x"] = BlockEntry{Parent: "gone", Depth: 2, Bytes: 10}
			m["y"] = BlockEntry{Parent: "x", Depth: 3, Bytes: 10}
		}, 0, []string{"x", "y"}},
		{"a chain shrinks from its tail", func(m map[string]BlockEntry) {
			chainOf(m, []string{"a", "b", "c"}, []int64{5, 5, 5})
		}, 15, []string{"b", "c"}},
		{"the colder chain goes first", func(m map[string]BlockEntry) {
			chainOf(m, []string{"h1", "h2"}, []int64{9, 9})
			chainOf(m, []string{"c1", "c2"}, []int64{1, 1})
		}, 20, []string{"c1", "c2"}},
		{"a shared root stays while a branch needs it", func(m map[string]BlockEntry) {
			chainOf(m, []string{"r", "l"}, []int64{10, 1})
			m["s"] = BlockEntry{Parent: "r", Depth: 2, Bytes: 10, Hits: 9}
		}, 20, []string{"l"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			m := &Manifest{Blocks: map[string]BlockEntry{}}
			tc.build(m.Blocks)
			got := m.Retain(tc.max)
			if !reflect.DeepEqual(got, tc.dropped) {
				t.Fatalf("dropped %v, want %v", got, tc.dropped)
			}
			if tc.max > 0 && m.Bytes() > tc.max {
				t.Fatalf("%d bytes left, bound %d", m.Bytes(), tc.max)
			}
			for id, e := range m.Blocks {
				if _, ok := m.Blocks[e.Parent]; e.Parent != "" && !ok {
					t.Fatalf("%s kept without its parent %s", id, e.Parent)
				}
			}
		})
	}
}

func TestSelectValuable(t *testing.T) {
	cands := map[string]BlockEntry{}
	chainOf(cands, []string{"a1", "a2", "a3"}, []int64{4, 4, 4}) // values 4, 8, 12
	chainOf(cands, []string{"b1", "b2"}, []int64{1, 1})          // values 1, 2
	cands["gap"] = BlockEntry{Parent: "nowhere", Depth: 5, Bytes: 10, Hits: 100}
	for _, tc := range []struct {
		name   string
		budget int64
		have   func(string) bool
		want   []string
	}{
		{"all, parents first", 0, nil, []string{"a1", "a2", "a3", "b1", "b2"}},
		{"the best chain whole", 30, nil, []string{"a1", "a2", "a3"}},
		{"what fits after it", 40, nil, []string{"a1", "a2", "a3", "b1"}},
		{"a stored prefix costs nothing", 20, func(id string) bool { return id == "a1" || id == "a2" }, []string{"a3", "b1"}},
		{"the most valuable chain prefix that fits", 10, nil, []string{"a1"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := SelectValuable(cands, tc.budget, tc.have); !reflect.DeepEqual(got, tc.want) {
				t.Fatalf("got %v, want %v", got, tc.want)
			}
		})
	}
}
