package vllmsim_test

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/llmd-kn/llmd-kn/pkg/apis"
	"github.com/llmd-kn/llmd-kn/pkg/kvstore"
	"github.com/llmd-kn/llmd-kn/pkg/vllmsim"
)

// offloadSim is a simulator that offloads to dir (or URL), with payloads
// shrunk 1024 times (2 KiB per 16-token block of the default profile).
func offloadSim(t *testing.T, uri string, mod func(*vllmsim.KVOffloadConfig)) *sim {
	t.Helper()
	kc := vllmsim.KVOffloadConfig{Mode: "on-scale-down", URI: uri, PayloadScale: 1.0 / 1024, Deadline: 20 * time.Second}
	if mod != nil {
		mod(&kc)
	}
	return startSim(t, vllmsim.Config{KVOffload: kc})
}

// offloadPrompt is about 1,000 tokens: 60-odd blocks.
var offloadPrompt = longText(1000, "system prompt of a long-lived assistant")

// complete sends the prompt and returns its prompt and cached tokens.
func completeCached(t *testing.T, s *sim, prompt string) (promptTokens, cached int) {
	t.Helper()
	return completeBody(t, s, fmt.Sprintf(`{"model":"demo","prompt":%q,"max_tokens":1}`, prompt))
}

// completeBody is completeCached with the request body given.
func completeBody(t *testing.T, s *sim, body string) (promptTokens, cached int) {
	t.Helper()
	code, b := post(t, s.url+"/v1/completions", body)
	if code != 200 {
		t.Fatalf("%d %s", code, b)
	}
	var r struct {
		Usage struct {
			PromptTokens        int `json:"prompt_tokens"`
			PromptTokensDetails struct {
				CachedTokens int `json:"cached_tokens"`
			} `json:"prompt_tokens_details"`
		}
	}
	if err := json.Unmarshal(b, &r); err != nil {
		t.Fatal(err)
	}
	return r.Usage.PromptTokens, r.Usage.PromptTokensDetails.CachedTokens
}

// valueOr0 is value, 0 when the series was never touched.
func valueOr0(t *testing.T, s *sim, name string, want ...string) float64 {
	t.Helper()
	mf := scrape(t, s.url)
	f, ok := mf[name]
	if !ok {
		return 0
	}
next:
	for _, m := range f.GetMetric() {
		labels := map[string]string{}
		for _, l := range m.GetLabel() {
			labels[l.GetName()] = l.GetValue()
		}
		for i := 0; i+1 < len(want); i += 2 {
			if labels[want[i]] != want[i+1] {
				continue next
			}
		}
		return m.GetCounter().GetValue()
	}
	return 0
}

// warmAndFlush serves the prompt twice on a fresh offloading replica and
// flushes it, as a replica going away does.
func warmAndFlush(t *testing.T, uri string) vllmsim.FlushResult {
	t.Helper()
	a := offloadSim(t, uri, nil)
	completeCached(t, a, offloadPrompt)
	if _, cached := completeCached(t, a, offloadPrompt); cached == 0 {
		t.Fatal("the second request found nothing in the GPU cache")
	}
	res, err := a.Flush(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if res.Written == 0 || res.Committed != res.Written {
		t.Fatalf("flush %+v", res)
	}
	return res
}

// storedManifest reads the one manifest under dir.
func storedManifest(t *testing.T, dir string) (*kvstore.Store, string, *kvstore.Manifest) {
	t.Helper()
	st, err := kvstore.Open(context.Background(), dir, kvstore.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	objs, err := st.List(context.Background(), "kv/", 0)
	if err != nil {
		t.Fatal(err)
	}
	for _, o := range objs {
		if strings.HasSuffix(o.Key, "/manifest") {
			raw, err := st.Get(context.Background(), o.Key)
			if err != nil {
				t.Fatal(err)
			}
			var m kvstore.Manifest
			if err := json.Unmarshal(raw, &m); err != nil {
				t.Fatal(err)
			}
			return st, strings.TrimSuffix(o.Key, "manifest"), &m
		}
	}
	t.Fatal("no manifest stored")
	return nil, "", nil
}

// TestKVOffloadRoundTrip: a replica flushes a hot prefix into a directory
// (real objects, manifest committed after them); a new replica with an
// empty GPU cache restores it on the first request, reports the restored
// tokens as cached, and the modelled restore is cheaper than the
// recomputation it replaced.
func TestKVOffloadRoundTrip(t *testing.T) {
	dir := t.TempDir()
	res := warmAndFlush(t, dir)
	st, prefix, m := storedManifest(t, dir)
	if len(m.Blocks) != res.Written || m.Version != kvstore.ManifestVersion || m.Model != "demo" {
		t.Fatalf("manifest: %d blocks, version %d, model %q; flushed %+v", len(m.Blocks), m.Version, m.Model, res)
	}
	objs, _ := st.List(context.Background(), prefix+"blocks/", 0)
	if len(objs) != res.Written {
		t.Fatalf("%d block objects for %d written", len(objs), res.Written)
	}
	for _, e := range m.Blocks {
		if e.Hits != 2 || e.Bytes != 16*128<<10 {
			t.Fatalf("entry %+v: want 2 hits and the model's 2 MiB per block", e)
		}
	}

	b := offloadSim(t, "file://"+dir, nil) // a fresh replica: nothing resident
	promptTokens, cached := completeCached(t, b, offloadPrompt)
	if want := res.Written * 16; cached != want || cached >= promptTokens {
		t.Fatalf("cached %d of %d prompt tokens, want the %d stored", cached, promptTokens, want)
	}
	if st := b.Stats(); st.ExternalTokens != int64(cached) || st.PrefixHits != 0 {
		t.Fatalf("engine: %d restored, %d GPU hits; want %d and 0", st.ExternalTokens, st.PrefixHits, cached)
	}
	restore := valueOr0(t, b, "llmd_kv_offload_restore_modelled_seconds_total")
	recompute := valueOr0(t, b, "llmd_kv_offload_recompute_modelled_seconds_total")
	if !(restore > 0 && restore < recompute) {
		t.Fatalf("modelled restore %.4fs, recompute %.4fs: want 0 < restore < recompute", restore, recompute)
	}
	if got := valueOr0(t, b, "llmd_kv_offload_restored_tokens_total"); int(got) != cached {
		t.Fatalf("restored tokens metric %v, cached %d", got, cached)
	}
	if got := valueOr0(t, b, "llmd_kv_offload_read_bytes_total"); got != float64(res.Written*2048) {
		t.Fatalf("read %v bytes, want %d scaled blocks of 2 KiB", got, res.Written)
	}
	// Now resident: the next request restores nothing more.
	if _, cached2 := completeCached(t, b, offloadPrompt); cached2 != cached {
		t.Fatalf("second request cached %d, want %d", cached2, cached)
	}
	if got := valueOr0(t, b, "llmd_kv_offload_restored_tokens_total"); int(got) != cached {
		t.Fatalf("restored again: %v", got)
	}
}

// TestKVOffloadCorruptionIsRecomputed: an altered, a torn (truncated) and a
// missing object each end the restored prefix at the block before them;
// the request still succeeds and the failure is counted.
func TestKVOffloadCorruptionIsRecomputed(t *testing.T) {
	for _, tc := range []struct {
		name  string
		depth int
		kind  string
		spoil func(path string) error
	}{
		{"altered", 3, "corrupt", func(p string) error {
			raw, err := os.ReadFile(p)
			if err != nil {
				return err
			}
			raw[len(raw)-1] ^= 0xff
			return os.WriteFile(p, raw, 0o644)
		}},
		{"torn write", 5, "corrupt", func(p string) error {
			fi, err := os.Stat(p)
			if err != nil {
				return err
			}
			return os.Truncate(p, fi.Size()/2)
		}},
		{"missing object", 2, "missing", os.Remove},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			warmAndFlush(t, dir)
			_, prefix, m := storedManifest(t, dir)
			var victim string
			for id, e := range m.Blocks {
				if e.Depth == tc.depth {
					victim = id
				}
			}
			if err := tc.spoil(filepath.Join(dir, filepath.FromSlash(prefix+"blocks/"+victim))); err != nil {
				t.Fatal(err)
			}
			b := offloadSim(t, dir, nil)
			if _, cached := completeCached(t, b, offloadPrompt); cached != (tc.depth-1)*16 {
				t.Fatalf("cached %d, want the %d blocks before the spoilt one", cached, tc.depth-1)
			}
			if got := valueOr0(t, b, "llmd_kv_offload_errors_total", "op", "restore", "kind", tc.kind); got != 1 {
				t.Fatalf("errors{restore,%s} = %v, want 1", tc.kind, got)
			}
		})
	}
}

// TestKVOffloadTwoReplicasSamePrefix: two replicas that served the same
// prefix flush it at once into the same storage: the same objects, one
// manifest naming each block once with both replicas' hits, and a third
// replica restores all of it.
func TestKVOffloadTwoReplicasSamePrefix(t *testing.T) {
	dir := t.TempDir()
	a, b := offloadSim(t, dir, nil), offloadSim(t, dir, nil)
	completeCached(t, a, offloadPrompt)
	completeCached(t, b, offloadPrompt)
	var wg sync.WaitGroup
	var errs [2]error
	var res [2]vllmsim.FlushResult
	for i, s := range []*sim{a, b} {
		wg.Add(1)
		go func() {
			defer wg.Done()
			res[i], errs[i] = s.Flush(context.Background())
		}()
	}
	wg.Wait()
	if errs[0] != nil || errs[1] != nil {
		t.Fatalf("flush errors: %v, %v", errs[0], errs[1])
	}
	st, prefix, m := storedManifest(t, dir)
	objs, _ := st.List(context.Background(), prefix+"blocks/", 0)
	if len(objs) != len(m.Blocks) || len(m.Blocks) != res[0].Candidates {
		t.Fatalf("%d objects, %d manifest blocks, %d resident blocks per replica", len(objs), len(m.Blocks), res[0].Candidates)
	}
	c := offloadSim(t, dir, nil)
	if _, cached := completeCached(t, c, offloadPrompt); cached != len(m.Blocks)*16 {
		t.Fatalf("cached %d, want all %d stored blocks", cached, len(m.Blocks))
	}
}

// TestKVOffloadStorageUnavailable: with storage gone a flush fails at once
// (well within its deadline), is counted, and loses nothing stored before;
// a restore with storage gone computes the prompt without a client error.
func TestKVOffloadStorageUnavailable(t *testing.T) {
	root := t.TempDir()
	dir := filepath.Join(root, "kv")
	res := warmAndFlush(t, dir)

	// A second replica serves another prefix, then storage disappears.
	a := offloadSim(t, dir, func(c *vllmsim.KVOffloadConfig) { c.Deadline = 10 * time.Second })
	completeCached(t, a, longText(500, "another prefix"))
	b := offloadSim(t, dir, nil) // started before the outage
	if err := os.Rename(dir, dir+".away"); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(dir, []byte("not a directory"), 0o644); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	if _, err := a.Flush(context.Background()); err == nil {
		t.Fatal("flush to missing storage succeeded")
	}
	// The failure is immediate; the bound is what the deadline guarantees
	// (plus slack for a stalled machine), not a timing claim.
	if took := time.Since(start); took > 20*time.Second {
		t.Fatalf("flush took %v, past its 10 s deadline", took)
	}
	if got := valueOr0(t, a, "llmd_kv_offload_errors_total", "op", "flush", "kind", "unavailable"); got != 1 {
		t.Fatalf("flush errors %v, want 1", got)
	}

	// Restore while storage is down: the prompt is computed, no error.
	if _, cached := completeCached(t, b, offloadPrompt); cached != 0 {
		t.Fatalf("cached %d with storage down", cached)
	}
	if got := valueOr0(t, b, "llmd_kv_offload_errors_total", "op", "restore", "kind", "unavailable"); got != 1 {
		t.Fatalf("restore errors %v, want 1", got)
	}

	// Storage back: what the first replica stored is all there.
	if err := os.Remove(dir); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(dir+".away", dir); err != nil {
		t.Fatal(err)
	}
	c := offloadSim(t, dir, nil)
	if _, cached := completeCached(t, c, offloadPrompt); cached != res.Written*16 {
		t.Fatalf("after the outage cached %d, want %d", cached, res.Written*16)
	}
}

// TestKVOffloadBudget: a flush within kv-offload-max-bytes writes the most
// valuable chain first and whole (a block with its prefix), and storage
// stays within the bound.
func TestKVOffloadBudget(t *testing.T) {
	dir := t.TempDir()
	const block = 16 * 128 << 10
	a := offloadSim(t, dir, func(c *vllmsim.KVOffloadConfig) { c.MaxBytes = 20 * block })
	hot, cold := longText(400, "hot prefix"), longText(400, "cold prefix")
	for range 3 {
		completeCached(t, a, hot)
	}
	completeCached(t, a, cold)
	res, err := a.Flush(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if res.Written != 20 || res.Bytes != 20*block {
		t.Fatalf("flush %+v, want 20 blocks", res)
	}
	_, _, m := storedManifest(t, dir)
	for _, e := range m.Blocks {
		if e.Hits != 3 {
			t.Fatalf("a cold block was kept: %+v", e)
		}
	}
	b := offloadSim(t, dir, nil)
	if _, cached := completeCached(t, b, hot); cached != 20*16 {
		t.Fatalf("hot prefix: cached %d, want the 20 stored blocks", cached)
	}
}

func TestKVOffloadConfigErrors(t *testing.T) {
	for _, kc := range []vllmsim.KVOffloadConfig{
		{Mode: "sometimes", URI: t.TempDir()},
		{Mode: "on-scale-down"},
		{Mode: "on-scale-down", URI: t.TempDir(), PayloadScale: 2},
		{Mode: "on-scale-down", URI: t.TempDir(), MaxBytes: -1},
		{Mode: "on-scale-down", URI: "nosuch://bucket"},
	} {
		if _, err := vllmsim.New(vllmsim.Config{KVOffload: kc}); err == nil {
			t.Errorf("%+v accepted", kc)
		}
	}
}

// TestKVOffloadPrefetch: a replica with kv-prefetch-bytes loads the hottest
// stored chain into its GPU cache before it is ready, within the budget,
// so the first request finds it as ordinary prefix hits.
func TestKVOffloadPrefetch(t *testing.T) {
	dir := t.TempDir()
	res := warmAndFlush(t, dir)
	const block = 16 * 128 << 10
	for _, tc := range []struct {
		name   string
		budget int64
		want   int
	}{
		{"all of it", 1 << 40, res.Written},
		{"within the budget", 10 * block, 10},
	} {
		t.Run(tc.name, func(t *testing.T) {
			b := offloadSim(t, dir, func(c *vllmsim.KVOffloadConfig) { c.PrefetchBytes = tc.budget })
			eventually(t, "ready after the prefetch", b.Ready)
			if got := valueOr0(t, b, "llmd_kv_offload_prefetched_blocks_total"); int(got) != tc.want {
				t.Fatalf("prefetched %v blocks, want %d", got, tc.want)
			}
			if _, cached := completeCached(t, b, offloadPrompt); cached != res.Written*16 {
				t.Fatalf("cached %d, want %d", cached, res.Written*16)
			}
			st := b.Stats()
			if st.PrefixHits != int64(tc.want*16) {
				t.Fatalf("GPU prefix hits %d, want the %d prefetched blocks", st.PrefixHits, tc.want)
			}
			if got := valueOr0(t, b, "llmd_kv_offload_restored_tokens_total"); int(got) != (res.Written-tc.want)*16 {
				t.Fatalf("restored on demand %v tokens, want the %d blocks not prefetched", got, res.Written-tc.want)
			}
		})
	}
}

// TestKVOffloadWriteThrough: a write-through replica stores its hot
// prefix while it serves, without a flush at exit.
func TestKVOffloadWriteThrough(t *testing.T) {
	dir := t.TempDir()
	a := offloadSim(t, dir, func(c *vllmsim.KVOffloadConfig) {
		c.Mode = "write-through"
		c.WriteThroughEvery = 20 * time.Millisecond
	})
	promptTokens, _ := completeCached(t, a, offloadPrompt)
	want := (promptTokens - 1) / 16
	eventually(t, "the prefix written while serving", func() bool {
		return valueOr0(t, a, "llmd_kv_offload_flushed_blocks_total") >= float64(want)
	})
	b := offloadSim(t, dir, nil)
	if _, cached := completeCached(t, b, offloadPrompt); cached != want*16 {
		t.Fatalf("cached %d, want the %d blocks written through", cached, want)
	}
}

// TestKVOffloadFlushEndpoint: POST apis.KVFlushPath (what the autoscaler
// calls before scaling to zero) flushes while the replica serves and
// answers what it committed; a fresh replica restores it. Without KV
// offload the endpoint answers 404 (the autoscaler then relies on the
// flush at shutdown).
func TestKVOffloadFlushEndpoint(t *testing.T) {
	dir := t.TempDir()
	a := offloadSim(t, dir, nil)
	completeCached(t, a, offloadPrompt)
	code, b := post(t, a.url+apis.KVFlushPath, "")
	if code != 200 {
		t.Fatalf("flush: %d %s", code, b)
	}
	var res struct{ Written, Committed int }
	if err := json.Unmarshal(b, &res); err != nil {
		t.Fatal(err)
	}
	if res.Written == 0 || res.Committed != res.Written {
		t.Fatalf("flush answered %s", b)
	}
	// The replica still serves after its flush.
	if _, cached := completeCached(t, a, offloadPrompt); cached == 0 {
		t.Fatal("the flushed replica lost its GPU cache")
	}
	fresh := offloadSim(t, "file://"+dir, nil)
	if _, cached := completeCached(t, fresh, offloadPrompt); cached != res.Written*16 {
		t.Fatalf("fresh replica restored %d tokens, want the %d flushed", cached, res.Written*16)
	}

	plain := startSim(t, vllmsim.Config{})
	if code, b := post(t, plain.url+apis.KVFlushPath, ""); code != 404 {
		t.Fatalf("flush without KV offload: %d %s, want 404", code, b)
	}
}

// TestKVOffloadPrefetchAnnouncesBlocks: the manifest keeps each flushed
// block's token ids, and a replica that prefetches them announces them in
// KV events (a router indexes blocks by their tokens) before it has served
// anything.
func TestKVOffloadPrefetchAnnouncesBlocks(t *testing.T) {
	dir := t.TempDir()
	res := warmAndFlush(t, dir)
	_, _, m := storedManifest(t, dir)
	tokens := vllmsim.EncodeCompletionPrompt(nil, offloadPrompt)
	withTokens := 0
	for _, e := range m.Blocks {
		if len(e.Tokens) == 16 && slices.Equal(e.Tokens, tokens[(e.Depth-1)*16:e.Depth*16]) {
			withTokens++
		}
	}
	if withTokens != len(m.Blocks) || withTokens != res.Written {
		t.Fatalf("%d of %d manifest entries carry their block's tokens", withTokens, len(m.Blocks))
	}

	cfg := func(prefetch int64) vllmsim.Config {
		return vllmsim.Config{
			KVOffload: vllmsim.KVOffloadConfig{Mode: "on-scale-down", URI: dir, PayloadScale: 1.0 / 1024, Deadline: 20 * time.Second, PrefetchBytes: prefetch},
			KVEvents:  vllmsim.KVEventsConfig{Enable: true, Publisher: "zmq", Endpoint: "tcp://127.0.0.1:0", Topic: "kv@test@demo"},
		}
	}
	// Without a prefetch, a replica that served nothing published nothing.
	a := startSim(t, cfg(0))
	eventually(t, "ready", a.Ready)
	if got := valueOr0(t, a, "kn_llmd_sim_kv_event_batches_total"); got != 0 {
		t.Fatalf("%v KV event batches before any request", got)
	}
	b := startSim(t, cfg(1<<40))
	eventually(t, "ready after the prefetch", b.Ready)
	eventually(t, "the prefetched blocks announced", func() bool {
		return valueOr0(t, b, "kn_llmd_sim_kv_event_batches_total") >= 1
	})
	if got := valueOr0(t, b, "llmd_kv_offload_prefetched_blocks_total"); int(got) != res.Written {
		t.Fatalf("prefetched %v blocks, want %d", got, res.Written)
	}
}
