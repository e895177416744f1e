package discovery_test

// Tests against a real kube-apiserver and etcd (envtest, binaries from
// hack/build-k8s.sh) with Knative Serving's Revision and Route CRDs from
// the module cache. Revisions, Routes and pods are written as Knative and
// the kubelet would write them; each pod's IP is 127.0.0.1 and its
// containerPort that of an in-process vLLM simulator, so the requests the
// activator sends to what it discovered really arrive somewhere.

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/rest"
	servingv1 "knative.dev/serving/pkg/apis/serving/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/envtest"

	"github.com/llmd-kn/llmd-kn/internal/kubetest"
	"github.com/llmd-kn/llmd-kn/internal/testutil"
	"github.com/llmd-kn/llmd-kn/pkg/activator"
	"github.com/llmd-kn/llmd-kn/pkg/activator/discovery"
	"github.com/llmd-kn/llmd-kn/pkg/apis"
	"github.com/llmd-kn/llmd-kn/pkg/engine"
	"github.com/llmd-kn/llmd-kn/pkg/tokenizer"
	"github.com/llmd-kn/llmd-kn/pkg/vllmsim"
)

var (
	envOnce sync.Once
	env     *envtest.Environment
	restCfg *rest.Config
	envErr  error
)

func TestMain(m *testing.M) {
	code := m.Run()
	if env != nil {
		_ = env.Stop()
	}
	os.Exit(code)
}

// apiServer starts the package's API server on first use, or skips.
func apiServer(t *testing.T) client.Client {
	t.Helper()
	assets := kubetest.AssetsOrSkip(t)
	envOnce.Do(func() {
		start := time.Now()
		crdPaths, err := kubetest.ServingCRDs("revision", "route")
		if err != nil {
			envErr = err
			return
		}
		env = &envtest.Environment{
			BinaryAssetsDirectory: assets,
			ErrorIfCRDPathMissing: true,
			CRDInstallOptions:     envtest.CRDInstallOptions{Paths: crdPaths},
		}
		if restCfg, envErr = env.Start(); envErr == nil {
			fmt.Fprintf(os.Stderr, "envtest: API server and CRDs up in %.1fs\n", time.Since(start).Seconds())
		}
	})
	if envErr != nil {
		t.Fatal(envErr)
	}
	scheme, err := discovery.Scheme()
	if err != nil {
		t.Fatal(err)
	}
	c, err := client.New(restCfg, client.Options{Scheme: scheme})
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// namespaces counts the namespaces made, so that test runs (-count)
// sharing the API server do not meet.
var namespaces atomic.Int32

// namespace creates a namespace named after prefix with the default
// service account that admission wants for pods (no controller-manager
// creates it here).
func namespace(t *testing.T, c client.Client, prefix string) string {
	t.Helper()
	ctx := context.Background()
	name := fmt.Sprintf("%s-%d", prefix, namespaces.Add(1))
	if err := c.Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: name}}); err != nil {
		t.Fatal(err)
	}
	if err := c.Create(ctx, &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: "default", Namespace: name}}); err != nil {
		t.Fatal(err)
	}
	return name
}

// sim is one simulated vLLM on a loopback port.
type sim struct {
	srv  *vllmsim.Server
	port int32
}

func startSim(t *testing.T, model string, role engine.Role) *sim {
	t.Helper()
	p, err := engine.BuiltinProfile(engine.DefaultProfile)
	if err != nil {
		t.Fatal(err)
	}
	srv, err := vllmsim.New(vllmsim.Config{Model: model, Profile: p, Role: role, TimeScale: 0.02, Seed: 1,
		SchedulingPolicy: engine.PolicyPriority})
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = srv.Serve(ctx, ln)
	}()
	t.Cleanup(func() {
		cancel()
		_ = ln.Close()
		_ = srv.Close()
		<-done
	})
	return &sim{srv: srv, port: int32(ln.Addr().(*net.TCPAddr).Port)}
}

// revision creates a Revision as Knative's controller would from a
// Service's template.
func revision(t *testing.T, c client.Client, ns, name, svc string, ann map[string]string) *servingv1.Revision {
	t.Helper()
	r := &servingv1.Revision{ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns, Annotations: ann,
		Labels: map[string]string{"serving.knative.dev/service": svc, "serving.knative.dev/configuration": svc}}}
	r.Spec.Containers = []corev1.Container{{Image: "vllm/vllm-openai:v0.11.0",
		Ports: []corev1.ContainerPort{{ContainerPort: 8000}}, Args: []string{"--scheduling-policy", "priority"}}}
	if err := c.Create(context.Background(), r); err != nil {
		t.Fatal(err)
	}
	// No controller-manager deletes what a namespace holds: leave nothing
	// for the next test run (-count) sharing the API server.
	t.Cleanup(func() { _ = c.Delete(context.Background(), r) })
	return r
}

// pod creates a revision pod whose vLLM container listens on the sim's
// port, as Knative's Deployment (or the prefill Deployment, role set)
// would, and gives it the status a kubelet would.
func pod(t *testing.T, c client.Client, ns, name, rev, role string, s *sim, ready bool) *corev1.Pod {
	t.Helper()
	no := false
	p := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns, Labels: map[string]string{"serving.knative.dev/revision": rev}},
		Spec: corev1.PodSpec{AutomountServiceAccountToken: &no, Containers: []corev1.Container{
			{Name: "queue-proxy", Image: "queue", Ports: []corev1.ContainerPort{{ContainerPort: 8012}}},
			{Name: "user-container", Image: "vllm/vllm-openai:v0.11.0", Ports: []corev1.ContainerPort{{Name: "user-port", ContainerPort: s.port}}},
		}},
	}
	if role != "" {
		p.Labels[discovery.RoleLabel] = role
	}
	ctx := context.Background()
	if err := c.Create(ctx, p); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Delete(context.Background(), p) })
	setReady(t, c, p, ready)
	return p
}

func setReady(t *testing.T, c client.Client, p *corev1.Pod, ready bool) {
	t.Helper()
	status := corev1.ConditionFalse
	if ready {
		status = corev1.ConditionTrue
	}
	p.Status = corev1.PodStatus{Phase: corev1.PodRunning, PodIP: "127.0.0.1", PodIPs: []corev1.PodIP{{IP: "127.0.0.1"}},
		Conditions: []corev1.PodCondition{{Type: corev1.PodReady, Status: status, LastTransitionTime: metav1.Now()}}}
	if err := c.Status().Update(context.Background(), p); err != nil {
		t.Fatalf("pod status: %v", err)
	}
}

// front is an activator kept in step by discovery, behind an HTTP server.
type front struct {
	act  *activator.Activator
	url  string
	logs *testutil.SyncBuffer
}

func startFront(t *testing.T, poke func(activator.RevisionKey)) *front {
	t.Helper()
	logs := &testutil.SyncBuffer{}
	log := slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	act, err := activator.New(activator.Options{Debug: true, ScrapeInterval: 20 * time.Millisecond, Poke: poke, Logger: log})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(act.Close)
	d, err := discovery.New(restCfg, act, discovery.Options{Logger: log, Debounce: 20 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- d.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("discovery: %v", err)
		}
	})
	eventually(t, "discovery synced", d.Ready)
	srv := httptest.NewServer(act.Handler())
	t.Cleanup(srv.Close)
	return &front{act: act, url: srv.URL, logs: logs}
}

func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(30 * time.Second); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		if cond() {
			return
		}
	}
	t.Fatalf("timed out waiting for: %s", what)
}

// eventually is eventually, with the activator's and discovery's logs
// shown on failure.
func (f *front) eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(30 * time.Second); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		if cond() {
			return
		}
	}
	t.Fatalf("timed out waiting for: %s\n%s", what, f.logs.String())
}

// stats returns the activator's stats of one revision.
func (f *front) stats(key string) (activator.RevisionStats, bool) {
	for _, s := range f.act.Stats() {
		if s.Revision == key {
			return s, true
		}
	}
	return activator.RevisionStats{}, false
}

type answer struct {
	status int
	route  string
	body   string
}

// complete sends an OpenAI completion, with headers (Host in "Host").
func (f *front) complete(t *testing.T, model string, prompt []uint32, hdr map[string]string) answer {
	t.Helper()
	ids, _ := json.Marshal(prompt)
	body := fmt.Sprintf(`{"model":%q,"prompt":%s,"max_tokens":4,"ignore_eos":true}`, model, ids)
	req, err := http.NewRequest(http.MethodPost, f.url+"/v1/completions", strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/json")
	for k, v := range hdr {
		if k == "Host" {
			req.Host = v
			continue
		}
		req.Header.Set(k, v)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	raw, _ := io.ReadAll(resp.Body)
	return answer{status: resp.StatusCode, route: resp.Header.Get(activator.RouteHeader), body: string(raw)}
}

func prompt(n int, salt uint32) []uint32 {
	v := tokenizer.GeneratedVocab()
	p := make([]uint32, n)
	for i := range p {
		p[i] = v[(uint32(i)*7919+salt*104729)%uint32(len(v))]
	}
	return p
}

func revHeaders(ns, name string) map[string]string {
	return map[string]string{activator.RevisionHeader: name, activator.NamespaceHeader: ns}
}

// TestRevisionsAndPodsFromTheAPIServer follows a P/D revision's life as
// the API server shows it: its pods (prefill, decode) get the right legs,
// requests by Knative's headers and by Host reach only its pods, a pod
// that turns NotReady gets no more traffic, a Route tag host selects its
// tier, revisions of other classes or with invalid annotations are not
// served, and a deleted revision answers 404.
func TestRevisionsAndPodsFromTheAPIServer(t *testing.T) {
	c := apiServer(t)
	ctx := context.Background()
	ns := namespace(t, c, "team-a")

	pre, dec0, dec1 := startSim(t, "llama", engine.RolePrefill), startSim(t, "llama", engine.RoleDecode), startSim(t, "llama", engine.RoleDecode)
	other := startSim(t, "qwen", engine.RoleBoth)
	llm := revision(t, c, ns, "llm-00001", "llm", map[string]string{
		apis.ClassAnnotation: apis.AutoscalerClass, apis.ModelAnnotation: "llama",
		apis.DisaggregationAnnotation: apis.DisaggregationPrefillDecode, apis.PDThresholdAnnotation: "256",
	})
	revision(t, c, ns, "qwen-00001", "qwen", map[string]string{apis.ClassAnnotation: apis.AutoscalerClass, apis.ModelAnnotation: "qwen"})
	revision(t, c, ns, "kpa-00001", "kpa", map[string]string{apis.ClassAnnotation: "kpa.autoscaling.knative.dev", apis.ModelAnnotation: "kpa"})
	revision(t, c, ns, "bad-00001", "bad", map[string]string{apis.ClassAnnotation: apis.AutoscalerClass, apis.SLOTTFTAnnotation: "soon"})
	pod(t, c, ns, "llm-00001-prefill-x1", "llm-00001", "prefill", pre, true)
	pod(t, c, ns, "llm-00001-deployment-d0", "llm-00001", "", dec0, true)
	d1 := pod(t, c, ns, "llm-00001-deployment-d1", "llm-00001", "", dec1, true)
	pod(t, c, ns, "qwen-00001-deployment-q0", "qwen-00001", "", other, true)

	f := startFront(t, nil)
	f.eventually(t, "all pods ready in the activator", func() bool {
		a, _ := f.stats(ns + "/llm-00001")
		b, _ := f.stats(ns + "/qwen-00001")
		return a.ReadyPods == 3 && b.ReadyPods == 1
	})
	if _, ok := f.stats(ns + "/kpa-00001"); ok {
		t.Error("a revision of Knative's own autoscaler class is served")
	}
	if _, ok := f.stats(ns + "/bad-00001"); ok {
		t.Error("a revision with invalid annotations is served")
	}
	if logs := f.logs.String(); !strings.Contains(logs, "metadata.annotations[llm-d.ai/slo-ttft]") || !strings.Contains(logs, "bad-00001") {
		t.Errorf("the invalid revision's log does not name the field:\n%s", logs)
	}

	// A long prompt by Knative's headers: prefill on the prefill pod,
	// decode on a decode pod, nothing on the other revision's pod.
	a := f.complete(t, "llama", prompt(2000, 1), revHeaders(ns, "llm-00001"))
	if a.status != 200 || !strings.Contains(a.route, "prefill=llm-00001-prefill-x1") || !strings.Contains(a.route, "decode=llm-00001-deployment-d") {
		t.Fatalf("P/D request: %d route=%q %s", a.status, a.route, a.body)
	}
	if st := pre.srv.Stats(); st.PromptTokens < 2000 {
		t.Fatalf("the prefill pod computed %d prompt tokens, want the 2000 of the prompt", st.PromptTokens)
	}
	if fin := dec0.srv.Stats().Finished + dec1.srv.Stats().Finished; fin != 1 {
		t.Fatalf("decode pods finished %d requests, want 1", fin)
	}
	// By Host, the Service's host.
	a = f.complete(t, "qwen", prompt(20, 2), map[string]string{"Host": "qwen." + ns + ".svc.cluster.local"})
	if a.status != 200 || other.srv.Stats().Finished != 1 {
		t.Fatalf("request by Host: %d %s; qwen pod finished %d", a.status, a.body, other.srv.Stats().Finished)
	}
	if fin := pre.srv.Stats().Finished + dec0.srv.Stats().Finished + dec1.srv.Stats().Finished; fin != 2 {
		t.Fatalf("the qwen request reached the llama pods (finished %d)", fin)
	}

	// A decode pod turns NotReady: it gets nothing more.
	setReady(t, c, d1, false)
	f.eventually(t, "the NotReady pod leaves the activator", func() bool {
		s, _ := f.stats(ns + "/llm-00001")
		return s.Pods == 2
	})
	before := dec1.srv.Stats().Finished
	for i := range 8 {
		if a := f.complete(t, "llama", prompt(20, uint32(10+i)), revHeaders(ns, "llm-00001")); a.status != 200 || !strings.Contains(a.route, "decode=llm-00001-deployment-d0") {
			t.Fatalf("request %d after NotReady: %d route=%q %s", i, a.status, a.route, a.body)
		}
	}
	if got := dec1.srv.Stats().Finished; got != before {
		t.Fatalf("the NotReady pod received %d requests", got-before)
	}

	// The Route gives the revision a "batch" tag: its host selects the
	// batch tier.
	route := &servingv1.Route{ObjectMeta: metav1.ObjectMeta{Name: "llm", Namespace: ns}}
	if err := c.Create(ctx, route); err != nil {
		t.Fatal(err)
	}
	route.Status.Traffic = []servingv1.TrafficTarget{
		{RevisionName: "llm-00001", Percent: ptr(int64(100))},
		{RevisionName: "llm-00001", Tag: "batch", Percent: ptr(int64(0))},
	}
	if err := c.Status().Update(ctx, route); err != nil {
		t.Fatalf("route status: %v", err)
	}
	// The activator accounts for a request just after its answer ends:
	// settled waits until all sent requests are accounted for.
	sent := int64(9) // the P/D request and the 8 after NotReady
	settled := func() activator.RevisionStats {
		t.Helper()
		var s activator.RevisionStats
		f.eventually(t, fmt.Sprintf("%d requests accounted for", sent), func() bool {
			s, _ = f.stats(ns + "/llm-00001")
			var n int64
			for _, v := range s.RequestsByTier {
				n += v
			}
			return n == sent
		})
		return s
	}
	// Until the tag is known the host does not resolve and the request
	// goes by its model, in the standard tier; once it is, the tier is batch.
	host := map[string]string{"Host": "batch-llm." + ns + ".example.com"}
	f.eventually(t, "the tag host selects the batch tier", func() bool {
		if a := f.complete(t, "llama", prompt(20, 3), host); a.status != 200 {
			t.Fatalf("request by tag host: %d %s", a.status, a.body)
		}
		sent++
		return settled().RequestsByTier["batch"] == 1
	})
	// As Knative's ingress sends it: the revision's headers and the tag host.
	hdr := revHeaders(ns, "llm-00001")
	hdr["Host"] = "batch-llm." + ns + ".example.com"
	if a := f.complete(t, "llama", prompt(20, 4), hdr); a.status != 200 {
		t.Fatalf("request by headers and tag host: %d %s", a.status, a.body)
	}
	sent++
	if s := settled(); s.RequestsByTier["batch"] != 2 {
		t.Fatalf("the tag host with Knative's headers did not select the batch tier: %v", s.RequestsByTier)
	}

	// Requests for Knative's class revision are not this activator's.
	if a := f.complete(t, "kpa", prompt(20, 5), revHeaders(ns, "kpa-00001")); a.status != 404 {
		t.Fatalf("KPA revision: %d %s", a.status, a.body)
	}
	// The revision goes away: 404.
	if err := c.Delete(ctx, llm); err != nil {
		t.Fatal(err)
	}
	f.eventually(t, "the deleted revision answers 404", func() bool {
		return f.complete(t, "llama", prompt(20, 6), revHeaders(ns, "llm-00001")).status == 404
	})
}

func ptr[T any](v T) *T { return &v }

// TestRequestAtZeroPokesTheAutoscaler: a request for a revision with no
// ready pod waits, the autoscaler (a real HTTP server here) is poked at
// once, and when a pod turns Ready the waiting request is answered.
func TestRequestAtZeroPokesTheAutoscaler(t *testing.T) {
	c := apiServer(t)
	ns := namespace(t, c, "team-b")
	pokes := make(chan activator.PokeRequest, 16)
	scaler := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.Method + " " + r.URL.Path {
		case "POST /v1/poke":
			var p activator.PokeRequest
			if err := json.NewDecoder(r.Body).Decode(&p); err != nil {
				http.Error(w, err.Error(), http.StatusBadRequest)
				return
			}
			pokes <- p
			w.WriteHeader(http.StatusAccepted)
		case "POST /v1/stats":
			w.WriteHeader(http.StatusAccepted)
		default:
			http.NotFound(w, r)
		}
	}))
	t.Cleanup(scaler.Close)
	rep, err := activator.NewReporter(activator.ReporterOptions{URL: scaler.URL, Activator: "activator-0"})
	if err != nil {
		t.Fatal(err)
	}
	revision(t, c, ns, "zero-00001", "zero", map[string]string{apis.ClassAnnotation: apis.AutoscalerClass, apis.ModelAnnotation: "zero"})
	f := startFront(t, rep.Poke)
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	go rep.Run(ctx, f.act.Stats)
	eventually(t, "revision known", func() bool { _, ok := f.stats(ns + "/zero-00001"); return ok })

	start := time.Now()
	answered := make(chan answer, 1)
	go func() { answered <- f.complete(t, "zero", prompt(20, 7), revHeaders(ns, "zero-00001")) }()
	select {
	case p := <-pokes:
		if p != (activator.PokeRequest{Namespace: ns, Name: "zero-00001"}) {
			t.Fatalf("poke %+v", p)
		}
		t.Logf("poke arrived %v after the request", time.Since(start).Round(time.Millisecond))
	case a := <-answered:
		t.Fatalf("answered at zero instead of waiting: %d %s", a.status, a.body)
	case <-time.After(30 * time.Second):
		t.Fatal("the autoscaler was not poked")
	}
	select {
	case a := <-answered:
		t.Fatalf("answered before any pod was ready: %d %s", a.status, a.body)
	case <-time.After(200 * time.Millisecond):
	}
	s := startSim(t, "zero", engine.RoleBoth)
	p := pod(t, c, ns, "zero-00001-deployment-z0", "zero-00001", "", s, false)
	setReady(t, c, p, true)
	readyAt := time.Now()
	select {
	case a := <-answered:
		if a.status != 200 || s.srv.Stats().Finished != 1 {
			t.Fatalf("buffered request: %d %s (pod finished %d)", a.status, a.body, s.srv.Stats().Finished)
		}
		t.Logf("buffered request answered %v after it was sent, %v after its pod turned Ready in the API server",
			time.Since(start).Round(time.Millisecond), time.Since(readyAt).Round(time.Millisecond))
	case <-time.After(30 * time.Second):
		t.Fatal("the buffered request was not answered once a pod was ready")
	}
}
