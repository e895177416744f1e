package engine

import (
	"fmt"
	"strings"
	"testing"
	"time"
)

// tierRig drives one engine in virtual time.
type tierRig struct {
	t      *testing.T
	e      *Engine
	now    time.Time
	events []KVEvent
}

func newTierRig(t *testing.T, cfg Config) *tierRig {
	t.Helper()
	if cfg.Profile.Name == "" {
		p, err := BuiltinProfile(DefaultProfile)
		if err != nil {
			t.Fatal(err)
		}
		cfg.Profile = p
	}
	e, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return &tierRig{t: t, e: e, now: time.Unix(0, 0)}
}

// run serves one request alone to completion and returns its first
// output and its TTFT.
func (r *tierRig) run(id string, prompt []uint32) (Output, time.Duration) {
	r.t.Helper()
	t0 := r.now
	if err := r.e.Add(t0, Request{ID: id, Prompt: prompt, MaxTokens: 1, IgnoreEOS: true}); err != nil {
		r.t.Fatal(err)
	}
	var first Output
	var ttft time.Duration
	for range 100000 {
		res := r.e.Step(r.now)
		for _, ev := range res.Events {
			ev.Hashes = append([]uint64(nil), ev.Hashes...)
			r.events = append(r.events, ev)
		}
		if res.Idle {
			if res.WakeAt.IsZero() {
				r.t.Fatalf("%s: engine idle with the request pending", id)
			}
			r.now = res.WakeAt
			continue
		}
		r.now = r.now.Add(res.Duration)
		for _, o := range res.Outputs {
			if o.FirstToken {
				first, ttft = o, r.now.Sub(t0)
			}
			if o.Finished {
				return first, ttft
			}
		}
	}
	r.t.Fatalf("%s: did not finish", id)
	return first, ttft
}

func tierPrompt(base, n int) []uint32 {
	p := make([]uint32, n)
	for i := range p {
		p[i] = uint32(base + i)
	}
	return p
}

// blockBytes is one 16-token block of the default profile (2 MiB).
const blockBytes = 16 * 131072

// TestTiersLoadInsteadOfRecompute: a prefix the GPU cache evicted comes
// back from the CPU tier (written through as it was computed), reported as
// external (cached) tokens, in the modelled load time rather than the
// prefill time; from the disk tier once the CPU tier evicted it; and
// without tiers it is recomputed.
func TestTiersLoadInsteadOfRecompute(t *testing.T) {
	const gpuBlocks = 70 // 1,120 tokens: one 1,041-token prompt (66 blocks) at a time
	prompt := tierPrompt(1000, 1041)
	filler := tierPrompt(50000, 1041)
	filler2 := tierPrompt(90000, 1041)
	const loadable = 1040 // 65 whole blocks, leaving the last token

	cases := []struct {
		name      string
		cpu, disk int64
		wantCPU   int
		wantDisk  int
	}{
		{name: "no tiers"},
		{name: "cpu", cpu: 200 * blockBytes, wantCPU: loadable},
		// The CPU tier holds 70 blocks: the fillers push the prompt's
		// blocks to disk.
		{name: "cpu then disk", cpu: 70 * blockBytes, disk: 1000 * blockBytes, wantDisk: loadable},
		{name: "disk only", disk: 1000 * blockBytes, wantDisk: loadable},
	}
	var recompute time.Duration
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			r := newTierRig(t, Config{NumBlocks: gpuBlocks, CPUTierBytes: c.cpu, DiskTierBytes: c.disk})
			r.run("warm", prompt)
			r.run("f1", filler)
			r.run("f2", filler2)
			if n := r.e.CachedPrefix(r.e.BlockHashes(nil, prompt)); n != 0 {
				t.Fatalf("the GPU cache still holds %d blocks of the prompt; the test needs them evicted", n)
			}
			out, ttft := r.run("again", prompt)
			st := r.e.Stats()
			if out.CachedTokens != 0 {
				t.Errorf("GPU prefix hit %d tokens, want 0", out.CachedTokens)
			}
			if got := out.ExternalTokens; got != c.wantCPU+c.wantDisk {
				t.Errorf("external (tier) tokens %d, want %d", got, c.wantCPU+c.wantDisk)
			}
			if st.CPUTierHitTokens != int64(c.wantCPU) || st.DiskTierHitTokens != int64(c.wantDisk) {
				t.Errorf("tier hits cpu %d disk %d, want %d %d", st.CPUTierHitTokens, st.DiskTierHitTokens, c.wantCPU, c.wantDisk)
			}
			p := r.e.Config().Profile
			if c.cpu == 0 && c.disk == 0 {
				recompute = ttft
				return
			}
			load := p.TierLoadTime(c.wantCPU, c.wantDisk)
			tailStep := p.StepTime([]StepInput{{Query: 1041 - loadable, Context: loadable}})
			if want := load + tailStep; ttft != want {
				t.Errorf("TTFT %v, want load %v + the last token's step %v = %v", ttft, load, tailStep, want)
			}
			if recompute > 0 && ttft >= recompute {
				t.Errorf("TTFT from the tiers %v not below recompute %v", ttft, recompute)
			}
		})
	}
}

// TestTierEvents: the tiers publish BlockStored with their medium, the
// same hashes and tokens as the GPU's events; a block the CPU tier evicts
// is removed from CPU and stored on STORAGE, never removed before it was
// stored; a full disk drops blocks with a removal.
func TestTierEvents(t *testing.T) {
	r := newTierRig(t, Config{NumBlocks: 80, CPUTierBytes: 4 * blockBytes, DiskTierBytes: 6 * blockBytes})
	prompt := tierPrompt(7, 16*8+1) // 8 full blocks
	r.run("a", prompt)
	hashes := r.e.BlockHashes(nil, prompt)

	held := map[string]map[uint64]bool{MediumGPU: {}, MediumCPU: {}, MediumStorage: {}}
	for _, ev := range r.events {
		m, ok := held[ev.Medium]
		if !ok {
			t.Fatalf("unknown medium %q", ev.Medium)
		}
		switch ev.Kind {
		case BlockStored:
			if len(ev.TokenIDs) != len(ev.Hashes)*ev.BlockSize || ev.BlockSize != 16 {
				t.Fatalf("%s store: %d tokens for %d hashes of block size %d", ev.Medium, len(ev.TokenIDs), len(ev.Hashes), ev.BlockSize)
			}
			for i, h := range ev.Hashes {
				if m[h] {
					t.Errorf("%s: %x stored twice", ev.Medium, h)
				}
				m[h] = true
				// The tokens are the block's own.
				idx := -1
				for j, hh := range hashes {
					if hh == h {
						idx = j
					}
				}
				if idx < 0 || ev.TokenIDs[i*16] != prompt[idx*16] {
					t.Errorf("%s: block %x carries the wrong tokens", ev.Medium, h)
				}
				if i == 0 && idx > 0 && (!ev.HasParent || ev.Parent != hashes[idx-1]) {
					t.Errorf("%s: block %d's parent %x (has %v), want %x", ev.Medium, idx, ev.Parent, ev.HasParent, hashes[idx-1])
				}
			}
		case BlockRemoved:
			for _, h := range ev.Hashes {
				if !m[h] {
					t.Errorf("%s: %x removed before it was stored", ev.Medium, h)
				}
				delete(m, h)
			}
		}
	}
	// 8 blocks written through: CPU keeps the last 4 used, disk the 4
	// before them; with 6 on disk nothing was dropped yet.
	if len(held[MediumCPU]) != 4 || len(held[MediumStorage]) != 4 || len(held[MediumGPU]) != 8 {
		t.Errorf("held per medium GPU %d CPU %d STORAGE %d, want 8 4 4", len(held[MediumGPU]), len(held[MediumCPU]), len(held[MediumStorage]))
	}
	for i, h := range hashes {
		want := MediumStorage
		if i >= 4 {
			want = MediumCPU
		}
		if !held[want][h] {
			t.Errorf("block %d not on %s", i, want)
		}
	}
	if cpu, disk := r.e.TierBlocks(); cpu != 4 || disk != 4 {
		t.Errorf("TierBlocks %d %d, want 4 4", cpu, disk)
	}
	// 8 more blocks: the disk (6) drops the oldest.
	r.events = r.events[:0]
	r.run("b", tierPrompt(5000, 16*8+1))
	dropped := 0
	for _, ev := range r.events {
		if ev.Kind == BlockRemoved && ev.Medium == MediumStorage {
			dropped += len(ev.Hashes)
		}
	}
	if cpu, disk := r.e.TierBlocks(); cpu != 4 || disk != 6 || dropped != 6 {
		t.Errorf("after 16 blocks: cpu %d disk %d dropped from disk %d, want 4 6 6", cpu, disk, dropped)
	}
}

func TestTierConfigErrors(t *testing.T) {
	p, err := BuiltinProfile(DefaultProfile)
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		cfg  Config
		want string
	}{
		{Config{Profile: p, CPUTierBytes: -1}, "negative"},
		{Config{Profile: p, DiskTierBytes: blockBytes - 1}, "holds no block"},
	} {
		if _, err := New(c.cfg); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("New(cpu %d, disk %d): %v, want %q", c.cfg.CPUTierBytes, c.cfg.DiskTierBytes, err, c.want)
		}
	}
	bad := p
	bad.DiskTierBandwidth = -1
	if err := bad.Validate(); err == nil {
		t.Error("negative diskTierBandwidth accepted")
	}
	// 1,600 tokens of Llama-3.1-8B (200 MiB) from CPU: 1 ms + 8.4 ms.
	if got, want := p.TierLoadTime(1600, 0), time.Duration((0.001+1600*131072/25e9)*float64(time.Second)); got != want {
		t.Errorf("TierLoadTime(1600, 0) = %v, want %v", got, want)
	}
	if p.TierLoadTime(0, 0) != 0 {
		t.Error("TierLoadTime of nothing is not 0")
	}
}

// TestTiersThenStorage: the tiers hold the first 20 blocks of a prompt
// that shared storage holds whole: the request loads those from CPU and
// restores the rest from storage, one after the other.
func TestTiersThenStorage(t *testing.T) {
	r := newTierRig(t, Config{NumBlocks: 70, CPUTierBytes: 200 * blockBytes})
	prompt := tierPrompt(1000, 1041)
	r.run("head", prompt[:20*16+1]) // 20 full blocks of the same prefix
	r.run("f1", tierPrompt(50000, 1041))
	r.run("f2", tierPrompt(90000, 1041))
	if n := r.e.CachedPrefix(r.e.BlockHashes(nil, prompt)); n != 0 {
		t.Fatalf("the GPU cache still holds %d blocks of the prompt", n)
	}
	t0 := r.now
	if err := r.e.Add(t0, Request{ID: "full", Prompt: prompt, MaxTokens: 1, IgnoreEOS: true, StoredTokens: len(prompt)}); err != nil {
		t.Fatal(err)
	}
	var ttft time.Duration
	var out Output
	for ttft == 0 {
		res := r.e.Step(r.now)
		if res.Idle {
			if res.WakeAt.IsZero() {
				t.Fatal("idle with the request pending")
			}
			r.now = res.WakeAt
			continue
		}
		r.now = r.now.Add(res.Duration)
		for _, o := range res.Outputs {
			if o.FirstToken {
				out, ttft = o, r.now.Sub(t0)
			}
		}
	}
	const loadable, fromCPU = 1040, 320
	if out.ExternalTokens != loadable || out.CachedTokens != 0 {
		t.Errorf("external %d cached %d, want %d external", out.ExternalTokens, out.CachedTokens, loadable)
	}
	if st := r.e.Stats(); st.CPUTierHitTokens != fromCPU {
		t.Errorf("CPU tier hits %d, want %d", st.CPUTierHitTokens, fromCPU)
	}
	p := r.e.Config().Profile
	want := p.TierLoadTime(fromCPU, 0) + p.RestoreTime(loadable-fromCPU) + p.StepTime([]StepInput{{Query: 1041 - loadable, Context: loadable}})
	if ttft != want {
		t.Errorf("TTFT %v, want CPU load + storage restore + the last token's step = %v", ttft, want)
	}
}

// TestTiersAfterPreemption: two long generations overflow a small GPU
// cache; the one preempted comes back with what the other evicted loaded
// from the CPU tier instead of recomputed, while what the answers report
// as cached stays that of their first admission (nothing).
func TestTiersAfterPreemption(t *testing.T) {
	counts := func(cpu int64) (Stats, []Output) {
		r := newTierRig(t, Config{NumBlocks: 40, CPUTierBytes: cpu})
		for i, base := range []int{1000, 60000} {
			if err := r.e.Add(r.now, Request{ID: fmt.Sprint("r", i), Prompt: tierPrompt(base, 200), MaxTokens: 300, IgnoreEOS: true}); err != nil {
				t.Fatal(err)
			}
		}
		var done []Output
		for range 100000 {
			res := r.e.Step(r.now)
			if res.Idle {
				if res.WakeAt.IsZero() {
					break
				}
				r.now = res.WakeAt
				continue
			}
			r.now = r.now.Add(res.Duration)
			for _, o := range res.Outputs {
				if o.Finished {
					done = append(done, o)
				}
			}
		}
		return r.e.Stats(), done
	}
	off, doneOff := counts(0)
	on, doneOn := counts(100 * blockBytes)
	if off.Preemptions == 0 || on.Preemptions == 0 {
		t.Fatalf("no preemption (off %d, on %d): the test needs one", off.Preemptions, on.Preemptions)
	}
	if len(doneOff) != 2 || len(doneOn) != 2 {
		t.Fatalf("finished %d and %d requests, want 2", len(doneOff), len(doneOn))
	}
	for _, o := range doneOn {
		if o.CachedTokens != 0 || o.ExternalTokens != 0 {
			t.Errorf("%s reports %d cached, %d external: want the first admission's 0", o.ID, o.CachedTokens, o.ExternalTokens)
		}
	}
	if on.CPUTierHitTokens == 0 {
		t.Error("the preempted request loaded nothing from the CPU tier")
	}
	if on.PromptTokens >= off.PromptTokens {
		t.Errorf("prefill tokens computed with the tier %d, without %d: want fewer", on.PromptTokens, off.PromptTokens)
	}
}
