package native

import (
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/llmd-kn/llmd-kn/pkg/tokenizer"
)

func pieces(s splitter, text string) []string {
	var out []string
	s.split(text, func(p string) { out = append(out, p) })
	return out
}

// TestSplitterMatchesRegexp proves the hand-written pre-tokenizers equal to
// a backtracking regex engine running the patterns from tokenizer.json, on
// the equality corpus and on random text dense in the characters where
// regex dialects differ (U+0085 and U+FEFF among them).
func TestSplitterMatchesRegexp(t *testing.T) {
	texts := corpusTexts(corpusSize)
	rng := rand.New(rand.NewPCG(5, 5))
	tricky := []rune{' ', '\t', '\n', '\r', '\v', '\f', 0x85, 0xA0, 0x1680, 0x2000, 0x200B, 0x2028, 0x202F, 0x3000, 0xFEFF,
		'\'', 's', 'S', 'l', 'L', 'e', 'E', 'x', '1', '٣', '²', 'Ⅻ', '½', '!', '.', '中', 'é', '\u0301', '😀', 0x1c, 0x17F}
	for i := 0; i < 3000; i++ {
		var b strings.Builder
		for k := rng.IntN(24); k >= 0; k-- {
			b.WriteRune(tricky[rng.IntN(len(tricky))])
		}
		texts = append(texts, b.String())
	}
	for _, pat := range []string{patternLlama3, patternQwen2} {
		hand, err := newSplitter(pat)
		if err != nil {
			t.Fatal(err)
		}
		if _, ok := hand.(gptSplit); !ok {
			t.Fatalf("pattern %q did not get the hand-written splitter", pat)
		}
		re, err := newRegexSplit(pat)
		if err != nil {
			t.Fatal(err)
		}
		bad := 0
		for _, text := range texts {
			text = ToValidUTF8(text)
			if diff := cmp.Diff(pieces(re, text), pieces(hand, text)); diff != "" {
				bad++
				t.Errorf("pattern %q on %q (-regexp +hand):\n%s", pat, text, diff)
			}
		}
		t.Logf("%d texts, %d differ", len(texts), bad)
	}
}

func TestToValidUTF8(t *testing.T) {
	for _, tc := range []struct{ in, want string }{
		{"ok", "ok"},
		{"a\xffb", "a\uFFFDb"},
		{"\xe2\x82", "\uFFFD"},                 // a truncated sequence is one replacement
		{"\xe2\x82x", "\uFFFDx"},               // ... also before another character
		{"\xed\xa0\x80", "\uFFFD\uFFFD\uFFFD"}, // a surrogate: ED is not followed by A0 in UTF-8
		{"\xc0\xaf", "\uFFFD\uFFFD"},           // overlong
		{"\xf0\x9f\x98", "\uFFFD"},
		{"\xf4\x90\x80\x80", "\uFFFD\uFFFD\uFFFD\uFFFD"},
		{"\xe2\x82\xac", "€"},
	} {
		if got := ToValidUTF8(tc.in); got != tc.want {
			t.Errorf("ToValidUTF8(%q) = %q, want %q", tc.in, got, tc.want)
		}
	}
}

// modelFiles returns a family's published tokenizer files, as
// oracleModules finds them (node is not needed).
func modelFiles(t testing.TB, family string) string {
	t.Helper()
	dir := os.Getenv("LLMD_TOKENIZERS_DIR")
	if dir == "" {
		dir = filepath.Join("..", "..", "..", "_output", "tokenizers", "node_modules")
	}
	d := modelDir(dir, family)
	if _, err := os.Stat(filepath.Join(d, "tokenizer.json")); err != nil {
		if os.Getenv("LLMD_REQUIRE_TOKENIZERS") == "1" {
			t.Fatalf("%s: %v (run hack/install-tokenizers.sh)", family, err)
		}
		t.Skipf("%s: %v (run hack/install-tokenizers.sh)", family, err)
	}
	return d
}

// TestQwenThinkStrip: Qwen 3's template strips only newlines around a
// reasoning block (Python's str.lstrip('\n')); the JavaScript reference
// strips all whitespace there, so the corpus avoids the case and this test
// holds the Python rendering.
func TestQwenThinkStrip(t *testing.T) {
	tk, err := Load(modelFiles(t, "tokenizer-qwen3"), Options{})
	if err != nil {
		t.Fatal(err)
	}
	got, err := tk.RenderChat([]tokenizer.Message{{Role: "user", Content: "hi"}, {Role: "assistant", Content: "<think>\n  r  \n</think>\n\n\t answer "}}, false)
	if err != nil {
		t.Fatal(err)
	}
	want := "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n<think>\n  r  \n</think>\n\n\t answer <|im_end|>\n"
	if got != want {
		t.Errorf("got  %q\nwant %q", got, want)
	}
}

// TestFamilies pins a few ids per family (from the reference) and the
// vocabulary sizes the activator validates token-id prompts against.
func TestFamilies(t *testing.T) {
	for _, tc := range []struct {
		family    string
		vocab     int
		text      string
		special   []uint32
		chatFirst uint32
	}{
		{"tokenizer-llama3_1", 128256, "Hello, world!", []uint32{128000, 9906, 11, 1917, 0}, 128000},
		{"tokenizer-qwen3", 151669, "Hello, world!", []uint32{9707, 11, 1879, 0}, 151644},
	} {
		t.Run(tc.family, func(t *testing.T) {
			tk, err := Load(modelFiles(t, tc.family), Options{})
			if err != nil {
				t.Fatal(err)
			}
			if tk.VocabSize() != tc.vocab {
				t.Errorf("VocabSize = %d, want %d", tk.VocabSize(), tc.vocab)
			}
			if got := tk.AppendEncode(nil, tc.text, true); !slices.Equal(got, tc.special) {
				t.Errorf("AppendEncode = %v, want %v", got, tc.special)
			}
			ids, err := tk.AppendChat(nil, []tokenizer.Message{{Role: "user", Content: "hi"}}, true)
			if err != nil || len(ids) == 0 || ids[0] != tc.chatFirst {
				t.Errorf("AppendChat = %v, %v; want a prompt starting with %d", ids, err, tc.chatFirst)
			}
			text, err := tk.Decode(tk.AppendEncode(nil, "héllo 😀 wörld", false), false)
			if err != nil || text != "héllo 😀 wörld" {
				t.Errorf("Decode(Encode) = %q, %v", text, err)
			}
		})
	}
}

func TestResolveDir(t *testing.T) {
	root := t.TempDir()
	flat := filepath.Join(root, "flat")
	cache := filepath.Join(root, "models--org--name")
	write := func(p string) {
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte("{}"), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	write(filepath.Join(flat, "tokenizer.json"))
	write(filepath.Join(cache, "snapshots", "aaa", "tokenizer.json"))
	if got, err := ResolveDir(flat); err != nil || got != flat {
		t.Errorf("flat: %q, %v", got, err)
	}
	if got, err := ResolveDir(cache); err != nil || got != filepath.Join(cache, "snapshots", "aaa") {
		t.Errorf("one snapshot: %q, %v", got, err)
	}
	write(filepath.Join(cache, "snapshots", "bbb", "tokenizer.json"))
	if _, err := ResolveDir(cache); err == nil {
		t.Error("two snapshots and no refs/main: want an error")
	}
	if err := os.MkdirAll(filepath.Join(cache, "refs"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(cache, "refs", "main"), []byte("bbb\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if got, err := ResolveDir(cache); err != nil || got != filepath.Join(cache, "snapshots", "bbb") {
		t.Errorf("refs/main: %q, %v", got, err)
	}
	if _, err := ResolveDir(filepath.Join(root, "missing")); err == nil {
		t.Error("missing: want an error")
	}
}
