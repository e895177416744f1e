package router

import (
	"fmt"
	"math/rand/v2"
	"runtime"
	"testing"

	"github.com/llmd-kn/llmd-kn/pkg/engine"
	"github.com/llmd-kn/llmd-kn/pkg/kvblock"
)

// benchFixture is a 64-endpoint pool serving a shared-prefix workload: a
// 2k-token system prompt every endpoint holds, 16 long documents of 8k to
// 24k tokens each held (at various depths) by a few endpoints, and both
// indexes populated about as they would be after a while of traffic.
type benchFixture struct {
	r    *Router
	eps  []Endpoint
	req  Request // 32k tokens: system prompt, a document, a question
	reqH Request // the same with the engine block hashes precomputed
}

func newBenchFixture(tb testing.TB, nEndpoints int) *benchFixture {
	tb.Helper()
	r, err := New(nil, Options{Seed: 1})
	if err != nil {
		tb.Fatal(err)
	}
	rng := rand.New(rand.NewPCG(1, 2))
	prof, _ := engine.BuiltinProfile(engine.DefaultProfile)
	rates := RatesFromProfile(&prof, 0, 32, 4096)
	f := &benchFixture{r: r}
	for i := range nEndpoints {
		f.eps = append(f.eps, Endpoint{
			ID: fmt.Sprintf("pod-%02d", i), Address: fmt.Sprintf("10.0.0.%d:8000", i),
			Ready: true, Waiting: rng.IntN(8), Running: 8 + rng.IntN(48),
			KVUsage: rng.Float64() * 0.9, BlockSize: 16, NumBlocks: 28000,
			InFlight: rng.IntN(40), InFlightTokens: rng.IntN(20000), Rates: rates,
		})
	}
	tok := func(n int) []uint32 {
		t := make([]uint32, n)
		for i := range t {
			t[i] = rng.Uint32N(128000)
		}
		return t
	}
	system := tok(2048)
	var docs [][]uint32
	for range 16 {
		docs = append(docs, tok(8192+rng.IntN(16384)))
	}
	hasher := kvblock.MustHasher(16, 0)
	eng := newTestEngine(16)
	for d, doc := range docs {
		prompt := append(append(append([]uint32(nil), system...), doc...), tok(512)...)
		nb := len(prompt) / 16
		for k := range 4 {
			e := f.eps[(d*4+k*7)%nEndpoints]
			held := nb * (k + 1) / 4
			if err := r.Apply(e.ID, eng.stored(prompt, 0, held)); err != nil {
				tb.Fatal(err)
			}
			// The approximate index learns the same placements.
			var dec Decision
			s, _ := r.Scheduler("prefix-approx")
			one := []Endpoint{e}
			if err := s.Decide(&dec, &Request{Model: "m", Tokens: prompt[:held*16]}, one); err != nil {
				tb.Fatal(err)
			}
			r.Record(&dec)
		}
	}
	for _, e := range f.eps {
		// Every endpoint holds the system prompt and some private blocks.
		priv := eng.all(append(append([]uint32(nil), system...), tok(4096)...))
		if err := r.Apply(e.ID, priv); err != nil {
			tb.Fatal(err)
		}
	}
	q := append(append([]uint32(nil), system...), docs[3]...)
	q = append(q, tok(32768-len(q))...)
	f.req = Request{Model: "m", Tokens: q}
	f.reqH = Request{Model: "m", Tokens: q, BlockHashes: hasher.Hashes(nil, q)}
	return f
}

var builtinProfiles = []string{"round-robin", "least-request", "prefix-approx", "kv-precise", "default"}

// BenchmarkDecide32kx64 is one decision for a 32k-token prompt over 64
// endpoints, hashing the prompt inside the loop (tokens only, as a caller
// without block hashes would), per built-in profile.
func BenchmarkDecide32kx64(b *testing.B) {
	f := newBenchFixture(b, 64)
	for _, name := range builtinProfiles {
		b.Run(name, func(b *testing.B) {
			s, err := f.r.Scheduler(name)
			if err != nil {
				b.Fatal(err)
			}
			var d Decision
			b.ReportAllocs()
			for b.Loop() {
				if err := s.Decide(&d, &f.req, f.eps); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// BenchmarkDecide32kx64Prehashed is the same with the request's engine block
// hashes computed by the caller (the activator hashes once per request).
func BenchmarkDecide32kx64Prehashed(b *testing.B) {
	f := newBenchFixture(b, 64)
	for _, name := range builtinProfiles {
		b.Run(name, func(b *testing.B) {
			s, _ := f.r.Scheduler(name)
			var d Decision
			b.ReportAllocs()
			for b.Loop() {
				if err := s.Decide(&d, &f.reqH, f.eps); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// BenchmarkHash32k is the hashing share of a decision.
func BenchmarkHash32k(b *testing.B) {
	f := newBenchFixture(b, 1)
	h := kvblock.MustHasher(16, 0)
	dst := make([]uint64, 0, 2048)
	for b.Loop() {
		dst = h.Hashes(dst[:0], f.req.Tokens)
	}
}

// BenchmarkRecord32k is Router.Record of a 32k-token prompt on an endpoint
// that already holds most of it (the steady state).
func BenchmarkRecord32k(b *testing.B) {
	f := newBenchFixture(b, 64)
	s, _ := f.r.Scheduler("prefix-approx")
	var d Decision
	if err := s.Decide(&d, &f.req, f.eps); err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	for b.Loop() {
		f.r.Record(&d)
	}
}

// BenchmarkIndexMemory fills both indexes as 64 endpoints with full caches
// would (llm-d's default 31,250 approximate blocks each; 28,000 engine
// blocks each in the precise index, a Llama-3.1-8B's capacity on one H100,
// half of them shared prefixes) and reports their size: the estimate from
// Stats and the heap actually retained.
func BenchmarkIndexMemory(b *testing.B) {
	for b.Loop() {
		var before, after runtime.MemStats
		runtime.GC()
		runtime.ReadMemStats(&before)
		r, _ := New(nil, Options{Seed: 1})
		eng := newTestEngine(16)
		randTokens := func(n int) []uint32 {
			t := make([]uint32, n)
			for i := range t {
				t[i] = rand.Uint32N(128000)
			}
			return t
		}
		shared := eng.all(randTokens(14000 * 16))
		keys := make([]uint64, 31250)
		for e := range 64 {
			id := fmt.Sprintf("pod-%d", e)
			own := eng.all(randTokens(14000 * 16))
			if err := r.Apply(id, shared, own); err != nil {
				b.Fatal(err)
			}
			for i := range keys {
				keys[i] = rand.Uint64()
			}
			d := Decision{DecodeID: id, approxKeys: keys, decodeCap: 31250, recordApprox: true}
			r.Record(&d)
		}
		runtime.GC()
		runtime.ReadMemStats(&after)
		st := r.Stats()
		b.ReportMetric(float64(st.Approximate.Bytes)/(1<<20), "approx-MiB")
		b.ReportMetric(float64(st.Approximate.Bytes)/float64(st.Approximate.Holdings), "approx-B/holding")
		b.ReportMetric(float64(st.Precise.Bytes)/(1<<20), "precise-MiB")
		b.ReportMetric(float64(st.Precise.Bytes)/float64(st.Precise.Holdings), "precise-B/holding")
		b.ReportMetric(float64(after.HeapAlloc-before.HeapAlloc)/(1<<20), "heap-MiB")
		runtime.KeepAlive(r)
	}
}
