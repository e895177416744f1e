// Package local is the embedded runtime behind `kn-llmd local`: it runs the
// Knative Services a user would `kubectl apply` on one machine, with no
// cluster. Manifests are validated and defaulted by pkg/admission, as the
// cluster webhook does; the data plane is pkg/activator, as in a cluster;
// each replica of each role is a "pod", an in-process vLLM simulator
// (pkg/vllmsim) by default or a process started from a command template
// (a real `vllm serve` on a GPU box), scaled through the Scaler interface
// the autoscaler drives.
//
// It is an adapter: it imports the cores and the activator, never the
// reverse, and nothing of a Kubernetes client or API server.
package local

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"

	"github.com/llmd-kn/llmd-kn/pkg/activator"
	"github.com/llmd-kn/llmd-kn/pkg/engine"
	"github.com/llmd-kn/llmd-kn/pkg/router"
	"github.com/llmd-kn/llmd-kn/pkg/vllmsim"
)

// Defaults of Options.
const (
	DefaultAddr           = "127.0.0.1:8080"
	DefaultMetricsAddr    = "127.0.0.1:9090"
	DefaultGracePeriod    = 30 * time.Second
	DefaultDrainTimeout   = 30 * time.Second
	DefaultStartupTimeout = 10 * time.Minute
	// Domain is the host suffix of Services: {name}.{namespace}.localhost,
	// which browsers and curl resolve to the loopback address.
	Domain = "localhost"
)

// Options configure a Runtime. Zero fields take the defaults above.
type Options struct {
	Services []*Service
	// Tiers is the activator's SLO tier table: its queues, admission and
	// sheds (activator.DefaultTiers() when nil). What Parse derived from
	// a tier's targets (the step budget, the SLO autoscaler's targets)
	// came from the default table and stays.
	Tiers *activator.Tiers
	// Addr serves the OpenAI API (the activator); MetricsAddr serves the
	// status page, /status.json, /metrics, /stats, the pods' metrics
	// under /pods/ and POST /scale. MetricsAddr "off" disables that
	// server.
	Addr, MetricsAddr string
	// BatchStorage keeps batch files, state and event dedupe (a
	// directory or bucket URL); in memory when empty.
	BatchStorage string
	// AllowedHosts are Host names both servers answer besides IP
	// literals, localhost and *.localhost ("*.example.com" for a
	// suffix): the DNS-rebinding guard (guard.go).
	AllowedHosts []string
	// SimTimeScale multiplies every simulated duration of in-process pods
	// (0.05 runs twenty times faster than the modelled GPU). Default 1.
	SimTimeScale float64
	// SimStartupDelay is a simulated pod's cold start (model loading):
	// its /health fails until it passes, scaled by SimTimeScale.
	SimStartupDelay time.Duration
	// SimTokenizerDir holds Hugging Face tokenizer files the simulated
	// pods tokenize with when a revision's llm-d.ai/tokenizer names no
	// folder (as a vLLM's own --tokenizer; the engine tokenizer mode then
	// learns them from the pods' /render).
	SimTokenizerDir string
	// PodCommand, when set, starts pods as processes from this template
	// instead of in-process simulators (see PodCommandHelp).
	PodCommand string
	// GracePeriod is how long a stopping pod may drain before it is
	// killed; DrainTimeout bounds Shutdown's wait for in-flight requests;
	// StartupTimeout is how long a pod may take to pass /health.
	GracePeriod, DrainTimeout, StartupTimeout time.Duration
	// DebugRouting adds the activator's routing explanation header
	// (X-Llm-D-Route) to answers.
	DebugRouting bool
	Logger       *slog.Logger
	// PodOutput receives process pods' output, each line prefixed with
	// [pod-name]. Default os.Stderr.
	PodOutput io.Writer
	// Autoscale configures the slo.autoscaling.llm-d.ai deciders that
	// scale the Services of that autoscaler class (see AutoscaleOptions).
	Autoscale AutoscaleOptions
	// TokenizerDir is the activator's folder of models' Hugging Face
	// tokenizer files (llm-d.ai/tokenizer auto and native).
	TokenizerDir string
	// KVEventsBind is a ZMQ endpoint (tcp://127.0.0.1:5557) where the
	// activator collects the KV events of publishers that connect (llm-d's
	// direction; vLLM's when its endpoint names a host), telling pods apart
	// by their topic. A pod command that uses {kv_events_collector} gets
	// one on a free loopback port when this is empty.
	KVEventsBind string
	// KVOffloadDir is the storage of revisions whose llm-d.ai/kv-offload
	// names no URI (default DefaultKVOffloadDir()); KVPayloadScale shrinks
	// the objects simulated pods store (default DefaultKVPayloadScale).
	KVOffloadDir   string
	KVPayloadScale float64
}

// PodCommandHelp documents the pod command template.
const PodCommandHelp = `A pod command is a shell command line (run with /bin/sh -c, prefixed with
exec when it is a simple command, in its own process group) with these
placeholders:
  {model}              the model vLLM loads: the container's --model (or positional) value
  {served_model_name}  the name clients use (llm-d.ai/model, else --served-model-name, ...)
  {port}               the port the pod must listen on (required)
  {args}               the container's args without the model, --host and --port
  {role}               prefill, decode or both
  {name}               the pod name, e.g. llm-00001-decode-1
  {namespace}, {revision}
  {kv_events_port}     a free port for the pod's ZMQ KV-event publisher (tcp://*:PORT);
                       when the template uses it, the activator subscribes to it
  {kv_events_collector} the activator's bound KV-event endpoint (tcp://127.0.0.1:PORT,
                       --kv-events-bind or a free port) for publishers that connect;
                       their topic names the pod: kv@127.0.0.1:{port}@{served_model_name}
                       (llm-d's kv@<pod IP>:<port>@<model>) or kv@{name}@...
  {time_scale}         --sim-time-scale, {sim_profile} llm-d.ai/sim-profile (for simulators)
The pod gets PORT, POD_NAME, POD_NAMESPACE, POD_IP=127.0.0.1, K_SERVICE,
K_REVISION, PYTHONHASHSEED=0 and the container's literal env. It is ready
when GET /health answers 200; its output is logged with a [pod-name] prefix;
stopping sends SIGTERM to its process group, then SIGKILL after
--grace-period (and on Linux the kernel stops it if the runtime dies).

With a publisher that connects (llm-d-inference-sim, or vLLM given a
collector's address):
  llm-d-inference-sim --port {port} --model {served_model_name} --enable-kvcache
    --zmq-endpoint {kv_events_collector} --kv-cache-size 1024 --block-size 16

On a GPU box, with KV events for precise prefix routing (add
--kv-transfer-config '{"kv_connector":"NixlConnector","kv_role":"kv_both"}'
for prefill/decode disaggregation):
  vllm serve {model} --host 127.0.0.1 --port {port} {args} --kv-events-config
    '{"enable_kv_cache_events":true,"publisher":"zmq","endpoint":"tcp://*:{kv_events_port}","topic":"kv@127.0.0.1@{served_model_name}"}'
To try the process path with the simulator:
  kn-llmd sim --model {model} --port {port} --role {role} --time-scale {time_scale} {args}`

// Runtime runs Services on this machine.
type Runtime struct {
	opts   Options
	log    *slog.Logger
	reg    *prometheus.Registry
	act    *activator.Activator
	scaler *podScaler
	status *statusPage

	// autoscalers are the deciders of the revisions of the
	// slo.autoscaling.llm-d.ai class (fixed after New).
	autoscalers    map[activator.RevisionKey]*revAutoscaler
	recommendedG   *prometheus.GaugeVec
	stopAutoscale  context.CancelFunc
	autoscaleLoops sync.WaitGroup

	// kvCollector is the bound KV-event endpoint pods connect to (empty
	// when none); stopKV ends it, kvDone says it has.
	kvCollector string
	stopKV      context.CancelFunc
	kvDone      chan error

	api, obs     *http.Server
	apiLn, obsLn net.Listener
	stopBatch    func()
	served       sync.WaitGroup
	startOnce    sync.Once
	shutOnce     sync.Once
	shutErr      error
}

// New builds a Runtime; Start runs it.
func New(opts Options) (*Runtime, error) {
	if len(opts.Services) == 0 {
		return nil, errors.New("local: no Service to run")
	}
	if opts.Addr == "" {
		opts.Addr = DefaultAddr
	}
	if opts.MetricsAddr == "" {
		opts.MetricsAddr = DefaultMetricsAddr
	}
	if opts.SimTimeScale == 0 {
		opts.SimTimeScale = 1
	}
	if !(opts.SimTimeScale > 0) || opts.SimTimeScale > 1000 {
		return nil, fmt.Errorf("local: sim time scale %v must be in (0, 1000]", opts.SimTimeScale)
	}
	if opts.KVOffloadDir == "" {
		opts.KVOffloadDir = DefaultKVOffloadDir()
	}
	if opts.KVPayloadScale == 0 {
		opts.KVPayloadScale = DefaultKVPayloadScale
	}
	if !(opts.KVPayloadScale > 0 && opts.KVPayloadScale <= 1) {
		return nil, fmt.Errorf("local: kv payload scale %v must be in (0, 1]", opts.KVPayloadScale)
	}
	if opts.GracePeriod == 0 {
		opts.GracePeriod = DefaultGracePeriod
	}
	if opts.DrainTimeout == 0 {
		opts.DrainTimeout = DefaultDrainTimeout
	}
	if opts.StartupTimeout == 0 {
		opts.StartupTimeout = DefaultStartupTimeout
	}
	if opts.GracePeriod < 0 || opts.DrainTimeout < 0 || opts.StartupTimeout < 0 || opts.SimStartupDelay < 0 {
		return nil, errors.New("local: durations must not be negative")
	}
	if err := opts.Autoscale.defaults(); err != nil {
		return nil, err
	}
	if opts.PodCommand != "" {
		if err := CheckPodCommand(opts.PodCommand); err != nil {
			return nil, fmt.Errorf("local: pod command: %w", err)
		}
	}
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	if opts.PodOutput == nil {
		opts.PodOutput = os.Stderr
	}
	r := &Runtime{opts: opts, log: opts.Logger, reg: prometheus.NewRegistry()}
	r.reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	act, err := activator.New(activator.Options{
		Registerer:   r.reg,
		Debug:        opts.DebugRouting,
		Logger:       opts.Logger.With("component", "activator"),
		Poke:         r.poke,
		Tiers:        opts.Tiers,
		TokenizerDir: opts.TokenizerDir,
		// Revisions offloading without a URI use the pods' default.
		KVStorageDefaultURI: opts.KVOffloadDir,
	})
	if err != nil {
		return nil, err
	}
	r.act = act
	health := 20 * time.Millisecond
	if opts.PodCommand != "" {
		health = 200 * time.Millisecond
	}
	r.scaler = newPodScaler(act, r.reg, opts.Logger.With("component", "scaler"), r.newRunner,
		opts.GracePeriod, opts.StartupTimeout, health)
	models := map[string]string{}
	for _, svc := range opts.Services {
		if err := act.UpsertRevision(activator.RevisionConfig{
			Key: svc.Key(), Service: svc.Name, Models: svc.Models, Tags: svc.Tags, Spec: svc.Spec, Rates: r.rates(svc),
			PriorityScheduling: svc.PriorityScheduling(opts.PodCommand == ""), MaxNumSeqs: svc.MaxNumSeqs(opts.PodCommand == ""),
		}); err != nil {
			act.Close()
			return nil, err
		}
		for _, m := range svc.Models {
			if other, ok := models[m]; ok {
				r.log.Warn("two Services serve the same model name; requests naming it go to either (use the Service's host to choose)",
					"model", m, "services", other+", "+svc.Namespace+"/"+svc.Name)
			}
			models[m] = svc.Namespace + "/" + svc.Name
		}
	}
	if err := r.newAutoscalers(); err != nil {
		act.Close()
		return nil, err
	}
	r.status = newStatusPage(r)
	return r, nil
}

// rates are the revision's engine rates for the ttft-cost scorer: from its
// profile, in wall time (simulated pods run at the time scale).
func (r *Runtime) rates(svc *Service) router.Rates {
	name := svc.Spec.SimProfile
	if name == "" {
		name = engine.DefaultProfile
	}
	p, err := engine.BuiltinProfile(name)
	if err != nil {
		return router.Rates{}
	}
	rt := router.RatesFromProfile(&p, svc.Engine.MaxNumBatchedTokens, 32, 4096)
	if r.opts.PodCommand == "" {
		k := r.opts.SimTimeScale
		rt.PrefillTokensPerSecond /= k
		rt.AttentionSecondsPerTokenPair *= k
		rt.StepSeconds *= k
		rt.KVTransferTokensPerSecond /= k
	}
	return rt
}

// newRunner makes one pod's runner.
func (r *Runtime) newRunner(svc *Service, name string, role router.Role) (runner, error) {
	if r.opts.PodCommand != "" {
		pc, err := expandPodCommand(r.opts.PodCommand, svc, name, role.String(), r.opts.SimTimeScale, r.kvCollector)
		if err != nil {
			return nil, err
		}
		r.log.Debug("pod command", "pod", name, "command", pc.line)
		return newProcRunner(pc, name, r.opts.PodOutput), nil
	}
	erole := engine.RoleBoth
	switch role {
	case router.RolePrefill:
		erole = engine.RolePrefill
	case router.RoleDecode:
		erole = engine.RoleDecode
	}
	// The simulators' own logs are mostly noise next to the runtime's;
	// they surface at debug level, or when they warn.
	log := r.log.With("pod", name)
	if !r.log.Enabled(context.Background(), slog.LevelDebug) {
		log = slog.New(minLevel{log.Handler(), slog.LevelWarn})
	}
	cfg, err := simConfig(svc, name, erole, r.opts.SimTimeScale, log)
	if cfg.TokenizerDir == "" {
		cfg.TokenizerDir = r.opts.SimTokenizerDir
	}
	if err != nil {
		return nil, err
	}
	cfg.StartupDelay = r.opts.SimStartupDelay
	if cfg.KVOffload, err = r.kvOffloadConfig(svc, erole); err != nil {
		return nil, err
	}
	cfg.CPUTierBytes, cfg.DiskTierBytes = kvTiers(svc, erole)
	return newSimRunner(cfg), nil
}

// minLevel drops records below a level.
type minLevel struct {
	slog.Handler
	min slog.Level
}

func (h minLevel) Enabled(ctx context.Context, l slog.Level) bool {
	return l >= h.min && h.Handler.Enabled(ctx, l)
}

func (h minLevel) WithAttrs(as []slog.Attr) slog.Handler {
	return minLevel{h.Handler.WithAttrs(as), h.min}
}
func (h minLevel) WithGroup(n string) slog.Handler { return minLevel{h.Handler.WithGroup(n), h.min} }

// poke is the activator telling that a request waits for a revision with
// no ready pod. A revision of the slo.autoscaling.llm-d.ai class in act
// mode asks its decider (Decider.Poke) and scales up at once; any other
// revision (advise mode included, which must not act but must not leave a
// request waiting forever either) scaled to zero gets its min-scale (at
// least one) decode pods.
func (r *Runtime) poke(key activator.RevisionKey) {
	if a := r.autoscalers[key]; a != nil && !a.cfg.Advisory {
		go a.poke()
		return
	}
	go func() {
		rep, err := r.scaler.Replicas(key, RoleDecode)
		if err != nil || rep.Desired > 0 {
			return
		}
		n := 1
		for _, svc := range r.opts.Services {
			if svc.Key() == key {
				n = max(svc.Spec.MinScale, 1)
			}
		}
		r.log.Info("request waiting for a revision at zero: scaling up", "revision", key.String(), "replicas", n)
		if err := r.scaler.Scale(context.Background(), key, RoleDecode, n); err != nil {
			r.log.Warn("scale from zero", "revision", key.String(), "err", err)
		}
	}()
}

// Start listens on the API and metrics addresses and starts every
// Service's pods at their initial replica counts. It returns at once; see
// WaitReady.
func (r *Runtime) Start() error {
	err := errors.New("local: already started")
	r.startOnce.Do(func() { err = r.start() })
	return err
}

func (r *Runtime) start() error {
	var err error
	if r.apiLn, err = net.Listen("tcp", r.opts.Addr); err != nil {
		return fmt.Errorf("local: --addr: %w", err)
	}
	if r.opts.MetricsAddr != "off" {
		if r.obsLn, err = net.Listen("tcp", r.opts.MetricsAddr); err != nil {
			r.apiLn.Close()
			return fmt.Errorf("local: --metrics-addr: %w", err)
		}
	}
	errLog := slog.NewLogLogger(r.log.Handler(), slog.LevelDebug)
	// CloudEvents at "/" and the OpenAI Batch API, through the same chain.
	front, stopBatch, err := r.act.BatchFront(context.Background(), activator.BatchConfig{Storage: r.opts.BatchStorage, Logger: r.log.With("component", "batch")})
	if err != nil {
		r.apiLn.Close()
		if r.obsLn != nil {
			r.obsLn.Close()
		}
		return fmt.Errorf("local: --batch-storage: %w", err)
	}
	r.stopBatch = stopBatch
	r.api = &http.Server{Handler: checkHost(front, r.opts.AllowedHosts), ReadHeaderTimeout: 10 * time.Second, ErrorLog: errLog}
	r.serve(r.api, r.apiLn)
	if r.obsLn != nil {
		r.obs = &http.Server{Handler: checkHost(r.observability(), r.opts.AllowedHosts), ReadHeaderTimeout: 10 * time.Second, ErrorLog: errLog}
		r.serve(r.obs, r.obsLn)
	}
	if err := r.startKVCollector(); err != nil {
		_ = r.api.Close()
		if r.obs != nil {
			_ = r.obs.Close()
		}
		r.served.Wait()
		r.stopBatch()
		return err
	}
	for _, svc := range r.opts.Services {
		r.scaler.add(svc)
	}
	r.startAutoscalers()
	return nil
}

// startKVCollector binds the KV-event collector pods connect to, when
// KVEventsBind asks for one or the pod command names its endpoint, before
// any pod starts.
func (r *Runtime) startKVCollector() error {
	bind := r.opts.KVEventsBind
	if bind == "" && strings.Contains(r.opts.PodCommand, "{kv_events_collector}") {
		bind = "tcp://127.0.0.1:0"
	}
	if bind == "" {
		return nil
	}
	ctx, cancel := context.WithCancel(context.Background())
	addrc := make(chan net.Addr, 1)
	r.kvDone = make(chan error, 1)
	go func() { r.kvDone <- r.act.ServeKVEvents(ctx, bind, func(a net.Addr) { addrc <- a }) }()
	select {
	case a := <-addrc:
		r.stopKV = cancel
		ta, ok := a.(*net.TCPAddr)
		if !ok {
			r.kvCollector = "tcp://" + a.String()
			return nil
		}
		host := ta.IP.String()
		if ta.IP.IsUnspecified() {
			host = "127.0.0.1"
		}
		r.kvCollector = "tcp://" + net.JoinHostPort(host, strconv.Itoa(ta.Port))
		r.log.Info("collecting KV events from pods that connect", "endpoint", r.kvCollector)
		return nil
	case err := <-r.kvDone:
		cancel()
		r.kvDone = nil
		if err == nil {
			err = errors.New("stopped")
		}
		return fmt.Errorf("local: --kv-events-bind: %w", err)
	}
}

func (r *Runtime) serve(srv *http.Server, ln net.Listener) {
	r.served.Add(1)
	go func() {
		defer r.served.Done()
		if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			r.log.Error("server stopped", "addr", ln.Addr().String(), "err", err)
		}
	}()
}

// Scaler is the runtime's scaler: the interface the autoscaler drives.
func (r *Runtime) Scaler() Scaler { return r.scaler }

// Services are the Services the runtime runs.
func (r *Runtime) Services() []*Service { return r.opts.Services }

// Registry is the runtime's Prometheus registry (what /metrics serves).
func (r *Runtime) Registry() *prometheus.Registry { return r.reg }

// APIURL is the base URL of the OpenAI API, e.g. http://127.0.0.1:8080.
func (r *Runtime) APIURL() string { return baseURL(r.apiLn) }

// SimClockLag is how far the in-process simulated pods fell behind their
// clocks so far: the largest step lateness and dropped modelled time of any
// pod now running (vllmsim.ClockLag). A measurement taken while a pod
// dropped time measured the machine as well as the modelled hardware.
func (r *Runtime) SimClockLag() vllmsim.ClockLag { return r.scaler.clockLag() }

// StatusURL is the status page's URL, empty when the metrics server is off.
func (r *Runtime) StatusURL() string {
	if r.obsLn == nil {
		return ""
	}
	return baseURL(r.obsLn) + "/"
}

// ServiceURL is a Service's URL, http://{name}.{namespace}.localhost:port
// (with a tag, http://{tag}-{name}...).
func (r *Runtime) ServiceURL(svc *Service, tag string) string {
	host := svc.Name + "." + svc.Namespace + "." + Domain
	if tag != "" {
		host = tag + "-" + host
	}
	return "http://" + host + ":" + r.apiPort()
}

func (r *Runtime) apiPort() string {
	if r.apiLn == nil {
		return ""
	}
	return strconv.Itoa(r.apiLn.Addr().(*net.TCPAddr).Port)
}

func baseURL(ln net.Listener) string {
	if ln == nil {
		return ""
	}
	a := ln.Addr().(*net.TCPAddr)
	host := a.IP.String()
	if a.IP.IsUnspecified() {
		host = "127.0.0.1"
	}
	return "http://" + net.JoinHostPort(host, strconv.Itoa(a.Port))
}

// WaitReady waits until every role of every Service has its desired pods
// ready and seen by the activator. It fails early when a role's pods keep
// failing.
func (r *Runtime) WaitReady(ctx context.Context) error {
	t := time.NewTicker(20 * time.Millisecond)
	defer t.Stop()
	for {
		ok, err := r.ready()
		if err != nil {
			return err
		}
		if ok {
			return nil
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-t.C:
		}
	}
}

func (r *Runtime) ready() (bool, error) {
	stats := map[string]activator.RevisionStats{}
	for _, s := range r.act.Stats() {
		stats[s.Revision] = s
	}
	for _, svc := range r.opts.Services {
		key := svc.Key()
		total := 0
		for _, role := range []Role{RoleDecode, RolePrefill} {
			rep, err := r.scaler.Replicas(key, role)
			if err != nil {
				continue // no prefill role
			}
			g, _ := r.scaler.group(key, role)
			g.mu.Lock()
			failures := g.failures
			g.mu.Unlock()
			if failures >= 3 {
				return false, fmt.Errorf("local: %s %s pods keep failing (%d in a row); see the log above", svc, role, failures)
			}
			if rep.Ready < rep.Desired {
				return false, nil
			}
			total += rep.Ready
		}
		if stats[key.String()].ReadyPods < total {
			return false, nil
		}
	}
	return true, nil
}

// Shutdown stops accepting requests, waits for those in flight (up to
// DrainTimeout), then stops every pod (each within GracePeriod). Cancelling
// ctx forces it: the remaining requests are cut and the pods killed.
func (r *Runtime) Shutdown(ctx context.Context) error {
	r.shutOnce.Do(func() { r.shutErr = r.shutdown(ctx) })
	return r.shutErr
}

func (r *Runtime) shutdown(ctx context.Context) error {
	var drainErr error
	if r.api != nil {
		dctx, cancel := context.WithTimeout(ctx, r.opts.DrainTimeout)
		r.log.Info("shutting down: draining in-flight requests", "timeout", r.opts.DrainTimeout)
		if err := r.api.Shutdown(dctx); err != nil {
			drainErr = fmt.Errorf("local: drain: %w", err)
			r.log.Warn("drain timed out; cutting the remaining requests")
			_ = r.api.Close()
		}
		cancel()
	}
	if r.obs != nil {
		octx, cancel := context.WithTimeout(context.Background(), time.Second)
		if r.obs.Shutdown(octx) != nil {
			_ = r.obs.Close()
		}
		cancel()
	}
	r.served.Wait()
	if r.stopBatch != nil {
		r.stopBatch()
	}
	r.stopAutoscalers()
	stopWatch := context.AfterFunc(ctx, r.scaler.kill) // forced: kill the pods now
	defer stopWatch()
	r.log.Info("stopping pods", "grace_period", r.opts.GracePeriod)
	r.scaler.close()
	if r.stopKV != nil {
		r.stopKV()
		if err := <-r.kvDone; err != nil {
			r.log.Warn("KV-event collector", "err", err)
		}
	}
	r.act.Close()
	return drainErr
}

// Close stops everything at once, without draining.
func (r *Runtime) Close() {
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	_ = r.Shutdown(ctx)
}

// Banner writes what a user needs to try the Services: URLs, models and a
// ready curl line.
func (r *Runtime) Banner(w io.Writer) {
	for _, svc := range r.opts.Services {
		pods := fmt.Sprintf("%d pod(s)", svc.Decode)
		if svc.Spec.Disaggregated() {
			pods = fmt.Sprintf("%d decode + %d prefill pod(s)", svc.Decode, svc.Prefill)
		}
		kind := "simulated vLLM, profile " + orDefault(svc.Spec.SimProfile, engine.DefaultProfile)
		if r.opts.PodCommand != "" {
			kind = "processes from --pod-command"
		}
		fmt.Fprintf(w, "%s is ready: revision %s, %s (%s)\n", svc, svc.Revision, pods, kind)
		fmt.Fprintf(w, "  URL:     %s\n", r.ServiceURL(svc, ""))
		for _, t := range svc.Tags {
			fmt.Fprintf(w, "  Tag:     %s\n", r.ServiceURL(svc, t))
		}
		fmt.Fprintf(w, "  Model:   %s\n", svc.Model)
		if line := StepBudgetLine(svc); line != "" {
			fmt.Fprintf(w, "  Budget:  %s\n", line)
		}
	}
	fmt.Fprintf(w, "API:       %s (OpenAI: /v1/chat/completions, /v1/completions, /v1/models)\n", r.APIURL())
	if s := r.StatusURL(); s != "" {
		fmt.Fprintf(w, "Status:    %s (metrics: %smetrics)\n", s, s)
	}
	fmt.Fprintf(w, "Try:\n  %s\n", r.CurlLine(r.opts.Services[0]))
}

// StepBudgetLine says the pods' per-step token budget and where it comes
// from: the args, or the choice from the TPOT target
// (llm-d.ai/step-token-budget).
func StepBudgetLine(svc *Service) string {
	b := svc.StepBudget
	if b == nil {
		if svc.Engine.MaxNumBatchedTokens > 0 {
			return fmt.Sprintf("--max-num-batched-tokens %d (from the container's args)", svc.Engine.MaxNumBatchedTokens)
		}
		return ""
	}
	line := fmt.Sprintf("--max-num-batched-tokens %d", b.Decode.MaxNumBatchedTokens)
	if b.Prefill.MaxNumBatchedTokens > 0 {
		line += fmt.Sprintf(" (prefill pods %d)", b.Prefill.MaxNumBatchedTokens)
	}
	return line + ": " + b.Decode.Reason
}

// CurlLine is a streaming chat completion against a Service.
func (r *Runtime) CurlLine(svc *Service) string {
	body := fmt.Sprintf(`{"model":%q,"messages":[{"role":"user","content":"Say hello in three languages."}],"max_tokens":64,"stream":true}`, svc.Model)
	return fmt.Sprintf(`curl -N %s/v1/chat/completions -H 'Content-Type: application/json' -d '%s'`,
		r.APIURL(), strings.ReplaceAll(body, "'", `'\''`))
}

func orDefault(s, d string) string {
	if s == "" {
		return d
	}
	return s
}
