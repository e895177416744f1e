package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/spf13/cobra"

	"github.com/llmd-kn/llmd-kn/pkg/activator"
	"github.com/llmd-kn/llmd-kn/pkg/local"
)

// localFlags are `kn-llmd local`'s flags.
type localFlags struct {
	addr, metricsAddr string
	batchStorage      string
	allowedHosts      string
	files             []string
	timeScale         float64
	startupDelay      time.Duration
	simTokenizer      string
	podCommand        string
	tokenizerDir      string
	kvEventsBind      string
	kvOffloadDir      string
	kvPayloadScale    float64
	grace, drain      time.Duration
	startup           time.Duration
	debugRouting      bool
	logLevel          string
	noAutoscale       bool
	autoscaleTick     time.Duration
	coldStart         time.Duration
	scaleToZeroGrace  time.Duration
	stableWindow      time.Duration
	scaleDownDelay    time.Duration
	// The batch tier's admission rules (the built-in table's batch tier
	// otherwise), named as kn-llmd plan's flags for the same rules.
	batchMaxSaturation    float64
	batchMaxPerPod        int
	batchMaxPrefillPerPod int
	batchYield            bool
}

func newLocalCmd() *cobra.Command {
	f := &localFlags{}
	cmd := &cobra.Command{
		Use:   "local [-f SERVICE.yaml]...",
		Short: "Run Knative Services for vLLM on this machine, no cluster needed",
		Long: `Run the Knative Services you would 'kubectl apply' on this machine, with no
cluster: the same validation and defaulting as the cluster webhook, the same
activator (KV-cache-aware routing, prefill/decode disaggregation, SLO tiers,
buffering while a revision is at zero), and pods that are simulated vLLM
servers (default: no GPU needed) or real processes (--pod-command).

With no -f, it runs the built-in quick start (config/samples/quickstart.yaml):
a vLLM Service with two decode pods and one prefill pod, and prints a ready
curl line.

Requests reach a Service by Host, {name}.{namespace}.localhost (curl and
browsers resolve *.localhost to this machine), by a traffic tag,
{tag}-{name}.{namespace}.localhost (a tag named like an SLO tier, e.g.
critical, selects that tier), or by the model field on --addr directly. Each
Service runs one revision, {name}-00001 (or spec.template.metadata.name).

Replicas start from autoscaling.knative.dev/min-scale (decode, or all pods
without disaggregation) and llm-d.ai/prefill-min-scale, at least one each,
unless the annotation is explicitly "0": then the revision starts at zero
and the first request wakes it. POST {"service":"llm","role":"decode",
"replicas":0} to --metrics-addr's /scale to scale by hand (Content-Type
application/json, same origin only; both servers answer only IP, localhost
and *.localhost Hosts, and --allowed-hosts).

--metrics-addr serves the status page (/), /status.json, Prometheus /metrics
(activator, router and scaler), /stats (per-revision load), each pod's own
vLLM metrics at /pods/{namespace}/{pod}/metrics, and POST /scale. The OpenAI
API is on --addr only.

` + local.PodCommandHelp + `

As a kn plugin: put this binary on the PATH as kn-llmd and run
'kn llmd local ...' (kn runs kn-<plugin> with the remaining arguments).

Ctrl-C (SIGINT) or SIGTERM stops accepting requests, drains those in flight
(up to --drain-timeout), then stops the pods (each within --grace-period);
a second Ctrl-C cuts the requests and kills the pods at once.`,
		Example: `  kn-llmd local
  kn-llmd local -f service.yaml -f more-services/
  kn-llmd local --sim-time-scale 0.1          # simulated pods ten times faster
  kn-llmd local -f svc.yaml --pod-command 'vllm serve {model} --port {port} {args}'
  kn-llmd local --pod-command 'kn-llmd sim --model {model} --port {port} --role {role}'`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error { return f.run(cmd) },
	}
	fl := cmd.Flags()
	fl.StringVar(&f.addr, "addr", local.DefaultAddr, "listen address of the OpenAI API (the activator)")
	fl.StringVar(&f.batchStorage, "batch-storage", "", "directory (or s3://, gs://, azblob:// URL) for Batch API files and state and CloudEvents dedupe; in memory when empty")
	fl.StringVar(&f.allowedHosts, "allowed-hosts", "", "comma-separated Host names the servers answer besides IP addresses, localhost and *.localhost (\"*.example.com\" for a suffix); others are refused (DNS rebinding)")
	fl.StringVar(&f.metricsAddr, "metrics-addr", local.DefaultMetricsAddr, `listen address of the status page, /metrics, /status.json, /stats, /pods/ and /scale ("off" disables it)`)
	fl.StringArrayVarP(&f.files, "filename", "f", nil, "Knative Service manifest: a YAML file (several documents allowed) or a directory of them; repeatable (default: the built-in quick start)")
	fl.Float64Var(&f.timeScale, "sim-time-scale", 1, "multiplies every simulated duration of simulated pods (0.1 runs ten times faster than the modelled GPU)")
	fl.StringVar(&f.simTokenizer, "sim-tokenizer", "", "folder of Hugging Face tokenizer files (tokenizer.json, tokenizer_config.json) simulated pods tokenize with when llm-d.ai/tokenizer names none, as vLLM's --tokenizer; the estimate when empty")
	fl.DurationVar(&f.startupDelay, "sim-startup-delay", 0, "simulated pods' cold start (model loading; scaled by --sim-time-scale): /health fails until it passes")
	fl.StringVar(&f.tokenizerDir, "tokenizer-dir", "", "folder of models' Hugging Face tokenizer files (org/name, models--org--name or name) the activator tokenizes with under llm-d.ai/tokenizer auto and native; empty: the estimate unless a Service names native:DIR")
	fl.StringVar(&f.kvEventsBind, "kv-events-bind", "", "ZMQ endpoint (tcp://127.0.0.1:5557) where the activator collects KV events from publishers that connect (llm-d's direction), telling pods apart by their topic kv@<pod name, IP:port or IP>@<model>; a pod command with {kv_events_collector} gets a free loopback port without it")
	fl.StringVar(&f.kvOffloadDir, "kv-offload-dir", local.DefaultKVOffloadDir(), "where simulated pods of revisions with llm-d.ai/kv-offload and no llm-d.ai/kv-offload-uri keep their offloaded KV")
	fl.Float64Var(&f.kvPayloadScale, "kv-payload-scale", local.DefaultKVPayloadScale, "fraction of the modelled KV bytes simulated pods actually store per block, in (0, 1]; the model charges the full transfer time")
	fl.StringVar(&f.podCommand, "pod-command", "", "run each pod as a process from this template instead of a simulator, e.g. 'vllm serve {model} --port {port} {args}' (placeholders above)")
	fl.DurationVar(&f.grace, "grace-period", local.DefaultGracePeriod, "how long a stopping pod may drain before it is killed")
	fl.DurationVar(&f.drain, "drain-timeout", local.DefaultDrainTimeout, "on shutdown, how long in-flight requests may take to finish")
	fl.DurationVar(&f.startup, "startup-timeout", local.DefaultStartupTimeout, "how long a pod may take to answer GET /health with 200 (model loading)")
	fl.BoolVar(&f.debugRouting, "debug-routing", false, "add the routing explanation header X-Llm-D-Route to every answer")
	fl.StringVar(&f.logLevel, "log-level", "info", "debug, info, warn or error (debug also shows the simulators' logs)")
	fl.BoolVar(&f.noAutoscale, "no-autoscale", false, "turn the slo.autoscaling.llm-d.ai deciders off: replicas stay where the manifests and POST /scale put them")
	fl.DurationVar(&f.autoscaleTick, "autoscale-tick", local.DefaultAutoscaleTick, "how often each autoscaled revision's decider runs (Knative's tick-interval)")
	fl.DurationVar(&f.scaleToZeroGrace, "scale-to-zero-grace-period", local.DefaultScaleToZeroGracePeriod, "time without traffic before a revision whose min-scale is 0 scales to zero")
	fl.DurationVar(&f.stableWindow, "stable-window", local.DefaultStableWindow, "the decider's averaging window (its panic window is 10% of it)")
	fl.DurationVar(&f.scaleDownDelay, "scale-down-delay", 0, "how long the decider holds a recommendation before scaling down")
	batch, _ := activator.DefaultTiers().Get(activator.BatchTier)
	fl.Float64Var(&f.batchMaxSaturation, "batch-max-saturation", batch.MaxSaturation, "pool saturation under which batch requests are dispatched (the batch tier's maxSaturation; 0: no limit; as kn-llmd plan's flag)")
	fl.IntVar(&f.batchMaxPerPod, "batch-max-per-pod", batch.MaxPerPod, "most batch requests in flight on one decode pod (the batch tier's maxPerPod; 0: no cap; as kn-llmd plan's flag)")
	fl.IntVar(&f.batchMaxPrefillPerPod, "batch-max-prefill-per-pod", batch.MaxPrefillPerPod, "most batch requests on one decode pod without their first response byte, a non-streamed answer's end (the batch tier's maxPrefillPerPod; 0: no gate; as kn-llmd plan's flag)")
	fl.BoolVar(&f.batchYield, "batch-yield", batch.YieldToInteractive, "hold batch off a pod while an interactive request there has no first byte (the batch tier's yieldToInteractive; as kn-llmd plan's flag)")
	fl.DurationVar(&f.coldStart, "cold-start", 0, "how long a new pod takes to become ready, which the decider provisions burst headroom for at the SLO percentile (config-llmd-autoscaler's cold-start); 0: --sim-startup-delay for simulated pods, none for --pod-command pods")
	return cmd
}

func (f *localFlags) run(cmd *cobra.Command) error {
	var level slog.Level
	if err := level.UnmarshalText([]byte(f.logLevel)); err != nil {
		return fmt.Errorf("--log-level: %w", err)
	}
	if !(f.timeScale > 0) {
		return fmt.Errorf("--sim-time-scale must be positive, got %v", f.timeScale)
	}
	if f.autoscaleTick <= 0 {
		return fmt.Errorf("--autoscale-tick must be positive, got %v", f.autoscaleTick)
	}
	if f.scaleToZeroGrace < 0 || f.scaleDownDelay < 0 || f.coldStart < 0 {
		return fmt.Errorf("--scale-to-zero-grace-period, --scale-down-delay and --cold-start must not be negative")
	}
	if f.stableWindow < f.autoscaleTick {
		return fmt.Errorf("--stable-window %v must be at least --autoscale-tick %v", f.stableWindow, f.autoscaleTick)
	}
	if f.grace < 0 || f.drain < 0 || f.startupDelay < 0 || f.startup <= 0 {
		return errors.New("--grace-period, --drain-timeout and --sim-startup-delay must not be negative, --startup-timeout must be positive")
	}
	if f.podCommand != "" {
		if err := local.CheckPodCommand(f.podCommand); err != nil {
			return fmt.Errorf("--pod-command: %w", err)
		}
	}
	tiers, err := f.tiers()
	if err != nil {
		return err
	}
	log := slog.New(slog.NewTextHandler(cmd.ErrOrStderr(), &slog.HandlerOptions{Level: level}))
	vocab := local.DefaultVocabulary()
	var svcs []*local.Service
	if len(f.files) == 0 {
		svcs, err = local.Quickstart(vocab)
	} else {
		svcs, err = local.LoadFiles(f.files, vocab)
	}
	if err != nil {
		return manifestError(err)
	}
	cmd.SilenceUsage = true
	rt, err := local.New(local.Options{
		Services: svcs, Addr: f.addr, MetricsAddr: f.metricsAddr, AllowedHosts: splitList(f.allowedHosts), BatchStorage: f.batchStorage,
		SimTimeScale: f.timeScale, SimStartupDelay: f.startupDelay, SimTokenizerDir: f.simTokenizer,
		PodCommand: f.podCommand, GracePeriod: f.grace, DrainTimeout: f.drain, StartupTimeout: f.startup,
		DebugRouting: f.debugRouting, Logger: log, PodOutput: cmd.ErrOrStderr(), TokenizerDir: f.tokenizerDir, Tiers: tiers,
		KVEventsBind: f.kvEventsBind, KVOffloadDir: f.kvOffloadDir, KVPayloadScale: f.kvPayloadScale,
		Autoscale: local.AutoscaleOptions{Disabled: f.noAutoscale, Tick: f.autoscaleTick, ScaleToZeroGracePeriod: f.scaleToZeroGrace,
			StableWindow: f.stableWindow, ScaleDownDelay: f.scaleDownDelay, ColdStart: f.coldStart},
	})
	if err != nil {
		return err
	}

	sigs := make(chan os.Signal, 2)
	signal.Notify(sigs, os.Interrupt, syscall.SIGTERM)
	defer signal.Stop(sigs)
	stopped := make(chan struct{})
	force, forceNow := context.WithCancel(context.Background())
	defer forceNow()
	go func() {
		<-sigs
		close(stopped)
		select {
		case <-sigs:
			log.Warn("second signal: cutting requests and killing pods")
			forceNow()
		case <-force.Done():
		}
	}()

	if err := rt.Start(); err != nil {
		return err
	}
	pods := 0
	for _, s := range svcs {
		pods += s.Decode + s.Prefill
	}
	status := rt.StatusURL()
	if status == "" {
		status = "off"
	}
	log.Info("starting", "services", len(svcs), "pods", pods, "api", rt.APIURL(), "status", status)
	ready := make(chan error, 1)
	go func() {
		ctx, cancel := context.WithCancel(context.Background())
		defer cancel()
		go func() {
			select {
			case <-stopped:
				cancel()
			case <-ctx.Done():
			}
		}()
		ready <- rt.WaitReady(ctx)
	}()
	select {
	case err := <-ready:
		if err != nil && !errors.Is(err, context.Canceled) {
			_ = rt.Shutdown(force)
			return err
		}
		if err == nil {
			rt.Banner(cmd.OutOrStdout())
		}
	case <-stopped:
	}
	<-stopped
	if err := rt.Shutdown(force); err != nil {
		log.Warn("shutdown", "err", err)
	}
	log.Info("stopped")
	return nil
}

// manifestError words manifest problems one per line.
func manifestError(err error) error {
	var me local.ManifestErrors
	if !errors.As(err, &me) || len(me) < 2 {
		return err
	}
	lines := make([]string, len(me))
	for i, e := range me {
		lines[i] = "  " + e.Error()
	}
	return fmt.Errorf("%d problems in the manifests:\n%s", len(me), strings.Join(lines, "\n"))
}

// splitList splits a comma-separated flag value, dropping empty items.
func splitList(v string) []string {
	var out []string
	for _, s := range strings.Split(v, ",") {
		if s = strings.TrimSpace(s); s != "" {
			out = append(out, s)
		}
	}
	return out
}

// tiers is the built-in tier table with the batch tier's admission rules
// from the flags; errors name the flag.
func (f *localFlags) tiers() (*activator.Tiers, error) {
	switch {
	case !(f.batchMaxSaturation >= 0):
		return nil, fmt.Errorf("--batch-max-saturation must not be negative, got %v", f.batchMaxSaturation)
	case f.batchMaxPerPod < 0:
		return nil, fmt.Errorf("--batch-max-per-pod must not be negative, got %d", f.batchMaxPerPod)
	case f.batchMaxPrefillPerPod < 0:
		return nil, fmt.Errorf("--batch-max-prefill-per-pod must not be negative, got %d", f.batchMaxPrefillPerPod)
	}
	def := activator.DefaultTiers()
	batch, _ := def.Get(activator.BatchTier)
	batch.MaxSaturation, batch.MaxPerPod, batch.MaxPrefillPerPod, batch.YieldToInteractive =
		f.batchMaxSaturation, f.batchMaxPerPod, f.batchMaxPrefillPerPod, f.batchYield
	return def.With(batch)
}
