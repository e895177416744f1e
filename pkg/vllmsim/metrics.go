package vllmsim

import (
	"bytes"
	"net/http"
	"strconv"
	"sync"
	"sync/atomic"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/prometheus/common/expfmt"

	"github.com/llmd-kn/llmd-kn/pkg/engine"
)

// Bucket boundaries of vLLM's v1 Prometheus logger.
var (
	ttftBuckets = []float64{0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5,
		0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0, 40.0, 80.0, 160.0, 640.0, 2560.0}
	itlBuckets = []float64{0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75,
		1.0, 2.5, 5.0, 7.5, 10.0, 20.0, 40.0, 80.0}
	requestLatencyBuckets = []float64{0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0,
		30.0, 40.0, 50.0, 60.0, 120.0, 240.0, 480.0, 960.0, 1920.0, 7680.0}
)

// buckets125 is vLLM's build_1_2_5_buckets: 1, 2, 5, 10, 20, 50, ... up to
// max.
func buckets125(max int) []float64 {
	var out []float64
	for exp := 1; ; exp *= 10 {
		for _, m := range []int{1, 2, 5} {
			v := m * exp
			if v > max {
				return out
			}
			out = append(out, float64(v))
		}
	}
}

// metrics are one server's Prometheus metrics, in their own registry so that
// several simulators can live in one process. Names, labels and buckets are
// vLLM's. Latencies are wall-clock seconds as this server observes them, so
// with a time scale of 0.1 they are ten times smaller than the modelled
// hardware's.
type metrics struct {
	reg *prometheus.Registry

	running, waiting, kvUsage, gpuCacheUsage prometheus.Gauge

	prefixQueries, prefixHits   prometheus.Counter
	promptTokens, genTokens     prometheus.Counter
	preemptions                 prometheus.Counter
	success                     map[engine.FinishReason]prometheus.Counter
	ttft, itl, e2e, queue       prometheus.Observer
	prefill, decode, inference  prometheus.Observer
	promptHist, genHist         prometheus.Observer
	iterationTokens             prometheus.Observer
	kvBatchesDropped, kvBatches prometheus.Counter
	releaseFailures             prometheus.Counter
	tierHits                    [2]prometheus.Counter // CPU, disk
	tierBlocks                  [2]prometheus.Gauge

	// last engine counters, to turn cumulative stats into counter deltas;
	// touched only by the engine loop.
	lastQueries, lastHits, lastPreempt int64
	lastTierHits                       [2]int64

	// gen counts changes: every writer calls changed after its writes,
	// so a page rendered after reading gen holds at least those writes.
	gen  atomic.Uint64
	page struct {
		sync.Mutex
		gen    uint64
		format expfmt.Format
		body   []byte // never modified once rendered
	}
	prom http.Handler
}

// changed marks the metrics as changed since the last rendered page. Call
// it after the writes, before anyone is told of them (a client reading
// /metrics after its answer must find the answer counted).
func (m *metrics) changed() { m.gen.Add(1) }

// serveHTTP serves /metrics. The plain-text page, what routers and
// activators ask for, is rendered only when a value changed since the last
// one and sent in one write: an idle pod's page does not change, and with
// hundreds of pods read every 50 ms, gathering and encoding each time was
// most of an idle kn-llmd local's CPU. Other formats and compressed
// answers go through promhttp.
func (m *metrics) serveHTTP(w http.ResponseWriter, r *http.Request) {
	format := expfmt.Negotiate(r.Header)
	if r.Header.Get("Accept-Encoding") != "" || format.FormatType() != expfmt.TypeTextPlain {
		m.prom.ServeHTTP(w, r)
		return
	}
	body, err := m.text(format)
	if err != nil {
		m.prom.ServeHTTP(w, r) // which reports the error as promhttp does
		return
	}
	h := w.Header()
	h.Set("Content-Type", string(format))
	h.Set("Content-Length", strconv.Itoa(len(body)))
	_, _ = w.Write(body)
}

// text returns the text page, rendered again only if the metrics changed.
func (m *metrics) text(format expfmt.Format) ([]byte, error) {
	p := &m.page
	p.Lock()
	defer p.Unlock()
	g := m.gen.Load()
	if p.body != nil && p.gen == g && p.format == format {
		return p.body, nil
	}
	mfs, err := m.reg.Gather()
	if err != nil {
		return nil, err
	}
	var buf bytes.Buffer
	buf.Grow(len(p.body))
	enc := expfmt.NewEncoder(&buf, format)
	for _, mf := range mfs {
		if err := enc.Encode(mf); err != nil {
			return nil, err
		}
	}
	p.gen, p.format, p.body = g, format, buf.Bytes()
	return p.body, nil
}

func newMetrics(cfg *Config, numBlocks int, blockSize int) *metrics {
	reg := prometheus.NewRegistry()
	labels := []string{"model_name", "engine"}
	values := []string{cfg.ServedModelNames[0], "0"}
	m := &metrics{reg: reg, success: map[engine.FinishReason]prometheus.Counter{}}

	gauge := func(name, help string) prometheus.Gauge {
		g := prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: name, Help: help}, labels)
		reg.MustRegister(g)
		return g.WithLabelValues(values...)
	}
	counter := func(name, help string) prometheus.Counter {
		c := prometheus.NewCounterVec(prometheus.CounterOpts{Name: name, Help: help}, labels)
		reg.MustRegister(c)
		return c.WithLabelValues(values...)
	}
	histogram := func(name, help string, buckets []float64) prometheus.Observer {
		h := prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: name, Help: help, Buckets: buckets}, labels)
		reg.MustRegister(h)
		return h.WithLabelValues(values...)
	}

	m.running = gauge("vllm:num_requests_running", "Number of requests in model execution batches.")
	m.waiting = gauge("vllm:num_requests_waiting", "Number of requests waiting to be processed.")
	m.kvUsage = gauge("vllm:kv_cache_usage_perc", "KV-cache usage. 1 means 100 percent usage.")
	m.gpuCacheUsage = gauge("vllm:gpu_cache_usage_perc",
		"GPU KV-cache usage. 1 means 100 percent usage. DEPRECATED: Use vllm:kv_cache_usage_perc instead.")
	m.prefixQueries = counter("vllm:prefix_cache_queries_total", "Prefix cache queries, in terms of number of queried tokens.")
	m.prefixHits = counter("vllm:prefix_cache_hits_total", "Prefix cache hits, in terms of number of cached tokens.")
	m.preemptions = counter("vllm:num_preemptions_total", "Cumulative number of preemption from the engine.")
	m.promptTokens = counter("vllm:prompt_tokens_total", "Number of prefill tokens processed.")
	m.genTokens = counter("vllm:generation_tokens_total", "Number of generation tokens processed.")

	success := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "vllm:request_success_total", Help: "Count of successfully processed requests.",
	}, append(labels, "finished_reason"))
	reg.MustRegister(success)
	for _, r := range []engine.FinishReason{engine.FinishStop, engine.FinishLength, engine.FinishAbort} {
		m.success[r] = success.WithLabelValues(values[0], values[1], string(r))
	}

	maxLen := cfg.MaxModelLen
	if maxLen == 0 {
		maxLen = cfg.Profile.Model.MaxModelLen
	}
	m.promptHist = histogram("vllm:request_prompt_tokens", "Number of prefill tokens processed.", buckets125(maxLen))
	m.genHist = histogram("vllm:request_generation_tokens", "Number of generation tokens processed.", buckets125(maxLen))
	m.iterationTokens = histogram("vllm:iteration_tokens_total", "Histogram of number of tokens per engine_step.",
		[]float64{1, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384})
	m.ttft = histogram("vllm:time_to_first_token_seconds", "Histogram of time to first token in seconds.", ttftBuckets)
	m.itl = histogram("vllm:inter_token_latency_seconds", "Histogram of inter-token latency in seconds.", itlBuckets)
	m.e2e = histogram("vllm:e2e_request_latency_seconds", "Histogram of e2e request latency in seconds.", requestLatencyBuckets)
	m.queue = histogram("vllm:request_queue_time_seconds", "Histogram of time spent in WAITING phase for request.", requestLatencyBuckets)
	m.inference = histogram("vllm:request_inference_time_seconds", "Histogram of time spent in RUNNING phase for request.", requestLatencyBuckets)
	m.prefill = histogram("vllm:request_prefill_time_seconds", "Histogram of time spent in PREFILL phase for request.", requestLatencyBuckets)
	m.decode = histogram("vllm:request_decode_time_seconds", "Histogram of time spent in DECODE phase for request.", requestLatencyBuckets)

	// vLLM's info metric: a gauge fixed at 1 whose labels carry the cache
	// configuration (routers read block_size and num_gpu_blocks).
	info := prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Name: "vllm:cache_config_info", Help: "Information of the LLMEngine CacheConfig",
	}, []string{"block_size", "cache_dtype", "enable_prefix_caching", "engine", "gpu_memory_utilization",
		"num_cpu_blocks", "num_gpu_blocks", "prefix_caching_hash_algo"})
	reg.MustRegister(info)
	info.WithLabelValues(strconv.Itoa(blockSize), "auto", "True", "0",
		strconv.FormatFloat(cfg.Profile.GPUMemoryUtilization, 'g', -1, 64),
		"None", strconv.Itoa(numBlocks), "xxhash").Set(1)

	// The simulator's own health: KV-event batches published and dropped.
	kvBatches := prometheus.NewCounter(prometheus.CounterOpts{
		Name: "kn_llmd_sim_kv_event_batches_total", Help: "KV-event batches handed to the publisher.",
	})
	kvDropped := prometheus.NewCounter(prometheus.CounterOpts{
		Name: "kn_llmd_sim_kv_event_batches_dropped_total", Help: "KV-event batches dropped because the publisher queue was full.",
	})
	releaseFailures := prometheus.NewCounter(prometheus.CounterOpts{
		Name: "kn_llmd_sim_kv_release_failures_total", Help: "Failed calls telling a prefill engine to release pulled blocks.",
	})
	reg.MustRegister(kvBatches, kvDropped, releaseFailures)
	m.kvBatches, m.kvBatchesDropped, m.releaseFailures = kvBatches, kvDropped, releaseFailures
	// The engine's own KV tiers (CPU, disk) below the GPU cache.
	tierHits := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "kn_llmd_sim_kv_tier_hit_tokens_total", Help: "Prompt tokens loaded from a KV tier below the GPU cache instead of computed.",
	}, []string{"medium"})
	tierBlocks := prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Name: "kn_llmd_sim_kv_tier_blocks", Help: "KV blocks a tier below the GPU cache holds.",
	}, []string{"medium"})
	reg.MustRegister(tierHits, tierBlocks)
	for i, med := range []string{engine.MediumCPU, engine.MediumStorage} {
		m.tierHits[i], m.tierBlocks[i] = tierHits.WithLabelValues(med), tierBlocks.WithLabelValues(med)
	}
	m.prom = promhttp.HandlerFor(reg, promhttp.HandlerOpts{})
	return m
}

// observeStats updates the gauges and engine-derived counters from a stats
// snapshot. Only the engine loop calls it.
func (m *metrics) observeStats(st *engine.Stats) {
	m.running.Set(float64(st.Running))
	m.waiting.Set(float64(st.Waiting))
	m.kvUsage.Set(st.KVUsage)
	m.gpuCacheUsage.Set(st.KVUsage)
	if d := st.PrefixQueries - m.lastQueries; d > 0 {
		m.prefixQueries.Add(float64(d))
	}
	if d := st.PrefixHits - m.lastHits; d > 0 {
		m.prefixHits.Add(float64(d))
	}
	if d := st.Preemptions - m.lastPreempt; d > 0 {
		m.preemptions.Add(float64(d))
	}
	m.lastQueries, m.lastHits, m.lastPreempt = st.PrefixQueries, st.PrefixHits, st.Preemptions
	for i, v := range [2]int64{st.CPUTierHitTokens, st.DiskTierHitTokens} {
		if d := v - m.lastTierHits[i]; d > 0 {
			m.tierHits[i].Add(float64(d))
		}
		m.lastTierHits[i] = v
	}
	m.tierBlocks[0].Set(float64(st.CPUTierBlocks))
	m.tierBlocks[1].Set(float64(st.DiskTierBlocks))
}
