package router

import "testing"

// TestFallbackToApproximate: an engine whose tokens never match the
// router's (another tokenizer) publishes events that predict nothing; the
// approximate index knows better. The decision never predicts less than
// the approximate index while the precise one is unproven, turns to the
// approximate index for that endpoint once the precise one is shown wrong,
// and back once it is right again.
func TestFallbackToApproximate(t *testing.T) {
	r := mustRouter(t, "")
	s, err := r.Scheduler("default")
	if err != nil {
		t.Fatal(err)
	}
	eng := newTestEngine(16)
	ep := []Endpoint{{ID: "a", Ready: true, BlockSize: 16}}
	prompt := tokens(1000, 1)
	// The engine caches the prompt under token ids the router never sees.
	if err := r.Apply("a", eng.all(tokens(1000, 500000))); err != nil {
		t.Fatal(err)
	}
	var d Decision
	decide := func() {
		t.Helper()
		if err := s.Decide(&d, &Request{Model: "m", Tokens: prompt}, ep); err != nil {
			t.Fatal(err)
		}
		r.Record(&d)
	}
	decide() // the approximate index learns where the prompt went
	const engineCached = 992
	for i := range trustMinObs + 2 {
		decide()
		if d.PreciseHitTokens != 0 || d.ApproxHitTokens != 960 {
			t.Fatalf("round %d: precise %d approx %d, want 0 and 960", i, d.PreciseHitTokens, d.ApproxHitTokens)
		}
		if d.PrefixHitTokens != 960 {
			t.Fatalf("round %d: predicted %d, want the approximate index's 960", i, d.PrefixHitTokens)
		}
		flipped, trusted := r.Observe("a", Observation{PreciseHitTokens: d.PreciseHitTokens, ApproxHitTokens: d.ApproxHitTokens, CachedTokens: engineCached})
		if flipped != (i == trustMinObs-1) || trusted != (i < trustMinObs-1) {
			t.Fatalf("round %d: flipped %v trusted %v", i, flipped, trusted)
		}
	}
	if st := r.PreciseEndpoint("a"); st.Trusted || st.PreciseError < 800 || st.ApproxError > 0 {
		t.Fatalf("stats %+v: want distrusted, a large precise error, no approximate one", st)
	}
	// The engine now publishes the router's token ids: the precise index
	// is right again and earns its trust back.
	if err := r.Apply("a", KVEvent{Kind: AllBlocksCleared}, eng.all(prompt)); err != nil {
		t.Fatal(err)
	}
	recovered := false
	for range 40 {
		decide()
		if d.PreciseHitTokens != 992 {
			t.Fatalf("precise predicts %d, want 992", d.PreciseHitTokens)
		}
		if _, trusted := r.Observe("a", Observation{PreciseHitTokens: d.PreciseHitTokens, ApproxHitTokens: d.ApproxHitTokens, CachedTokens: engineCached}); trusted {
			recovered = true
			break
		}
	}
	if !recovered {
		t.Fatalf("precise index never trusted again: %+v", r.PreciseEndpoint("a"))
	}
	decide()
	if d.PrefixHitTokens != 992 {
		t.Fatalf("trusted again, predicted %d, want the precise 992", d.PrefixHitTokens)
	}
}
