package router

import (
	"fmt"
	"math"

	"github.com/llmd-kn/llmd-kn/pkg/engine"
)

// KV tiers. A prompt block an endpoint can use sits in one of several
// places: its GPU prefix cache (free), its CPU memory or local disk (the
// offloading connector's tiers, announced in KV events with medium "CPU"
// or "Disk"), or the revision's shared storage (the kvstore manifest,
// announced with Router.ApplyStorage), which every endpoint can restore
// from. Anything else is recomputed.
//
// What a block is worth is a cost model, not a ranking, and the model is
// the engine's own (pkg/engine), so the router predicts what the engine
// model charges: loading tokens from the CPU or disk tier costs the
// tier's latency once plus the KV bytes at its bandwidth
// (Profile.TierLoadTime), from shared storage the bytes at the storage
// bandwidth plus an object latency per round of concurrent GETs
// (Profile.RestoreTime); recomputing a token costs 1/prefill rate. The
// ttft-cost scorer adds the load time to the endpoint's predicted time to
// first token; the prefix-precise scorer weighs a block on medium m by the
// share of its prefill it saves, 1 − (per-token load time, latencies
// amortised over a storage round) × prefill rate (GPU: 1). Both follow the
// engine: a GPU prefix hit first, then the blocks after it that the
// endpoint's CPU tier holds, then its disk tier, unknown media and shared
// storage, each serving the blocks after the previous one's reach (see
// walkTiers), until a block none holds. Unknown media rank as the dearest
// known tier.
//
// Defaults are the profile's (pkg/engine/profiles.yaml, tiers.go): CPU 25
// GB/s + 1 ms (PCIe Gen5 x16 at the connector's per-layer copies), disk 6
// GB/s + 2 ms (one Gen4 NVMe drive), storage 10 GB/s + 10 ms per round of
// 16 GETs of 256 tokens. On Llama-3.1-8B/H100 (128 KiB of KV per token,
// 30.8k prompt tokens/s of dense prefill, 32.5 µs a token) a token costs
// 5.5 µs from CPU, 22.3 µs from disk and 15.5 µs from storage (latencies
// amortised over a 4,096-token storage round): weights 0.83, 0.31 and
// 0.52. So with these bandwidths a long prefix loads faster
// from 10 GB/s storage than from one 6 GB/s drive (a short one does not:
// one 2 ms disk latency against a 10 ms storage round; ttft-cost sees
// both); a GPU hit is worth more than any other medium, every medium more
// than recomputation (TestTierCostsOrder). The cpuBandwidth and
// diskBandwidth parameters, or the profile's cpuTier*/diskTier* fields,
// change the bandwidths; prefix-precise's weights may also be set.

// StorageEndpoint is the pseudo-endpoint under which Router.ApplyStorage
// records what the shared storage holds. No pod can be named so (a NUL
// byte), Retain keeps it, Forget drops it.
const StorageEndpoint = "\x00kvstore"

// TierCosts are the engine's costs of bringing tokens' KV into GPU memory
// from each medium, and of recomputing a token instead.
type TierCosts struct {
	// PerToken are the seconds per token at the medium's bandwidth;
	// Latency the seconds each load from a CPU, disk (or unknown) medium
	// adds once.
	PerToken, Latency [numMedia]float64
	// Shared storage: RoundLatency per round of RoundTokens tokens
	// (storageConcurrency objects of storageObjectTokens).
	RoundLatency float64
	RoundTokens  int
	// PrefillSeconds is a token's dense prefill.
	PrefillSeconds float64
}

// tierParams are the optional plugin parameters that set the tier costs.
type tierParams struct {
	Profile       string   `json:"profile"`
	CPUBandwidth  *float64 `json:"cpuBandwidth"`
	DiskBandwidth *float64 `json:"diskBandwidth"`
}

func orDefault(v, d float64) float64 {
	if v > 0 {
		return v
	}
	return d
}

// TierCostsFromProfile derives the tier costs from an engine profile, the
// CPU and disk bandwidths in bytes/s overriding the profile's (0: the
// profile's, or the engine's defaults). A profile without storage makes a
// stored token cost as much as its prefill (no gain).
func TierCostsFromProfile(p *engine.Profile, cpuBW, diskBW float64) TierCosts {
	cpuBW = orDefault(cpuBW, orDefault(p.CPUTierBandwidth, engine.DefaultCPUTierBandwidth))
	diskBW = orDefault(diskBW, orDefault(p.DiskTierBandwidth, engine.DefaultDiskTierBandwidth))
	r := RatesFromProfile(p, 0, 0, 0)
	kv := p.KVBytesPerToken()
	var c TierCosts
	c.PrefillSeconds = 1 / r.PrefillTokensPerSecond
	c.PerToken[mediumCPU] = kv / cpuBW
	c.Latency[mediumCPU] = orDefault(p.CPUTierLatencySeconds, engine.DefaultCPUTierLatencySeconds)
	c.PerToken[mediumDisk] = kv / diskBW
	c.Latency[mediumDisk] = orDefault(p.DiskTierLatencySeconds, engine.DefaultDiskTierLatencySeconds)
	c.PerToken[mediumStorage] = c.PrefillSeconds
	c.RoundTokens = 1
	if p.HasStorage() {
		c.PerToken[mediumStorage] = kv / p.StorageBandwidth
		c.RoundLatency = p.StorageObjectLatencySeconds
		c.RoundTokens = max(p.StorageObjectTokens, 1) * max(p.StorageConcurrency, 1)
	}
	o := mediumDisk
	if c.amortised(mediumStorage) > c.amortised(mediumDisk) {
		o = mediumStorage
	}
	c.PerToken[mediumOther], c.Latency[mediumOther] = c.PerToken[o], c.Latency[o]
	if o == mediumStorage {
		c.Latency[mediumOther] = c.RoundLatency
	}
	return c
}

// amortised is a token's load time from medium m, its latencies spread
// over a storage round's tokens.
func (c *TierCosts) amortised(m medium) float64 {
	if m == mediumStorage {
		return c.PerToken[m] + c.RoundLatency/float64(c.RoundTokens)
	}
	return c.PerToken[m] + c.Latency[m]/float64(c.RoundTokens)
}

// Load is the seconds to load tokens[m] tokens from each medium m (the
// GPU's are free).
func (c *TierCosts) Load(tokens *[numMedia]int) float64 {
	var sec float64
	for m, n := range tokens {
		if n <= 0 || medium(m) == mediumGPU {
			continue
		}
		sec += float64(n) * c.PerToken[m]
		if medium(m) == mediumStorage {
			rt := max(c.RoundTokens, 1)
			sec += float64((n+rt-1)/rt) * c.RoundLatency
		} else {
			sec += c.Latency[m]
		}
	}
	return sec
}

// Weights are the share of a token's prefill each medium saves, in [0, 1].
func (c TierCosts) Weights() [numMedia]float64 {
	var w [numMedia]float64
	w[mediumGPU] = 1
	for m := mediumCPU; m < numMedia; m++ {
		if c.PrefillSeconds > 0 {
			w[m] = clamp01(1 - c.amortised(m)/c.PrefillSeconds)
		}
	}
	return w
}

func (tp *tierParams) costs() (TierCosts, error) {
	name := tp.Profile
	if name == "" {
		name = engine.DefaultProfile
	}
	prof, err := engine.BuiltinProfile(name)
	if err != nil {
		return TierCosts{}, cfgErr("profile", "%v", err)
	}
	var cpu, disk float64
	for _, b := range []struct {
		name string
		v    *float64
		out  *float64
	}{{"cpuBandwidth", tp.CPUBandwidth, &cpu}, {"diskBandwidth", tp.DiskBandwidth, &disk}} {
		if b.v == nil {
			continue
		}
		if !(*b.v > 0) || math.IsInf(*b.v, 0) {
			return TierCosts{}, cfgErr(b.name, "must be a finite number of bytes/s > 0, got %v", *b.v)
		}
		*b.out = *b.v
	}
	return TierCostsFromProfile(&prof, cpu, disk), nil
}

// tierOrder is the order the non-GPU media serve the blocks after the GPU
// prefix in: the endpoint's own tiers (vLLM's offloading connector), then
// shared storage.
var tierOrder = [...]medium{mediumCPU, mediumDisk, mediumOther, mediumStorage}

// tierBlocks counts, per medium, the router blocks of a prompt an endpoint
// can use beyond its GPU prefix.
type tierBlocks [numMedia]int32

func (t *tierBlocks) total() int32 {
	var n int32
	for _, v := range t {
		n += v
	}
	return n
}

// walkTiers fills c.tiers: for each endpoint, after its GPU prefix
// (c.preLen), the blocks it would load from each other medium. As for the
// GPU, each medium's holdings are taken as prefix-closed (an engine holds
// a block's prefix with it; storage keeps whole chains from their root), so
// one prefix run per medium (the prefixer's few lookups, not one per
// block) says how far the prompt is held there; the blocks after the GPU
// prefix then come from the endpoint's CPU tier as far as it holds them,
// then its disk tier, unknown media, and shared storage, each taking the
// blocks after the previous one's reach (vLLM's connectors in turn). The
// caller holds p.mu for reading.
func (c *cycle) walkTiers(p *preciseIndex, limit int) {
	c.tiers = grow(c.tiers, len(c.eps))
	clear(c.tiers)
	c.tiered = false
	if !p.hasTiers() {
		return
	}
	c.tiered = true
	var stored int32
	if s := c.r.slots.lookup(StorageEndpoint); s >= 0 {
		if t := p.tiers[mediumStorage]; t != nil && int(s) < 64*t.w {
			c.slotRuns(t, func(_ int, slot int32) bool { return slot == s }, limit, true)
			stored = c.out[s]
		}
	}
	c.runs = grow(c.runs, len(c.eps))
	clear(c.runs)
	for _, m := range tierOrder[:3] {
		t := p.tiers[m]
		if t == nil || t.len() == 0 {
			continue
		}
		c.slotRuns(t, func(i int, _ int32) bool { return c.preSeen[i] }, limit, false)
		for i, s := range c.slots {
			if s >= 0 && int(s) < 64*t.w && c.preSeen[i] {
				c.runs[i][m] = c.out[s]
			}
		}
	}
	for i := range c.eps {
		end := c.preLen[i]
		for _, m := range tierOrder {
			l := c.runs[i][m]
			if m == mediumStorage {
				l = stored
			}
			if l > end {
				c.tiers[i][m] = l - end
				end = l
			}
		}
	}
}

// slotRuns runs the prefixer over table t for the slots of the endpoints
// ok selects (or, with bySlot, the slots ok selects among all), leaving
// each run, capped at limit, in c.out by slot.
func (c *cycle) slotRuns(t *holderTable, ok func(i int, s int32) bool, limit int, bySlot bool) {
	c.want = grow(c.want, t.w)
	clear(c.want)
	if bySlot {
		for s := range int32(64 * t.w) {
			if ok(-1, s) {
				c.want[s>>6] |= 1 << (s & 63)
			}
		}
	} else {
		for i, s := range c.slots {
			if s >= 0 && int(s) < 64*t.w && ok(i, s) {
				c.want[s>>6] |= 1 << (s & 63)
			}
		}
	}
	c.out = grow(c.out, 64*t.w)
	clear(c.out)
	if isZero(c.want) {
		return
	}
	c.pfx.t, c.pfx.keys, c.pfx.out = t, c.preHashes, c.out
	c.pfx.run(c.want)
	for s := range c.out {
		c.out[s] = min(c.out[s], int32(limit))
	}
}

// loadSeconds is the modelled time to load endpoint i's tier blocks.
func (c *cycle) loadSeconds(i int, costs *TierCosts) float64 {
	if !c.tiered {
		return 0
	}
	var toks [numMedia]int
	for m, n := range c.tiers[i] {
		toks[m] = int(n) * c.r.cfg.PreciseIndex.BlockSize
	}
	return costs.Load(&toks)
}

func (m medium) String() string {
	switch m {
	case mediumGPU:
		return "GPU"
	case mediumCPU:
		return "CPU"
	case mediumDisk:
		return "Disk"
	case mediumStorage:
		return "storage"
	}
	return fmt.Sprintf("other(%d)", uint8(m))
}
