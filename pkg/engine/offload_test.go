package engine

import (
	"slices"
	"testing"
	"time"
)

// TestPreloadAnnouncesBlocks: blocks a prefetch preloads are announced in
// BlockStored events (with their tokens and chain parent) by the next
// step, so that a router indexes them; blocks without tokens, or an engine
// without KV events, announce nothing; the blocks are prefix hits either
// way.
func TestPreloadAnnouncesBlocks(t *testing.T) {
	p, err := BuiltinProfile(DefaultProfile)
	if err != nil {
		t.Fatal(err)
	}
	prompt := make([]uint32, 4*16+1)
	for i := range prompt {
		prompt[i] = uint32(500 + i)
	}
	for _, tc := range []struct {
		name       string
		noEvents   bool
		withTokens bool
		want       int // BlockStored events
	}{
		{"tokens known", false, true, 4},
		{"tokens unknown", false, false, 0},
		{"KV events off", true, true, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e, err := New(Config{Profile: p, DisableKVEvents: tc.noEvents})
			if err != nil {
				t.Fatal(err)
			}
			hs := e.BlockHashes(nil, prompt)
			if len(hs) != 4 {
				t.Fatalf("%d block hashes, want 4", len(hs))
			}
			var blocks []PreloadBlock
			for i, h := range hs {
				b := PreloadBlock{Hash: h}
				if i > 0 {
					b.Parent, b.HasParent = hs[i-1], true
				}
				if tc.withTokens {
					b.Tokens = prompt[i*16 : (i+1)*16]
				}
				blocks = append(blocks, b)
			}
			if n := e.Preload(blocks, 10); n != 4 {
				t.Fatalf("preloaded %d, want 4", n)
			}
			if got := e.CachedPrefix(hs); got != 4 {
				t.Fatalf("cached prefix %d, want 4", got)
			}
			r := e.Step(time.Unix(0, 0))
			var got []KVEvent
			for _, ev := range r.Events {
				if ev.Kind == BlockStored {
					got = append(got, ev)
				}
			}
			if len(got) != tc.want {
				t.Fatalf("%d BlockStored events, want %d: %+v", len(got), tc.want, got)
			}
			for i, ev := range got {
				if !slices.Equal(ev.Hashes, hs[i:i+1]) || !slices.Equal(ev.TokenIDs, prompt[i*16:(i+1)*16]) || ev.BlockSize != 16 ||
					ev.HasParent != (i > 0) || (i > 0 && ev.Parent != hs[i-1]) {
					t.Fatalf("event %d: %+v", i, ev)
				}
			}
			// Delivered once.
			if r := e.Step(time.Unix(1, 0)); len(r.Events) != 0 {
				t.Fatalf("events again: %+v", r.Events)
			}
		})
	}
}
