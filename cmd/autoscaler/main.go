// Command autoscaler is llmd-kn's control plane: the slo.autoscaling.llm-d.ai
// PodAutoscaler class (pkg/reconciler). It scales revisions' decode and
// prefill Deployments from the load the activators report, owns the
// revisions' traffic endpoints (always the llmd-kn activator) and their
// PodAutoscaler status:
//
//	autoscaler [--kubeconfig FILE] [--namespace llmd-kn] [--config-dir /etc/llmd/autoscaler] [--leader-elect]
//
// It serves the activators' stats API on --stats-bind-address (POST
// /v1/stats, POST /v1/poke, GET /v1/recommendations; the writes need the
// activator's ServiceAccount token, --stats-auth; over TLS with
// --stats-tls-cert-dir, its certificate kept in a Secret with
// --stats-tls-self-signed), Prometheus metrics on
// --metrics-bind-address and /healthz and /readyz on
// --health-probe-bind-address. Run one replica; with --leader-elect a
// rolling update hands over through a Lease in --namespace.
package main

import (
	"context"
	"crypto/tls"
	"errors"
	stdflag "flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/go-logr/logr"
	"k8s.io/apimachinery/pkg/runtime"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	autoscalingv1alpha1 "knative.dev/serving/pkg/apis/autoscaling/v1alpha1"
	servingv1 "knative.dev/serving/pkg/apis/serving/v1"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/healthz"
	ctrllog "sigs.k8s.io/controller-runtime/pkg/log"
	"sigs.k8s.io/controller-runtime/pkg/manager"
	metricsserver "sigs.k8s.io/controller-runtime/pkg/metrics/server"

	"github.com/llmd-kn/llmd-kn/pkg/activator"
	"github.com/llmd-kn/llmd-kn/pkg/reconciler"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, os.Args[1:], os.Stderr); err != nil {
		fmt.Fprintln(os.Stderr, "autoscaler:", err)
		os.Exit(1)
	}
}

func defaultNamespace() string {
	if ns := os.Getenv("POD_NAMESPACE"); ns != "" {
		return ns
	}
	return "llmd-kn"
}

func run(ctx context.Context, args []string, stderr io.Writer) error {
	flag := stdflag.NewFlagSet("autoscaler", stdflag.ContinueOnError)
	flag.SetOutput(stderr)
	var (
		kubeconfig   = flag.String("kubeconfig", "", "kubeconfig of the cluster (in-cluster configuration when empty)")
		namespace    = flag.String("namespace", defaultNamespace(), "llmd-kn's own namespace: the activator's Service and the leader-election Lease")
		activatorSvc = flag.String("activator-service", "llmd-activator", "the activator's Service in --namespace, whose endpoints every revision Service mirrors")
		statsAddr    = flag.String("stats-bind-address", ":8090", "listen address of the activators' stats API")
		metricsAddr  = flag.String("metrics-bind-address", ":9090", "listen address of /metrics (0 disables)")
		probeAddr    = flag.String("health-probe-bind-address", ":8081", "listen address of /healthz and /readyz")
		leaderElect  = flag.Bool("leader-elect", false, "elect a leader through a Lease in --namespace before reconciling")
		configDir    = flag.String("config-dir", "", "the config-llmd-autoscaler ConfigMap mounted as a directory (one file per key); defaults when empty")
		tiersFile    = flag.String("tiers", "", "SLO tier table (the config-llmd-tiers data) whose targets apply to revisions without llm-d.ai/slo-ttft or slo-tpot; built-in tiers when empty")
		verbose      = flag.Bool("v", false, "log at debug level")
		statsAuth    = flag.String("stats-auth", "tokenreview", "how callers of POST /v1/stats and /v1/poke authenticate: tokenreview (a ServiceAccount token for --stats-audience, checked with the API server's TokenReview) or none")
		audience     = flag.String("stats-audience", reconciler.DefaultStatsAudience, "the audience the activators' projected ServiceAccount tokens must carry")
		callers      = flag.String("stats-callers", "", "comma-separated user names allowed to report and poke (default: system:serviceaccount:<--namespace>:llmd-activator)")
		perCaller    = flag.Float64("stats-rate", 50, "requests per second one authenticated caller may send (burst 4×)")
		perAddress   = flag.Float64("stats-address-rate", 100, "requests per second one remote address may send before authentication (burst 2×)")
		tlsDir       = flag.String("stats-tls-cert-dir", "", "serve the stats API over TLS with tls.crt and tls.key of this directory (re-read when they change); empty: plaintext")
		selfSigned   = flag.Bool("stats-tls-self-signed", false, "keep a CA and the stats API's serving certificate in --stats-tls-secret (created, renewed) and write the pair to --stats-tls-cert-dir; false: something else (cert-manager) fills the directory")
		tlsSecret    = flag.String("stats-tls-secret", reconciler.DefaultStatsTLSSecret, "the Secret in --namespace that holds the self-signed CA, its bundle (ca-bundle.crt, which the activators mount) and the serving pair")
		tlsService   = flag.String("stats-tls-service", "llmd-autoscaler", "the autoscaler's Service in --namespace, whose DNS names the self-signed certificate covers")
	)
	if err := flag.Parse(args); err != nil {
		return err
	}
	if flag.NArg() > 0 {
		return fmt.Errorf("unexpected arguments: %v", flag.Args())
	}
	if *statsAuth != "tokenreview" && *statsAuth != "none" {
		return fmt.Errorf("--stats-auth %q: want tokenreview or none", *statsAuth)
	}
	level := slog.LevelInfo
	if *verbose {
		level = slog.LevelDebug
	}
	log := slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: level}))
	ctrllog.SetLogger(logr.FromSlogHandler(log.With("component", "controller-runtime").Handler()))

	cfg, err := reconciler.LoadConfigDir(*configDir)
	if err != nil {
		return err
	}
	tiers, err := activator.LoadTiers(*tiersFile)
	if err != nil {
		return err
	}
	restCfg, err := restConfig(*kubeconfig)
	if err != nil {
		return err
	}
	scheme := runtime.NewScheme()
	for _, add := range []func(*runtime.Scheme) error{clientgoscheme.AddToScheme, autoscalingv1alpha1.AddToScheme, servingv1.AddToScheme} {
		if err := add(scheme); err != nil {
			return err
		}
	}
	mgr, err := ctrl.NewManager(restCfg, manager.Options{
		Scheme:                        scheme,
		Metrics:                       metricsserver.Options{BindAddress: *metricsAddr},
		HealthProbeBindAddress:        *probeAddr,
		LeaderElection:                *leaderElect,
		LeaderElectionID:              "llmd-autoscaler",
		LeaderElectionNamespace:       *namespace,
		LeaderElectionReleaseOnCancel: true,
		Logger:                        logr.FromSlogHandler(log.Handler()),
	})
	if err != nil {
		return fmt.Errorf("manager: %w", err)
	}
	rec, err := reconciler.New(mgr, reconciler.Options{
		Namespace:        *namespace,
		ActivatorService: *activatorSvc,
		Config:           cfg,
		TierSLO: func(name string) (time.Duration, time.Duration) {
			t, ok := tiers.Get(name)
			if !ok {
				return 0, 0
			}
			return time.Duration(t.TTFT), time.Duration(t.TPOT)
		},
		Logger: log,
	})
	if err != nil {
		return err
	}
	if err := rec.SetupWithManager(mgr); err != nil {
		return fmt.Errorf("controller: %w", err)
	}
	var auth reconciler.Authenticator
	switch *statsAuth {
	case "tokenreview":
		users := []string{"system:serviceaccount:" + *namespace + ":llmd-activator"}
		if *callers != "" {
			users = strings.Split(*callers, ",")
		}
		auth = &reconciler.TokenReviewer{Client: mgr.GetClient(), Audience: *audience, Users: users}
	case "none":
		log.Warn("the stats API accepts reports and pokes from anyone (--stats-auth=none)")
	}
	tlsCfg, keeper, err := reconciler.StatsTLS{CertDir: *tlsDir, SelfSigned: *selfSigned, Namespace: *namespace,
		SecretName: *tlsSecret, ServiceName: *tlsService}.Setup(ctx, restCfg)
	if err != nil {
		return fmt.Errorf("stats API TLS: %w", err)
	}
	if keeper != nil {
		if err := mgr.Add(keeper); err != nil {
			return err
		}
	}
	if tlsCfg == nil && auth != nil {
		log.Warn("the stats API is served in plaintext: the activators' tokens travel in clear (--stats-tls-cert-dir)")
	}
	ln, err := net.Listen("tcp", *statsAddr)
	if err != nil {
		return fmt.Errorf("stats API: %w", err)
	}
	if tlsCfg != nil {
		ln = tls.NewListener(ln, tlsCfg)
	}
	lim := reconciler.Limits{PerCaller: *perCaller, Burst: int(4 * *perCaller), PerAddress: *perAddress}
	if err := mgr.Add(&statsServer{ln: ln, handler: rec.API(auth, lim).Handler(), log: log}); err != nil {
		return err
	}
	if err := mgr.AddHealthzCheck("healthz", healthz.Ping); err != nil {
		return err
	}
	if err := mgr.AddReadyzCheck("readyz", healthz.Ping); err != nil {
		return err
	}
	log.Info("autoscaler starting", "namespace", *namespace, "activator_service", *activatorSvc, "stats", ln.Addr().String(), "stats_tls", tlsCfg != nil,
		"metrics", *metricsAddr, "probes", *probeAddr, "leader_elect", *leaderElect, "tick", cfg.TickInterval)
	return mgr.Start(ctx)
}

func restConfig(kubeconfig string) (*rest.Config, error) {
	if kubeconfig != "" {
		c, err := clientcmd.BuildConfigFromFlags("", kubeconfig)
		if err != nil {
			return nil, fmt.Errorf("kubeconfig %s: %w", kubeconfig, err)
		}
		return c, nil
	}
	c, err := rest.InClusterConfig()
	if err != nil {
		return nil, fmt.Errorf("in-cluster config (pass --kubeconfig outside a cluster): %w", err)
	}
	return c, nil
}

// statsServer serves the stats API on every replica, leader or not, so
// that the Service's endpoint answers during a leader hand-over.
type statsServer struct {
	ln      net.Listener
	handler http.Handler
	log     *slog.Logger
}

func (s *statsServer) NeedLeaderElection() bool { return false }

func (s *statsServer) Start(ctx context.Context) error {
	srv := &http.Server{Handler: s.handler, ReadHeaderTimeout: 10 * time.Second}
	done := make(chan error, 1)
	go func() { done <- srv.Serve(s.ln) }()
	select {
	case err := <-done:
		return fmt.Errorf("stats API: %w", err)
	case <-ctx.Done():
		sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if err := srv.Shutdown(sctx); err != nil && !errors.Is(err, http.ErrServerClosed) {
			return err
		}
		return nil
	}
}
