package kvblock

import (
	"testing"
)

func seq(n int, start uint32) []uint32 {
	s := make([]uint32, n)
	for i := range s {
		s[i] = start + uint32(i)
	}
	return s
}

func TestSharedPrefixSharesHashes(t *testing.T) {
	h := MustHasher(16, 0)
	a := append(seq(40, 1), 999)
	b := append(seq(40, 1), 7, 7, 7)
	ha, hb := h.Hashes(nil, a), h.Hashes(nil, b)
	if len(ha) != 2 || len(hb) != 2 {
		t.Fatalf("full blocks: got %d and %d, want 2 and 2", len(ha), len(hb))
	}
	if ha[0] != hb[0] || ha[1] != hb[1] {
		t.Fatalf("equal prefixes hashed differently: %v vs %v", ha, hb)
	}
	c := seq(40, 2)
	if hc := h.Hashes(nil, c); hc[0] == ha[0] {
		t.Fatalf("different blocks share a hash")
	}
}

func TestChainingDependsOnParent(t *testing.T) {
	h := MustHasher(4, 0)
	x := []uint32{1, 2, 3, 4, 5, 6, 7, 8}
	y := []uint32{9, 9, 9, 9, 5, 6, 7, 8}
	hx, hy := h.Hashes(nil, x), h.Hashes(nil, y)
	if hx[1] == hy[1] {
		t.Fatal("second block hash ignores its parent")
	}
}

func TestSeedAndBlockSizeChangeKeys(t *testing.T) {
	toks := seq(64, 3)
	a := MustHasher(16, 0).Hashes(nil, toks)
	b := MustHasher(16, 1).Hashes(nil, toks)
	if a[0] == b[0] {
		t.Fatal("seed does not change the hashes")
	}
}

func TestExtendMatchesHashes(t *testing.T) {
	h := MustHasher(16, 42)
	toks := seq(200, 5)
	want := h.Hashes(nil, toks)
	got := h.Extend(h.Hashes(nil, toks[:50]), toks)
	if len(got) != len(want) {
		t.Fatalf("len %d want %d", len(got), len(want))
	}
	for i := range want {
		if got[i] != want[i] {
			t.Fatalf("block %d: %x want %x", i, got[i], want[i])
		}
	}
}

func TestBadBlockSize(t *testing.T) {
	for _, bs := range []int{0, -1, 1 << 20} {
		if _, err := NewHasher(bs, 0); err == nil {
			t.Errorf("block size %d accepted", bs)
		}
	}
}

func BenchmarkHashes32k(b *testing.B) {
	h := MustHasher(16, 0)
	toks := seq(32768, 0)
	dst := make([]uint64, 0, 2048)
	b.SetBytes(int64(len(toks) * 4))
	for b.Loop() {
		dst = h.Hashes(dst[:0], toks)
	}
}
