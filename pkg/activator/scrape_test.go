package activator

import (
	"fmt"
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

// bigVLLMPage is vllmPage padded to the size of a real vLLM page (about
// 24 KB) with the histograms the router does not read.
func bigVLLMPage() string {
	var b strings.Builder
	b.WriteString(vllmPage)
	for _, h := range []string{"time_to_first_token_seconds", "inter_token_latency_seconds", "e2e_request_latency_seconds", "request_queue_time_seconds", "request_prefill_time_seconds", "request_decode_time_seconds"} {
		fmt.Fprintf(&b, "# HELP vllm:%s Histogram of %s.\n# TYPE vllm:%s histogram\n", h, h, h)
		for _, le := range []string{"0.001", "0.005", "0.01", "0.02", "0.04", "0.06", "0.08", "0.1", "0.25", "0.5", "0.75", "1.0", "2.5", "5.0", "7.5", "10.0", "20.0", "40.0", "80.0", "160.0", "640.0", "2560.0", "+Inf"} {
			fmt.Fprintf(&b, "vllm:%s_bucket{engine=\"0\",le=\"%s\",model_name=\"meta-llama/Llama-3.1-8B-Instruct\"} 1234.0\n", h, le)
		}
		fmt.Fprintf(&b, "vllm:%s_count{engine=\"0\",model_name=\"meta-llama/Llama-3.1-8B-Instruct\"} 1234.0\nvllm:%s_sum{engine=\"0\",model_name=\"meta-llama/Llama-3.1-8B-Instruct\"} 567.8\n", h, h)
	}
	return b.String()
}

func TestParseVLLMMetricsReadsOnlyItsSeries(t *testing.T) {
	page := bigVLLMPage() + `vllm:num_requests_running{engine="1",model_name="m"} 2
vllm:kv_cache_usage_perc{engine="1",model_name="m"} 0.75 1700000000000
vllm:cache_config_info{block_size="16",cache_dtype="a\"}b",engine="1",num_gpu_blocks="1000"} 1.0
`
	m, err := ParseVLLMMetrics(strings.NewReader(page))
	if err != nil {
		t.Fatal(err)
	}
	want := PodMetrics{Waiting: 7, Running: 5, KVUsage: 0.5, BlockSize: 16, NumBlocks: 28000, PrefixQueries: 1000, PrefixHits: 640}
	if m != want {
		t.Fatalf("got %+v, want %+v", m, want)
	}
	if _, err := ParseVLLMMetrics(strings.NewReader("vllm:num_requests_running{a=\"1\" 3\n")); err == nil {
		t.Fatal("a broken label set was accepted")
	}
}

func FuzzParseVLLMMetrics(f *testing.F) {
	f.Add(vllmPage)
	f.Add("vllm:cache_config_info{block_size=\"16\\\"\",num_gpu_blocks=\"x\"} 1\n")
	f.Fuzz(func(t *testing.T, page string) {
		_, _ = ParseVLLMMetrics(strings.NewReader(page))
	})
}

// BenchmarkParseVLLMMetrics reads a 24 KB vLLM page.
func BenchmarkParseVLLMMetrics(b *testing.B) {
	page := bigVLLMPage()
	b.SetBytes(int64(len(page)))
	b.ReportAllocs()
	for b.Loop() {
		if _, err := ParseVLLMMetrics(strings.NewReader(page)); err != nil {
			b.Fatal(err)
		}
	}
}
