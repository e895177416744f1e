package activator

import (
	"bytes"
	"io"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/llmd-kn/llmd-kn/pkg/apis"
	"github.com/llmd-kn/llmd-kn/pkg/router"
)

// BenchmarkAddedLatency sends short non-streamed requests open-loop at 500
// req/s straight to a canned pod, through a bare httputil.ReverseProxy and
// through the activator, in interleaved rounds of 0.5 s (one round per
// target per iteration), and reports each path's p50 and p99 latency and
// the activator's over the bare proxy's. Wall-clock figures: on a shared
// machine, compare them within one run only.
func BenchmarkAddedLatency(b *testing.B) {
	const rate, round = 500, 250 // requests per second, per round
	body := []byte(`{"model":"demo","prompt":"Say hello to the world in a few words.","max_tokens":16,"stream":false}`)
	pod := httptest.NewServer(idleCannedPod(16))
	defer pod.Close()
	u, _ := url.Parse(pod.URL)
	bare := httptest.NewServer(&httputil.ReverseProxy{Rewrite: func(pr *httputil.ProxyRequest) { pr.SetURL(u) }, FlushInterval: -1})
	defer bare.Close()
	act, err := New(Options{})
	if err != nil {
		b.Fatal(err)
	}
	defer act.Close()
	key := RevisionKey{Namespace: "default", Name: "llm-00001"}
	if err := act.UpsertRevision(RevisionConfig{Key: key, Service: "llm", Models: []string{"demo"}, Spec: apis.Spec{RoutingProfile: "default"}}); err != nil {
		b.Fatal(err)
	}
	if err := act.SetPods(key, []PodSpec{{Name: "p0", URL: pod.URL, Role: router.RoleBoth}}); err != nil {
		b.Fatal(err)
	}
	front := httptest.NewServer(act.Handler())
	defer front.Close()
	for deadline := time.Now().Add(5 * time.Second); act.Stats()[0].ReadyPods != 1; time.Sleep(5 * time.Millisecond) {
		if time.Now().After(deadline) {
			b.Fatal("pod never ready")
		}
	}
	client := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 64, DisableCompression: true}}
	targets := []string{pod.URL, bare.URL, front.URL}
	do := func(base string) time.Duration {
		t0 := time.Now()
		resp, err := client.Post(base+"/v1/completions", "application/json", bytes.NewReader(body))
		if err != nil {
			b.Error(err)
			return 0
		}
		_, _ = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 200 {
			b.Errorf("%s: status %d", base, resp.StatusCode)
		}
		return time.Since(t0)
	}
	for _, t := range targets { // warm connections and pools
		for range 20 {
			do(t)
		}
	}
	lat := make([][]time.Duration, len(targets))
	for b.Loop() {
		for i, t := range targets {
			var mu sync.Mutex
			var wg sync.WaitGroup
			start := time.Now()
			for k := range round {
				time.Sleep(time.Until(start.Add(time.Duration(k) * time.Second / rate)))
				wg.Go(func() {
					d := do(t)
					mu.Lock()
					lat[i] = append(lat[i], d)
					mu.Unlock()
				})
			}
			wg.Wait()
		}
	}
	pct := func(ds []time.Duration, p float64) float64 {
		s := slices.Clone(ds)
		slices.Sort(s)
		return float64(s[int(p*float64(len(s)-1))].Microseconds()) / 1e3
	}
	for i, name := range []string{"direct", "bare", "act"} {
		b.ReportMetric(pct(lat[i], 0.5), name+"-p50-ms")
		b.ReportMetric(pct(lat[i], 0.99), name+"-p99-ms")
	}
	b.ReportMetric(pct(lat[2], 0.5)-pct(lat[1], 0.5), "act-bare-p50-ms")
	b.ReportMetric(pct(lat[2], 0.99)-pct(lat[1], 0.99), "act-bare-p99-ms")
}

// idleCannedPod is cannedPod with an idle pod's metrics page (nothing
// waiting), for benchmarks that read it every 50 ms (the default) so that
// admission sees room: they measure the proxy path, not admission.
func idleCannedPod(events int) http.Handler {
	page := strings.Replace(vllmPage, `vllm:num_requests_waiting{engine="0",model_name="m"} 7.0`,
		`vllm:num_requests_waiting{engine="0",model_name="m"} 0.0`, 1)
	canned := cannedPod(events)
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/metrics" {
			_, _ = io.WriteString(w, page)
			return
		}
		canned.ServeHTTP(w, r)
	})
}
