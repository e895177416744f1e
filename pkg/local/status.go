package local

import (
	"context"
	_ "embed"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httputil"
	"net/url"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus/promhttp"
	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"github.com/llmd-kn/llmd-kn/pkg/activator"
	"github.com/llmd-kn/llmd-kn/pkg/apis"
	"github.com/llmd-kn/llmd-kn/pkg/autoscaler"
	"github.com/llmd-kn/llmd-kn/pkg/engine"
)

//go:embed status.html
var statusHTML []byte

// Status is what /status.json serves and the status page shows.
type Status struct {
	Time     time.Time       `json:"time"`
	API      string          `json:"api"`
	Mode     string          `json:"mode"` // "simulated" or "process"
	Services []ServiceStatus `json:"services"`
}

// ServiceStatus is one Service: its revision's traffic numbers (from the
// activator) and its pods by role.
type ServiceStatus struct {
	Namespace      string   `json:"namespace"`
	Name           string   `json:"name"`
	Revision       string   `json:"revision"`
	URL            string   `json:"url"`
	TagURLs        []string `json:"tagURLs,omitempty"`
	Model          string   `json:"model"`
	Disaggregation string   `json:"disaggregation"`
	RoutingProfile string   `json:"routingProfile"`
	SimProfile     string   `json:"simProfile,omitempty"`
	// StepBudget is the pods' per-step token budget and its reason.
	StepBudget string `json:"stepBudget,omitempty"`
	// KVEvents says what the pods' KV events and the precise index do,
	// pods routed on the approximate index included.
	KVEvents string `json:"kvEvents,omitempty"`
	// Requests counts finished requests, all tiers.
	Requests         int64   `json:"requests"`
	Errors           int64   `json:"errors"`
	PromptTokens     int64   `json:"promptTokens"`
	CompletionTokens int64   `json:"completionTokens"`
	CachedTokens     int64   `json:"cachedTokens"`
	Disaggregated    int64   `json:"disaggregated"`
	CacheHitRate     float64 `json:"cacheHitRate"` // cached / prompt tokens
	InFlight         int     `json:"inFlight"`
	Queued           int     `json:"queued"`
	// TTFT percentiles over the activator's recent window, in seconds.
	TTFTP50 float64      `json:"ttftP50"`
	TTFTP90 float64      `json:"ttftP90"`
	TPOTP50 float64      `json:"tpotP50"`
	Window  string       `json:"window"`
	Roles   []RoleStatus `json:"roles"`
	// Autoscaler is the revision's slo.autoscaling.llm-d.ai decider, nil
	// when another class (or none) scales it.
	Autoscaler *AutoscalerStatus `json:"autoscaler,omitempty"`
}

// AutoscalerStatus is a revision's decider and its last recommendation.
type AutoscalerStatus struct {
	Class string `json:"class"`
	// Mode is "act" (recommendations are applied) or "advise" (reported
	// only).
	Mode string `json:"mode"`
	// Recommendation is the last one, absent before the first tick.
	Recommendation *autoscaler.Recommendation `json:"recommendation,omitempty"`
}

// RoleStatus is one role's scale and pods.
type RoleStatus struct {
	Role string `json:"role"`
	Replicas
	// Recommended is the autoscaler's last recommendation for the role
	// (next to Desired, what the Scaler was last told).
	Recommended *int        `json:"recommended,omitempty"`
	Pods        []PodStatus `json:"pods"`
}

// PodStatus is one pod, with what its own /metrics says.
type PodStatus struct {
	Name       string `json:"name"`
	Phase      string `json:"phase"`
	URL        string `json:"url,omitempty"`
	MetricsURL string `json:"metricsURL,omitempty"` // proxied on the status server
	// From the pod's vLLM metrics; absent while it is not ready.
	Waiting          int     `json:"waiting"`
	Running          int     `json:"running"`
	KVUsage          float64 `json:"kvUsage"`
	PrefixHitRate    float64 `json:"prefixHitRate"`
	PromptTokens     float64 `json:"promptTokens"`
	GenerationTokens float64 `json:"generationTokens"`
	Scraped          bool    `json:"scraped"`
}

// statusPage builds Status snapshots, scraping pods at most every 250 ms.
type statusPage struct {
	r      *Runtime
	client *http.Client

	mu   sync.Mutex
	last Status
	at   time.Time
}

func newStatusPage(r *Runtime) *statusPage {
	return &statusPage{r: r, client: &http.Client{Timeout: time.Second}}
}

func (sp *statusPage) snapshot(ctx context.Context) Status {
	sp.mu.Lock()
	defer sp.mu.Unlock()
	if time.Since(sp.at) < 250*time.Millisecond {
		return sp.last
	}
	r := sp.r
	st := Status{Time: time.Now().UTC(), API: r.APIURL(), Mode: "simulated"}
	if r.opts.PodCommand != "" {
		st.Mode = "process"
	}
	stats := map[string]activator.RevisionStats{}
	for _, s := range r.act.Stats() {
		stats[s.Revision] = s
	}
	type job struct {
		ps  *PodStatus
		url string
	}
	var jobs []job
	for _, svc := range r.opts.Services {
		key := svc.Key()
		rs := stats[key.String()]
		ss := ServiceStatus{
			Namespace: svc.Namespace, Name: svc.Name, Revision: svc.Revision, URL: r.ServiceURL(svc, ""),
			Model: svc.Model, Disaggregation: svc.Spec.Disaggregation, RoutingProfile: svc.Spec.RoutingProfile,
			SimProfile:   orDefault(svc.Spec.SimProfile, engine.DefaultProfile),
			StepBudget:   StepBudgetLine(svc),
			Errors:       rs.Errors,
			PromptTokens: rs.PromptTokens, CompletionTokens: rs.CompletionTokens, CachedTokens: rs.CachedTokens,
			Disaggregated: rs.Disaggregated, InFlight: rs.InFlight,
			TTFTP50: rs.TTFTP50, TTFTP90: rs.TTFTP90, TPOTP50: rs.TPOTP50, Window: rs.Window,
		}
		for _, t := range svc.Tags {
			ss.TagURLs = append(ss.TagURLs, r.ServiceURL(svc, t))
		}
		for _, n := range rs.RequestsByTier {
			ss.Requests += n
		}
		for _, n := range rs.QueuedByTier {
			ss.Queued += n
		}
		if rs.PromptTokens > 0 {
			ss.CacheHitRate = float64(rs.CachedTokens) / float64(rs.PromptTokens)
		}
		if kv := rs.KVEvents; kv != nil {
			ss.KVEvents = kv.Line
		}
		var rec *autoscaler.Recommendation
		if a := r.autoscalers[key]; a != nil {
			ss.Autoscaler = &AutoscalerStatus{Class: apis.AutoscalerClass, Mode: apis.AutoscalerAct}
			if a.cfg.Advisory {
				ss.Autoscaler.Mode = apis.AutoscalerAdvise
			}
			if last, ok := a.recommendation(); ok {
				rec = &last
				ss.Autoscaler.Recommendation = rec
			}
		}
		pods := r.scaler.podsOf(key)
		roles := []Role{RoleDecode}
		if svc.Spec.Disaggregated() {
			roles = append(roles, RolePrefill)
		}
		for _, role := range roles {
			rep, _ := r.scaler.Replicas(key, role)
			rst := RoleStatus{Role: string(role), Replicas: rep, Pods: []PodStatus{}}
			if rec != nil {
				n := rec.Decode
				if role == RolePrefill {
					n = rec.Prefill
				}
				rst.Recommended = &n
			}
			if !svc.Spec.Disaggregated() {
				rst.Role = "both"
			}
			for _, p := range pods[role] {
				rst.Pods = append(rst.Pods, PodStatus{Name: p.Name, Phase: p.Phase.String(), URL: p.URL,
					MetricsURL: "/pods/" + svc.Namespace + "/" + p.Name + "/metrics"})
			}
			ss.Roles = append(ss.Roles, rst)
		}
		st.Services = append(st.Services, ss)
	}
	// Scrape the ready pods in parallel.
	for si := range st.Services {
		for ri := range st.Services[si].Roles {
			for pi := range st.Services[si].Roles[ri].Pods {
				p := &st.Services[si].Roles[ri].Pods[pi]
				if p.Phase == phaseReady.String() && p.URL != "" {
					jobs = append(jobs, job{p, p.URL})
				}
			}
		}
	}
	var wg sync.WaitGroup
	for _, j := range jobs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			sp.scrape(ctx, j.ps, j.url)
		}()
	}
	wg.Wait()
	sp.last, sp.at = st, time.Now()
	return st
}

func (sp *statusPage) scrape(ctx context.Context, ps *PodStatus, base string) {
	// Generous: a pod's /metrics is large, and on a busy machine (or under
	// the race detector) reading it takes hundreds of milliseconds.
	ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, base+"/metrics", nil)
	if err != nil {
		return
	}
	resp, err := sp.client.Do(req)
	if err != nil {
		return
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return
	}
	parser := expfmt.NewTextParser(model.LegacyValidation)
	fams, err := parser.TextToMetricFamilies(io.LimitReader(resp.Body, 8<<20))
	if err != nil {
		return
	}
	sum := func(name string) float64 {
		var s float64
		if f, ok := fams[name]; ok {
			for _, m := range f.GetMetric() {
				switch f.GetType() {
				case dto.MetricType_COUNTER:
					s += m.GetCounter().GetValue()
				case dto.MetricType_GAUGE:
					s += m.GetGauge().GetValue()
				case dto.MetricType_UNTYPED:
					s += m.GetUntyped().GetValue()
				}
			}
		}
		return s
	}
	ps.Scraped = true
	ps.Waiting = int(sum("vllm:num_requests_waiting"))
	ps.Running = int(sum("vllm:num_requests_running"))
	ps.KVUsage = sum("vllm:kv_cache_usage_perc")
	if ps.KVUsage == 0 {
		ps.KVUsage = sum("vllm:gpu_cache_usage_perc")
	}
	if q := sum("vllm:prefix_cache_queries_total"); q > 0 {
		ps.PrefixHitRate = sum("vllm:prefix_cache_hits_total") / q
	}
	ps.PromptTokens = sum("vllm:prompt_tokens_total")
	ps.GenerationTokens = sum("vllm:generation_tokens_total")
}

// observability is the metrics server's handler: the status page,
// /status.json, /metrics (activator, router and scaler), /stats (the
// activator's per-revision stats, the autoscaler's feed), each pod's own
// metrics under /pods/{namespace}/{pod}/metrics, and POST /scale.
func (r *Runtime) observability() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /{$}", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "text/html; charset=utf-8")
		w.Header().Set("Cache-Control", "no-store")
		_, _ = w.Write(statusHTML)
	})
	mux.HandleFunc("GET /status.json", func(w http.ResponseWriter, req *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		w.Header().Set("Cache-Control", "no-store")
		_ = json.NewEncoder(w).Encode(r.status.snapshot(req.Context()))
	})
	mux.Handle("GET /metrics", promhttp.HandlerFor(r.reg, promhttp.HandlerOpts{Registry: r.reg}))
	mux.Handle("GET /stats", r.act.StatsHandler())
	mux.HandleFunc("GET /pods/{namespace}/{pod}/metrics", r.podMetrics)
	mux.HandleFunc("POST /scale", adminRequest(r.scaleHandler))
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) { _, _ = io.WriteString(w, "ok") })
	return mux
}

// podMetrics proxies a pod's own /metrics.
func (r *Runtime) podMetrics(w http.ResponseWriter, req *http.Request) {
	ns, name := req.PathValue("namespace"), req.PathValue("pod")
	for _, svc := range r.opts.Services {
		if svc.Namespace != ns {
			continue
		}
		for _, ps := range r.scaler.podsOf(svc.Key()) {
			for _, p := range ps {
				if p.Name != name || p.URL == "" || p.Phase == phaseExited {
					continue
				}
				u, err := url.Parse(p.URL)
				if err != nil {
					break
				}
				rp := &httputil.ReverseProxy{Rewrite: func(pr *httputil.ProxyRequest) {
					pr.SetURL(u)
					pr.Out.URL.Path = "/metrics"
					pr.Out.URL.RawQuery = ""
				}}
				rp.ServeHTTP(w, req)
				return
			}
		}
	}
	http.Error(w, fmt.Sprintf("no pod %s/%s", ns, name), http.StatusNotFound)
}

// ScaleRequest is POST /scale's body: set one role of a Service's revision
// to a replica count (0 scales to zero; the first request then wakes it).
type ScaleRequest struct {
	Namespace string `json:"namespace"`
	// Service or Revision names the revision.
	Service  string `json:"service"`
	Revision string `json:"revision"`
	Role     Role   `json:"role"`
	Replicas int    `json:"replicas"`
}

func (r *Runtime) scaleHandler(w http.ResponseWriter, req *http.Request) {
	var sr ScaleRequest
	dec := json.NewDecoder(io.LimitReader(req.Body, 1<<16))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&sr); err != nil {
		http.Error(w, "body: "+err.Error(), http.StatusBadRequest)
		return
	}
	if sr.Namespace == "" {
		sr.Namespace = DefaultNamespace
	}
	if sr.Role == "" {
		sr.Role = RoleDecode
	}
	var key activator.RevisionKey
	for _, svc := range r.opts.Services {
		if svc.Namespace == sr.Namespace && (svc.Name == sr.Service || svc.Revision == sr.Revision) {
			key = svc.Key()
		}
	}
	if key.Name == "" {
		http.Error(w, fmt.Sprintf("no Service %q or revision %q in namespace %s", sr.Service, sr.Revision, sr.Namespace), http.StatusNotFound)
		return
	}
	if err := r.scaler.Scale(req.Context(), key, sr.Role, sr.Replicas); err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	rep, _ := r.scaler.Replicas(key, sr.Role)
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(rep)
}
