package vllmsim_test

import (
	"context"
	"fmt"
	"path/filepath"
	"testing"
)

// TestCacheSaltKeepsTenantsApart: vLLM's cache_salt keeps tenants'
// prefixes apart on every path. In the GPU cache a salted prompt hits only
// its own salt's blocks; a salted request is neither tracked for a flush
// nor restored from storage (which holds the unsalted space), so a
// replica's flush writes the unsalted blocks only and a new replica gives a
// salted request nothing of them.
func TestCacheSaltKeepsTenantsApart(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "kv")
	body := func(salt string) string {
		if salt == "" {
			return fmt.Sprintf(`{"model":"demo","prompt":%q,"max_tokens":1}`, offloadPrompt)
		}
		return fmt.Sprintf(`{"model":"demo","prompt":%q,"max_tokens":1,"cache_salt":%q}`, offloadPrompt, salt)
	}
	a := offloadSim(t, dir, nil)
	steps := []struct {
		salt string
		hit  bool
	}{
		{"tenant-a", false},
		{"tenant-a", true},  // its own blocks
		{"tenant-b", false}, // not tenant-a's
		{"", false},         // nor the unsalted request's
		{"", true},
		{"tenant-b", true},
	}
	promptTokens := 0
	for i, st := range steps {
		n, cached := completeBody(t, a, body(st.salt))
		promptTokens = n
		if (cached > 0) != st.hit {
			t.Fatalf("step %d (salt %q): cached %d, want a hit: %v", i, st.salt, cached, st.hit)
		}
	}
	res, err := a.Flush(context.Background())
	if err != nil || res.Written == 0 {
		t.Fatalf("flush %+v, %v", res, err)
	}
	_, _, m := storedManifest(t, dir)
	if len(m.Blocks) != res.Written {
		t.Fatalf("manifest holds %d blocks, flush wrote %d", len(m.Blocks), res.Written)
	}
	// One prompt's chain: the unsalted request's only (salted ones untracked).
	if n := promptTokens / 16; len(m.Blocks) > n {
		t.Fatalf("manifest holds %d blocks: more than one chain of the prompt", len(m.Blocks))
	}

	b := offloadSim(t, dir, nil)
	if _, cached := completeBody(t, b, body("tenant-a")); cached != 0 {
		t.Fatalf("a salted request on a new replica got %d tokens restored from the unsalted space", cached)
	}
	if got := valueOr0(t, b, "llmd_kv_offload_restored_blocks_total"); got != 0 {
		t.Fatalf("restored blocks %v for a salted request", got)
	}
	if _, cached := completeBody(t, b, body("")); cached != res.Written*16 {
		t.Fatalf("unsalted after the cold start: cached %d, want the %d restored", cached, res.Written*16)
	}
	if code, _ := post(t, b.url+"/v1/completions", `{"model":"demo","prompt":"hi","cache_salt":""}`); code != 400 {
		t.Fatalf("empty cache_salt: %d, want 400 as vLLM", code)
	}
}
