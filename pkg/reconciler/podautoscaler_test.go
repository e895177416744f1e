package reconciler_test

// Tests against a real kube-apiserver and etcd (envtest, binaries from
// hack/build-k8s.sh) with Knative Serving's Revision and PodAutoscaler CRDs
// from the module cache. envtest runs no controllers: the tests create what
// Knative's revision reconciler would (Revision, its Deployment, the PA) and
// set Deployment status themselves, then check what the reconciler wrote.

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/go-logr/logr"
	"github.com/prometheus/client_golang/prometheus"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	eventsv1 "k8s.io/api/events/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/intstr"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"
	"k8s.io/client-go/util/retry"
	"k8s.io/utils/ptr"
	"knative.dev/pkg/kmeta"
	"knative.dev/serving/pkg/apis/autoscaling/v1alpha1"
	"knative.dev/serving/pkg/apis/serving"
	servingv1 "knative.dev/serving/pkg/apis/serving/v1"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/config"
	"sigs.k8s.io/controller-runtime/pkg/envtest"
	ctrllog "sigs.k8s.io/controller-runtime/pkg/log"
	"sigs.k8s.io/controller-runtime/pkg/manager"
	metricsserver "sigs.k8s.io/controller-runtime/pkg/metrics/server"

	"github.com/llmd-kn/llmd-kn/internal/kubetest"
	"github.com/llmd-kn/llmd-kn/pkg/apis"
	"github.com/llmd-kn/llmd-kn/pkg/autoscaler"
	"github.com/llmd-kn/llmd-kn/pkg/reconciler"
)

const (
	systemNamespace = "llmd-kn"
	activatorSvc    = "llmd-activator"
	tick            = 100 * time.Millisecond
)

// cluster is one API server and one running reconciler shared by the tests.
type cluster struct {
	c        client.Client
	statsURL string
	registry *prometheus.Registry
	// clock is the reconciler's clock where a test moves it (nil: real
	// time).
	clock *shiftedClock
	// kubeconfig is the admin kubeconfig, for other control-plane
	// components.
	kubeconfig []byte
	stop       func()
}

// shiftedClock is real time plus an offset that a test moves forward, so
// that minutes pass for the reconciler in an instant.
type shiftedClock struct{ offset atomic.Int64 }

func (c *shiftedClock) Now() time.Time        { return time.Now().Add(time.Duration(c.offset.Load())) }
func (c *shiftedClock) Shift(d time.Duration) { c.offset.Add(int64(d)) }

var (
	clusterOnce sync.Once
	shared      *cluster
	sharedErr   error

	// A second API server whose reconciler runs on a shiftedClock, for the
	// tests that need minutes to pass; the shared one keeps real time.
	clockClusterOnce sync.Once
	clocked          *cluster
	clockedErr       error
)

func TestMain(m *testing.M) {
	// controller-runtime's own errors (reconcile errors, conflicts) in the
	// test log.
	ctrllog.SetLogger(logr.FromSlogHandler(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn})))
	code := m.Run()
	for _, cl := range []*cluster{shared, clocked} {
		if cl != nil {
			cl.stop()
		}
	}
	os.Exit(code)
}

func apiServer(t *testing.T) *cluster {
	t.Helper()
	assets := kubetest.AssetsOrSkip(t)
	clusterOnce.Do(func() {
		start := time.Now()
		shared, sharedErr = startCluster(assets, nil)
		if sharedErr == nil {
			fmt.Fprintf(os.Stderr, "envtest: API server, CRDs and reconciler up in %.1fs\n", time.Since(start).Seconds())
		}
	})
	if sharedErr != nil {
		t.Fatal(sharedErr)
	}
	return shared
}

// clockCluster is the API server whose reconciler runs on a shiftedClock.
func clockCluster(t *testing.T) *cluster {
	t.Helper()
	assets := kubetest.AssetsOrSkip(t)
	clockClusterOnce.Do(func() {
		start := time.Now()
		clocked, clockedErr = startCluster(assets, &shiftedClock{})
		if clockedErr == nil {
			fmt.Fprintf(os.Stderr, "envtest: second API server (shifted clock) up in %.1fs\n", time.Since(start).Seconds())
		}
	})
	if clockedErr != nil {
		t.Fatal(clockedErr)
	}
	return clocked
}

func startCluster(assets string, clock *shiftedClock) (*cluster, error) {
	crdPaths, err := kubetest.ServingCRDs("revision", "podautoscaler")
	if err != nil {
		return nil, err
	}
	env := &envtest.Environment{
		BinaryAssetsDirectory: assets,
		ErrorIfCRDPathMissing: true,
		CRDInstallOptions:     envtest.CRDInstallOptions{Paths: crdPaths},
	}
	cfg, err := env.Start()
	if err != nil {
		return nil, fmt.Errorf("envtest: %w", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	stop := func() {
		cancel()
		<-done
		_ = env.Stop()
	}
	fail := func(err error) (*cluster, error) {
		cancel()
		close(done)
		_ = env.Stop()
		return nil, err
	}
	scheme := runtime.NewScheme()
	for _, add := range []func(*runtime.Scheme) error{clientgoscheme.AddToScheme, v1alpha1.AddToScheme, servingv1.AddToScheme} {
		if err := add(scheme); err != nil {
			return fail(err)
		}
	}
	mgr, err := ctrl.NewManager(cfg, manager.Options{
		Scheme:                 scheme,
		Metrics:                metricsserver.Options{BindAddress: "0"},
		HealthProbeBindAddress: "0",
		Controller:             config.Controller{SkipNameValidation: ptr.To(true)},
	})
	if err != nil {
		return fail(err)
	}
	base := autoscaler.DefaultConfig()
	base.TickInterval = tick
	base.StableWindow = 6 * time.Second
	reg := prometheus.NewRegistry()
	opts := reconciler.Options{Namespace: systemNamespace, ActivatorService: activatorSvc, Config: base, Registerer: reg}
	if clock != nil {
		opts.Now = clock.Now
	}
	rec, err := reconciler.New(mgr, opts)
	if err != nil {
		return fail(err)
	}
	if err := rec.SetupWithManager(mgr); err != nil {
		return fail(err)
	}
	srv := httptest.NewServer(rec.API(nil, reconciler.Limits{}).Handler())
	go func() {
		defer close(done)
		defer srv.Close()
		if err := mgr.Start(ctx); err != nil {
			fmt.Fprintln(os.Stderr, "manager:", err)
		}
	}()
	c, err := client.New(cfg, client.Options{Scheme: scheme})
	if err != nil {
		stop()
		return nil, err
	}
	// The activator: its namespace and an EndpointSlice with one ready and
	// one unready address.
	if err := c.Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: systemNamespace}}); err != nil {
		stop()
		return nil, err
	}
	if err := c.Create(ctx, activatorSlice("llmd-activator-a", map[string]bool{"10.0.0.5": true, "10.0.0.6": false})); err != nil {
		stop()
		return nil, err
	}
	return &cluster{c: c, statsURL: srv.URL, registry: reg, clock: clock, kubeconfig: env.KubeConfig, stop: stop}, nil
}

func activatorSlice(name string, addrs map[string]bool) *discoveryv1.EndpointSlice {
	es := &discoveryv1.EndpointSlice{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: systemNamespace,
			Labels: map[string]string{discoveryv1.LabelServiceName: activatorSvc}},
		AddressType: discoveryv1.AddressTypeIPv4,
		Ports:       []discoveryv1.EndpointPort{{Name: ptr.To("http"), Port: ptr.To[int32](8080)}},
	}
	keys := make([]string, 0, len(addrs))
	for a := range addrs {
		keys = append(keys, a)
	}
	slices.Sort(keys)
	for _, a := range keys {
		es.Endpoints = append(es.Endpoints, discoveryv1.Endpoint{Addresses: []string{a},
			Conditions: discoveryv1.EndpointConditions{Ready: ptr.To(addrs[a])}})
	}
	return es
}

// revisionFixture is what Knative's controllers would have made for one
// revision: the Revision, its Deployment and its PodAutoscaler.
type revisionFixture struct {
	ns, name string
	rev      *servingv1.Revision
	deploy   *appsv1.Deployment
	pa       *v1alpha1.PodAutoscaler
	// prefill: the revision is disaggregated (checks of its prefill
	// Deployment apply).
	prefill bool
}

var nsCounter int

// newRevision creates a namespace and a revision of the given class with
// annotations, a Deployment at replicas and its PodAutoscaler.
func newRevision(t *testing.T, cl *cluster, class string, annotations map[string]string, replicas int32) *revisionFixture {
	t.Helper()
	ctx := context.Background()
	nsCounter++
	ns := fmt.Sprintf("t%d-%s", nsCounter, strings.ToLower(strings.NewReplacer("/", "-", "_", "-").Replace(t.Name())))
	if len(ns) > 60 {
		ns = ns[:60]
	}
	ns = strings.TrimRight(ns, "-")
	must(t, cl.c.Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}))
	name := "chat-00001"
	ann := map[string]string{apis.ClassAnnotation: class}
	for k, v := range annotations {
		ann[k] = v
	}
	labels := map[string]string{serving.ServiceLabelKey: "chat", serving.ConfigurationLabelKey: "chat"}
	rev := &servingv1.Revision{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns, Annotations: ann, Labels: labels},
		Spec: servingv1.RevisionSpec{PodSpec: corev1.PodSpec{Containers: []corev1.Container{{
			Name: "user-container", Image: "ghcr.example/vllm:latest",
		}}}},
	}
	must(t, cl.c.Create(ctx, rev))
	podLabels := map[string]string{
		serving.RevisionLabelKey: name, serving.RevisionUID: string(rev.UID),
		serving.ServiceLabelKey: "chat", serving.ConfigurationLabelKey: "chat", "app": name,
	}
	deploy := &appsv1.Deployment{
		ObjectMeta: metav1.ObjectMeta{Name: name + "-deployment", Namespace: ns, Labels: podLabels,
			OwnerReferences: []metav1.OwnerReference{*kmeta.NewControllerRef(rev)}},
		Spec: appsv1.DeploymentSpec{
			Replicas: ptr.To(replicas),
			Selector: &metav1.LabelSelector{MatchLabels: map[string]string{serving.RevisionUID: string(rev.UID)}},
			Template: corev1.PodTemplateSpec{
				ObjectMeta: metav1.ObjectMeta{Labels: podLabels},
				Spec: corev1.PodSpec{Containers: []corev1.Container{
					{Name: "user-container", Image: "vllm", Args: []string{"--model", "m", "--max-num-seqs", "64"},
						Ports: []corev1.ContainerPort{{Name: "user-port", ContainerPort: 8080}},
						Lifecycle: &corev1.Lifecycle{PreStop: &corev1.LifecycleHandler{HTTPGet: &corev1.HTTPGetAction{
							Path: "/wait-for-drain", Port: intstr.FromInt32(8022)}}}},
					{Name: reconciler.QueueProxyContainer, Image: "queue"},
				}},
			},
		},
	}
	must(t, cl.c.Create(ctx, deploy))
	paLabels := map[string]string{serving.RevisionLabelKey: name, serving.ServiceLabelKey: "chat", serving.ConfigurationLabelKey: "chat"}
	pa := &v1alpha1.PodAutoscaler{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns, Annotations: ann, Labels: paLabels,
			OwnerReferences: []metav1.OwnerReference{*kmeta.NewControllerRef(rev)}},
		Spec: v1alpha1.PodAutoscalerSpec{
			ScaleTargetRef: corev1.ObjectReference{APIVersion: "apps/v1", Kind: "Deployment", Name: deploy.Name},
			ProtocolType:   "http1",
			Reachability:   v1alpha1.ReachabilityReachable,
		},
	}
	must(t, cl.c.Create(ctx, pa))
	return &revisionFixture{ns: ns, name: name, rev: rev, deploy: deploy, pa: pa}
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

// eventually retries check until it returns nil or timeout passes.
func eventually(t *testing.T, timeout time.Duration, what string, check func() error) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		err := check()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: still failing after %v: %v", what, timeout, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func (f *revisionFixture) key(name string) types.NamespacedName {
	return types.NamespacedName{Namespace: f.ns, Name: name}
}

func (f *revisionFixture) getPA(t *testing.T, cl *cluster) *v1alpha1.PodAutoscaler {
	t.Helper()
	pa := &v1alpha1.PodAutoscaler{}
	must(t, cl.c.Get(context.Background(), f.key(f.name), pa))
	return pa
}

func replicasOf(cl *cluster, key types.NamespacedName) (int32, error) {
	d := &appsv1.Deployment{}
	if err := cl.c.Get(context.Background(), key, d); err != nil {
		return 0, err
	}
	return ptr.Deref(d.Spec.Replicas, -1), nil
}

// setReady sets a Deployment's ready replicas, as the Deployment controller
// would once pods pass their readiness probes.
func setReady(t *testing.T, cl *cluster, key types.NamespacedName, ready int32) {
	t.Helper()
	// The autoscaler writes the same Deployment (its scale) meanwhile:
	// retry on a conflict, as the Deployment controller would.
	must(t, retry.RetryOnConflict(retry.DefaultRetry, func() error {
		d := &appsv1.Deployment{}
		if err := cl.c.Get(context.Background(), key, d); err != nil {
			return err
		}
		d.Status.Replicas, d.Status.ReadyReplicas, d.Status.AvailableReplicas = ready, ready, ready
		return cl.c.Status().Update(context.Background(), d)
	}))
}

func condStatus(pa *v1alpha1.PodAutoscaler, typ string) (string, string) {
	for _, c := range pa.Status.Conditions {
		if string(c.Type) == typ {
			return string(c.Status), c.Reason
		}
	}
	return "", ""
}

func (cl *cluster) post(t *testing.T, path, body string) int {
	t.Helper()
	resp, err := http.Post(cl.statsURL+path, "application/json", strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	_, _ = io.Copy(io.Discard, resp.Body)
	return resp.StatusCode
}

func (cl *cluster) recommendation(t *testing.T, ns, name string) (reconciler.RevisionRecommendation, bool) {
	t.Helper()
	resp, err := http.Get(cl.statsURL + "/v1/recommendations")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var recs []reconciler.RevisionRecommendation
	must(t, json.NewDecoder(resp.Body).Decode(&recs))
	for _, r := range recs {
		if r.Namespace == ns && r.Name == name {
			return r, true
		}
	}
	return reconciler.RevisionRecommendation{}, false
}

// postLoad reports, as an activator would, two snapshots of a revision
// 200 ms apart whose difference is a heavy load: 10^7 uncached prompt
// tokens and 10^6 output tokens per second over 10^4 requests per second
// (ten times what drives the max scales, so that a busy machine that
// stretches the 200 ms tenfold still reports a load above them).
func (cl *cluster) postLoad(t *testing.T, f *revisionFixture) {
	t.Helper()
	snap := func(reqs, prompt, out int64) string {
		return fmt.Sprintf(`{"activator":"llmd-activator-test","revisions":[{"revision":"%s/%s","requestsByTier":{"standard":%d},
			"promptTokens":%d,"completionTokens":%d,"uncachedPrefillTokens":%d,"queuedByTier":{},"inFlight":500}]}`,
			f.ns, f.name, reqs, prompt, out, prompt)
	}
	if code := cl.post(t, "/v1/stats", snap(0, 0, 0)); code != http.StatusAccepted {
		t.Fatalf("POST /v1/stats: %d", code)
	}
	time.Sleep(200 * time.Millisecond)
	if code := cl.post(t, "/v1/stats", snap(2_000, 2_000_000, 200_000)); code != http.StatusAccepted {
		t.Fatalf("POST /v1/stats: %d", code)
	}
}

func checkControlledByPA(obj client.Object, pa *v1alpha1.PodAutoscaler) error {
	ref := metav1.GetControllerOf(obj)
	if ref == nil || ref.UID != pa.UID || ref.Kind != "PodAutoscaler" || !ptr.Deref(ref.BlockOwnerDeletion, false) {
		return fmt.Errorf("%s: controller %+v, want the PodAutoscaler %s with blockOwnerDeletion", obj.GetName(), ref, pa.UID)
	}
	return nil
}

// TestRevisionTrafficPathAndStatus: a revision of the class that is not
// disaggregated gets its Service and EndpointSlice pointing at the
// activator, and the PA status Knative's revision reconciler turns into a
// ready revision once the Deployment has a ready replica.
func TestRevisionTrafficPathAndStatus(t *testing.T) {
	cl := apiServer(t)
	ctx := context.Background()
	f := newRevision(t, cl, apis.AutoscalerClass, nil, 1)
	other := newRevisionIn(t, cl, f.ns, "kpa.autoscaling.knative.dev")

	svc := &corev1.Service{}
	eventually(t, 30*time.Second, "revision Service", func() error { return cl.c.Get(ctx, f.key(f.name), svc) })
	pa := f.getPA(t, cl)
	if len(svc.Spec.Selector) != 0 || len(svc.Spec.Ports) != 2 ||
		svc.Spec.Ports[0].Name != "http" || svc.Spec.Ports[0].Port != 80 || svc.Spec.Ports[0].TargetPort.IntValue() != 8080 ||
		svc.Spec.Ports[1].Name != "http2" || svc.Spec.Ports[1].Port != 81 || svc.Spec.Ports[1].TargetPort.IntValue() != 8080 {
		t.Errorf("service spec: %+v", svc.Spec)
	}
	must(t, checkControlledByPA(svc, pa))

	es := &discoveryv1.EndpointSlice{}
	eventually(t, 30*time.Second, "revision EndpointSlice", func() error { return cl.c.Get(ctx, f.key(f.name), es) })
	must(t, checkControlledByPA(es, pa))
	if es.Labels[discoveryv1.LabelServiceName] != f.name || es.Labels[discoveryv1.LabelManagedBy] != reconciler.EndpointSliceManager {
		t.Errorf("endpointslice labels %v", es.Labels)
	}
	if got := sliceAddrs(es); !slices.Equal(got, []string{"10.0.0.5"}) {
		t.Errorf("endpoints %v, want the activator's ready address 10.0.0.5", got)
	}
	if len(es.Ports) != 2 || *es.Ports[0].Name != "http" || *es.Ports[0].Port != 8080 || *es.Ports[1].Name != "http2" {
		t.Errorf("endpointslice ports %+v", es.Ports)
	}
	// What the networking layers of Knative v0.50.0 (net-kourier, Istio,
	// Contour) and kube-proxy read: the EndpointSlices labelled with the
	// Service's name. Exactly one, this package's, and no core/v1
	// Endpoints, which kube-controller-manager's EndpointSlice mirroring
	// would copy into a second slice of the same addresses.
	var svcSlices discoveryv1.EndpointSliceList
	must(t, cl.c.List(ctx, &svcSlices, client.InNamespace(f.ns), client.MatchingLabels{discoveryv1.LabelServiceName: f.name}))
	if len(svcSlices.Items) != 1 || svcSlices.Items[0].Name != f.name {
		t.Errorf("EndpointSlices of Service %s: %d, want exactly its own", f.name, len(svcSlices.Items))
	}
	if err := cl.c.Get(ctx, f.key(f.name), &corev1.Endpoints{}); !apierrors.IsNotFound(err) {
		t.Errorf("core/v1 Endpoints %s: %v, want none (EndpointSlice only)", f.name, err)
	}

	// Before a replica is ready: initial scale 1, activating.
	eventually(t, 30*time.Second, "status before ready", func() error {
		pa = f.getPA(t, cl)
		sks, _ := condStatus(pa, "SKSReady")
		act, reason := condStatus(pa, "Active")
		init, _ := condStatus(pa, "ScaleTargetInitialized")
		if pa.Status.DesiredScale == nil || *pa.Status.DesiredScale != 1 || pa.Status.ActualScale == nil || *pa.Status.ActualScale != 0 ||
			sks != "True" || act != "Unknown" || reason != reconciler.ReasonQueued || init != "Unknown" ||
			pa.Status.ServiceName != f.name || pa.Status.MetricsServiceName != f.name {
			return fmt.Errorf("status %+v", pa.Status)
		}
		return nil
	})
	var rs servingv1.RevisionStatus
	rs.InitializeConditions()
	rs.PropagateAutoscalerStatus(&pa.Status)
	if rs.GetCondition(servingv1.RevisionConditionResourcesAvailable).IsTrue() {
		t.Error("revision resources available before a replica is ready")
	}

	setReady(t, cl, f.key(f.deploy.Name), 1)
	eventually(t, 30*time.Second, "status once ready", func() error {
		pa = f.getPA(t, cl)
		if !pa.IsReady() || *pa.Status.ActualScale != 1 || *pa.Status.DesiredScale != 1 || pa.Status.ObservedGeneration != pa.Generation {
			return fmt.Errorf("status %+v", pa.Status)
		}
		return nil
	})
	// What Knative's revision reconciler makes of it.
	rs = servingv1.RevisionStatus{}
	rs.InitializeConditions()
	rs.PropagateAutoscalerStatus(&pa.Status)
	if !rs.GetCondition(servingv1.RevisionConditionResourcesAvailable).IsTrue() || !rs.GetCondition(servingv1.RevisionConditionActive).IsTrue() ||
		ptr.Deref(rs.ActualReplicas, -1) != 1 {
		t.Errorf("revision status from the PA: %+v", rs)
	}

	// Idle: no write while nothing changes (no hot loop), over 10 ticks.
	rv := pa.ResourceVersion
	svcRV, esRV := svc.ResourceVersion, es.ResourceVersion
	time.Sleep(10 * tick)
	must(t, cl.c.Get(ctx, f.key(f.name), svc))
	must(t, cl.c.Get(ctx, f.key(f.name), es))
	if pa = f.getPA(t, cl); pa.ResourceVersion != rv || svc.ResourceVersion != svcRV || es.ResourceVersion != esRV {
		t.Errorf("objects rewritten while idle: PA %s->%s, Service %s->%s, EndpointSlice %s->%s",
			rv, pa.ResourceVersion, svcRV, svc.ResourceVersion, esRV, es.ResourceVersion)
	}

	// A new activator pod: every revision's endpoints follow.
	more := activatorSlice("llmd-activator-b", map[string]bool{"10.0.0.7": true})
	must(t, cl.c.Create(ctx, more))
	t.Cleanup(func() { _ = cl.c.Delete(ctx, more) })
	eventually(t, 30*time.Second, "endpoints after a new activator", func() error {
		must(t, cl.c.Get(ctx, f.key(f.name), es))
		if got := sliceAddrs(es); !slices.Equal(got, []string{"10.0.0.5", "10.0.0.7"}) {
			return fmt.Errorf("endpoints %v", got)
		}
		return nil
	})

	// The PA of another class, in the same namespace, was left alone.
	t.Run("other class ignored", func(t *testing.T) {
		opa := &v1alpha1.PodAutoscaler{}
		must(t, cl.c.Get(ctx, types.NamespacedName{Namespace: f.ns, Name: other}, opa))
		if len(opa.Status.Conditions) != 0 || opa.Status.DesiredScale != nil || opa.Status.ServiceName != "" {
			t.Errorf("status of a %s PA was written: %+v", opa.Class(), opa.Status)
		}
		if err := cl.c.Get(ctx, types.NamespacedName{Namespace: f.ns, Name: other}, &corev1.Service{}); !apierrors.IsNotFound(err) {
			t.Errorf("service for a kpa PA: %v", err)
		}
		if r, err := replicasOf(cl, types.NamespacedName{Namespace: f.ns, Name: other + "-deployment"}); err != nil || r != 3 {
			t.Errorf("kpa Deployment replicas %d (%v), want untouched 3", r, err)
		}
		if _, ok := cl.recommendation(t, f.ns, other); ok {
			t.Error("a kpa revision has a recommendation")
		}
		if code := cl.post(t, "/v1/poke", fmt.Sprintf(`{"namespace":%q,"name":%q}`, f.ns, other)); code != http.StatusNotFound {
			t.Errorf("poke of a kpa revision: %d, want 404", code)
		}
	})
}

// newRevisionIn adds a second revision (named other-00001, 3 replicas) of
// class to namespace ns.
func newRevisionIn(t *testing.T, cl *cluster, ns, class string) string {
	t.Helper()
	ctx := context.Background()
	name := "other-00001"
	ann := map[string]string{apis.ClassAnnotation: class}
	rev := &servingv1.Revision{ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns, Annotations: ann},
		Spec: servingv1.RevisionSpec{PodSpec: corev1.PodSpec{Containers: []corev1.Container{{Image: "vllm"}}}}}
	must(t, cl.c.Create(ctx, rev))
	labels := map[string]string{serving.RevisionLabelKey: name}
	must(t, cl.c.Create(ctx, &appsv1.Deployment{
		ObjectMeta: metav1.ObjectMeta{Name: name + "-deployment", Namespace: ns, Labels: labels},
		Spec: appsv1.DeploymentSpec{Replicas: ptr.To[int32](3), Selector: &metav1.LabelSelector{MatchLabels: labels},
			Template: corev1.PodTemplateSpec{ObjectMeta: metav1.ObjectMeta{Labels: labels},
				Spec: corev1.PodSpec{Containers: []corev1.Container{{Name: "user-container", Image: "vllm"}}}}},
	}))
	must(t, cl.c.Create(ctx, &v1alpha1.PodAutoscaler{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns, Annotations: ann,
			OwnerReferences: []metav1.OwnerReference{*kmeta.NewControllerRef(rev)}},
		Spec: v1alpha1.PodAutoscalerSpec{ScaleTargetRef: corev1.ObjectReference{APIVersion: "apps/v1", Kind: "Deployment", Name: name + "-deployment"},
			ProtocolType: "http1"},
	}))
	return name
}

func sliceAddrs(es *discoveryv1.EndpointSlice) []string {
	var out []string
	for _, ep := range es.Endpoints {
		if ptr.Deref(ep.Conditions.Ready, true) {
			out = append(out, ep.Addresses...)
		}
	}
	slices.Sort(out)
	return out
}

// TestPrefillDecodeRevision: a disaggregated revision gets its prefill
// Deployment, and both roles follow the decider when activators report a
// heavy load; deleting the PA stops its decider.
func TestPrefillDecodeRevision(t *testing.T) {
	cl := apiServer(t)
	ctx := context.Background()
	f := newRevision(t, cl, apis.AutoscalerClass, map[string]string{
		apis.DisaggregationAnnotation:  apis.DisaggregationPrefillDecode,
		apis.MaxScaleAnnotation:        "3",
		apis.PrefillMaxScaleAnnotation: "4",
	}, 1)
	prefillKey := f.key(reconciler.PrefillName(f.name))
	prefill := &appsv1.Deployment{}
	eventually(t, 30*time.Second, "prefill Deployment", func() error { return cl.c.Get(ctx, prefillKey, prefill) })
	pa := f.getPA(t, cl)
	must(t, checkControlledByPA(prefill, pa))
	wantLabels := map[string]string{serving.RevisionLabelKey: f.name, serving.ServiceLabelKey: "chat",
		reconciler.RoleLabel: reconciler.RolePrefill, reconciler.ManagedByLabel: reconciler.ManagedBy}
	for k, v := range wantLabels {
		if prefill.Labels[k] != v || prefill.Spec.Template.Labels[k] != v {
			t.Errorf("label %s: deployment %q, pods %q, want %q", k, prefill.Labels[k], prefill.Spec.Template.Labels[k], v)
		}
	}
	if _, ok := prefill.Spec.Template.Labels[serving.RevisionUID]; ok {
		t.Error("prefill pods carry the revisionUID label: Knative's Deployment selector would match them")
	}
	if sel := prefill.Spec.Selector.MatchLabels; sel[reconciler.RoleLabel] != reconciler.RolePrefill || sel[serving.RevisionLabelKey] != f.name {
		t.Errorf("prefill selector %v", sel)
	}
	ctrs := prefill.Spec.Template.Spec.Containers
	if len(ctrs) != 1 || ctrs[0].Name != "user-container" || ctrs[0].Lifecycle != nil || !slices.Contains(ctrs[0].Args, "--max-num-seqs") {
		t.Errorf("prefill containers: %+v (want the user container only, without queue-proxy's preStop hook)", ctrs)
	}
	if r := ptr.Deref(prefill.Spec.Replicas, -1); r != 1 {
		t.Errorf("prefill replicas %d, want the initial scale 1", r)
	}

	// Knative updates its Deployment's template (a new queue-proxy or a
	// changed default): the prefill template follows.
	d := &appsv1.Deployment{}
	must(t, cl.c.Get(ctx, f.key(f.deploy.Name), d))
	d.Spec.Template.Spec.Containers[0].Image = "vllm:v2"
	must(t, cl.c.Update(ctx, d))
	eventually(t, 30*time.Second, "prefill template update", func() error {
		must(t, cl.c.Get(ctx, prefillKey, prefill))
		if img := prefill.Spec.Template.Spec.Containers[0].Image; img != "vllm:v2" {
			return fmt.Errorf("prefill image %q", img)
		}
		return nil
	})

	start := time.Now()
	cl.postLoad(t, f)
	eventually(t, 30*time.Second, "scale-up under load", func() error {
		p, err := replicasOf(cl, prefillKey)
		if err != nil {
			return err
		}
		d, err := replicasOf(cl, f.key(f.deploy.Name))
		if err != nil {
			return err
		}
		if p != 4 || d != 3 {
			return fmt.Errorf("prefill %d, decode %d; want 4 and 3 (the max scales)", p, d)
		}
		return nil
	})
	t.Logf("scaled to 4P+3D %.2fs after the second report", time.Since(start).Seconds()-0.2)
	rec, ok := cl.recommendation(t, f.ns, f.name)
	if !ok || rec.Mode != apis.AutoscalerAct || rec.Prefill != 4 || rec.Decode != 3 || rec.Recommendation.Advisory {
		t.Errorf("recommendation %+v", rec)
	}
	if g := gaugeValue(cl, f, reconciler.RolePrefill); g != 4 {
		t.Errorf("prefill gauge %v, want 4", g)
	}
	eventually(t, 30*time.Second, "PA desired scale", func() error {
		if pa = f.getPA(t, cl); ptr.Deref(pa.Status.DesiredScale, -1) != 3 {
			return fmt.Errorf("desired %v", pa.Status.DesiredScale)
		}
		return nil
	})

	// Deleting the PA (as garbage collection does with the revision)
	// stops its decider; its children go by their owner references
	// (asserted above; envtest runs no garbage collector).
	must(t, cl.c.Delete(ctx, pa))
	eventually(t, 30*time.Second, "decider stopped", func() error {
		if _, ok := cl.recommendation(t, f.ns, f.name); ok {
			return errors.New("still recommending")
		}
		return nil
	})
	if code := cl.post(t, "/v1/poke", fmt.Sprintf(`{"namespace":%q,"name":%q}`, f.ns, f.name)); code != http.StatusNotFound {
		t.Errorf("poke after delete: %d, want 404", code)
	}
}

// gaugeValue reads llmd_autoscaler_recommended_replicas of a revision's
// role (-1 when absent).
func gaugeValue(cl *cluster, f *revisionFixture, role string) float64 {
	mfs, _ := cl.registry.Gather()
	for _, mf := range mfs {
		if mf.GetName() != "llmd_autoscaler_recommended_replicas" {
			continue
		}
		for _, m := range mf.GetMetric() {
			labels := map[string]string{}
			for _, l := range m.GetLabel() {
				labels[l.GetName()] = l.GetValue()
			}
			if labels["namespace"] == f.ns && labels["revision"] == f.name && labels["role"] == role {
				return m.GetGauge().GetValue()
			}
		}
	}
	return -1
}

// TestPokeScalesFromZero: a revision at zero stays there without traffic
// and gets a replica as soon as an activator pokes.
func TestPokeScalesFromZero(t *testing.T) {
	cl := apiServer(t)
	f := newRevision(t, cl, apis.AutoscalerClass, map[string]string{
		apis.MinScaleAnnotation: "0", apis.InitialScaleAnnotation: "0",
	}, 0)
	eventually(t, 30*time.Second, "inactive at zero", func() error {
		pa := f.getPA(t, cl)
		act, reason := condStatus(pa, "Active")
		if act != "False" || reason != reconciler.ReasonNoTraffic || ptr.Deref(pa.Status.DesiredScale, -1) != 0 {
			return fmt.Errorf("status %+v", pa.Status)
		}
		return nil
	})
	time.Sleep(5 * tick)
	if r, _ := replicasOf(cl, f.key(f.deploy.Name)); r != 0 {
		t.Fatalf("replicas %d without traffic, want 0", r)
	}
	start := time.Now()
	if code := cl.post(t, "/v1/poke", fmt.Sprintf(`{"namespace":%q,"name":%q}`, f.ns, f.name)); code != http.StatusAccepted {
		t.Fatalf("poke: %d", code)
	}
	eventually(t, 30*time.Second, "scale from zero", func() error {
		if r, err := replicasOf(cl, f.key(f.deploy.Name)); err != nil || r != 1 {
			return fmt.Errorf("replicas %d (%v)", r, err)
		}
		return nil
	})
	t.Logf("poke to replicas=1 in %v", time.Since(start).Round(time.Millisecond))
	// The poke counts as traffic: later ticks keep the replica.
	time.Sleep(5 * tick)
	if r, _ := replicasOf(cl, f.key(f.deploy.Name)); r != 1 {
		t.Errorf("replicas %d after the poke's ticks, want 1 (grace period)", r)
	}
	setReady(t, cl, f.key(f.deploy.Name), 1)
	eventually(t, 30*time.Second, "active", func() error {
		if act, _ := condStatus(f.getPA(t, cl), "Active"); act != "True" {
			return fmt.Errorf("active %q", act)
		}
		return nil
	})
}

// TestAdviseModeDoesNotScale: in advise mode the decider's recommendation
// is reported (API, Event) and the replicas stay where they are.
func TestAdviseModeDoesNotScale(t *testing.T) {
	cl := apiServer(t)
	ctx := context.Background()
	f := newRevision(t, cl, apis.AutoscalerClass, map[string]string{
		apis.AutoscalerModeAnnotation: apis.AutoscalerAdvise, apis.MaxScaleAnnotation: "5",
	}, 2)
	eventually(t, 30*time.Second, "status", func() error {
		if pa := f.getPA(t, cl); ptr.Deref(pa.Status.DesiredScale, -1) != 2 {
			return fmt.Errorf("desired %v, want the Deployment's 2", pa.Status.DesiredScale)
		}
		return nil
	})
	cl.postLoad(t, f)
	eventually(t, 30*time.Second, "advisory recommendation", func() error {
		rec, ok := cl.recommendation(t, f.ns, f.name)
		if !ok || rec.Mode != apis.AutoscalerAdvise || !rec.Recommendation.Advisory || rec.Recommendation.Decode != 5 {
			return fmt.Errorf("recommendation %+v", rec)
		}
		return nil
	})
	eventually(t, 30*time.Second, "recommendation event", func() error {
		var evs eventsv1.EventList
		if err := cl.c.List(ctx, &evs, client.InNamespace(f.ns)); err != nil {
			return err
		}
		for _, e := range evs.Items {
			if e.Regarding.Name == f.name && e.Reason == "Recommendation" && strings.Contains(e.Note, "0P+5D (advisory)") {
				return nil
			}
		}
		return fmt.Errorf("no Recommendation event among %d", len(evs.Items))
	})
	time.Sleep(5 * tick)
	if r, _ := replicasOf(cl, f.key(f.deploy.Name)); r != 2 {
		t.Errorf("replicas %d in advise mode, want untouched 2", r)
	}
	if pa := f.getPA(t, cl); ptr.Deref(pa.Status.DesiredScale, -1) != 2 {
		t.Errorf("desired scale %v in advise mode, want the Deployment's 2", pa.Status.DesiredScale)
	}
}

// TestInvalidRevisionIsReported: a revision whose annotations the webhook
// would have refused (here an unknown engine profile) gets a Warning Event
// naming the annotation, and nothing is scaled.
func TestInvalidRevisionIsReported(t *testing.T) {
	cl := apiServer(t)
	ctx := context.Background()
	f := newRevision(t, cl, apis.AutoscalerClass, map[string]string{apis.SimProfileAnnotation: "no-such-gpu"}, 1)
	eventually(t, 30*time.Second, "warning event", func() error {
		var evs eventsv1.EventList
		if err := cl.c.List(ctx, &evs, client.InNamespace(f.ns)); err != nil {
			return err
		}
		for _, e := range evs.Items {
			if e.Regarding.Name == f.name && e.Type == corev1.EventTypeWarning && strings.Contains(e.Note, apis.SimProfileAnnotation) {
				return nil
			}
		}
		return fmt.Errorf("no warning event naming %s among %d events", apis.SimProfileAnnotation, len(evs.Items))
	})
	if _, ok := cl.recommendation(t, f.ns, f.name); ok {
		t.Error("an invalid revision has a decider")
	}
}
