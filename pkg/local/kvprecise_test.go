package local

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/llmd-kn/llmd-kn/pkg/activator"
)

// llamaTokenizerDir is the Llama 3.1 tokenizer folder that
// hack/install-tokenizers.sh caches under _output, or skips (fails under
// LLMD_REQUIRE_TOKENIZERS=1).
func llamaTokenizerDir(t *testing.T) string {
	t.Helper()
	root := os.Getenv("LLMD_TOKENIZERS_DIR")
	if root == "" {
		root = filepath.Join("..", "..", "_output", "tokenizers", "node_modules")
	}
	dir, _ := filepath.Abs(filepath.Join(root, "@lenml", "tokenizer-llama3_1", "models"))
	if _, err := os.Stat(filepath.Join(dir, "tokenizer.json")); err != nil {
		if os.Getenv("LLMD_REQUIRE_TOKENIZERS") == "1" {
			t.Fatalf("Llama 3.1 tokenizer files: %v (run hack/install-tokenizers.sh)", err)
		}
		t.Skipf("Llama 3.1 tokenizer files: %v (run hack/install-tokenizers.sh)", err)
	}
	return dir
}

// TestRealTokenizerPrecisePrefix runs kn-llmd local with simulated engines
// that tokenize with the Llama 3.1 files and hash blocks as vLLM does
// (sha256_cbor): nothing is shared with the router but the token ids the
// engines publish. A repeated long chat prefix must land on the pod that
// holds it, predicted cached by the router and reported cached by the
// engine, whether the router tokenizes natively or asks the pods' /render.
func TestRealTokenizerPrecisePrefix(t *testing.T) {
	dir := llamaTokenizerDir(t)
	system := strings.Repeat("You are the help desk of a large library. Quote the lending rules exactly and never invent new ones. ", 30)
	for _, tc := range []struct{ profile, tokenizer string }{
		{"kv-precise", "native:" + dir},
		{"default", "native:" + dir},
		{"kv-precise", "engine"},
		{"default", "engine"},
	} {
		t.Run(tc.profile+"/"+strings.SplitN(tc.tokenizer, ":", 2)[0], func(t *testing.T) {
			ann := fmt.Sprintf("llm-d.ai/routing-profile: %s\n        llm-d.ai/tokenizer: %q\n        autoscaling.knative.dev/min-scale: \"3\"", tc.profile, tc.tokenizer)
			rt := newRuntime(t, svcYAML("tok", ann), func(o *Options) {
				o.DebugRouting = true
				// In engine mode the pods still tokenize with the
				// model's files: the router learns the ids from their
				// /render.
				o.SimTokenizerDir = dir
			})
			waitReady(t, rt)
			chat := func(q string) (pod string, predicted, cached int) {
				t.Helper()
				body, _ := json.Marshal(map[string]any{"model": "demo", "max_tokens": 2, "messages": []map[string]string{
					{"role": "system", "content": system}, {"role": "user", "content": q}}})
				resp, err := http.Post(rt.APIURL()+"/v1/chat/completions", "application/json", strings.NewReader(string(body)))
				if err != nil {
					t.Fatal(err)
				}
				defer resp.Body.Close()
				raw, _ := io.ReadAll(resp.Body)
				var out struct {
					Usage activator.Usage `json:"usage"`
				}
				if resp.StatusCode != 200 || json.Unmarshal(raw, &out) != nil {
					t.Fatalf("%d %s", resp.StatusCode, raw)
				}
				for _, f := range strings.Fields(resp.Header.Get(activator.RouteHeader)) {
					if v, ok := strings.CutPrefix(f, "decode="); ok {
						pod = strings.TrimSuffix(v, ";")
					}
					if v, ok := strings.CutPrefix(f, "cached="); ok {
						fmt.Sscanf(v, "%d/", &predicted)
					}
				}
				return pod, predicted, out.Usage.CachedTokens()
			}
			first, _, _ := chat("May I renew a book twice?")
			deadline := time.Now().Add(20 * time.Second)
			for n := 0; ; n++ {
				pod, predicted, cached := chat(fmt.Sprintf("Question %d: how long is the loan?", n))
				if pod == first && predicted > 0 && cached > 0 {
					if predicted > cached {
						t.Fatalf("predicted %d cached tokens, the engine had %d", predicted, cached)
					}
					t.Logf("repeat %d on %s: predicted %d, engine cached %d", n, pod, predicted, cached)
					return
				}
				if time.Now().After(deadline) {
					t.Fatalf("repeat went to %s (first %s), predicted %d, cached %d", pod, first, predicted, cached)
				}
				time.Sleep(20 * time.Millisecond)
			}
		})
	}
}
