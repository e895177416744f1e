package native

import (
	"encoding/json"
	"strings"
	"testing"

	"github.com/llmd-kn/llmd-kn/pkg/tokenizer"
)

// tinyFiles builds a small, valid byte-level BPE tokenizer.json and
// tokenizer_config.json (a Llama-3-shaped template), so that the fuzz
// targets need no downloaded files.
func tinyFiles(tb testing.TB) (tokJSON, cfgJSON []byte) {
	tb.Helper()
	chars := byteLevelChars()
	vocab := map[string]int{}
	for b := 0; b < 256; b++ {
		vocab[string(chars[b])] = b
	}
	var merges []string
	add := func(a, b string) {
		la, lb := level(chars, a), level(chars, b)
		merges = append(merges, la+" "+lb)
		if _, ok := vocab[la+lb]; !ok {
			vocab[la+lb] = len(vocab)
		}
	}
	add("h", "e")
	add("l", "l")
	add("he", "ll")
	add("hell", "o")
	add(" ", "w")
	add("o", "r")
	add(" w", "or")
	add("or", "ld")
	add("l", "d")
	add(" wor", "ld")
	n := len(vocab)
	tok := map[string]any{
		"added_tokens": []map[string]any{
			{"id": n, "content": "<|begin_of_text|>", "special": true},
			{"id": n + 1, "content": "<|eot_id|>", "special": true},
			{"id": n + 2, "content": "<x>", "special": false, "lstrip": true, "rstrip": true},
		},
		"normalizer": map[string]any{"type": "NFC"},
		"pre_tokenizer": map[string]any{"type": "Sequence", "pretokenizers": []any{
			map[string]any{"type": "Split", "pattern": map[string]any{"Regex": patternLlama3}, "behavior": "Isolated", "invert": false},
			map[string]any{"type": "ByteLevel", "add_prefix_space": false, "use_regex": false},
		}},
		"post_processor": map[string]any{"type": "TemplateProcessing",
			"single":         []any{map[string]any{"SpecialToken": map[string]any{"id": "<|begin_of_text|>"}}, map[string]any{"Sequence": map[string]any{"id": "A"}}},
			"special_tokens": map[string]any{"<|begin_of_text|>": map[string]any{"ids": []int{n}}}},
		"model": map[string]any{"type": "BPE", "vocab": vocab, "merges": merges, "ignore_merges": true},
	}
	cfg := map[string]any{
		"bos_token":     "<|begin_of_text|>",
		"chat_template": "{% for m in messages %}{% if loop.first %}{{ bos_token }}{% endif %}{{ m['role'] + ':' + m['content'] | trim + '<|eot_id|>' }}{% endfor %}{% if add_generation_prompt %}{{ 'assistant:' }}{% endif %}",
	}
	var err error
	if tokJSON, err = json.Marshal(tok); err != nil {
		tb.Fatal(err)
	}
	if cfgJSON, err = json.Marshal(cfg); err != nil {
		tb.Fatal(err)
	}
	return tokJSON, cfgJSON
}

func level(chars [256]rune, s string) string {
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		b.WriteRune(chars[s[i]])
	}
	return b.String()
}

func TestTinyTokenizer(t *testing.T) {
	tj, cj := tinyFiles(t)
	tk, err := Parse(tj, cj, "", Options{})
	if err != nil {
		t.Fatal(err)
	}
	bos, _ := tk.TokenID("<|begin_of_text|>")
	eot, _ := tk.TokenID("<|eot_id|>")
	x, _ := tk.TokenID("<x>")
	hello, _ := tk.TokenID("hello")
	world, _ := tk.TokenID(" world")
	if got, want := tk.AppendEncode(nil, "hello world", true), []uint32{bos, hello, world}; !equal(got, want) {
		t.Errorf("encode = %v, want %v", got, want)
	}
	// lstrip/rstrip: the added token absorbs the spaces around it.
	if got, want := tk.AppendEncode(nil, "hello  <x>  hello", false), []uint32{hello, x, hello}; !equal(got, want) {
		t.Errorf("encode with <x> = %v, want %v", got, want)
	}
	ids, err := tk.AppendChat(nil, []tokenizer.Message{{Role: "user", Content: " hello "}}, false)
	if err != nil {
		t.Fatal(err)
	}
	if ids[0] != bos || ids[len(ids)-1] != eot {
		t.Errorf("chat = %v", ids)
	}
	for _, bad := range []string{`{}`, `{"model":{"type":"WordPiece","vocab":{"a":0}}}`, `not json`, `{"model":{"vocab":{"a":0}}}`} {
		if _, err := Parse([]byte(bad), nil, "", Options{}); err == nil {
			t.Errorf("Parse(%s): want an error", bad)
		}
	}
}

func equal(a, b []uint32) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

// FuzzParse feeds mutated tokenizer.json and tokenizer_config.json to the
// loader: it must return an error or a tokenizer that encodes losslessly.
func FuzzParse(f *testing.F) {
	tj, cj := tinyFiles(f)
	f.Add(tj, cj, "hello world")
	f.Add([]byte(`{"model":{"type":"BPE","vocab":{},"merges":[]}}`), []byte(`{}`), "x")
	f.Add(tj, []byte(`{"chat_template":[{"name":"default","template":"{{ messages }}"}]}`), "<|eot_id|>")
	f.Fuzz(func(t *testing.T, tokJSON, cfgJSON []byte, text string) {
		if len(tokJSON) > 1<<16 {
			return
		}
		tk, err := Parse(tokJSON, cfgJSON, "", Options{SectionCacheBytes: -1})
		if err != nil {
			return
		}
		ids := tk.AppendEncode(nil, text, false)
		for _, id := range ids {
			if int(id) >= tk.VocabSize() {
				t.Fatalf("id %d out of vocabulary %d", id, tk.VocabSize())
			}
		}
		if _, err := tk.Decode(ids, false); err != nil {
			t.Fatalf("Decode of Encode: %v", err)
		}
	})
}

// FuzzEncodeChat feeds text and chat messages through the tiny tokenizer
// and checks what byte-level BPE guarantees: encoding is lossless (NFC
// aside), cached and uncached encodings agree, and the chat template
// renders any message.
func FuzzEncodeChat(f *testing.F) {
	tj, cj := tinyFiles(f)
	cached, err := Parse(tj, cj, "", Options{SectionCacheBytes: 1 << 16})
	if err != nil {
		f.Fatal(err)
	}
	plain, err := Parse(tj, cj, "", Options{SectionCacheBytes: -1})
	if err != nil {
		f.Fatal(err)
	}
	f.Add("hello world", "user", true)
	f.Add("he<x>llo  \xff\xfe world's 123456 \r\n\r\n  ", "system", false)
	f.Add(strings.Repeat("hello world ", 20)+"<|eot_id|>", "assistant", true)
	f.Fuzz(func(t *testing.T, text, role string, gen bool) {
		a := cached.AppendEncode(nil, text, false)
		b := plain.AppendEncode(nil, text, false)
		if !equal(a, b) {
			t.Fatalf("cached %v != uncached %v", a, b)
		}
		if !strings.Contains(text, "<x>") {
			got, err := plain.Decode(a, false)
			if err != nil {
				t.Fatal(err)
			}
			if want := plain.normalize(ToValidUTF8(text)); got != want && plain.normalize(got) != want {
				t.Fatalf("Decode(Encode(%q)) = %q", text, got)
			}
		}
		msgs := []tokenizer.Message{{Role: role, Content: text}, {Role: "user", Content: text}}
		c1, err1 := cached.AppendChat(nil, msgs, gen)
		c2, err2 := plain.AppendChat(nil, msgs, gen)
		if (err1 == nil) != (err2 == nil) || !equal(c1, c2) {
			t.Fatalf("chat: cached %v %v, uncached %v %v", c1, err1, c2, err2)
		}
	})
}
