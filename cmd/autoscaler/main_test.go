package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	authenticationv1 "k8s.io/api/authentication/v1"
	coordinationv1 "k8s.io/api/coordination/v1"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"
	"k8s.io/utils/ptr"
	"knative.dev/pkg/kmeta"
	autoscalingv1alpha1 "knative.dev/serving/pkg/apis/autoscaling/v1alpha1"
	"knative.dev/serving/pkg/apis/serving"
	servingv1 "knative.dev/serving/pkg/apis/serving/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/envtest"

	"github.com/llmd-kn/llmd-kn/internal/kubetest"
	"github.com/llmd-kn/llmd-kn/internal/testutil"
	"github.com/llmd-kn/llmd-kn/pkg/apis"
	"github.com/llmd-kn/llmd-kn/pkg/internaltls"
)

func TestRunRejectsBadInput(t *testing.T) {
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "scale-to-zero-grace-period"), []byte("soon"), 0o644); err != nil {
		t.Fatal(err)
	}
	coldDir := t.TempDir()
	if err := os.WriteFile(filepath.Join(coldDir, "cold-start"), []byte("-30s"), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"--config-dir", dir}, `scale-to-zero-grace-period: invalid value "soon"`},
		{[]string{"--config-dir", coldDir}, "cold-start: must not be negative"},
		{[]string{"--tiers", filepath.Join(dir, "scale-to-zero-grace-period")}, "scale-to-zero-grace-period"},
		{[]string{"--tiers", filepath.Join(dir, "missing.yaml")}, "missing.yaml"},
		{[]string{"--no-such-flag"}, "no-such-flag"},
		{[]string{"extra"}, "unexpected arguments"},
		{[]string{"--stats-auth", "trust-me"}, `--stats-auth "trust-me": want tokenreview or none`},
		{[]string{"--kubeconfig", filepath.Join(dir, "missing")}, "kubeconfig"},
	} {
		var stderr bytes.Buffer
		err := run(context.Background(), tc.args, &stderr)
		if err == nil || !strings.Contains(err.Error()+stderr.String(), tc.want) {
			t.Errorf("run %v: got %v, want an error containing %q", tc.args, err, tc.want)
		}
	}
}

// TestAutoscalerInACluster runs the command against a real API server as
// its ServiceAccount with exactly the RBAC of config/autoscaler: it elects
// itself leader, takes a disaggregated revision's traffic path, creates its
// prefill Deployment, scales it from activator reports, serves metrics and
// probes, and exits cleanly when cancelled (SIGTERM).
func TestAutoscalerInACluster(t *testing.T) {
	assets := kubetest.AssetsOrSkip(t)
	root, err := kubetest.RepoRoot()
	if err != nil {
		t.Fatal(err)
	}
	rbacFile := filepath.Join(root, "config", "autoscaler", "200-rbac.yaml")
	rbac, err := os.ReadFile(rbacFile)
	if err != nil {
		t.Skipf("no RBAC manifest: %v", err)
	}
	crdPaths, err := kubetest.ServingCRDs("revision", "podautoscaler")
	if err != nil {
		t.Fatal(err)
	}
	env := &envtest.Environment{
		BinaryAssetsDirectory: assets,
		ErrorIfCRDPathMissing: true,
		CRDInstallOptions:     envtest.CRDInstallOptions{Paths: crdPaths},
	}
	cfg, err := env.Start()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = env.Stop() })
	scheme := runtime.NewScheme()
	for _, add := range []func(*runtime.Scheme) error{clientgoscheme.AddToScheme, autoscalingv1alpha1.AddToScheme, servingv1.AddToScheme} {
		if err := add(scheme); err != nil {
			t.Fatal(err)
		}
	}
	admin, err := client.New(cfg, client.Options{Scheme: scheme})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	must(admin.Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "llmd-kn"}}))
	must(admin.Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "demo"}}))
	applyRBAC(t, admin, rbac)
	user, err := env.AddUser(envtest.User{Name: "system:serviceaccount:llmd-kn:llmd-autoscaler"}, nil)
	must(err)
	kc, err := user.KubeConfig()
	must(err)
	kubeconfig := filepath.Join(t.TempDir(), "kubeconfig")
	must(os.WriteFile(kubeconfig, kc, 0o600))

	// The activator's endpoints.
	must(admin.Create(ctx, &discoveryv1.EndpointSlice{
		ObjectMeta: metav1.ObjectMeta{Name: "llmd-activator-x", Namespace: "llmd-kn",
			Labels: map[string]string{discoveryv1.LabelServiceName: "llmd-activator"}},
		AddressType: discoveryv1.AddressTypeIPv4,
		Endpoints:   []discoveryv1.Endpoint{{Addresses: []string{"10.1.0.4"}, Conditions: discoveryv1.EndpointConditions{Ready: ptr.To(true)}}},
	}))

	// The stats API's certificate Secret, shipped empty (config/autoscaler).
	must(admin.Create(ctx, &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Namespace: "llmd-kn", Name: "llmd-autoscaler-certs"}}))
	certDir := filepath.Join(t.TempDir(), "stats-tls")

	statsAddr, metricsAddr, probeAddr := testutil.FreeAddr(t), testutil.FreeAddr(t), testutil.FreeAddr(t)
	runCtx, cancel := context.WithCancel(ctx)
	defer cancel()
	var logs testutil.SyncBuffer
	done := make(chan error, 1)
	go func() {
		done <- run(runCtx, []string{"--kubeconfig", kubeconfig, "--namespace", "llmd-kn", "--leader-elect",
			"--stats-bind-address", statsAddr, "--metrics-bind-address", metricsAddr, "--health-probe-bind-address", probeAddr,
			"--stats-tls-cert-dir", certDir, "--stats-tls-self-signed"}, &logs)
	}()
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("autoscaler logs:\n%s", logs.String())
		}
	})

	// A disaggregated revision as Knative's controllers would make it.
	ann := map[string]string{apis.ClassAnnotation: apis.AutoscalerClass, apis.DisaggregationAnnotation: apis.DisaggregationPrefillDecode,
		apis.MaxScaleAnnotation: "2", apis.PrefillMaxScaleAnnotation: "3"}
	rev := &servingv1.Revision{ObjectMeta: metav1.ObjectMeta{Name: "chat-00001", Namespace: "demo", Annotations: ann},
		Spec: servingv1.RevisionSpec{PodSpec: corev1.PodSpec{Containers: []corev1.Container{{Image: "vllm"}}}}}
	must(admin.Create(ctx, rev))
	labels := map[string]string{serving.RevisionLabelKey: rev.Name, serving.RevisionUID: string(rev.UID)}
	must(admin.Create(ctx, &appsv1.Deployment{
		ObjectMeta: metav1.ObjectMeta{Name: "chat-00001-deployment", Namespace: "demo", Labels: labels},
		Spec: appsv1.DeploymentSpec{Replicas: ptr.To[int32](1), Selector: &metav1.LabelSelector{MatchLabels: labels},
			Template: corev1.PodTemplateSpec{ObjectMeta: metav1.ObjectMeta{Labels: labels}, Spec: corev1.PodSpec{Containers: []corev1.Container{
				{Name: "user-container", Image: "vllm"}, {Name: "queue-proxy", Image: "queue"}}}}},
	}))
	must(admin.Create(ctx, &autoscalingv1alpha1.PodAutoscaler{
		ObjectMeta: metav1.ObjectMeta{Name: rev.Name, Namespace: "demo", Annotations: ann,
			OwnerReferences: []metav1.OwnerReference{*kmeta.NewControllerRef(rev)}},
		Spec: autoscalingv1alpha1.PodAutoscalerSpec{ProtocolType: "http1",
			ScaleTargetRef: corev1.ObjectReference{APIVersion: "apps/v1", Kind: "Deployment", Name: "chat-00001-deployment"}},
	}))

	eventually := func(what string, check func() error) {
		t.Helper()
		deadline := time.Now().Add(20 * time.Second)
		for {
			err := check()
			if err == nil {
				return
			}
			select {
			case err := <-done:
				t.Fatalf("%s: the autoscaler exited: %v", what, err)
			default:
			}
			if time.Now().After(deadline) {
				t.Fatalf("%s: %v", what, err)
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
	demo := func(name string) types.NamespacedName { return types.NamespacedName{Namespace: "demo", Name: name} }
	eventually("leader lease", func() error {
		return admin.Get(ctx, types.NamespacedName{Namespace: "llmd-kn", Name: "llmd-autoscaler"}, &coordinationv1.Lease{})
	})
	eventually("revision Service and EndpointSlice", func() error {
		if err := admin.Get(ctx, demo("chat-00001"), &corev1.Service{}); err != nil {
			return err
		}
		return admin.Get(ctx, demo("chat-00001"), &discoveryv1.EndpointSlice{})
	})
	eventually("prefill Deployment", func() error { return admin.Get(ctx, demo("chat-00001-prefill"), &appsv1.Deployment{}) })
	eventually("PA status", func() error {
		pa := &autoscalingv1alpha1.PodAutoscaler{}
		if err := admin.Get(ctx, demo("chat-00001"), pa); err != nil {
			return err
		}
		if pa.Status.ServiceName != "chat-00001" || pa.Status.DesiredScale == nil {
			return fmt.Errorf("status %+v", pa.Status)
		}
		return nil
	})

	// The activator's ServiceAccount token for the autoscaler's audience,
	// as the kubelet projects it (config/activator), and forgeries.
	token := func(nsName, sa, audience string) string {
		t.Helper()
		acct := &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Namespace: nsName, Name: sa}}
		if err := admin.Create(ctx, acct); err != nil && !apierrors.IsAlreadyExists(err) {
			t.Fatal(err)
		}
		tr := &authenticationv1.TokenRequest{Spec: authenticationv1.TokenRequestSpec{Audiences: []string{audience}}}
		must(admin.SubResource("token").Create(ctx, acct, tr))
		return tr.Status.Token
	}
	activatorToken := token("llmd-kn", "llmd-activator", "llmd-autoscaler")
	reportBody := func(tokens int) string {
		return fmt.Sprintf(`{"activator":"llmd-activator-x","revisions":[{"revision":"demo/chat-00001","requestsByTier":{"standard":%d},
			"promptTokens":%d,"completionTokens":%d,"uncachedPrefillTokens":%d,"inFlight":100}]}`, tokens/1000, tokens, tokens/10, tokens)
	}

	// The stats API speaks TLS with the certificate the autoscaler keeps
	// in its Secret (with config/'s RBAC): a client that trusts the
	// Secret's CA bundle for the Service's name, as the activator does.
	var sec corev1.Secret
	must(admin.Get(ctx, types.NamespacedName{Namespace: "llmd-kn", Name: "llmd-autoscaler-certs"}, &sec))
	caFile := filepath.Join(t.TempDir(), "ca-bundle.crt")
	must(os.WriteFile(caFile, sec.Data["ca-bundle.crt"], 0o600))
	clientTLS, err := internaltls.ClientConfig(caFile, "llmd-autoscaler.llmd-kn.svc")
	must(err)
	statsClient := &http.Client{Transport: &http.Transport{TLSClientConfig: clientTLS}, Timeout: 10 * time.Second}
	defer statsClient.CloseIdleConnections()
	if resp, err := http.Post("http://"+statsAddr+"/v1/stats", "application/json", strings.NewReader(reportBody(0))); err == nil {
		resp.Body.Close()
		if resp.StatusCode != http.StatusBadRequest {
			t.Errorf("a plaintext POST to the TLS port: %s, want the TLS server's 400", resp.Status)
		}
	}
	post := func(path, tok, body string) (int, string) {
		req, err := http.NewRequest(http.MethodPost, "https://"+statsAddr+path, strings.NewReader(body))
		must(err)
		req.Header.Set("Content-Type", "application/json")
		if tok != "" {
			req.Header.Set("Authorization", "Bearer "+tok)
		}
		resp, err := statsClient.Do(req)
		must(err)
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}

	// Forged reports and pokes (issue 17, failure 6) are refused: no
	// token, a made-up one, the activator's token for another audience,
	// another ServiceAccount's token for the right one.
	poke := `{"namespace":"demo","name":"chat-00001"}`
	for _, f := range []struct {
		name, tok string
		code      int
	}{
		{"no token", "", http.StatusUnauthorized},
		{"made-up token", "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJzeXN0ZW06c2VydmljZWFjY291bnQ6bGxtZC1rbjpsbG1kLWFjdGl2YXRvciJ9.c2ln", http.StatusUnauthorized},
		{"activator token, other audience", token("llmd-kn", "llmd-activator", "https://kubernetes.default.svc"), http.StatusUnauthorized},
		{"other ServiceAccount", token("demo", "default", "llmd-autoscaler"), http.StatusForbidden},
	} {
		for _, path := range []string{"/v1/stats", "/v1/poke"} {
			body := reportBody(0)
			if path == "/v1/poke" {
				body = poke
			}
			if code, msg := post(path, f.tok, body); code != f.code {
				t.Errorf("%s: POST %s answered %d %q, want %d", f.name, path, code, msg, f.code)
			}
		}
	}

	// An activator's reports of a heavy load: both roles go to their max
	// through the scale subresource.
	report := func(tokens int) {
		if code, msg := post("/v1/stats", activatorToken, reportBody(tokens)); code != http.StatusAccepted {
			t.Fatalf("POST /v1/stats: %d %s", code, msg)
		}
	}
	report(0)
	time.Sleep(200 * time.Millisecond)
	// Ten times what drives the max scales over 200 ms: a busy machine
	// that stretches the interval tenfold still reports a load above them.
	report(10_000_000)
	eventually("scale-up", func() error {
		var p, d appsv1.Deployment
		if err := admin.Get(ctx, demo("chat-00001-prefill"), &p); err != nil {
			return err
		}
		if err := admin.Get(ctx, demo("chat-00001-deployment"), &d); err != nil {
			return err
		}
		if *p.Spec.Replicas != 3 || *d.Spec.Replicas != 2 {
			return fmt.Errorf("prefill %d, decode %d; want 3 and 2", *p.Spec.Replicas, *d.Spec.Replicas)
		}
		return nil
	})
	for _, u := range []struct{ url, want string }{
		{"http://" + probeAddr + "/healthz", "ok"},
		{"http://" + probeAddr + "/readyz", "ok"},
		{"http://" + metricsAddr + "/metrics", `llmd_autoscaler_recommended_replicas{namespace="demo",revision="chat-00001",role="prefill"} 3`},
		{"https://" + statsAddr + "/v1/recommendations", `"name":"chat-00001"`},
	} {
		resp, err := statsClient.Get(u.url)
		must(err)
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK || !strings.Contains(string(b), u.want) {
			t.Errorf("GET %s: %s, body lacks %q", u.url, resp.Status, u.want)
		}
	}
	if strings.Contains(logs.String(), "forbidden") {
		t.Errorf("the RBAC of %s is not enough:\n%s", rbacFile, logs.String())
	}

	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("run after cancel: %v", err)
		}
	case <-time.After(15 * time.Second):
		t.Fatal("the autoscaler did not exit within 15s of cancellation")
	}
}

// applyRBAC creates the roles and bindings of a multi-document manifest.
func applyRBAC(t *testing.T, c client.Client, manifest []byte) {
	t.Helper()
	dec := utilyaml.NewYAMLOrJSONDecoder(bytes.NewReader(manifest), 4096)
	for {
		var meta metav1.TypeMeta
		var raw runtime.RawExtension
		if err := dec.Decode(&raw); err != nil {
			if errors.Is(err, io.EOF) {
				return
			}
			t.Fatal(err)
		}
		if len(raw.Raw) == 0 {
			continue
		}
		if err := utilyaml.Unmarshal(raw.Raw, &meta); err != nil {
			t.Fatal(err)
		}
		var obj client.Object
		switch meta.Kind {
		case "ClusterRole":
			obj = &rbacv1.ClusterRole{}
		case "ClusterRoleBinding":
			obj = &rbacv1.ClusterRoleBinding{}
		case "Role":
			obj = &rbacv1.Role{}
		case "RoleBinding":
			obj = &rbacv1.RoleBinding{}
		default:
			t.Fatalf("unexpected kind %q in the RBAC manifest", meta.Kind)
		}
		if err := utilyaml.Unmarshal(raw.Raw, obj); err != nil {
			t.Fatal(err)
		}
		if err := c.Create(context.Background(), obj); err != nil {
			t.Fatal(err)
		}
	}
}
