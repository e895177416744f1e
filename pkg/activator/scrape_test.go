package activator

import (
	"strings"
	"testing"
)

const vllmPage = `# HELP vllm:num_requests_running Number of requests in model execution batches.
# TYPE vllm:num_requests_running gauge
vllm:num_requests_running{engine="0",model_name="m"} 3.0
# HELP vllm:num_requests_waiting Number of requests waiting to be processed.
# TYPE vllm:num_requests_waiting gauge
vllm:num_requests_waiting{engine="0",model_name="m"} 7.0
# HELP vllm:kv_cache_usage_perc KV-cache usage. 1 means 100 percent usage.
# TYPE vllm:kv_cache_usage_perc gauge
vllm:kv_cache_usage_perc{engine="0",model_name="m"} 0.25
# TYPE vllm:prefix_cache_queries counter
vllm:prefix_cache_queries_total{engine="0",model_name="m"} 1000.0
# TYPE vllm:prefix_cache_hits counter
vllm:prefix_cache_hits_total{engine="0",model_name="m"} 640.0
# TYPE vllm:cache_config_info gauge
vllm:cache_config_info{block_size="16",cache_dtype="auto",engine="0",num_gpu_blocks="27000"} 1.0
`

func TestParseVLLMMetrics(t *testing.T) {
	m, err := ParseVLLMMetrics(strings.NewReader(vllmPage))
	if err != nil {
		t.Fatal(err)
	}
	want := PodMetrics{Waiting: 7, Running: 3, KVUsage: 0.25, BlockSize: 16, NumBlocks: 27000, PrefixQueries: 1000, PrefixHits: 640}
	if m != want {
		t.Fatalf("got %+v, want %+v", m, want)
	}
}

func TestParseVLLMMetricsRejectsOtherPages(t *testing.T) {
	for name, page := range map[string]string{
		"not prometheus": "<html>hello</html>",
		"not vllm":       "# TYPE up gauge\nup 1\n",
	} {
		if _, err := ParseVLLMMetrics(strings.NewReader(page)); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
}
