package reconciler

import (
	"context"
	"crypto/tls"
	"errors"
	"path/filepath"
	"time"

	"k8s.io/client-go/rest"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/llmd-kn/llmd-kn/pkg/internaltls"
	"github.com/llmd-kn/llmd-kn/pkg/webhook/certs"
)

// The stats API's TLS (issue 17): the activators' bearer tokens let their
// holder move replicas, so they travel only inside TLS, to a server that
// proved it is the autoscaler. The autoscaler keeps, by default, its own
// CA and serving certificate in a Secret (pkg/webhook/certs, as the
// webhook does; rotated at a third of their life left, a renewed CA
// bundled next to the old one until it expires), writes the pair to
// CertDir and serves it, re-reading it when it changes. The activators
// mount only the Secret's ca-bundle.crt and verify the autoscaler's
// certificate against it for its Service's name. Nothing else has to
// exist first (no cert-manager, no job): an operator applies config/ and
// the first autoscaler fills the Secret before it serves; activators that
// start before it wait for the kubelet to project the bundle. With
// cert-manager instead, SelfSigned is false and CertDir is its Secret's
// mount; the activators mount the issuer's CA.

// DefaultStatsTLSSecret holds the stats API's CA and serving certificate.
const DefaultStatsTLSSecret = "llmd-autoscaler-certs"

// StatsTLS configures the stats API's TLS.
type StatsTLS struct {
	// CertDir holds tls.crt and tls.key; empty: plaintext.
	CertDir string
	// SelfSigned keeps a CA and the serving certificate in the Secret
	// Namespace/SecretName, for the DNS names of the Service
	// Namespace/ServiceName, and writes the pair to CertDir.
	SelfSigned                         bool
	Namespace, SecretName, ServiceName string
}

// Setup returns the server's TLS configuration (nil for plaintext) and,
// with SelfSigned, the certificate keeper to run (a controller-runtime
// Runnable on every replica) after the first certificate is in place.
func (o StatsTLS) Setup(ctx context.Context, cfg *rest.Config) (*tls.Config, *certs.Manager, error) {
	if o.CertDir == "" {
		if o.SelfSigned {
			return nil, nil, errors.New("self-signed stats TLS needs a certificate directory")
		}
		return nil, nil, nil
	}
	var keeper *certs.Manager
	if o.SelfSigned {
		// A client without a cache: one Secret read by name, which RBAC
		// grants by name.
		c, err := client.New(cfg, client.Options{})
		if err != nil {
			return nil, nil, err
		}
		keeper = &certs.Manager{Client: c, Namespace: o.Namespace, SecretName: o.SecretName, ServiceName: o.ServiceName,
			CertDir: o.CertDir, CAName: "llmd-kn autoscaler CA"}
		if err := keeper.SyncUntil(ctx, 2*time.Minute); err != nil {
			return nil, nil, err
		}
	}
	tc, err := internaltls.ServerConfig(filepath.Join(o.CertDir, internaltls.CertFile), filepath.Join(o.CertDir, internaltls.KeyFile))
	if err != nil {
		return nil, nil, err
	}
	return tc, keeper, nil
}
