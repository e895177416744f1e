package router

import (
	"math"
	"testing"

	"github.com/llmd-kn/llmd-kn/pkg/engine"
)

// Every built-in profile ranks the media as the engine's costs imply: a
// GPU hit is worth more than CPU, CPU more than disk and shared storage,
// every medium more than recomputation; unknown media no more than any
// known one. Disk against storage depends on the bandwidths: with the
// profiles' 6 GB/s drive and 10 GB/s storage, storage wins per token; a
// drive of 12 GB/s turns it around.
func TestTierCostsOrder(t *testing.T) {
	for _, name := range engine.BuiltinProfileNames() {
		p, err := engine.BuiltinProfile(name)
		if err != nil {
			t.Fatal(err)
		}
		c := TierCostsFromProfile(&p, 0, 0)
		w := c.Weights()
		t.Logf("%s: load µs/token cpu %.2f disk %.2f storage %.2f, prefill %.2f; weights cpu %.2f disk %.2f other %.2f storage %.2f",
			name, 1e6*c.amortised(mediumCPU), 1e6*c.amortised(mediumDisk), 1e6*c.amortised(mediumStorage), 1e6*c.PrefillSeconds,
			w[mediumCPU], w[mediumDisk], w[mediumOther], w[mediumStorage])
		if !(w[mediumGPU] == 1 && 1 > w[mediumCPU] && w[mediumCPU] > w[mediumDisk] && w[mediumCPU] > w[mediumStorage] && w[mediumDisk] > 0 && w[mediumStorage] > 0) {
			t.Errorf("%s: weights %v: want 1 > cpu > disk, storage > 0", name, w)
		}
		if w[mediumOther] > w[mediumDisk] || w[mediumOther] > w[mediumStorage] {
			t.Errorf("%s: unknown media weigh %v, more than a known tier (%v)", name, w[mediumOther], w)
		}
		if fast := TierCostsFromProfile(&p, 0, 12e9).Weights(); name == engine.DefaultProfile && !(fast[mediumDisk] > fast[mediumStorage]) {
			t.Errorf("%s: a 12 GB/s drive weighs %v, not above storage's %v", name, fast[mediumDisk], fast[mediumStorage])
		}
	}
}

// tierFixture: a 64-block prompt (1,025 tokens: the last is always
// computed; long enough that its prefill outlasts a decode step) and an
// engine announcing it.
type tierFixture struct {
	eng    testEngine
	prompt []uint32
	req    *Request
}

func newTierFixture() tierFixture {
	p := tokens(16*tierBlocksN+1, 1)
	return tierFixture{eng: newTestEngine(16), prompt: p, req: &Request{Model: "m", Tokens: p}}
}

func (f tierFixture) on(medium string, from, to int) KVEvent {
	ev := f.eng.stored(f.prompt, from, to)
	ev.Medium = medium
	return ev
}

func scoreOf(d *Decision, plugin string, i int) float64 {
	for _, s := range d.Scores {
		if s.Plugin == plugin {
			return s.Values[i]
		}
	}
	return math.NaN()
}

const tierBlocksN = 64

func TestTierScoring(t *testing.T) {
	p, _ := engine.BuiltinProfile(engine.DefaultProfile)
	costs := TierCostsFromProfile(&p, 0, 0)
	w := costs.Weights()
	const blocks, all = tierBlocksN, 16 * tierBlocksN
	cases := []struct {
		name   string
		events []KVEvent // of endpoint "x"
		stored bool      // the shared storage holds the whole prompt
		hit    int       // predicted cached tokens on x
		score  float64   // prefix-precise on x
		tiers  tierBlocks
	}{
		{"nothing", nil, false, 0, 0, tierBlocks{}},
		{"GPU", []KVEvent{newTierFixture().on("GPU", 0, blocks)}, false, all, 1, tierBlocks{}},
		{"GPU, empty medium", []KVEvent{newTierFixture().on("", 0, blocks)}, false, all, 1, tierBlocks{}},
		{"CPU", []KVEvent{newTierFixture().on("CPU", 0, blocks)}, false, all, w[mediumCPU], tierBlocks{mediumCPU: blocks}},
		{"Disk", []KVEvent{newTierFixture().on("Disk", 0, blocks)}, false, all, w[mediumDisk], tierBlocks{mediumDisk: blocks}},
		{"STORAGE (vLLM's tier below CPU) is the disk tier", []KVEvent{newTierFixture().on("STORAGE", 0, blocks)}, false, all, w[mediumDisk], tierBlocks{mediumDisk: blocks}},
		{"unknown medium: lowest tier", []KVEvent{newTierFixture().on("NVMe-oF", 0, blocks)}, false, all, w[mediumOther], tierBlocks{mediumOther: blocks}},
		{"storage only (no KV events of its own)", nil, true, all, w[mediumStorage], tierBlocks{mediumStorage: blocks}},
		{"GPU and CPU copies: GPU counts", []KVEvent{newTierFixture().on("GPU", 0, blocks), newTierFixture().on("CPU", 0, blocks)}, true, all, 1, tierBlocks{}},
		{"GPU head, CPU middle, storage tail",
			[]KVEvent{newTierFixture().on("GPU", 0, 16), newTierFixture().on("CPU", 0, 40)}, true, all,
			(16 + 24*w[mediumCPU] + 24*w[mediumStorage]) / blocks, tierBlocks{mediumCPU: 24, mediumStorage: 24}},
		{"GPU head, CPU middle, nothing after",
			[]KVEvent{newTierFixture().on("GPU", 0, 16), newTierFixture().on("CPU", 0, 40)}, false, 16 * 40,
			(16 + 24*w[mediumCPU]) / blocks, tierBlocks{mediumCPU: 24}},
		{"the cheapest tier holding each block",
			[]KVEvent{newTierFixture().on("GPU", 0, 16), newTierFixture().on("Disk", 0, blocks), newTierFixture().on("CPU", 0, 20)}, true, all,
			(16 + 4*w[mediumCPU] + 44*w[mediumDisk]) / blocks, tierBlocks{mediumCPU: 4, mediumDisk: 44}},
		// A medium's holdings count from the prompt's first block (they are
		// prefix-closed, as the GPU's): a tail held alone is not used.
		{"a block no tier holds ends the hit",
			[]KVEvent{newTierFixture().on("GPU", 0, 16), newTierFixture().on("CPU", 0, 20), newTierFixture().on("Disk", 21, blocks)}, false, 16 * 20,
			(16 + 4*w[mediumCPU]) / blocks, tierBlocks{mediumCPU: 4}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			f := newTierFixture()
			r := mustRouter(t, "")
			if tc.stored {
				if err := r.ApplyStorage(f.eng.all(f.prompt)); err != nil {
					t.Fatal(err)
				}
			}
			if err := r.Apply("x", tc.events...); err != nil {
				t.Fatal(err)
			}
			eps := []Endpoint{{ID: "x", Ready: true, BlockSize: 16}}
			d := decide(t, r, "kv-precise", f.req, eps)
			if d.PrefixHitTokens != tc.hit {
				t.Errorf("predicted cached %d, want %d", d.PrefixHitTokens, tc.hit)
			}
			if got := scoreOf(&d, "prefix-precise", 0); math.Abs(got-tc.score) > 1e-9 {
				t.Errorf("prefix-precise %.4f, want %.4f", got, tc.score)
			}
			// The ttft-cost scorer charges exactly the tiers' load time.
			base := mustRouter(t, "")
			d0 := decide(t, base, "ttft-cost", &Request{Model: "m", Tokens: f.prompt}, eps)
			dt := decide(t, r, "ttft-cost", f.req, eps)
			var toks [numMedia]int
			for m, n := range tc.tiers {
				toks[m] = int(n) * 16
			}
			load := costs.Load(&toks)
			if dt.PrefixHitTokens != tc.hit {
				t.Errorf("ttft-cost: predicted cached %d, want %d", dt.PrefixHitTokens, tc.hit)
			}
			if tc.hit > 0 && !(dt.PredictedTTFT < d0.PredictedTTFT) {
				t.Errorf("ttft with %d cached %.6f s, not below recompute %.6f s", tc.hit, dt.PredictedTTFT, d0.PredictedTTFT)
			}
			if load > 0 {
				// Same prediction as a GPU hit of the same length, plus the load.
				g := mustRouter(t, "")
				if err := g.Apply("x", f.on("GPU", 0, tc.hit/16)); err != nil {
					t.Fatal(err)
				}
				dg := decide(t, g, "ttft-cost", f.req, eps)
				if got := dt.PredictedTTFT - dg.PredictedTTFT; math.Abs(got-load) > 1e-12 {
					t.Errorf("ttft over a GPU hit: +%.9f s, want the load time %.9f s", got, load)
				}
			}
		})
	}
}

// Among endpoints holding the same prompt on different media, both the
// llm-d-style profile and ours pick by tier.
func TestTierRanking(t *testing.T) {
	f := newTierFixture()
	r := mustRouter(t, "")
	if err := r.ApplyStorage(f.eng.all(f.prompt)); err != nil {
		t.Fatal(err)
	}
	media := []string{"", "GPU", "CPU", "STORAGE", "weird"}
	eps := make([]Endpoint, len(media))
	for i, m := range media {
		eps[i] = Endpoint{ID: "ep-" + m, Ready: true, BlockSize: 16}
		if m != "" {
			if err := r.Apply(eps[i].ID, f.on(m, 0, tierBlocksN)); err != nil {
				t.Fatal(err)
			}
		}
	}
	// ep- (no events) only has shared storage. Order of worth with the
	// default profile (TestTierCostsOrder): GPU, CPU, shared storage, the
	// disk tier (vLLM's "STORAGE" medium), unknown media (as the dearest).
	want := []int{1, 2, 0, 3, 4}
	for _, profile := range []string{"kv-precise", "ttft-cost", "default"} {
		d := decide(t, r, profile, f.req, eps)
		for k := 1; k < len(want); k++ {
			a, b := want[k-1], want[k]
			if !(d.Totals[a] > d.Totals[b]) && !(b == 4 && d.Totals[a] >= d.Totals[b]) {
				t.Errorf("%s: %s total %.4f not above %s's %.4f (%s)", profile, eps[a].ID, d.Totals[a], eps[b].ID, d.Totals[b], d.Explain(eps, 5))
			}
		}
		if d.DecodeID != "ep-GPU" {
			t.Errorf("%s: picked %s", profile, d.DecodeID)
		}
	}
}

func TestTierEventsAndStorage(t *testing.T) {
	f := newTierFixture()
	r := mustRouter(t, "")
	eps := []Endpoint{{ID: "x", Ready: true, BlockSize: 16}}
	hashes := f.eng.hashes(f.prompt)
	steps := []struct {
		name string
		do   func() error
		hit  int
	}{
		{"CPU tier", func() error { return r.Apply("x", f.on("CPU", 0, 64)) }, 1024},
		{"GPU copy of the head", func() error { return r.Apply("x", f.on("GPU", 0, 3)) }, 1024},
		{"CPU copy of the tail removed", func() error {
			return r.Apply("x", KVEvent{Kind: BlockRemoved, Hashes: hashes[6:64], Medium: "CPU"})
		}, 96},
		{"a GPU removal leaves CPU", func() error {
			return r.Apply("x", KVEvent{Kind: BlockRemoved, Hashes: hashes[0:3], Medium: "GPU"})
		}, 96},
		{"storage holds it all", func() error { return r.ApplyStorage(f.eng.all(f.prompt)) }, 1024},
		{"storage is kept by Retain", func() error { r.Retain([]string{"x"}); return nil }, 1024},
		{"storage drops the tail", func() error {
			return r.ApplyStorage(KVEvent{Kind: BlockRemoved, Hashes: hashes[8:64]})
		}, 128},
		{"endpoint cleared: storage still", func() error { return r.Apply("x", KVEvent{Kind: AllBlocksCleared}) }, 128},
		{"storage forgotten", func() error { r.Forget(StorageEndpoint); return nil }, 0},
	}
	for _, st := range steps {
		if err := st.do(); err != nil {
			t.Fatalf("%s: %v", st.name, err)
		}
		if got := decide(t, r, "kv-precise", f.req, eps).PrefixHitTokens; got != st.hit {
			t.Errorf("%s: predicted cached %d, want %d", st.name, got, st.hit)
		}
	}
	if err := r.Apply(StorageEndpoint, f.on("GPU", 0, 1)); err == nil {
		t.Error("Apply accepted the storage pseudo-endpoint's id")
	}
	// AllBlocksCleared cleared every medium.
	if st := r.PreciseEndpoint("x"); st.CPUBlocks != 0 || st.GPUBlocks != 0 || st.TierKeys != 0 || st.Keys != 0 {
		t.Errorf("after a clear: %+v", st)
	}
}

// After a scale from zero the new replicas have no KV events yet and
// shared storage holds the prefix families: families spread over the cold
// replicas (the load term breaks the tie storage leaves), and once a
// replica has restored a family (or prefetched it: GPU events), that
// family's requests go to it.
func TestStorageFamiliesAfterScaleFromZero(t *testing.T) {
	eng := newTestEngine(16)
	const families = 4
	sys := make([][]uint32, families)
	r := mustRouter(t, "")
	for f := range sys {
		sys[f] = tokens(2048, uint32(1+f*100000))
		if err := r.ApplyStorage(eng.all(sys[f])); err != nil {
			t.Fatal(err)
		}
	}
	req := func(f, turn int) *Request {
		return &Request{Model: "m", Tokens: append(append([]uint32(nil), sys[f]...), tokens(100, uint32(900000+f*1000+turn*10))...)}
	}
	for _, profile := range []string{"default", "ttft-cost"} {
		t.Run(profile, func(t *testing.T) {
			eps := endpoints(2)
			owner := make([]int, families)
			perEp := make([]int, len(eps))
			for f := range families {
				d := decide(t, r, profile, req(f, 0), eps)
				if d.PrefixHitTokens < 2048 {
					t.Errorf("family %d: predicted cached %d, want the stored 2048", f, d.PrefixHitTokens)
				}
				// The caller's accounting of what it sent.
				eps[d.Decode].InFlight++
				eps[d.Decode].InFlightTokens += d.PromptTokens - d.PrefixHitTokens
				owner[f] = d.Decode
				perEp[d.Decode]++
			}
			if perEp[0] != 2 || perEp[1] != 2 {
				t.Errorf("families per cold replica %v, want 2 and 2", perEp)
			}
			// The replicas restored their families: GPU events.
			rr := mustRouter(t, "")
			for f := range sys {
				if err := rr.ApplyStorage(eng.all(sys[f])); err != nil {
					t.Fatal(err)
				}
				if err := rr.Apply(eps[owner[f]].ID, eng.all(sys[f])); err != nil {
					t.Fatal(err)
				}
			}
			for f := range families {
				if d := decide(t, rr, profile, req(f, 1), eps); d.Decode != owner[f] {
					t.Errorf("family %d's next turn went to %s, its restoring replica is %s (%s)", f, d.DecodeID, eps[owner[f]].ID, d.Explain(eps, 2))
				}
			}
		})
	}
}
