package router

import (
	"math"
	"slices"
	"strings"
	"testing"

	"github.com/llmd-kn/llmd-kn/pkg/engine"
	"github.com/llmd-kn/llmd-kn/pkg/kvblock"
)

func decide(t *testing.T, r *Router, profile string, req *Request, eps []Endpoint) Decision {
	t.Helper()
	s, err := r.Scheduler(profile)
	if err != nil {
		t.Fatal(err)
	}
	var d Decision
	if err := s.Decide(&d, req, eps); err != nil {
		t.Fatal(err)
	}
	return d
}

// store makes the precise index believe ep holds the first n tokens of p.
func store(t *testing.T, r *Router, ep string, p []uint32, n int) {
	t.Helper()
	if err := r.Apply(ep, newTestEngine(16).all(p[:n])); err != nil {
		t.Fatal(err)
	}
}

func TestTTFTCostPrefersTheCachedEndpoint(t *testing.T) {
	r := mustRouter(t, "")
	prompt := tokens(8000, 1)
	eps := endpoints(3)
	for i := range eps {
		store(t, r, eps[i].ID, tokens(64, 50000+uint32(i)*100), 64) // events flow for all
	}
	store(t, r, "ep-2", prompt, 7000)
	d := decide(t, r, "default", &Request{Tokens: prompt}, eps)
	if d.DecodeID != "ep-2" || d.PrefixHitTokens != 6992 {
		t.Fatalf("chose %s with %d cached; want ep-2 with 6992", d.DecodeID, d.PrefixHitTokens)
	}
	if d.PredictedTTFT <= 0 {
		t.Fatalf("no predicted TTFT: %+v", d)
	}
}

func TestTTFTCostTradesCacheAgainstQueue(t *testing.T) {
	prompt := tokens(8000, 1)
	tests := []struct {
		name string
		// prefill tokens already queued on the endpoint holding the prompt
		backlog int
		want    string
	}{
		{"a short queue is worth waiting for the cache", 2000, "ep-1"},
		{"a long queue is not", 200000, "ep-0"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			r := mustRouter(t, "")
			eps := endpoints(2)
			eps[1].InFlightTokens = tc.backlog
			store(t, r, "ep-0", tokens(64, 90000), 64)
			store(t, r, "ep-1", prompt, 7000)
			if d := decide(t, r, "ttft-cost", &Request{Tokens: prompt}, eps); d.DecodeID != tc.want {
				t.Fatalf("chose %s, want %s (scores %v)", d.DecodeID, tc.want, d.Totals)
			}
		})
	}
}

func TestTTFTCostTreatsStaleAsUnknownNotIdle(t *testing.T) {
	r := mustRouter(t, "")
	eps := endpoints(2)
	// The stale endpoint last reported an idle engine, but the router has
	// 200 requests in flight there (decoding); the fresh one runs 20.
	eps[0] = Endpoint{ID: "stale", Ready: true, Stale: true, InFlight: 200}
	eps[1].Running, eps[1].InFlight = 20, 20
	s, _ := r.Scheduler("default")
	var d Decision
	// Without the fresh filter, ttft-cost alone must still avoid it.
	cfg := `
profiles:
- name: cost-only
  plugins:
  - name: ttft-cost
`
	r2 := mustRouter(t, cfg)
	if d := decide(t, r2, "cost-only", &Request{Tokens: tokens(1000, 1)}, eps); d.DecodeID != "ep-1" {
		t.Fatalf("ttft-cost chose the stale endpoint: %v", d.Totals)
	}
	if err := s.Decide(&d, &Request{Tokens: tokens(1000, 1)}, eps); err != nil || d.DecodeID != "ep-1" {
		t.Fatalf("default chose %s (%v)", d.DecodeID, err)
	}
}

func TestRatesFromProfile(t *testing.T) {
	p, _ := engine.BuiltinProfile("llama-3.1-8b-h100")
	r := RatesFromProfile(&p, 0, 0, 0)
	// 989e12 · 0.5 / (2 · 8.03e9) ≈ 30.8k tokens/s of dense prefill.
	if math.Abs(r.PrefillTokensPerSecond-30791) > 100 {
		t.Errorf("prefill rate %.0f tokens/s", r.PrefillTokensPerSecond)
	}
	if r.MaxBatchedTokens != 8192 || r.StepSeconds <= 0.0006 || r.KVTransferTokensPerSecond <= 0 {
		t.Errorf("rates %+v", r)
	}
	// A bigger running batch makes steps longer.
	if busy := RatesFromProfile(&p, 0, 128, 4096); busy.StepSeconds <= r.StepSeconds {
		t.Errorf("step %.5fs at 128 running, %.5fs idle", busy.StepSeconds, r.StepSeconds)
	}
	// The prediction for a cold 32k prompt on an idle engine is about what
	// the engine model takes to prefill it.
	c := &cycle{r: mustRouter(t, ""), req: &Request{}, eps: []Endpoint{{ID: "x"}}}
	c.prompt = 32768
	c.preSeen, c.preLen = []bool{true}, []int32{0}
	c.preDone, c.usePrecise = true, true
	got := (&ttftCost{fallback: r}).predict(c, 0)
	var want float64
	for done := 0; done < 32768; done += 8192 {
		want += p.StepTime([]engine.StepInput{{Query: 8192, Context: done}}).Seconds()
	}
	t.Logf("cold 32k prefill: predicted %.3fs, engine model %.3fs", got, want)
	if math.Abs(got-want)/want > 0.05 {
		t.Errorf("predicted %.3fs for a cold 32k prefill, the engine model takes %.3fs", got, want)
	}
}

func TestPDDecision(t *testing.T) {
	prompt := tokens(4000, 1)
	mk := func() []Endpoint {
		eps := endpoints(4)
		eps[2].Role, eps[3].Role = RolePrefill, RolePrefill
		eps[0].Role, eps[1].Role = RoleDecode, RoleDecode
		return eps
	}
	tests := []struct {
		name      string
		profile   string
		cached    int // tokens ep-0 and ep-1 hold
		threshold int // -1: the profile's
		eps       func() []Endpoint
		wantPD    bool
	}{
		{"long uncached prompt is disaggregated", "default", 0, -1, mk, true},
		{"mostly cached prompt stays on decode", "default", 3800, -1, mk, false},
		{"the annotation's threshold applies", "default", 3800, 100, mk, true},
		{"threshold 0 always disaggregates", "kv-precise", 3999, 0, mk, true},
		{"no prefill endpoints: decode only", "default", 0, -1, func() []Endpoint { return mk()[:2] }, false},
		{"prefill endpoints not ready: decode only", "default", 0, -1, func() []Endpoint {
			e := mk()
			e[2].Ready, e[3].Ready = false, false
			return e
		}, false},
		{"profiles without a decider never disaggregate", "least-request", 0, -1, mk, false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			r := mustRouter(t, "")
			eps := tc.eps()
			for _, e := range eps {
				store(t, r, e.ID, tokens(64, 70000), 64)
			}
			if tc.cached > 0 {
				store(t, r, "ep-0", prompt, tc.cached)
				store(t, r, "ep-1", prompt, tc.cached)
			}
			s, _ := r.Scheduler(tc.profile)
			if tc.threshold >= 0 {
				s = s.WithPDThreshold(tc.threshold)
			}
			var d Decision
			if err := s.Decide(&d, &Request{Tokens: prompt}, eps); err != nil {
				t.Fatal(err)
			}
			if d.Disaggregated != tc.wantPD || (d.Prefill >= 0) != tc.wantPD {
				t.Fatalf("disaggregated=%v prefill=%d, want %v", d.Disaggregated, d.Prefill, tc.wantPD)
			}
			if eps[d.Decode].Role == RolePrefill {
				t.Fatalf("decode on a prefill endpoint")
			}
			if tc.wantPD && eps[d.Prefill].Role != RolePrefill {
				t.Fatalf("prefill on %s", eps[d.Prefill].Role)
			}
		})
	}
}

func TestPDPrefillEndpointChosenByItsPrefix(t *testing.T) {
	for _, profile := range []string{"default", "kv-precise"} {
		t.Run(profile, func(t *testing.T) {
			r := mustRouter(t, "")
			eps := endpoints(5)
			eps[0].Role = RoleDecode
			for i := 1; i < 5; i++ {
				eps[i].Role = RolePrefill
			}
			prompt := tokens(6000, 1)
			for _, e := range eps {
				store(t, r, e.ID, tokens(64, 70000), 64)
			}
			store(t, r, "ep-3", prompt, 5000)
			d := decide(t, r, profile, &Request{Tokens: prompt}, eps)
			if !d.Disaggregated || d.PrefillID != "ep-3" || d.PrefillHitTokens != 4992 {
				t.Fatalf("prefill %q with %d cached, want ep-3 with 4992 (%v)", d.PrefillID, d.PrefillHitTokens, d.PrefillTotals)
			}
		})
	}
}

func TestNoEndpoint(t *testing.T) {
	r := mustRouter(t, "")
	s, _ := r.Scheduler("")
	var d Decision
	if err := s.Decide(&d, &Request{}, nil); err != ErrNoEndpoint {
		t.Fatalf("empty snapshot: %v", err)
	}
	if err := s.Decide(&d, &Request{}, []Endpoint{{ID: "a"}}); err != ErrNoEndpoint {
		t.Fatalf("nothing ready: %v", err)
	}
	if _, err := r.Scheduler("nope"); err == nil {
		t.Fatal("unknown profile accepted")
	}
}

func TestDecisionExplains(t *testing.T) {
	r := mustRouter(t, "")
	eps := endpoints(3)
	eps[1].Ready = false
	d := decide(t, r, "kv-precise", &Request{Tokens: tokens(100, 1)}, eps)
	if len(d.Scores) != 3 || len(d.Totals) != 3 || len(d.Candidates) != 2 {
		t.Fatalf("scores %d totals %d candidates %d", len(d.Scores), len(d.Totals), len(d.Candidates))
	}
	if !math.IsNaN(d.Totals[1]) || !math.IsNaN(d.Scores[0].Values[1]) {
		t.Fatal("filtered endpoint has scores")
	}
	if d.Scores[0].Plugin != "prefix-precise" || d.Scores[0].Weight != 3 {
		t.Fatalf("first scorer %+v", d.Scores[0])
	}
	s := d.Explain(eps, 2)
	if !strings.Contains(s, "profile=kv-precise") || !strings.Contains(s, "queue:1.00") || strings.Contains(s, "ep-1=") {
		t.Fatalf("explanation %q", s)
	}
}

func TestCallerHashesAreUsed(t *testing.T) {
	r := mustRouter(t, "")
	prompt := tokens(3000, 1)
	store(t, r, "ep-0", prompt, 2000)
	hs := kvblock.MustHasher(16, 0).Hashes(nil, prompt)
	a := decide(t, r, "kv-precise", &Request{Tokens: prompt}, endpoints(1))
	b := decide(t, r, "kv-precise", &Request{Tokens: prompt, BlockHashes: hs}, endpoints(1))
	c := decide(t, r, "kv-precise", &Request{BlockHashes: hs}, endpoints(1))
	if a.PrefixHitTokens != 2000 || b.PrefixHitTokens != 2000 || c.PrefixHitTokens != 2000 {
		t.Fatalf("hits %d %d %d, want 2000", a.PrefixHitTokens, b.PrefixHitTokens, c.PrefixHitTokens)
	}
}

// TestHashCacheDecidesAsWithout runs a conversation's turns through two
// routers in the same state, one deciding with a hash cache: every
// decision, and the hashes it used, must be the same.
func TestHashCacheDecidesAsWithout(t *testing.T) {
	plain, cached := mustRouter(t, ""), mustRouter(t, "")
	hc := cached.NewHashCache(16 << 20)
	conv := tokens(3000, 1)
	for _, r := range []*Router{plain, cached} {
		store(t, r, "ep-1", conv, 2048)
		store(t, r, "ep-2", tokens(4000, 90000), 4000)
	}
	for turn := range 6 {
		conv = append(conv[:len(conv):len(conv)], tokens(900+turn*37, uint32(20000+turn*1000))...)
		for _, profile := range []string{"default", "kv-precise", "prefix-approx"} {
			want := decide(t, plain, profile, &Request{Tokens: conv}, endpoints(3))
			got := decide(t, cached, profile, &Request{Tokens: conv, HashCache: hc}, endpoints(3))
			if got.DecodeID != want.DecodeID || got.PrefixHitTokens != want.PrefixHitTokens ||
				!slices.Equal(got.BlockHashes(), want.BlockHashes()) || len(want.BlockHashes()) != len(conv)/16 {
				t.Fatalf("turn %d, %s: with the cache %s (%d cached), without %s (%d); hashes equal: %v",
					turn, profile, got.DecodeID, got.PrefixHitTokens, want.DecodeID, want.PrefixHitTokens,
					slices.Equal(got.BlockHashes(), want.BlockHashes()))
			}
		}
	}
	if st := hc.Stats(); st.ReusedBlocks == 0 || st.Entries != 1 {
		t.Fatalf("the cache reused %d blocks and holds %d entries; want reuse, one conversation", st.ReusedBlocks, st.Entries)
	}
	// A cache of another router's hashes is not used.
	other := mustRouter(t, "preciseIndex: {blockSize: 16, hashSeed: 7}")
	foreign := other.NewHashCache(16 << 20)
	d := decide(t, plain, "kv-precise", &Request{Tokens: conv, HashCache: foreign}, endpoints(3))
	if !slices.Equal(d.BlockHashes(), kvblock.MustHasher(16, 0).Hashes(nil, conv)) || foreign.Stats().Lookups != 0 {
		t.Fatal("a cache of different hashes was used")
	}
}
