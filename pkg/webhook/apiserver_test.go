package webhook_test

// Tests against a real kube-apiserver and etcd (envtest, binaries from
// hack/build-k8s.sh) with Knative Serving's CRDs from the module cache and
// the webhook configurations of config/webhook: the API server calls the
// handlers over TLS, and a real client (and kubectl) sees the result.

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"
	"k8s.io/client-go/rest"
	servingv1 "knative.dev/serving/pkg/apis/serving/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/envtest"
	crwebhook "sigs.k8s.io/controller-runtime/pkg/webhook"
	"sigs.k8s.io/controller-runtime/pkg/webhook/admission"

	"github.com/llmd-kn/llmd-kn/internal/kubetest"
	"github.com/llmd-kn/llmd-kn/pkg/apis"
	"github.com/llmd-kn/llmd-kn/pkg/webhook"
)

// cluster is one API server shared by the tests of this package.
type cluster struct {
	client     client.Client
	warnings   *warnings
	kubeconfig string
	kubectl    string // empty when not built
	stop       func()
}

var (
	clusterOnce sync.Once
	shared      *cluster
	sharedErr   error
)

func TestMain(m *testing.M) {
	code := m.Run()
	if shared != nil {
		shared.stop()
	}
	os.Exit(code)
}

// apiServer starts the shared API server on first use, or skips.
func apiServer(t *testing.T) *cluster {
	t.Helper()
	assets := kubetest.AssetsOrSkip(t)
	clusterOnce.Do(func() {
		start := time.Now()
		shared, sharedErr = startCluster(assets)
		if sharedErr == nil {
			fmt.Fprintf(os.Stderr, "envtest: API server, CRDs and webhook up in %.1fs\n", time.Since(start).Seconds())
		}
	})
	if sharedErr != nil {
		t.Fatal(sharedErr)
	}
	return shared
}

// warnings records the warnings the API server relays from the webhook.
type warnings struct {
	mu   sync.Mutex
	list []string
}

func (w *warnings) HandleWarningHeaderWithContext(_ context.Context, _ int, _ string, text string) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.list = append(w.list, text)
}

func (w *warnings) take() []string {
	w.mu.Lock()
	defer w.mu.Unlock()
	l := w.list
	w.list = nil
	return l
}

func startCluster(assets string) (*cluster, error) {
	root, err := kubetest.RepoRoot()
	if err != nil {
		return nil, err
	}
	crdPaths, err := kubetest.ServingCRDs("service", "configuration", "revision", "route")
	if err != nil {
		return nil, err
	}
	env := &envtest.Environment{
		BinaryAssetsDirectory: assets,
		ErrorIfCRDPathMissing: true,
		CRDInstallOptions:     envtest.CRDInstallOptions{Paths: crdPaths},
		WebhookInstallOptions: envtest.WebhookInstallOptions{
			Paths: []string{filepath.Join(root, "config", "webhook", "500-webhooks.yaml")},
		},
	}
	cfg, err := env.Start()
	if err != nil {
		return nil, fmt.Errorf("envtest: %w", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	stop := func() {
		cancel()
		_ = env.Stop()
	}
	fail := func(err error) (*cluster, error) {
		stop()
		return nil, err
	}

	scheme := runtime.NewScheme()
	if err := clientgoscheme.AddToScheme(scheme); err != nil {
		return fail(err)
	}
	if err := servingv1.AddToScheme(scheme); err != nil {
		return fail(err)
	}
	reader, err := client.New(cfg, client.Options{Scheme: scheme})
	if err != nil {
		return fail(err)
	}
	knative := &webhook.KnativeConfig{Reader: reader}
	wo := env.WebhookInstallOptions
	srv := crwebhook.NewServer(crwebhook.Options{Host: wo.LocalServingHost, Port: wo.LocalServingPort, CertDir: wo.LocalServingCertDir})
	srv.Register(webhook.DefaultingPath, &admission.Webhook{Handler: &webhook.Defaulter{Config: knative}})
	srv.Register(webhook.ValidationPath, &admission.Webhook{Handler: &webhook.Validator{Config: knative, Vocabulary: vocabulary}})
	go func() { _ = srv.Start(ctx) }()
	addr := net.JoinHostPort(wo.LocalServingHost, strconv.Itoa(wo.LocalServingPort))
	if err := waitTLS(addr, 30*time.Second); err != nil {
		return fail(err)
	}

	rec := &warnings{}
	wcfg := rest.CopyConfig(cfg)
	wcfg.WarningHandlerWithContext = rec
	c, err := client.New(wcfg, client.Options{Scheme: scheme})
	if err != nil {
		return fail(err)
	}
	for _, ns := range []string{webhook.KnativeNamespace, "test"} {
		if err := c.Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}); err != nil {
			return fail(err)
		}
	}
	cl := &cluster{client: c, warnings: rec, stop: stop}

	user, err := env.AddUser(envtest.User{Name: "admin", Groups: []string{"system:masters"}}, nil)
	if err != nil {
		return fail(err)
	}
	kc, err := user.KubeConfig()
	if err != nil {
		return fail(err)
	}
	dir, err := os.MkdirTemp("", "webhook-kubeconfig-")
	if err != nil {
		return fail(err)
	}
	cl.kubeconfig = filepath.Join(dir, "kubeconfig")
	if err := os.WriteFile(cl.kubeconfig, kc, 0o600); err != nil {
		return fail(err)
	}
	if _, err := os.Stat(filepath.Join(assets, "kubectl")); err == nil {
		cl.kubectl = filepath.Join(assets, "kubectl")
	}
	cl.stop = func() {
		stop()
		os.RemoveAll(dir)
	}
	return cl, nil
}

func waitTLS(addr string, limit time.Duration) error {
	deadline := time.Now().Add(limit)
	for {
		conn, err := tls.Dial("tcp", addr, &tls.Config{InsecureSkipVerify: true}) //nolint:gosec // only waits for the listener
		if err == nil {
			return conn.Close()
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("webhook server at %s not up: %w", addr, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

var vocabulary = apis.Vocabulary{
	RoutingProfiles: []string{"default", "least-request", "prefix-approx", "kv-precise"},
	Tiers:           []string{"critical", "standard", "batch"},
	SimProfiles:     []string{"llama-3.1-8b-h100"},
}

// setKnativeConfig makes the cluster's Knative configuration data (nil
// removes the ConfigMap).
func setKnativeConfig(t *testing.T, c client.Client, name string, data map[string]string) {
	t.Helper()
	ctx := context.Background()
	cm := &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Namespace: webhook.KnativeNamespace, Name: name}}
	if err := c.Delete(ctx, cm); err != nil && !apierrors.IsNotFound(err) {
		t.Fatal(err)
	}
	if data == nil {
		return
	}
	cm.Data = data
	if err := c.Create(ctx, cm); err != nil {
		t.Fatal(err)
	}
}

func ksvc(name string, ann map[string]string) *servingv1.Service {
	return &servingv1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: "test"},
		Spec: servingv1.ServiceSpec{ConfigurationSpec: servingv1.ConfigurationSpec{Template: servingv1.RevisionTemplateSpec{
			ObjectMeta: metav1.ObjectMeta{Annotations: ann},
			Spec: servingv1.RevisionSpec{PodSpec: corev1.PodSpec{Containers: []corev1.Container{{
				Image: "vllm/vllm-openai:v0.11.0",
				Args:  []string{"--model", "meta-llama/Llama-3.1-8B-Instruct", "--port", "8000"},
				// TCP: the CRD schema defaults it.
				Ports: []corev1.ContainerPort{{ContainerPort: 8000, Protocol: corev1.ProtocolTCP}},
			}}}},
		}}},
	}
}

func get(t *testing.T, c client.Client, name string) *servingv1.Service {
	t.Helper()
	var s servingv1.Service
	if err := c.Get(context.Background(), types.NamespacedName{Namespace: "test", Name: name}, &s); err != nil {
		t.Fatal(err)
	}
	return &s
}

func TestAPIServerDefaultsLLMService(t *testing.T) {
	cl := apiServer(t)
	ctx := context.Background()
	setKnativeConfig(t, cl.client, "config-features", map[string]string{"kubernetes.podspec-fieldref": "enabled"})
	setKnativeConfig(t, cl.client, "config-defaults", map[string]string{"max-revision-timeout-seconds": "3600"})
	t.Cleanup(func() {
		setKnativeConfig(t, cl.client, "config-features", nil)
		setKnativeConfig(t, cl.client, "config-defaults", nil)
	})

	svc := ksvc("llama", map[string]string{
		apis.DisaggregationAnnotation: apis.DisaggregationPrefillDecode,
		apis.RoutingProfileAnnotation: "kv-precise",
	})
	if err := cl.client.Create(ctx, svc); err != nil {
		t.Fatal(err)
	}
	got := get(t, cl.client, "llama")
	ann := got.Spec.Template.Annotations
	for k, v := range map[string]string{
		apis.ClassAnnotation:                    apis.AutoscalerClass,
		apis.TargetBurstCapacityAnnotation:      "-1",
		"serving.knative.dev/progress-deadline": webhook.ProgressDeadline,
		apis.RoutingProfileAnnotation:           "kv-precise",
	} {
		if ann[k] != v {
			t.Errorf("annotation %s = %q, want %q", k, ann[k], v)
		}
	}
	spec := got.Spec.Template.Spec
	if spec.TimeoutSeconds == nil || *spec.TimeoutSeconds != 3600 || spec.ResponseStartTimeoutSeconds == nil || *spec.ResponseStartTimeoutSeconds != 600 {
		t.Errorf("timeouts %v/%v, want 3600/600", spec.TimeoutSeconds, spec.ResponseStartTimeoutSeconds)
	}
	c := spec.Containers[0]
	args := strings.Join(c.Args, " ")
	for _, want := range []string{
		"--enable-prefix-caching",
		"--scheduling-policy priority",
		`--kv-events-config {"enable_kv_cache_events":true,"publisher":"zmq","endpoint":"tcp://*:5557","topic":"kv@$(POD_IP)@meta-llama/Llama-3.1-8B-Instruct"}`,
		`--kv-transfer-config {"kv_connector":"NixlConnector","kv_role":"kv_both"}`,
	} {
		if !strings.Contains(args, want) {
			t.Errorf("args %q lack %q", args, want)
		}
	}
	if !slices.ContainsFunc(c.Env, func(e corev1.EnvVar) bool {
		return e.Name == "POD_IP" && e.ValueFrom != nil && e.ValueFrom.FieldRef != nil && e.ValueFrom.FieldRef.FieldPath == "status.podIP"
	}) {
		t.Errorf("env %v lacks POD_IP from status.podIP", c.Env)
	}
	if p := c.ReadinessProbe; p == nil || p.HTTPGet == nil || p.HTTPGet.Path != "/health" || p.HTTPGet.Port.IntValue() != 8000 {
		t.Errorf("readiness probe %+v, want httpGet /health on 8000", p)
	}
}

func TestAPIServerRejectsBadAnnotations(t *testing.T) {
	cl := apiServer(t)
	const tmpl = "spec.template.metadata.annotations"
	for i, tc := range []struct {
		name        string
		ann         map[string]string
		svcAnn      map[string]string
		path, words string
	}{
		{name: "routing profile", ann: map[string]string{apis.RoutingProfileAnnotation: "fastest"},
			path: tmpl + "[llm-d.ai/routing-profile]", words: `invalid value "fastest": must be one of default, least-request, prefix-approx, kv-precise`},
		{name: "disaggregation", ann: map[string]string{apis.DisaggregationAnnotation: "yes"},
			path: tmpl + "[llm-d.ai/disaggregation]", words: "must be one of none, prefill-decode"},
		{name: "negative threshold", ann: map[string]string{apis.PDThresholdAnnotation: "-5"},
			path: tmpl + "[llm-d.ai/pd-threshold-tokens]", words: "must be an integer >= 0"},
		{name: "ttft", ann: map[string]string{apis.SLOTTFTAnnotation: "fast"},
			path: tmpl + "[llm-d.ai/slo-ttft]", words: "must be a positive duration up to 1h, like 500ms or 2s"},
		{name: "percentile", ann: map[string]string{apis.SLOPercentileAnnotation: "100"},
			path: tmpl + "[llm-d.ai/slo-percentile]", words: "must be a number between 0 and 100, like 90 or 99.9"},
		{name: "tier", ann: map[string]string{apis.SLOTierAnnotation: "gold"},
			path: tmpl + "[llm-d.ai/slo-tier]", words: `unknown tier "gold": must be one of critical, standard, batch`},
		{name: "typo in a key", ann: map[string]string{"llm-d.ai/modle": "m"},
			path: tmpl + "[llm-d.ai/modle]", words: "unknown llm-d annotation (known: " + knownAnnotations() + ")"},
		{name: "prefill scale without P/D", ann: map[string]string{apis.PrefillMinScaleAnnotation: "1"},
			path: tmpl + "[llm-d.ai/prefill-min-scale]", words: "only meaningful with llm-d.ai/disaggregation: prefill-decode"},
		{name: "on the Service only", ann: map[string]string{apis.ModelAnnotation: "m"}, svcAnn: map[string]string{apis.SLOTierAnnotation: "critical"},
			path: "metadata.annotations[llm-d.ai/slo-tier]", words: "llm-d annotations configure revisions: set it on the revision template, spec.template.metadata.annotations (kn: --annotation or --annotation-revision, not --annotation-service)"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			svc := ksvc("bad-"+strconv.Itoa(i), tc.ann)
			svc.Annotations = tc.svcAnn
			err := cl.client.Create(context.Background(), svc)
			if err == nil {
				t.Fatal("created; want a rejection")
			}
			msg := err.Error()
			if !strings.Contains(msg, "validation failed: ") || !strings.Contains(msg, tc.words+": "+tc.path) {
				t.Errorf("error %q\nwant it to contain %q", msg, tc.words+": "+tc.path)
			}
			if !apierrors.IsBadRequest(err) {
				t.Errorf("status %v, want BadRequest", apierrors.ReasonForError(err))
			}
		})
	}
}

func TestAPIServerLeavesPlainServicesAlone(t *testing.T) {
	cl := apiServer(t)
	svc := ksvc("plain", map[string]string{"autoscaling.knative.dev/min-scale": "1"})
	sent := svc.Spec.DeepCopy()
	if err := cl.client.Create(context.Background(), svc); err != nil {
		t.Fatal(err)
	}
	got := get(t, cl.client, "plain")
	if !equalJSON(t, sent, &got.Spec) {
		t.Errorf("a Service without llm-d annotations changed:\nsent %+v\ngot  %+v", sent, got.Spec)
	}
}

func TestAPIServerUpdateIsIdempotent(t *testing.T) {
	cl := apiServer(t)
	ctx := context.Background()
	setKnativeConfig(t, cl.client, "config-features", map[string]string{"kubernetes.podspec-fieldref": "enabled"})
	t.Cleanup(func() { setKnativeConfig(t, cl.client, "config-features", nil) })
	if err := cl.client.Create(ctx, ksvc("again", map[string]string{apis.ModelAnnotation: "llama"})); err != nil {
		t.Fatal(err)
	}
	first := get(t, cl.client, "again")

	// The stored object sent back unchanged: the webhook adds nothing, so
	// the API server stores nothing new.
	if err := cl.client.Update(ctx, first.DeepCopy()); err != nil {
		t.Fatal(err)
	}
	second := get(t, cl.client, "again")
	if second.ResourceVersion != first.ResourceVersion || second.Generation != first.Generation {
		t.Errorf("no-op update stored a change: resourceVersion %s -> %s, generation %d -> %d",
			first.ResourceVersion, second.ResourceVersion, first.Generation, second.Generation)
	}

	// A user change is kept; what the webhook owns follows the model.
	second.Spec.Template.Annotations[apis.ModelAnnotation] = "llama-2"
	second.Spec.Template.Spec.Containers[0].Args = append(second.Spec.Template.Spec.Containers[0].Args, "--max-model-len", "8192")
	if err := cl.client.Update(ctx, second); err != nil {
		t.Fatal(err)
	}
	third := get(t, cl.client, "again")
	args := strings.Join(third.Spec.Template.Spec.Containers[0].Args, " ")
	if !strings.Contains(args, "--max-model-len 8192") || !strings.Contains(args, `"topic":"kv@$(POD_IP)@llama-2"`) ||
		strings.Count(args, "--enable-prefix-caching") != 1 || strings.Count(args, "--kv-events-config") != 1 {
		t.Errorf("args after update: %s", args)
	}
}

func TestAPIServerWarnsWithoutDownwardAPI(t *testing.T) {
	cl := apiServer(t)
	cl.warnings.take()
	if err := cl.client.Create(context.Background(), ksvc("nofieldref", map[string]string{apis.ModelAnnotation: "m"})); err != nil {
		t.Fatal(err)
	}
	w := strings.Join(cl.warnings.take(), "\n")
	if !strings.Contains(w, "kubernetes.podspec-fieldref") {
		t.Errorf("warnings %q, want one about kubernetes.podspec-fieldref", w)
	}
	c := get(t, cl.client, "nofieldref").Spec.Template.Spec.Containers[0]
	if strings.Contains(strings.Join(c.Args, " "), "--kv-events-config") || len(c.Env) != 0 {
		t.Errorf("KV events configured without the downward API: args %q env %v", c.Args, c.Env)
	}
}

func TestAPIServerConfigurationsAndRevisions(t *testing.T) {
	cl := apiServer(t)
	ctx := context.Background()
	base := ksvc("x", map[string]string{apis.ModelAnnotation: "m"}).Spec.ConfigurationSpec

	standalone := &servingv1.Configuration{ObjectMeta: metav1.ObjectMeta{Name: "standalone", Namespace: "test"}, Spec: *base.DeepCopy()}
	if err := cl.client.Create(ctx, standalone); err != nil {
		t.Fatal(err)
	}
	if got := standalone.Spec.Template.Annotations[apis.ClassAnnotation]; got != apis.AutoscalerClass {
		t.Errorf("stand-alone Configuration: class %q, want %q", got, apis.AutoscalerClass)
	}

	owned := &servingv1.Configuration{ObjectMeta: metav1.ObjectMeta{Name: "owned", Namespace: "test",
		Labels: map[string]string{"serving.knative.dev/service": "owner"}}, Spec: *base.DeepCopy()}
	if err := cl.client.Create(ctx, owned); err != nil {
		t.Fatal(err)
	}
	if _, ok := owned.Spec.Template.Annotations[apis.ClassAnnotation]; ok {
		t.Errorf("a Service-owned Configuration was defaulted: %v", owned.Spec.Template.Annotations)
	}

	rev := &servingv1.Revision{
		ObjectMeta: metav1.ObjectMeta{Name: "rev", Namespace: "test", Annotations: map[string]string{apis.AutoscalerModeAnnotation: "maybe"}},
		Spec:       *base.Template.Spec.DeepCopy(),
	}
	err := cl.client.Create(ctx, rev)
	if err == nil || !strings.Contains(err.Error(), "must be one of act, advise: metadata.annotations[llm-d.ai/autoscaler-mode]") {
		t.Errorf("Revision with a bad annotation: %v", err)
	}
}

// TestKubectlShowsTheFieldPath applies a bad manifest with kubectl, a
// client nobody here wrote, and reads what its user would.
func TestKubectlShowsTheFieldPath(t *testing.T) {
	cl := apiServer(t)
	if cl.kubectl == "" {
		t.Skip("kubectl not built: run hack/build-k8s.sh")
	}
	manifest := `apiVersion: serving.knative.dev/v1
kind: Service
metadata:
  name: kubectl-bad
  namespace: test
spec:
  template:
    metadata:
      annotations:
        llm-d.ai/routing-profile: fastest
    spec:
      containers:
      - image: vllm/vllm-openai:v0.11.0
        args: [meta-llama/Llama-3.1-8B-Instruct]
`
	run := func(manifest string) (string, error) {
		cmd := exec.Command(cl.kubectl, "--kubeconfig", cl.kubeconfig, "apply", "-f", "-")
		cmd.Stdin = strings.NewReader(manifest)
		var out bytes.Buffer
		cmd.Stdout, cmd.Stderr = &out, &out
		err := cmd.Run()
		return out.String(), err
	}
	out, err := run(manifest)
	var ee *exec.ExitError
	if !errors.As(err, &ee) {
		t.Fatalf("kubectl apply of a bad manifest: err %v, output %s", err, out)
	}
	for _, want := range []string{
		`admission webhook "services.validation.llm-d.ai" denied the request`,
		`validation failed: invalid value "fastest"`,
		`spec.template.metadata.annotations[llm-d.ai/routing-profile]`,
	} {
		if !strings.Contains(out, want) {
			t.Errorf("kubectl said:\n%s\nwant it to contain %q", out, want)
		}
	}

	// Fixed, it applies, and kubectl relays the webhook's warning.
	out, err = run(strings.Replace(manifest, "fastest", "kv-precise", 1))
	if err != nil {
		t.Fatalf("kubectl apply of the fixed manifest: %v\n%s", err, out)
	}
	if !strings.Contains(out, "Warning: KV events not configured") || !strings.Contains(out, "service.serving.knative.dev/kubectl-bad created") {
		t.Errorf("kubectl said:\n%s", out)
	}
}

func equalJSON(t *testing.T, a, b any) bool {
	t.Helper()
	ja, err := json.Marshal(a)
	if err != nil {
		t.Fatal(err)
	}
	jb, err := json.Marshal(b)
	if err != nil {
		t.Fatal(err)
	}
	return bytes.Equal(ja, jb)
}

// knownAnnotations is the list the webhook names for an unknown key, from
// the declarations themselves (a new annotation must not break this test).
func knownAnnotations() string {
	var keys []string
	for _, kv := range apis.Reference() {
		keys = append(keys, kv[0])
	}
	return strings.Join(keys, ", ")
}

// Through the API server: each offload mode gets its vLLM connector, the
// storage credentials are a Secret reference the API server stores as such
// (the Secret need not exist: the webhook never reads it), and a value that
// looks like the Secret's contents is refused without being echoed.
func TestAPIServerInjectsKVOffload(t *testing.T) {
	cl := apiServer(t)
	ctx := context.Background()
	for _, tc := range []struct {
		name, connector string
		ann             map[string]string
		secret          string
		volume          bool
	}{
		{name: "kv-cpu", connector: webhook.OffloadingConnector, ann: map[string]string{apis.KVCPUTierBytesAnnotation: "16Gi"}},
		{name: "kv-disk", connector: webhook.LMCacheConnector, ann: map[string]string{apis.KVDiskTierBytesAnnotation: "100G"}, volume: true},
		{name: "kv-scale-down", connector: webhook.LMCacheConnector, secret: "kv-creds", ann: map[string]string{
			apis.KVOffloadAnnotation: apis.KVOffloadOnScaleDown, apis.KVOffloadURIAnnotation: "s3://kv/llama",
			apis.KVOffloadSecretAnnotation: "kv-creds", apis.KVCPUTierBytesAnnotation: "16G"}},
		{name: "kv-write-through", connector: webhook.LMCacheConnector, ann: map[string]string{
			apis.KVOffloadAnnotation: apis.KVOffloadWriteThrough, apis.KVOffloadURIAnnotation: "gs://kv/llama"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if err := cl.client.Create(ctx, ksvc(tc.name, tc.ann)); err != nil {
				t.Fatal(err)
			}
			got := get(t, cl.client, tc.name)
			c := got.Spec.Template.Spec.Containers[0]
			args := strings.Join(c.Args, " ")
			if !strings.Contains(args, `--kv-transfer-config {"kv_connector":"`+tc.connector+`"`) {
				t.Errorf("args %q lack the %s connector", args, tc.connector)
			}
			var refs []string
			for _, e := range c.EnvFrom {
				if e.SecretRef != nil {
					refs = append(refs, e.SecretRef.Name)
				}
			}
			if (tc.secret == "" && len(refs) != 0) || (tc.secret != "" && !slices.Equal(refs, []string{tc.secret})) {
				t.Errorf("secret references %v, want %q", refs, tc.secret)
			}
			for _, e := range c.Env {
				if e.ValueFrom != nil && e.ValueFrom.SecretKeyRef != nil {
					t.Errorf("env %s reads a Secret key directly", e.Name)
				}
			}
			hasVol := slices.ContainsFunc(got.Spec.Template.Spec.Volumes, func(v corev1.Volume) bool { return v.Name == webhook.KVDiskVolume })
			if hasVol != tc.volume {
				t.Errorf("disk volume %v, want %v", hasVol, tc.volume)
			}
		})
	}
	err := cl.client.Create(ctx, ksvc("kv-pasted", map[string]string{
		apis.KVOffloadAnnotation: apis.KVOffloadOnScaleDown, apis.KVOffloadURIAnnotation: "s3://kv/llama",
		apis.KVOffloadSecretAnnotation: "AWS_SECRET_ACCESS_KEY=hunter2",
	}))
	if err == nil || !strings.Contains(err.Error(), "["+apis.KVOffloadSecretAnnotation+"]") || strings.Contains(err.Error(), "hunter2") {
		t.Errorf("a pasted secret: %v, want a refusal naming the annotation without the value", err)
	}
}
