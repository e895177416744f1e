//go:build unix

package bench

import (
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"runtime"
	"syscall"
	"testing"
	"time"
)

// The driver must not be the bottleneck: one process drives at least 200
// concurrent streams at 2,000 chunks/s on one core. These benchmarks run the
// driver and a loopback SSE server in the same process with GOMAXPROCS=1,
// so the figures are for client and server together on one core — a lower
// bound for the client alone.
//
//	go test -run '^$' -bench Driver -benchtime 5x ./pkg/bench

const benchStreams = 200

// streamServer writes tokens chunks per request, one Write and Flush each,
// waiting gap between them (0: as fast as it can), then usage and [DONE].
func streamServer(tokens int, gap time.Duration) http.Handler {
	chunk := chunkBytes(0)
	usage := []byte(fmt.Sprintf("data: {\"id\":\"cmpl-0\",\"object\":\"text_completion\",\"created\":1,\"model\":\"m\",\"choices\":[],\"usage\":{\"prompt_tokens\":16,\"total_tokens\":%d,\"completion_tokens\":%d,\"prompt_tokens_details\":{\"cached_tokens\":0}}}\n\ndata: [DONE]\n\n", 16+tokens, tokens))
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		var discard [4096]byte
		for {
			if _, err := r.Body.Read(discard[:]); err != nil {
				break
			}
		}
		w.Header().Set("Content-Type", "text/event-stream")
		fl := w.(http.Flusher)
		next := time.Now()
		for i := range tokens {
			if gap > 0 && i > 0 {
				next = next.Add(gap)
				time.Sleep(time.Until(next))
			}
			w.Write(chunk)
			fl.Flush()
		}
		w.Write(usage)
		fl.Flush()
	})
}

func cpuTime() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// runStreams runs benchStreams requests of tokens each, all due at once,
// and returns their records after checking them.
func runStreams(b *testing.B, url string, tokens int) []Record {
	res, err := Run(context.Background(), Config{URL: url, Model: "m"}, requestsAt(16, tokens, make([]time.Duration, benchStreams)...))
	if err != nil {
		b.Fatal(err)
	}
	for _, r := range res.Records {
		if !r.OK() || r.Chunks != tokens || r.CompletionTokens != tokens {
			b.Fatalf("record %+v", r)
		}
	}
	return res.Records
}

// BenchmarkDriverStreams measures the most chunks per second one core
// sustains: 200 concurrent streams of 500 chunks from a server that writes
// as fast as it can.
func BenchmarkDriverStreams(b *testing.B) {
	defer runtime.GOMAXPROCS(runtime.GOMAXPROCS(1))
	const tokens = 500
	ts := httptest.NewServer(streamServer(tokens, 0))
	defer ts.Close()
	runStreams(b, ts.URL, tokens) // open the connections
	var chunks int64
	var wall, cpu time.Duration
	for b.Loop() {
		c0, t0 := cpuTime(), time.Now()
		runStreams(b, ts.URL, tokens)
		wall += time.Since(t0)
		cpu += cpuTime() - c0
		chunks += benchStreams * tokens
	}
	b.ReportMetric(float64(chunks)/wall.Seconds(), "chunks/s")
	b.ReportMetric(float64(cpu.Nanoseconds())/float64(chunks), "cpu-ns/chunk")
	b.ReportMetric(benchStreams, "streams")
}

// BenchmarkDriverPaced2000 drives the target load exactly: 200 streams of a
// chunk every 100 ms, 2,000 chunks/s in all, and reports how much of the
// core that takes and whether the measured gaps stay at 100 ms.
func BenchmarkDriverPaced2000(b *testing.B) {
	defer runtime.GOMAXPROCS(runtime.GOMAXPROCS(1))
	const tokens, gap = 20, 100 * time.Millisecond
	ts := httptest.NewServer(streamServer(tokens, gap))
	defer ts.Close()
	runStreams(b, ts.URL, tokens)
	var wall, cpu time.Duration
	var recs []Record
	for b.Loop() {
		c0, t0 := cpuTime(), time.Now()
		recs = append(recs, runStreams(b, ts.URL, tokens)...)
		wall += time.Since(t0)
		cpu += cpuTime() - c0
	}
	s := Summarize("paced", recs, SummaryOptions{})
	b.ReportMetric(float64(benchStreams*tokens)*float64(b.N)/wall.Seconds(), "chunks/s")
	b.ReportMetric(100*cpu.Seconds()/wall.Seconds(), "%core")
	b.ReportMetric(s.LatencySeconds.ITL.P50*1e3, "itl-p50-ms")
	b.ReportMetric(s.LatencySeconds.ITL.P99*1e3, "itl-p99-ms")
	b.ReportMetric(s.LatencySeconds.Lateness.Max*1e3, "late-max-ms")
}

// BenchmarkClassify is the per-chunk parsing cost.
func BenchmarkClassify(b *testing.B) {
	data := chunkBytes(0)
	data = data[len("data: ") : len(data)-2]
	for b.Loop() {
		if c := classify(data); !c.content {
			b.Fatal("no content")
		}
	}
}
