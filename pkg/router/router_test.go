package router

import (
	"fmt"
	"math"
	"math/rand/v2"
	"sync"
	"testing"
	"time"

	"github.com/llmd-kn/llmd-kn/pkg/engine"
)

func TestDeterministicUnderSeed(t *testing.T) {
	run := func(seed uint64) []int {
		r, err := New(nil, Options{Seed: seed})
		if err != nil {
			t.Fatal(err)
		}
		eps := endpoints(8) // identical endpoints: every choice is a tie
		var picks []int
		for _, profile := range []string{"default", "prefix-approx", "least-request", "round-robin", "kv-precise"} {
			s, _ := r.Scheduler(profile)
			for i := range 40 {
				var d Decision
				req := &Request{Model: "m", Tokens: tokens(200+i*13, uint32(i%5)*10000)}
				if err := s.Decide(&d, req, eps); err != nil {
					t.Fatal(err)
				}
				r.Record(&d)
				picks = append(picks, d.Decode)
			}
		}
		return picks
	}
	a, b, c := run(7), run(7), run(8)
	if fmt.Sprint(a) != fmt.Sprint(b) {
		t.Fatal("same seed, different decisions")
	}
	if fmt.Sprint(a) == fmt.Sprint(c) {
		t.Fatal("different seeds, same decisions: the seed is not used")
	}
}

// TestPreciseIndexPredictsTheEngine routes a shared-prefix workload over
// three modelled engines with small caches (so they evict), feeding their KV
// events to the router, and checks that the predicted cached tokens of every
// request equal what the chosen engine then reports.
func TestPreciseIndexPredictsTheEngine(t *testing.T) {
	prof, err := engine.BuiltinProfile(engine.DefaultProfile)
	if err != nil {
		t.Fatal(err)
	}
	r := mustRouter(t, "")
	s, _ := r.Scheduler("kv-precise")
	var engines []*engine.Engine
	eps := endpoints(3)
	for range eps {
		e, err := engine.New(engine.Config{Profile: prof, NumBlocks: 300, Seed: 1})
		if err != nil {
			t.Fatal(err)
		}
		engines = append(engines, e)
	}
	rng := rand.New(rand.NewPCG(5, 6))
	var prefixes [][]uint32
	for i := range 6 {
		prefixes = append(prefixes, tokens(500+rng.IntN(1500), uint32(i)*100000))
	}
	now := time.Unix(0, 0)
	hits, evicted := 0, 0
	for n := range 200 {
		p := prefixes[rng.IntN(len(prefixes))]
		prompt := append(append([]uint32(nil), p[:rng.IntN(len(p)+1)]...), tokens(1+rng.IntN(400), 1<<30+uint32(n)*1000)...)
		var d Decision
		if err := s.Decide(&d, &Request{Tokens: prompt}, eps); err != nil {
			t.Fatal(err)
		}
		e := engines[d.Decode]
		id := fmt.Sprint(n)
		if err := e.Add(now, engine.Request{ID: id, Prompt: prompt, MaxTokens: 4, IgnoreEOS: true}); err != nil {
			t.Fatal(err)
		}
		cached := -1
		for e.Pending() {
			res := e.Step(now)
			now = now.Add(res.Duration + time.Millisecond)
			if err := r.Apply(eps[d.Decode].ID, convert(res.Events)...); err != nil {
				t.Fatal(err)
			}
			for _, ev := range res.Events {
				if ev.Kind == engine.BlockRemoved {
					evicted += len(ev.Hashes)
				}
			}
			for _, o := range res.Outputs {
				if o.ID == id && o.FirstToken {
					cached = o.CachedTokens
				}
			}
		}
		if cached != d.PrefixHitTokens {
			t.Fatalf("request %d on %s: predicted %d cached tokens, the engine had %d", n, d.DecodeID, d.PrefixHitTokens, cached)
		}
		hits += cached
	}
	if hits == 0 || evicted == 0 {
		t.Fatalf("%d tokens hit, %d blocks evicted: the workload does not test the index", hits, evicted)
	}
	t.Logf("%d cached tokens predicted exactly; %d blocks evicted", hits, evicted)
	// The index holds exactly what the engines cache.
	total := 0
	for _, e := range engines {
		total += e.Stats().CachedBlocks
	}
	if got := r.Stats().Precise.Holdings; got != total {
		t.Fatalf("index holds %d blocks, engines cache %d", got, total)
	}
}

func convert(evs []engine.KVEvent) []KVEvent {
	out := make([]KVEvent, len(evs))
	for i, e := range evs {
		out[i] = KVEvent{Kind: KVEventKind(e.Kind), Hashes: e.Hashes, Parent: e.Parent, HasParent: e.HasParent, TokenIDs: e.TokenIDs, BlockSize: e.BlockSize}
	}
	return out
}

// TestConcurrentUse runs decisions, records, KV events, forgets and stats
// at once; run it with -race.
func TestConcurrentUse(t *testing.T) {
	r := mustRouter(t, "")
	eng := newTestEngine(16)
	eps := endpoints(80)
	var wg sync.WaitGroup
	stop := make(chan struct{})
	for g := range 4 {
		wg.Go(func() {
			rng := rand.New(rand.NewPCG(uint64(g), 1))
			profiles := []string{"default", "prefix-approx", "kv-precise", "least-request", "round-robin"}
			var d Decision
			for i := 0; ; i++ {
				select {
				case <-stop:
					return
				default:
				}
				s, _ := r.Scheduler(profiles[i%len(profiles)])
				req := &Request{Model: "m", Tokens: tokens(100+rng.IntN(3000), uint32(rng.IntN(4))*100000)}
				if err := s.Decide(&d, req, eps); err != nil {
					t.Error(err)
					return
				}
				r.Record(&d)
			}
		})
	}
	for g := range 2 {
		wg.Go(func() {
			rng := rand.New(rand.NewPCG(uint64(g), 2))
			for i := 0; ; i++ {
				select {
				case <-stop:
					return
				default:
				}
				id := eps[rng.IntN(len(eps))].ID
				p := tokens(16*(1+rng.IntN(50)), uint32(rng.IntN(8))*1000)
				ev := eng.all(p)
				switch rng.IntN(4) {
				case 2:
					ev = KVEvent{Kind: BlockRemoved, Hashes: ev.Hashes[rng.IntN(len(ev.Hashes)):]}
				case 3:
					ev = KVEvent{Kind: AllBlocksCleared}
				}
				if err := r.Apply(id, ev); err != nil {
					t.Error(err)
					return
				}
				if i%97 == 0 {
					r.Forget(eps[rng.IntN(len(eps))].ID)
				}
				if i%501 == 0 {
					r.Retain([]string{"ep-1", "ep-2"})
				}
				_ = r.Stats()
			}
		})
	}
	time.Sleep(300 * time.Millisecond)
	close(stop)
	wg.Wait()
	// Each index's per-endpoint accounting agrees with its table.
	sum, held := 0, 0
	for _, e := range r.precise.ep {
		sum += e.keys
		held += len(e.held)
	}
	if got := r.precise.t.holdings(); got != sum {
		t.Fatalf("precise table holds %d, endpoints count %d", got, sum)
	}
	refs := 0
	for _, b := range r.precise.blocks {
		refs += int(b.refs)
	}
	if refs != held {
		t.Fatalf("engine blocks count %d references, endpoints hold %d", refs, held)
	}
	sum = 0
	for _, l := range r.approx.lru {
		if l != nil {
			sum += len(l.pos)
		}
	}
	if got := r.approx.t.holdings(); got != sum {
		t.Fatalf("approximate table holds %d, endpoints' lists %d", got, sum)
	}
}

func TestSaturation(t *testing.T) {
	tests := []struct {
		name string
		ep   Endpoint
		want float64
	}{
		{"idle", Endpoint{Ready: true}, 0},
		{"queue dominates", Endpoint{Ready: true, Waiting: 10, KVUsage: 0.4}, 2},
		{"kv dominates", Endpoint{Ready: true, Waiting: 1, KVUsage: 0.6}, 0.75},
		{"stale counts as saturated", Endpoint{Ready: true, Stale: true}, 1},
	}
	var eps []Endpoint
	sum := 0.0
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if got := EndpointSaturation(&tc.ep, SaturationConfig{}); math.Abs(got-tc.want) > 1e-12 {
				t.Fatalf("saturation %v, want %v", got, tc.want)
			}
		})
		eps = append(eps, tc.ep)
		sum += tc.want
	}
	eps = append(eps, Endpoint{Ready: false, Waiting: 100}) // not counted
	if got := PoolSaturation(eps, SaturationConfig{}); math.Abs(got-sum/4) > 1e-12 {
		t.Fatalf("pool %v, want %v", got, sum/4)
	}
	if got := PoolSaturation(nil, SaturationConfig{}); got != 1 {
		t.Fatalf("empty pool %v, want 1 (fail closed)", got)
	}
	if got := EndpointSaturation(&Endpoint{Waiting: 5}, SaturationConfig{QueueThreshold: 10}); got != 0.5 {
		t.Fatalf("custom threshold: %v", got)
	}
}
