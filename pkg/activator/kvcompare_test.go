package activator

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/llmd-kn/llmd-kn/pkg/apis"
	"github.com/llmd-kn/llmd-kn/pkg/engine"
	"github.com/llmd-kn/llmd-kn/pkg/vllmsim"
)

// TestEventsOnVersusOff is a measurement, not a gate (LLMD_KV_COMPARE=1):
// the default profile on a repeated-prefix chat workload over four
// simulators, with KV events off, on, and on from engines that tokenize
// differently from the router (the Llama 3.1 tokenizer against the
// router's estimate, as with a third-party engine): the cached share must
// never be below events off.
func TestEventsOnVersusOff(t *testing.T) {
	if os.Getenv("LLMD_KV_COMPARE") == "" {
		t.Skip("a measurement: set LLMD_KV_COMPARE=1")
	}
	llama, _ := filepath.Abs(filepath.Join("..", "..", "_output", "tokenizers", "node_modules", "@lenml", "tokenizer-llama3_1", "models"))
	type result struct {
		prompt, cached, predicted int
	}
	run := func(events bool, tokDir string) result {
		var sims []*sim
		for i := range 4 {
			sims = append(sims, startSim(t, fmt.Sprintf("pod-%d", i), engine.RoleBoth, 0.02, func(c *vllmsim.Config) {
				c.TokenizerDir = tokDir
				c.NumBlocks = 600 // 9,600 tokens a pod: prefixes compete for cache
			}))
		}
		if !events {
			for _, s := range sims {
				s.kv = ""
			}
		}
		f := newFixture(t, apis.Spec{RoutingProfile: "default", PDThreshold: 1 << 30}, sims...)
		var r result
		for n := range 160 {
			sys := strings.Repeat(fmt.Sprintf("Rule %d of the house: answer briefly and cite the handbook. ", n%10), 40)
			body := fmt.Sprintf(`{"model":%q,"max_tokens":2,"messages":[{"role":"system","content":%q},{"role":"user","content":"question %d"}]}`, testModel, sys, n)
			req, _ := http.NewRequest(http.MethodPost, f.url+"/v1/chat/completions", strings.NewReader(body))
			req.Header.Set("Content-Type", "application/json")
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			raw, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			var out struct {
				Usage *Usage `json:"usage"`
			}
			if resp.StatusCode != 200 || json.Unmarshal(raw, &out) != nil || out.Usage == nil {
				t.Fatalf("%d %s", resp.StatusCode, raw)
			}
			r.prompt += out.Usage.PromptTokens
			r.cached += out.Usage.CachedTokens()
			var pred int
			for _, w := range strings.Fields(resp.Header.Get(RouteHeader)) {
				if v, ok := strings.CutPrefix(w, "cached="); ok {
					fmt.Sscanf(v, "%d/", &pred)
				}
			}
			r.predicted += pred
		}
		st := f.act.Stats()[0]
		if st.KVEvents != nil {
			t.Logf("  %s", st.KVEvents.Line)
		}
		for _, s := range sims {
			s.kill()
		}
		return r
	}
	off := run(false, "")
	on := run(true, "")
	t.Logf("events off:  cached %d of %d prompt tokens (%.1f%%), predicted %d", off.cached, off.prompt, 100*float64(off.cached)/float64(off.prompt), off.predicted)
	t.Logf("events on:   cached %d of %d prompt tokens (%.1f%%), predicted %d", on.cached, on.prompt, 100*float64(on.cached)/float64(on.prompt), on.predicted)
	if _, err := os.Stat(filepath.Join(llama, "tokenizer.json")); err == nil {
		offL := run(false, llama)
		onL := run(true, llama)
		t.Logf("other tokenizer, events off: cached %d of %d (%.1f%%), predicted %d", offL.cached, offL.prompt, 100*float64(offL.cached)/float64(offL.prompt), offL.predicted)
		t.Logf("other tokenizer, events on:  cached %d of %d (%.1f%%), predicted %d", onL.cached, onL.prompt, 100*float64(onL.cached)/float64(onL.prompt), onL.predicted)
	}
}
