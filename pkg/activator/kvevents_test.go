package activator

import (
	"testing"

	"github.com/llmd-kn/llmd-kn/pkg/kvblock"
	"github.com/llmd-kn/llmd-kn/pkg/kvevents"
	"github.com/llmd-kn/llmd-kn/pkg/router"
)

// vllmEngine builds the events a vLLM engine publishes: sha256_cbor
// digests (sent as bytes, VLLM_KV_EVENTS_USE_INT_BLOCK_HASHES=0), blocks
// of 16 tokens.
type vllmEngine struct {
	h kvblock.VLLMHasher
}

func (e vllmEngine) digests(p []uint32) [][]byte {
	var ds [][]byte
	var last []byte
	bs := e.h.BlockSize()
	for i := 0; i+bs <= len(p); i += bs {
		last = e.h.Next(last, p[i:i+bs])
		ds = append(ds, last)
	}
	return ds
}

func (e vllmEngine) stored(p []uint32, from, to int, medium string) kvevents.Event {
	ds := e.digests(p[:to*e.h.BlockSize()])
	bs := e.h.BlockSize()
	ev := kvevents.Event{Kind: kvevents.BlockStored, RawHashes: ds[from:to], TokenIDs: p[from*bs : to*bs], BlockSize: bs, Medium: medium}
	if from > 0 {
		ev.RawParent = ds[from-1]
	}
	return ev
}

func (e vllmEngine) removed(p []uint32, from, to int, medium string) kvevents.Event {
	ds := e.digests(p[:to*e.h.BlockSize()])[from:to]
	// vLLM evicts a sequence's tail first.
	rev := make([][]byte, len(ds))
	for i, d := range ds {
		rev[len(ds)-1-i] = d
	}
	return kvevents.Event{Kind: kvevents.BlockRemoved, RawHashes: rev, Medium: medium}
}

func seqTokens(n int, start uint32) []uint32 {
	s := make([]uint32, n)
	for i := range s {
		s[i] = start + uint32(i)*7%128000
	}
	return s
}

// TestVLLMStreamKeepsIndexExact feeds the router a vLLM-shaped stream
// through the wire format: SHA-256 byte hashes at engine blocks of 16, a
// router keyed at blocks of 64, chunked stores with parents, a shared
// prefix, removals by hash, a CPU tier, two engines holding the same
// blocks and a cache reset. After each step the predicted cached tokens
// are exactly what the engines hold, in whole router blocks.
func TestVLLMStreamKeepsIndexExact(t *testing.T) {
	hs, err := kvblock.NewVLLMHasher(16, kvblock.AlgoSHA256CBOR, "0")
	if err != nil {
		t.Fatal(err)
	}
	eng := vllmEngine{h: hs}
	cfg, err := router.ParseConfig([]byte("preciseIndex: {blockSize: 64}"))
	if err != nil {
		t.Fatal(err)
	}
	rt, err := router.New(cfg, router.Options{Seed: 1})
	if err != nil {
		t.Fatal(err)
	}
	a := seqTokens(40*16, 1)                                                     // 40 engine blocks, 10 router blocks
	b := append(append([]uint32(nil), a[:20*16]...), seqTokens(16*16, 90000)...) // shares 20 engine blocks
	query := func(p []uint32) []uint32 { return append(append([]uint32(nil), p...), 5) }

	var seq uint64
	send := func(pod string, f kvevents.Format, evs ...kvevents.Event) {
		t.Helper()
		payload, err := kvevents.AppendBatch(nil, &kvevents.Batch{TS: 1, Events: evs, HasDPRank: true}, f)
		if err != nil {
			t.Fatal(err)
		}
		_, _, p, err := kvevents.ParseMessage([][]byte{[]byte("kv@" + pod + "@m"), kvevents.AppendSeq(nil, seq), payload})
		if err != nil {
			t.Fatal(err)
		}
		seq++
		batch, err := kvevents.DecodeBatch(p)
		if err != nil {
			t.Fatal(err)
		}
		if err := rt.Apply(pod, RouterEvents(batch.Events)...); err != nil {
			t.Fatal(err)
		}
	}
	s, err := rt.Scheduler("kv-precise")
	if err != nil {
		t.Fatal(err)
	}
	predict := func(pod string, p []uint32) int {
		t.Helper()
		var d router.Decision
		if err := s.Decide(&d, &router.Request{Model: "m", Tokens: query(p)}, []router.Endpoint{{ID: pod, Ready: true}}); err != nil {
			t.Fatal(err)
		}
		return d.PrefixHitTokens
	}
	check := func(step, pod string, p []uint32, want int) {
		t.Helper()
		if got := predict(pod, p); got != want {
			t.Errorf("%s: %s predicted %d cached tokens, want %d", step, pod, got, want)
		}
	}

	// Chunked prefill of a: two events, the second chained by its parent.
	send("pod-1", kvevents.FormatMap, eng.stored(a, 0, 25, kvevents.MediumGPU))
	check("first chunk", "pod-1", a, 6*64) // 25 engine blocks = 400 tokens
	send("pod-1", kvevents.FormatArray, eng.stored(a, 25, 40, ""))
	check("whole prompt", "pod-1", a, 640)
	// b continues a's 20th block.
	send("pod-1", kvevents.FormatMap, eng.stored(b, 20, 36, kvevents.MediumGPU))
	check("shared prefix", "pod-1", b, 9*64)
	check("shared prefix", "pod-1", a, 640)
	// a's tail evicted, by hash.
	send("pod-1", kvevents.FormatMap, eng.removed(a, 30, 40, kvevents.MediumGPU))
	check("tail evicted", "pod-1", a, 7*64) // 30 blocks = 480 tokens
	check("tail evicted", "pod-1", b, 9*64)
	// The tail offloaded to CPU: tracked, not routed on.
	send("pod-1", kvevents.FormatMap, eng.stored(a, 30, 40, kvevents.MediumCPU))
	check("tail on CPU", "pod-1", a, 7*64)
	if st := rt.PreciseEndpoint("pod-1"); st.CPUBlocks != 10 || st.GPUBlocks != 46 || st.Unmatched != 0 || st.Rejected != 0 {
		t.Errorf("pod-1 stats %+v, want 10 CPU and 46 GPU blocks, nothing unmatched", st)
	}
	// A second engine holds a: its blocks are shared, counted twice.
	send("pod-2", kvevents.FormatMap, eng.stored(a, 0, 40, kvevents.MediumGPU))
	check("second engine", "pod-2", a, 640)
	// pod-1 resets its cache: pod-2 keeps what it holds.
	send("pod-1", kvevents.FormatMap, kvevents.Event{Kind: kvevents.AllBlocksCleared})
	check("reset", "pod-1", a, 0)
	check("reset", "pod-1", b, 0)
	check("other engine after reset", "pod-2", a, 640)
	if st := rt.Stats(); st.PreciseEngineBlocks != 40 || st.Precise.Holdings != 10 {
		t.Errorf("after the reset the index maps %d engine blocks to %d holdings, want pod-2's 40 and 10", st.PreciseEngineBlocks, st.Precise.Holdings)
	}
	// Removals of blocks the engine no longer has are counted, not applied.
	send("pod-1", kvevents.FormatMap, eng.removed(a, 0, 2, kvevents.MediumGPU))
	if st := rt.PreciseEndpoint("pod-1"); st.Unmatched != 2 {
		t.Errorf("pod-1 unmatched %d, want 2", st.Unmatched)
	}
	// A store whose parent the index never saw cannot be keyed.
	send("pod-3", kvevents.FormatMap, eng.stored(b, 30, 36, kvevents.MediumGPU))
	if st := rt.PreciseEndpoint("pod-3"); st.Unmatched != 6 || st.Keys != 0 {
		t.Errorf("pod-3 stats %+v, want 6 unmatched blocks and no keys", st)
	}
	check("evicted head on pod-2", "pod-2", a, 640)
	send("pod-2", kvevents.FormatMap, eng.removed(a, 0, 40, ""))
	check("all evicted", "pod-2", a, 0)
	if st := rt.Stats(); st.PreciseEngineBlocks != 0 || st.Precise.Keys != 0 {
		t.Errorf("empty engines, index still maps %d engine blocks and %d keys", st.PreciseEngineBlocks, st.Precise.Keys)
	}
}
