package local

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"sync"
	"time"

	"github.com/llmd-kn/llmd-kn/pkg/engine"
	"github.com/llmd-kn/llmd-kn/pkg/vllmsim"
)

// runner is what a pod runs: an in-process simulator or a process.
type runner interface {
	// start launches the pod and returns its HTTP base URL and its KV-event
	// endpoint (tcp://127.0.0.1:port, empty when it publishes none).
	start() (url, kvEvents string, err error)
	// exited is closed once the pod has stopped, for whatever reason;
	// exitErr then says why (nil for a requested stop).
	exited() <-chan struct{}
	exitErr() error
	// stop ends the pod: gracefully within grace (in-flight requests
	// finish), then forcibly, or at once when force is closed. It returns
	// once the pod is gone.
	stop(grace time.Duration, force <-chan struct{})
}

// simRunner is a vllmsim server in this process on a loopback port. The
// runner owns the HTTP server (vllmsim serves the handler), so that a
// forced stop can cut connections at once.
type simRunner struct {
	cfg  vllmsim.Config
	srv  *vllmsim.Server
	hs   *http.Server
	done chan struct{}
	err  error
}

func newSimRunner(cfg vllmsim.Config) *simRunner {
	return &simRunner{cfg: cfg, done: make(chan struct{})}
}

func (s *simRunner) start() (string, string, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		close(s.done)
		return "", "", err
	}
	// kv_transfer_params tell decode pods where this one listens.
	s.cfg.AdvertisePort = ln.Addr().(*net.TCPAddr).Port
	srv, err := vllmsim.New(s.cfg)
	if err != nil {
		ln.Close()
		close(s.done)
		return "", "", err
	}
	s.srv = srv
	var kv string
	if a, ok := srv.KVEventsAddr().(*net.TCPAddr); ok {
		kv = fmt.Sprintf("tcp://127.0.0.1:%d", a.Port)
	}
	s.hs = &http.Server{Handler: srv.Handler(), ReadHeaderTimeout: 10 * time.Second,
		ErrorLog: slog.NewLogLogger(s.cfg.Logger.Handler(), slog.LevelDebug)}
	go func() {
		defer close(s.done)
		if err := s.hs.Serve(ln); !errors.Is(err, http.ErrServerClosed) {
			s.err = err
		}
	}()
	return "http://" + ln.Addr().String(), kv, nil
}

func (s *simRunner) exited() <-chan struct{} { return s.done }
func (s *simRunner) exitErr() error          { return s.err }

// stop drains the HTTP server (up to grace), cutting what remains, or at
// once when forced, then closes the engine.
func (s *simRunner) stop(grace time.Duration, force <-chan struct{}) {
	if s.hs == nil {
		<-s.done
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), grace)
	defer cancel()
	shut := make(chan struct{})
	go func() {
		defer close(shut)
		if s.hs.Shutdown(ctx) != nil {
			_ = s.hs.Close()
		}
	}()
	select {
	case <-shut:
	case <-force:
		_ = s.hs.Close()
		cancel()
		<-shut
	}
	<-s.done
	// A pod that offloads its KV flushes it before it goes, within its
	// deadline (llm-d.ai/kv-offload-deadline), unless forced to go now.
	fctx, fcancel := context.WithCancel(context.Background())
	flushed := make(chan struct{})
	go func() {
		defer close(flushed)
		if _, err := s.srv.Flush(fctx); err != nil {
			s.cfg.Logger.Warn("kv offload: flush failed", "err", err)
		}
	}()
	select {
	case <-flushed:
	case <-force:
		fcancel()
		<-flushed
	}
	fcancel()
	_ = s.srv.Close()
	if lag := s.srv.ClockLag(); lag.Dropped > 0 {
		s.cfg.Logger.Warn("the simulated engine fell behind its clock: the machine was too busy for the time scale, and the latencies it served are longer than the modelled hardware's",
			"dropped_modelled_ms", lag.Dropped.Milliseconds(), "most_late_step_ms", lag.Late.Milliseconds(), "time_scale", s.cfg.TimeScale)
	}
}

// simConfig is the simulator configuration of one pod of svc.
func simConfig(svc *Service, name string, role engine.Role, timeScale float64, log *slog.Logger) (vllmsim.Config, error) {
	profName := svc.Spec.SimProfile
	if profName == "" {
		profName = engine.DefaultProfile
	}
	prof, err := engine.BuiltinProfile(profName)
	if err != nil {
		return vllmsim.Config{}, err
	}
	e := svc.Engine
	if role == engine.RolePrefill && e.PrefillMaxNumBatchedTokens > 0 {
		e.MaxNumBatchedTokens = e.PrefillMaxNumBatchedTokens
	}
	policy := engine.PolicyFCFS
	if svc.PriorityScheduling(true) {
		policy = engine.PolicyPriority
	}
	return vllmsim.Config{
		SchedulingPolicy:     policy,
		Model:                svc.ModelPath,
		ServedModelNames:     svc.Models,
		Profile:              prof,
		Role:                 role,
		BlockSize:            e.BlockSize,
		MaxNumSeqs:           e.MaxNumSeqs,
		MaxNumBatchedTokens:  e.MaxNumBatchedTokens,
		MaxModelLen:          e.MaxModelLen,
		NumBlocks:            e.NumGPUBlocksOverride,
		GPUMemoryUtilization: e.GPUMemoryUtilization,
		Seed:                 e.Seed,
		TimeScale:            timeScale,
		KVEvents: vllmsim.KVEventsConfig{Enable: true, Publisher: "zmq", Endpoint: "tcp://*:0",
			Topic: "kv@127.0.0.1@" + svc.Model},
		EngineID:      name,
		AdvertiseHost: "127.0.0.1",
		Logger:        log,
		// A revision whose llm-d.ai/tokenizer names the model's files
		// (native:DIR) gets simulated engines that tokenize with them, as
		// its vLLM pods would: the router's tokens are then checked against
		// an independent engine's.
		TokenizerDir: svc.Spec.TokenizerDir,
	}, nil
}

// waitHealthy polls GET {url}/health until it answers 200, the pod exits
// or ctx ends.
func waitHealthy(ctx context.Context, url string, exited <-chan struct{}, every time.Duration) error {
	c := &http.Client{Timeout: 2 * time.Second}
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, url+"/health", nil)
		if resp, err := c.Do(req); err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-exited:
			return errExited
		case <-t.C:
		}
	}
}

var errExited = errors.New("exited before it was ready")

// Liveness, as a Kubernetes liveness probe on /health: a ready pod that
// fails livenessFailures probes in a row (each with livenessTimeout, one
// every livenessPeriod) is replaced: a frozen process (SIGSTOP, a hung
// engine) does not stay in place for ever.
var (
	livenessPeriod   = 10 * time.Second
	livenessTimeout  = 5 * time.Second
	livenessFailures = 3
)

// watchLiveness probes GET {url}/health every period until ctx ends, and
// returns (once, then closes the channel) an error when failures probes in
// a row did not answer 200 within timeout.
func watchLiveness(ctx context.Context, url string, period, timeout time.Duration, failures int) <-chan error {
	out := make(chan error, 1)
	go func() {
		defer close(out)
		c := &http.Client{Timeout: timeout}
		t := time.NewTicker(period)
		defer t.Stop()
		failed := 0
		for {
			select {
			case <-ctx.Done():
				return
			case <-t.C:
			}
			req, _ := http.NewRequestWithContext(ctx, http.MethodGet, url+"/health", nil)
			resp, err := c.Do(req)
			if err == nil {
				resp.Body.Close()
				if resp.StatusCode != http.StatusOK {
					err = fmt.Errorf("status %d", resp.StatusCode)
				}
			}
			if ctx.Err() != nil {
				return
			}
			if err == nil {
				failed = 0
				continue
			}
			if failed++; failed >= failures {
				out <- fmt.Errorf("liveness: %d health checks in a row failed (last: %v)", failed, err)
				return
			}
		}
	}()
	return out
}

// podPhase is where a pod is in its life.
type podPhase int

const (
	phaseStarting podPhase = iota
	phaseReady
	phaseTerminating
	phaseExited
)

func (p podPhase) String() string {
	return [...]string{"starting", "ready", "terminating", "exited"}[p]
}

// pod is one replica of one role of a revision.
type pod struct {
	name    string
	created time.Time

	mu    sync.Mutex
	phase podPhase
	url   string
	kv    string
	// stats reads an in-process simulator's engine statistics; nil for
	// process pods and before the pod started.
	stats func() engine.Stats
	// clock reads an in-process simulator's clock lag (ClockLag); nil
	// like stats.
	clock func() vllmsim.ClockLag
	// stopping is closed when the pod is asked to stop, so that a pod
	// still starting stops waiting for readiness.
	stopping chan struct{}
}

func (p *pod) getPhase() podPhase {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.phase
}

// setPhase moves the pod forward; a pod never goes back (a terminating pod
// that turns healthy stays terminating).
func (p *pod) setPhase(ph podPhase) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if ph <= p.phase {
		return false
	}
	p.phase = ph
	return true
}

// engineStats is the pod's engine statistics, when it is an in-process
// simulator that has started.
func (p *pod) engineStats() (engine.Stats, bool) {
	p.mu.Lock()
	f := p.stats
	p.mu.Unlock()
	if f == nil {
		return engine.Stats{}, false
	}
	return f(), true
}

// clockLag is how far the pod's in-process simulator fell behind its
// clock (zero for process pods and before the pod started).
func (p *pod) clockLag() vllmsim.ClockLag {
	p.mu.Lock()
	f := p.clock
	p.mu.Unlock()
	if f == nil {
		return vllmsim.ClockLag{}
	}
	return f()
}

// terminate asks the pod to stop: it leaves the endpoints at the next
// publish and its run goroutine stops it.
func (p *pod) terminate() {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.phase < phaseTerminating {
		p.phase = phaseTerminating
		close(p.stopping)
	}
}
