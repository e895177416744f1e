package vllmsim

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"math"
	"net/http"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/llmd-kn/llmd-kn/pkg/engine"
	"github.com/llmd-kn/llmd-kn/pkg/kvblock"
	"github.com/llmd-kn/llmd-kn/pkg/kvstore"
)

// KV offload (llm-d.ai/kv-offload): a replica that is going away flushes
// its most valuable resident prefix blocks (hits x depth, within MaxBytes)
// to shared storage as real objects through pkg/kvstore, and a replica
// restores on demand the stored prefix of each request its GPU cache lacks:
// it reads and verifies the objects, then tells the engine how many leading
// tokens storage holds (engine.Request.StoredTokens), which charges the
// profile's restore time (bytes / storage bandwidth + per-object latency)
// instead of the prefill. Objects carry synthetic payloads that
// PayloadScale may shrink; the engine always charges the full bytes.
//
// Anything that goes wrong with storage costs a recomputation, never a
// client error: an object that is missing, corrupt (checksum) or not the
// payload its key implies ends the restored prefix at the block before it.

// KVOffloadConfig configures a simulated pod's KV offload.
type KVOffloadConfig struct {
	// Mode is "" or "off" (nothing), "on-scale-down" (flush at Flush) or
	// "write-through" (also flush what is new every WriteThroughEvery
	// while serving).
	Mode string
	// URI is the storage: a bucket URL (file:///dir, s3://, gs://,
	// azblob://, mem://) or a local directory. Required when Mode is on.
	URI string
	// MaxBytes bounds the modelled KV bytes one flush writes and the
	// space keeps in storage (0: unbounded).
	MaxBytes int64
	// Deadline bounds a flush in wall time (default 30 s).
	Deadline time.Duration
	// PayloadScale shrinks the bytes actually stored per block (the engine
	// still charges the full transfer time): in (0, 1], default 1.
	PayloadScale float64
	// PrefetchBytes is how much of the hottest stored KV (modelled bytes)
	// the pod loads into its GPU cache while it starts: /health answers
	// 503 until the blocks are read and their modelled restore time has
	// passed (0: restore on demand only).
	PrefetchBytes int64
	// WriteThroughEvery is how often a write-through pod writes the hot
	// blocks storage lacks (wall time; default 10 s).
	WriteThroughEvery time.Duration
}

// Enabled reports whether the pod offloads.
func (c KVOffloadConfig) Enabled() bool { return c.Mode != "" && c.Mode != "off" }

func (c KVOffloadConfig) withDefaults() (KVOffloadConfig, error) {
	switch c.Mode {
	case "", "off":
		return c, nil
	case "on-scale-down", "write-through":
	default:
		return c, fmt.Errorf("kv offload mode %q: want off, on-scale-down or write-through", c.Mode)
	}
	if c.URI == "" {
		return c, errors.New("kv offload: no storage URI")
	}
	if c.MaxBytes < 0 || c.Deadline < 0 || c.PrefetchBytes < 0 {
		return c, errors.New("kv offload: negative max bytes, prefetch bytes or deadline")
	}
	if c.Deadline == 0 {
		c.Deadline = 30 * time.Second
	}
	if c.PayloadScale == 0 {
		c.PayloadScale = 1
	}
	if c.WriteThroughEvery < 0 {
		return c, errors.New("kv offload: negative write-through interval")
	}
	if c.WriteThroughEvery == 0 {
		c.WriteThroughEvery = 10 * time.Second
	}
	if !(c.PayloadScale > 0 && c.PayloadScale <= 1) {
		return c, fmt.Errorf("kv payload scale %v must be in (0, 1]", c.PayloadScale)
	}
	return c, nil
}

const (
	// restoreTimeout bounds the storage reads of one request's restore
	// (wall time); past it the request computes what was not read.
	restoreTimeout = 5 * time.Second
	// restoreBackoff skips restores for a while after storage failed, so
	// that a storage outage does not add its timeout to every request.
	restoreBackoff = 5 * time.Second
	// manifestTTL is how long a loaded manifest is trusted before a
	// request reloads it (others may have flushed meanwhile).
	manifestTTL = time.Second
	// trackFactor bounds the tracked blocks to this many times the GPU
	// cache's blocks.
	trackFactor = 4
)

// blockStat is what the replica knows of a block it served.
type blockStat struct {
	parent  uint64
	root    bool
	depth   int
	hits    int64
	lastUse time.Time
	tokens  []uint32 // the block's token ids (stored with it for KV events)
}

// offloader is one server's KV offload state.
type offloader struct {
	cfg          KVOffloadConfig
	store        *kvstore.Store
	space        kvstore.Space
	chain        kvblock.Chain
	prof         engine.Profile
	blockSize    int
	maxBatch     int
	blockBytes   int64 // modelled KV bytes of one block
	payloadBytes int   // bytes stored per block object
	maxTracked   int

	// prefetchUntil is the wall time (UnixNano) before which the pod is
	// not ready: -1 while the prefetch reads, 0 without one.
	prefetchUntil atomic.Int64

	mu           sync.Mutex
	seen         map[uint64]*blockStat
	manifest     *kvstore.Manifest
	manifestAt   time.Time
	backoffUntil time.Time

	m offloadMetrics
}

type offloadMetrics struct {
	flushedBlocks, flushedBytes, writtenBytes prometheus.Counter
	restoredBlocks, restoredTokens, readBytes prometheus.Counter
	restoreSeconds, recomputeSeconds          prometheus.Counter
	prefetchedBlocks                          prometheus.Counter
	errors                                    *prometheus.CounterVec
}

func newOffloader(cfg Config, chain kvblock.Chain, blockSize, maxBatch, numBlocks int, reg *prometheus.Registry) (*offloader, error) {
	oc, err := cfg.KVOffload.withDefaults()
	if err != nil || !oc.Enabled() {
		return nil, err
	}
	if !cfg.Profile.HasStorage() {
		return nil, fmt.Errorf("kv offload: profile %q models no shared storage (storageBandwidth)", cfg.Profile.Name)
	}
	if cfg.Role != engine.RoleBoth {
		return nil, errors.New("kv offload: not simulated for prefill/decode roles")
	}
	st, err := kvstore.Open(context.Background(), oc.URI, kvstore.Options{})
	if err != nil {
		return nil, err
	}
	bb := int64(float64(blockSize) * cfg.Profile.KVBytesPerToken())
	o := &offloader{
		cfg: oc, store: st, chain: chain, prof: cfg.Profile, blockSize: blockSize, maxBatch: maxBatch,
		blockBytes:   bb,
		payloadBytes: max(16, int(math.Round(float64(bb)*oc.PayloadScale))),
		maxTracked:   max(1024, trackFactor*numBlocks),
		seen:         map[uint64]*blockStat{},
		// The hash chain's configuration is part of the space: blocks
		// hashed another way are other blocks.
		space: kvstore.Space{Model: cfg.Model, Salt: cfg.HashAlgo + "/" + strconv.FormatUint(cfg.HashSeed, 10) + "/" + strconv.Itoa(blockSize)},
	}
	if int64(o.payloadBytes) > st.MaxObjectBytes() {
		st.Close()
		return nil, fmt.Errorf("kv offload: a block's payload is %d bytes, over the store's %d: lower the payload scale", o.payloadBytes, st.MaxObjectBytes())
	}
	o.m = offloadMetrics{
		flushedBlocks:  prometheus.NewCounter(prometheus.CounterOpts{Name: "llmd_kv_offload_flushed_blocks_total", Help: "KV blocks written to shared storage by flushes."}),
		flushedBytes:   prometheus.NewCounter(prometheus.CounterOpts{Name: "llmd_kv_offload_flushed_bytes_total", Help: "Modelled KV bytes of the blocks flushed (the engine's full size)."}),
		writtenBytes:   prometheus.NewCounter(prometheus.CounterOpts{Name: "llmd_kv_offload_written_bytes_total", Help: "Payload bytes actually written (scaled by the payload scale)."}),
		restoredBlocks: prometheus.NewCounter(prometheus.CounterOpts{Name: "llmd_kv_offload_restored_blocks_total", Help: "KV blocks read back from shared storage and verified."}),
		restoredTokens: prometheus.NewCounter(prometheus.CounterOpts{Name: "llmd_kv_offload_restored_tokens_total", Help: "Prompt tokens restored from shared storage instead of computed."}),
		readBytes:      prometheus.NewCounter(prometheus.CounterOpts{Name: "llmd_kv_offload_read_bytes_total", Help: "Payload bytes actually read from shared storage."}),
		restoreSeconds: prometheus.NewCounter(prometheus.CounterOpts{Name: "llmd_kv_offload_restore_modelled_seconds_total", Help: "Modelled time of the restores (bytes / storage bandwidth + object latency), simulated seconds."}),
		recomputeSeconds: prometheus.NewCounter(prometheus.CounterOpts{Name: "llmd_kv_offload_recompute_modelled_seconds_total",
			Help: "Modelled prefill time the restored tokens would have cost, simulated seconds."}),
		prefetchedBlocks: prometheus.NewCounter(prometheus.CounterOpts{Name: "llmd_kv_offload_prefetched_blocks_total",
			Help: "KV blocks read from shared storage into the GPU cache at start-up (llm-d.ai/kv-prefetch-bytes)."}),
		errors: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "llmd_kv_offload_errors_total",
			Help: "Storage failures by operation (flush, restore) and kind (unavailable, missing, corrupt, deadline)."}, []string{"op", "kind"}),
	}
	reg.MustRegister(o.m.flushedBlocks, o.m.flushedBytes, o.m.writtenBytes, o.m.restoredBlocks, o.m.restoredTokens,
		o.m.readBytes, o.m.restoreSeconds, o.m.recomputeSeconds, o.m.prefetchedBlocks, o.m.errors)
	return o, nil
}

func (o *offloader) close() {
	if o != nil {
		_ = o.store.Close()
	}
}

// errKind names a storage failure for the errors counter.
func errKind(err error) string {
	switch {
	case errors.Is(err, kvstore.ErrCorrupt), errors.Is(err, errWrongPayload):
		return "corrupt"
	case errors.Is(err, kvstore.ErrNotFound):
		return "missing"
	case errors.Is(err, context.DeadlineExceeded), errors.Is(err, context.Canceled):
		return "deadline"
	}
	return "unavailable"
}

var errWrongPayload = errors.New("stored block is not the payload its key implies")

// payload is the synthetic content of block key k: deterministic, so a
// reader can tell a block stored under the wrong key from the right one.
func (o *offloader) payload(k uint64) []byte {
	b := make([]byte, o.payloadBytes)
	x := k
	for i := 0; i < len(b); i += 8 {
		var w [8]byte
		binary.LittleEndian.PutUint64(w[:], splitmix64(&x))
		copy(b[i:], w[:])
	}
	return b
}

func splitmix64(x *uint64) uint64 {
	*x += 0x9e3779b97f4a7c15
	z := *x
	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9
	z = (z ^ (z >> 27)) * 0x94d049bb133111eb
	return z ^ (z >> 31)
}

// hashes are the prompt's full-block keys, as the engine chains them.
func (o *offloader) hashes(prompt []uint32) []uint64 {
	h, _ := o.chain.ExtendChain(make([]uint64, 0, len(prompt)/o.blockSize), nil, prompt)
	return h
}

// track counts one use of each full block of a prompt: the flush's value.
func (o *offloader) track(prompt []uint32, hashes []uint64, now time.Time) {
	o.mu.Lock()
	defer o.mu.Unlock()
	for i, h := range hashes {
		st := o.seen[h]
		if st == nil {
			st = &blockStat{depth: i + 1, root: i == 0, tokens: slices.Clone(prompt[i*o.blockSize : (i+1)*o.blockSize])}
			if i > 0 {
				st.parent = hashes[i-1]
			}
			o.seen[h] = st
		}
		st.hits++
		st.lastUse = now
	}
	if len(o.seen) > o.maxTracked {
		// Forget the older half: blocks long unused are rarely resident.
		cut := make([]time.Time, 0, len(o.seen))
		for _, st := range o.seen {
			cut = append(cut, st.lastUse)
		}
		med := median(cut)
		for h, st := range o.seen {
			if !st.lastUse.After(med) {
				delete(o.seen, h)
			}
		}
	}
}

func median(ts []time.Time) time.Time {
	// Quickselect is not worth it here: this runs once per maxTracked/2
	// new blocks.
	sorted := append([]time.Time(nil), ts...)
	for i := 1; i < len(sorted); i++ {
		for j := i; j > 0 && sorted[j].Before(sorted[j-1]); j-- {
			sorted[j], sorted[j-1] = sorted[j-1], sorted[j]
		}
	}
	return sorted[len(sorted)/2]
}

// loadManifest returns the space's manifest, reloaded when stale.
func (o *offloader) loadManifest(ctx context.Context) (*kvstore.Manifest, error) {
	o.mu.Lock()
	if o.manifest != nil && time.Since(o.manifestAt) < manifestTTL {
		m := o.manifest
		o.mu.Unlock()
		return m, nil
	}
	o.mu.Unlock()
	m, err := o.store.LoadManifest(ctx, o.space)
	if err != nil {
		return nil, err
	}
	o.mu.Lock()
	o.manifest, o.manifestAt = m, time.Now()
	o.mu.Unlock()
	return m, nil
}

// restorePlan is what storage holds of one request's prompt.
type restorePlan struct {
	storedTokens int // leading prompt tokens resident or restored
	restored     int // tokens read back from storage (not resident)
	cachedBlocks int
}

// prepare tracks the prompt's blocks and reads back from storage the
// leading ones the GPU cache lacks; cached is how many leading blocks the
// cache holds now. It never fails: what storage cannot give is computed.
func (o *offloader) prepare(ctx context.Context, prompt []uint32, cached func([]uint64) int) restorePlan {
	hs := o.hashes(prompt)
	o.track(prompt, hs, time.Now())
	// Leave at least one token to compute, as the engine does.
	hs = hs[:min(len(hs), (len(prompt)-1)/o.blockSize)]
	if len(hs) == 0 {
		return restorePlan{}
	}
	o.mu.Lock()
	skip := time.Now().Before(o.backoffUntil)
	o.mu.Unlock()
	if skip {
		return restorePlan{}
	}
	ctx, cancel := context.WithTimeout(ctx, restoreTimeout)
	defer cancel()
	m, err := o.loadManifest(ctx)
	if err != nil {
		o.failed("restore", err)
		return restorePlan{}
	}
	n := 0
	for n < len(hs) {
		if _, ok := m.Blocks[kvstore.BlockID(hs[n])]; !ok {
			break
		}
		n++
	}
	c := cached(hs[:n])
	if n <= c {
		return restorePlan{}
	}
	got := c
	for _, h := range hs[c:n] {
		data, err := o.store.GetBlock(ctx, o.space, h)
		if err == nil && string(data) != string(o.payload(h)) {
			err = fmt.Errorf("%w: block %s", errWrongPayload, kvstore.BlockID(h))
		}
		if err != nil {
			o.failed("restore", err)
			break
		}
		o.m.readBytes.Add(float64(len(data)))
		got++
	}
	if got == c {
		return restorePlan{}
	}
	restored := (got - c) * o.blockSize
	o.m.restoredBlocks.Add(float64(got - c))
	o.m.restoredTokens.Add(float64(restored))
	o.m.restoreSeconds.Add(o.prof.RestoreTime(restored).Seconds())
	o.m.recomputeSeconds.Add(o.prefillTime(c*o.blockSize, restored).Seconds())
	return restorePlan{storedTokens: got * o.blockSize, restored: restored, cachedBlocks: c}
}

// prefillTime is the modelled time to compute tokens over a context of
// ctxTokens already cached, in chunks of the step budget (alone in the
// batch, as a first request after a cold start is).
func (o *offloader) prefillTime(ctxTokens, tokens int) time.Duration {
	var d time.Duration
	for tokens > 0 {
		q := min(tokens, o.maxBatch)
		d += o.prof.StepTime([]engine.StepInput{{Query: q, Context: ctxTokens}})
		ctxTokens += q
		tokens -= q
	}
	return d
}

func (o *offloader) failed(op string, err error) {
	kind := errKind(err)
	o.m.errors.WithLabelValues(op, kind).Inc()
	if op == "restore" && kind != "corrupt" && kind != "missing" {
		o.mu.Lock()
		o.backoffUntil = time.Now().Add(restoreBackoff)
		o.mu.Unlock()
	}
}

// FlushResult says what a flush did.
type FlushResult struct {
	// Candidates are the resident blocks the replica knows; Selected those
	// chosen by value within the byte budget; Written the objects written
	// (blocks storage already held are not rewritten); Committed the blocks
	// the committed manifest gained or refreshed.
	Candidates, Selected, Written, Committed int
	// Bytes are the modelled KV bytes of the written blocks.
	Bytes int64
}

// flush writes the most valuable resident blocks and commits them.
func (o *offloader) flush(ctx context.Context, resident func(uint64) bool) (FlushResult, error) {
	var res FlushResult
	start := time.Now()
	ctx, cancel := context.WithTimeout(ctx, o.cfg.Deadline)
	defer cancel()
	// Writes may take most of the deadline; the commit gets the rest, so
	// that what was written is published.
	wctx, wcancel := context.WithTimeout(ctx, o.cfg.Deadline*4/5)
	defer wcancel()

	o.mu.Lock()
	cands := make(map[string]kvstore.BlockEntry, len(o.seen))
	for h, st := range o.seen {
		if !resident(h) {
			continue
		}
		e := kvstore.BlockEntry{Depth: st.depth, Bytes: o.blockBytes, LastUse: st.lastUse, Hits: st.hits, Tokens: st.tokens}
		if !st.root {
			e.Parent = kvstore.BlockID(st.parent)
		}
		cands[kvstore.BlockID(h)] = e
	}
	o.mu.Unlock()
	res.Candidates = len(cands)
	if len(cands) == 0 {
		return res, nil
	}
	stored, err := o.store.LoadManifest(wctx, o.space)
	if err != nil {
		o.failed("flush", err)
		return res, fmt.Errorf("kv offload: flush: %w", err)
	}
	sel := kvstore.SelectValuable(cands, o.cfg.MaxBytes, func(id string) bool { _, ok := stored.Blocks[id]; return ok })
	res.Selected = len(sel)
	mine := &kvstore.Manifest{Blocks: map[string]kvstore.BlockEntry{}}
	var werr error
	for _, id := range sel {
		k, _ := kvstore.ParseBlockID(id)
		if err := o.store.PutBlock(wctx, o.space, k, o.payload(k)); err != nil {
			o.failed("flush", err)
			werr = fmt.Errorf("kv offload: flush: %w", err)
			break // parents come first: what follows would be orphans
		}
		mine.Blocks[id] = cands[id]
		res.Written++
		res.Bytes += o.blockBytes
		o.m.flushedBlocks.Inc()
		o.m.flushedBytes.Add(float64(o.blockBytes))
		o.m.writtenBytes.Add(float64(o.payloadBytes))
	}
	// Blocks already stored whose chain the replica used: their hits count.
	for id, e := range cands {
		if _, ok := stored.Blocks[id]; ok {
			mine.Blocks[id] = e
		}
	}
	if len(mine.Blocks) == 0 {
		return res, werr
	}
	// Another replica may commit meanwhile: merge into the latest and
	// check ours survived; one retry, then a lost entry only costs a
	// recomputation.
	for try := 0; try < 2; try++ {
		cur, err := o.store.LoadManifest(ctx, o.space)
		if err == nil {
			cur.Merge(mine)
			dropped := cur.Retain(o.cfg.MaxBytes)
			if err = o.store.CommitManifest(ctx, o.space, cur); err == nil {
				for _, id := range dropped {
					if k, perr := kvstore.ParseBlockID(id); perr == nil {
						_ = o.store.DeleteBlock(ctx, o.space, k)
					}
				}
				res.Committed = len(mine.Blocks)
				var again *kvstore.Manifest
				if again, err = o.store.LoadManifest(ctx, o.space); err == nil {
					if _, ok := again.Blocks[sel0(sel, mine)]; ok {
						break
					}
				}
			}
		}
		if err != nil {
			o.failed("flush", err)
			return res, errors.Join(werr, fmt.Errorf("kv offload: commit after %v: %w", time.Since(start).Round(time.Millisecond), err))
		}
	}
	return res, werr
}

// sel0 is one block id of ours to look for after a commit.
func sel0(sel []string, mine *kvstore.Manifest) string {
	if len(sel) > 0 {
		return sel[len(sel)-1]
	}
	for id := range mine.Blocks {
		return id
	}
	return ""
}

// Flush writes the replica's most valuable resident KV blocks to shared
// storage and commits them, within the configured byte budget and
// deadline: what a replica going away does before it exits. Without KV
// offload it does nothing. Errors are also counted in
// llmd_kv_offload_errors_total; blocks written before an error are
// committed.
func (s *Server) Flush(ctx context.Context) (FlushResult, error) {
	if s.kvo == nil {
		return FlushResult{}, nil
	}
	res, err := s.kvo.flush(ctx, s.resident)
	s.metrics.changed() // the metrics page is re-rendered only after a change
	s.log.Info("kv offload: flushed", "candidates", res.Candidates, "selected", res.Selected,
		"written", res.Written, "committed", res.Committed, "bytes", res.Bytes, "err", err)
	return res, err
}

// restoreFromStorage fills a request's StoredTokens from what storage
// holds of its prompt (reading and verifying the objects).
func (s *Server) restoreFromStorage(ctx context.Context, er *engine.Request) {
	// A salted request (cache_salt) is neither restored nor tracked for a
	// flush: storage holds the unsalted space only (one space per salt is
	// not written yet), and a tenant's blocks must never reach another's.
	if s.kvo == nil || er.RemotePrefill || er.RemoteDecode || er.CacheSalt != "" {
		return
	}
	p := s.kvo.prepare(ctx, er.Prompt, func(hs []uint64) int {
		s.mu.Lock()
		defer s.mu.Unlock()
		return s.eng.CachedPrefix(hs)
	})
	er.StoredTokens = p.storedTokens
	s.metrics.changed()
}

// startPrefetch loads the hottest stored blocks (by value, whole chains,
// within PrefetchBytes) into the GPU cache while the pod starts. The pod
// is not ready until they are read and their modelled restore time has
// passed; a storage failure only shortens what is prefetched.
func (s *Server) startPrefetch() {
	o := s.kvo
	if o == nil || o.cfg.PrefetchBytes == 0 {
		return
	}
	o.prefetchUntil.Store(-1)
	s.bg.Add(1)
	go func() {
		defer s.bg.Done()
		ctx, cancel := context.WithTimeout(s.bgCtx, o.cfg.Deadline)
		defer cancel()
		n := s.prefetch(ctx)
		s.metrics.changed()
		until := s.wall0.Add(s.scaled(o.prof.RestoreTime(n * o.blockSize)))
		o.prefetchUntil.Store(until.UnixNano())
		s.log.Info("kv offload: prefetched", "blocks", n, "ready_after", until.Sub(s.wall0))
	}()
}

// prefetch reads the chosen blocks and preloads those read intact (a
// block whose parent failed is useless and skipped); it returns how many
// the engine took.
func (s *Server) prefetch(ctx context.Context) int {
	o := s.kvo
	m, err := o.store.LoadManifest(ctx, o.space)
	if err != nil {
		o.failed("prefetch", err)
		return 0
	}
	sel := kvstore.SelectValuable(m.Blocks, o.cfg.PrefetchBytes, nil)
	ok := make(map[string]bool, len(sel))
	blocks := make([]engine.PreloadBlock, 0, len(sel))
	for _, id := range sel {
		e := m.Blocks[id]
		if e.Parent != "" && !ok[e.Parent] {
			continue
		}
		k, err := kvstore.ParseBlockID(id)
		if err != nil {
			continue
		}
		data, err := o.store.GetBlock(ctx, o.space, k)
		if err == nil && string(data) != string(o.payload(k)) {
			err = fmt.Errorf("%w: block %s", errWrongPayload, id)
		}
		if err != nil {
			o.failed("prefetch", err)
			if ctx.Err() != nil {
				break
			}
			continue
		}
		o.m.readBytes.Add(float64(len(data)))
		ok[id] = true
		pb := engine.PreloadBlock{Hash: k}
		if e.Parent != "" {
			pb.Parent, _ = kvstore.ParseBlockID(e.Parent) // ok[e.Parent]: it parsed
			pb.HasParent = true
		}
		if len(e.Tokens) == o.blockSize {
			pb.Tokens = e.Tokens
		}
		blocks = append(blocks, pb)
	}
	s.mu.Lock()
	n := s.eng.Preload(blocks, len(blocks))
	s.mu.Unlock()
	// The engine loop publishes their KV events at its next step.
	s.kick()
	o.m.prefetchedBlocks.Add(float64(n))
	return n
}

// prefetchDone reports whether a start-up prefetch no longer holds the
// pod back.
func (s *Server) prefetchDone(now time.Time) bool {
	if s.kvo == nil {
		return true
	}
	u := s.kvo.prefetchUntil.Load()
	return u == 0 || u > 0 && now.UnixNano() >= u
}

// startWriteThrough flushes periodically while the pod serves
// (llm-d.ai/kv-offload: write-through): each round writes only the
// valuable resident blocks storage lacks, so a pod that dies without a
// graceful stop has lost little.
func (s *Server) startWriteThrough() {
	o := s.kvo
	if o == nil || o.cfg.Mode != "write-through" {
		return
	}
	s.bg.Add(1)
	go func() {
		defer s.bg.Done()
		t := time.NewTicker(o.cfg.WriteThroughEvery)
		defer t.Stop()
		for {
			select {
			case <-s.bgCtx.Done():
				return
			case <-t.C:
			}
			_, err := o.flush(s.bgCtx, s.resident)
			s.metrics.changed()
			if err != nil && s.bgCtx.Err() == nil {
				s.log.Warn("kv offload: write-through failed", "err", err)
			}
		}
	}()
}

func (s *Server) resident(h uint64) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.eng.IsCached(h)
}

// flushResponse is the answer of POST apis.KVFlushPath.
type flushResponse struct {
	Candidates int    `json:"candidates"`
	Selected   int    `json:"selected"`
	Written    int    `json:"written"`
	Committed  int    `json:"committed"`
	Bytes      int64  `json:"bytes"`
	Error      string `json:"error,omitempty"`
}

// handleFlush flushes the replica's KV cache now (the autoscaler calls it
// before it scales the revision to zero): 200 once committed, 500 with the
// error when storage failed (what was written is committed), 404 without
// KV offload. The flush is bounded by the configured deadline only: a
// caller that stops waiting (the autoscaler at its deadline) does not cut
// the commit of what was written.
func (s *Server) handleFlush(w http.ResponseWriter, r *http.Request) {
	if s.kvo == nil {
		writeError(w, httpError(http.StatusNotFound, "KV offload is off"))
		return
	}
	res, err := s.Flush(context.WithoutCancel(r.Context()))
	out := flushResponse{Candidates: res.Candidates, Selected: res.Selected, Written: res.Written, Committed: res.Committed, Bytes: res.Bytes}
	status := http.StatusOK
	if err != nil {
		status, out.Error = http.StatusInternalServerError, err.Error()
	}
	writeJSON(w, status, out)
}
