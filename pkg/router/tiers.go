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
// What a block is worth is a cost model, not a ranking: bringing a token's
// KV from tier m costs LoadSeconds[m] (its bytes over the tier's bandwidth,
// plus object latency for storage); recomputing it costs 1/prefill rate.
// The ttft-cost scorer adds the load time to the endpoint's predicted time
// to first token; the prefix-precise scorer weighs a block on tier m by the
// share of its prefill it saves, 1 − LoadSeconds[m] × prefill rate (GPU:
// 1). Both follow the engine: a GPU prefix hit first, then, after the
// first block missing on GPU, the offloading connector loads the following
// blocks each from the cheapest tier holding it, until a block no tier
// holds. Unknown media rank as the lowest tier (the dearest cost known).
//
// Defaults from the engine profile (pkg/engine/profiles.yaml) and the
// hardware the profiles name (H100 SXM hosts):
//   - CPU: 25 GB/s, host memory to GPU over PCIe Gen5 x16 (64 GB/s raw
//     each way), at the ~40 % a paged, block-granular copy reaches;
//   - Disk: 12 GB/s, a local NVMe Gen5 drive's sequential read (or a
//     few Gen4 drives striped);
//   - shared storage: the profile's storageBandwidth (10 GB/s) plus its
//     object latency (10 ms) per round of storageConcurrency (16) objects
//     of storageObjectTokens (256) tokens: Profile.RestoreTime per token.
//
// On Llama-3.1-8B/H100 (128 KiB of KV per token, 30.8k prompt tokens/s of
// dense prefill) a token costs 5.2 µs from CPU, 10.9 µs from disk, 15.5 µs
// from storage against 32.5 µs of prefill: weights 0.84, 0.66, 0.52, and
// recomputation 0 (Qwen3-32B/2×H100: 0.84, 0.67, 0.57). GPU > CPU > disk >
// storage > recompute holds for every built-in profile
// (TestTierCostsOrder).

// Tier default bandwidths in bytes/s.
const (
	DefaultCPUBandwidth  = 25e9
	DefaultDiskBandwidth = 12e9
)

// StorageEndpoint is the pseudo-endpoint under which Router.ApplyStorage
// records what the shared storage holds. No pod can be named so (a NUL
// byte), Retain keeps it, Forget drops it.
const StorageEndpoint = "\x00kvstore"

// TierCosts are the seconds to bring one token's KV into GPU memory from
// each medium, and the seconds to recompute it instead.
type TierCosts struct {
	LoadSeconds    [numMedia]float64
	PrefillSeconds float64
}

// tierParams are the optional plugin parameters that set the tier costs.
type tierParams struct {
	Profile       string   `json:"profile"`
	CPUBandwidth  *float64 `json:"cpuBandwidth"`
	DiskBandwidth *float64 `json:"diskBandwidth"`
}

// TierCostsFromProfile derives the tier costs from an engine profile and
// the CPU and disk bandwidths in bytes/s (0: the defaults). A profile
// without storage makes a stored token cost as much as its prefill (no
// gain).
func TierCostsFromProfile(p *engine.Profile, cpuBW, diskBW float64) TierCosts {
	if !(cpuBW > 0) {
		cpuBW = DefaultCPUBandwidth
	}
	if !(diskBW > 0) {
		diskBW = DefaultDiskBandwidth
	}
	r := RatesFromProfile(p, 0, 0, 0)
	kv := p.KVBytesPerToken()
	var c TierCosts
	c.PrefillSeconds = 1 / r.PrefillTokensPerSecond
	c.LoadSeconds[mediumCPU] = kv / cpuBW
	c.LoadSeconds[mediumDisk] = kv / diskBW
	c.LoadSeconds[mediumStorage] = c.PrefillSeconds
	if p.HasStorage() {
		perRound := float64(max(p.StorageObjectTokens, 1) * max(p.StorageConcurrency, 1))
		c.LoadSeconds[mediumStorage] = kv/p.StorageBandwidth + p.StorageObjectLatencySeconds/perRound
	}
	c.LoadSeconds[mediumOther] = max(c.LoadSeconds[mediumDisk], c.LoadSeconds[mediumStorage])
	return c
}

// Weights are the share of a token's prefill each medium saves, in [0, 1].
func (c TierCosts) Weights() [numMedia]float64 {
	var w [numMedia]float64
	for m := range w {
		if c.PrefillSeconds > 0 {
			w[m] = clamp01(1 - c.LoadSeconds[m]/c.PrefillSeconds)
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

// tierOrder is the order the connector tries the non-GPU media in: the
// endpoint's own tiers, then shared storage.
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

// walkTiers fills c.tiers: for each endpoint, starting after its GPU
// prefix (c.preLen), the blocks each following block is loaded from, the
// cheapest medium holding it, until a block no medium holds or limit
// blocks in all. The caller holds p.mu for reading.
func (c *cycle) walkTiers(p *preciseIndex, limit int) {
	c.tiers = grow(c.tiers, len(c.eps))
	clear(c.tiers)
	c.tiered = false
	if !p.hasTiers() {
		return
	}
	c.tiered = true
	store := int32(-1)
	if s := c.r.slots.lookup(StorageEndpoint); s >= 0 {
		store = s
	}
	c.alive = grow(c.alive, len(c.eps))
	any := false
	first := limit
	for i, s := range c.slots {
		// A seen endpoint continues its GPU prefix with its own tiers and
		// storage; one without KV events can still restore from storage.
		c.alive[i] = int(c.preLen[i]) < limit && ((s >= 0 && c.preSeen[i]) || store >= 0)
		if c.alive[i] {
			any = true
			first = min(first, int(c.preLen[i]))
		}
	}
	var hs [numMedia][]uint64
	for j := first; any && j < limit && j < len(c.preHashes); j++ {
		k := c.preHashes[j]
		for _, m := range tierOrder {
			hs[m] = nil
			if t := p.tiers[m]; t != nil {
				hs[m] = t.holders(k)
			}
		}
		stored := store >= 0 && hasBit(hs[mediumStorage], store)
		any = false
		for i, s := range c.slots {
			if !c.alive[i] || int(c.preLen[i]) > j {
				any = any || c.alive[i]
				continue
			}
			got := false
			for _, m := range tierOrder {
				if m == mediumStorage {
					if stored {
						c.tiers[i][m]++
						got = true
					}
					break
				}
				if s >= 0 && c.preSeen[i] && hasBit(hs[m], s) {
					c.tiers[i][m]++
					got = true
					break
				}
			}
			c.alive[i] = got
			any = any || got
		}
	}
}

func hasBit(row []uint64, s int32) bool {
	return row != nil && int(s>>6) < len(row) && row[s>>6]&(1<<(s&63)) != 0
}

// loadSeconds is the modelled time to load endpoint i's tier blocks.
func (c *cycle) loadSeconds(i int, costs *TierCosts) float64 {
	if !c.tiered {
		return 0
	}
	var sec float64
	bs := float64(c.r.cfg.PreciseIndex.BlockSize)
	for m, n := range c.tiers[i] {
		sec += float64(n) * bs * costs.LoadSeconds[m]
	}
	return sec
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
