// Command activator is llmd-kn's data plane: the OpenAI-compatible front
// that buffers, orders by SLO tier, routes by KV cache and load, and runs the
// prefill/decode two-step (pkg/activator).
//
// In a cluster (no --config) its revisions and pods come from the API server
// (pkg/activator/discovery: Revisions of the slo.autoscaling.llm-d.ai class,
// their Routes' traffic tags, and their pods), it pushes per-revision load to
// the autoscaler every second and pokes it when a request waits for a
// revision at zero:
//
//	activator [--kubeconfig FILE] [--autoscaler-url https://llmd-autoscaler.llmd-kn.svc:8090] [--autoscaler-ca-file FILE]
//
// For vLLM servers outside Kubernetes it reads them from a static file
// instead (--config, format in pkg/activator/static.go):
//
//	activator --config revisions.yaml --addr :8080 --admin-addr :9091
//
// The admin address serves /metrics (Prometheus), /stats (the per-revision
// load) and /healthz (ready once the revisions are known: in a cluster,
// once the informers have synced).
package main

import (
	"context"
	"errors"
	stdflag "flag"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"os/signal"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/go-logr/logr"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	ctrllog "sigs.k8s.io/controller-runtime/pkg/log"
	"sigs.k8s.io/yaml"

	"github.com/llmd-kn/llmd-kn/pkg/activator"
	"github.com/llmd-kn/llmd-kn/pkg/activator/discovery"
	"github.com/llmd-kn/llmd-kn/pkg/batch"
	"github.com/llmd-kn/llmd-kn/pkg/router"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, os.Args[1:], os.Stderr); err != nil {
		fmt.Fprintln(os.Stderr, "activator:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, args []string, stderr io.Writer) error {
	flag := stdflag.NewFlagSet("activator", stdflag.ContinueOnError)
	flag.SetOutput(stderr)
	var (
		config     = flag.String("config", "", "static revisions and pods (YAML); when empty, they are discovered from the API server")
		kubeconfig = flag.String("kubeconfig", "", "kubeconfig of the cluster (in-cluster configuration when empty)")
		addr       = flag.String("addr", "127.0.0.1:8080", "listen address of the OpenAI API (:8080 in cluster mode)")
		adminAddr  = flag.String("admin-addr", "127.0.0.1:9091", "listen address of /metrics, /stats and /healthz (:9091 in cluster mode)")
		scalerURL  = flag.String("autoscaler-url", defaultAutoscalerURL, "the autoscaler's stats address, for load reports and pokes; empty disables them (with --config, only used when set)")
		podName    = flag.String("pod-name", defaultPodName(), "this activator's name in its reports to the autoscaler")
		tokenFile  = flag.String("autoscaler-token-file", "", "bearer token for the autoscaler (its projected ServiceAccount token, audience llmd-autoscaler), re-read at each report; empty sends none. Sent only over https or to a loopback address")
		caFile     = flag.String("autoscaler-ca-file", "", "CA bundle the autoscaler's certificate must chain to (ca-bundle.crt of its Secret llmd-autoscaler-certs, mounted), re-read when it changes; empty: the system's roots")
		serverName = flag.String("autoscaler-tls-server-name", "", "the name the autoscaler's certificate must carry (the --autoscaler-url host when empty)")
		domains    = flag.String("domains", "", "comma-separated host suffixes after {service}.{namespace}. that Host routing accepts (the cluster's Knative domains); built-in list when empty")
		routerFile = flag.String("router-config", "", "router configuration (the config-llmd-router data); built-in profiles when empty")
		tiersFile  = flag.String("tiers", "", "SLO tier table (the config-llmd-tiers data); built-in tiers when empty")
		grantsFile = flag.String("tier-grants", "", "credentials that let a request raise its tier above its route's (tier tokens, ingress identities; a mounted Secret); empty: clients may only lower their tier")
		scrape     = flag.Duration("scrape-interval", 50*time.Millisecond, "how often each pod's /metrics is read")
		maxBody    = flag.Int64("max-body-bytes", 16<<20, "request body limit")
		debug      = flag.Bool("debug-routing", false, "add the X-Llm-D-Route explanation header to answers")
		tokDir     = flag.String("tokenizer-dir", "", "folder of models' Hugging Face tokenizer files (a mounted volume or HF cache: org/name, models--org--name or name), for llm-d.ai/tokenizer auto and native; empty: the estimate unless a revision names native:DIR")
		verbose    = flag.Bool("v", false, "log at debug level")
		kvBind     = flag.String("kv-events-bind", "", "ZMQ endpoint (tcp://*:5557) to bind for KV-event publishers that connect to a collector (llm-d's direction); pods are told apart by their topic kv@<pod name, IP:port or IP>@<model>. Publishers that bind (vLLM's default) are dialed per pod instead")
		batchStore = flag.String("batch-storage", os.Getenv("LLMD_BATCH_STORAGE"), "object storage for batch files, state and event dedupe (a directory, file://, s3://, gs://, azblob://; default $LLMD_BATCH_STORAGE, as config/activator sets it from the Secret llmd-activator-batch-storage); in memory when empty (lost on restart, not shared between replicas)")
		batchSink  = flag.String("batch-sink", os.Getenv("K_SINK"), "where results of CloudEvents go (default $K_SINK, as a SinkBinding sets it); the HTTP reply when empty")
		batchDLS   = flag.String("batch-dead-letter-sink", "", "where results the sink refused go; kept in --batch-storage when empty")
		leaseRenew = flag.Duration("batch-lease-renew", batch.DefaultLeaseRenew, "how often the replica that runs a Batch API batch, or infers a CloudEvent, renews its ownership in --batch-storage")
		leaseTTL   = flag.Duration("batch-lease-ttl", batch.DefaultLeaseTTL, "how long a replica must see a batch's or an event's ownership unrenewed (by its own clock) before it takes it over; longer than --batch-lease-renew")
		batchConc  = flag.Int("batch-concurrency", batch.DefaultBatchConcurrency, "lines of one Batch API batch in flight at once (held in the batch tier while interactive work needs the pods)")
		promote    = flag.Duration("batch-promote-before", activator.DefaultBatchPromoteBefore, "how long before its deadline (CloudEvents llmddeadline, the Batch API's completion_window) a batch request moves to the tier above batch; negative: never")
	)
	if err := flag.Parse(args); err != nil {
		return err
	}
	if flag.NArg() > 0 {
		return fmt.Errorf("unexpected arguments: %s", strings.Join(flag.Args(), " "))
	}
	set := map[string]bool{}
	flag.Visit(func(f *stdflag.Flag) { set[f.Name] = true })
	cluster := *config == ""
	if cluster {
		// In a pod, the Service reaches the activator on the pod's IP.
		if !set["addr"] {
			*addr = ":8080"
		}
		if !set["admin-addr"] {
			*adminAddr = ":9091"
		}
	} else if !set["autoscaler-url"] {
		*scalerURL = ""
	}
	level := slog.LevelInfo
	if *verbose {
		level = slog.LevelDebug
	}
	log := slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: level}))
	tiers, err := activator.LoadTiers(*tiersFile)
	if err != nil {
		return err
	}
	grants, err := activator.LoadTierGrants(*grantsFile, tiers)
	if err != nil {
		return err
	}
	rcfg, err := router.LoadConfig(*routerFile)
	if err != nil {
		return err
	}
	var doms []string
	for d := range strings.SplitSeq(*domains, ",") {
		if d = strings.Trim(strings.TrimSpace(d), "."); d != "" {
			doms = append(doms, strings.ToLower(d))
		}
	}

	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	opts := activator.Options{Tiers: tiers, TierGrants: grants, RouterConfig: rcfg, Registerer: reg, Logger: log,
		ScrapeInterval: *scrape, MaxBodyBytes: *maxBody, Debug: *debug, Domains: doms, TokenizerDir: *tokDir}
	if *promote == 0 {
		return fmt.Errorf("--batch-promote-before: 0 would promote nothing before the deadline itself; give a positive duration, or a negative one to never promote")
	}
	opts.BatchPromoteBefore = *promote
	var reporter *activator.Reporter
	if *scalerURL != "" {
		var err error
		reporter, err = activator.NewReporter(activator.ReporterOptions{URL: *scalerURL, Activator: *podName, TokenFile: *tokenFile,
			CAFile: *caFile, ServerName: *serverName, Registerer: reg, Logger: log.With("component", "reporter")})
		if err != nil {
			return fmt.Errorf("--autoscaler-url, --pod-name, --autoscaler-ca-file: %w", err)
		}
		opts.Poke = reporter.Poke
	}
	act, err := activator.New(opts)
	if err != nil {
		return err
	}
	defer act.Close()

	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var wg sync.WaitGroup
	defer wg.Wait()
	defer cancel() // runs before wg.Wait: background work stops first
	errc := make(chan error, 4)
	ready := func() bool { return true }
	if cluster {
		rest, err := restConfig(*kubeconfig)
		if err != nil {
			return err
		}
		ctrllog.SetLogger(logr.FromSlogHandler(log.With("component", "informers").Handler()))
		disc, err := discovery.New(rest, act, discovery.Options{Tiers: tiers, RouterConfig: rcfg, Logger: log.With("component", "discovery")})
		if err != nil {
			return err
		}
		ready = disc.Ready
		wg.Go(func() {
			if err := disc.Run(ctx); err != nil {
				errc <- fmt.Errorf("discovery: %w", err)
			}
		})
	} else {
		data, err := os.ReadFile(*config)
		if err != nil {
			return err
		}
		revs, pods, err := activator.ParseStaticConfig(data, tiers, rcfg)
		if err != nil {
			return fmt.Errorf("%s: %w", *config, err)
		}
		var sc activator.StaticConfig
		if err := yaml.Unmarshal(data, &sc); err == nil && sc.KVEventsBind != "" && !set["kv-events-bind"] {
			*kvBind = sc.KVEventsBind
		}
		for _, r := range revs {
			if err := act.UpsertRevision(r); err != nil {
				return err
			}
			if err := act.SetPods(r.Key, pods[r.Key]); err != nil {
				return err
			}
		}
	}
	if reporter != nil {
		wg.Go(func() { reporter.Run(ctx, act.Stats) })
	}
	if *kvBind != "" {
		wg.Go(func() {
			if err := act.ServeKVEvents(ctx, *kvBind, nil); err != nil {
				errc <- fmt.Errorf("--kv-events-bind: %w", err)
			}
		})
	}

	admin := http.NewServeMux()
	admin.Handle("GET /metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
	admin.Handle("GET /stats", act.StatsHandler())
	admin.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		if !ready() {
			http.Error(w, "not ready: revisions not yet discovered", http.StatusServiceUnavailable)
			return
		}
		_, _ = io.WriteString(w, "ok")
	})
	if *batchStore == "" {
		log.Info("batch state in memory: lost on restart and not shared between replicas (a batch is seen only through the replica that created it); set --batch-storage (LLMD_BATCH_STORAGE) to storage every replica shares")
	}
	if *batchConc < 1 {
		return fmt.Errorf("--batch-concurrency must be positive, got %d", *batchConc)
	}
	if *leaseRenew <= 0 || *leaseTTL <= *leaseRenew {
		return fmt.Errorf("--batch-lease-ttl (%v) must be longer than --batch-lease-renew (%v), which must be positive", *leaseTTL, *leaseRenew)
	}
	front, closeBatch, err := act.BatchFront(ctx, activator.BatchConfig{Storage: *batchStore, Sink: *batchSink, Concurrency: *batchConc,
		LeaseRenew: *leaseRenew, LeaseTTL: *leaseTTL, ReplicaID: os.Getenv("POD_NAME"),
		DeadLetterSink: *batchDLS, Logger: log.With("component", "batch")})
	if err != nil {
		return err
	}
	defer closeBatch()
	servers := []*http.Server{
		// No ReadTimeout or WriteTimeout: answers stream for minutes. The
		// headers, each body (activator.Options.BodyTimeout) and idle
		// keep-alive connections are bounded.
		{Addr: *addr, Handler: front, ReadHeaderTimeout: 10 * time.Second, IdleTimeout: 2 * time.Minute},
		{Addr: *adminAddr, Handler: admin, ReadHeaderTimeout: 10 * time.Second, IdleTimeout: 2 * time.Minute},
	}
	for _, s := range servers {
		go func() {
			log.Info("listening", "addr", s.Addr)
			if err := s.ListenAndServe(); !errors.Is(err, http.ErrServerClosed) {
				errc <- err
			}
		}()
	}
	var runErr error
	select {
	case runErr = <-errc:
	case <-ctx.Done():
	}
	log.Info("shutting down: draining in-flight requests")
	sctx, scancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer scancel()
	for _, s := range servers {
		_ = s.Shutdown(sctx)
	}
	return runErr
}

// defaultAutoscalerURL is the llmd-autoscaler Service's stats port.
const defaultAutoscalerURL = "https://llmd-autoscaler.llmd-kn.svc:8090"

// defaultPodName is $POD_NAME (the downward API), else the host name,
// which in a pod is the pod's name.
func defaultPodName() string {
	if n := os.Getenv("POD_NAME"); n != "" {
		return n
	}
	n, _ := os.Hostname()
	return n
}

// restConfig reads a kubeconfig, or the in-cluster configuration when
// none is named.
func restConfig(kubeconfig string) (*rest.Config, error) {
	if kubeconfig == "" {
		cfg, err := rest.InClusterConfig()
		if err != nil {
			return nil, fmt.Errorf("no --config and no --kubeconfig, and not in a cluster: %w", err)
		}
		return cfg, nil
	}
	cfg, err := clientcmd.BuildConfigFromFlags("", kubeconfig)
	if err != nil {
		return nil, fmt.Errorf("--kubeconfig %s: %w", kubeconfig, err)
	}
	return cfg, nil
}
