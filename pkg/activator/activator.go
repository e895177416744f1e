// Package activator is llmd-kn's data plane: an OpenAI-compatible HTTP front
// that sits in front of every LLM revision (in Knative it stays in the path,
// target-burst-capacity -1), buffers requests while a revision scales from
// zero, orders them by SLO tier, routes each with pkg/router to the pod
// where it will finish soonest, runs vLLM's prefill/decode two-step, streams
// answers through, and accounts for what passed to feed the autoscaler.
//
// The request path is a chain of small handlers, each testable alone, in the
// spirit of Knative's activator: sanitize headers → read and parse the body
// → resolve the revision → classify the tier → flow control → route and
// proxy (with retries before the first byte and the P/D two-step) →
// accounting. The package imports the router core, never the reverse, and
// knows nothing of Kubernetes: the local runtime and the cluster
// controllers tell it which revisions and pods exist.
package activator

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/llmd-kn/llmd-kn/pkg/router"
	"github.com/llmd-kn/llmd-kn/pkg/tokenizer/native"
)

// Knative's revision headers, set by its ingress on the way to a revision.
const (
	RevisionHeader  = "Knative-Serving-Revision"
	NamespaceHeader = "Knative-Serving-Namespace"
	// RouteHeader carries the routing explanation when Options.Debug is set.
	RouteHeader = "X-Llm-D-Route"
)

// Options configure an Activator. Zero fields take the documented defaults.
type Options struct {
	Tiers        *Tiers         // DefaultTiers()
	RouterConfig *router.Config // router.DefaultConfig()
	// HashCacheBytes bounds each revision's cache of prompt block hashes
	// (32 MiB; negative: no cache), with which a conversation's next turn
	// hashes only its new blocks (kvblock.HashCache).
	HashCacheBytes int64
	Flow           FlowLimits
	// MaxBodyBytes bounds request bodies (16 MiB).
	MaxBodyBytes int64
	// MaxBufferedBytes bounds the request bodies held at once, all
	// requests together (1 GiB): past it a request is refused with 503
	// and Retry-After rather than the process running out of memory.
	MaxBufferedBytes int64
	// BodyTimeout bounds the time to receive a request's body (30 s), so
	// that a client sending slowly cannot hold a handler and its buffer.
	BodyTimeout time.Duration
	// ScrapeInterval is how often each pod's /metrics is read (50 ms);
	// StaleAfter is when a pod's metrics count as unknown (4 intervals,
	// at least 500 ms).
	ScrapeInterval time.Duration
	StaleAfter     time.Duration
	// Domains are the host suffixes Host routing accepts after
	// {service}.{namespace}: "localhost" locally, the cluster's domain
	// (e.g. "svc.cluster.local", "example.com") in a cluster.
	Domains []string
	// MaxAttempts bounds the endpoints one request may try (3).
	MaxAttempts int
	// Debug adds the X-Llm-D-Route explanation header to answers.
	Debug bool
	// TierGrants are the credentials that let a request raise its tier
	// above its route's (nil: none; a client may only lower its tier).
	TierGrants *TierGrants
	// Poke is told that a revision has a request waiting and no ready pod
	// (not for batch-tier requests: batch work wakes a revision at zero at
	// the autoscaler's next tick, only as llm-d.ai/batch-max-replicas
	// allows).
	Poke func(RevisionKey)
	// BatchPromoteBefore is how long before its deadline a batch-tier
	// request with one (CloudEvents llmddeadline, the Batch API's
	// completion_window) moves to the tier above, whether it waits or
	// arrives then (DefaultBatchPromoteBefore; negative: never).
	BatchPromoteBefore time.Duration
	Registerer         prometheus.Registerer
	Logger             *slog.Logger
	Seed               uint64
	// Now is the clock (time.Now); ScrapeClient and Proxy the HTTP clients.
	Now          func() time.Time
	ScrapeClient *http.Client
	Proxy        *Proxy
	// KVStoragePoll is how often each KV-offloading revision's manifests
	// are read into its router (DefaultKVStoragePoll); KVStorageDefaultURI
	// is the storage of revisions that offload without a URI (the local
	// runtime's directory).
	KVStoragePoll       time.Duration
	KVStorageDefaultURI string
	// TokenizerDir is the folder (a mounted volume or Hugging Face cache)
	// where llm-d.ai/tokenizer auto and native find a model's tokenizer
	// files; "" leaves revisions without native:DIR on the estimate.
	TokenizerDir string
}

// Activator routes LLM requests to the pods of known revisions.
type Activator struct {
	opts    Options
	metrics *Metrics

	mu   sync.RWMutex
	revs map[RevisionKey]*revision

	tokenizers *native.Cache
	engineToks sync.Map // *revision -> its engine tokenizer
	tokWarned  sync.Map // what tokenizerFor warned about
	tokFound   sync.Map // model -> where its tokenizer files are

	buffered atomic.Int64 // request-body bytes held, against MaxBufferedBytes

	kvUnknown atomic.Int64 // messages at the bound KV-event endpoint from no known pod
}

// New builds an Activator.
func New(opts Options) (*Activator, error) {
	if opts.Tiers == nil {
		opts.Tiers = DefaultTiers()
	}
	if opts.RouterConfig == nil {
		opts.RouterConfig = router.DefaultConfig()
	}
	if opts.HashCacheBytes == 0 {
		opts.HashCacheBytes = 32 << 20
	}
	if opts.MaxBodyBytes <= 0 {
		opts.MaxBodyBytes = 16 << 20
	}
	if opts.MaxBufferedBytes <= 0 {
		opts.MaxBufferedBytes = 1 << 30
	}
	if opts.BodyTimeout <= 0 {
		opts.BodyTimeout = 30 * time.Second
	}
	if opts.ScrapeInterval <= 0 {
		opts.ScrapeInterval = 50 * time.Millisecond
	}
	if opts.StaleAfter <= 0 {
		opts.StaleAfter = max(4*opts.ScrapeInterval, 500*time.Millisecond)
	}
	if opts.MaxAttempts <= 0 {
		opts.MaxAttempts = 3
	}
	if len(opts.Domains) == 0 {
		opts.Domains = []string{"localhost", "svc.cluster.local", "svc", "example.com"}
	}
	if opts.Registerer == nil {
		opts.Registerer = prometheus.NewRegistry()
	}
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	if opts.BatchPromoteBefore == 0 {
		opts.BatchPromoteBefore = DefaultBatchPromoteBefore
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	if opts.ScrapeClient == nil {
		opts.ScrapeClient = NewScrapeClient()
	}
	if opts.Proxy == nil {
		opts.Proxy = NewProxy()
	}
	a := &Activator{opts: opts, metrics: NewMetrics(opts.Registerer), revs: map[RevisionKey]*revision{},
		tokenizers: native.NewCache(native.Options{})}
	opts.Registerer.MustRegister(kvCollector{a}, tokCollector{a})
	return a, nil
}

// UpsertRevision adds a revision or replaces its configuration (its pods
// and indexes are kept when only the configuration changes).
func (a *Activator) UpsertRevision(cfg RevisionConfig) error {
	if cfg.Key.Name == "" || cfg.Key.Namespace == "" {
		return errors.New("activator: revision key needs a namespace and a name")
	}
	for _, t := range cfg.Spec.AllowedTiers {
		if _, ok := a.opts.Tiers.Get(t); !ok {
			return fmt.Errorf("activator: revision %s allows unknown tier %q", cfg.Key, t)
		}
	}
	if len(cfg.Spec.AllowedTiers) == 0 {
		cfg.Spec.AllowedTiers = a.opts.Tiers.Names()
	}
	if cfg.Spec.DefaultTier == "" {
		cfg.Spec.DefaultTier = cfg.Spec.AllowedTiers[0]
	}
	rev, err := a.newRevision(cfg)
	if err != nil {
		return fmt.Errorf("activator: revision %s: %w", cfg.Key, err)
	}
	a.preloadTokenizer(cfg.Key, &cfg.Spec)
	a.mu.Lock()
	defer a.mu.Unlock()
	if old, ok := a.revs[cfg.Key]; ok {
		if err := old.reconfigure(cfg); err != nil {
			return fmt.Errorf("activator: revision %s: %w", cfg.Key, err)
		}
		return nil
	}
	a.revs[cfg.Key] = rev
	return nil
}

// RemoveRevision forgets a revision and stops watching its pods.
func (a *Activator) RemoveRevision(key RevisionKey) {
	a.mu.Lock()
	rev := a.revs[key]
	delete(a.revs, key)
	a.mu.Unlock()
	if rev != nil {
		rev.close()
	}
}

// SetPods replaces a revision's pods.
func (a *Activator) SetPods(key RevisionKey, pods []PodSpec) error {
	a.mu.RLock()
	rev := a.revs[key]
	a.mu.RUnlock()
	if rev == nil {
		return fmt.Errorf("activator: unknown revision %s", key)
	}
	rev.setPods(pods)
	return nil
}

// Stats returns the load statistics of every revision.
func (a *Activator) Stats() []RevisionStats {
	a.mu.RLock()
	revs := make([]*revision, 0, len(a.revs))
	for _, r := range a.revs {
		revs = append(revs, r)
	}
	a.mu.RUnlock()
	now := a.opts.Now()
	out := make([]RevisionStats, 0, len(revs))
	for _, r := range revs {
		s := r.stats.snapshot(now)
		s.Revision = r.key.String()
		s.MaxModelLen = r.maxModelLen()
		fs := r.flow.Stats()
		s.QueuedByTier = fs.Queued
		r.mu.RLock()
		s.Pods = len(r.list)
		for _, p := range r.list {
			s.InFlight += int(p.inflight.Load())
			p.mu.Lock()
			if p.healthy && !p.down {
				s.ReadyPods++
				role := "decode"
				if p.spec.Role == router.RolePrefill {
					role = "prefill"
				}
				if s.Roles == nil {
					s.Roles = map[string]RoleStats{}
				}
				rs := s.Roles[role]
				rs.Ready++
				rs.Running += p.metrics.Running
				rs.Waiting += p.metrics.Waiting
				rs.KVUsage += p.metrics.KVUsage
				s.Roles[role] = rs
			}
			p.mu.Unlock()
		}
		r.mu.RUnlock()
		for role, rs := range s.Roles {
			rs.KVUsage /= float64(rs.Ready)
			s.Roles[role] = rs
		}
		s.KVEvents = r.kvSummary()
		out = append(out, s)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Revision < out[j].Revision })
	return out
}

// Close stops watching every pod.
func (a *Activator) Close() {
	a.mu.Lock()
	revs := a.revs
	a.revs = map[RevisionKey]*revision{}
	a.mu.Unlock()
	for _, r := range revs {
		r.close()
	}
}

// Handler is the activator's HTTP front.
func (a *Activator) Handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) { _, _ = io.WriteString(w, "ok") })
	mux.HandleFunc("GET /v1/models", a.models)
	mux.Handle("POST /v1/completions", a.llm(KindCompletion))
	mux.Handle("POST /v1/chat/completions", a.llm(KindChat))
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		writeError(w, http.StatusNotFound, "NotFoundError", fmt.Sprintf("no route for %s %s", r.Method, r.URL.Path))
	})
	return sanitize(mux)
}

// StatsHandler serves Stats as JSON (the autoscaler's feed).
func (a *Activator) StatsHandler() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(a.Stats())
	})
}

// sanitize strips steering and hop-by-hop headers before anything else.
func sanitize(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		SanitizeInbound(r.Header)
		next.ServeHTTP(w, r)
	})
}

// writeError answers in OpenAI's (and vLLM's) error shape.
func writeError(w http.ResponseWriter, status int, typ, msg string) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(map[string]any{"error": map[string]any{
		"message": msg, "type": typ, "param": nil, "code": status,
	}})
}

func errorType(status int) string {
	switch status {
	case http.StatusBadRequest:
		return "BadRequestError"
	case http.StatusForbidden:
		return "PermissionDeniedError"
	case http.StatusNotFound:
		return "NotFoundError"
	case http.StatusRequestEntityTooLarge:
		return "RequestEntityTooLarge"
	case http.StatusTooManyRequests:
		return "RateLimitError"
	case http.StatusServiceUnavailable:
		return "ServiceUnavailableError"
	}
	return "InternalServerError"
}

func (a *Activator) models(w http.ResponseWriter, r *http.Request) {
	type model struct {
		ID      string `json:"id"`
		Object  string `json:"object"`
		Created int64  `json:"created"`
		OwnedBy string `json:"owned_by"`
	}
	var data []model
	seen := map[string]bool{}
	hostRev, _ := a.byHost(r.Host)
	a.mu.RLock()
	for _, rev := range a.revs {
		if hostRev != nil && rev != hostRev {
			continue
		}
		for _, m := range rev.config().Models {
			if !seen[m] {
				seen[m] = true
				data = append(data, model{ID: m, Object: "model", Created: a.opts.Now().Unix(), OwnedBy: "llmd-kn"})
			}
		}
	}
	a.mu.RUnlock()
	sort.Slice(data, func(i, j int) bool { return data[i].ID < data[j].ID })
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(map[string]any{"object": "list", "data": data})
}

// resolve finds the revision of a request: Knative's revision headers,
// then the Host, then the model field. tagTier is the tier named by a
// traffic-tag host, if any.
func (a *Activator) resolve(r *http.Request, model string) (rev *revision, tagTier string, err error) {
	if name := r.Header.Get(RevisionHeader); name != "" {
		key := RevisionKey{Namespace: r.Header.Get(NamespaceHeader), Name: name}
		a.mu.RLock()
		rev = a.revs[key]
		a.mu.RUnlock()
		if rev == nil {
			return nil, "", &BadRequestError{Status: http.StatusNotFound, Msg: fmt.Sprintf("revision %s is not served by this activator", key)}
		}
		// Knative's ingress keeps the Host: a tag host that routes to this
		// revision still names its tier.
		if hostRev, tag := a.byHost(r.Host); hostRev == rev {
			if _, isTier := a.opts.Tiers.Get(tag); isTier {
				tagTier = tag
			}
		}
		return rev, tagTier, nil
	}
	if rev, tag := a.byHost(r.Host); rev != nil {
		if _, isTier := a.opts.Tiers.Get(tag); isTier {
			tagTier = tag
		}
		return rev, tagTier, nil
	}
	a.mu.RLock()
	defer a.mu.RUnlock()
	var names []string
	for _, rv := range a.revs {
		for _, m := range rv.config().Models {
			if m == model {
				return rv, "", nil
			}
			names = append(names, m)
		}
	}
	sort.Strings(names)
	if model == "" {
		return nil, "", &BadRequestError{Status: http.StatusBadRequest, Msg: "model: required (served models: " + strings.Join(names, ", ") + ")"}
	}
	return nil, "", &BadRequestError{Status: http.StatusNotFound,
		Msg: fmt.Sprintf("The model `%s` does not exist. Served models: %s", model, strings.Join(names, ", "))}
}

// byHost matches {service}.{namespace}.{domain} and
// {tag}-{service}.{namespace}.{domain}; it returns the tag, if any.
func (a *Activator) byHost(host string) (*revision, string) {
	if h, _, err := net.SplitHostPort(host); err == nil {
		host = h
	}
	host = strings.ToLower(strings.TrimSuffix(host, "."))
	for _, d := range a.opts.Domains {
		rest, ok := strings.CutSuffix(host, "."+d)
		if !ok {
			continue
		}
		svc, ns, ok := strings.Cut(rest, ".")
		if !ok || strings.Contains(ns, ".") {
			continue
		}
		a.mu.RLock()
		var exact, tagged *revision
		tag := ""
		for _, rev := range a.revs {
			if rev.key.Namespace != ns {
				continue
			}
			if rev.config().Service == svc {
				exact = rev
			} else if t, ok := strings.CutSuffix(svc, "-"+rev.config().Service); ok && slices.Contains(rev.config().Tags, t) {
				tagged, tag = rev, t
			}
		}
		a.mu.RUnlock()
		if exact != nil {
			return exact, ""
		}
		if tagged != nil {
			return tagged, tag
		}
	}
	return nil, ""
}

// call is one request's state as it passes down the handler chain.
type call struct {
	start   time.Time
	req     *LLMRequest
	body    *buffer // holds the client's bytes, which req refers to
	rev     *revision
	tagTier string
	tier    Tier
	code    int // the status the request ended with, for metrics
	// grant is the request's place in its revision's flow control; its
	// first response byte starts it (the prefill gate's count).
	grant *grant
}

type callKey struct{}

func callOf(r *http.Request) *call { return r.Context().Value(callKey{}).(*call) }

// llm is the chain for one OpenAI request kind, outermost first: read and
// parse the body, resolve the revision, classify the tier, check the
// context length, count the request, flow control, then route, proxy and
// account. Each step is a
// small handler that either answers (an error) or passes on.
func (a *Activator) llm(kind string) http.Handler {
	return a.readBody(kind,
		a.resolveRevision(
			a.classifyTier(
				a.checkContext(
					a.countRequests(
						a.flowControl(
							http.HandlerFunc(a.route)))))))
}

// readBody reads the body once, within the size limit, into a pooled
// buffer that lives until the request is answered, and parses it once
// (resolveRevision tokenizes it, once, with the revision's tokenizer). A declared Content-Length over the limit is refused
// before anything is read.
func (a *Activator) readBody(kind string, next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		c := &call{start: a.opts.Now(), code: http.StatusOK}
		tooBig := func() {
			// The rest of the body is not wanted: close rather than
			// have the server read it before answering.
			w.Header().Set("Connection", "close")
			writeError(w, http.StatusRequestEntityTooLarge, errorType(413),
				fmt.Sprintf("request body over the limit of %d bytes", a.opts.MaxBodyBytes))
		}
		if r.ContentLength > a.opts.MaxBodyBytes {
			tooBig()
			return
		}
		c.body = getBuffer()
		defer c.body.release()
		held := &budgetReader{r: http.MaxBytesReader(w, r.Body, a.opts.MaxBodyBytes), a: a}
		defer func() { a.buffered.Add(-held.n) }()
		rc := http.NewResponseController(w)
		_ = rc.SetReadDeadline(time.Now().Add(a.opts.BodyTimeout))
		err := c.body.readFrom(held, r.ContentLength)
		_ = rc.SetReadDeadline(time.Time{})
		if err != nil {
			var mbe *http.MaxBytesError
			var ne net.Error
			switch {
			case errors.As(err, &mbe):
				tooBig()
			case errors.Is(err, errBudget):
				w.Header().Set("Retry-After", "1")
				writeError(w, http.StatusServiceUnavailable, errorType(503), "the activator holds too many request bodies; retry shortly")
			case errors.As(err, &ne) && ne.Timeout():
				w.Header().Set("Connection", "close")
				writeError(w, http.StatusRequestTimeout, "RequestTimeoutError",
					fmt.Sprintf("request body not received within %s", a.opts.BodyTimeout))
			default:
				writeError(w, http.StatusBadRequest, "BadRequestError", "could not read the request body: "+err.Error())
			}
			return
		}
		// Tokenized once the revision, and so its tokenizer, is known.
		if c.req, err = parseLLMRequest(kind, c.body.b); err != nil {
			a.fail(w, err)
			return
		}
		next.ServeHTTP(w, r.WithContext(context.WithValue(r.Context(), callKey{}, c)))
	})
}

// errBudget is a body refused because MaxBufferedBytes are held.
var errBudget = errors.New("request-body budget exhausted")

// budgetReader counts the body bytes it reads against the activator's
// MaxBufferedBytes; n are released when the request is done.
type budgetReader struct {
	r io.Reader
	a *Activator
	n int64
}

func (b *budgetReader) Read(p []byte) (int, error) {
	n, err := b.r.Read(p)
	if n > 0 {
		b.n += int64(n)
		if b.a.buffered.Add(int64(n)) > b.a.opts.MaxBufferedBytes {
			return n, errBudget
		}
	}
	return n, err
}

// resolveRevision finds the revision: Knative's headers, Host, or model.
func (a *Activator) resolveRevision(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		c := callOf(r)
		var err error
		if c.rev, c.tagTier, err = a.resolve(r, c.req.Model); err != nil {
			a.fail(w, err)
			return
		}
		if err = a.tokenize(r.Context(), c); err != nil {
			a.fail(w, err)
			return
		}
		next.ServeHTTP(w, r)
	})
}

// classifyTier picks the SLO tier: the baseline is a tier-named traffic
// tag, else the Service's default; the tier header may lower it, and raise
// it only with a credential (tierauth.go); the Service must allow it.
func (a *Activator) classifyTier(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		c := callOf(r)
		base := c.tagTier
		if base == "" {
			base = c.rev.config().Spec.DefaultTier
		}
		name := r.Header.Get(TierHeader)
		if name == "" {
			name = base
		}
		tier, ok := a.opts.Tiers.Get(name)
		if !ok {
			a.fail(w, bad("unknown SLO tier %q (tiers: %s)", name, strings.Join(a.opts.Tiers.Names(), ", ")))
			return
		}
		if !c.rev.config().Spec.AllowsTier(tier.Name) {
			a.fail(w, bad("the %s tier is not allowed on this service (allowed: %s)", tier.Name, strings.Join(c.rev.config().Spec.AllowedTiers, ", ")))
			return
		}
		if baseTier, ok := a.opts.Tiers.Get(base); ok {
			if err := a.authorizeTier(r.Header, baseTier, tier); err != nil {
				a.fail(w, err)
				return
			}
		}
		// The credential is the activator's; pods never see it.
		r.Header.Del(TierTokenHeader)
		c.tier = tier
		next.ServeHTTP(w, r)
	})
}

// countRequests counts every request that reached a revision and tier by
// the status it ended with in the metrics. The revision's stats count it
// as arrived (the autoscaler's early signal) when flow control dispatches
// or queues it, and apart, as shed, when flow control refuses it on
// arrival: only requests that reach a pod, or wait for one, count toward
// scaling (issue 17).
func (a *Activator) countRequests(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		c := callOf(r)
		defer func() {
			if tm := c.rev.m.tiers[c.tier.Name]; c.code == http.StatusOK && tm != nil {
				tm.ok.Inc()
			} else {
				a.metrics.Requests.WithLabelValues(c.rev.name, c.tier.Name, strconv.Itoa(c.code)).Inc()
			}
		}()
		next.ServeHTTP(w, r)
	})
}

// flowControl holds the request in its revision's tier queue until it may
// be dispatched, and refuses it with 429/503 and Retry-After when it may
// not; the autoscaler is poked when the revision has no ready pod.
func (a *Activator) flowControl(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		c := callOf(r)
		rev, m := c.rev, a.metrics
		revName := rev.name
		tm := rev.m.tiers[c.tier.Name]
		tm.queued.Inc()
		arrivedAs, entered := c.tier.Name, false
		g, tier, err := a.acquirePromoting(r.Context(), rev, c.tier, int64(c.req.Size), func() {
			entered = true
			rev.stats.arrive(arrivedAs, len(c.req.Tokens))
		})
		tm.queued.Dec()
		c.tier = tier // a batch request whose deadline neared moved up (promote.go)
		if err != nil {
			var rej *RejectError
			if errors.As(err, &rej) {
				c.code = rej.Status
				m.Rejected.WithLabelValues(revName, c.tier.Name, rej.Kind).Inc()
				if rej.RetryAfter > 0 {
					w.Header().Set("Retry-After", strconv.Itoa(int(rej.RetryAfter.Seconds()+0.5)))
				}
				writeError(w, rej.Status, errorType(rej.Status), rej.Reason)
				when := "arrival"
				if entered {
					when = "queued"
				}
				m.ShedTime.WithLabelValues(revName, c.tier.Name, when).Observe(a.opts.Now().Sub(c.start).Seconds())
			} else {
				c.code = 499 // the client went away while queued
			}
			if entered {
				// It waited in the queue: arrived load that failed.
				rev.stats.record(requestDone{tier: c.tier.Name, failed: true, at: a.opts.Now()})
			} else {
				rev.stats.shed(c.tier.Name, len(c.req.Tokens))
			}
			return
		}
		defer g.release()
		c.grant = g
		if tier.Name == BatchTier {
			rev.stats.batchDispatched(1)
			defer rev.stats.batchDispatched(-1)
		}
		tm.queueTime.Observe(a.opts.Now().Sub(c.start).Seconds())
		next.ServeHTTP(w, r)
	})
}

func (a *Activator) fail(w http.ResponseWriter, err error) {
	var br *BadRequestError
	if errors.As(err, &br) {
		writeError(w, br.Status, errorType(br.Status), br.Msg)
		return
	}
	writeError(w, http.StatusInternalServerError, "InternalServerError", err.Error())
}

// route picks endpoints with the revision's router, sends the request
// (retrying on another endpoint only before the first byte), and accounts
// for the answer.
func (a *Activator) route(w http.ResponseWriter, r *http.Request) {
	c := callOf(r)
	rev, tier, req, m := c.rev, c.tier, c.req, a.metrics
	revName := rev.name
	ctx := r.Context()
	stripUsage := askUsage(req)
	if rev.config().PriorityScheduling {
		req.Set("priority", strconv.AppendInt(nil, int64(a.opts.Tiers.VLLMPriority(tier)), 10))
	}
	rreq := router.Request{Model: req.Model, Tier: tier.Name, Tokens: req.Tokens, ExpectedOutput: req.MaxTokens, HashCache: rev.hashes,
		CacheSalt: req.CacheSalt}
	if rev.modelLen.isAdapter(req.Model) {
		// A LoRA adapter's blocks are its own (KV events and manifests
		// name it): never the base model's.
		rreq.LoRA = req.Model
	}
	var d router.Decision
	// The first attempt leaves out pods predicted to start the request
	// later than its tier allows while others are within it (admission.go);
	// a retry leaves out only the pods that failed.
	exclude := map[string]bool{}
	var lastErr error
	// Each pod's requests without their first byte are counted by tier
	// where a tier has a prefill gate or yields (Tiers.prefill).
	counting, ti := a.opts.Tiers.prefill, a.opts.Tiers.index(tier.Name)
	ruled := tier.MaxPrefillPerPod > 0 || tier.YieldToInteractive
	for attempt := 0; attempt < a.opts.MaxAttempts; attempt++ {
		skip := exclude
		if attempt > 0 {
			rev.m.retries.Inc()
		} else if over := rev.overBudget(tier); over != nil {
			skip = over
		}
		if attempt == 0 {
			if full := rev.atCap(tier); full != nil {
				skip = union(skip, full)
			}
		}
		eps := rev.snapshot(nil, skip)
		t0 := time.Now()
		err := rev.scheduler().Decide(&d, &rreq, eps)
		m.DecisionTime.Observe(time.Since(t0).Seconds())
		if err != nil {
			// Pods that timed out and left no other: 504, not 503.
			if te := (*TimeoutError)(nil); !errors.As(lastErr, &te) {
				lastErr = err
			}
			break
		}
		var held *atomic.Int64
		if counting {
			var ok bool
			held, ok = rev.claim(d.DecodeID, tier, ti, attempt == 0 && ruled)
			for !ok {
				// Another request took the pod's room since atCap read
				// it: decide again without the pod; where no other pod
				// has room, the request goes anyway (as atCap's nil).
				skip = union(skip, map[string]bool{d.DecodeID: true})
				if eps = rev.snapshot(nil, skip); rev.scheduler().Decide(&d, &rreq, eps) == nil {
					held, ok = rev.claim(d.DecodeID, tier, ti, true)
					continue
				}
				eps = rev.snapshot(nil, exclude)
				if err = rev.scheduler().Decide(&d, &rreq, eps); err != nil {
					break
				}
				held, ok = rev.claim(d.DecodeID, tier, ti, false)
			}
			if err != nil {
				lastErr = err
				break
			}
		}
		res, err := a.attempt(w, r, c, &d, eps, stripUsage, held)
		if err == nil {
			c.code = res.Code
			rev.podOK(d.DecodeID)
			a.account(rev, tier, &d, res)
			return
		}
		var te *TimeoutError
		timedOut := errors.As(err, &te)
		var re *RetryableError
		if !errors.As(err, &re) {
			var started *StartedError
			switch {
			case ctx.Err() != nil:
				c.code = 499
			case errors.As(err, &started):
				c.code = http.StatusBadGateway
				if timedOut {
					c.code = http.StatusGatewayTimeout
				}
				rev.podFailed(d.DecodeID)
				a.opts.Logger.Warn("request failed after the answer started", "revision", revName, "err", err)
				rev.stats.record(requestDone{tier: tier.Name, failed: true, at: a.opts.Now()})
				abortStarted(w, req.Stream, err)
			default:
				c.code = http.StatusBadGateway
				if timedOut {
					c.code = http.StatusGatewayTimeout
					rev.podFailed(d.DecodeID)
				}
				writeError(w, c.code, errorType(c.code), fmt.Sprintf("revision %s: %v", revName, err))
			}
			rev.stats.record(requestDone{tier: tier.Name, failed: true, at: a.opts.Now()})
			return
		}
		lastErr = err
		if len(rreq.BlockHashes) == 0 {
			rreq.BlockHashes = slices.Clone(d.BlockHashes()) // no rehashing on retry
		}
		exclude[d.DecodeID] = true
		if p := rev.pod(d.DecodeID); p != nil {
			p.mu.Lock()
			p.down = true
			p.mu.Unlock()
		}
		if timedOut {
			rev.podFailed(d.DecodeID)
		}
	}
	if lastErr == nil {
		lastErr = errNoPod
	}
	c.code = statusFor(lastErr)
	rev.stats.record(requestDone{tier: tier.Name, failed: true, at: a.opts.Now()})
	w.Header().Set("Retry-After", "1")
	writeError(w, c.code, errorType(c.code), fmt.Sprintf("no endpoint of revision %s could take the request: %v", revName, lastErr))
}

// abortStarted ends an answer whose upstream failed after its status went
// out, so that the client cannot take it for a complete one: a stream gets
// an SSE error event (OpenAI's error shape), then the connection is
// aborted (no final chunk in HTTP/1.1, a stream reset in HTTP/2).
func abortStarted(w http.ResponseWriter, stream bool, err error) {
	if stream {
		ev, _ := json.Marshal(map[string]any{"error": map[string]any{
			"message": "the endpoint failed during the answer: " + err.Error(), "type": "InternalServerError", "param": nil, "code": http.StatusBadGateway}})
		_, _ = w.Write(append(append([]byte("data: "), ev...), "\n\n"...))
		_ = http.NewResponseController(w).Flush()
	}
	panic(http.ErrAbortHandler)
}

// attempt sends the request to the decided endpoint(s) once.
//
// held is the decode pod's count of the request's tier without a first
// byte (pod.unstarted; nil: not counted), claimed when it was routed: it
// is decremented at the first byte or at the end without one, and the
// flow controller is woken for requests that wait for it.
func (a *Activator) attempt(w http.ResponseWriter, r *http.Request, c *call, d *router.Decision, eps []router.Endpoint, stripUsage bool, held *atomic.Int64) (Result, error) {
	rev, req, start := c.rev, c.req, c.start
	unhold := func() {
		if held != nil {
			held.Add(-1)
			held = nil
			rev.flow.wake()
		}
	}
	defer unhold()
	revName := rev.name
	path := "/v1/completions"
	if req.Kind == KindChat {
		path = "/v1/chat/completions"
	}
	decode := rev.pod(d.DecodeID)
	if decode == nil {
		return Result{}, &RetryableError{Endpoint: d.DecodeID, Err: errNoPod}
	}
	var extra []Edit
	prefilled := 0
	if d.Disaggregated {
		if pre := rev.pod(d.PrefillID); pre != nil {
			pre.inflight.Add(1)
			res, err := a.opts.Proxy.Prefill(r.Context(), r, pre.spec.URL, path, req)
			pre.inflight.Add(-1)
			if err == nil {
				extra = []Edit{{Key: "kv_transfer_params", Value: res.KVTransferParams}}
				prefilled = res.CachedTokens
				rev.m.disaggregated.Inc()
			} else {
				if r.Context().Err() != nil {
					return Result{}, r.Context().Err()
				}
				a.opts.Logger.Info("prefill failed, decoding alone", "revision", revName, "prefill", d.PrefillID, "err", err)
				rev.m.pdFallback.Inc()
				d.Disaggregated = false
			}
		}
	} else {
		rev.m.decodeOnly.Inc()
	}
	// The client's bytes as they are, or once copied with the edits.
	body, owner := req.RawBody(), c.body
	if body == nil || len(extra) > 0 {
		owner = getBuffer()
		defer owner.release()
		owner.b = req.AppendBody(owner.b, extra...)
		body = owner.b
	}
	uncached := int64(max(d.PromptTokens-max(d.PrefixHitTokens, 0), 0))
	decode.inflight.Add(1)
	decode.inflightTokens.Add(uncached)
	ti := a.opts.Tiers.index(c.tier.Name)
	if ti >= 0 && ti < len(decode.active) {
		decode.active[ti].Add(1)
		defer decode.active[ti].Add(-1)
	}
	// A streamed request is queued on the pod until its first byte.
	var queued *atomic.Int64
	if req.Stream && ti >= 0 && ti < len(decode.queued) {
		queued = &decode.queued[ti]
		queued.Add(1)
	}
	rev.rt.Record(d)
	meter := NewMeter(start, req.Stream, a.opts.Now)
	obs := &firstByte{Meter: meter, onFirst: func() {
		unhold()
		c.grant.start()
		decode.inflightTokens.Add(-uncached)
		decode.starts.add(a.opts.Now())
		if queued != nil {
			queued.Add(-1)
		}
	}}
	if a.opts.Debug {
		w.Header().Set(RouteHeader, d.Explain(eps, 3))
	}
	filter := &usageFilter{ResponseWriter: w, streaming: req.Stream, strip: stripUsage, rewrite: d.Disaggregated, cached: prefilled}
	err := a.opts.Proxy.forward(r.Context(), filter, r, decode.spec.URL, path, body, owner, obs, rev.config().Timeouts.or(c.tier.Timeouts()))
	filter.close()
	decode.inflight.Add(-1)
	if !obs.seen {
		decode.inflightTokens.Add(-uncached)
		if queued != nil {
			queued.Add(-1)
		}
	}
	if err != nil {
		if a.opts.Debug {
			w.Header().Del(RouteHeader)
		}
		return Result{}, err
	}
	res := meter.Finish()
	if d.Disaggregated && res.Usage != nil {
		// vLLM's decode pod counts the KV it received as cached; but the
		// prefill pod computed it. What no pod had to compute is what the
		// prefill pod found in its own cache: report that, as llm-d's
		// sidecar reports the prefiller's cached tokens.
		if res.Usage.Details == nil {
			res.Usage.Details = &struct {
				CachedTokens int `json:"cached_tokens"`
			}{}
		}
		res.Usage.Details.CachedTokens = prefilled
	}
	return res, nil
}

// firstByte calls onFirst once, at the first body chunk.
type firstByte struct {
	*Meter
	onFirst func()
	seen    bool
}

func (f *firstByte) Chunk(b []byte) {
	if !f.seen {
		f.seen = true
		f.onFirst()
	}
	f.Meter.Chunk(b)
}

// account records a finished request in metrics and revision stats.
func (a *Activator) account(rev *revision, tier Tier, d *router.Decision, res Result) {
	m, tm := rev.m, rev.m.tiers[tier.Name]
	done := requestDone{tier: tier.Name, failed: res.Code >= 400, usage: res.Usage, predictedCached: d.PrefixHitTokens,
		disaggregated: d.Disaggregated, at: a.opts.Now()}
	if res.Code < 400 {
		if res.Streaming && res.TTFB > 0 {
			tm.ttft.Observe(res.TTFB.Seconds())
			done.ttft = res.TTFB
		}
		if tpot, ok := res.TPOT(); ok {
			tm.tpot.Observe(tpot.Seconds())
			done.tpot = tpot
		}
		if u := res.Usage; u != nil {
			m.prompt.Add(float64(u.PromptTokens))
			m.completion.Add(float64(u.CompletionTokens))
			m.cached.Add(float64(u.CachedTokens()))
		}
		if d.PrefixHitTokens > 0 {
			m.predicted.Add(float64(d.PrefixHitTokens))
		}
	}
	rev.stats.record(done)
	if res.Code < 400 {
		rev.observe(d, res.Usage)
	}
}

// union returns the names in a or b (a new map; either may be nil).
func union(a, b map[string]bool) map[string]bool {
	out := make(map[string]bool, len(a)+len(b))
	for k := range a {
		out[k] = true
	}
	for k := range b {
		out[k] = true
	}
	return out
}
