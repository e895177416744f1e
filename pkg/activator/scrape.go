package activator

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
)

// PodMetrics is what the activator reads from a vLLM pod's /metrics.
type PodMetrics struct {
	Waiting   int
	Running   int
	KVUsage   float64 // 0..1
	BlockSize int
	NumBlocks int
	// PrefixQueries and PrefixHits are vLLM's token counters.
	PrefixQueries float64
	PrefixHits    float64
}

// ParseVLLMMetrics reads vLLM's Prometheus text exposition. Series of the
// same metric (several engines, models or label sets) are summed; the
// cache configuration comes from vllm:cache_config_info's labels. Older
// vLLM's vllm:gpu_cache_usage_perc is accepted for KV usage.
func ParseVLLMMetrics(r io.Reader) (PodMetrics, error) {
	p := expfmt.NewTextParser(model.LegacyValidation)
	fams, err := p.TextToMetricFamilies(io.LimitReader(r, 8<<20))
	if err != nil {
		return PodMetrics{}, fmt.Errorf("parse metrics: %w", err)
	}
	var m PodMetrics
	sum := func(name string) (float64, bool) {
		f, ok := fams[name]
		if !ok {
			return 0, false
		}
		var s float64
		for _, x := range f.GetMetric() {
			s += value(f.GetType(), x)
		}
		return s, true
	}
	running, okR := sum("vllm:num_requests_running")
	waiting, okW := sum("vllm:num_requests_waiting")
	if !okR || !okW {
		return PodMetrics{}, fmt.Errorf("not a vLLM metrics page: vllm:num_requests_running or vllm:num_requests_waiting missing")
	}
	m.Running, m.Waiting = int(running), int(waiting)
	if f, ok := fams["vllm:kv_cache_usage_perc"]; ok && len(f.GetMetric()) > 0 {
		m.KVUsage = meanValue(f)
	} else if f, ok := fams["vllm:gpu_cache_usage_perc"]; ok && len(f.GetMetric()) > 0 {
		m.KVUsage = meanValue(f)
	}
	m.PrefixQueries, _ = sum("vllm:prefix_cache_queries_total")
	m.PrefixHits, _ = sum("vllm:prefix_cache_hits_total")
	if f, ok := fams["vllm:cache_config_info"]; ok {
		for _, x := range f.GetMetric() {
			for _, l := range x.GetLabel() {
				switch l.GetName() {
				case "block_size":
					m.BlockSize, _ = strconv.Atoi(l.GetValue())
				case "num_gpu_blocks":
					n, _ := strconv.Atoi(l.GetValue())
					m.NumBlocks += n
				}
			}
		}
	}
	return m, nil
}

func meanValue(f *dto.MetricFamily) float64 {
	var s float64
	for _, x := range f.GetMetric() {
		s += value(f.GetType(), x)
	}
	return s / float64(len(f.GetMetric()))
}

func value(t dto.MetricType, m *dto.Metric) float64 {
	switch t {
	case dto.MetricType_COUNTER:
		return m.GetCounter().GetValue()
	case dto.MetricType_GAUGE:
		return m.GetGauge().GetValue()
	case dto.MetricType_UNTYPED:
		return m.GetUntyped().GetValue()
	}
	return 0
}

// Scrape fetches and parses one pod's /metrics.
func Scrape(ctx context.Context, c *http.Client, base string) (PodMetrics, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, base+"/metrics", nil)
	if err != nil {
		return PodMetrics{}, err
	}
	resp, err := c.Do(req)
	if err != nil {
		return PodMetrics{}, fmt.Errorf("scrape %s: %w", base, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return PodMetrics{}, fmt.Errorf("scrape %s: status %d", base, resp.StatusCode)
	}
	m, err := ParseVLLMMetrics(resp.Body)
	if err != nil {
		return PodMetrics{}, fmt.Errorf("scrape %s: %w", base, err)
	}
	return m, nil
}

// scrapeTimeout bounds one scrape; a slower pod is treated as stale.
const scrapeTimeout = 2 * time.Second
