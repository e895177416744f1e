package engine

import (
	"container/list"
	"fmt"
	"time"
)

// The engine's own KV tiers below the GPU prefix cache: CPU memory and
// local disk, as vLLM's OffloadingConnector keeps them
// (llm-d.ai/kv-cpu-tier-bytes, llm-d.ai/kv-disk-tier-bytes).
//
// The model, after the connector's scheduler side:
//   - Write-through: every full block a request computes (or loads) is
//     stored in the first tier (CPU, or disk without a CPU tier) at the end
//     of the step that completes it, whether or not it stays in the GPU
//     cache. The copy runs beside compute (the connector's asynchronous
//     store), so it costs no step time.
//   - Each tier is LRU over whole blocks, bounded by its bytes. A block the
//     CPU tier evicts moves to the disk tier; one the disk tier evicts is
//     gone. A block lives in one tier at a time (a load from disk or a
//     recompute moves it back to CPU).
//   - At admission, the blocks after the longest GPU prefix hit that the
//     tiers hold, consecutively, are loaded instead of computed (leaving at
//     least one prompt token to compute, as the GPU hit does): the request
//     waits, as for a remote prefill, for Profile.TierLoadTime, and the
//     loaded tokens are reported as external (vLLM's connector hits:
//     counted in cached_tokens, fixed at the first admission as vLLM's
//     num_cached_tokens). A preempted request loads again from the tiers
//     when it is admitted again (its blocks were written through).
//   - KV events carry the tier's medium (MediumCPU, MediumStorage) with the
//     block's hashes, parent and tokens (vLLM's self-describing offloading
//     events); a move CPU -> disk is a removal from CPU and a store on disk.
//
// Not modelled: the store's PCIe traffic competing with loads, CPU tiers
// shared between engines, ResetPrefixCache clearing the tiers (vLLM resets
// only the GPU cache unless asked).

// Media as KV events name them (vLLM's kv_events: MEDIUM_GPU, MEDIUM_CPU,
// MEDIUM_STORAGE). An empty medium is the GPU.
const (
	MediumGPU     = ""
	MediumCPU     = "CPU"
	MediumStorage = "STORAGE"
)

// Defaults of the tier transfer model, used when a profile leaves them 0.
const (
	// DefaultCPUTierBandwidth: host -> device copies of KV blocks. PCIe Gen5
	// x16 (H100 SXM) carries 64 GB/s per direction and pinned-memory copies
	// reach about 50 GB/s; the connector copies each block as per-layer
	// fragments (32 layers x K/V of a 16-token Llama-3.1-8B block are
	// 32 KiB pieces), which roughly halves that: 25 GB/s.
	DefaultCPUTierBandwidth = 25e9
	// DefaultCPUTierLatencySeconds: a load completes asynchronously and
	// the request is scheduled in a later step: about one step's overhead
	// plus the copy's launch, 1 ms.
	DefaultCPUTierLatencySeconds = 0.001
	// DefaultDiskTierBandwidth: one datacenter NVMe drive (PCIe Gen4 x4)
	// reads 6-7 GB/s sequentially; the blocks come through pinned host
	// memory, so the drive bounds the load: 6 GB/s.
	DefaultDiskTierBandwidth = 6e9
	// DefaultDiskTierLatencySeconds: NVMe read latency (~100 us) plus the
	// asynchronous completion as for CPU: 2 ms.
	DefaultDiskTierLatencySeconds = 0.002
)

// HasTiers reports whether the configuration sizes a CPU or disk tier.
func (c *Config) HasTiers() bool { return c.CPUTierBytes > 0 || c.DiskTierBytes > 0 }

func orDefault(v, d float64) float64 {
	if v > 0 {
		return v
	}
	return d
}

// TierLoadTime is how long the KV of cpuTokens from the CPU tier and
// diskTokens from the disk tier takes to reach the GPU: per tier used, its
// latency plus the bytes at its bandwidth (the two reads run one after the
// other: both cross the same host link).
func (p *Profile) TierLoadTime(cpuTokens, diskTokens int) time.Duration {
	var sec float64
	if cpuTokens > 0 {
		sec += orDefault(p.CPUTierLatencySeconds, DefaultCPUTierLatencySeconds) +
			float64(cpuTokens)*p.KVBytesPerToken()/orDefault(p.CPUTierBandwidth, DefaultCPUTierBandwidth)
	}
	if diskTokens > 0 {
		sec += orDefault(p.DiskTierLatencySeconds, DefaultDiskTierLatencySeconds) +
			float64(diskTokens)*p.KVBytesPerToken()/orDefault(p.DiskTierBandwidth, DefaultDiskTierBandwidth)
	}
	return time.Duration(sec * float64(time.Second))
}

// tierEntry is one block held by a tier.
type tierEntry struct {
	hash      uint64
	parent    uint64
	hasParent bool
	tokens    []uint32 // nil with KV events off
}

// tier is one LRU level: front is the most recently used.
type tier struct {
	medium string
	cap    int
	lru    *list.List
	m      map[uint64]*list.Element
}

func newTier(medium string, bytes int64, blockBytes float64) (*tier, error) {
	n := int(float64(bytes) / blockBytes)
	if n < 1 {
		return nil, fmt.Errorf("engine: %s tier of %d bytes holds no block of %.0f bytes", medium, bytes, blockBytes)
	}
	return &tier{medium: medium, cap: n, lru: list.New(), m: make(map[uint64]*list.Element)}, nil
}

// setupTiers builds the configured tiers, CPU first.
func (e *Engine) setupTiers() error {
	if e.cfg.CPUTierBytes < 0 || e.cfg.DiskTierBytes < 0 {
		return fmt.Errorf("engine: negative tier size")
	}
	blockBytes := float64(e.cfg.BlockSize) * e.cfg.Profile.KVBytesPerToken()
	if e.cfg.CPUTierBytes > 0 {
		t, err := newTier(MediumCPU, e.cfg.CPUTierBytes, blockBytes)
		if err != nil {
			return err
		}
		e.tiers = append(e.tiers, t)
	}
	if e.cfg.DiskTierBytes > 0 {
		t, err := newTier(MediumStorage, e.cfg.DiskTierBytes, blockBytes)
		if err != nil {
			return err
		}
		e.tiers = append(e.tiers, t)
	}
	return nil
}

// tierOf returns the index of the tier holding h, or -1.
func (e *Engine) tierOf(h uint64) int {
	for i, t := range e.tiers {
		if _, ok := t.m[h]; ok {
			return i
		}
	}
	return -1
}

// tierPut stores blocks [first, last] of s in the first tier: a block
// already there is refreshed, one in a lower tier moves up, a new one is
// added; what the first tier evicts cascades down. Each added block is
// announced before anything its insertion evicts, so that a consumer never
// sees a removal before the store it undoes.
func (e *Engine) tierPut(s *seq, first, last int) {
	if len(e.tiers) == 0 {
		return
	}
	top := e.tiers[0]
	bs := e.cfg.BlockSize
	for i := first; i <= last; i++ {
		h := s.hashes[i]
		if el, ok := top.m[h]; ok {
			top.lru.MoveToFront(el)
			continue
		}
		ent := &tierEntry{hash: h}
		if i > 0 {
			ent.parent, ent.hasParent = s.hashes[i-1], true
		}
		if !e.cfg.DisableKVEvents {
			ent.tokens = append([]uint32(nil), s.tokens[i*bs:(i+1)*bs]...)
		}
		for j := 1; j < len(e.tiers); j++ {
			if el, ok := e.tiers[j].m[h]; ok {
				e.tierDrop(j, el)
			}
		}
		e.tierEntryEvent(top.medium, ent)
		e.tierInsert(0, ent)
		e.stats.TierStoredBlocks++
	}
}

// tierInsert adds ent at the front of tier i, evicting (down the tiers)
// while it is over capacity. The stored event is the caller's.
func (e *Engine) tierInsert(i int, ent *tierEntry) {
	t := e.tiers[i]
	t.m[ent.hash] = t.lru.PushFront(ent)
	for t.lru.Len() > t.cap {
		el := t.lru.Back()
		v := el.Value.(*tierEntry)
		e.tierDrop(i, el)
		if i+1 < len(e.tiers) {
			lower := e.tiers[i+1]
			if old, ok := lower.m[v.hash]; ok {
				lower.lru.MoveToFront(old)
				continue
			}
			e.tierEntryEvent(lower.medium, v)
			e.tierInsert(i+1, v)
		}
	}
}

// tierDrop removes an element from tier i with a BlockRemoved event.
func (e *Engine) tierDrop(i int, el *list.Element) {
	t := e.tiers[i]
	v := el.Value.(*tierEntry)
	t.lru.Remove(el)
	delete(t.m, v.hash)
	if e.cfg.DisableKVEvents {
		return
	}
	ev := e.res.Events
	if n := len(ev); n > 0 && ev[n-1].Kind == BlockRemoved && ev[n-1].Medium == t.medium {
		ev[n-1].Hashes = append(ev[n-1].Hashes, v.hash)
		return
	}
	e.res.Events = append(ev, KVEvent{Kind: BlockRemoved, Hashes: []uint64{v.hash}, Medium: t.medium})
}

// tierEntryEvent announces one block that moved to medium.
func (e *Engine) tierEntryEvent(medium string, v *tierEntry) {
	if e.cfg.DisableKVEvents || len(v.tokens) != e.cfg.BlockSize {
		return
	}
	// The next block of a chain just announced on the same medium joins
	// that event.
	if n := len(e.res.Events); n > 0 && v.hasParent {
		last := &e.res.Events[n-1]
		if last.Kind == BlockStored && last.Medium == medium && last.Hashes[len(last.Hashes)-1] == v.parent {
			last.Hashes = append(last.Hashes, v.hash)
			last.TokenIDs = append(last.TokenIDs, v.tokens...)
			return
		}
	}
	e.res.Events = append(e.res.Events, KVEvent{Kind: BlockStored, Hashes: []uint64{v.hash}, Parent: v.parent, HasParent: v.hasParent,
		TokenIDs: append([]uint32(nil), v.tokens...), BlockSize: e.cfg.BlockSize, Medium: medium})
}

// tierLookup counts the blocks of hashes[from:to] the tiers hold,
// consecutively, per tier (CPU, disk), refreshing each one found.
func (e *Engine) tierLookup(hashes []uint64, from, to int) (cpu, disk int) {
	for j := from; j < to; j++ {
		i := e.tierOf(hashes[j])
		if i < 0 {
			break
		}
		t := e.tiers[i]
		t.lru.MoveToFront(t.m[hashes[j]])
		if t.medium == MediumCPU {
			cpu++
		} else {
			disk++
		}
	}
	return cpu, disk
}

// TierBlocks returns how many blocks the CPU and disk tiers hold.
func (e *Engine) TierBlocks() (cpu, disk int) {
	for _, t := range e.tiers {
		if t.medium == MediumCPU {
			cpu = t.lru.Len()
		} else {
			disk = t.lru.Len()
		}
	}
	return cpu, disk
}
