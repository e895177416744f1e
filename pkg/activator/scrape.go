package activator

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"sync"
	"time"
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

// ParseVLLMMetrics reads vLLM's Prometheus text exposition as it streams
// in, line by line, looking only at the few series the router needs and
// skipping the rest (histograms, per-request counters) without parsing
// them. Series of the same metric (several engines, models or label sets)
// are summed; the cache configuration comes from vllm:cache_config_info's
// labels. Older vLLM's vllm:gpu_cache_usage_perc is accepted for KV usage.
func ParseVLLMMetrics(r io.Reader) (PodMetrics, error) {
	br := readers.Get().(*bufio.Reader)
	br.Reset(io.LimitReader(r, 8<<20))
	defer func() { br.Reset(nil); readers.Put(br) }()
	var (
		m                 PodMetrics
		okR, okW          bool
		kvSum, gpuSum     float64
		kvN, gpuN, lineNo int
	)
	for {
		line, err := br.ReadSlice('\n')
		if err == bufio.ErrBufferFull {
			// A line longer than the buffer: no series we read is.
			for err == bufio.ErrBufferFull {
				_, err = br.ReadSlice('\n')
			}
			continue
		}
		lineNo++
		if len(line) > 5 && string(line[:5]) == "vllm:" && wanted(line) {
			name, labels, v, perr := parseSample(line)
			if perr != nil {
				return PodMetrics{}, fmt.Errorf("parse metrics: line %d: %w", lineNo, perr)
			}
			switch string(name) { // compared, not allocated
			case "vllm:num_requests_running":
				m.Running += int(v)
				okR = true
			case "vllm:num_requests_waiting":
				m.Waiting += int(v)
				okW = true
			case "vllm:kv_cache_usage_perc":
				kvSum += v
				kvN++
			case "vllm:gpu_cache_usage_perc":
				gpuSum += v
				gpuN++
			case "vllm:prefix_cache_queries_total":
				m.PrefixQueries += v
			case "vllm:prefix_cache_hits_total":
				m.PrefixHits += v
			case "vllm:cache_config_info":
				if s, ok := labelValue(labels, "block_size"); ok {
					m.BlockSize, _ = strconv.Atoi(s)
				}
				if s, ok := labelValue(labels, "num_gpu_blocks"); ok {
					n, _ := strconv.Atoi(s)
					m.NumBlocks += n
				}
			}
		}
		if err == io.EOF {
			break
		}
		if err != nil {
			return PodMetrics{}, fmt.Errorf("parse metrics: %w", err)
		}
	}
	if !okR || !okW {
		return PodMetrics{}, fmt.Errorf("not a vLLM metrics page: vllm:num_requests_running or vllm:num_requests_waiting missing")
	}
	switch {
	case kvN > 0:
		m.KVUsage = kvSum / float64(kvN)
	case gpuN > 0:
		m.KVUsage = gpuSum / float64(gpuN)
	}
	return m, nil
}

// wanted reports whether a sample line is of a series the router reads,
// before anything else of it is parsed.
func wanted(line []byte) bool {
	// Most lines are histogram buckets (vllm:request_..., vllm:time_...,
	// vllm:e2e_..., vllm:inter_..., vllm:iteration_...): one byte tells.
	if len(line) < 6 {
		return false
	}
	switch line[5] {
	case 'n', 'k', 'g', 'p', 'c':
	default:
		return false
	}
	i := 0
	for i < len(line) && line[i] != '{' && line[i] != ' ' && line[i] != '\t' {
		i++
	}
	if i == len(line) {
		return false
	}
	switch string(line[:i]) {
	case "vllm:num_requests_running", "vllm:num_requests_waiting", "vllm:kv_cache_usage_perc",
		"vllm:gpu_cache_usage_perc", "vllm:prefix_cache_queries_total", "vllm:prefix_cache_hits_total",
		"vllm:cache_config_info":
		return true
	}
	return false
}

var readers = sync.Pool{New: func() any { return bufio.NewReaderSize(nil, 8<<10) }}

// parseSample splits a sample line `name{labels} value [timestamp]`.
func parseSample(line []byte) (name, labels []byte, v float64, err error) {
	i := 0
	for i < len(line) && line[i] != '{' && line[i] != ' ' && line[i] != '\t' {
		i++
	}
	name = line[:i]
	rest := line[i:]
	if len(rest) > 0 && rest[0] == '{' {
		j, inQuote := 1, false
		for ; j < len(rest); j++ {
			c := rest[j]
			if inQuote {
				if c == '\\' {
					j++
				} else if c == '"' {
					inQuote = false
				}
				continue
			}
			if c == '"' {
				inQuote = true
			} else if c == '}' {
				break
			}
		}
		if j >= len(rest) {
			return name, nil, 0, errors.New("unterminated label set")
		}
		labels, rest = rest[1:j], rest[j+1:]
	}
	rest = bytes.TrimLeft(rest, " \t")
	if k := bytes.IndexAny(rest, " \t\r\n"); k >= 0 {
		rest = rest[:k]
	}
	v, err = strconv.ParseFloat(string(rest), 64)
	if err != nil {
		return name, labels, 0, fmt.Errorf("%s: bad value %q", name, rest)
	}
	return name, labels, v, nil
}

// labelValue returns a label's value from a label set `a="x",b="y"`.
func labelValue(labels []byte, key string) (string, bool) {
	for len(labels) > 0 {
		eq := bytes.IndexByte(labels, '=')
		if eq < 0 || eq+1 >= len(labels) || labels[eq+1] != '"' {
			return "", false
		}
		k := string(bytes.TrimSpace(labels[:eq]))
		j := eq + 2
		for ; j < len(labels) && labels[j] != '"'; j++ {
			if labels[j] == '\\' {
				j++
			}
		}
		if j >= len(labels) {
			return "", false
		}
		if k == key {
			return string(labels[eq+2 : j]), true
		}
		labels = bytes.TrimLeft(labels[j+1:], ", ")
	}
	return "", false
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

// NewScrapeClient is the metrics reader's HTTP client: no compression (a
// pod's page crosses a loopback or in-cluster link, where gzip costs more
// CPU than it saves), and a kept-alive connection per pod however many
// pods there are.
func NewScrapeClient() *http.Client {
	tr := &http.Transport{
		Proxy:               nil,
		DialContext:         (&net.Dialer{Timeout: scrapeTimeout, KeepAlive: 30 * time.Second}).DialContext,
		MaxIdleConns:        0, // no global bound: one idle connection per pod
		MaxIdleConnsPerHost: 2,
		IdleConnTimeout:     90 * time.Second,
		DisableCompression:  true,
		// A vLLM page is 20-60 KB: read it in a syscall or two, not 4 KB
		// at a time.
		ReadBufferSize: 32 << 10,
	}
	return &http.Client{Transport: tr, Timeout: scrapeTimeout}
}
