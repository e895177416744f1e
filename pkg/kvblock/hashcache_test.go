package kvblock

import (
	"math/rand/v2"
	"slices"
	"sync"
	"testing"
)

func randTokens(rng *rand.Rand, n int, vocab uint32) []uint32 {
	t := make([]uint32, n)
	for i := range t {
		t[i] = rng.Uint32N(vocab)
	}
	return t
}

func cat(parts ...[]uint32) []uint32 {
	var out []uint32
	for _, p := range parts {
		out = append(out, p...)
	}
	return out
}

// TestHashCacheReturnsExactlyTheHashes drives a cache with the prompts it is
// meant for and with adversarial ones, under budgets small enough to evict,
// and checks every answer against the uncached hashes.
func TestHashCacheReturnsExactlyTheHashes(t *testing.T) {
	const bs = 16
	cp := CheckpointBlocks * bs
	for _, tc := range []struct {
		name     string
		maxBytes int64
		vocab    uint32 // small: blocks repeat, so checkpoint keys collide
		blocks   int    // > 0: prompts are sequences of this many distinct blocks
	}{
		{"roomy", 64 << 20, 128000, 0},
		{"evicting", 200 << 10, 128000, 0},
		{"tiny budget", 1 << 10, 128000, 0},
		{"two-token vocabulary", 64 << 20, 2, 0},
		{"one-token vocabulary", 64 << 20, 1, 0},
		{"two-block alphabet", 64 << 20, 128000, 2},
		{"two-block alphabet, evicting", 300 << 10, 128000, 2},
	} {
		t.Run(tc.name, func(t *testing.T) {
			rng := rand.New(rand.NewPCG(7, uint64(tc.maxBytes)+uint64(tc.vocab)))
			h := MustHasher(bs, 3)
			c := NewHashCache(h, tc.maxBytes)
			alphabet := [][]uint32{randTokens(rng, bs, tc.vocab), randTokens(rng, bs, tc.vocab)}
			tok := func(n int) []uint32 {
				if tc.blocks == 0 {
					return randTokens(rng, n, tc.vocab)
				}
				var t []uint32
				for len(t) < n {
					t = append(t, alphabet[rng.IntN(tc.blocks)]...)
				}
				return t[:n]
			}
			system := tok(2*cp + 5)
			doc := tok(3*cp + 100)
			convs := make([][]uint32, 6)
			for i := range convs {
				convs[i] = cat(system, tok(rng.IntN(cp)))
			}
			check := func(what string, prompt []uint32) {
				t.Helper()
				want := h.Hashes(nil, prompt)
				pre := []uint64{1, 2, 3}
				got := c.Hashes(slices.Clone(pre), prompt)
				if !slices.Equal(got[:3], pre) || !slices.Equal(got[3:], want) {
					t.Fatalf("%s (%d tokens): cached hashes differ from Hashes", what, len(prompt))
				}
				if st := c.Stats(); st.Bytes > tc.maxBytes || st.Bytes < 0 || st.Entries < 0 {
					t.Fatalf("%s: cache holds %d bytes in %d entries, budget %d", what, st.Bytes, st.Entries, tc.maxBytes)
				}
			}
			for step := range 300 {
				switch k := rng.IntN(6); k {
				case 0, 1: // next turn of a conversation
					i := rng.IntN(len(convs))
					convs[i] = cat(convs[i], tok(1+rng.IntN(cp)))
					check("turn", convs[i])
				case 2: // a regenerated turn: an earlier prefix, a new ending
					i := rng.IntN(len(convs))
					cut := rng.IntN(len(convs[i]) + 1)
					check("regenerate", cat(convs[i][:cut], tok(rng.IntN(3*cp))))
				case 3: // another question on a shared document
					check("document", cat(system, doc, tok(rng.IntN(cp))))
				case 4: // a prefix of something cached, partial blocks included
					i := rng.IntN(len(convs))
					check("prefix", convs[i][:rng.IntN(len(convs[i])+1)])
				default:
					check("fresh", tok(rng.IntN(4*cp)))
				}
				_ = step
			}
		})
	}
}

// TestHashCacheReusesAConversationsEarlierTurns checks that a new turn
// hashes only its new blocks and that a conversation holds one entry.
func TestHashCacheReusesAConversationsEarlierTurns(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 1))
	h := MustHasher(16, 0)
	c := NewHashCache(h, 64<<20)
	prompt := randTokens(rng, 3000, 50000)
	c.Hashes(nil, prompt)
	for turn := 1; turn <= 5; turn++ {
		before := c.Stats()
		old := len(prompt) / 16
		prompt = cat(prompt, randTokens(rng, 700, 50000))
		c.Hashes(nil, prompt)
		st := c.Stats()
		if reused, hashed := st.ReusedBlocks-before.ReusedBlocks, st.HashedBlocks-before.HashedBlocks; reused != int64(old) || hashed != int64(len(prompt)/16-old) {
			t.Fatalf("turn %d: reused %d and hashed %d blocks, want %d and %d", turn, reused, hashed, old, len(prompt)/16-old)
		}
		if st.Entries != 1 {
			t.Fatalf("turn %d: %d entries, want 1 (the earlier turn is a prefix of the new one)", turn, st.Entries)
		}
	}
	// Short prompts are not worth an entry.
	c.Hashes(nil, randTokens(rng, CheckpointBlocks*16-1, 50000))
	if st := c.Stats(); st.Entries != 1 {
		t.Fatalf("a prompt shorter than a checkpoint was stored: %d entries", st.Entries)
	}
}

// TestHashCacheConcurrentUse runs conversations from several goroutines
// (for the race detector) and checks every answer.
func TestHashCacheConcurrentUse(t *testing.T) {
	h := MustHasher(16, 0)
	c := NewHashCache(h, 1<<20)
	system := randTokens(rand.New(rand.NewPCG(2, 2)), 1500, 1000)
	var wg sync.WaitGroup
	errs := make(chan string, 8)
	for g := range 8 {
		wg.Go(func() {
			rng := rand.New(rand.NewPCG(3, uint64(g)))
			p := slices.Clone(system)
			for range 40 {
				p = cat(p, randTokens(rng, rng.IntN(900), 1000))
				if rng.IntN(4) == 0 {
					p = p[:rng.IntN(len(p))]
				}
				if !slices.Equal(c.Hashes(nil, p), h.Hashes(nil, p)) {
					errs <- "cached hashes differ"
					return
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for e := range errs {
		t.Fatal(e)
	}
}
