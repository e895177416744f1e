package tokenizer

import (
	"strings"
	"testing"
)

func TestEncodeDeterministicAndPieces(t *testing.T) {
	a := Encode(nil, "Hello, world! 12345 tokenization")
	b := Encode(nil, "Hello, world! 12345 tokenization")
	if len(a) != len(b) {
		t.Fatal("nondeterministic length")
	}
	for i := range a {
		if a[i] != b[i] {
			t.Fatal("nondeterministic ids")
		}
	}
	// "Hello" "," " world" "!" " 123" "45" " tokeniza" "tion"
	if len(a) != 8 {
		t.Fatalf("pieces = %d, want 8", len(a))
	}
	if Count("Hello, world! 12345 tokenization") != len(a) {
		t.Fatal("Count disagrees with Encode")
	}
	for _, id := range a {
		if id >= SpecialBase {
			t.Fatalf("ordinary piece got special id %d", id)
		}
	}
}

func TestGeneratedTextRoundTrips(t *testing.T) {
	vocab := GeneratedVocab()
	if len(vocab) < 200 {
		t.Fatalf("generated vocabulary too small: %d", len(vocab))
	}
	ids := []uint32{vocab[0], vocab[7], vocab[100], vocab[3]}
	text := DecodeString(ids)
	back := Encode(nil, text)
	if len(back) != len(ids) {
		t.Fatalf("%q -> %v, want %v", text, back, ids)
	}
	for i := range ids {
		if back[i] != ids[i] {
			t.Fatalf("%q -> %v, want %v", text, back, ids)
		}
	}
}

func TestDecodeUnknownAndSpecial(t *testing.T) {
	s := DecodeString([]uint32{BOS, 42})
	if !strings.HasPrefix(s, "<|begin_of_text|>") || !strings.HasSuffix(s, " <42>") {
		t.Fatalf("got %q", s)
	}
}

func TestChatTemplateSharesPrefix(t *testing.T) {
	sys := Message{Role: "system", Content: strings.Repeat("You are a helpful assistant. ", 20)}
	a := ApplyChatTemplate(nil, []Message{sys, {Role: "user", Content: "What is Knative?"}}, true)
	b := ApplyChatTemplate(nil, []Message{sys, {Role: "user", Content: "Why vLLM?"}}, true)
	common := 0
	for common < len(a) && common < len(b) && a[common] == b[common] {
		common++
	}
	sysLen := len(ApplyChatTemplate(nil, []Message{sys}, false))
	if common < sysLen {
		t.Fatalf("shared prefix %d tokens, want at least the system turn's %d", common, sysLen)
	}
	if a[0] != BOS || a[len(a)-1] == EOT {
		t.Fatal("template framing wrong")
	}
}

func FuzzEncode(f *testing.F) {
	f.Add("Hello, world")
	f.Add(" \xff\xfe 123456 ééé")
	f.Fuzz(func(t *testing.T, s string) {
		ids := Encode(nil, s)
		if len(ids) != Count(s) {
			t.Fatalf("Count %d != len(Encode) %d", Count(s), len(ids))
		}
		if len(s) > 0 && len(ids) == 0 {
			t.Fatal("non-empty text encoded to nothing")
		}
		for _, id := range ids {
			if id >= SpecialBase {
				t.Fatalf("id %d in special range", id)
			}
		}
	})
}
