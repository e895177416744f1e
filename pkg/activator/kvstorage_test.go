package activator

import (
	"context"
	"encoding/json"
	"errors"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/llmd-kn/llmd-kn/internal/testutil"
	"github.com/llmd-kn/llmd-kn/pkg/apis"
	"github.com/llmd-kn/llmd-kn/pkg/engine"
	"github.com/llmd-kn/llmd-kn/pkg/kvstore"
	_ "github.com/llmd-kn/llmd-kn/pkg/kvstore/drivers" // s3://
	"github.com/llmd-kn/llmd-kn/pkg/router"
	"github.com/llmd-kn/llmd-kn/pkg/vllmsim"
)

// chainManifest is a manifest of one chain of n blocks of 16 tokens.
func chainManifest(model string, n int, first uint64) *kvstore.Manifest {
	m := &kvstore.Manifest{Version: kvstore.ManifestVersion, Model: model, Blocks: map[string]kvstore.BlockEntry{}}
	for i := range n {
		e := kvstore.BlockEntry{Depth: i + 1, Bytes: 1, Tokens: seqTokens(16, uint32(1000*first)+uint32(16*i))}
		if i > 0 {
			e.Parent = kvstore.BlockID(first + uint64(i-1))
		}
		m.Blocks[kvstore.BlockID(first+uint64(i))] = e
	}
	return m
}

func TestManifestEvents(t *testing.T) {
	bad := func(mod func(m *kvstore.Manifest)) []*kvstore.Manifest {
		m := chainManifest("m", 3, 1)
		mod(m)
		return []*kvstore.Manifest{m}
	}
	errs := []struct {
		name string
		ms   []*kvstore.Manifest
		want string
	}{
		{"block id not hex", bad(func(m *kvstore.Manifest) { m.Blocks["zz"] = kvstore.BlockEntry{Depth: 1} }), "16 hex digits"},
		{"parent not hex", bad(func(m *kvstore.Manifest) {
			e := m.Blocks[kvstore.BlockID(2)]
			e.Parent = "x"
			m.Blocks[kvstore.BlockID(2)] = e
		}), "parent"},
		{"depth 0", bad(func(m *kvstore.Manifest) { m.Blocks[kvstore.BlockID(9)] = kvstore.BlockEntry{} }), "depth 0"},
		{"token ids of another block size", bad(func(m *kvstore.Manifest) {
			m.Blocks[kvstore.BlockID(9)] = kvstore.BlockEntry{Depth: 1, Tokens: seqTokens(8, 1)}
		}), "token ids"},
		{"over the block bound", []*kvstore.Manifest{chainManifest("m", 5, 1)}, "over 4 blocks"},
	}
	for _, tc := range errs {
		if _, _, err := ManifestEvents(nil, tc.ms, 4); err == nil || !errors.Is(err, ErrManifest) || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: error %v, want ErrManifest with %q", tc.name, err, tc.want)
		}
	}

	// Differences, parents first; blocks without tokens left out.
	m := chainManifest("m", 3, 1)
	m.Blocks[kvstore.BlockID(50)] = kvstore.BlockEntry{Depth: 1}
	evs, held, err := ManifestEvents(nil, []*kvstore.Manifest{m}, 100)
	if err != nil {
		t.Fatal(err)
	}
	if len(evs) != 3 || len(held) != 3 {
		t.Fatalf("first poll: %d events, %d held, want 3 and 3", len(evs), len(held))
	}
	for i, ev := range evs {
		if ev.Kind != router.BlockStored || ev.Hashes[0] != uint64(1+i) || ev.HasParent != (i > 0) || ev.BlockSize != 16 {
			t.Errorf("event %d: %+v", i, ev)
		}
	}
	if evs, _, _ := ManifestEvents(held, []*kvstore.Manifest{m}, 100); len(evs) != 0 {
		t.Errorf("same manifest again: %d events, want none", len(evs))
	}
	m2 := chainManifest("m", 2, 1)
	lora := chainManifest("m", 1, 70)
	lora.LoRA = "tenant-a"
	evs, held, err = ManifestEvents(held, []*kvstore.Manifest{m2, lora}, 100)
	if err != nil {
		t.Fatal(err)
	}
	if len(evs) != 2 || evs[0].Kind != router.BlockRemoved || len(evs[0].Hashes) != 1 || evs[0].Hashes[0] != 3 ||
		evs[1].Kind != router.BlockStored || evs[1].LoraName != "tenant-a" || len(held) != 3 {
		t.Errorf("after a retain and an adapter's manifest: %+v, held %v", evs, held)
	}
}

// The activator reads what a replica flushed into the revision's storage
// (a real file:// store, the simulator on loopback) and routes by it: a
// pod that never served the prefix is predicted to restore it; the
// manifest's changes (a retain, a manifest that does not parse) reach the
// index or leave it as it was.
func TestStorageFeedRoutesToStoredPrefix(t *testing.T) {
	dir := t.TempDir()
	ko := vllmsim.KVOffloadConfig{Mode: apis.KVOffloadOnScaleDown, URI: dir, PayloadScale: 1.0 / 1024, Deadline: 20 * time.Second}
	warm := startSim(t, "warm", engine.RoleBoth, 0.02, func(c *vllmsim.Config) { c.KVOffload = ko })
	cold := startSim(t, "cold", engine.RoleBoth, 0.02, func(c *vllmsim.Config) { c.KVOffload = ko })
	spec := apis.Spec{RoutingProfile: "default", PDThreshold: 1 << 30, KVOffload: apis.KVOffloadSpec{Mode: apis.KVOffloadOnScaleDown, URI: dir}}
	f := newFixtureOpts(t, func(o *Options) { o.KVStoragePoll = 20 * time.Millisecond }, spec, warm)
	f.act.mu.RLock()
	rev := f.act.revs[f.key]
	f.act.mu.RUnlock()

	prompt := longPrompt(1600, 7)
	if c := f.complete(t, prompt, 1, nil); c.status != 200 {
		t.Fatalf("%d %s", c.status, c.body)
	}
	res, err := warm.srv.Flush(context.Background())
	if err != nil || res.Committed == 0 {
		t.Fatalf("flush: %+v, %v", res, err)
	}
	waitStorage := func(what string, ok func(blocks int) bool) int {
		t.Helper()
		for deadline := time.Now().Add(30 * time.Second); time.Now().Before(deadline); time.Sleep(10 * time.Millisecond) {
			if _, _, n := rev.storageStatus(); ok(n) {
				return n
			}
		}
		polls, fails, n := rev.storageStatus()
		t.Fatalf("%s: storage feed holds %d blocks after %d polls (%d failed)", what, n, polls, fails)
		return 0
	}
	stored := waitStorage("after the flush", func(n int) bool { return n > 0 })
	if st := rev.rt.PreciseEndpoint(router.StorageEndpoint); st.StorageBlocks != stored || st.TierKeys == 0 {
		t.Errorf("router's storage endpoint %+v, want %d blocks", st, stored)
	}
	mfs, err := f.reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	gauge := -1.0
	for _, mf := range mfs {
		if mf.GetName() == "llmd_activator_kv_storage_blocks" && len(mf.GetMetric()) == 1 {
			gauge = mf.GetMetric()[0].GetGauge().GetValue()
		}
	}
	if gauge != float64(stored) {
		t.Errorf("llmd_activator_kv_storage_blocks %v, want %d", gauge, stored)
	}

	// The warm pod goes (scale-down); a cold one takes over.
	if err := f.act.SetPods(f.key, []PodSpec{{Name: cold.name, URL: cold.url, KVEvents: cold.kv}}); err != nil {
		t.Fatal(err)
	}
	f.sims = []*sim{cold}
	f.waitReady(t, 1)
	next := append(append([]uint32(nil), prompt...), longPrompt(40, 99)...)
	c := f.complete(t, next, 1, nil)
	if c.status != 200 {
		t.Fatalf("%d %s", c.status, c.body)
	}
	want := stored * 16
	if !strings.Contains(c.route, "decode=cold") || !strings.Contains(c.route, " cached="+strconv.Itoa(want)+"/") {
		t.Errorf("route %q: want the cold pod predicted to restore the %d stored tokens", c.route, want)
	}
	if c.usage.CachedTokens() < want {
		t.Errorf("usage %+v: want at least %d tokens restored", c.usage, want)
	}

	// A manifest that does not parse leaves the index as it was.
	st, err := kvstore.Open(context.Background(), dir, kvstore.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	keys, err := st.SpaceKeys(context.Background(), 0)
	if err != nil || len(keys) != 1 {
		t.Fatalf("spaces %v, %v", keys, err)
	}
	good, err := st.LoadManifestOf(context.Background(), keys[0])
	if err != nil {
		t.Fatal(err)
	}
	polls, fails, _ := rev.storageStatus()
	if err := st.Put(context.Background(), "kv/"+keys[0]+"/manifest", []byte(`{"version":1,"blocks":{"zz":{}}`)); err != nil {
		t.Fatal(err)
	}
	for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		p, fl, n := rev.storageStatus()
		if fl > fails && p > polls+1 {
			if n != stored {
				t.Errorf("after a corrupt manifest the feed holds %d blocks, want the %d it had", n, stored)
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the corrupt manifest was never refused: %d polls, %d failures", p, fl)
		}
	}
	// Storage keeps half the chain: the index follows.
	keep := map[string]kvstore.BlockEntry{}
	for id, e := range good.Blocks {
		if e.Depth <= stored/2 {
			keep[id] = e
		}
	}
	good.Blocks = keep
	raw, err := json.Marshal(good)
	if err != nil {
		t.Fatal(err)
	}
	if err := st.Put(context.Background(), "kv/"+keys[0]+"/manifest", raw); err != nil {
		t.Fatal(err)
	}
	waitStorage("after the retain", func(n int) bool { return n == len(keep) })
	if st := rev.rt.PreciseEndpoint(router.StorageEndpoint); st.StorageBlocks != len(keep) {
		t.Errorf("router's storage endpoint %+v, want %d blocks", st, len(keep))
	}
}

// A storage server that accepts and never answers: each poll gives up at
// its bound and counts a failure, and requests are routed meanwhile.
func TestStorageFeedHangingServer(t *testing.T) {
	uri := testutil.HangingS3(t)
	s := startSim(t, "pod", engine.RoleBoth, 0.02, nil)
	spec := apis.Spec{RoutingProfile: "default", PDThreshold: 1 << 30, KVOffload: apis.KVOffloadSpec{Mode: apis.KVOffloadOnScaleDown, URI: uri}}
	f := newFixtureOpts(t, func(o *Options) { o.KVStoragePoll = 20 * time.Millisecond }, spec, s)
	f.act.mu.RLock()
	rev := f.act.revs[f.key]
	f.act.mu.RUnlock()
	if c := f.complete(t, longPrompt(300, 3), 1, nil); c.status != 200 {
		t.Fatalf("%d %s", c.status, c.body)
	}
	for deadline := time.Now().Add(60 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		if _, fails, n := rev.storageStatus(); fails >= 2 {
			if n != 0 {
				t.Errorf("feed holds %d blocks from a server that never answered", n)
			}
			break
		}
		if time.Now().After(deadline) {
			polls, fails, _ := rev.storageStatus()
			t.Fatalf("polls of a hanging server never gave up: %d polls, %d failures", polls, fails)
		}
	}
	if c := f.complete(t, longPrompt(300, 4), 1, nil); c.status != 200 {
		t.Fatalf("%d %s", c.status, c.body)
	}
}

// FuzzManifestEvents: whatever a manifest holds, the feed either refuses
// it with ErrManifest or produces events the router takes without a shape
// error, and feeding them twice changes nothing.
func FuzzManifestEvents(f *testing.F) {
	good, _ := json.Marshal(chainManifest("m", 3, 1))
	f.Add(good)
	f.Add([]byte(`{"version":1,"blocks":{"0000000000000001":{"depth":1,"tokens":[1,2]},"0000000000000002":{"parent":"0000000000000001","depth":2,"tokens":[3]}}}`))
	f.Add([]byte(`{"version":1,"blocks":{"zz":{}}}`))
	f.Fuzz(func(t *testing.T, raw []byte) {
		var m kvstore.Manifest
		if json.Unmarshal(raw, &m) != nil {
			return
		}
		evs, held, err := ManifestEvents(nil, []*kvstore.Manifest{&m}, 64)
		if err != nil {
			if !errors.Is(err, ErrManifest) {
				t.Fatalf("error %v is not ErrManifest", err)
			}
			return
		}
		if len(held) > 64 {
			t.Fatalf("%d blocks held, bound 64", len(held))
		}
		r, err := router.New(nil, router.Options{})
		if err != nil {
			t.Fatal(err)
		}
		if err := r.ApplyStorage(evs...); errors.Is(err, router.ErrEventShape) {
			t.Fatalf("events the router cannot take: %v", err)
		}
		if again, _, err := ManifestEvents(held, []*kvstore.Manifest{&m}, 64); err != nil || len(again) != 0 {
			t.Fatalf("the same manifest again: %d events, %v", len(again), err)
		}
	})
}
