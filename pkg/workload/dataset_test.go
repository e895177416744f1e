package workload

import (
	"math"
	"testing"
)

// must returns a function that fails t on an error, for constructors.
func must(t *testing.T) func(Dataset, error) Dataset {
	return func(ds Dataset, err error) Dataset {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
		return ds
	}
}

func TestSharedPrefixShuffleCycles(t *testing.T) {
	cfg := SharedPrefixConfig{Groups: 6, PromptsPerGroup: 4, SystemPromptLen: 64, QuestionLen: 32, OutputLen: 10}
	ds := must(t)(NewSharedPrefix(cfg, 1))
	if ds.Len() != -1 || ds.Timed() {
		t.Errorf("Len, Timed = %d, %v; want an endless, untimed dataset", ds.Len(), ds.Timed())
	}
	const n = 24
	first := make([]int, n)
	seen := map[int]bool{}
	inOrder := true
	for i := range n {
		r := ds.Request(i)
		first[i] = r.Item
		seen[r.Item] = true
		inOrder = inOrder && r.Item == i
		if r.Group != r.Item/cfg.PromptsPerGroup || r.PromptLen != 96 || r.MaxTokens != 10 || r.Index != i {
			t.Errorf("request %d = %+v", i, r)
		}
	}
	if len(seen) != n {
		t.Errorf("the first cycle of %d requests takes %d distinct prompts, want all", n, len(seen))
	}
	if inOrder {
		t.Error("prompts are not shuffled")
	}
	for i := range n {
		if r := ds.Request(n + i); r.Item != first[i] {
			t.Fatalf("request %d takes prompt %d, want the first cycle's %d", n+i, r.Item, first[i])
		}
	}
}

func TestSharedPrefixPromptsShareGroupPrefix(t *testing.T) {
	cfg := SharedPrefixConfig{Groups: 3, PromptsPerGroup: 3, SystemPromptLen: 200, QuestionLen: 50, OutputLen: 1}
	ds := must(t)(NewSharedPrefix(cfg, 9))
	byItem := map[int][]uint32{}
	for i := range 9 {
		r := ds.Request(i)
		byItem[r.Item] = r.Prompt()
	}
	for a := range 9 {
		for b := range 9 {
			if a == b {
				continue
			}
			n := commonPrefix(byItem[a], byItem[b])
			if a/3 == b/3 && (n < 200 || n > 205) {
				t.Errorf("prompts %d and %d of one group share %d tokens, want the 200 of the system prompt", a, b, n)
			}
			if a/3 != b/3 && n > 5 {
				t.Errorf("prompts %d and %d of different groups share %d tokens", a, b, n)
			}
		}
	}
}

func TestSharedPrefixRandomOrder(t *testing.T) {
	cfg := SharedPrefixConfig{Groups: 4, PromptsPerGroup: 5, SystemPromptLen: 1, QuestionLen: 1, OutputLen: 1, Order: "random"}
	ds := must(t)(NewSharedPrefix(cfg, 3))
	const n = 40000
	counts := make([]int, 20)
	for i := range n {
		counts[ds.Request(i).Item]++
	}
	for item, c := range counts {
		if want := n / 20; math.Abs(float64(c-want)) > 0.1*float64(want) {
			t.Errorf("prompt %d drawn %d times, want about %d", item, c, want)
		}
	}
}

func TestLLMDSharedPrefixDefaults(t *testing.T) {
	ds := must(t)(NewSharedPrefix(SharedPrefixConfig{}, 0))
	r := ds.Request(0)
	if r.PromptLen != 7200 || r.MaxTokens != 1000 {
		t.Errorf("request = %+v, want 6,000 + 1,200 prompt tokens and 1,000 out", r)
	}
	seen := map[int]bool{}
	for i := range 750 {
		seen[ds.Request(i).Item] = true
	}
	if len(seen) != 750 {
		t.Errorf("%d distinct prompts in a cycle, want 150 × 5", len(seen))
	}
}

func TestPrefixRepetition(t *testing.T) {
	cfg := PrefixRepetitionConfig{NumPrompts: 23, NumPrefixes: 5, PrefixLen: 100, SuffixLen: 20, OutputLen: 7}
	ds := must(t)(NewPrefixRepetition(cfg, 2))
	if ds.Len() != 20 {
		t.Fatalf("Len = %d, want 5 prefixes × ⌊23/5⌋ = 20, as vLLM rounds", ds.Len())
	}
	prefixes := map[int][]uint32{}
	perGroup := map[int]int{}
	inOrder := true
	for i := range ds.Len() {
		r := ds.Request(i)
		p := r.Prompt()
		if len(p) != 120 || r.MaxTokens != 7 {
			t.Fatalf("request %d: %d prompt tokens, %d out", i, len(p), r.MaxTokens)
		}
		perGroup[r.Group]++
		inOrder = inOrder && r.Item == i
		if q, ok := prefixes[r.Group]; ok {
			if !equalIDs(q, p[:100]) {
				t.Errorf("request %d does not start with its group's prefix", i)
			}
		} else {
			prefixes[r.Group] = p[:100]
		}
	}
	for g := range 5 {
		if perGroup[g] != 4 {
			t.Errorf("prefix %d used %d times, want 4", g, perGroup[g])
		}
	}
	if inOrder {
		t.Error("requests are not shuffled")
	}
	if _, err := NewPrefixRepetition(PrefixRepetitionConfig{NumPrompts: 3, NumPrefixes: 5}, 0); err == nil {
		t.Error("fewer prompts than prefixes accepted")
	}
	def := must(t)(NewPrefixRepetition(PrefixRepetitionConfig{}, 0))
	if r := def.Request(0); def.Len() != 1000 || r.PromptLen != 512 || r.MaxTokens != 128 {
		t.Errorf("defaults: %d requests of %d+%d tokens, want vLLM's 1,000 of 256+256 → 128", def.Len(), r.PromptLen, r.MaxTokens)
	}
}

func TestRandomLengths(t *testing.T) {
	tests := []struct {
		name            string
		cfg             RandomConfig
		inLo, inHi      int
		outLo, outHi    int
		meanIn, meanOut float64
	}{
		{"fixed lengths", RandomConfig{NumPrompts: 2000, InputLen: 100, OutputLen: 10}, 100, 100, 10, 10, 100, 10},
		{"range ratio 0.5", RandomConfig{NumPrompts: 20000, InputLen: 100, OutputLen: 10, RangeRatio: 0.5}, 50, 150, 5, 15, 100, 10},
		{"tiny output floors at 1", RandomConfig{NumPrompts: 20000, InputLen: 20, OutputLen: 1, RangeRatio: 0.9}, 1, 38, 1, 2, 19.5, 1.5},
		{"shared prefix", RandomConfig{NumPrompts: 2000, InputLen: 100, OutputLen: 10, PrefixLen: 30}, 130, 130, 10, 10, 130, 10},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			ds := must(t)(NewRandom(tc.cfg, 5))
			if ds.Len() != tc.cfg.NumPrompts {
				t.Fatalf("Len = %d", ds.Len())
			}
			var in, out float64
			for i := range ds.Len() {
				r := ds.Request(i)
				if r.PromptLen < tc.inLo || r.PromptLen > tc.inHi || r.MaxTokens < tc.outLo || r.MaxTokens > tc.outHi {
					t.Fatalf("request %d: %d in, %d out; want [%d, %d] and [%d, %d]", i, r.PromptLen, r.MaxTokens, tc.inLo, tc.inHi, tc.outLo, tc.outHi)
				}
				in += float64(r.PromptLen)
				out += float64(r.MaxTokens)
			}
			n := float64(ds.Len())
			if math.Abs(in/n-tc.meanIn) > 0.02*tc.meanIn || math.Abs(out/n-tc.meanOut) > 0.02*tc.meanOut {
				t.Errorf("means = %.2f in, %.2f out; want %.2f, %.2f", in/n, out/n, tc.meanIn, tc.meanOut)
			}
			r0, r1 := ds.Request(0), ds.Request(1)
			shared := commonPrefix(r0.Prompt(), r1.Prompt())
			if shared < tc.cfg.PrefixLen || shared > tc.cfg.PrefixLen+5 {
				t.Errorf("two prompts share %d tokens, want the prefix's %d", shared, tc.cfg.PrefixLen)
			}
			if wantGroup := map[bool]int{true: 0, false: -1}[tc.cfg.PrefixLen > 0]; r0.Group != wantGroup {
				t.Errorf("group = %d, want %d", r0.Group, wantGroup)
			}
		})
	}
}

func TestGeneratorsDeterministic(t *testing.T) {
	makers := map[string]func(seed uint64) (Dataset, error){
		"shared-prefix": func(s uint64) (Dataset, error) {
			return NewSharedPrefix(SharedPrefixConfig{Groups: 5, PromptsPerGroup: 3, SystemPromptLen: 40, QuestionLen: 10, OutputLen: 3}, s)
		},
		"shared-prefix random order": func(s uint64) (Dataset, error) {
			return NewSharedPrefix(SharedPrefixConfig{Groups: 5, PromptsPerGroup: 3, SystemPromptLen: 40, QuestionLen: 10, OutputLen: 3, Order: "random"}, s)
		},
		"prefix-repetition": func(s uint64) (Dataset, error) {
			return NewPrefixRepetition(PrefixRepetitionConfig{NumPrompts: 15, NumPrefixes: 3, PrefixLen: 40, SuffixLen: 10}, s)
		},
		"random": func(s uint64) (Dataset, error) {
			return NewRandom(RandomConfig{NumPrompts: 15, InputLen: 50, OutputLen: 5, RangeRatio: 0.5}, s)
		},
	}
	for name, mk := range makers {
		t.Run(name, func(t *testing.T) {
			a, b, c := must(t)(mk(11)), must(t)(mk(11)), must(t)(mk(12))
			differ := false
			for i := range 15 {
				ra, rb, rc := a.Request(i), b.Request(i), c.Request(i)
				pa, pb, pc := ra.Prompt(), rb.Prompt(), rc.Prompt()
				if ra.Item != rb.Item || ra.MaxTokens != rb.MaxTokens || !equalIDs(pa, pb) {
					t.Fatalf("request %d differs under one seed", i)
				}
				differ = differ || !equalIDs(pa, pc)
			}
			if !differ {
				t.Error("seeds 11 and 12 give the same prompts")
			}
		})
	}
}
