package router

import (
	"fmt"
	"math/rand/v2"
	"runtime"
	"slices"
	"syscall"
	"testing"
	"time"

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
	return newBenchFixtureN(tb, nEndpoints, 32768)
}

// newBenchFixtureN is newBenchFixture with a prompt of promptTokens tokens.
func newBenchFixtureN(tb testing.TB, nEndpoints, promptTokens int) *benchFixture {
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
			ID: fmt.Sprintf("pod-%02d", i), Address: fmt.Sprintf("10.0.%d.%d:8000", i/256, i%256),
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
	q = append(q, tok(promptTokens-len(q))...)
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

// BenchmarkDecide128kx256 is one decision for a 128k-token prompt over 256
// endpoints, hashing included (no cache: every block hashed).
func BenchmarkDecide128kx256(b *testing.B) {
	f := newBenchFixtureN(b, 256, 131072)
	for _, name := range []string{"least-request", "prefix-approx", "kv-precise", "default"} {
		b.Run(name, func(b *testing.B) {
			s, _ := f.r.Scheduler(name)
			var d Decision
			b.ReportAllocs()
			defer reportCPU(b)()
			for b.Loop() {
				if err := s.Decide(&d, &f.req, f.eps); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// BenchmarkDecide128kx256Prehashed is the same with the hashes given.
func BenchmarkDecide128kx256Prehashed(b *testing.B) {
	f := newBenchFixtureN(b, 256, 131072)
	for _, name := range []string{"prefix-approx", "kv-precise", "default"} {
		b.Run(name, func(b *testing.B) {
			s, _ := f.r.Scheduler(name)
			var d Decision
			b.ReportAllocs()
			defer reportCPU(b)()
			for b.Loop() {
				if err := s.Decide(&d, &f.reqH, f.eps); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// BenchmarkHash128k is the hashing share of an uncached 128k decision.
func BenchmarkHash128k(b *testing.B) {
	f := newBenchFixtureN(b, 1, 131072)
	h := kvblock.MustHasher(16, 0)
	dst := make([]uint64, 0, 8192)
	for b.Loop() {
		dst = h.Hashes(dst[:0], f.req.Tokens)
	}
}

// BenchmarkDecide128kx256Cached is a decision for the next turn of a
// conversation whose earlier turns (128k tokens) the caller's hash cache
// holds: each iteration is a new turn of 256 tokens, so only those are
// hashed; the rest is compared with the cached turn's tokens and reused.
func BenchmarkDecide128kx256Cached(b *testing.B) {
	f := newBenchFixtureN(b, 256, 131072)
	const turn, turns = 256, 1024
	rng := rand.New(rand.NewPCG(5, 5))
	conv := append([]uint32(nil), f.req.Tokens...)
	for range turn * turns {
		conv = append(conv, rng.Uint32N(128000))
	}
	// Each request has its own token array, as parsed requests do: turns
	// alternate between two copies, so the cached turn's tokens are
	// compared with another array's, not with themselves.
	convs := [2][]uint32{conv, slices.Clone(conv)}
	for _, name := range []string{"prefix-approx", "kv-precise", "default"} {
		b.Run(name, func(b *testing.B) {
			s, _ := f.r.Scheduler(name)
			hc := f.r.NewHashCache(64 << 20)
			var d Decision
			req := Request{Model: "m", Tokens: f.req.Tokens, HashCache: hc}
			if err := s.Decide(&d, &req, f.eps); err != nil {
				b.Fatal(err)
			}
			i := 0
			b.ReportAllocs()
			defer reportCPU(b)()
			for b.Loop() {
				i = i%turns + 1
				req.Tokens = convs[i%2][:len(f.req.Tokens)+i*turn]
				if err := s.Decide(&d, &req, f.eps); err != nil {
					b.Fatal(err)
				}
			}
			st := hc.Stats()
			b.ReportMetric(float64(st.HashedBlocks)/float64(st.Lookups), "hashed-blocks/op")
		})
	}
}

// reportCPU reports the process's CPU time per op (GC included) when the
// returned function runs: on a shared machine, wall time per op measures
// the neighbours too.
func reportCPU(b *testing.B) func() {
	c0 := cpuNow()
	return func() { b.ReportMetric(float64((cpuNow()-c0).Nanoseconds())/1e3/float64(b.N), "cpu-µs/op") }
}

func cpuNow() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// BenchmarkDecide32kx64Tiers is BenchmarkDecide32kx64Prehashed with the
// tiers in use: shared storage holds the request's whole prompt and 16
// endpoints hold it on their CPU tier, so every endpoint's walk goes past
// its GPU prefix to the prompt's end.
func BenchmarkDecide32kx64Tiers(b *testing.B) {
	f := newBenchFixture(b, 64)
	eng := newTestEngine(16)
	if err := f.r.ApplyStorage(eng.all(f.req.Tokens)); err != nil {
		b.Fatal(err)
	}
	for i := 0; i < 64; i += 4 {
		ev := eng.all(f.req.Tokens)
		ev.Medium = "CPU"
		if err := f.r.Apply(f.eps[i].ID, ev); err != nil {
			b.Fatal(err)
		}
	}
	for _, name := range []string{"kv-precise", "default"} {
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
