package vllmsim_test

import (
	"bufio"
	"bytes"
	"fmt"
	"net/http"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/llmd-kn/llmd-kn/pkg/vllmsim"
)

// BenchmarkStreamChunks measures streamed SSE chunks per second through a
// loopback server at time scale 0.1 (the target: at least 2,000 on
// one core; run with GOMAXPROCS=1, `go test -run '^$' -bench StreamChunks
// -cpu 1 ./pkg/vllmsim`). The clients run in the same process and share the
// core, so the figure is a lower bound for the server alone. One op is one
// chunk.
func BenchmarkStreamChunks(b *testing.B) {
	for _, streams := range []int{16, 64, 256} {
		b.Run(fmt.Sprintf("streams=%d", streams), func(b *testing.B) {
			benchmarkStreams(b, streams)
		})
	}
}

func benchmarkStreams(b *testing.B, streams int) {
	s := startSim(b, vllmsim.Config{TimeScale: 0.1})
	client := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: streams, MaxConnsPerHost: streams}}
	body := []byte(`{"model":"demo","prompt":"` + longText(200, "bench") + `","max_tokens":128,"ignore_eos":true,"stream":true}`)
	var chunks atomic.Int64
	target := int64(b.N)
	var wg sync.WaitGroup
	errs := make(chan error, streams)
	b.ResetTimer()
	start := time.Now()
	cpu0 := cpuTime()
	for range streams {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for chunks.Load() < target {
				resp, err := client.Post(s.url+"/v1/completions", "application/json", bytes.NewReader(body))
				if err != nil {
					errs <- err
					return
				}
				sc := bufio.NewScanner(resp.Body)
				for sc.Scan() {
					line := sc.Bytes()
					if bytes.HasPrefix(line, []byte("data: {")) {
						chunks.Add(1)
					}
				}
				resp.Body.Close()
				if resp.StatusCode != 200 {
					errs <- fmt.Errorf("status %d", resp.StatusCode)
					return
				}
			}
		}()
	}
	wg.Wait()
	elapsed := time.Since(start)
	cpu := cpuTime() - cpu0
	b.StopTimer()
	close(errs)
	for err := range errs {
		b.Fatal(err)
	}
	n := float64(chunks.Load())
	b.ReportMetric(n/elapsed.Seconds(), "chunks/s")
	// CPU time (server and clients together) per chunk: robust against
	// other processes competing for the core.
	b.ReportMetric(cpu.Seconds()*1e6/n, "cpu-µs/chunk")
	client.CloseIdleConnections()
}

// BenchmarkDecodeCompletion32kIDs decodes what `kn-llmd bench` sends for a
// 32k-token completion: a prompt of token ids (about 190 KB).
func BenchmarkDecodeCompletion32kIDs(b *testing.B) {
	var body bytes.Buffer
	body.WriteString(`{"model":"demo","prompt":[`)
	for i := range 32768 {
		if i > 0 {
			body.WriteByte(',')
		}
		fmt.Fprintf(&body, "%d", (i*7919)%128000)
	}
	body.WriteString(`],"max_tokens":128,"ignore_eos":true,"stream":true,"stream_options":{"include_usage":true}}`)
	raw := body.Bytes()
	b.SetBytes(int64(len(raw)))
	b.ReportAllocs()
	c0 := cpuTime()
	for b.Loop() {
		r, err := vllmsim.DecodeCompletionRequest(raw)
		if err != nil || len(r.PromptTokens) != 32768 {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64((cpuTime()-c0).Microseconds())/float64(b.N), "cpu-µs/op")
}
