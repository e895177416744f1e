// Package certs keeps the webhook's TLS serving certificate: a private CA
// and a serving certificate for the webhook Service's DNS names, kept in
// one Secret so that every replica serves the same, written to the
// directory the webhook server watches, and the CA bundle patched into the
// webhook configurations so that the API server trusts it. Certificates
// are renewed when a third of their lifetime is left; a renewed CA is
// added to the bundle next to the old one until the old one expires, so
// that certificates signed by either are trusted while replicas catch up.
//
// It uses a client without a cache: it reads one Secret and two webhook
// configurations by name, which least-privilege RBAC can grant by name.
// It knows nothing of admission itself.
package certs

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"os"
	"path/filepath"
	"slices"
	"time"

	admissionregistrationv1 "k8s.io/api/admissionregistration/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/util/retry"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/log"
)

// Keys of the Secret.
const (
	CACertKey     = "ca.crt"
	CAKeyKey      = "ca.key"
	CABundleKey   = "ca-bundle.crt"
	ServerCertKey = "tls.crt" // also the file name controller-runtime's server reads
	ServerKeyKey  = "tls.key"
)

// Default lifetimes.
const (
	DefaultCAValidity   = 10 * 365 * 24 * time.Hour
	DefaultCertValidity = 365 * 24 * time.Hour
)

// Manager keeps the certificate. Its zero lifetimes mean the defaults.
type Manager struct {
	Client client.Client
	// Namespace and SecretName name the Secret; ServiceName the webhook's
	// Service in Namespace, whose DNS names the certificate covers.
	Namespace, SecretName, ServiceName string
	// MutatingWebhookConfiguration and ValidatingWebhookConfiguration are
	// the configurations whose webhooks get the CA bundle; empty to skip.
	MutatingWebhookConfiguration, ValidatingWebhookConfiguration string
	// CertDir receives tls.crt and tls.key.
	CertDir string
	// Interval between checks in Start (default one minute: a
	// configuration re-applied without its caBundle is repaired soon).
	Interval                 time.Duration
	CAValidity, CertValidity time.Duration
	// Now is the clock (time.Now if nil).
	Now func() time.Time
	// CAName is the CA's common name ("llmd-kn webhook CA" when empty).
	CAName string
}

// DNSNames are the names the serving certificate covers.
func (m *Manager) DNSNames() []string {
	s, ns := m.ServiceName, m.Namespace
	return []string{s, s + "." + ns, s + "." + ns + ".svc", s + "." + ns + ".svc.cluster.local"}
}

// Start runs Sync every Interval until ctx ends; it is a controller-runtime
// Runnable. Failures are logged and retried at the next tick: the
// certificate on disk stays valid for months.
func (m *Manager) Start(ctx context.Context) error {
	interval := m.Interval
	if interval <= 0 {
		interval = time.Minute
	}
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
			if err := m.Sync(ctx); err != nil {
				log.FromContext(ctx).Error(err, "certificate sync failed; retrying", "in", interval)
			}
		}
	}
}

// NeedLeaderElection is false: every replica serves and needs the files.
func (m *Manager) NeedLeaderElection() bool { return false }

// Sync makes the Secret hold a valid CA and serving certificate (creating
// or renewing them as needed), patches the CA bundle into the webhook
// configurations, and then writes the serving certificate to CertDir: the
// API server learns of a new CA before any replica presents a
// certificate signed by it.
func (m *Manager) Sync(ctx context.Context) error {
	var b *bundle
	err := retry.RetryOnConflict(retry.DefaultRetry, func() error {
		var err error
		b, err = m.ensureSecret(ctx)
		return err
	})
	if err != nil {
		return err
	}
	if err := m.patchCABundle(ctx, b.caBundle); err != nil {
		return err
	}
	return m.writeFiles(b)
}

// SyncUntil retries the first Sync for up to limit: at start the API
// server may not be reachable yet, and a server cannot start without a
// certificate on disk.
func (m *Manager) SyncUntil(ctx context.Context, limit time.Duration) error {
	deadline := time.Now().Add(limit)
	for {
		err := m.Sync(ctx)
		if err == nil {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("certificate in secret %s/%s: %w", m.Namespace, m.SecretName, err)
		}
		log.FromContext(ctx).Error(err, "certificate not ready; retrying")
		select {
		case <-ctx.Done():
			return errors.Join(ctx.Err(), err)
		case <-time.After(2 * time.Second):
		}
	}
}

// SelfSigned makes a CA valid for caValidity and a serving certificate for
// names signed by it, valid for certValidity, as the Manager keeps them
// (PEM). For tests and callers that keep no Secret.
func SelfSigned(now time.Time, caValidity, certValidity time.Duration, names []string) (caPEM, certPEM, keyPEM []byte, err error) {
	caPEM, caKeyPEM, err := newCA(now, caValidity, "llmd-kn CA")
	if err != nil {
		return nil, nil, nil, err
	}
	ca, caKey, err := parsePair(caPEM, caKeyPEM)
	if err != nil {
		return nil, nil, nil, err
	}
	certPEM, keyPEM, err = newServingCert(now, certValidity, ca, caKey, names)
	return caPEM, certPEM, keyPEM, err
}

type bundle struct {
	caCert, caKey, caBundle, cert, key []byte
}

func (m *Manager) now() time.Time {
	if m.Now != nil {
		return m.Now()
	}
	return time.Now()
}

func (m *Manager) ensureSecret(ctx context.Context) (*bundle, error) {
	var s corev1.Secret
	key := types.NamespacedName{Namespace: m.Namespace, Name: m.SecretName}
	err := m.Client.Get(ctx, key, &s)
	exists := err == nil
	if err != nil && !apierrors.IsNotFound(err) {
		return nil, fmt.Errorf("get secret %s: %w", key, err)
	}
	b := &bundle{
		caCert: s.Data[CACertKey], caKey: s.Data[CAKeyKey], caBundle: s.Data[CABundleKey],
		cert: s.Data[ServerCertKey], key: s.Data[ServerKeyKey],
	}
	changed, err := m.renew(b)
	if err != nil {
		return nil, err
	}
	if !changed {
		return b, nil
	}
	s.Data = map[string][]byte{
		CACertKey: b.caCert, CAKeyKey: b.caKey, CABundleKey: b.caBundle,
		ServerCertKey: b.cert, ServerKeyKey: b.key,
	}
	if exists {
		err = m.Client.Update(ctx, &s)
	} else {
		s.ObjectMeta = metav1.ObjectMeta{Namespace: m.Namespace, Name: m.SecretName}
		s.Type = corev1.SecretTypeOpaque
		err = m.Client.Create(ctx, &s)
	}
	if err != nil {
		return nil, fmt.Errorf("store certificates in secret %s: %w", key, err)
	}
	log.FromContext(ctx).Info("certificates renewed", "secret", key.String())
	return b, nil
}

// renew replaces what in b is missing, invalid or due for renewal, and
// reports whether anything changed.
func (m *Manager) renew(b *bundle) (bool, error) {
	now := m.now()
	caValidity, certValidity := m.CAValidity, m.CertValidity
	if caValidity <= 0 {
		caValidity = DefaultCAValidity
	}
	if certValidity <= 0 {
		certValidity = DefaultCertValidity
	}
	changed := false
	ca, caKey, err := parsePair(b.caCert, b.caKey)
	if err != nil || !ca.IsCA || dueForRenewal(ca, now) {
		caPEM, keyPEM, err := newCA(now, caValidity, m.CAName)
		if err != nil {
			return false, err
		}
		b.caCert, b.caKey = caPEM, keyPEM
		if ca, caKey, err = parsePair(caPEM, keyPEM); err != nil {
			return false, err
		}
		changed = true
	}
	// The bundle: the current CA first, then older CAs still valid.
	newBundle := append([]byte{}, b.caCert...)
	for _, c := range parseCerts(b.caBundle) {
		if now.Before(c.NotAfter) && !c.Equal(ca) {
			newBundle = append(newBundle, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: c.Raw})...)
		}
	}
	if !bytes.Equal(newBundle, b.caBundle) {
		b.caBundle = newBundle
		changed = true
	}
	cert, _, err := parsePair(b.cert, b.key)
	if err != nil || cert.CheckSignatureFrom(ca) != nil || dueForRenewal(cert, now) || !covers(cert, m.DNSNames()) {
		if b.cert, b.key, err = newServingCert(now, certValidity, ca, caKey, m.DNSNames()); err != nil {
			return false, err
		}
		changed = true
	}
	return changed, nil
}

// dueForRenewal: a third of the lifetime or less is left.
func dueForRenewal(c *x509.Certificate, now time.Time) bool {
	life := c.NotAfter.Sub(c.NotBefore)
	return now.Add(life / 3).After(c.NotAfter)
}

func covers(c *x509.Certificate, names []string) bool {
	for _, n := range names {
		if !slices.Contains(c.DNSNames, n) {
			return false
		}
	}
	return true
}

func parsePair(certPEM, keyPEM []byte) (*x509.Certificate, *ecdsa.PrivateKey, error) {
	pair, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		return nil, nil, err
	}
	cert, err := x509.ParseCertificate(pair.Certificate[0])
	if err != nil {
		return nil, nil, err
	}
	key, ok := pair.PrivateKey.(*ecdsa.PrivateKey)
	if !ok {
		return nil, nil, errors.New("not an ECDSA key")
	}
	return cert, key, nil
}

func parseCerts(pemData []byte) []*x509.Certificate {
	var out []*x509.Certificate
	for {
		var blk *pem.Block
		blk, pemData = pem.Decode(pemData)
		if blk == nil {
			return out
		}
		if c, err := x509.ParseCertificate(blk.Bytes); err == nil {
			out = append(out, c)
		}
	}
}

func serial() (*big.Int, error) {
	return rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 128))
}

func newCA(now time.Time, validity time.Duration, name string) (certPEM, keyPEM []byte, err error) {
	if name == "" {
		name = "llmd-kn webhook CA"
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, err
	}
	sn, err := serial()
	if err != nil {
		return nil, nil, err
	}
	tmpl := &x509.Certificate{
		SerialNumber:          sn,
		Subject:               pkix.Name{CommonName: name, Organization: []string{"llmd-kn"}},
		NotBefore:             now.Add(-time.Hour), // clock skew
		NotAfter:              now.Add(validity),
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign | x509.KeyUsageDigitalSignature,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return nil, nil, fmt.Errorf("create CA: %w", err)
	}
	return encode(der, key)
}

func newServingCert(now time.Time, validity time.Duration, ca *x509.Certificate, caKey *ecdsa.PrivateKey, names []string) (certPEM, keyPEM []byte, err error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, err
	}
	sn, err := serial()
	if err != nil {
		return nil, nil, err
	}
	notAfter := now.Add(validity)
	if notAfter.After(ca.NotAfter) {
		notAfter = ca.NotAfter
	}
	if len(names) == 0 {
		return nil, nil, errors.New("a serving certificate needs a DNS name")
	}
	cn := names[0] // <service>.<namespace>.svc when the Manager's names
	if len(names) >= 2 {
		cn = names[len(names)-2]
	}
	tmpl := &x509.Certificate{
		SerialNumber: sn,
		Subject:      pkix.Name{CommonName: cn, Organization: []string{"llmd-kn"}},
		DNSNames:     names,
		NotBefore:    now.Add(-time.Hour),
		NotAfter:     notAfter,
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, &key.PublicKey, caKey)
	if err != nil {
		return nil, nil, fmt.Errorf("create serving certificate: %w", err)
	}
	return encode(der, key)
}

func encode(der []byte, key *ecdsa.PrivateKey) (certPEM, keyPEM []byte, err error) {
	k, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		return nil, nil, err
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}),
		pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: k}), nil
}

func (m *Manager) patchCABundle(ctx context.Context, caBundle []byte) error {
	if name := m.MutatingWebhookConfiguration; name != "" {
		var c admissionregistrationv1.MutatingWebhookConfiguration
		err := m.setCABundle(ctx, name, &c, caBundle, func() []*admissionregistrationv1.WebhookClientConfig {
			out := make([]*admissionregistrationv1.WebhookClientConfig, len(c.Webhooks))
			for i := range c.Webhooks {
				out[i] = &c.Webhooks[i].ClientConfig
			}
			return out
		})
		if err != nil {
			return fmt.Errorf("patch caBundle of MutatingWebhookConfiguration %s: %w", name, err)
		}
	}
	if name := m.ValidatingWebhookConfiguration; name != "" {
		var c admissionregistrationv1.ValidatingWebhookConfiguration
		err := m.setCABundle(ctx, name, &c, caBundle, func() []*admissionregistrationv1.WebhookClientConfig {
			out := make([]*admissionregistrationv1.WebhookClientConfig, len(c.Webhooks))
			for i := range c.Webhooks {
				out[i] = &c.Webhooks[i].ClientConfig
			}
			return out
		})
		if err != nil {
			return fmt.Errorf("patch caBundle of ValidatingWebhookConfiguration %s: %w", name, err)
		}
	}
	return nil
}

// setCABundle reads the webhook configuration name into obj, sets caBundle
// on every client config that configs returns (read after each Get), and
// writes it back when something changed, retrying on conflicts.
func (m *Manager) setCABundle(ctx context.Context, name string, obj client.Object, caBundle []byte,
	configs func() []*admissionregistrationv1.WebhookClientConfig) error {
	return retry.RetryOnConflict(retry.DefaultRetry, func() error {
		if err := m.Client.Get(ctx, types.NamespacedName{Name: name}, obj); err != nil {
			return err
		}
		changed := false
		for _, cc := range configs() {
			if !bytes.Equal(cc.CABundle, caBundle) {
				cc.CABundle = caBundle
				changed = true
			}
		}
		if !changed {
			return nil
		}
		return m.Client.Update(ctx, obj)
	})
}

// writeFiles writes the serving pair when it differs from what is on disk,
// each file by rename so that the server's watcher never reads half of one.
func (m *Manager) writeFiles(b *bundle) error {
	if m.CertDir == "" {
		return nil
	}
	if err := os.MkdirAll(m.CertDir, 0o700); err != nil {
		return err
	}
	// Key first: the watcher reloads on the certificate's change.
	for _, f := range []struct {
		name string
		data []byte
	}{{ServerKeyKey, b.key}, {ServerCertKey, b.cert}} {
		p := filepath.Join(m.CertDir, f.name)
		if old, err := os.ReadFile(p); err == nil && bytes.Equal(old, f.data) {
			continue
		}
		tmp, err := os.CreateTemp(m.CertDir, "."+f.name+".*")
		if err != nil {
			return err
		}
		if _, err := tmp.Write(f.data); err != nil {
			tmp.Close()
			os.Remove(tmp.Name())
			return err
		}
		if err := tmp.Close(); err != nil {
			os.Remove(tmp.Name())
			return err
		}
		if err := os.Rename(tmp.Name(), p); err != nil {
			os.Remove(tmp.Name())
			return fmt.Errorf("write %s: %w", p, err)
		}
	}
	return nil
}
