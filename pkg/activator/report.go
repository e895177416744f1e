package activator

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/llmd-kn/llmd-kn/pkg/internaltls"
)

// Paths of the autoscaler's stats address that the Reporter calls.
const (
	StatsPath = "/v1/stats"
	PokePath  = "/v1/poke"
)

// StatsReport is the body of POST /v1/stats: one activator's view of every
// revision it serves. The counters in Revisions are cumulative; the
// autoscaler turns successive reports into rates.
type StatsReport struct {
	Activator string          `json:"activator"`
	Revisions []RevisionStats `json:"revisions"`
}

// PokeRequest is the body of POST /v1/poke: a request waits for the
// revision and no pod of it is ready.
type PokeRequest struct {
	Namespace string `json:"namespace"`
	Name      string `json:"name"`
}

// ReporterOptions configure a Reporter. Zero fields take the documented
// defaults.
type ReporterOptions struct {
	// URL is the autoscaler's stats address, e.g.
	// https://llmd-autoscaler.llmd-kn.svc:8090 (required). With a
	// TokenFile, http only to a loopback address.
	URL string
	// Activator names this activator in its reports (its pod name); the
	// autoscaler keeps one report per activator (required).
	Activator string
	// Interval is the time between two stats reports (1 s).
	Interval time.Duration
	// PokeWindow is the time during which further pokes for a revision
	// are dropped after one was sent (1 s): every queued request pokes,
	// the autoscaler needs to hear it once.
	PokeWindow time.Duration
	// TokenFile holds the bearer token sent with every report and poke:
	// the activator's projected ServiceAccount token for the autoscaler's
	// audience, re-read at each send as the kubelet rotates it. Empty: no
	// token (an autoscaler run with --stats-auth=none).
	TokenFile string
	// CAFile is the CA bundle that an https URL's server must chain to
	// (the autoscaler's, from its certificate Secret), re-read when it
	// changes; empty: the system's roots. ServerName is the name its
	// certificate must carry (the URL's host when empty).
	CAFile, ServerName string
	// Client sends the reports (a client with a 2 s timeout, verifying
	// the server with CAFile).
	Client     *http.Client
	Registerer prometheus.Registerer
	Logger     *slog.Logger
}

// Reporter feeds the autoscaler: it pushes the activator's revision stats
// at a fixed interval and forwards pokes, without ever making a request
// wait for the autoscaler. Failures are logged at debug level (the
// autoscaler may be restarting; the next report carries the cumulative
// counters anyway) and counted in llmd_activator_autoscaler_report_failures_total.
type Reporter struct {
	opts     ReporterOptions
	stats    *url.URL
	poke     *url.URL
	pokes    chan RevisionKey
	failures *prometheus.CounterVec
	sent     *prometheus.CounterVec

	mu       sync.Mutex
	lastPoke map[RevisionKey]time.Time
}

// pokeQueue bounds the pokes waiting to be sent; more are dropped (and
// counted), as the revisions they name are already being poked.
const pokeQueue = 256

// NewReporter validates the options and builds a Reporter; call Run to
// start it and pass Poke as the activator's Options.Poke.
func NewReporter(opts ReporterOptions) (*Reporter, error) {
	u, err := url.Parse(opts.URL)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return nil, fmt.Errorf("autoscaler URL %q: want an http(s) base URL like https://llmd-autoscaler.llmd-kn.svc:8090", opts.URL)
	}
	if strings.TrimSpace(opts.Activator) == "" {
		return nil, fmt.Errorf("activator name: required (the pod name)")
	}
	if opts.Interval <= 0 {
		opts.Interval = time.Second
	}
	if opts.PokeWindow <= 0 {
		opts.PokeWindow = time.Second
	}
	if opts.TokenFile != "" && u.Scheme == "http" && !loopback(u.Hostname()) {
		// The token lets its holder move replicas: it goes to a server
		// that proved who it is, or stays on this host.
		return nil, fmt.Errorf("autoscaler URL %q: the token would travel in clear; use https (with the autoscaler's CA bundle)", opts.URL)
	}
	if opts.Client == nil {
		tr := http.DefaultTransport.(*http.Transport).Clone()
		if u.Scheme == "https" {
			name := opts.ServerName
			if name == "" {
				name = u.Hostname()
			}
			if opts.CAFile != "" {
				cfg, err := internaltls.ClientConfig(opts.CAFile, name)
				if err != nil {
					return nil, fmt.Errorf("autoscaler TLS: %w", err)
				}
				tr.TLSClientConfig = cfg
			} else {
				tr.TLSClientConfig = &tls.Config{MinVersion: tls.VersionTLS12, ServerName: name}
			}
		}
		opts.Client = &http.Client{Timeout: 2 * time.Second, Transport: tr}
	} else if opts.CAFile != "" {
		return nil, errors.New("a CA file and a client: the client's TLS configuration decides; give one")
	}
	if opts.Registerer == nil {
		opts.Registerer = prometheus.NewRegistry()
	}
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	base := strings.TrimSuffix(u.String(), "/")
	r := &Reporter{opts: opts, pokes: make(chan RevisionKey, pokeQueue), lastPoke: map[RevisionKey]time.Time{}}
	r.stats, _ = url.Parse(base + StatsPath)
	r.poke, _ = url.Parse(base + PokePath)
	const ns, sub = "llmd", "activator"
	r.failures = prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Subsystem: sub, Name: "autoscaler_report_failures_total",
		Help: "Stats reports and pokes the autoscaler did not accept (unreachable or an error status), by kind (stats, poke)."}, []string{"kind"})
	r.sent = prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Subsystem: sub, Name: "autoscaler_pokes_total",
		Help: "Pokes for revisions at zero with a waiting request, by outcome (sent, coalesced: one was sent within the window, dropped: the send queue was full)."},
		[]string{"outcome"})
	if err := opts.Registerer.Register(r.failures); err != nil {
		return nil, err
	}
	if err := opts.Registerer.Register(r.sent); err != nil {
		return nil, err
	}
	return r, nil
}

// loopback: host is localhost or a loopback address.
func loopback(host string) bool {
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

// Poke asks the autoscaler to scale the revision up now. It never blocks:
// a poke within the window of the last one for the same revision, or one
// that finds the send queue full, is dropped.
func (r *Reporter) Poke(key RevisionKey) {
	now := time.Now()
	r.mu.Lock()
	if last, ok := r.lastPoke[key]; ok && now.Sub(last) < r.opts.PokeWindow {
		r.mu.Unlock()
		r.sent.WithLabelValues("coalesced").Inc()
		return
	}
	r.lastPoke[key] = now
	r.mu.Unlock()
	select {
	case r.pokes <- key:
	default:
		r.sent.WithLabelValues("dropped").Inc()
	}
}

// Run reports stats every interval and sends pokes until ctx ends.
func (r *Reporter) Run(ctx context.Context, stats func() []RevisionStats) {
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			select {
			case <-ctx.Done():
				return
			case key := <-r.pokes:
				r.sent.WithLabelValues("sent").Inc()
				if err := r.post(ctx, r.poke, PokeRequest{Namespace: key.Namespace, Name: key.Name}); err != nil {
					r.failures.WithLabelValues("poke").Inc()
					r.opts.Logger.Debug("poke failed", "revision", key.String(), "err", err)
				}
			}
		}
	}()
	t := time.NewTicker(r.opts.Interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			<-done
			return
		case <-t.C:
		}
		if err := r.post(ctx, r.stats, StatsReport{Activator: r.opts.Activator, Revisions: stats()}); err != nil {
			r.failures.WithLabelValues("stats").Inc()
			r.opts.Logger.Debug("stats report failed", "err", err)
		}
		r.forgetOldPokes()
	}
}

// forgetOldPokes keeps the coalescing table as small as the set of
// revisions poked within the window.
func (r *Reporter) forgetOldPokes() {
	now := time.Now()
	r.mu.Lock()
	defer r.mu.Unlock()
	for k, at := range r.lastPoke {
		if now.Sub(at) >= r.opts.PokeWindow {
			delete(r.lastPoke, k)
		}
	}
}

func (r *Reporter) post(ctx context.Context, u *url.URL, body any) error {
	data, err := json.Marshal(body)
	if err != nil {
		return err
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, u.String(), bytes.NewReader(data))
	if err != nil {
		return err
	}
	req.Header.Set("Content-Type", "application/json")
	if r.opts.TokenFile != "" {
		tok, err := os.ReadFile(r.opts.TokenFile)
		if err != nil {
			return fmt.Errorf("autoscaler token: %w", err)
		}
		req.Header.Set("Authorization", "Bearer "+strings.TrimSpace(string(tok)))
	}
	resp, err := r.opts.Client.Do(req)
	if err != nil {
		return fmt.Errorf("POST %s: %w", u.Path, err)
	}
	defer resp.Body.Close()
	msg, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
	if resp.StatusCode/100 != 2 {
		return fmt.Errorf("POST %s: %s: %s", u.Path, resp.Status, strings.TrimSpace(string(msg)))
	}
	return nil
}
