package webhook

import (
	"context"
	"fmt"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/client-go/rest"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/cache"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/healthz"
	metricsserver "sigs.k8s.io/controller-runtime/pkg/metrics/server"
	crwebhook "sigs.k8s.io/controller-runtime/pkg/webhook"
	"sigs.k8s.io/controller-runtime/pkg/webhook/admission"

	"github.com/llmd-kn/llmd-kn/pkg/apis"
	"github.com/llmd-kn/llmd-kn/pkg/webhook/certs"
)

// Options configure Run; cmd/webhook fills them from flags.
type Options struct {
	// Port of the HTTPS admission endpoints, on all interfaces.
	Port int
	// CertDir holds tls.crt and tls.key.
	CertDir string
	// SelfSignedCerts: keep the certificate with pkg/webhook/certs. When
	// false, something else (cert-manager, say) fills CertDir and the
	// caBundle.
	SelfSignedCerts bool
	// Namespace, ServiceName and SecretName locate the webhook's Service
	// and certificate Secret.
	Namespace, ServiceName, SecretName string
	// The webhook configurations that get the CA bundle.
	MutatingWebhookConfiguration, ValidatingWebhookConfiguration string
	// KnativeNamespace holds Knative Serving's ConfigMaps.
	KnativeNamespace string
	// Vocabulary is what annotation values are accepted.
	Vocabulary apis.Vocabulary
	// Defaults is llmd-kn's configuration for defaulting (tier targets).
	Defaults DefaultOptions
	// HealthAddr serves /healthz and /readyz; MetricsAddr /metrics ("0"
	// disables).
	HealthAddr, MetricsAddr string
}

// Run serves the webhook until ctx ends: a controller-runtime manager
// whose cache watches only Knative's ConfigMaps, the two handlers, and,
// with SelfSignedCerts, the certificate kept and rotated. The first
// certificate is in place before the server starts.
func Run(ctx context.Context, cfg *rest.Config, o Options) error {
	mgr, err := ctrl.NewManager(cfg, ctrl.Options{
		HealthProbeBindAddress: o.HealthAddr,
		Metrics:                metricsserver.Options{BindAddress: o.MetricsAddr},
		WebhookServer:          crwebhook.NewServer(crwebhook.Options{Port: o.Port, CertDir: o.CertDir}),
		// The only objects read through the cache are Knative's
		// ConfigMaps: watch that namespace's alone (and need RBAC for no
		// other).
		Cache: cache.Options{ByObject: map[client.Object]cache.ByObject{
			&corev1.ConfigMap{}: {Namespaces: map[string]cache.Config{o.KnativeNamespace: {}}},
		}},
	})
	if err != nil {
		return fmt.Errorf("manager: %w", err)
	}
	if o.SelfSignedCerts {
		// A client without a cache: the Secret and the two configurations
		// are read by name, which RBAC grants by name.
		c, err := client.New(cfg, client.Options{})
		if err != nil {
			return err
		}
		cm := &certs.Manager{
			Client: c, Namespace: o.Namespace, SecretName: o.SecretName, ServiceName: o.ServiceName,
			MutatingWebhookConfiguration: o.MutatingWebhookConfiguration, ValidatingWebhookConfiguration: o.ValidatingWebhookConfiguration,
			CertDir: o.CertDir,
		}
		if err := cm.SyncUntil(ctx, 2*time.Minute); err != nil {
			return err
		}
		if err := mgr.Add(cm); err != nil {
			return err
		}
	}
	knative := &KnativeConfig{Reader: mgr.GetCache(), Namespace: o.KnativeNamespace}
	srv := mgr.GetWebhookServer()
	srv.Register(DefaultingPath, &admission.Webhook{Handler: &Defaulter{Config: knative, Options: o.Defaults}})
	srv.Register(ValidationPath, &admission.Webhook{Handler: &Validator{Config: knative, Vocabulary: o.Vocabulary}})
	if err := mgr.AddHealthzCheck("ping", healthz.Ping); err != nil {
		return err
	}
	if err := mgr.AddReadyzCheck("webhook", srv.StartedChecker()); err != nil {
		return err
	}
	return mgr.Start(ctx)
}
