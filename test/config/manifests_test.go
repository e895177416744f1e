package config_test

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/go-logr/logr"
	appsv1 "k8s.io/api/apps/v1"
	authorizationv1 "k8s.io/api/authorization/v1"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/util/intstr"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/envtest"

	"github.com/llmd-kn/llmd-kn/internal/kubetest"
)

const ns = "llmd-kn"

// convert turns a rendered object into its typed form.
func convert[T any](t *testing.T, u *unstructured.Unstructured) *T {
	t.Helper()
	out := new(T)
	if err := runtime.DefaultUnstructuredConverter.FromUnstructuredWithValidation(u.Object, out, true); err != nil {
		t.Fatalf("%s: %v", id(u), err)
	}
	return out
}

func byKind(objs []*unstructured.Unstructured, kind string) []*unstructured.Unstructured {
	var out []*unstructured.Unstructured
	for _, o := range objs {
		if o.GetKind() == kind {
			out = append(out, o)
		}
	}
	return out
}

func find(objs []*unstructured.Unstructured, kind, name string) *unstructured.Unstructured {
	for _, o := range objs {
		if o.GetKind() == kind && o.GetName() == name {
			return o
		}
	}
	return nil
}

// TestManifests checks what `kubectl kustomize config/` renders: the
// components of contracts.md with their ports, probes, flags and mounts,
// hardened pods with resource requests, and RBAC without wildcards or
// Secret access beyond the webhook's own Secret.
func TestManifests(t *testing.T) {
	objs := render(t, filepath.Join(repo(t), "config"))
	for _, o := range objs {
		if k := o.GetKind(); k != "Namespace" && k != "ClusterRole" && k != "ClusterRoleBinding" &&
			!strings.HasSuffix(k, "WebhookConfiguration") && o.GetNamespace() != ns &&
			!(o.GetNamespace() == "knative-serving" && (k == "Role" || k == "RoleBinding")) {
			t.Errorf("%s: outside namespace %s", id(o), ns)
		}
		if o.GetLabels()["app.kubernetes.io/part-of"] != "llmd-kn" {
			t.Errorf("%s: no label app.kubernetes.io/part-of=llmd-kn (kubectl delete -l needs it)", id(o))
		}
	}
	if n := find(objs, "Namespace", ns); n == nil {
		t.Fatalf("no Namespace %s", ns)
	} else if got := n.GetLabels()["pod-security.kubernetes.io/enforce"]; got != "restricted" {
		t.Errorf("namespace %s enforces pod security %q, want restricted", ns, got)
	}

	deployments := map[string]*appsv1.Deployment{}
	for _, u := range byKind(objs, "Deployment") {
		d := convert[appsv1.Deployment](t, u)
		deployments[d.Name] = d
		checkPod(t, d, objs)
	}
	checkRBAC(t, objs)
	for _, name := range []string{"llmd-activator", "llmd-autoscaler", "llmd-kn-webhook"} {
		if deployments[name] == nil {
			t.Fatalf("no Deployment %s", name)
		}
	}

	act := deployments["llmd-activator"].Spec.Template.Spec.Containers[0]
	wantPorts(t, "llmd-activator", act, 8080, 9091)
	wantProbe(t, "llmd-activator readiness", act, act.ReadinessProbe, "/healthz", 9091)
	wantEnv(t, "llmd-activator", act, "POD_NAME", "metadata.name")
	wantEnv(t, "llmd-activator", act, "POD_NAMESPACE", "metadata.namespace")
	wantArgs(t, "llmd-activator", act, "--addr=:8080", "--admin-addr=:9091")
	checkBatchStorage(t, act)

	as := deployments["llmd-autoscaler"].Spec.Template.Spec.Containers[0]
	wantPorts(t, "llmd-autoscaler", as, 8090, 9090, 8081)
	wantProbe(t, "llmd-autoscaler readiness", as, as.ReadinessProbe, "/readyz", 8081)
	wantProbe(t, "llmd-autoscaler liveness", as, as.LivenessProbe, "/healthz", 8081)
	wantArgs(t, "llmd-autoscaler", as, "--leader-elect=true", "--config-dir=/etc/llmd/autoscaler")
	if r := deployments["llmd-autoscaler"].Spec.Replicas; r == nil || *r != 1 {
		t.Errorf("llmd-autoscaler replicas %v: the activators' reports must reach the one that decides", r)
	}

	// Flags that name files must name files the mounted ConfigMaps hold.
	for name, d := range deployments {
		for _, c := range d.Spec.Template.Spec.Containers {
			for _, a := range c.Args {
				flag, path, ok := strings.Cut(a, "=")
				if !ok || !strings.HasPrefix(path, "/etc/llmd/") {
					continue
				}
				if err := mountedKey(d, c, path, flag == "--config-dir", objs); err != nil {
					t.Errorf("%s %s: %v", name, a, err)
				}
			}
		}
	}

	checkStatsAuth(t, deployments["llmd-activator"], deployments["llmd-autoscaler"])
	checkNetworkPolicies(t, objs, deployments)

	wantServicePort(t, objs, "llmd-activator", "http", 80, 8080)
	wantServicePort(t, objs, "llmd-activator", "admin", 9091, 9091)
	wantServicePort(t, objs, "llmd-autoscaler", "stats", 8090, 8090)
	for _, u := range byKind(objs, "Service") {
		s := convert[corev1.Service](t, u)
		matched := false
		for _, d := range deployments {
			if len(s.Spec.Selector) > 0 && selects(s.Spec.Selector, d.Spec.Template.Labels) {
				matched = true
			}
		}
		if !matched {
			t.Errorf("Service %s selects no Deployment's pods", s.Name)
		}
	}
}

// checkStatsAuth: the activator sends a ServiceAccount token projected for
// the audience the autoscaler checks, from the file its flag names.
func checkStatsAuth(t *testing.T, act, as *appsv1.Deployment) {
	t.Helper()
	flagValue := func(c corev1.Container, flag string) string {
		for _, a := range c.Args {
			if v, ok := strings.CutPrefix(a, flag+"="); ok {
				return v
			}
		}
		return ""
	}
	ac, sc := act.Spec.Template.Spec.Containers[0], as.Spec.Template.Spec.Containers[0]
	if v := flagValue(sc, "--stats-auth"); v != "tokenreview" {
		t.Errorf("llmd-autoscaler --stats-auth=%q, want tokenreview", v)
	}
	audience := flagValue(sc, "--stats-audience")
	file := flagValue(ac, "--autoscaler-token-file")
	if audience == "" || file == "" {
		t.Fatalf("--stats-audience %q, --autoscaler-token-file %q: both needed", audience, file)
	}
	// The token travels inside TLS only, to a server whose certificate
	// chains to the CA bundle of the Secret the autoscaler keeps.
	if u := flagValue(ac, "--autoscaler-url"); !strings.HasPrefix(u, "https://") {
		t.Errorf("llmd-activator --autoscaler-url=%q: the token would travel in clear", u)
	}
	if flagValue(sc, "--stats-tls-cert-dir") == "" || flagValue(sc, "--stats-tls-self-signed") != "true" {
		t.Errorf("llmd-autoscaler: the stats API is not served over TLS with its own certificate: %v", sc.Args)
	}
	ca := flagValue(ac, "--autoscaler-ca-file")
	mountedCA := false
	for _, m := range ac.VolumeMounts {
		for _, v := range act.Spec.Template.Spec.Volumes {
			if v.Name == m.Name && v.Secret != nil && v.Secret.SecretName == "llmd-autoscaler-certs" && filepath.Dir(ca) == m.MountPath &&
				slices.ContainsFunc(v.Secret.Items, func(k corev1.KeyToPath) bool { return k.Key == "ca-bundle.crt" && k.Path == filepath.Base(ca) }) &&
				len(v.Secret.Items) == 1 {
				mountedCA = true
			}
		}
	}
	if !mountedCA {
		t.Errorf("llmd-activator --autoscaler-ca-file=%q is not the ca-bundle.crt (alone) of Secret llmd-autoscaler-certs", ca)
	}
	dir, key := filepath.Dir(file), filepath.Base(file)
	for _, m := range ac.VolumeMounts {
		if m.MountPath != dir {
			continue
		}
		for _, v := range act.Spec.Template.Spec.Volumes {
			if v.Name != m.Name || v.Projected == nil {
				continue
			}
			for _, src := range v.Projected.Sources {
				if tok := src.ServiceAccountToken; tok != nil && tok.Path == key && tok.Audience == audience {
					return
				}
			}
		}
	}
	t.Errorf("llmd-activator: %s is not a ServiceAccount token projected for audience %q", file, audience)
}

// checkNetworkPolicies: the autoscaler's stats port admits the activator's
// pods only; the activator's admin port is not open to every namespace.
func checkNetworkPolicies(t *testing.T, objs []*unstructured.Unstructured, deployments map[string]*appsv1.Deployment) {
	t.Helper()
	policy := func(d *appsv1.Deployment) *networkingv1.NetworkPolicy {
		for _, u := range byKind(objs, "NetworkPolicy") {
			p := convert[networkingv1.NetworkPolicy](t, u)
			if selects(p.Spec.PodSelector.MatchLabels, d.Spec.Template.Labels) && slices.Contains(p.Spec.PolicyTypes, networkingv1.PolicyTypeIngress) {
				return p
			}
		}
		t.Errorf("no ingress NetworkPolicy selects the pods of %s", d.Name)
		return nil
	}
	// peers lists who may reach port; open: anyone.
	peers := func(p *networkingv1.NetworkPolicy, port int32) (from []networkingv1.NetworkPolicyPeer, open bool) {
		for _, r := range p.Spec.Ingress {
			if len(r.Ports) > 0 && !slices.ContainsFunc(r.Ports, func(pp networkingv1.NetworkPolicyPort) bool {
				return pp.Port != nil && pp.Port.IntValue() == int(port)
			}) {
				continue
			}
			if len(r.From) == 0 {
				return nil, true
			}
			from = append(from, r.From...)
		}
		return from, false
	}
	act, as := deployments["llmd-activator"], deployments["llmd-autoscaler"]
	if p := policy(as); p != nil {
		from, open := peers(p, 8090)
		if open || len(from) != 1 || from[0].NamespaceSelector != nil || from[0].PodSelector == nil ||
			!selects(from[0].PodSelector.MatchLabels, act.Spec.Template.Labels) {
			t.Errorf("llmd-autoscaler stats port 8090: reachable from %+v (open %v), want the activator's pods only", from, open)
		}
		if _, open := peers(p, 9090); open {
			t.Error("llmd-autoscaler metrics port open to everyone")
		}
	}
	if p := policy(act); p != nil {
		if _, open := peers(p, 8080); !open {
			t.Error("llmd-activator port 8080 not open: the ingress gateway must reach it")
		}
		from, open := peers(p, 9091)
		if open || slices.ContainsFunc(from, func(peer networkingv1.NetworkPolicyPeer) bool {
			return peer.NamespaceSelector != nil && len(peer.NamespaceSelector.MatchLabels) == 0 && len(peer.NamespaceSelector.MatchExpressions) == 0
		}) {
			t.Errorf("llmd-activator admin port 9091 reachable from every namespace: %+v", from)
		}
	}
}

func checkPod(t *testing.T, d *appsv1.Deployment, objs []*unstructured.Unstructured) {
	t.Helper()
	spec := d.Spec.Template.Spec
	psc := spec.SecurityContext
	if psc == nil || psc.RunAsNonRoot == nil || !*psc.RunAsNonRoot || psc.RunAsUser == nil || *psc.RunAsUser == 0 {
		t.Errorf("%s: the pod does not run as a non-root user", d.Name)
	}
	if psc == nil || psc.SeccompProfile == nil || psc.SeccompProfile.Type != corev1.SeccompProfileTypeRuntimeDefault {
		t.Errorf("%s: no RuntimeDefault seccomp profile", d.Name)
	}
	if spec.ServiceAccountName == "" || find(objs, "ServiceAccount", spec.ServiceAccountName) == nil {
		t.Errorf("%s: ServiceAccount %q is not in config/", d.Name, spec.ServiceAccountName)
	}
	if !selects(d.Spec.Selector.MatchLabels, d.Spec.Template.Labels) {
		t.Errorf("%s: the selector does not match the pod labels", d.Name)
	}
	for _, c := range spec.Containers {
		where := d.Name + "/" + c.Name
		sc := c.SecurityContext
		switch {
		case sc == nil:
			t.Errorf("%s: no securityContext", where)
			continue
		case sc.ReadOnlyRootFilesystem == nil || !*sc.ReadOnlyRootFilesystem:
			t.Errorf("%s: root file system is writable", where)
		case sc.AllowPrivilegeEscalation == nil || *sc.AllowPrivilegeEscalation:
			t.Errorf("%s: privilege escalation allowed", where)
		case sc.Capabilities == nil || !slices.Equal(sc.Capabilities.Drop, []corev1.Capability{"ALL"}) || len(sc.Capabilities.Add) > 0:
			t.Errorf("%s: capabilities %+v, want drop [ALL]", where, sc.Capabilities)
		}
		req := c.Resources.Requests
		if req.Cpu().IsZero() || req.Memory().IsZero() {
			t.Errorf("%s: requests %v, want cpu and memory", where, req)
		}
		if c.Resources.Limits.Memory().IsZero() {
			t.Errorf("%s: no memory limit", where)
		}
		if c.ReadinessProbe == nil || c.LivenessProbe == nil {
			t.Errorf("%s: readiness and liveness probes needed", where)
		}
		// A plain name an overlay's images: replaces; no registry host.
		repoName, _, _ := strings.Cut(c.Image, ":")
		if first, _, _ := strings.Cut(repoName, "/"); !strings.HasPrefix(c.Image, "llmd-kn/") || strings.ContainsAny(first, ".:") {
			t.Errorf("%s: image %q, want llmd-kn/<command>:latest", where, c.Image)
		}
	}
}

func selects(sel, labels map[string]string) bool {
	for k, v := range sel {
		if labels[k] != v {
			return false
		}
	}
	return len(sel) > 0
}

func portNumber(c corev1.Container, p intstr.IntOrString) int32 {
	if p.Type == intstr.Int {
		return p.IntVal
	}
	for _, cp := range c.Ports {
		if cp.Name == p.StrVal {
			return cp.ContainerPort
		}
	}
	return 0
}

func wantPorts(t *testing.T, name string, c corev1.Container, ports ...int32) {
	t.Helper()
	for _, p := range ports {
		if !slices.ContainsFunc(c.Ports, func(cp corev1.ContainerPort) bool { return cp.ContainerPort == p }) {
			t.Errorf("%s: no container port %d", name, p)
		}
	}
}

func wantProbe(t *testing.T, what string, c corev1.Container, p *corev1.Probe, path string, port int32) {
	t.Helper()
	if p == nil || p.HTTPGet == nil || p.HTTPGet.Path != path || portNumber(c, p.HTTPGet.Port) != port {
		t.Errorf("%s probe %+v, want GET %s on %d", what, p, path, port)
	}
}

func wantEnv(t *testing.T, name string, c corev1.Container, env, field string) {
	t.Helper()
	if !slices.ContainsFunc(c.Env, func(e corev1.EnvVar) bool {
		return e.Name == env && e.ValueFrom != nil && e.ValueFrom.FieldRef != nil && e.ValueFrom.FieldRef.FieldPath == field
	}) {
		t.Errorf("%s: no env %s from %s", name, env, field)
	}
}

// checkBatchStorage: the activator's batch storage (LLMD_BATCH_STORAGE,
// the default of --batch-storage) and its credentials come from the
// optional Secret llmd-activator-batch-storage, so the Deployment applies
// and starts without it; the URL is not also passed as a flag, which
// would override the variable.
func checkBatchStorage(t *testing.T, c corev1.Container) {
	t.Helper()
	const secret = "llmd-activator-batch-storage"
	if !slices.ContainsFunc(c.Env, func(e corev1.EnvVar) bool {
		r := e.ValueFrom
		return e.Name == "LLMD_BATCH_STORAGE" && r != nil && r.SecretKeyRef != nil && r.SecretKeyRef.Name == secret &&
			r.SecretKeyRef.Key == "url" && r.SecretKeyRef.Optional != nil && *r.SecretKeyRef.Optional
	}) {
		t.Errorf("llmd-activator: no env LLMD_BATCH_STORAGE from key url of the optional Secret %s", secret)
	}
	if !slices.ContainsFunc(c.EnvFrom, func(e corev1.EnvFromSource) bool {
		return e.SecretRef != nil && e.SecretRef.Name == secret && e.SecretRef.Optional != nil && *e.SecretRef.Optional
	}) {
		t.Errorf("llmd-activator: no envFrom of the optional Secret %s (the blob driver's credentials)", secret)
	}
	for _, a := range c.Args {
		if strings.HasPrefix(a, "--batch-storage") {
			t.Errorf("llmd-activator: %s overrides LLMD_BATCH_STORAGE", a)
		}
	}
}

func wantArgs(t *testing.T, name string, c corev1.Container, args ...string) {
	t.Helper()
	for _, a := range args {
		if !slices.Contains(c.Args, a) {
			t.Errorf("%s: args %v lack %s", name, c.Args, a)
		}
	}
}

// mountedKey checks that path (a file, or with dir a directory) is where a
// ConfigMap of config/ is mounted in container c, and that a file is one
// of that ConfigMap's keys.
func mountedKey(d *appsv1.Deployment, c corev1.Container, path string, dir bool, objs []*unstructured.Unstructured) error {
	for _, m := range c.VolumeMounts {
		mdir := strings.TrimSuffix(m.MountPath, "/")
		key, inside := strings.CutPrefix(path, mdir+"/")
		if !(dir && path == mdir) && !(!dir && inside && !strings.Contains(key, "/")) {
			continue
		}
		for _, v := range d.Spec.Template.Spec.Volumes {
			if v.Name != m.Name || v.ConfigMap == nil {
				continue
			}
			cm := find(objs, "ConfigMap", v.ConfigMap.Name)
			if cm == nil {
				return fmt.Errorf("mounts ConfigMap %s, which config/ does not create", v.ConfigMap.Name)
			}
			if dir {
				return nil
			}
			if _, ok, _ := unstructured.NestedString(cm.Object, "data", key); !ok {
				return fmt.Errorf("ConfigMap %s has no key %s", cm.GetName(), key)
			}
			return nil
		}
	}
	return fmt.Errorf("no ConfigMap mounted there")
}

func wantServicePort(t *testing.T, objs []*unstructured.Unstructured, svc, name string, port, target int32) {
	t.Helper()
	u := find(objs, "Service", svc)
	if u == nil {
		t.Errorf("no Service %s", svc)
		return
	}
	s := convert[corev1.Service](t, u)
	if !slices.ContainsFunc(s.Spec.Ports, func(p corev1.ServicePort) bool {
		return p.Name == name && p.Port == port && p.TargetPort.IntValue() == int(target)
	}) {
		t.Errorf("Service %s: no port %s %d -> %d (have %+v)", svc, name, port, target, s.Spec.Ports)
	}
}

// checkRBAC: no wildcards; Secrets only by name, in a namespaced Role.
func checkRBAC(t *testing.T, objs []*unstructured.Unstructured) {
	t.Helper()
	for _, kind := range []string{"ClusterRole", "Role"} {
		for _, u := range byKind(objs, kind) {
			r := convert[rbacv1.ClusterRole](t, u)
			for i, rule := range r.Rules {
				where := fmt.Sprintf("%s rules[%d]", id(u), i)
				for _, list := range [][]string{rule.Verbs, rule.Resources, rule.APIGroups} {
					if slices.Contains(list, "*") {
						t.Errorf("%s: wildcard in %+v", where, rule)
					}
				}
				if slices.Contains(rule.Verbs, "escalate") || slices.Contains(rule.Verbs, "bind") || slices.Contains(rule.Verbs, "impersonate") {
					t.Errorf("%s: grants %v", where, rule.Verbs)
				}
				if slices.Contains(rule.APIGroups, "") && slices.Contains(rule.Resources, "secrets") &&
					(kind == "ClusterRole" || len(rule.ResourceNames) == 0 || slices.ContainsFunc(rule.Verbs, func(v string) bool { return v == "list" || v == "watch" })) {
					t.Errorf("%s: Secret access beyond one named Secret in one namespace: %+v", where, rule)
				}
			}
		}
	}
}

// serviceAccount is how the API server sees a pod's ServiceAccount.
func serviceAccount(name string) (string, []string) {
	return "system:serviceaccount:" + ns + ":" + name,
		[]string{"system:serviceaccounts", "system:serviceaccounts:" + ns, "system:authenticated"}
}

// TestApplyToAPIServer applies config/ with the real kubectl to a real API
// server that has Knative Serving's CRDs: a server-side dry run first (what
// the issue asks an admin to be able to run), then the real apply on the
// fresh cluster, in one go, with Pod Security "restricted" enforced on the
// namespace. Then the API server's own RBAC authorizer answers, for each
// ServiceAccount, what it may and may not do.
func TestApplyToAPIServer(t *testing.T) {
	kc := kubectl(t)
	assets := kubetest.AssetsOrSkip(t)
	root := repo(t)
	crdPaths, err := kubetest.ServingCRDs("service", "configuration", "revision", "route", "podautoscaler")
	if err != nil {
		t.Fatal(err)
	}
	env := &envtest.Environment{
		BinaryAssetsDirectory: assets,
		ErrorIfCRDPathMissing: true,
		CRDInstallOptions:     envtest.CRDInstallOptions{Paths: crdPaths},
	}
	ctrl.SetLogger(logr.FromSlogHandler(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn})))
	cfg, err := env.Start()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = env.Stop() })
	scheme := runtime.NewScheme()
	if err := clientgoscheme.AddToScheme(scheme); err != nil {
		t.Fatal(err)
	}
	admin, err := client.New(cfg, client.Options{Scheme: scheme})
	if err != nil {
		t.Fatal(err)
	}
	user, err := env.AddUser(envtest.User{Name: "admin", Groups: []string{"system:masters"}}, nil)
	if err != nil {
		t.Fatal(err)
	}
	kcfg, err := user.KubeConfig()
	if err != nil {
		t.Fatal(err)
	}
	kubeconfig := filepath.Join(t.TempDir(), "kubeconfig")
	if err := os.WriteFile(kubeconfig, kcfg, 0o600); err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	// Knative Serving is installed: its namespace exists.
	if err := admin.Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "knative-serving"}}); err != nil {
		t.Fatal(err)
	}
	config := filepath.Join(root, "config")
	objs := render(t, config)

	// Samples, before llmd-kn's webhook configurations exist (nothing serves
	// them here): the API server accepts them as Knative Services.
	out, err := runKubectl(ctx, kc, kubeconfig, "apply", "--dry-run=server", "-f", filepath.Join(config, "samples"))
	if err != nil {
		t.Fatalf("kubectl apply --dry-run=server -f config/samples: %v\n%s", err, out)
	}
	for _, s := range []string{"llm", "llama-70b-pd", "chat"} {
		if want := "service.serving.knative.dev/" + s + " created (server dry run)"; !strings.Contains(out, want) {
			t.Errorf("samples: kubectl said\n%s\nwant %q", out, want)
		}
	}

	// A server-side dry run cannot place objects in a namespace it only
	// pretends to create: the namespace exists for it (with its Pod
	// Security labels), as on a second apply.
	t.Run("dry run", func(t *testing.T) {
		labels := find(objs, "Namespace", ns).GetLabels()
		if err := admin.Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns, Labels: labels}}); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() {
			// Back to a fresh cluster for the real apply.
			if err := admin.Delete(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}); err != nil {
				t.Fatal(err)
			}
		})
		out, err := runKubectl(ctx, kc, kubeconfig, "apply", "--dry-run=server", "-k", config)
		if err != nil {
			t.Fatalf("kubectl apply --dry-run=server -k config/: %v\n%s", err, out)
		}
		for _, o := range objs {
			if o.GetKind() == "Namespace" {
				continue
			}
			if !strings.Contains(out, "/"+o.GetName()+" created (server dry run)") {
				t.Errorf("%s: not created by the dry run; kubectl said\n%s", id(o), out)
			}
		}
		for _, line := range strings.Split(out, "\n") {
			// kubectl's note about the namespace this test created.
			if strings.Contains(line, "Warning") && !strings.Contains(line, "last-applied-configuration") {
				t.Errorf("%s", line)
			}
		}
		out, err = runKubectl(ctx, kc, kubeconfig, "apply", "--dry-run=server", "-k", filepath.Join(config, "dashboards"))
		if err != nil || !strings.Contains(out, "configmap/llmd-kn-dashboards created (server dry run)") {
			t.Errorf("kubectl apply --dry-run=server -k config/dashboards: %v\n%s", err, out)
		}
		// The revisions' NetworkPolicy, into a user namespace.
		out, err = runKubectl(ctx, kc, kubeconfig, "apply", "--dry-run=server", "-n", "default", "-k", filepath.Join(config, "revision-policy"))
		if err != nil || !strings.Contains(out, "networkpolicy.networking.k8s.io/llmd-revision-serving-port created (server dry run)") {
			t.Errorf("kubectl apply --dry-run=server -n default -k config/revision-policy: %v\n%s", err, out)
		}
	})

	t.Run("apply", func(t *testing.T) {
		// envtest runs no namespace controller: finish the deletion of the
		// dry run's namespace, so that this apply creates it.
		var n corev1.Namespace
		if err := admin.Get(ctx, client.ObjectKey{Name: ns}, &n); err == nil && n.DeletionTimestamp != nil {
			n.Spec.Finalizers = nil
			if err := admin.SubResource("finalize").Update(ctx, &n); err != nil {
				t.Fatal(err)
			}
		}
		out, err := runKubectl(ctx, kc, kubeconfig, "apply", "-k", config)
		if err != nil {
			t.Fatalf("kubectl apply -k config/: %v\n%s", err, out)
		}
		// Pod Security "restricted" warns about Deployments whose pods it
		// would refuse.
		if strings.Contains(out, "Warning") {
			t.Errorf("warnings:\n%s", out)
		}
		for _, o := range objs {
			got := &unstructured.Unstructured{}
			got.SetGroupVersionKind(o.GroupVersionKind())
			if err := admin.Get(ctx, client.ObjectKeyFromObject(o), got); err != nil {
				t.Errorf("%s after apply: %v", id(o), err)
			}
		}
		// The check has teeth: a pod that runs as root is flagged.
		bad := `{"apiVersion":"apps/v1","kind":"Deployment","metadata":{"name":"root","namespace":"llmd-kn"},
"spec":{"selector":{"matchLabels":{"a":"b"}},"template":{"metadata":{"labels":{"a":"b"}},
"spec":{"containers":[{"name":"c","image":"llmd-kn/activator"}]}}}}`
		out, _ = runKubectlStdin(ctx, kc, kubeconfig, bad, "apply", "--dry-run=server", "-f", "-")
		if !strings.Contains(out, "would violate PodSecurity \"restricted") {
			t.Errorf("a root pod in %s: kubectl said %s; want a PodSecurity warning", ns, out)
		}
	})

	t.Run("components run as their ServiceAccounts", func(t *testing.T) {
		runComponents(t, env, admin, objs)
	})

	t.Run("RBAC", func(t *testing.T) {
		type access struct {
			sa, verb, group, resource, sub, namespace, name string
			allowed                                         bool
		}
		cases := []access{
			// activator: reads revisions, routes and pods; nothing else.
			{"llmd-activator", "watch", "serving.knative.dev", "revisions", "", "", "", true},
			{"llmd-activator", "list", "serving.knative.dev", "routes", "", "default", "", true},
			{"llmd-activator", "watch", "", "pods", "", "", "", true},
			{"llmd-activator", "update", "serving.knative.dev", "revisions", "", "default", "", false},
			{"llmd-activator", "create", "", "pods", "", "default", "", false},
			{"llmd-activator", "get", "", "configmaps", "", ns, "config-llmd-router", false},
			// autoscaler: the PodAutoscaler class and what it owns.
			{"llmd-autoscaler", "watch", "autoscaling.internal.knative.dev", "podautoscalers", "", "", "", true},
			{"llmd-autoscaler", "patch", "autoscaling.internal.knative.dev", "podautoscalers", "status", "default", "", true},
			{"llmd-autoscaler", "delete", "autoscaling.internal.knative.dev", "podautoscalers", "", "default", "", false},
			{"llmd-autoscaler", "create", "apps", "deployments", "", "default", "", true},
			{"llmd-autoscaler", "update", "apps", "deployments", "scale", "default", "", true},
			{"llmd-autoscaler", "create", "", "services", "", "default", "", true},
			{"llmd-autoscaler", "create", "discovery.k8s.io", "endpointslices", "", "default", "", true},
			{"llmd-autoscaler", "list", "serving.knative.dev", "revisions", "", "", "", true},
			{"llmd-autoscaler", "update", "serving.knative.dev", "revisions", "", "default", "", false},
			{"llmd-autoscaler", "create", "", "events", "", "default", "", true},
			{"llmd-autoscaler", "update", "coordination.k8s.io", "leases", "", ns, "", true},
			{"llmd-autoscaler", "update", "coordination.k8s.io", "leases", "", "kube-system", "", false},
			{"llmd-autoscaler", "list", "", "configmaps", "", ns, "", false},
			{"llmd-autoscaler", "delete", "", "pods", "", "default", "", false},
			// Who reports load: TokenReviews, by the autoscaler only.
			{"llmd-autoscaler", "create", "authentication.k8s.io", "tokenreviews", "", "", "", true},
			{"llmd-activator", "create", "authentication.k8s.io", "tokenreviews", "", "", "", false},
			// autoscaler: its own certificate Secret, by name.
			{"llmd-autoscaler", "update", "", "secrets", "", ns, "llmd-autoscaler-certs", true},
			{"llmd-autoscaler", "get", "", "secrets", "", ns, "llmd-kn-webhook-certs", false},
			{"llmd-activator", "get", "", "secrets", "", ns, "llmd-autoscaler-certs", false},
			// webhook: its own Secret and configurations, Knative's ConfigMaps.
			{"llmd-kn-webhook", "get", "", "secrets", "", ns, "llmd-kn-webhook-certs", true},
			{"llmd-kn-webhook", "get", "", "secrets", "", ns, "other", false},
			{"llmd-kn-webhook", "update", "admissionregistration.k8s.io", "mutatingwebhookconfigurations", "", "", "defaulting.webhook.llm-d.ai", true},
			{"llmd-kn-webhook", "update", "admissionregistration.k8s.io", "mutatingwebhookconfigurations", "", "", "webhook.serving.knative.dev", false},
			{"llmd-kn-webhook", "list", "", "configmaps", "", "knative-serving", "", true},
			{"llmd-kn-webhook", "list", "", "configmaps", "", "default", "", false},
		}
		// No one reads Secrets cluster-wide or in any namespace by listing.
		for _, sa := range []string{"llmd-activator", "llmd-autoscaler", "llmd-kn-webhook"} {
			for _, n := range []string{"", "default", ns, "knative-serving", "kube-system"} {
				for _, verb := range []string{"list", "watch", "get"} {
					cases = append(cases, access{sa, verb, "", "secrets", "", n, "", false})
				}
			}
		}
		for _, c := range cases {
			name, groups := serviceAccount(c.sa)
			sar := &authorizationv1.SubjectAccessReview{Spec: authorizationv1.SubjectAccessReviewSpec{
				User: name, Groups: groups,
				ResourceAttributes: &authorizationv1.ResourceAttributes{Verb: c.verb, Group: c.group,
					Resource: c.resource, Subresource: c.sub, Namespace: c.namespace, Name: c.name},
			}}
			if err := admin.Create(ctx, sar); err != nil {
				t.Fatal(err)
			}
			if sar.Status.Allowed != c.allowed {
				t.Errorf("%s %s %s.%s/%s in %q name %q: allowed %v, want %v (%s)", c.sa, c.verb, c.resource, c.group,
					c.sub, c.namespace, c.name, sar.Status.Allowed, c.allowed, sar.Status.Reason)
			}
		}
	})
}

// TestImagesOverlay: the overlay docs/deploy.md shows replaces every image
// of config/ (the names in config/ are the ones an overlay must use).
func TestImagesOverlay(t *testing.T) {
	dir := t.TempDir()
	rel, err := filepath.Rel(dir, filepath.Join(repo(t), "config"))
	if err != nil {
		t.Fatal(err)
	}
	overlay := "resources: [" + rel + "]\nimages:\n"
	for _, c := range []string{"activator", "autoscaler", "webhook"} {
		overlay += fmt.Sprintf("- {name: llmd-kn/%s, newName: mirror/llmd-kn/%s, newTag: v1}\n", c, c)
	}
	if err := os.WriteFile(filepath.Join(dir, "kustomization.yaml"), []byte(overlay), 0o644); err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, u := range byKind(render(t, dir), "Deployment") {
		d := convert[appsv1.Deployment](t, u)
		for _, c := range d.Spec.Template.Spec.Containers {
			n++
			if !strings.HasPrefix(c.Image, "mirror/llmd-kn/") || !strings.HasSuffix(c.Image, ":v1") {
				t.Errorf("%s/%s: image %q not replaced by the overlay", d.Name, c.Name, c.Image)
			}
		}
	}
	if n != 3 {
		t.Errorf("%d containers, want 3", n)
	}
}

// TestFlagsExistInBinaries: every flag a Deployment passes is one its
// command defines (built from this tree, asked for -h after the manifest's
// arguments: Go's flag package stops at the first unknown one).
func TestFlagsExistInBinaries(t *testing.T) {
	objs := render(t, filepath.Join(repo(t), "config"))
	bin := buildCommands(t)
	for _, u := range byKind(objs, "Deployment") {
		d := convert[appsv1.Deployment](t, u)
		cmd, ok := commands[d.Name]
		if !ok {
			t.Errorf("Deployment %s: which command?", d.Name)
			continue
		}
		args := append(slices.Clone(d.Spec.Template.Spec.Containers[0].Args), "-h")
		out, _ := exec.Command(filepath.Join(bin, cmd), args...).CombinedOutput()
		if strings.Contains(string(out), "provided but not defined") || !strings.Contains(string(out), "Usage of "+cmd) {
			t.Errorf("%s %s:\n%s", cmd, strings.Join(args, " "), out)
		}
	}
}

// commands maps each Deployment of config/ to its command in cmd/.
var commands = map[string]string{"llmd-activator": "activator", "llmd-autoscaler": "autoscaler", "llmd-kn-webhook": "webhook"}

var (
	buildOnce sync.Once
	binDir    string
	buildErr  error
)

// buildCommands builds cmd/activator, cmd/autoscaler and cmd/webhook once
// per test binary and returns their directory.
func buildCommands(t *testing.T) string {
	t.Helper()
	buildOnce.Do(func() {
		binDir, buildErr = os.MkdirTemp("", "llmd-config-test-")
		if buildErr != nil {
			return
		}
		args := []string{"build", "-o", binDir + string(filepath.Separator)}
		for _, c := range commands {
			args = append(args, "./cmd/"+c)
		}
		build := exec.Command("go", args...)
		build.Dir = repo(t)
		if out, err := build.CombinedOutput(); err != nil {
			buildErr = fmt.Errorf("go build: %v\n%s", err, out)
		}
	})
	if buildErr != nil {
		t.Fatal(buildErr)
	}
	return binDir
}

func TestMain(m *testing.M) {
	code := m.Run()
	if binDir != "" {
		_ = os.RemoveAll(binDir)
	}
	os.Exit(code)
}

// TestRevisionPolicy: config/revision-policy's NetworkPolicy, for the
// namespaces revisions run in, opens the samples' serving port (where the
// autoscaler POSTs /internal/kv/flush and the activator sends requests)
// only to llmd-kn's activator and autoscaler pods, the revisions' own pods
// and metrics scrapers, and leaves every other TCP port open.
func TestRevisionPolicy(t *testing.T) {
	objs := render(t, filepath.Join(repo(t), "config", "revision-policy"))
	if len(objs) != 1 || objs[0].GetKind() != "NetworkPolicy" || objs[0].GetNamespace() != "" {
		t.Fatalf("want one NetworkPolicy without a namespace (applied with -n), got %d objects", len(objs))
	}
	p := convert[networkingv1.NetworkPolicy](t, objs[0])
	deployments := map[string]*appsv1.Deployment{}
	for _, u := range byKind(render(t, filepath.Join(repo(t), "config")), "Deployment") {
		d := convert[appsv1.Deployment](t, u)
		deployments[d.Name] = d
	}
	covers := func(pp networkingv1.NetworkPolicyPort, port int32) bool {
		if pp.Protocol != nil && *pp.Protocol != corev1.ProtocolTCP || pp.Port == nil {
			return false
		}
		end := pp.Port.IntVal
		if pp.EndPort != nil {
			end = *pp.EndPort
		}
		return pp.Port.IntVal <= port && port <= end
	}
	peersOf := func(port int32) (from []networkingv1.NetworkPolicyPeer, open bool) {
		for _, r := range p.Spec.Ingress {
			if !slices.ContainsFunc(r.Ports, func(pp networkingv1.NetworkPolicyPort) bool { return covers(pp, port) }) {
				continue
			}
			if len(r.From) == 0 {
				open = true
			}
			from = append(from, r.From...)
		}
		return from, open
	}

	files, err := filepath.Glob(filepath.Join(repo(t), "config", "samples", "*.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	serving := map[int32]bool{}
	for _, f := range files {
		svc := readService(t, f)
		if c := svc.Spec.Template.Spec.Containers; len(c) > 0 && len(c[0].Ports) > 0 {
			serving[c[0].Ports[0].ContainerPort] = true
		}
	}
	if len(serving) == 0 {
		t.Fatal("no sample names its serving port")
	}
	for port := range serving {
		from, open := peersOf(port)
		if open {
			t.Errorf("serving port %d: open to every peer", port)
		}
		// Exactly these peers: llmd-kn's activator and autoscaler pods,
		// the namespace's revision pods, metrics scrapers.
		inLLMDKN := func(peer networkingv1.NetworkPolicyPeer, d string) bool {
			return peer.NamespaceSelector != nil && peer.NamespaceSelector.MatchLabels["kubernetes.io/metadata.name"] == ns &&
				peer.PodSelector != nil && len(peer.PodSelector.MatchLabels) > 0 &&
				selects(peer.PodSelector.MatchLabels, deployments[d].Spec.Template.Labels)
		}
		for _, d := range []string{"llmd-activator", "llmd-autoscaler"} {
			if !slices.ContainsFunc(from, func(peer networkingv1.NetworkPolicyPeer) bool { return inLLMDKN(peer, d) }) {
				t.Errorf("serving port %d: the pods of %s cannot reach it", port, d)
			}
		}
		for _, peer := range from {
			switch {
			case inLLMDKN(peer, "llmd-activator"), inLLMDKN(peer, "llmd-autoscaler"):
			case peer.NamespaceSelector == nil && peer.PodSelector != nil && len(peer.PodSelector.MatchExpressions) == 1 &&
				peer.PodSelector.MatchExpressions[0].Key == "serving.knative.dev/revision":
			case peer.PodSelector == nil && peer.NamespaceSelector != nil && peer.NamespaceSelector.MatchLabels["llm-d.ai/metrics-scraper"] == "true":
			default:
				t.Errorf("serving port %d: an unexpected peer %+v", port, peer)
			}
		}
	}
	for _, port := range []int32{1, 5557, 7999, 8012, 9091, 65535} {
		if serving[port] {
			continue
		}
		if _, open := peersOf(port); !open {
			t.Errorf("port %d is closed by the policy; only the serving port should be", port)
		}
	}
}
