package main

import (
	"context"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	servingv1 "knative.dev/serving/pkg/apis/serving/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/envtest"

	"github.com/llmd-kn/llmd-kn/internal/kubetest"
	"github.com/llmd-kn/llmd-kn/internal/simtest"
	"github.com/llmd-kn/llmd-kn/internal/testutil"
	"github.com/llmd-kn/llmd-kn/pkg/activator"
	"github.com/llmd-kn/llmd-kn/pkg/activator/discovery"
	"github.com/llmd-kn/llmd-kn/pkg/apis"
)

// TestClusterMode runs the command as the llmd-activator Deployment does,
// without --config, against a real API server: it is not ready until its
// informers synced, then serves a revision it discovered, reports stats to
// the autoscaler, and exits cleanly when told to stop.
func TestClusterMode(t *testing.T) {
	assets := kubetest.AssetsOrSkip(t)
	crdPaths, err := kubetest.ServingCRDs("revision", "route")
	if err != nil {
		t.Fatal(err)
	}
	env := &envtest.Environment{BinaryAssetsDirectory: assets, ErrorIfCRDPathMissing: true,
		CRDInstallOptions: envtest.CRDInstallOptions{Paths: crdPaths}}
	cfg, err := env.Start()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = env.Stop() })
	user, err := env.AddUser(envtest.User{Name: "activator", Groups: []string{"system:masters"}}, nil)
	if err != nil {
		t.Fatal(err)
	}
	kc, err := user.KubeConfig()
	if err != nil {
		t.Fatal(err)
	}
	kubeconfig := filepath.Join(t.TempDir(), "kubeconfig")
	if err := os.WriteFile(kubeconfig, kc, 0o600); err != nil {
		t.Fatal(err)
	}
	scheme, err := discovery.Scheme()
	if err != nil {
		t.Fatal(err)
	}
	c, err := client.New(cfg, client.Options{Scheme: scheme})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()

	// One simulated vLLM, as the pod of a revision of our class.
	_, simAddr := simtest.Start(t, "demo")
	_, simPort, err := net.SplitHostPort(simAddr)
	if err != nil {
		t.Fatal(err)
	}
	port, err := strconv.Atoi(simPort)
	if err != nil {
		t.Fatal(err)
	}
	for _, o := range []client.Object{
		&corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "team"}},
		&corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: "default", Namespace: "team"}},
	} {
		if err := c.Create(ctx, o); err != nil {
			t.Fatal(err)
		}
	}
	rev := &servingv1.Revision{ObjectMeta: metav1.ObjectMeta{Name: "llm-00001", Namespace: "team",
		Annotations: map[string]string{apis.ClassAnnotation: apis.AutoscalerClass, apis.ModelAnnotation: "demo"},
		Labels:      map[string]string{"serving.knative.dev/service": "llm"}}}
	rev.Spec.Containers = []corev1.Container{{Image: "vllm/vllm-openai:v0.11.0"}}
	if err := c.Create(ctx, rev); err != nil {
		t.Fatal(err)
	}
	no := false
	pod := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: "llm-00001-deployment-0", Namespace: "team",
		Labels: map[string]string{"serving.knative.dev/revision": "llm-00001"}},
		Spec: corev1.PodSpec{AutomountServiceAccountToken: &no, Containers: []corev1.Container{{Name: "user-container", Image: "vllm",
			Ports: []corev1.ContainerPort{{ContainerPort: int32(port)}}}}}}
	if err := c.Create(ctx, pod); err != nil {
		t.Fatal(err)
	}
	pod.Status = corev1.PodStatus{Phase: corev1.PodRunning, PodIP: "127.0.0.1",
		Conditions: []corev1.PodCondition{{Type: corev1.PodReady, Status: corev1.ConditionTrue}}}
	if err := c.Status().Update(ctx, pod); err != nil {
		t.Fatal(err)
	}

	reports := make(chan activator.StatsReport, 64)
	scaler := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		var rep activator.StatsReport
		if r.URL.Path != activator.StatsPath || json.NewDecoder(r.Body).Decode(&rep) != nil {
			http.Error(w, "bad report", http.StatusBadRequest)
			return
		}
		select {
		case reports <- rep:
		default:
		}
		w.WriteHeader(http.StatusAccepted)
	}))
	t.Cleanup(scaler.Close)

	addr, admin := testutil.FreeAddr(t), testutil.FreeAddr(t)
	rctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	logs := &testutil.SyncBuffer{}
	go func() {
		done <- run(rctx, []string{"--kubeconfig", kubeconfig, "--addr", addr, "--admin-addr", admin,
			"--autoscaler-url", scaler.URL, "--pod-name", "llmd-activator-0"}, logs)
	}()
	t.Cleanup(cancel)

	ready := false
	for deadline := time.Now().Add(20 * time.Second); time.Now().Before(deadline) && !ready; time.Sleep(50 * time.Millisecond) {
		if r, err := http.Get("http://" + admin + "/healthz"); err == nil {
			ready = r.StatusCode == 200
			r.Body.Close()
		}
	}
	if !ready {
		t.Fatalf("never ready:\n%s", logs.String())
	}
	var resp *http.Response
	for deadline := time.Now().Add(30 * time.Second); time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
		req, _ := http.NewRequest(http.MethodPost, "http://"+addr+"/v1/completions", strings.NewReader(`{"model":"demo","prompt":"Knative is","max_tokens":3}`))
		req.Header.Set(activator.RevisionHeader, "llm-00001")
		req.Header.Set(activator.NamespaceHeader, "team")
		if resp, err = http.DefaultClient.Do(req); err == nil && resp.StatusCode == 200 {
			break
		}
		if resp != nil {
			resp.Body.Close()
		}
	}
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("no answer through the activator: %v\n%s", err, logs.String())
	}
	_, _ = io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	counted := func(rep activator.StatsReport) bool {
		return rep.Activator == "llmd-activator-0" && len(rep.Revisions) == 1 && rep.Revisions[0].Revision == "team/llm-00001" &&
			rep.Revisions[0].RequestsByTier["standard"] == 1
	}
	for deadline, ok := time.After(30*time.Second), false; !ok; {
		select {
		case rep := <-reports:
			ok = counted(rep)
		case <-deadline:
			t.Fatalf("no stats report counting the request reached the autoscaler\n%s", logs.String())
		}
	}
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("activator did not shut down")
	}
}

func TestClusterModeOutsideAClusterIsRefused(t *testing.T) {
	t.Setenv("KUBERNETES_SERVICE_HOST", "")
	err := run(context.Background(), []string{"--addr", "127.0.0.1:0"}, io.Discard)
	if err == nil || !strings.Contains(err.Error(), "no --config and no --kubeconfig") {
		t.Fatalf("got %v", err)
	}
	err = run(context.Background(), []string{"--kubeconfig", filepath.Join(t.TempDir(), "missing")}, io.Discard)
	if err == nil || !strings.Contains(err.Error(), "--kubeconfig") {
		t.Fatalf("got %v", err)
	}
}
