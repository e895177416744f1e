package plan

import (
	"errors"
	"fmt"
	"io"
	"slices"
	"strings"
	"time"

	"github.com/llmd-kn/llmd-kn/pkg/apis"
	"github.com/llmd-kn/llmd-kn/pkg/engine"
	"github.com/llmd-kn/llmd-kn/pkg/kvstore"
	"github.com/llmd-kn/llmd-kn/pkg/router"
)

// KV offload in virtual time (llm-d.ai/kv-offload: on-scale-down), as the
// simulator does it in real time (pkg/vllmsim/kvoffload.go), with the same
// manifest and the same choices (pkg/kvstore's SelectValuable, Merge and
// Retain) but no objects:
//
//   - every request sent to an engine counts one use of each full block of
//     its prompt (hits, depth, chain parent, last use), bounded as the
//     simulator bounds it;
//   - an engine that leaves (scale-down, scale to zero) flushes the
//     resident blocks it served, most valuable first (hits × depth, whole
//     chains) within MaxBytes; the modelled write time (the profile's
//     storage bandwidth and per-object latency, as a restore) is added to
//     its provisioned time, capped at Deadline;
//   - a request's leading blocks that storage holds beyond what the
//     engine's GPU cache holds are restored: the engine charges
//     Profile.RestoreTime for them (Request.StoredTokens) and reports them
//     with the cached tokens, as the simulator's usage does;
//   - with PrefetchBytes (llm-d.ai/kv-prefetch-bytes), an engine asked for
//     after the start of the run preloads the hottest stored chains within
//     that budget into its GPU cache (engine.Preload, announced in KV
//     events with their tokens) and becomes ready when both its startup
//     delay and their modelled restore time have passed, as the
//     simulator's pod does.
//
// Not modelled: write-through, storage failures, and offload on
// prefill/decode (disaggregated) engines (the simulator does not offload
// them either).

// KVOffloadConfig is the modelled KV offload; the zero value is off.
type KVOffloadConfig struct {
	// Enabled: engines flush at scale-down and restore on demand
	// (llm-d.ai/kv-offload: on-scale-down).
	Enabled bool
	// MaxBytes bounds the stored KV bytes (llm-d.ai/kv-offload-max-bytes;
	// 0: unbounded).
	MaxBytes int64
	// Deadline caps an engine's modelled flush time
	// (llm-d.ai/kv-offload-deadline; 0: 30 s).
	Deadline time.Duration
	// PrefetchBytes is how much of the hottest stored KV a new engine
	// loads while it starts (llm-d.ai/kv-prefetch-bytes; 0: none).
	PrefetchBytes int64
}

// DefaultKVOffloadDeadline is llm-d.ai/kv-offload-deadline's default.
const DefaultKVOffloadDeadline = 30 * time.Second

func (k KVOffloadConfig) validate(c *Config) error {
	if !k.Enabled {
		if k.MaxBytes != 0 || k.Deadline != 0 || k.PrefetchBytes != 0 {
			return errors.New("KV offload: max bytes, deadline and prefetch bytes need KV offload on")
		}
		return nil
	}
	switch {
	case k.MaxBytes < 0:
		return fmt.Errorf("KV offload: max bytes must not be negative, got %d", k.MaxBytes)
	case k.PrefetchBytes < 0 || (k.MaxBytes > 0 && k.PrefetchBytes > k.MaxBytes):
		return fmt.Errorf("KV offload: prefetch bytes must be in [0, max bytes], got %d", k.PrefetchBytes)
	case k.Deadline < 0 || k.Deadline > time.Hour:
		return fmt.Errorf("KV offload: deadline must be in [0, 1h], got %s", k.Deadline)
	case !c.Profile.HasStorage():
		return fmt.Errorf("KV offload: profile %s has no storage bandwidth", c.Profile.Name)
	case c.pd():
		return errors.New("KV offload is not modelled with P/D (the simulator does not offload prefill/decode pods either)")
	}
	return nil
}

// KVOffloadStats are what the modelled offload did in a run.
type KVOffloadStats struct {
	// Flushes counts engines that flushed (had resident blocks); Flushed
	// the blocks written and FlushedBytes their modelled bytes;
	// FlushSeconds the modelled write time added to the engines'
	// provisioned time.
	Flushes, Flushed int
	FlushedBytes     int64
	FlushSeconds     float64
	// StoredBytes is what storage holds at the end.
	StoredBytes int64
	// Restores counts requests that restored blocks; Restored the blocks,
	// RestoredTokens their tokens and RestoredBytes their modelled bytes
	// (read from storage).
	Restores, Restored int
	RestoredTokens     int64
	RestoredBytes      int64
	// Prefetches counts engines that prefetched; Prefetched the blocks
	// they preloaded.
	Prefetches, Prefetched int
}

// blockUse is one block's use on an engine (the simulator's blockStat).
type blockUse struct {
	parent  uint64
	root    bool
	depth   int
	hits    int64
	lastUse time.Duration
	tokens  []uint32 // the block's token ids (kept in the manifest)
}

// kvOffload is the run's storage and counters.
type kvOffload struct {
	cfg        KVOffloadConfig
	man        *kvstore.Manifest
	blockSize  int
	blockBytes int64
	maxTracked int
	hashes     []uint64
}

// The simulator's bound on tracked blocks: trackFactor × the engine's
// blocks, at least 1024.
const kvTrackFactor = 4

func newKVOffload(c *Config, blockSize, numBlocks int) *kvOffload {
	cfg := c.KVOffload
	if cfg.Deadline == 0 {
		cfg.Deadline = DefaultKVOffloadDeadline
	}
	return &kvOffload{cfg: cfg, man: &kvstore.Manifest{Blocks: map[string]kvstore.BlockEntry{}}, blockSize: blockSize,
		blockBytes: int64(float64(blockSize) * c.Profile.KVBytesPerToken()), maxTracked: max(1024, kvTrackFactor*numBlocks)}
}

// offloads reports whether engine n offloads (not P/D engines).
func (s *sim) offloads(n *node) bool { return s.kvo != nil && n.role == router.RoleBoth }

// prepareRestore tracks the prompt's blocks on n and returns the leading
// prompt tokens whose KV is in n's GPU cache or in storage (the engine
// request's StoredTokens; 0 when storage adds nothing).
func (s *sim) prepareRestore(n *node, prompt []uint32) int {
	o := s.kvo
	hs := n.eng.BlockHashes(o.hashes, prompt)
	o.hashes = hs
	s.track(n, prompt, hs)
	hs = hs[:min(len(hs), (len(prompt)-1)/o.blockSize)]
	k := 0
	for k < len(hs) {
		if _, ok := o.man.Blocks[kvstore.BlockID(hs[k])]; !ok {
			break
		}
		k++
	}
	c := n.eng.CachedPrefix(hs[:k])
	if k <= c {
		return 0
	}
	st := &s.stats.KVOffload
	st.Restores++
	st.Restored += k - c
	st.RestoredTokens += int64((k - c) * o.blockSize)
	st.RestoredBytes += int64(k-c) * o.blockBytes
	return k * o.blockSize
}

// track counts one use of each block of a prompt on n, forgetting the
// older half of the blocks once more than maxTracked are known.
func (s *sim) track(n *node, prompt []uint32, hs []uint64) {
	if n.seen == nil {
		n.seen = map[uint64]*blockUse{}
	}
	bs := s.kvo.blockSize
	for i, h := range hs {
		u := n.seen[h]
		if u == nil {
			u = &blockUse{depth: i + 1, root: i == 0, tokens: slices.Clone(prompt[i*bs : (i+1)*bs])}
			if i > 0 {
				u.parent = hs[i-1]
			}
			n.seen[h] = u
		}
		u.hits++
		u.lastUse = s.now
	}
	if len(n.seen) > s.kvo.maxTracked {
		ts := make([]time.Duration, 0, len(n.seen))
		for _, u := range n.seen {
			ts = append(ts, u.lastUse)
		}
		slices.Sort(ts)
		med := ts[len(ts)/2]
		for h, u := range n.seen {
			if u.lastUse <= med {
				delete(n.seen, h)
			}
		}
	}
}

// flush writes the resident blocks engine n served, most valuable first
// within MaxBytes, and commits them (merge, then retain within MaxBytes);
// it returns the modelled write time, capped at the deadline.
func (s *sim) flush(n *node) time.Duration {
	o := s.kvo
	cands := make(map[string]kvstore.BlockEntry, len(n.seen))
	for h, u := range n.seen {
		if !n.eng.IsCached(h) {
			continue
		}
		e := kvstore.BlockEntry{Depth: u.depth, Bytes: o.blockBytes, LastUse: s.base.Add(u.lastUse), Hits: u.hits, Tokens: u.tokens}
		if !u.root {
			e.Parent = kvstore.BlockID(u.parent)
		}
		cands[kvstore.BlockID(h)] = e
	}
	n.seen = nil
	if len(cands) == 0 {
		return 0
	}
	sel := kvstore.SelectValuable(cands, o.cfg.MaxBytes, func(id string) bool { _, ok := o.man.Blocks[id]; return ok })
	mine := &kvstore.Manifest{Blocks: make(map[string]kvstore.BlockEntry, len(sel))}
	for _, id := range sel {
		mine.Blocks[id] = cands[id]
	}
	for id, e := range cands {
		if _, ok := o.man.Blocks[id]; ok {
			mine.Blocks[id] = e
		}
	}
	o.man.Merge(mine)
	o.man.Retain(o.cfg.MaxBytes)
	st := &s.stats.KVOffload
	st.Flushes++
	st.Flushed += len(sel)
	st.FlushedBytes += int64(len(sel)) * o.blockBytes
	st.StoredBytes = o.man.Bytes()
	d := min(s.cfg.Profile.RestoreTime(len(sel)*o.blockSize), o.cfg.Deadline)
	st.FlushSeconds += d.Seconds()
	return d
}

// prefetch preloads the hottest stored chains within PrefetchBytes into
// the new engine n (a block whose parent was not taken is skipped, as the
// simulator skips one it could not read) and returns their modelled
// restore time, which the engine's readiness waits for.
func (s *sim) prefetch(n *node) time.Duration {
	o := s.kvo
	if o.cfg.PrefetchBytes <= 0 || len(o.man.Blocks) == 0 || n.eng == nil {
		return 0
	}
	sel := kvstore.SelectValuable(o.man.Blocks, o.cfg.PrefetchBytes, nil)
	blocks := make([]engine.PreloadBlock, 0, len(sel))
	for _, id := range sel {
		e := o.man.Blocks[id]
		k, err := kvstore.ParseBlockID(id)
		if err != nil {
			continue
		}
		pb := engine.PreloadBlock{Hash: k}
		if e.Parent != "" {
			pb.Parent, _ = kvstore.ParseBlockID(e.Parent)
			pb.HasParent = true
		}
		if len(e.Tokens) == o.blockSize {
			pb.Tokens = e.Tokens
		}
		blocks = append(blocks, pb)
	}
	got := n.eng.Preload(blocks, len(blocks))
	if got == 0 {
		return 0
	}
	st := &s.stats.KVOffload
	st.Prefetches++
	st.Prefetched += got
	return s.cfg.Profile.RestoreTime(got * o.blockSize)
}

// ColdStartTTFTs are the TTFTs of the requests sent within window after
// each scale from zero: for every stretch with no ready decode-capable
// engine (the start of a run at zero included), from the first request
// sent in it. served is the same requests' TTFT less their time in the
// activator's queue (waiting for the cold start): what the engine took.
// A request that failed is left out.
func ColdStartTTFTs(res *Result, window time.Duration) (ttft, served []time.Duration) {
	var starts []time.Duration
	reps := res.Replicas
	for i, p := range reps {
		if p.Ready.Decode != 0 {
			continue
		}
		end := res.Stats.End
		if i+1 < len(reps) {
			end = reps[i+1].At
		}
		for j := range res.Records {
			r := &res.Records[j]
			if r.Sent >= p.At && r.Sent < end {
				starts = append(starts, r.Sent)
				break
			}
		}
	}
	for j := range res.Records {
		r := &res.Records[j]
		if !r.OK() {
			continue
		}
		for _, t0 := range starts {
			if r.Sent >= t0 && r.Sent < t0+window {
				ttft = append(ttft, r.TTFT)
				served = append(served, r.TTFT-r.Queue)
				break
			}
		}
	}
	return ttft, served
}

// Percentile is the q-quantile (0..1) of ds by nearest rank; 0 for none.
func Percentile(ds []time.Duration, q float64) time.Duration {
	if len(ds) == 0 {
		return 0
	}
	s := slices.Clone(ds)
	slices.Sort(s)
	i := int(q*float64(len(s))+0.999999) - 1
	return s[min(max(i, 0), len(s)-1)]
}

// parseOffload reads --kv-offload, --kv-offload-max-bytes and
// --kv-offload-deadline.
func parseOffload(o Options) ([]KVOffloadConfig, error) {
	var out []KVOffloadConfig
	seen := map[string]bool{}
	on := KVOffloadConfig{Enabled: true, Deadline: o.KVOffloadDeadline}
	if o.KVOffloadMaxBytes != "" {
		n, err := apis.ParseBytes(o.KVOffloadMaxBytes)
		if err != nil || n <= 0 {
			return nil, fmt.Errorf("--kv-offload-max-bytes %q: a positive byte size such as 20Gi", o.KVOffloadMaxBytes)
		}
		on.MaxBytes = n
	}
	if o.KVPrefetchBytes != "" {
		n, err := apis.ParseBytes(o.KVPrefetchBytes)
		if err != nil || n <= 0 || (on.MaxBytes > 0 && n > on.MaxBytes) {
			return nil, fmt.Errorf("--kv-prefetch-bytes %q: a positive byte size such as 4Gi, at most --kv-offload-max-bytes", o.KVPrefetchBytes)
		}
		on.PrefetchBytes = n
	}
	if on.Deadline <= 0 || on.Deadline > time.Hour {
		return nil, fmt.Errorf("--kv-offload-deadline must be in (0, 1h], got %s", o.KVOffloadDeadline)
	}
	for _, m := range strings.Split(o.KVOffload, ",") {
		m = strings.TrimSpace(m)
		if seen[m] {
			return nil, fmt.Errorf("--kv-offload: %q given twice", m)
		}
		seen[m] = true
		switch m {
		case apis.KVOffloadOff:
			out = append(out, KVOffloadConfig{})
		case apis.KVOffloadOnScaleDown:
			out = append(out, on)
		case apis.KVOffloadWriteThrough:
			return nil, fmt.Errorf("--kv-offload %s is not modelled by plan (on-scale-down is)", m)
		default:
			return nil, fmt.Errorf("--kv-offload: unknown mode %q (off, %s, or both comma-separated)", m, apis.KVOffloadOnScaleDown)
		}
	}
	if !seen[apis.KVOffloadOnScaleDown] && (o.changed("kv-offload-max-bytes") || o.changed("kv-offload-deadline") || o.changed("kv-prefetch-bytes")) {
		return nil, fmt.Errorf("--kv-offload-max-bytes, --kv-offload-deadline and --kv-prefetch-bytes need --kv-offload %s", apis.KVOffloadOnScaleDown)
	}
	return out, nil
}

// ColdStartWindow is how long after each scale from zero the cold-start
// TTFT covers (the "first minute").
const ColdStartWindow = time.Minute

// WriteKVOffloadLines prints a run's KV offload counters (when on) and,
// for a run that scaled from zero, the TTFT of the requests in the first
// ColdStartWindow after each cold start.
func WriteKVOffloadLines(w io.Writer, name string, res *Result) {
	st := &res.Stats
	if res.Config.KVOffload.Enabled || res.Config.Scaler != nil {
		fmt.Fprintf(w, "  %s: prompt tokens cached or restored: %.1f%%\n", name, 100*cachedShare(res))
	}
	if res.Config.KVOffload.Enabled {
		o := &st.KVOffload
		fmt.Fprintf(w, "  %s: kv offload: flushed %d blocks (%.2f GiB) in %d flushes (%.1fs modelled), stored %.2f GiB; restored %d tokens (%.2f GiB) in %d requests; prefetched %d blocks in %d engines\n",
			name, o.Flushed, gib(o.FlushedBytes), o.Flushes, o.FlushSeconds, gib(o.StoredBytes), o.RestoredTokens, gib(o.RestoredBytes), o.Restores,
			o.Prefetched, o.Prefetches)
	}
	if res.Config.Scaler == nil {
		return
	}
	ts, served := ColdStartTTFTs(res, ColdStartWindow)
	if len(ts) == 0 {
		return
	}
	r := func(d time.Duration) time.Duration { return d.Round(time.Millisecond) }
	fmt.Fprintf(w, "  %s: first %s after each scale from zero: %d requests, TTFT p50 %s, p90 %s; less the wait for the cold start: p50 %s, p90 %s\n",
		name, ColdStartWindow, len(ts), r(Percentile(ts, 0.5)), r(Percentile(ts, 0.9)), r(Percentile(served, 0.5)), r(Percentile(served, 0.9)))
}

func gib(b int64) float64 { return float64(b) / (1 << 30) }

// cachedShare is the share of the completed requests' prompt tokens that
// were cached or restored.
func cachedShare(res *Result) float64 {
	var p, c int64
	for i := range res.Records {
		if r := &res.Records[i]; r.OK() {
			p += int64(r.PromptTokens)
			c += int64(min(r.CachedTokens, r.PromptTokens))
		}
	}
	if p == 0 {
		return 0
	}
	return float64(c) / float64(p)
}

// parseTiers reads --kv-tiers, --kv-cpu-tier-bytes and --kv-disk-tier-bytes
// into e's tier sizes and the list of settings to run (true: tiers on).
func parseTiers(o Options, e *EngineConfig) ([]bool, error) {
	size := func(flag, v string) (int64, error) {
		if v == "" {
			return 0, nil
		}
		n, err := apis.ParseBytes(v)
		if err != nil || n < 0 {
			return 0, fmt.Errorf("--%s %q: a byte size such as 64Gi", flag, v)
		}
		return n, nil
	}
	var err error
	if e.CPUTierBytes, err = size("kv-cpu-tier-bytes", o.KVCPUTierBytes); err != nil {
		return nil, err
	}
	if e.DiskTierBytes, err = size("kv-disk-tier-bytes", o.KVDiskTierBytes); err != nil {
		return nil, err
	}
	modes := o.KVTiers
	if modes == "" {
		modes = "on"
	}
	var out []bool
	seen := map[string]bool{}
	for _, m := range strings.Split(modes, ",") {
		m = strings.TrimSpace(m)
		if seen[m] {
			return nil, fmt.Errorf("--kv-tiers: %q given twice", m)
		}
		seen[m] = true
		switch m {
		case "off":
			out = append(out, false)
		case "on":
			out = append(out, true)
		default:
			return nil, fmt.Errorf("--kv-tiers: unknown setting %q (on, off, or off,on)", m)
		}
	}
	if seen["on"] && len(out) > 1 && e.CPUTierBytes == 0 && e.DiskTierBytes == 0 {
		return nil, fmt.Errorf("--kv-tiers %s compares tiers on and off but neither --kv-cpu-tier-bytes nor --kv-disk-tier-bytes sizes a tier", modes)
	}
	return out, nil
}
