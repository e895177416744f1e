package router

import (
	"errors"
	"fmt"
	"testing"
)

func mustRouter(t testing.TB, yaml string) *Router {
	t.Helper()
	cfg, err := ParseConfig([]byte(yaml))
	if err != nil {
		t.Fatal(err)
	}
	r, err := New(cfg, Options{Seed: 42})
	if err != nil {
		t.Fatal(err)
	}
	return r
}

func tokens(n int, start uint32) []uint32 {
	s := make([]uint32, n)
	for i := range s {
		s[i] = start + uint32(i)
	}
	return s
}

func endpoints(n int) []Endpoint {
	eps := make([]Endpoint, n)
	for i := range eps {
		eps[i] = Endpoint{ID: fmt.Sprintf("ep-%d", i), Ready: true, BlockSize: 16}
	}
	return eps
}

// hit decides with profile and returns the predicted cached tokens on the
// endpoint with the given index, by restricting the snapshot to it.
func hit(t *testing.T, r *Router, profile string, req *Request, ep Endpoint) int {
	t.Helper()
	s, err := r.Scheduler(profile)
	if err != nil {
		t.Fatal(err)
	}
	var d Decision
	if err := s.Decide(&d, req, []Endpoint{ep}); err != nil {
		t.Fatal(err)
	}
	return d.PrefixHitTokens
}

func TestPreciseIndexTracksEvents(t *testing.T) {
	eng := newTestEngine(16)
	prompt := tokens(16*10+5, 1)
	hashes := eng.hashes(prompt)
	req := &Request{Model: "m", Tokens: prompt}
	ep := Endpoint{ID: "a", Ready: true}

	steps := []struct {
		name   string
		events []KVEvent
		want   int
	}{
		{"no events: nothing known", nil, 0},
		{"first six blocks stored", []KVEvent{eng.stored(prompt, 0, 6)}, 96},
		{"the rest stored with a parent", []KVEvent{eng.stored(prompt, 6, 10)}, 160},
		{"tail blocks evicted", []KVEvent{{Kind: BlockRemoved, Hashes: hashes[8:]}}, 128},
		{"removing blocks it never had changes nothing", []KVEvent{{Kind: BlockRemoved, Hashes: []uint64{1, 2, 3}}}, 128},
		{"cache reset", []KVEvent{{Kind: AllBlocksCleared}}, 0},
		{"stored again after the reset", []KVEvent{eng.stored(prompt, 0, 3)}, 48},
	}
	r := mustRouter(t, "")
	for _, st := range steps {
		if st.events != nil {
			if err := r.Apply("a", st.events...); err != nil {
				t.Fatalf("%s: %v", st.name, err)
			}
		}
		if got := hit(t, r, "kv-precise", req, ep); got != st.want {
			t.Errorf("%s: predicted %d cached tokens, want %d", st.name, got, st.want)
		}
	}
	if st := r.Stats(); st.Precise.Holdings != 3 || st.Precise.Keys != 3 || st.Precise.Endpoints != 1 {
		t.Errorf("stats %+v, want 3 holdings of 3 keys on 1 endpoint", st.Precise)
	}
}

func TestPreciseIndexCapsHitBelowPrompt(t *testing.T) {
	// An engine always computes the last prompt token, so a prompt of
	// exactly 4 blocks can hit at most 3.
	prompt := tokens(64, 1)
	r := mustRouter(t, "")
	if err := r.Apply("a", newTestEngine(16).all(prompt)); err != nil {
		t.Fatal(err)
	}
	if got := hit(t, r, "kv-precise", &Request{Tokens: prompt}, Endpoint{ID: "a", Ready: true}); got != 48 {
		t.Fatalf("predicted %d cached tokens, want 48", got)
	}
}

func TestPreciseIndexRejectsMalformedStores(t *testing.T) {
	r := mustRouter(t, "")
	err := r.Apply("a",
		KVEvent{Kind: BlockStored, Hashes: []uint64{1}, TokenIDs: tokens(16, 1), BlockSize: 32},
		KVEvent{Kind: BlockStored, Hashes: []uint64{2}, TokenIDs: tokens(16, 1), BlockSize: 16})
	if !errors.Is(err, ErrEventShape) {
		t.Fatalf("err = %v, want ErrEventShape", err)
	}
	if st := r.Stats(); st.Precise.Holdings != 1 {
		t.Fatalf("holdings %d: the good event should apply, the bad one not", st.Precise.Holdings)
	}
	if st := r.PreciseEndpoint("a"); st.Rejected != 1 || st.Stored != 1 {
		t.Fatalf("endpoint stats %+v, want 1 rejected and 1 stored", st)
	}
	if err := r.Apply("a", KVEvent{Kind: 9}); err == nil {
		t.Fatal("unknown event kind accepted")
	}
}

func TestPreciseIndexBoundClearsAnEndpointThatLostRemovals(t *testing.T) {
	r := mustRouter(t, "preciseIndex: {maxBlocksPerEndpoint: 100}")
	for i := range 3 {
		if err := r.Apply("a", newTestEngine(16).all(tokens(40*16, uint32(i)*100000))); err != nil {
			t.Fatal(err)
		}
	}
	st := r.Stats()
	if st.Precise.Holdings > 100 || st.PreciseResets != 1 {
		t.Fatalf("holdings %d, resets %d; want at most 100 and 1", st.Precise.Holdings, st.PreciseResets)
	}
}

// The bound is per medium: an engine's CPU and disk tiers hold many times
// its GPU blocks, and announcing them must not clear the endpoint.
func TestPreciseIndexBoundIsPerMedium(t *testing.T) {
	r := mustRouter(t, "preciseIndex: {maxBlocksPerEndpoint: 100}")
	e := newTestEngine(16)
	for i, m := range []string{"GPU", "CPU", "STORAGE"} {
		ev := e.all(tokens(80*16, uint32(i)*100000))
		ev.Medium = m
		if err := r.Apply("a", ev); err != nil {
			t.Fatal(err)
		}
	}
	if st := r.Stats(); st.PreciseResets != 0 || st.PreciseEngineBlocks != 240 {
		t.Fatalf("80 blocks on each of three media under a bound of 100: engine blocks %d, resets %d; want 240 and 0",
			st.PreciseEngineBlocks, st.PreciseResets)
	}
	ev := e.all(tokens(40*16, 900000))
	ev.Medium = "CPU"
	if err := r.Apply("a", ev); err != nil {
		t.Fatal(err)
	}
	if st := r.Stats(); st.PreciseResets != 1 {
		t.Fatalf("120 blocks on CPU under a bound of 100: resets %d, want 1", st.PreciseResets)
	}
}

func TestApproxIndexRecordsWhereItSent(t *testing.T) {
	r := mustRouter(t, "")
	s, _ := r.Scheduler("prefix-approx")
	eps := endpoints(4)
	prompt := tokens(64*10, 1)
	req := &Request{Model: "m", Tokens: prompt}
	var d Decision
	if err := s.Decide(&d, req, eps); err != nil {
		t.Fatal(err)
	}
	if d.PrefixHitTokens != 0 {
		t.Fatalf("cold index predicts %d cached tokens", d.PrefixHitTokens)
	}
	r.Record(&d)
	first := d.Decode
	// The same prompt, and a longer one sharing it, go to the same
	// endpoint and are predicted cached up to the engine's cap.
	for _, n := range []int{64 * 10, 64*10 + 300} {
		req := &Request{Model: "m", Tokens: append(append([]uint32(nil), prompt...), tokens(n-len(prompt), 9000)...)}
		if err := s.Decide(&d, req, eps); err != nil {
			t.Fatal(err)
		}
		if d.Decode != first {
			t.Errorf("%d tokens: went to %d, want %d which holds the prefix", n, d.Decode, first)
		}
		if want := min(640, (n-1)/64*64); d.PrefixHitTokens != want {
			t.Errorf("%d tokens: predicted %d cached, want %d", n, d.PrefixHitTokens, want)
		}
	}
	// Another model does not share the keys.
	if got := hit(t, r, "prefix-approx", &Request{Model: "other", Tokens: prompt}, eps[first]); got != 0 {
		t.Errorf("another model's prompt predicted %d cached tokens", got)
	}
}

func TestApproxIndexLRUBound(t *testing.T) {
	r := mustRouter(t, "approximateIndex: {lruCapacity: 8}")
	s, _ := r.Scheduler("prefix-approx")
	ep := []Endpoint{{ID: "a", Ready: true}}
	record := func(p []uint32) {
		var d Decision
		if err := s.Decide(&d, &Request{Tokens: p}, ep); err != nil {
			t.Fatal(err)
		}
		r.Record(&d)
	}
	a := tokens(64*6+1, 1)
	b := tokens(64*6+1, 100000)
	record(a)
	record(b) // 12 blocks for a capacity of 8: a's tail goes first
	st := r.Stats()
	if st.Approximate.Holdings != 8 || st.Approximate.Keys != 8 {
		t.Fatalf("holdings %d keys %d, want 8 and 8", st.Approximate.Holdings, st.Approximate.Keys)
	}
	if got := hit(t, r, "prefix-approx", &Request{Tokens: b}, ep[0]); got != 6*64 {
		t.Errorf("most recent prompt: %d cached, want %d", got, 6*64)
	}
	// a keeps its head (prefix-closed), not a scattering of blocks.
	if got := hit(t, r, "prefix-approx", &Request{Tokens: a}, ep[0]); got != 2*64 {
		t.Errorf("older prompt: %d cached, want its first 2 blocks (128)", got)
	}
	// The endpoint's own capacity applies when the config leaves it to it.
	r2 := mustRouter(t, "")
	s2, _ := r2.Scheduler("prefix-approx")
	var d Decision
	if err := s2.Decide(&d, &Request{Tokens: tokens(64*20, 1)}, []Endpoint{{ID: "a", Ready: true, NumBlocks: 5}}); err != nil {
		t.Fatal(err)
	}
	r2.Record(&d)
	if h := r2.Stats().Approximate.Holdings; h != 5 {
		t.Errorf("endpoint reporting 5 blocks holds %d in the index", h)
	}
}

func TestForgetAndRetainFreeEverything(t *testing.T) {
	r := mustRouter(t, "")
	eng := newTestEngine(16)
	s, _ := r.Scheduler("default")
	eps := endpoints(70) // more than one bitset word
	for i := range eps {
		p := tokens(16*20, uint32(i*1000))
		if err := r.Apply(eps[i].ID, eng.all(p)); err != nil {
			t.Fatal(err)
		}
		var d Decision
		if err := s.Decide(&d, &Request{Tokens: p}, eps[i:i+1]); err != nil {
			t.Fatal(err)
		}
		r.Record(&d)
	}
	r.Forget("ep-3")
	if got := hit(t, r, "kv-precise", &Request{Tokens: tokens(16*20, 3000)}, eps[3]); got != 0 {
		t.Errorf("forgotten endpoint still predicted %d cached tokens", got)
	}
	if got := hit(t, r, "kv-precise", &Request{Tokens: tokens(16*20, 69000)}, eps[69]); got == 0 {
		t.Error("endpoint 69 lost its blocks when another was forgotten")
	}
	r.Retain([]string{"ep-1", "ep-69"})
	st := r.Stats()
	if st.Precise.Endpoints != 2 || st.Approximate.Endpoints != 2 {
		t.Fatalf("after Retain: %+v", st)
	}
	r.Retain(nil)
	st = r.Stats()
	if st.Precise.Keys != 0 || st.Approximate.Keys != 0 || st.Precise.Holdings != 0 || st.Approximate.Holdings != 0 || st.PreciseEngineBlocks != 0 {
		t.Fatalf("after Retain(nil): %+v", st)
	}
	// Slots are reused rather than grown.
	if err := r.Apply("new", eng.all(tokens(16, 5))); err != nil {
		t.Fatal(err)
	}
	if r.Stats().Slots != 70 {
		t.Errorf("slots %d, want the 70 already numbered", r.Stats().Slots)
	}
}

func TestPreciseIndexAppliesLongEventsInChunks(t *testing.T) {
	r := mustRouter(t, "")
	eng := newTestEngine(16)
	p := tokens(5000*16, 1)
	hs := eng.hashes(p)
	if err := r.Apply("a", eng.all(p), KVEvent{Kind: BlockRemoved, Hashes: hs[1000:]}); err != nil {
		t.Fatal(err)
	}
	if st := r.Stats().Precise; st.Holdings != 1000 || st.Keys != 1000 {
		t.Fatalf("%+v, want 1000 holdings", st)
	}
	if err := r.Apply("a", KVEvent{Kind: AllBlocksCleared}, eng.stored(p, 0, 10)); err != nil {
		t.Fatal(err)
	}
	if st := r.Stats().Precise; st.Holdings != 10 || st.Keys != 10 {
		t.Fatalf("%+v, want 10 holdings after a reset and a store", st)
	}
}

func TestApproxIndexFullLRUDoesNotGrow(t *testing.T) {
	var a approxIndex
	a.t = newHolderTable(1, 1)
	keys := make([]uint64, 64)
	for i := range keys {
		keys[i] = uint64(i + 1)
	}
	a.record(0, keys, 64)
	l := a.lru[0]
	before := cap(l.key)
	allocs := testing.AllocsPerRun(100, func() {
		for i := range keys {
			keys[i] += 1000
		}
		a.record(0, keys, 64)
	})
	if len(l.pos) != 64 || cap(l.key) != before {
		t.Fatalf("full LRU: %d keys, capacity %d -> %d", len(l.pos), before, cap(l.key))
	}
	if allocs > 10 {
		t.Fatalf("recording into a full LRU allocates %v times per call", allocs)
	}
}
