package webhook_test

import (
	"context"
	"errors"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/go-logr/logr"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"
	servingv1 "knative.dev/serving/pkg/apis/serving/v1"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/envtest"
	"sigs.k8s.io/yaml"

	"github.com/llmd-kn/llmd-kn/internal/kubetest"
	"github.com/llmd-kn/llmd-kn/pkg/apis"
	"github.com/llmd-kn/llmd-kn/pkg/webhook"
)

// TestDeployedAsInACluster runs the webhook as config/webhook deploys it:
// the manifests applied as they are (RBAC, Secret, Service, webhook
// configurations addressed to the Service), the server running as the
// webhook's ServiceAccount with its self-managed certificate, and the API
// server reaching it through the Service's endpoints and trusting it
// through the caBundle the webhook patched in itself. Only the Deployment
// is replaced, by Run in this process, and the Service's endpoints by an
// EndpointSlice naming this host.
func TestDeployedAsInACluster(t *testing.T) {
	assets := kubetest.AssetsOrSkip(t)
	hostIP := nonLoopbackIP()
	if hostIP == "" {
		t.Skip("no non-loopback IPv4 address: the API server refuses loopback endpoints")
	}
	root, err := kubetest.RepoRoot()
	if err != nil {
		t.Fatal(err)
	}
	crdPaths, err := kubetest.ServingCRDs("service", "configuration", "revision", "route")
	if err != nil {
		t.Fatal(err)
	}
	env := &envtest.Environment{
		BinaryAssetsDirectory: assets,
		ErrorIfCRDPathMissing: true,
		CRDInstallOptions:     envtest.CRDInstallOptions{Paths: crdPaths},
	}
	// Webhook Services are then resolved to their endpoints rather than a
	// cluster IP nobody routes here.
	env.ControlPlane.GetAPIServer().Configure().Set("enable-aggregator-routing", "true")
	cfg, err := env.Start()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = env.Stop() })
	ctrl.SetLogger(logr.FromSlogHandler(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn})))

	scheme := runtime.NewScheme()
	for _, add := range []func(*runtime.Scheme) error{clientgoscheme.AddToScheme, servingv1.AddToScheme} {
		if err := add(scheme); err != nil {
			t.Fatal(err)
		}
	}
	admin, err := client.New(cfg, client.Options{Scheme: scheme})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	manifests := filepath.Join(root, "config", "webhook")
	for _, ns := range []string{"llmd-kn", webhook.KnativeNamespace, "test"} {
		if err := admin.Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}); err != nil {
			t.Fatal(err)
		}
	}
	kustomizeDryRun(t, env, assets, manifests)
	for _, f := range []string{"200-serviceaccount.yaml", "200-rbac.yaml", "300-secret.yaml", "400-service.yaml", "500-webhooks.yaml"} {
		applyFile(t, admin, filepath.Join(manifests, f))
	}

	port := freePort(t)
	ready := true
	if err := admin.Create(ctx, &discoveryv1.EndpointSlice{
		ObjectMeta: metav1.ObjectMeta{Namespace: "llmd-kn", Name: "llmd-kn-webhook-host",
			Labels: map[string]string{discoveryv1.LabelServiceName: "llmd-kn-webhook"}},
		AddressType: discoveryv1.AddressTypeIPv4,
		Endpoints:   []discoveryv1.Endpoint{{Addresses: []string{hostIP}, Conditions: discoveryv1.EndpointConditions{Ready: &ready}}},
		Ports:       []discoveryv1.EndpointPort{{Name: ptr("https-webhook"), Port: ptr(int32(port)), Protocol: ptr(corev1.ProtocolTCP)}},
	}); err != nil {
		t.Fatal(err)
	}

	sa, err := env.AddUser(envtest.User{Name: "system:serviceaccount:llmd-kn:llmd-kn-webhook",
		Groups: []string{"system:serviceaccounts", "system:serviceaccounts:llmd-kn", "system:authenticated"}}, nil)
	if err != nil {
		t.Fatal(err)
	}
	certDir := t.TempDir() // before the cleanup below, so removed after Run ends
	runCtx, stop := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() {
		done <- webhook.Run(runCtx, sa.Config(), webhook.Options{
			Port: port, CertDir: certDir, SelfSignedCerts: true,
			Namespace: "llmd-kn", ServiceName: "llmd-kn-webhook", SecretName: "llmd-kn-webhook-certs",
			MutatingWebhookConfiguration: "defaulting.webhook.llm-d.ai", ValidatingWebhookConfiguration: "validation.webhook.llm-d.ai",
			KnativeNamespace: webhook.KnativeNamespace, Vocabulary: vocabulary,
			HealthAddr: "0", MetricsAddr: "0",
		})
	}()
	t.Cleanup(func() {
		stop()
		if err := <-done; err != nil && !errors.Is(err, context.Canceled) {
			t.Errorf("webhook.Run: %v", err)
		}
	})

	// Until the webhook has its certificate published and serves, the API
	// server refuses llm-d Services (failurePolicy Fail).
	start := time.Now()
	svc := ksvc("deployed", map[string]string{apis.ModelAnnotation: "m"})
	for {
		err := admin.Create(ctx, svc.DeepCopy())
		if err == nil {
			break
		}
		select {
		case err := <-done:
			t.Fatalf("webhook.Run returned: %v", err)
		default:
		}
		if time.Since(start) > 60*time.Second {
			t.Fatalf("the API server never admitted through the deployed webhook: %v", err)
		}
		time.Sleep(200 * time.Millisecond)
	}
	t.Logf("webhook serving through its Service %.1fs after start", time.Since(start).Seconds())
	if got := get(t, admin, "deployed").Spec.Template.Annotations[apis.ClassAnnotation]; got != apis.AutoscalerClass {
		t.Errorf("class %q, want %q", got, apis.AutoscalerClass)
	}
	err = admin.Create(ctx, ksvc("deployed-bad", map[string]string{apis.RoutingProfileAnnotation: "fastest"}))
	if err == nil || !strings.Contains(err.Error(), `: spec.template.metadata.annotations[llm-d.ai/routing-profile]`) {
		t.Errorf("bad annotation through the deployed webhook: %v", err)
	}
}

// kustomizeDryRun: what an admin applies, `kubectl apply -k
// config/webhook`, is accepted by the API server as it stands (a
// server-side dry run changes nothing). The namespaces exist already: a dry
// run cannot place objects in a namespace it only pretends to create.
func kustomizeDryRun(t *testing.T, env *envtest.Environment, assets, dir string) {
	t.Helper()
	kubectl := filepath.Join(assets, "kubectl")
	if _, err := os.Stat(kubectl); err != nil {
		t.Log("kubectl not built (hack/build-k8s.sh): kustomize dry run skipped")
		return
	}
	user, err := env.AddUser(envtest.User{Name: "admin", Groups: []string{"system:masters"}}, nil)
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
	out, err := exec.Command(kubectl, "--kubeconfig", kubeconfig, "apply", "--dry-run=server", "-k", dir).CombinedOutput()
	if err != nil {
		t.Fatalf("kubectl apply --dry-run=server -k config/webhook: %v\n%s", err, out)
	}
	for _, want := range []string{
		"deployment.apps/llmd-kn-webhook created (server dry run)",
		"mutatingwebhookconfiguration.admissionregistration.k8s.io/defaulting.webhook.llm-d.ai created (server dry run)",
		"validatingwebhookconfiguration.admissionregistration.k8s.io/validation.webhook.llm-d.ai created (server dry run)",
		"rolebinding.rbac.authorization.k8s.io/llmd-kn-webhook-knative-config created (server dry run)",
	} {
		if !strings.Contains(string(out), want) {
			t.Errorf("kubectl said:\n%s\nwant %q", out, want)
		}
	}
}

func applyFile(t *testing.T, c client.Client, path string) {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	for _, doc := range strings.Split(string(data), "\n---\n") {
		obj, err := decodeManifest([]byte(doc))
		if err != nil {
			t.Fatalf("%s: %v", path, err)
		}
		if obj == nil {
			continue
		}
		if err := c.Create(context.Background(), obj); err != nil {
			t.Fatalf("%s: create %s %s: %v", path, obj.GetObjectKind().GroupVersionKind().Kind, obj.GetName(), err)
		}
	}
}

func nonLoopbackIP() string {
	addrs, err := net.InterfaceAddrs()
	if err != nil {
		return ""
	}
	for _, a := range addrs {
		if n, ok := a.(*net.IPNet); ok && !n.IP.IsLoopback() && n.IP.To4() != nil && !n.IP.IsLinkLocalUnicast() {
			return n.IP.String()
		}
	}
	return ""
}

func freePort(t *testing.T) int {
	t.Helper()
	l, err := net.Listen("tcp", ":0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

func ptr[T any](v T) *T { return &v }

// decodeManifest reads one YAML document; nil when it holds no object.
func decodeManifest(doc []byte) (*unstructured.Unstructured, error) {
	j, err := yaml.YAMLToJSON(doc)
	if err != nil {
		return nil, err
	}
	if string(j) == "null" || string(j) == "{}" {
		return nil, nil
	}
	u := &unstructured.Unstructured{}
	if err := u.UnmarshalJSON(j); err != nil {
		return nil, err
	}
	return u, nil
}
