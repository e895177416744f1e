// Package vllmsim is a vLLM-compatible simulator: an HTTP server that speaks
// vLLM's OpenAI-compatible API, metrics, KV events and P/D protocol in front
// of the engine model of pkg/engine, in real (optionally scaled) time.
//
// One goroutine owns the engine and drives it step by step; handlers queue
// requests into it and read their tokens from per-request mailboxes, so a
// slow client never stalls the engine. The engine sees simulated time:
//
//	sim(t) = start + (t - start) / TimeScale
//
// and each step's modelled duration D is slept as D*TimeScale of wall time.
// Steps are laid end to end against absolute deadlines, so sleep overshoot
// does not accumulate; when the loop falls more than maxLag (wall) behind,
// the engine clock catches up with the wall clock instead of replaying the
// backlog. After an idle period the engine clock restarts at sim(now).
//
// Metrics latencies are wall-clock seconds as this server observes them
// (with a time scale of 0.1 they are ten times smaller than the modelled
// hardware's), which is what a client and an autoscaler of the simulator
// see.
//
// It hashes blocks as vLLM does (sha256_cbor or xxhash_cbor chained from
// PYTHONHASHSEED, kvblock.VLLMHasher) and publishes vLLM's KV events with
// their token ids, so a router that predicts its cache hits proves the path
// a real vLLM takes: it shares no hash function with the router.
//
// This package may import the engine, tokenizer, kvblock and kvevents
// packages, net/http, Prometheus and ZMQ; nothing of Kubernetes, the router
// or the activator.
package vllmsim

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/llmd-kn/llmd-kn/pkg/engine"
	"github.com/llmd-kn/llmd-kn/pkg/kvblock"
	"github.com/llmd-kn/llmd-kn/pkg/kvevents"
	"github.com/llmd-kn/llmd-kn/pkg/tokenizer"
	"github.com/llmd-kn/llmd-kn/pkg/tokenizer/native"
)

const (
	// maxLag is how far (wall time) the engine loop may fall behind its
	// schedule before the engine clock jumps to the wall clock.
	maxLag = 20 * time.Millisecond
	// stepRing is how many recent step start times are kept to estimate
	// when a request was first scheduled.
	stepRing = 1024
)

// Server is one simulated vLLM server.
type Server struct {
	cfg       Config
	log       *slog.Logger
	maxLen    int
	maxBatch  int
	blockSize int
	heldPoll  time.Duration

	// mu guards eng and reqs: handlers take it to add and abort requests,
	// the loop for each step.
	mu   sync.Mutex
	eng  *engine.Engine
	reqs map[string]*reqState

	wake     chan struct{}
	quit     chan struct{}
	loopDone chan struct{}

	wall0   time.Time // wall clock at start; the engine clock's origin
	readyAt time.Time
	ready   atomic.Bool
	created int64

	metrics *metrics
	pub     *kvPublisher
	kvo     *offloader // nil without KV offload
	// tok tokenizes prompts; detok decodes ids for /detokenize.
	tok     tokenizer.Tokenizer
	detok   func([]uint32) (string, error)
	handler http.Handler

	advPort atomic.Int32

	// Background calls (block releases) and their shutdown.
	bgMu     sync.Mutex
	bgClosed bool
	bg       sync.WaitGroup
	bgCtx    context.Context
	bgCancel context.CancelFunc
	client   *http.Client

	closeOnce sync.Once

	// Engine-loop state, touched only by the loop goroutine.
	outs       []outRec
	arena      []uint32
	events     []kvevents.Event
	stepNo     uint64
	stepStarts [stepRing]time.Time

	// clockLate and clockDropped are ClockLag's figures (nanoseconds),
	// written by the loop.
	clockLate, clockDropped atomic.Int64
}

// reqState is one request's mailbox between the engine loop and its handler.
type reqState struct {
	id      string
	stream  bool
	chunk   int
	arrival time.Time
	notify  chan struct{} // capacity 1: a pending wake-up, never a backlog
	release *releaseTarget
	aborted atomic.Bool

	mu        sync.Mutex
	toks      []uint32 // delivered and not yet taken by the handler
	delivered int
	finished  bool
	reason    engine.FinishReason
	prompt    int
	cached    int
	held      bool
	blockIDs  []int

	// Engine-loop only.
	firstAt, lastAt, schedAt time.Time
}

// releaseTarget is the prefill engine to tell when the blocks were pulled.
type releaseTarget struct {
	host      string
	port      int
	requestID string
}

// outRec is a step output copied out of the engine's reused buffers.
type outRec struct {
	rs                       *reqState
	off, n                   int
	first, finished, held    bool
	reason                   engine.FinishReason
	prompt, cached, external int
	blockIDs                 []int
}

// tokenizers shares loaded tokenizer files among the simulators of one
// process (kn-llmd local runs many): loading one takes a second or more.
var tokenizers = native.NewCache(native.Options{})

// New builds a server and starts its engine loop (and KV-event publisher).
// Handler serves requests at once; Run or Serve also listen. Close stops it.
func New(cfg Config) (*Server, error) {
	cfg, err := cfg.withDefaults()
	if err != nil {
		return nil, fmt.Errorf("vllmsim: %w", err)
	}
	tok, detok := tokenizer.Estimate, func(ids []uint32) (string, error) { return tokenizer.DecodeString(ids), nil }
	if cfg.TokenizerDir != "" {
		nt, err := tokenizers.Get(cfg.TokenizerDir)
		if err != nil {
			return nil, fmt.Errorf("vllmsim: tokenizer: %w", err)
		}
		tok, detok = nt, func(ids []uint32) (string, error) { return nt.Decode(ids, false) }
	}
	bs := cfg.BlockSize
	if bs == 0 {
		bs = kvblock.DefaultBlockSize
	}
	hashing, err := kvblock.NewVLLMHasher(bs, cfg.HashAlgo, strconv.FormatUint(cfg.HashSeed, 10))
	if err != nil {
		return nil, fmt.Errorf("vllmsim: %w", err)
	}
	eng, err := engine.New(engine.Config{
		Hashing:             hashing,
		Profile:             cfg.Profile,
		Role:                cfg.Role,
		Policy:              cfg.SchedulingPolicy,
		BlockSize:           cfg.BlockSize,
		MaxNumSeqs:          cfg.MaxNumSeqs,
		MaxNumBatchedTokens: cfg.MaxNumBatchedTokens,
		MaxModelLen:         cfg.MaxModelLen,
		MaxWaiting:          cfg.MaxWaiting,
		NumBlocks:           cfg.NumBlocks,
		HashSeed:            cfg.HashSeed,
		Seed:                cfg.Seed,
		HeldTimeout:         cfg.HeldTimeout,
		DisableKVEvents:     !cfg.KVEvents.Enable || cfg.KVEvents.Publisher != "zmq",
		CPUTierBytes:        cfg.CPUTierBytes,
		DiskTierBytes:       cfg.DiskTierBytes,
	})
	if err != nil {
		return nil, fmt.Errorf("vllmsim: %w", err)
	}
	ec := eng.Config()
	s := &Server{
		cfg:       cfg,
		log:       cfg.Logger,
		maxLen:    ec.MaxModelLen,
		maxBatch:  ec.MaxNumBatchedTokens,
		blockSize: ec.BlockSize,
		eng:       eng,
		reqs:      make(map[string]*reqState),
		wake:      make(chan struct{}, 1),
		quit:      make(chan struct{}),
		loopDone:  make(chan struct{}),
		wall0:     time.Now(),
		client:    &http.Client{Timeout: cfg.ReleaseTimeout},
		tok:       tok,
		detok:     detok,
	}
	s.created = s.wall0.Unix()
	// Held blocks expire inside Step; an idle loop looks again this often.
	s.heldPoll = min(time.Second, max(10*time.Millisecond, s.scaled(ec.HeldTimeout)/10))
	s.readyAt = s.wall0.Add(s.scaled(cfg.StartupDelay))
	s.advPort.Store(int32(cfg.AdvertisePort))
	s.bgCtx, s.bgCancel = context.WithCancel(context.Background())
	s.metrics = newMetrics(&cfg, eng.NumBlocks(), ec.BlockSize)
	if s.kvo, err = newOffloader(cfg, hashing, ec.BlockSize, ec.MaxNumBatchedTokens, eng.NumBlocks(), s.metrics.reg); err != nil {
		return nil, fmt.Errorf("vllmsim: %w", err)
	}
	if cfg.KVEvents.Enable && cfg.KVEvents.Publisher == "zmq" {
		s.pub, err = newKVPublisher(cfg.KVEvents, s.log)
		if err != nil {
			s.kvo.close()
			return nil, fmt.Errorf("vllmsim: kv events: %w", err)
		}
	}
	s.handler = s.routes()
	s.startPrefetch()
	s.startWriteThrough()
	go s.loop()
	s.log.Info("vLLM simulator started",
		"model", cfg.Model, "served_model_names", cfg.ServedModelNames, "profile", cfg.Profile.Name,
		"role", cfg.Role.String(), "num_gpu_blocks", eng.NumBlocks(), "block_size", ec.BlockSize,
		"max_model_len", ec.MaxModelLen, "time_scale", cfg.TimeScale, "engine_id", cfg.EngineID)
	return s, nil
}

// Handler returns the HTTP handler: the vLLM API, /metrics and /health.
func (s *Server) Handler() http.Handler { return s.handler }

// Config returns the effective configuration (defaults filled in).
func (s *Server) Config() Config { return s.cfg }

// EngineID is the engine id this server reports in kv_transfer_params.
func (s *Server) EngineID() string { return s.cfg.EngineID }

// Stats returns a snapshot of the engine's gauges and counters.
func (s *Server) Stats() engine.Stats {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.eng.Stats()
}

// ClockLag is how far the engine loop fell behind its schedule: the
// modelled hardware runs at the time scale only while the machine gives the
// loop the CPU it needs. Late is the most wall time a step started after
// its scheduled start; Dropped is the modelled time the engine clock
// skipped because the loop fell more than maxLag behind (every request on
// the engine then waited that much longer than the modelled hardware would
// have made it). Latencies measured against a simulator whose clock
// dropped time are inflated by the machine, not by the model.
type ClockLag struct {
	Late, Dropped time.Duration
}

// ClockLag returns how far the engine loop has fallen behind its schedule
// since the server started.
func (s *Server) ClockLag() ClockLag {
	return ClockLag{Late: time.Duration(s.clockLate.Load()), Dropped: time.Duration(s.clockDropped.Load())}
}

// KVEventsAddr returns the address the KV-event publisher is bound to, or nil
// when it does not bind (disabled, or connecting to a subscriber).
func (s *Server) KVEventsAddr() net.Addr {
	if s.pub == nil {
		return nil
	}
	return s.pub.addr()
}

// Ready reports whether the simulated startup has completed.
func (s *Server) Ready() bool {
	if s.ready.Load() {
		return true
	}
	if now := time.Now(); !now.Before(s.readyAt) && s.prefetchDone(now) {
		s.ready.Store(true)
		return true
	}
	return false
}

// Run listens on Config.Host:Config.Port and serves until ctx is done, then
// drains in-flight requests (up to Config.ShutdownTimeout), flushes its KV
// to shared storage when it offloads (bounded by its deadline) and closes
// the server.
func (s *Server) Run(ctx context.Context) error {
	defer s.Close()
	ln, err := net.Listen("tcp", net.JoinHostPort(s.cfg.Host, strconv.Itoa(s.cfg.Port)))
	if err != nil {
		return fmt.Errorf("vllmsim: %w", err)
	}
	err = s.Serve(ctx, ln)
	if _, ferr := s.Flush(context.Background()); ferr != nil && err == nil {
		// Reported and counted; the replica still exits.
		s.log.Warn("kv offload: flush failed", "err", ferr)
	}
	return err
}

// Serve serves on ln until ctx is done, then shuts the HTTP server down
// gracefully. It does not Close the server. Unless Config.AdvertisePort is
// set, ln's port is what kv_transfer_params advertise.
func (s *Server) Serve(ctx context.Context, ln net.Listener) error {
	if s.advPort.Load() == 0 {
		if a, ok := ln.Addr().(*net.TCPAddr); ok {
			s.advPort.Store(int32(a.Port))
		}
	}
	srv := &http.Server{
		Handler:           s.handler,
		ReadHeaderTimeout: 10 * time.Second,
		IdleTimeout:       2 * time.Minute,
		ErrorLog:          slog.NewLogLogger(s.log.Handler(), slog.LevelDebug),
	}
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(ln) }()
	s.log.Info("serving", "addr", ln.Addr().String())
	select {
	case err := <-errc:
		return fmt.Errorf("vllmsim: %w", err)
	case <-ctx.Done():
	}
	s.log.Info("shutting down: draining in-flight requests", "timeout", s.cfg.ShutdownTimeout)
	sctx, cancel := context.WithTimeout(context.Background(), s.cfg.ShutdownTimeout)
	defer cancel()
	err := srv.Shutdown(sctx)
	if err != nil {
		// Past the drain deadline: cut the remaining streams; their
		// handlers abort their requests.
		_ = srv.Close()
	}
	if serr := <-errc; serr != nil && !errors.Is(serr, http.ErrServerClosed) {
		return fmt.Errorf("vllmsim: %w", serr)
	}
	if err != nil && !errors.Is(err, context.DeadlineExceeded) {
		return fmt.Errorf("vllmsim: shutdown: %w", err)
	}
	return nil
}

// Close stops the engine loop, the KV-event publisher and background calls.
// Requests still in flight end with an error. It is safe to call twice.
func (s *Server) Close() error {
	s.closeOnce.Do(func() {
		close(s.quit)
		<-s.loopDone
		s.bgMu.Lock()
		s.bgClosed = true
		s.bgMu.Unlock()
		s.bgCancel()
		s.bg.Wait()
		if s.pub != nil {
			s.pub.close()
		}
		s.kvo.close()
	})
	return nil
}

// scaled turns a simulated duration into wall time.
func (s *Server) scaled(d time.Duration) time.Duration {
	return time.Duration(float64(d) * s.cfg.TimeScale)
}

// simAt is the engine clock at wall time w.
func (s *Server) simAt(w time.Time) time.Time {
	return s.wall0.Add(time.Duration(float64(w.Sub(s.wall0)) / s.cfg.TimeScale))
}

// wallAt is the wall time at engine time t.
func (s *Server) wallAt(t time.Time) time.Time {
	return s.wall0.Add(s.scaled(t.Sub(s.wall0)))
}

// kick wakes the engine loop if it is idle.
func (s *Server) kick() {
	select {
	case s.wake <- struct{}{}:
	default:
	}
}

// loop is the one goroutine that drives the engine.
func (s *Server) loop() {
	defer close(s.loopDone)
	timer := time.NewTimer(time.Hour)
	timer.Stop()
	var simT time.Time
	resync := true
	for {
		select {
		case <-s.quit:
			return
		default:
		}
		wallStart := time.Now()
		if !resync {
			if late := int64(wallStart.Sub(s.wallAt(simT))); late > s.clockLate.Load() {
				s.clockLate.Store(late)
			}
		}
		s.mu.Lock()
		if now := s.simAt(wallStart); resync || now.Sub(simT) > time.Duration(float64(maxLag)/s.cfg.TimeScale) {
			if !resync {
				s.clockDropped.Add(int64(now.Sub(simT)))
			}
			simT = now
		}
		res := s.eng.Step(simT)
		s.collect(res)
		st := s.eng.Stats()
		s.mu.Unlock()
		s.stepNo++
		s.stepStarts[s.stepNo%stepRing] = wallStart
		resync = false

		if res.Idle {
			s.afterStep(wallStart, &st, 0)
			var wakeC <-chan time.Time
			switch {
			case !res.WakeAt.IsZero():
				timer.Reset(max(0, time.Until(s.wallAt(res.WakeAt))))
				wakeC = timer.C
			case st.Held > 0:
				timer.Reset(s.heldPoll)
				wakeC = timer.C
			}
			select {
			case <-s.wake:
			case <-wakeC:
			case <-s.quit:
				timer.Stop()
				return
			}
			timer.Stop()
			resync = true
			continue
		}
		end := simT.Add(res.Duration)
		if d := time.Until(s.wallAt(end)); d > 0 {
			timer.Reset(d)
			select {
			case <-timer.C:
			case <-s.quit:
				timer.Stop()
				return
			}
		}
		s.afterStep(time.Now(), &st, res.NumTokens)
		simT = end
	}
}

// collect copies a step's outputs and events out of the engine's buffers,
// which the next Step reuses. It runs under s.mu.
func (s *Server) collect(res *engine.StepResult) {
	s.outs = s.outs[:0]
	s.arena = s.arena[:0]
	for i := range res.Outputs {
		o := &res.Outputs[i]
		rs := s.reqs[o.ID]
		if rs == nil {
			continue // aborted meanwhile
		}
		if o.Finished {
			// Done in the engine: an abort must no longer touch it (a
			// prefill engine's held blocks wait for the decode engine).
			delete(s.reqs, o.ID)
		}
		rec := outRec{
			rs: rs, off: len(s.arena), n: len(o.NewTokens),
			first: o.FirstToken, finished: o.Finished, held: o.Held, reason: o.FinishReason,
			prompt: o.PromptTokens, cached: o.CachedTokens, external: o.ExternalTokens,
		}
		if o.Held {
			rec.blockIDs = append([]int(nil), o.BlockIDs...)
		}
		s.arena = append(s.arena, o.NewTokens...)
		s.outs = append(s.outs, rec)
	}
	s.events = s.events[:0]
	if s.pub == nil || len(res.Events) == 0 {
		return
	}
	// One allocation per step for all hashes and tokens: the batch outlives
	// this step in the publisher's queue.
	nh, nt := 0, 0
	for i := range res.Events {
		nh += len(res.Events[i].Hashes)
		nt += len(res.Events[i].TokenIDs)
	}
	hashes := make([]uint64, 0, nh)
	tokens := make([]uint32, 0, nt)
	for i := range res.Events {
		e := &res.Events[i]
		ev := kvevents.Event{Medium: kvevents.MediumGPU}
		if e.Medium != engine.MediumGPU {
			ev.Medium = e.Medium // the tiers' CPU / STORAGE
		}
		switch e.Kind {
		case engine.BlockStored:
			ev.Kind = kvevents.BlockStored
			ev.Parent, ev.HasParent = e.Parent, e.HasParent
			ev.BlockSize = e.BlockSize
			h0, t0 := len(hashes), len(tokens)
			hashes = append(hashes, e.Hashes...)
			tokens = append(tokens, e.TokenIDs...)
			ev.Hashes, ev.TokenIDs = hashes[h0:len(hashes):len(hashes)], tokens[t0:len(tokens):len(tokens)]
		case engine.BlockRemoved:
			ev.Kind = kvevents.BlockRemoved
			h0 := len(hashes)
			hashes = append(hashes, e.Hashes...)
			ev.Hashes = hashes[h0:len(hashes):len(hashes)]
		case engine.AllBlocksCleared:
			ev = kvevents.Event{Kind: kvevents.AllBlocksCleared}
		default:
			continue
		}
		s.events = append(s.events, ev)
	}
}

// afterStep delivers a step's outputs at wall time now, publishes its KV
// events and updates the metrics. It runs on the loop, outside s.mu.
func (s *Server) afterStep(now time.Time, st *engine.Stats, stepTokens int) {
	m := s.metrics
	m.observeStats(st)
	if stepTokens > 0 {
		m.iterationTokens.Observe(float64(stepTokens))
	}
	for i := range s.outs {
		s.deliver(now, &s.outs[i])
	}
	if len(s.events) > 0 {
		b := kvevents.Batch{
			TS:        float64(now.UnixNano()) / 1e9,
			Events:    append([]kvevents.Event(nil), s.events...),
			HasDPRank: true,
		}
		m.kvBatches.Inc()
		if !s.pub.enqueue(b) {
			m.kvBatchesDropped.Inc()
		}
	}
	m.changed()
}

func (s *Server) deliver(now time.Time, o *outRec) {
	rs := o.rs
	if rs.aborted.Load() {
		return
	}
	m := s.metrics
	toks := s.arena[o.off : o.off+o.n]
	m.genTokens.Add(float64(o.n))
	if o.first {
		rs.firstAt = now
		rs.schedAt = s.scheduledAt(rs, o)
		m.ttft.Observe(now.Sub(rs.arrival).Seconds())
		m.queue.Observe(rs.schedAt.Sub(rs.arrival).Seconds())
		m.prefill.Observe(now.Sub(rs.schedAt).Seconds())
		m.promptTokens.Add(float64(o.prompt))
		m.promptHist.Observe(float64(o.prompt))
		if rs.release != nil {
			s.startRelease(*rs.release)
		}
	} else {
		m.itl.Observe(now.Sub(rs.lastAt).Seconds())
	}
	rs.lastAt = now

	if o.finished {
		// Count the request as done before its handler can see it
		// finished, so that a client reading /metrics after its answer
		// finds it counted.
		m.e2e.Observe(now.Sub(rs.arrival).Seconds())
		m.decode.Observe(now.Sub(rs.firstAt).Seconds())
		m.inference.Observe(now.Sub(rs.schedAt).Seconds())
		if c := m.success[o.reason]; c != nil {
			c.Inc()
		}
	}
	rs.mu.Lock()
	rs.toks = append(rs.toks, toks...)
	rs.delivered += o.n
	if o.first {
		rs.prompt, rs.cached = o.prompt, o.cached+o.external
	}
	delivered := rs.delivered
	if o.finished {
		m.genHist.Observe(float64(delivered))
		rs.finished, rs.reason, rs.held, rs.blockIDs = true, o.reason, o.held, o.blockIDs
	}
	wake := o.finished || (rs.stream && (o.first || len(rs.toks) >= rs.chunk))
	rs.mu.Unlock()
	m.changed() // before the handler can answer
	if wake {
		select {
		case rs.notify <- struct{}{}:
		default:
		}
	}
}

// scheduledAt estimates when the request was first scheduled: the engine
// reports tokens, not admissions, so count back the prefill chunks its
// uncached prompt needed (one per step at the full token budget) from the
// step that produced its first token.
func (s *Server) scheduledAt(rs *reqState, o *outRec) time.Time {
	uncached := max(1, o.prompt-o.cached-o.external)
	chunks := uint64((uncached + s.maxBatch - 1) / s.maxBatch)
	t := rs.arrival
	if chunks-1 < stepRing && chunks-1 < s.stepNo {
		t = s.stepStarts[(s.stepNo-(chunks-1))%stepRing]
	}
	if t.Before(rs.arrival) {
		t = rs.arrival
	}
	return t
}

// abort removes a request its client gave up on, freeing its blocks. A
// request the engine already finished is left alone.
func (s *Server) abort(rs *reqState) {
	s.mu.Lock()
	rs.aborted.Store(true)
	if s.reqs[rs.id] == rs {
		delete(s.reqs, rs.id)
		s.eng.Abort(rs.id)
	}
	s.mu.Unlock()
	s.kick()
}

// newID returns prefix followed by 32 random hex digits, as vLLM's ids.
func newID(prefix string) string {
	var b [16]byte
	_, _ = rand.Read(b[:])
	return prefix + hex.EncodeToString(b[:])
}

func newUUID() string {
	var b [16]byte
	_, _ = rand.Read(b[:])
	b[6] = b[6]&0x0f | 0x40
	b[8] = b[8]&0x3f | 0x80
	h := hex.EncodeToString(b[:])
	return h[:8] + "-" + h[8:12] + "-" + h[12:16] + "-" + h[16:20] + "-" + h[20:]
}
