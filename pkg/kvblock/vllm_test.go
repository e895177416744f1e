package kvblock

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"testing"

	"github.com/fxamacker/cbor/v2"
)

// TestVLLMHasherMatchesCanonicalCBOR: the hand-written encoding is what a
// canonical CBOR encoder (cbor2.dumps(..., canonical=True) in vLLM) writes
// for (parent, tuple(tokens), None), at every integer width.
func TestVLLMHasherMatchesCanonicalCBOR(t *testing.T) {
	em, err := cbor.CoreDetEncOptions().EncMode()
	if err != nil {
		t.Fatal(err)
	}
	h, err := NewVLLMHasher(4, AlgoSHA256CBOR, "0")
	if err != nil {
		t.Fatal(err)
	}
	rootEnc, _ := em.Marshal("0")
	if d := sha256.Sum256(rootEnc); !bytes.Equal(h.Root(), d[:]) {
		t.Fatalf("NONE_HASH %x, want %x", h.Root(), d)
	}
	for _, toks := range [][]uint32{{0, 23, 24, 255}, {256, 65535, 65536, 1<<32 - 1}, {128000, 128001, 9, 1}} {
		ints := make([]uint64, len(toks))
		for i, x := range toks {
			ints[i] = uint64(x)
		}
		enc, err := em.Marshal([]any{h.Root(), ints, nil})
		if err != nil {
			t.Fatal(err)
		}
		want := sha256.Sum256(enc)
		if got := h.Next(nil, toks); !bytes.Equal(got, want[:]) {
			t.Fatalf("tokens %v: digest %x, want %x (cbor %s)", toks, got, want, hex.EncodeToString(enc))
		}
	}
}

func TestVLLMHasherChains(t *testing.T) {
	h, _ := NewVLLMHasher(2, AlgoSHA256CBOR, "42")
	toks := []uint32{1, 2, 3, 4, 5}
	keys, last := h.Extend(nil, nil, toks)
	if len(keys) != 2 {
		t.Fatalf("%d keys for 2 full blocks", len(keys))
	}
	d0 := h.Next(nil, toks[:2])
	d1 := h.Next(d0, toks[2:4])
	if keys[0] != Key(d0) || keys[1] != Key(d1) || !bytes.Equal(last, d1) {
		t.Fatal("Extend does not chain Next")
	}
	// Extending later continues the chain.
	more, _ := h.Extend(keys[:1], d0, toks)
	if more[1] != keys[1] {
		t.Fatal("incremental Extend differs")
	}
	// Another seed, another root, other hashes.
	h2, _ := NewVLLMHasher(2, AlgoSHA256CBOR, "43")
	if k2, _ := h2.Extend(nil, nil, toks); k2[0] == keys[0] {
		t.Fatal("hash seed ignored")
	}
	hx, _ := NewVLLMHasher(2, AlgoXXHashCBOR, "42")
	if len(hx.Root()) != 16 {
		t.Fatalf("xxhash root has %d bytes", len(hx.Root()))
	}
	if _, err := NewVLLMHasher(2, "sha256", "0"); err == nil {
		t.Fatal("pickle-based sha256 accepted")
	}
}
