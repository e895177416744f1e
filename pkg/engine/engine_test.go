package engine

import (
	"errors"
	"fmt"
	"math"
	"testing"
	"time"

	"github.com/llmd-kn/llmd-kn/pkg/kvblock"
)

var t0 = time.Unix(1_700_000_000, 0)

func profile(t testing.TB, name string) Profile {
	t.Helper()
	p, err := BuiltinProfile(name)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

func newEngine(t testing.TB, cfg Config) *Engine {
	t.Helper()
	if cfg.Profile.Name == "" {
		cfg.Profile = profile(t, DefaultProfile)
	}
	e, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return e
}

func prompt(n int, salt uint32) []uint32 {
	p := make([]uint32, n)
	for i := range p {
		p[i] = (uint32(i)*2654435761 + salt*40503) % 100000
	}
	return p
}

// finished collects what a virtual-time run produced per request.
type finished struct {
	tokens   []uint32
	reason   FinishReason
	cached   int
	external int
	firstAt  time.Time
	doneAt   time.Time
	held     bool
	blockIDs []int
}

// drive steps the engine in virtual time until nothing is pending, and
// returns per-request results plus the end time.
func drive(t testing.TB, e *Engine, now time.Time) (map[string]*finished, time.Time) {
	t.Helper()
	out := map[string]*finished{}
	for i := 0; e.Pending(); i++ {
		if i > 1_000_000 {
			t.Fatal("engine did not drain")
		}
		r := e.Step(now)
		if r.Idle {
			if r.WakeAt.IsZero() {
				t.Fatal("engine idle with pending work and nothing to wait for")
			}
			now = r.WakeAt
			continue
		}
		now = now.Add(r.Duration)
		for _, o := range r.Outputs {
			f := out[o.ID]
			if f == nil {
				f = &finished{}
				out[o.ID] = f
			}
			if o.FirstToken {
				f.firstAt = now
			}
			f.tokens = append(f.tokens, o.NewTokens...)
			f.cached, f.external = o.CachedTokens, o.ExternalTokens
			if o.Finished {
				f.reason, f.doneAt, f.held = o.FinishReason, now, o.Held
				f.blockIDs = o.BlockIDs
			}
		}
	}
	return out, now
}

func TestFidelityQwen32BKVCapacity(t *testing.T) {
	p := profile(t, "qwen3-32b-2xh100")
	got := p.KVCapacityTokens()
	const want = 307328 // vLLM's figure in llm-d's published benchmark
	if rel := math.Abs(float64(got)-want) / want; rel > 0.05 {
		t.Fatalf("KV capacity %d tokens, %.1f%% from vLLM's %d", got, rel*100, want)
	}
	t.Logf("Qwen3-32B on 2xH100 at 0.9: %d KV tokens (vLLM: %d)", got, want)
}

func TestFidelityLlama8BDecodeITL(t *testing.T) {
	e := newEngine(t, Config{})
	if err := e.Add(t0, Request{ID: "a", Prompt: prompt(200, 1), MaxTokens: 50, IgnoreEOS: true}); err != nil {
		t.Fatal(err)
	}
	e.Step(t0) // prefill
	var total time.Duration
	for range 20 {
		r := e.Step(t0)
		if r.NumTokens != 1 {
			t.Fatalf("decode step scheduled %d tokens", r.NumTokens)
		}
		total += r.Duration
	}
	itl := total / 20
	if itl < 5*time.Millisecond || itl > 9*time.Millisecond {
		t.Fatalf("batch-1 ITL %v, want 5-9 ms", itl)
	}
	t.Logf("Llama-3.1-8B/H100 batch-1 ITL: %v", itl)
}

func TestFidelityLlama8BPrefill8k(t *testing.T) {
	e := newEngine(t, Config{})
	if err := e.Add(t0, Request{ID: "a", Prompt: prompt(8000, 1), MaxTokens: 1}); err != nil {
		t.Fatal(err)
	}
	r := e.Step(t0)
	if r.NumTokens != 8000 {
		t.Fatalf("prefill step scheduled %d tokens, want 8000", r.NumTokens)
	}
	if r.Duration < 250*time.Millisecond || r.Duration > 800*time.Millisecond {
		t.Fatalf("cold 8k prefill %v, want 0.25-0.8 s", r.Duration)
	}
	t.Logf("Llama-3.1-8B/H100 cold 8000-token prefill: %v", r.Duration)
}

func TestFidelityProfilesSane(t *testing.T) {
	for _, name := range BuiltinProfileNames() {
		p := profile(t, name)
		if p.KVCapacityTokens() < 100_000 {
			t.Errorf("%s: KV capacity %d implausibly small", name, p.KVCapacityTokens())
		}
		// Decode is memory bound: one step with one token is at least the
		// weights over the bandwidth.
		floor := time.Duration(p.WeightBytes() / (p.Accelerator.HBMBandwidth * float64(p.Accelerator.Count)) * float64(time.Second))
		if d := p.StepTime([]StepInput{{Query: 1, Context: 100}}); d < floor {
			t.Errorf("%s: decode step %v below the bandwidth floor %v", name, d, floor)
		}
	}
}

func TestPrefixHitReducesPrefillByCachedBlocks(t *testing.T) {
	e := newEngine(t, Config{})
	shared := prompt(1000, 7)
	if err := e.Add(t0, Request{ID: "a", Prompt: shared, MaxTokens: 4, IgnoreEOS: true}); err != nil {
		t.Fatal(err)
	}
	res, now := drive(t, e, t0)
	if res["a"].cached != 0 {
		t.Fatalf("cold request reported %d cached tokens", res["a"].cached)
	}
	// Same prompt: every full block but the one holding the last token.
	if err := e.Add(now, Request{ID: "b", Prompt: shared, MaxTokens: 4, IgnoreEOS: true}); err != nil {
		t.Fatal(err)
	}
	r := e.Step(now)
	wantCached := (999 / 16) * 16
	if r.NumTokens != 1000-wantCached {
		t.Fatalf("repeated prompt computed %d tokens, want %d", r.NumTokens, 1000-wantCached)
	}
	res2, now := drive(t, e, now.Add(r.Duration))
	if got := r.Outputs; len(got) != 1 || got[0].CachedTokens != wantCached {
		t.Fatalf("outputs %+v, want cached %d", got, wantCached)
	}
	_ = res2
	// Shared 500-token prefix, different tail: 31 full blocks hit.
	p := append(append([]uint32{}, shared[:500]...), prompt(300, 99)...)
	if err := e.Add(now, Request{ID: "c", Prompt: p, MaxTokens: 1}); err != nil {
		t.Fatal(err)
	}
	r = e.Step(now)
	if want := 800 - 31*16; r.NumTokens != want {
		t.Fatalf("partial prefix computed %d tokens, want %d", r.NumTokens, want)
	}
	st := e.Stats()
	if st.PrefixHits != int64(wantCached+31*16) || st.PrefixQueries != 2800 {
		t.Fatalf("prefix stats hits=%d queries=%d", st.PrefixHits, st.PrefixQueries)
	}
}

func TestChunkedPrefillAndBudget(t *testing.T) {
	e := newEngine(t, Config{})
	if err := e.Add(t0, Request{ID: "long", Prompt: prompt(20000, 1), MaxTokens: 2, IgnoreEOS: true}); err != nil {
		t.Fatal(err)
	}
	if err := e.Add(t0, Request{ID: "short", Prompt: prompt(100, 2), MaxTokens: 2, IgnoreEOS: true}); err != nil {
		t.Fatal(err)
	}
	var chunks []int
	for range 3 {
		r := e.Step(t0)
		chunks = append(chunks, r.NumTokens)
	}
	// 8192, then 8192 of the long prompt, then its last 3616 plus the short
	// prompt's 100 tokens (FCFS, the budget still has room).
	if fmt.Sprint(chunks) != "[8192 8192 3716]" {
		t.Fatalf("step token counts %v", chunks)
	}
}

func TestMaxNumSeqs(t *testing.T) {
	e := newEngine(t, Config{MaxNumSeqs: 8})
	for i := range 20 {
		if err := e.Add(t0, Request{ID: fmt.Sprint(i), Prompt: prompt(32, uint32(i)), MaxTokens: 5, IgnoreEOS: true}); err != nil {
			t.Fatal(err)
		}
	}
	r := e.Step(t0)
	if r.NumSeqs != 8 || e.Stats().Running != 8 || e.Stats().Waiting != 12 {
		t.Fatalf("seqs=%d stats=%+v", r.NumSeqs, e.Stats())
	}
	firstStep := map[string]int{}
	for _, o := range r.Outputs {
		firstStep[o.ID] += len(o.NewTokens)
	}
	res, _ := drive(t, e, t0)
	for i := range 20 {
		if n := len(res[fmt.Sprint(i)].tokens) + firstStep[fmt.Sprint(i)]; n != 5 {
			t.Fatalf("request %d produced %d tokens", i, n)
		}
	}
}

func TestEvictionUnderFullCache(t *testing.T) {
	// 64 blocks of 16 tokens; each request leaves 20 cached blocks.
	e := newEngine(t, Config{NumBlocks: 64})
	now := t0
	var removed []uint64
	for i := range 6 {
		if err := e.Add(now, Request{ID: fmt.Sprint(i), Prompt: prompt(320, uint32(i+1)), MaxTokens: 1}); err != nil {
			t.Fatal(err)
		}
		for e.Pending() {
			r := e.Step(now)
			now = now.Add(r.Duration)
			for _, ev := range r.Events {
				if ev.Kind == BlockRemoved {
					removed = append(removed, ev.Hashes...)
				}
			}
		}
	}
	st := e.Stats()
	if st.CachedBlocks > 64 || st.FreeBlocks != 64 {
		t.Fatalf("cache over capacity or blocks leaked: %+v", st)
	}
	if len(removed) == 0 {
		t.Fatal("no BlockRemoved events although the cache overflowed")
	}
	// The first prompt was evicted (LRU); the last is still cached.
	h := e.Hasher()
	first := h.Hashes(nil, prompt(320, 1))
	evicted := map[uint64]bool{}
	for _, x := range removed {
		evicted[x] = true
	}
	if !evicted[first[0]] {
		t.Fatal("least recently used prompt's first block not evicted")
	}
	if err := e.Add(now, Request{ID: "again", Prompt: prompt(320, 6), MaxTokens: 1}); err != nil {
		t.Fatal(err)
	}
	if r := e.Step(now); r.Outputs[0].CachedTokens != 19*16 {
		t.Fatalf("most recent prompt: cached %d, want %d", r.Outputs[0].CachedTokens, 19*16)
	}
}

func TestPreemptionByRecompute(t *testing.T) {
	// Two requests that each need 40 blocks over their life in a 64-block
	// cache: the later one is preempted, recomputed, and both finish whole.
	e := newEngine(t, Config{NumBlocks: 64})
	for i := range 2 {
		if err := e.Add(t0, Request{ID: fmt.Sprint(i), Prompt: prompt(320, uint32(i+10)), MaxTokens: 320, IgnoreEOS: true}); err != nil {
			t.Fatal(err)
		}
	}
	res, _ := drive(t, e, t0)
	st := e.Stats()
	if st.Preemptions == 0 {
		t.Fatal("no preemption although the cache cannot hold both requests")
	}
	for i := range 2 {
		if n := len(res[fmt.Sprint(i)].tokens); n != 320 {
			t.Fatalf("request %d produced %d tokens, want 320", i, n)
		}
	}
	if st.FreeBlocks != 64 || st.Running != 0 || st.Waiting != 0 {
		t.Fatalf("engine not clean after drain: %+v", st)
	}
}

func TestDeterministicUnderSeed(t *testing.T) {
	run := func(seed uint64) string {
		e := newEngine(t, Config{Seed: seed, NumBlocks: 200})
		for i := range 10 {
			if err := e.Add(t0, Request{ID: fmt.Sprint(i), Prompt: prompt(100+i*37, uint32(i%3)), MaxTokens: 300}); err != nil {
				t.Fatal(err)
			}
		}
		res, end := drive(t, e, t0)
		s := fmt.Sprint(end.Sub(t0), e.Stats().Preemptions)
		for i := range 10 {
			f := res[fmt.Sprint(i)]
			s += fmt.Sprint(f.tokens, f.reason, f.doneAt.Sub(t0))
		}
		return s
	}
	if run(1) != run(1) {
		t.Fatal("same seed, different runs")
	}
	if run(1) == run(2) {
		t.Fatal("seed has no effect on generation")
	}
}

func TestNaturalStopAndIgnoreEOS(t *testing.T) {
	e := newEngine(t, Config{})
	_ = e.Add(t0, Request{ID: "eos", Prompt: prompt(10, 1), MaxTokens: 5000})
	_ = e.Add(t0, Request{ID: "ign", Prompt: prompt(10, 1), MaxTokens: 300, IgnoreEOS: true})
	_ = e.Add(t0, Request{ID: "short", Prompt: prompt(10, 1), MaxTokens: 3})
	res, _ := drive(t, e, t0)
	if f := res["eos"]; f.reason != FinishStop || len(f.tokens) < 16 || len(f.tokens) > 271 {
		t.Fatalf("natural stop: %d tokens, reason %q", len(f.tokens), f.reason)
	}
	if f := res["ign"]; f.reason != FinishLength || len(f.tokens) != 300 {
		t.Fatalf("ignore_eos: %d tokens, reason %q", len(f.tokens), f.reason)
	}
	if f := res["short"]; f.reason != FinishLength || len(f.tokens) != 3 {
		t.Fatalf("max_tokens 3: %d tokens, reason %q", len(f.tokens), f.reason)
	}
}

func TestKVEventsMatchHasher(t *testing.T) {
	e := newEngine(t, Config{HashSeed: 42})
	p := prompt(100, 3)
	_ = e.Add(t0, Request{ID: "a", Prompt: p, MaxTokens: 1})
	r := e.Step(t0)
	var stored []uint64
	for _, ev := range r.Events {
		if ev.Kind != BlockStored {
			t.Fatalf("unexpected %v", ev.Kind)
		}
		if ev.HasParent || ev.BlockSize != 16 || len(ev.TokenIDs) != 16*len(ev.Hashes) {
			t.Fatalf("malformed BlockStored %+v", ev)
		}
		stored = append(stored, ev.Hashes...)
	}
	want := kvblock.MustHasher(16, 42).Hashes(nil, p)
	if fmt.Sprint(stored) != fmt.Sprint(want) {
		t.Fatalf("stored %v, want %v", stored, want)
	}
	if !e.ResetPrefixCache() {
		t.Fatal("reset refused on an idle engine")
	}
	r = e.Step(t0)
	if len(r.Events) != 1 || r.Events[0].Kind != AllBlocksCleared {
		t.Fatalf("events after reset: %+v", r.Events)
	}
	if e.Stats().CachedBlocks != 0 {
		t.Fatal("cache not cleared")
	}
}

func TestPrefillDecodeRoles(t *testing.T) {
	pre := newEngine(t, Config{Role: RolePrefill})
	dec := newEngine(t, Config{Role: RoleDecode})
	p := prompt(4000, 5)
	if err := pre.Add(t0, Request{ID: "x", Prompt: p, MaxTokens: 1, RemoteDecode: true}); err != nil {
		t.Fatal(err)
	}
	res, now := drive(t, pre, t0)
	f := res["x"]
	if !f.held || f.reason != FinishLength || len(f.tokens) != 1 {
		t.Fatalf("prefill result %+v", f)
	}
	if want := (4000 + 1 + 15) / 16; len(f.blockIDs) < 250 || len(f.blockIDs) > want {
		t.Fatalf("held %d blocks", len(f.blockIDs))
	}
	if st := pre.Stats(); st.Held != 1 || st.FreeBlocks == st.NumBlocks {
		t.Fatalf("prefill engine does not hold the blocks: %+v", st)
	}

	if err := dec.Add(now, Request{ID: "x", Prompt: p, MaxTokens: 20, IgnoreEOS: true, RemotePrefill: true}); err != nil {
		t.Fatal(err)
	}
	r := dec.Step(now)
	decProfile := dec.Config().Profile
	transfer := decProfile.TransferTime(3999)
	if !r.Idle || r.WakeAt.Sub(now) != transfer {
		t.Fatalf("decode engine should wait %v for the KV transfer, got idle=%v wake=%v", transfer, r.Idle, r.WakeAt.Sub(now))
	}
	r = dec.Step(r.WakeAt)
	if r.NumTokens != 1 || len(r.Outputs) != 1 || !r.Outputs[0].FirstToken || r.Outputs[0].ExternalTokens != 3999 {
		t.Fatalf("decode first step: tokens=%d outputs=%+v", r.NumTokens, r.Outputs)
	}
	res, _ = drive(t, dec, now)
	if len(res["x"].tokens) != 19 {
		t.Fatalf("decode produced %d more tokens, want 19", len(res["x"].tokens))
	}
	if !pre.Release("x") || pre.Stats().FreeBlocks != pre.Stats().NumBlocks || pre.Stats().Held != 0 {
		t.Fatalf("release did not free the prefill blocks: %+v", pre.Stats())
	}
	if pre.Release("x") {
		t.Fatal("double release accepted")
	}
}

func TestHeldBlocksExpire(t *testing.T) {
	pre := newEngine(t, Config{Role: RolePrefill, HeldTimeout: time.Second})
	_ = pre.Add(t0, Request{ID: "x", Prompt: prompt(100, 1), MaxTokens: 1, RemoteDecode: true})
	_, now := drive(t, pre, t0)
	pre.Step(now.Add(2 * time.Second))
	if st := pre.Stats(); st.Held != 0 || st.FreeBlocks != st.NumBlocks {
		t.Fatalf("held blocks did not expire: %+v", st)
	}
}

func TestAbortFreesBlocks(t *testing.T) {
	e := newEngine(t, Config{NumBlocks: 100})
	_ = e.Add(t0, Request{ID: "a", Prompt: prompt(500, 1), MaxTokens: 100, IgnoreEOS: true})
	_ = e.Add(t0, Request{ID: "b", Prompt: prompt(500, 2), MaxTokens: 100, IgnoreEOS: true})
	e.Step(t0)
	e.Step(t0)
	if !e.Abort("a") || !e.Abort("b") || e.Abort("a") {
		t.Fatal("abort results wrong")
	}
	if st := e.Stats(); st.FreeBlocks != 100 || e.Pending() || st.Aborted != 2 {
		t.Fatalf("abort leaked: %+v", st)
	}
}

func TestAddRejectsBadRequests(t *testing.T) {
	e := newEngine(t, Config{MaxWaiting: 1, MaxModelLen: 1000})
	cases := []struct {
		name string
		req  Request
		want error
	}{
		{"empty id", Request{Prompt: prompt(5, 1), MaxTokens: 1}, ErrBadRequest},
		{"empty prompt", Request{ID: "x", MaxTokens: 1}, ErrBadRequest},
		{"zero max tokens", Request{ID: "x", Prompt: prompt(5, 1)}, ErrBadRequest},
		{"negative max tokens", Request{ID: "x", Prompt: prompt(5, 1), MaxTokens: -4}, ErrBadRequest},
		{"over context", Request{ID: "x", Prompt: prompt(900, 1), MaxTokens: 200}, ErrTooLong},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			if err := e.Add(t0, c.req); !errors.Is(err, c.want) {
				t.Fatalf("got %v, want %v", err, c.want)
			}
		})
	}
	if err := e.Add(t0, Request{ID: "ok", Prompt: prompt(5, 1), MaxTokens: 1}); err != nil {
		t.Fatal(err)
	}
	if err := e.Add(t0, Request{ID: "ok", Prompt: prompt(5, 1), MaxTokens: 1}); !errors.Is(err, ErrDuplicateID) {
		t.Fatalf("duplicate: %v", err)
	}
	if err := e.Add(t0, Request{ID: "full", Prompt: prompt(5, 1), MaxTokens: 1}); !errors.Is(err, ErrQueueFull) {
		t.Fatalf("queue bound: %v", err)
	}
	small := newEngine(t, Config{NumBlocks: 4})
	if err := small.Add(t0, Request{ID: "big", Prompt: prompt(100, 1), MaxTokens: 1}); !errors.Is(err, ErrTooLong) {
		t.Fatalf("prompt larger than the cache: %v", err)
	}
}

func TestParseProfilesRejectsBadInput(t *testing.T) {
	cases := map[string]string{
		"unknown field":   "profiles:\n- name: x\n  bogus: 1\n",
		"missing numbers": "profiles:\n- name: x\n",
		"bad mfu":         "profiles:\n- name: x\n  model: {params: 1e9, layers: 1, hidden: 1, attentionHeads: 1, kvHeads: 1, headDim: 1, dtypeBytes: 2, maxModelLen: 10}\n  accelerator: {count: 1, memoryBytes: 8e10, peakFlops: 1e15, hbmBandwidth: 3e12}\n  mfu: 2\n",
		"not yaml":        "{{{",
	}
	for name, doc := range cases {
		if _, err := ParseProfiles([]byte(doc)); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
	if _, err := BuiltinProfile("nope"); err == nil {
		t.Error("unknown built-in accepted")
	}
}

func BenchmarkStepDecode256(b *testing.B) {
	e := newEngine(b, Config{DisableKVEvents: true})
	now := t0
	id := 0
	add := func() {
		id++
		_ = e.Add(now, Request{ID: fmt.Sprint(id), Prompt: prompt(512, uint32(id%50)), MaxTokens: 1 << 10, IgnoreEOS: true})
	}
	for range 256 {
		add()
	}
	for range 20 {
		now = now.Add(e.Step(now).Duration)
	}
	b.ReportAllocs()
	b.ResetTimer()
	for b.Loop() {
		r := e.Step(now)
		now = now.Add(r.Duration)
		for _, o := range r.Outputs {
			if o.Finished {
				add()
			}
		}
	}
}

func TestPriorityPolicyOrdersTheWaitingQueue(t *testing.T) {
	e := newEngine(t, Config{Policy: PolicyPriority, MaxNumSeqs: 1})
	_ = e.Add(t0, Request{ID: "running", Prompt: prompt(10, 1), MaxTokens: 3, IgnoreEOS: true, Priority: 5})
	e.Step(t0)
	_ = e.Add(t0, Request{ID: "batch-1", Prompt: prompt(10, 2), MaxTokens: 1, Priority: 10})
	_ = e.Add(t0, Request{ID: "batch-2", Prompt: prompt(10, 3), MaxTokens: 1, Priority: 10})
	_ = e.Add(t0, Request{ID: "critical", Prompt: prompt(10, 4), MaxTokens: 1, Priority: 0})
	res, _ := drive(t, e, t0)
	if !res["critical"].doneAt.Before(res["batch-1"].doneAt) || !res["batch-1"].doneAt.Before(res["batch-2"].doneAt) {
		t.Fatalf("order: critical %v batch-1 %v batch-2 %v", res["critical"].doneAt, res["batch-1"].doneAt, res["batch-2"].doneAt)
	}
	fcfs := newEngine(t, Config{})
	if err := fcfs.Add(t0, Request{ID: "x", Prompt: prompt(10, 1), MaxTokens: 1, Priority: 1}); !errors.Is(err, ErrBadRequest) {
		t.Fatalf("priority under FCFS: %v", err)
	}
	if _, err := ParsePolicy("lifo"); err == nil {
		t.Fatal("unknown policy accepted")
	}
}

func TestPriorityPolicyPreemptsTheLowestPriority(t *testing.T) {
	e := newEngine(t, Config{Policy: PolicyPriority, NumBlocks: 64})
	_ = e.Add(t0, Request{ID: "low", Prompt: prompt(320, 1), MaxTokens: 320, IgnoreEOS: true, Priority: 9})
	e.Step(t0)
	_ = e.Add(t0, Request{ID: "high", Prompt: prompt(320, 2), MaxTokens: 320, IgnoreEOS: true, Priority: 1})
	res, _ := drive(t, e, t0)
	if e.Stats().Preemptions == 0 {
		t.Fatal("no preemption")
	}
	if !res["high"].doneAt.Before(res["low"].doneAt) {
		t.Fatal("the high-priority request did not finish first")
	}
	if len(res["low"].tokens) != 319 || len(res["high"].tokens) != 320 {
		t.Fatalf("tokens low=%d high=%d", len(res["low"].tokens), len(res["high"].tokens))
	}
}
