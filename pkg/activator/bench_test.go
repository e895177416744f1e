package activator

import (
	"bytes"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/llmd-kn/llmd-kn/pkg/apis"
	"github.com/llmd-kn/llmd-kn/pkg/router"
)

// benchBodies are the request bodies of the data-path benchmarks: what
// `kn-llmd bench` sends for completions (token ids), a long text prompt, a
// short chat turn.
func benchBodies() map[string][]byte {
	ids := longPrompt(32768, 3)
	var b strings.Builder
	b.WriteString(`{"model":"demo","prompt":[`)
	for i, id := range ids {
		if i > 0 {
			b.WriteByte(',')
		}
		b.WriteString(strconv.Itoa(int(id)))
	}
	b.WriteString(`],"max_tokens":128,"ignore_eos":true,"stream":true,"temperature":0.7}`)
	text := strings.Repeat("the quick brown fox jumps over a lazy dog while seven owls watch ", 2300)
	return map[string][]byte{
		"ids32k":    []byte(b.String()),
		"text30k":   []byte(`{"model":"demo","prompt":"` + text + `","max_tokens":128,"stream":false}`),
		"chatShort": []byte(`{"model":"demo","messages":[{"role":"system","content":"You are brief."},{"role":"user","content":"What is the capital of France?"}],"max_tokens":64,"stream":true}`),
	}
}

// BenchmarkParseRequest is the activator's work on a body before routing:
// parse the fields it needs, tokenize, and produce the bytes it forwards
// (a streamed request gains stream_options.include_usage). cpu-µs/op is
// the process's CPU time per op (GC included), which a busy shared machine
// disturbs less than ns/op.
func BenchmarkParseRequest(b *testing.B) {
	for _, name := range []string{"ids32k", "text30k", "chatShort"} {
		body := benchBodies()[name]
		kind := KindCompletion
		if strings.HasPrefix(name, "chat") {
			kind = KindChat
		}
		b.Run(name, func(b *testing.B) {
			var out []byte
			b.SetBytes(int64(len(body)))
			b.ReportAllocs()
			c0 := cpuNow()
			defer func() { b.ReportMetric(float64((cpuNow()-c0).Microseconds())/float64(b.N), "cpu-µs/op") }()
			for b.Loop() {
				req, err := ParseLLMRequest(kind, body)
				if err != nil {
					b.Fatal(err)
				}
				askUsage(req)
				out = req.AppendBody(out[:0])
			}
		})
	}
}

// cannedPod answers like a vLLM pod with fixed bytes: a metrics page, a
// JSON completion, or an SSE stream of events (each flushed, as vLLM does).
func cannedPod(events int) http.Handler {
	page := []byte(vllmPage)
	var stream bytes.Buffer
	for i := range events {
		fmt.Fprintf(&stream, "data: {\"id\":\"cmpl-1\",\"object\":\"text_completion\",\"created\":1,\"model\":\"demo\",\"choices\":[{\"index\":0,\"text\":\" tok%d\",\"logprobs\":null,\"finish_reason\":null}]}\n\n", i)
	}
	stream.WriteString("data: {\"id\":\"cmpl-1\",\"object\":\"text_completion\",\"created\":1,\"model\":\"demo\",\"choices\":[],\"usage\":{\"prompt_tokens\":20,\"total_tokens\":36,\"completion_tokens\":16,\"prompt_tokens_details\":{\"cached_tokens\":0}}}\n\ndata: [DONE]\n\n")
	events16 := stream.Bytes()
	whole := []byte(`{"id":"cmpl-1","object":"text_completion","created":1,"model":"demo","choices":[{"index":0,"text":" a b c d e f g h i j k l m n o p","logprobs":null,"finish_reason":"length"}],"usage":{"prompt_tokens":20,"total_tokens":36,"completion_tokens":16,"prompt_tokens_details":{"cached_tokens":0}}}`)
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/metrics" {
			_, _ = w.Write(page)
			return
		}
		body, _ := io.ReadAll(r.Body)
		if !bytes.Contains(body, []byte(`"stream":true`)) {
			w.Header().Set("Content-Type", "application/json")
			_, _ = w.Write(whole)
			return
		}
		w.Header().Set("Content-Type", "text/event-stream")
		f := w.(http.Flusher)
		rest := events16
		for len(rest) > 0 {
			i := bytes.Index(rest, []byte("\n\n")) + 2
			_, _ = w.Write(rest[:i])
			f.Flush()
			rest = rest[i:]
		}
	})
}

func cpuNow() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// BenchmarkProxyCPU runs the same requests three ways, interleaved in
// batches: straight to a canned pod, through a bare httputil.ReverseProxy,
// and through the activator. The client and the pod run in this process
// too, so the direct run's CPU is subtracted: what remains is each proxy's
// own CPU per request (a forced GC at the end of each batch charges each
// its garbage). act/bare is the ratio the goal is about.
func BenchmarkProxyCPU(b *testing.B) {
	bodies := benchBodies()
	short := []byte(`{"model":"demo","prompt":"Say hello to the world in a few words.","max_tokens":16,"stream":false}`)
	shortStream := []byte(`{"model":"demo","prompt":"Say hello to the world in a few words.","max_tokens":16,"stream":true}`)
	cases := []struct {
		name string
		body []byte
	}{{"short", short}, {"shortStream", shortStream}, {"ids32kStream", bodies["ids32k"]}}
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
	client := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 4, DisableCompression: true}}
	targets := []string{pod.URL, bare.URL, front.URL}
	for _, c := range cases {
		b.Run(c.name, func(b *testing.B) {
			const batch = 40
			do := func(base string) {
				resp, err := client.Post(base+"/v1/completions", "application/json", bytes.NewReader(c.body))
				if err != nil {
					b.Fatal(err)
				}
				_, _ = io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				if resp.StatusCode != 200 {
					b.Fatalf("%s: status %d", base, resp.StatusCode)
				}
			}
			for _, t := range targets { // warm connections and pools
				for range 5 {
					do(t)
				}
			}
			var cpu [3]time.Duration
			n := 0
			for b.Loop() {
				for i, t := range targets {
					runtime.GC()
					c0 := cpuNow()
					for range batch {
						do(t)
					}
					runtime.GC()
					cpu[i] += cpuNow() - c0
				}
				n += batch
			}
			per := func(d time.Duration) float64 { return float64(d.Microseconds()) / float64(n) }
			direct, viaBare, viaAct := per(cpu[0]), per(cpu[1]), per(cpu[2])
			b.ReportMetric(direct, "direct-µs/req")
			b.ReportMetric(viaBare-direct, "bare-µs/req")
			b.ReportMetric(viaAct-direct, "act-µs/req")
			b.ReportMetric((viaAct-direct)/(viaBare-direct), "act/bare")
		})
	}
}
