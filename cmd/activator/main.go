// Command activator is llmd-kn's data plane: the OpenAI-compatible front
// that buffers, orders by SLO tier, routes by KV cache and load, and runs the
// prefill/decode two-step (pkg/activator).
//
// In a cluster its revisions and pods come from the API server (issue #5).
// Until then, and for vLLM servers outside Kubernetes, it reads them from a
// static file (--config, format in pkg/activator/static.go):
//
//	activator --config revisions.yaml --addr :8080 --admin-addr :9091
//
// The admin address serves /metrics (Prometheus) and /stats (the per-revision
// load the autoscaler reads).
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/llmd-kn/llmd-kn/pkg/activator"
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
	flag := flag.NewFlagSet("activator", flag.ContinueOnError)
	flag.SetOutput(stderr)
	var (
		config     = flag.String("config", "", "static revisions and pods (YAML); required until cluster discovery lands")
		addr       = flag.String("addr", "127.0.0.1:8080", "listen address of the OpenAI API")
		adminAddr  = flag.String("admin-addr", "127.0.0.1:9091", "listen address of /metrics and /stats")
		routerFile = flag.String("router-config", "", "router configuration (the config-llmd-router data); built-in profiles when empty")
		tiersFile  = flag.String("tiers", "", "SLO tier table (the config-llmd-tiers data); built-in tiers when empty")
		scrape     = flag.Duration("scrape-interval", 50*time.Millisecond, "how often each pod's /metrics is read")
		maxBody    = flag.Int64("max-body-bytes", 16<<20, "request body limit")
		debug      = flag.Bool("debug-routing", false, "add the X-Llm-D-Route explanation header to answers")
	)
	if err := flag.Parse(args); err != nil {
		return err
	}
	log := slog.New(slog.NewTextHandler(stderr, nil))
	if *config == "" {
		return errors.New("--config is required (cluster discovery is not built yet)")
	}
	tiers := activator.DefaultTiers()
	if *tiersFile != "" {
		data, err := os.ReadFile(*tiersFile)
		if err != nil {
			return err
		}
		if tiers, err = activator.ParseTiers(data); err != nil {
			return fmt.Errorf("%s: %w", *tiersFile, err)
		}
	}
	rcfg := router.DefaultConfig()
	if *routerFile != "" {
		data, err := os.ReadFile(*routerFile)
		if err != nil {
			return err
		}
		if rcfg, err = router.ParseConfig(data); err != nil {
			return fmt.Errorf("%s: %w", *routerFile, err)
		}
	}
	data, err := os.ReadFile(*config)
	if err != nil {
		return err
	}
	revs, pods, err := activator.ParseStaticConfig(data, tiers, rcfg)
	if err != nil {
		return fmt.Errorf("%s: %w", *config, err)
	}
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	act, err := activator.New(activator.Options{Tiers: tiers, RouterConfig: rcfg, Registerer: reg, Logger: log,
		ScrapeInterval: *scrape, MaxBodyBytes: *maxBody, Debug: *debug})
	if err != nil {
		return err
	}
	defer act.Close()
	for _, r := range revs {
		if err := act.UpsertRevision(r); err != nil {
			return err
		}
		if err := act.SetPods(r.Key, pods[r.Key]); err != nil {
			return err
		}
	}

	admin := http.NewServeMux()
	admin.Handle("GET /metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
	admin.Handle("GET /stats", act.StatsHandler())
	servers := []*http.Server{
		{Addr: *addr, Handler: act.Handler(), ReadHeaderTimeout: 10 * time.Second},
		{Addr: *adminAddr, Handler: admin, ReadHeaderTimeout: 10 * time.Second},
	}
	errc := make(chan error, len(servers))
	for _, s := range servers {
		go func() {
			log.Info("listening", "addr", s.Addr)
			if err := s.ListenAndServe(); !errors.Is(err, http.ErrServerClosed) {
				errc <- err
			}
		}()
	}
	select {
	case err := <-errc:
		return err
	case <-ctx.Done():
	}
	log.Info("shutting down: draining in-flight requests")
	sctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	for _, s := range servers {
		_ = s.Shutdown(sctx)
	}
	return nil
}
