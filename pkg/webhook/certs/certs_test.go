package certs

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"testing"
	"time"

	admissionregistrationv1 "k8s.io/api/admissionregistration/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/types"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/envtest"

	"github.com/llmd-kn/llmd-kn/internal/kubetest"
)

var t0 = time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)

func testManager(now *time.Time) *Manager {
	return &Manager{Namespace: "llmd-kn", ServiceName: "llmd-kn-webhook", Now: func() time.Time { return *now }}
}

// verify checks that b's serving certificate is trusted through its
// bundle for the Service's DNS name at time now.
func verify(t *testing.T, b *bundle, now time.Time) {
	t.Helper()
	cert, _, err := parsePair(b.cert, b.key)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(b.caBundle) {
		t.Fatal("empty CA bundle")
	}
	if _, err := cert.Verify(x509.VerifyOptions{DNSName: "llmd-kn-webhook.llmd-kn.svc", Roots: pool, CurrentTime: now}); err != nil {
		t.Fatalf("serving certificate not trusted at %s: %v", now, err)
	}
}

func TestRenewLifecycle(t *testing.T) {
	now := t0
	m := testManager(&now)
	b := &bundle{}
	if changed, err := m.renew(b); err != nil || !changed {
		t.Fatalf("first renew: changed %v, err %v", changed, err)
	}
	verify(t, b, now)
	first := *b

	now = now.Add(24 * time.Hour)
	if changed, _ := m.renew(b); changed {
		t.Fatal("renewed a fresh certificate")
	}

	// Two thirds into the serving certificate's life: a new one, same CA.
	now = t0.Add(DefaultCertValidity * 7 / 10)
	if changed, _ := m.renew(b); !changed || bytes.Equal(b.cert, first.cert) || !bytes.Equal(b.caCert, first.caCert) || !bytes.Equal(b.caBundle, first.caBundle) {
		t.Fatal("serving certificate not renewed alone")
	}
	verify(t, b, now)

	// Two thirds into the CA's life: a new CA, and the bundle trusts both,
	// so a replica still serving the old certificate is trusted.
	now = t0.Add(DefaultCAValidity * 7 / 10)
	old := &bundle{cert: b.cert, key: b.key}
	if changed, _ := m.renew(b); !changed || bytes.Equal(b.caCert, first.caCert) {
		t.Fatal("CA not renewed")
	}
	if n := len(parseCerts(b.caBundle)); n != 2 {
		t.Fatalf("bundle holds %d CAs, want the new and the old", n)
	}
	verify(t, b, now)
	old.caBundle = b.caBundle
	// The old serving certificate itself is past its year; what matters is
	// that its CA is still trusted, so check at a time it was valid.
	oldCert, _, _ := parsePair(old.cert, old.key)
	verify(t, old, oldCert.NotBefore.Add(time.Hour))

	// Once the old CA has expired it leaves the bundle.
	now = t0.Add(DefaultCAValidity + time.Hour)
	m.renew(b)
	if n := len(parseCerts(b.caBundle)); n != 1 {
		t.Fatalf("bundle holds %d CAs after the old one expired", n)
	}

	// A damaged key or a renamed Service means a new certificate.
	b.key = []byte("garbage")
	if changed, _ := m.renew(b); !changed {
		t.Fatal("damaged key kept")
	}
	verify(t, b, now)
	m.ServiceName = "renamed"
	if changed, _ := m.renew(b); !changed {
		t.Fatal("certificate kept for the old Service name")
	}
	if cert, _, _ := parsePair(b.cert, b.key); !covers(cert, m.DNSNames()) {
		t.Fatalf("certificate names %v", cert.DNSNames)
	}
}

// TestSyncAsTheWebhookServiceAccount runs Sync against a real API server
// as the webhook's ServiceAccount with exactly the RBAC of config/webhook,
// so that the manifests are proved sufficient and least-privilege.
func TestSyncAsTheWebhookServiceAccount(t *testing.T) {
	assets := kubetest.AssetsOrSkip(t)
	root, err := kubetest.RepoRoot()
	if err != nil {
		t.Fatal(err)
	}
	env := &envtest.Environment{BinaryAssetsDirectory: assets}
	cfg, err := env.Start()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = env.Stop() })
	ctx := context.Background()
	admin, err := client.New(cfg, client.Options{})
	if err != nil {
		t.Fatal(err)
	}
	// The namespace comes with config/ (config/100-namespace.yaml).
	applyYAML(t, admin, []byte("apiVersion: v1\nkind: Namespace\nmetadata: {name: llmd-kn}\n"))
	applyFiles(t, admin, filepath.Join(root, "config", "webhook"),
		"200-serviceaccount.yaml", "300-secret.yaml", "500-webhooks.yaml")
	applyYAML(t, admin, []byte("apiVersion: v1\nkind: Namespace\nmetadata: {name: knative-serving}\n"))
	applyFiles(t, admin, filepath.Join(root, "config", "webhook"), "200-rbac.yaml")

	sa, err := env.AddUser(envtest.User{Name: "system:serviceaccount:llmd-kn:llmd-kn-webhook",
		Groups: []string{"system:serviceaccounts", "system:serviceaccounts:llmd-kn", "system:authenticated"}}, nil)
	if err != nil {
		t.Fatal(err)
	}
	c, err := client.New(sa.Config(), client.Options{})
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	m := &Manager{
		Client: c, Namespace: "llmd-kn", SecretName: "llmd-kn-webhook-certs", ServiceName: "llmd-kn-webhook",
		MutatingWebhookConfiguration: "defaulting.webhook.llm-d.ai", ValidatingWebhookConfiguration: "validation.webhook.llm-d.ai",
		CertDir: t.TempDir(), Now: func() time.Time { return now },
	}
	if err := m.Sync(ctx); err != nil {
		t.Fatal(err)
	}
	var s corev1.Secret
	if err := admin.Get(ctx, types.NamespacedName{Namespace: "llmd-kn", Name: "llmd-kn-webhook-certs"}, &s); err != nil {
		t.Fatal(err)
	}
	caBundle := s.Data[CABundleKey]
	if len(caBundle) == 0 || len(s.Data[ServerCertKey]) == 0 {
		t.Fatalf("secret not filled: keys %v", keys(s.Data))
	}
	checkCABundles(t, admin, caBundle)

	// The files serve TLS that a client trusting the bundle accepts under
	// the Service's name, as the API server will.
	handshake(t, m.CertDir, caBundle, "llmd-kn-webhook.llmd-kn.svc")

	// A second sync, or a second replica, changes nothing and reuses the
	// Secret's certificate.
	rv := s.ResourceVersion
	replica := *m
	replica.CertDir = t.TempDir()
	for _, r := range []*Manager{m, &replica} {
		if err := r.Sync(ctx); err != nil {
			t.Fatal(err)
		}
	}
	if err := admin.Get(ctx, client.ObjectKeyFromObject(&s), &s); err != nil {
		t.Fatal(err)
	}
	if s.ResourceVersion != rv {
		t.Error("a sync with nothing to renew rewrote the Secret")
	}
	a, _ := os.ReadFile(filepath.Join(m.CertDir, ServerCertKey))
	b, _ := os.ReadFile(filepath.Join(replica.CertDir, ServerCertKey))
	if !bytes.Equal(a, b) {
		t.Error("replicas serve different certificates")
	}

	// The configurations re-applied without a caBundle are repaired.
	applyFiles(t, admin, filepath.Join(root, "config", "webhook"), "500-webhooks.yaml")
	if err := m.Sync(ctx); err != nil {
		t.Fatal(err)
	}
	checkCABundles(t, admin, caBundle)

	// Renewal goes through the Secret to every replica.
	now = now.Add(DefaultCertValidity * 7 / 10)
	if err := m.Sync(ctx); err != nil {
		t.Fatal(err)
	}
	if err := replica.Sync(ctx); err != nil {
		t.Fatal(err)
	}
	a2, _ := os.ReadFile(filepath.Join(m.CertDir, ServerCertKey))
	b2, _ := os.ReadFile(filepath.Join(replica.CertDir, ServerCertKey))
	if bytes.Equal(a, a2) || !bytes.Equal(a2, b2) {
		t.Error("renewed certificate not shared by the replicas")
	}

	// Least privilege: nothing beyond its own Secret.
	var secrets corev1.SecretList
	if err := c.List(ctx, &secrets, client.InNamespace("llmd-kn")); !apierrors.IsForbidden(err) {
		t.Errorf("listing Secrets: %v, want Forbidden", err)
	}
	var other corev1.Secret
	if err := c.Get(ctx, types.NamespacedName{Namespace: "kube-system", Name: "anything"}, &other); !apierrors.IsForbidden(err) {
		t.Errorf("reading another Secret: %v, want Forbidden", err)
	}
	var cms corev1.ConfigMapList
	if err := c.List(ctx, &cms, client.InNamespace("knative-serving")); err != nil {
		t.Errorf("listing Knative's ConfigMaps: %v", err)
	}
}

func checkCABundles(t *testing.T, c client.Client, want []byte) {
	t.Helper()
	ctx := context.Background()
	var mw admissionregistrationv1.MutatingWebhookConfiguration
	if err := c.Get(ctx, types.NamespacedName{Name: "defaulting.webhook.llm-d.ai"}, &mw); err != nil {
		t.Fatal(err)
	}
	for _, w := range mw.Webhooks {
		if !bytes.Equal(w.ClientConfig.CABundle, want) {
			t.Errorf("mutating webhook %s: caBundle not the Secret's", w.Name)
		}
	}
	var vw admissionregistrationv1.ValidatingWebhookConfiguration
	if err := c.Get(ctx, types.NamespacedName{Name: "validation.webhook.llm-d.ai"}, &vw); err != nil {
		t.Fatal(err)
	}
	for _, w := range vw.Webhooks {
		if !bytes.Equal(w.ClientConfig.CABundle, want) {
			t.Errorf("validating webhook %s: caBundle not the Secret's", w.Name)
		}
	}
}

func handshake(t *testing.T, dir string, caBundle []byte, name string) {
	t.Helper()
	pair, err := tls.LoadX509KeyPair(filepath.Join(dir, ServerCertKey), filepath.Join(dir, ServerKeyKey))
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { io.WriteString(w, "ok") }))
	srv.TLS = &tls.Config{Certificates: []tls.Certificate{pair}, MinVersion: tls.VersionTLS12}
	srv.StartTLS()
	defer srv.Close()
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(caBundle)
	cl := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool, ServerName: name, MinVersion: tls.VersionTLS12}}}
	resp, err := cl.Get(srv.URL)
	if err != nil {
		t.Fatalf("TLS to the webhook as %s: %v", name, err)
	}
	resp.Body.Close()
}

func keys(m map[string][]byte) []string {
	var out []string
	for k := range m {
		out = append(out, k)
	}
	return out
}

func applyFiles(t *testing.T, c client.Client, dir string, names ...string) {
	t.Helper()
	for _, n := range names {
		data, err := os.ReadFile(filepath.Join(dir, n))
		if err != nil {
			t.Fatal(err)
		}
		applyYAML(t, c, data)
	}
}

// applyYAML creates each document, or replaces it when it exists (as a
// re-applied manifest would).
func applyYAML(t *testing.T, c client.Client, data []byte) {
	t.Helper()
	ctx := context.Background()
	dec := utilyaml.NewYAMLOrJSONDecoder(bytes.NewReader(data), 4096)
	for {
		var u unstructured.Unstructured
		if err := dec.Decode(&u.Object); err != nil {
			if errors.Is(err, io.EOF) {
				return
			}
			t.Fatal(err)
		}
		if len(u.Object) == 0 {
			continue
		}
		err := c.Create(ctx, &u)
		if apierrors.IsAlreadyExists(err) {
			var cur unstructured.Unstructured
			cur.SetGroupVersionKind(u.GroupVersionKind())
			if err = c.Get(ctx, client.ObjectKeyFromObject(&u), &cur); err == nil {
				u.SetResourceVersion(cur.GetResourceVersion())
				err = c.Update(ctx, &u)
			}
		}
		if err != nil {
			t.Fatalf("apply %s %s: %v", u.GetKind(), u.GetName(), err)
		}
	}
}
