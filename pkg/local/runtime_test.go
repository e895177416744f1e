package local

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"

	llmdtest "github.com/llmd-kn/llmd-kn/internal/testutil"
	"github.com/llmd-kn/llmd-kn/pkg/activator"
)

// The test binary doubles as a pod for the process path: with
// LOCAL_TEST_POD set it serves /health and vLLM-style /metrics on $PORT,
// starts a child process in its own process group, and records both pids.
func TestMain(m *testing.M) {
	if dir := os.Getenv("LOCAL_TEST_POD"); dir != "" {
		fakePod(dir)
		return
	}
	if os.Getenv("LOCAL_TEST_SIMPOD") != "" {
		simPod()
		return
	}
	if dir := os.Getenv("LOCAL_TEST_RUNTIME"); dir != "" {
		fakeRuntime(dir)
		return
	}
	os.Exit(m.Run())
}

func fakePod(dir string) {
	name := os.Getenv("POD_NAME")
	if os.Getenv("FAKE_POD_FAIL") != "" {
		fmt.Println("boom: cannot load the model")
		os.Exit(3)
	}
	child := exec.Command("sleep", "300")
	if err := child.Start(); err != nil {
		fmt.Println("child:", err)
		os.Exit(1)
	}
	_ = os.WriteFile(filepath.Join(dir, name+".pids"), fmt.Appendf(nil, "%d %d", os.Getpid(), child.Process.Pid), 0o644)
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGTERM)
	go func() {
		<-sigs
		fmt.Println("got SIGTERM")
		if os.Getenv("FAKE_POD_IGNORE_TERM") == "" {
			os.Exit(0)
		}
	}()
	mux := http.NewServeMux()
	mux.HandleFunc("GET /health", func(http.ResponseWriter, *http.Request) {})
	mux.HandleFunc("GET /metrics", func(w http.ResponseWriter, _ *http.Request) {
		io.WriteString(w, "vllm:num_requests_running 0\nvllm:num_requests_waiting 0\nvllm:kv_cache_usage_perc 0.25\n")
	})
	fmt.Println("serving on", os.Getenv("PORT"), "args:", strings.Join(os.Args[1:], " "))
	_ = http.ListenAndServe("127.0.0.1:"+os.Getenv("PORT"), mux)
}

const testService = `apiVersion: serving.knative.dev/v1
kind: Service
metadata:
  name: NAME
spec:
  template:
    metadata:
      annotations:
        ANNOTATIONS
    spec:
      containers:
      - image: vllm/vllm-openai:v0.11.0
        args: ["--model", "demo", "--max-model-len", "8192"]
`

func svcYAML(name, annotations string) string {
	return strings.NewReplacer("NAME", name, "ANNOTATIONS", annotations).Replace(testService)
}

func newRuntime(t *testing.T, yaml string, mod func(*Options)) *Runtime {
	t.Helper()
	svcs, err := Parse("test.yaml", []byte(yaml), DefaultVocabulary())
	if err != nil {
		t.Fatal(err)
	}
	opts := Options{Services: svcs, Addr: "127.0.0.1:0", MetricsAddr: "127.0.0.1:0", SimTimeScale: 0.02,
		GracePeriod: 2 * time.Second, DrainTimeout: 5 * time.Second, PodOutput: io.Discard, Logger: testLogger()}
	if mod != nil {
		mod(&opts)
	}
	rt, err := New(opts)
	if err != nil {
		t.Fatal(err)
	}
	rt.scaler.backoffBase = 10 * time.Millisecond
	if err := rt.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(rt.Close)
	return rt
}

func waitReady(t *testing.T, rt *Runtime) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	if err := rt.WaitReady(ctx); err != nil {
		t.Fatal(err)
	}
}

func complete(t *testing.T, base, host, model, prompt string, maxTokens int) (int, string) {
	t.Helper()
	body := fmt.Sprintf(`{"model":%q,"prompt":%q,"max_tokens":%d,"ignore_eos":true}`, model, prompt, maxTokens)
	req, _ := http.NewRequest(http.MethodPost, base+"/v1/completions", strings.NewReader(body))
	req.Header.Set("Content-Type", "application/json")
	if host != "" {
		req.Host = host
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	raw, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(raw)
}

func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func getJSON(t *testing.T, url string, v any) {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET %s: %s", url, resp.Status)
	}
	if err := json.NewDecoder(resp.Body).Decode(v); err != nil {
		t.Fatal(err)
	}
}

func metricsURL(rt *Runtime) string { return strings.TrimSuffix(rt.StatusURL(), "/") }

// TestScaleToZeroBuffersRequests: a revision at zero (min-scale "0")
// starts with no pod; a request waits in the activator, whose poke scales
// the revision up, and succeeds once the pod has loaded. Scaling to zero by
// hand (POST /scale) and back works the same way.
func TestScaleToZeroBuffersRequests(t *testing.T) {
	// A 10 s simulated model load at time scale 0.02: 200 ms of wall time.
	rt := newRuntime(t, svcYAML("llm", `autoscaling.knative.dev/min-scale: "0"`), func(o *Options) {
		o.SimStartupDelay = 10 * time.Second
	})
	key := rt.Services()[0].Key()
	waitReady(t, rt) // nothing to wait for at zero
	if rep, _ := rt.Scaler().Replicas(key, RoleDecode); rep != (Replicas{}) {
		t.Fatalf("at start: %+v, want zero", rep)
	}
	for round := range 2 {
		start := time.Now()
		code, body := complete(t, rt.APIURL(), "llm.default.localhost", "demo", "Hello from zero", 4)
		waited := time.Since(start)
		if code != http.StatusOK {
			t.Fatalf("round %d: %d %s", round, code, body)
		}
		if waited < 150*time.Millisecond {
			t.Fatalf("round %d: answered in %v, before a pod could have loaded", round, waited)
		}
		rep, _ := rt.Scaler().Replicas(key, RoleDecode)
		if rep.Desired != 1 || rep.Ready != 1 {
			t.Fatalf("round %d: after the request %+v", round, rep)
		}
		// Scale to zero through the status server's /scale.
		resp, err := http.Post(metricsURL(rt)+"/scale", "application/json", strings.NewReader(`{"service":"llm","replicas":0}`))
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			t.Fatalf("POST /scale: %s", resp.Status)
		}
		eventually(t, "scale to zero", func() bool {
			rep, _ := rt.Scaler().Replicas(key, RoleDecode)
			st := rt.act.Stats()
			return rep.Current == 0 && len(rt.scaler.podsOf(key)[RoleDecode]) == 0 && st[0].Pods == 0
		})
	}
	if got := testutil.ToFloat64(rt.scaler.desiredG.WithLabelValues(key.String(), "decode")); got != 0 {
		t.Fatalf("desired gauge %v", got)
	}
}

func TestScalerScalesRolesUpAndDown(t *testing.T) {
	// Scaled by hand: the decider of its (defaulted) slo.autoscaling.llm-d.ai
	// class is off.
	rt := newRuntime(t, svcYAML("pd", "llm-d.ai/disaggregation: prefill-decode"), func(o *Options) { o.Autoscale.Disabled = true })
	waitReady(t, rt)
	key := rt.Services()[0].Key()
	sc := rt.Scaler()
	ctx := context.Background()
	if err := sc.Scale(ctx, key, RoleDecode, 3); err != nil {
		t.Fatal(err)
	}
	if err := sc.Scale(ctx, key, RolePrefill, 2); err != nil {
		t.Fatal(err)
	}
	waitReady(t, rt)
	for role, want := range map[Role]int{RoleDecode: 3, RolePrefill: 2} {
		if rep, _ := sc.Replicas(key, role); rep != (Replicas{Desired: want, Current: want, Ready: want}) {
			t.Fatalf("%s: %+v", role, rep)
		}
	}
	if st := rt.act.Stats()[0]; st.ReadyPods != 5 {
		t.Fatalf("activator sees %d ready pods", st.ReadyPods)
	}
	if err := sc.Scale(ctx, key, RoleDecode, 1); err != nil {
		t.Fatal(err)
	}
	eventually(t, "scale down", func() bool {
		return len(rt.scaler.podsOf(key)[RoleDecode]) == 1 && rt.act.Stats()[0].Pods == 3
	})
	// The oldest pod stays.
	if p := rt.scaler.podsOf(key)[RoleDecode][0]; p.Name != "pd-00001-decode-1" {
		t.Fatalf("kept %s", p.Name)
	}
	if code, body := complete(t, rt.APIURL(), "", "demo", strings.Repeat("a long shared prompt ", 200), 2); code != 200 {
		t.Fatalf("%d %s", code, body)
	}

	for _, tc := range []struct {
		key  activator.RevisionKey
		role Role
		n    int
		want string
	}{
		{key, RoleDecode, -1, "between 0 and"},
		{key, RoleDecode, MaxLocalReplicas + 1, "between 0 and"},
		{key, "router", 1, "unknown role"},
		{activator.RevisionKey{Namespace: "default", Name: "nope-00001"}, RoleDecode, 1, "unknown revision"},
	} {
		if err := sc.Scale(ctx, tc.key, tc.role, tc.n); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("Scale(%s, %s, %d) = %v, want %q", tc.key, tc.role, tc.n, err, tc.want)
		}
	}
	single := newRuntime(t, svcYAML("one", "{}"), nil)
	if err := single.Scaler().Scale(ctx, single.Services()[0].Key(), RolePrefill, 1); err == nil || !strings.Contains(err.Error(), "not disaggregated") {
		t.Errorf("prefill on a single-role revision: %v", err)
	}
}

func TestHostTagAndModelRouting(t *testing.T) {
	yaml := svcYAML("a", "{}") + "  traffic:\n  - latestRevision: true\n    percent: 100\n  - latestRevision: true\n    tag: critical\n---\n" +
		strings.Replace(svcYAML("b", `llm-d.ai/model: bee`), "name: b\n", "name: b\n  namespace: team\n", 1)
	rt := newRuntime(t, yaml, func(o *Options) { o.DebugRouting = true })
	waitReady(t, rt)
	for _, tc := range []struct{ host, model string }{
		{"a.default.localhost", "demo"},
		{"critical-a.default.localhost", "demo"},
		{"b.team.localhost:1234", "bee"},
		{"", "bee"},
	} {
		if code, body := complete(t, rt.APIURL(), tc.host, tc.model, "hi", 2); code != http.StatusOK {
			t.Errorf("host %q model %q: %d %s", tc.host, tc.model, code, body)
		}
	}
	if got := rt.ServiceURL(rt.Services()[0], "critical"); !strings.HasPrefix(got, "http://critical-a.default.localhost:") {
		t.Fatalf("tag URL %s", got)
	}
}

// TestProcessPods runs pods as processes (this test binary as a fake vLLM)
// and checks their logs, their readiness and that stopping the runtime
// leaves no process behind, even a pod that ignores SIGTERM.
func TestProcessPods(t *testing.T) {
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	for _, ignoreTerm := range []bool{false, true} {
		t.Run(fmt.Sprintf("ignoreTERM=%v", ignoreTerm), func(t *testing.T) {
			dir := t.TempDir()
			t.Setenv("LOCAL_TEST_POD", dir)
			if ignoreTerm {
				t.Setenv("FAKE_POD_IGNORE_TERM", "1")
			}
			var out llmdtest.SyncBuffer
			rt := newRuntime(t, svcYAML("proc", "llm-d.ai/disaggregation: prefill-decode"), func(o *Options) {
				o.PodCommand = exe + " --served {served_model_name} --role {role} --port {port} {args}"
				o.PodOutput = &out
				o.GracePeriod = 300 * time.Millisecond
			})
			waitReady(t, rt)
			if !strings.Contains(out.String(), "[proc-00001-decode-1] serving on ") ||
				!strings.Contains(out.String(), "--role decode --port") ||
				!strings.Contains(out.String(), "--served demo --role decode --port ") || !strings.Contains(out.String(), " --max-model-len 8192") {
				t.Fatalf("pod output:\n%s", out.String())
			}
			var pids []int
			for _, name := range []string{"proc-00001-decode-1", "proc-00001-prefill-1"} {
				raw, err := os.ReadFile(filepath.Join(dir, name+".pids"))
				if err != nil {
					t.Fatal(err)
				}
				for _, f := range strings.Fields(string(raw)) {
					pid, _ := strconv.Atoi(f)
					pids = append(pids, pid)
				}
			}
			var st Status
			getJSON(t, metricsURL(rt)+"/status.json", &st)
			if st.Mode != "process" || st.Services[0].Roles[0].Pods[0].KVUsage != 0.25 {
				t.Fatalf("status %+v", st.Services[0].Roles)
			}
			start := time.Now()
			if err := rt.Shutdown(context.Background()); err != nil {
				t.Fatal(err)
			}
			took := time.Since(start)
			if ignoreTerm && took < 300*time.Millisecond {
				t.Fatalf("a pod ignoring SIGTERM stopped in %v, before the grace period", took)
			}
			if !strings.Contains(out.String(), "[proc-00001-decode-1] got SIGTERM") {
				t.Fatalf("no SIGTERM seen:\n%s", out.String())
			}
			for _, pid := range pids {
				eventually(t, fmt.Sprintf("process %d to go", pid), func() bool { return !alive(pid) })
			}
		})
	}
}

// alive reports whether a process exists and is not a zombie.
func alive(pid int) bool {
	if err := syscall.Kill(pid, 0); err != nil {
		return false
	}
	raw, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return !errors.Is(err, os.ErrNotExist)
	}
	f := strings.Fields(string(raw[bytes.LastIndexByte(raw, ')')+1:]))
	return len(f) == 0 || f[0] != "Z"
}

func TestFailingPodsAreReplacedAndReported(t *testing.T) {
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	t.Setenv("LOCAL_TEST_POD", t.TempDir())
	t.Setenv("FAKE_POD_FAIL", "1")
	var out llmdtest.SyncBuffer
	rt := newRuntime(t, svcYAML("bad", "{}"), func(o *Options) {
		o.PodCommand = exe + " --port {port}"
		o.PodOutput = &out
	})
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	err = rt.WaitReady(ctx)
	if err == nil || !strings.Contains(err.Error(), "keep failing") {
		t.Fatalf("WaitReady: %v", err)
	}
	if !strings.Contains(out.String(), "[bad-00001-1] boom: cannot load the model") || !strings.Contains(out.String(), "[bad-00001-3] boom") {
		t.Fatalf("output:\n%s", out.String())
	}
	if n := testutil.ToFloat64(rt.scaler.restarts.WithLabelValues("default/bad-00001", "decode")); n < 3 {
		t.Fatalf("failures counted: %v", n)
	}
}

func TestPodCommandTemplate(t *testing.T) {
	for tmpl, want := range map[string]string{
		"vllm serve {model} --port {port} {args}": "",
		"vllm serve {model}":                      "must contain {port}",
		"x --port {port} {modle}":                 "unknown placeholder {modle}",
		"  ":                                      "empty",
	} {
		err := CheckPodCommand(tmpl)
		if (want == "") != (err == nil) || err != nil && !strings.Contains(err.Error(), want) {
			t.Errorf("CheckPodCommand(%q) = %v, want %q", tmpl, err, want)
		}
	}
	svcs, err := Parse("t.yaml", []byte(strings.Replace(svcYAML("llm", "{}"), `"8192"]`, `"8192", "--chat-template", "{{ it's }}"]`, 1)), DefaultVocabulary())
	if err != nil {
		t.Fatal(err)
	}
	pc, err := expandPodCommand(`vllm serve {model} --port {port} {args} --kv-events-config '{"endpoint":"tcp://*:{kv_events_port}"}' # {name} {role} {time_scale}`,
		svcs[0], "llm-00001-1", "both", 0.5, "")
	if err != nil {
		t.Fatal(err)
	}
	want := fmt.Sprintf(`exec vllm serve demo --port %d --max-model-len 8192 --chat-template '{{ it'\''s }}' --max-num-batched-tokens 2048 --kv-events-config '{"endpoint":"tcp://*:%d"}' # llm-00001-1 both 0.5`, pc.port, pc.kvPort)
	if pc.line != want {
		t.Fatalf("expanded:\n%s\nwant:\n%s", pc.line, want)
	}
	// The shell reads {args} back as the original words.
	out, err := exec.Command("/bin/sh", "-c", "printf '%s\\n' "+strings.Join(func() []string {
		var q []string
		for _, a := range svcs[0].Args {
			q = append(q, shellQuote(a))
		}
		return q
	}(), " ")).Output()
	if err != nil {
		t.Fatal(err)
	}
	if got := strings.Split(strings.TrimSpace(string(out)), "\n"); strings.Join(got, "|") != strings.Join(svcs[0].Args, "|") {
		t.Fatalf("shell words %q, want %q", got, svcs[0].Args)
	}
}

// TestShutdownDrainsInFlightRequests: a stream started before Shutdown
// finishes; new requests are refused; then the pods stop.
func TestShutdownDrainsInFlightRequests(t *testing.T) {
	// 300 tokens take about half a second at this scale.
	// The drain timeout only guards against a hang: a busy machine may
	// stretch the stream well past its half second.
	rt := newRuntime(t, svcYAML("llm", "{}"), func(o *Options) { o.SimTimeScale = 0.2; o.DrainTimeout = 30 * time.Second })
	waitReady(t, rt)
	body := `{"model":"demo","prompt":"Tell me a long story","max_tokens":300,"ignore_eos":true,"stream":true}`
	resp, err := http.Post(rt.APIURL()+"/v1/completions", "application/json", strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	if !sc.Scan() {
		t.Fatal("no first chunk")
	}
	done := make(chan error, 1)
	go func() { done <- rt.Shutdown(context.Background()) }()
	api := rt.APIURL()
	eventually(t, "the listener to close", func() bool {
		c, err := http.Post(api+"/v1/completions", "application/json", strings.NewReader(body))
		if err == nil {
			c.Body.Close()
		}
		return err != nil
	})
	chunks, sawDone := 1, false
	for sc.Scan() {
		if strings.HasPrefix(sc.Text(), "data: ") {
			chunks++
		}
		if sc.Text() == "data: [DONE]" {
			sawDone = true
		}
	}
	if !sawDone || chunks < 300 {
		t.Fatalf("stream cut: %d chunks, [DONE] %v", chunks, sawDone)
	}
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(60 * time.Second):
		t.Fatal("Shutdown did not return")
	}
	if n := len(rt.scaler.podsOf(rt.Services()[0].Key())[RoleDecode]); n != 1 {
		t.Fatalf("%d pods listed", n)
	}
	if p := rt.scaler.podsOf(rt.Services()[0].Key())[RoleDecode][0]; p.Phase != phaseExited {
		t.Fatalf("pod %s is %s after shutdown", p.Name, p.Phase)
	}
}

func TestStatusMetricsAndPodMetrics(t *testing.T) {
	rt := newRuntime(t, string(QuickstartYAML), nil)
	waitReady(t, rt)
	prompt := strings.Repeat("The quick brown fox jumps over the lazy dog. ", 150)
	for range 2 {
		if code, body := complete(t, rt.APIURL(), "", "meta-llama/Llama-3.1-8B-Instruct", prompt, 4); code != 200 {
			t.Fatalf("%d %s", code, body)
		}
	}
	var st Status
	getJSON(t, metricsURL(rt)+"/status.json", &st)
	s := st.Services[0]
	if s.Requests != 2 || s.PromptTokens == 0 || s.CachedTokens == 0 || s.CacheHitRate <= 0 || s.Disaggregated == 0 || s.TTFTP50 != 0 {
		// TTFT is measured on streamed answers only.
		t.Fatalf("service status %+v", s)
	}
	if len(s.Roles) != 2 || s.Roles[0].Role != "decode" || s.Roles[0].Ready != 2 || s.Roles[1].Role != "prefill" || len(s.Roles[1].Pods) != 1 {
		t.Fatalf("roles %+v", s.Roles)
	}
	var prompted float64
	for _, r := range s.Roles {
		for _, p := range r.Pods {
			if !p.Scraped || p.Phase != "ready" {
				t.Fatalf("pod %+v", p)
			}
			prompted += p.PromptTokens
		}
	}
	if prompted == 0 {
		t.Fatal("no pod reports prompt tokens")
	}
	// Each pod's own metrics, proxied.
	pod := s.Roles[1].Pods[0]
	resp, err := http.Get(metricsURL(rt) + pod.MetricsURL)
	if err != nil {
		t.Fatal(err)
	}
	raw, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || !strings.Contains(string(raw), "vllm:prompt_tokens_total") {
		t.Fatalf("pod metrics: %s %.200s", resp.Status, raw)
	}
	if resp, err := http.Get(metricsURL(rt) + "/pods/default/nope/metrics"); err != nil || resp.StatusCode != 404 {
		t.Fatalf("unknown pod: %v %v", resp, err)
	}
	// One registry: activator, scaler.
	resp, err = http.Get(metricsURL(rt) + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	raw, _ = io.ReadAll(resp.Body)
	resp.Body.Close()
	for _, want := range []string{
		`llmd_local_ready_replicas{revision="default/llm-00001",role="decode"} 2`,
		`llmd_local_desired_replicas{revision="default/llm-00001",role="prefill"} 1`,
		`llmd_activator_pd_decisions_total{decision="disaggregated",revision="default/llm-00001"}`,
		`llmd_activator_routing_decision_seconds_count`,
	} {
		if !strings.Contains(string(raw), want) {
			t.Errorf("/metrics lacks %s", want)
		}
	}
	// The page itself is self-contained.
	resp, err = http.Get(rt.StatusURL())
	if err != nil {
		t.Fatal(err)
	}
	raw, _ = io.ReadAll(resp.Body)
	resp.Body.Close()
	if !strings.Contains(string(raw), "/status.json") || strings.Contains(string(raw), "http://") || strings.Contains(string(raw), "https://") {
		t.Fatal("the status page must poll /status.json and load nothing from elsewhere")
	}
	for body, want := range map[string]int{
		`{"service":"nope","replicas":1}`:                  404,
		`{"service":"llm","role":"prefill","replicas":-1}`: 400,
		`{"service":"llm","replicas":1,"typo":true}`:       400,
	} {
		resp, err := http.Post(metricsURL(rt)+"/scale", "application/json", strings.NewReader(body))
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != want {
			t.Errorf("POST /scale %s: %d, want %d", body, resp.StatusCode, want)
		}
	}
}

func TestNewRejectsBadOptions(t *testing.T) {
	svcs, err := Quickstart(DefaultVocabulary())
	if err != nil {
		t.Fatal(err)
	}
	for _, o := range []Options{
		{},
		{Services: svcs, SimTimeScale: -1},
		{Services: svcs, GracePeriod: -time.Second},
		{Services: svcs, PodCommand: "vllm serve {model}"},
		{Services: svcs, Autoscale: AutoscaleOptions{ColdStart: -time.Second}},
	} {
		if _, err := New(o); err == nil {
			t.Errorf("New(%+v) accepted", o)
		}
	}
}

func testLogger() *slog.Logger {
	if os.Getenv("LOCAL_TEST_LOG") == "" {
		return nil
	}
	return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
}
