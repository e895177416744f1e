// Command webhook is llmd-kn's admission webhook for Knative Serving: it
// validates llm-d.ai/* annotations on serving.knative.dev Services,
// Configurations and Revisions, and defaults what a vLLM revision needs
// (pkg/webhook). In a cluster it keeps its own TLS certificate
// (pkg/webhook/certs): a CA and serving certificate in a Secret, the CA
// bundle patched into its webhook configurations. config/webhook holds the
// manifests.
//
//	webhook --namespace llmd-kn --port 9443
//
// The annotation vocabulary (routing profiles, SLO tiers) is the built-in
// one unless --router-config and --tiers name the data of
// config-llmd-router and config-llmd-tiers, as for the activator.
package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/go-logr/logr"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	ctrl "sigs.k8s.io/controller-runtime"

	"github.com/llmd-kn/llmd-kn/pkg/activator"
	"github.com/llmd-kn/llmd-kn/pkg/apis"
	"github.com/llmd-kn/llmd-kn/pkg/engine"
	"github.com/llmd-kn/llmd-kn/pkg/router"
	"github.com/llmd-kn/llmd-kn/pkg/webhook"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, os.Args[1:], os.Stderr); err != nil {
		fmt.Fprintln(os.Stderr, "webhook:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, args []string, stderr io.Writer) error {
	fl := flag.NewFlagSet("webhook", flag.ContinueOnError)
	fl.SetOutput(stderr)
	namespace := os.Getenv("POD_NAMESPACE")
	if namespace == "" {
		namespace = "llmd-kn"
	}
	var (
		kubeconfig  = fl.String("kubeconfig", "", "kubeconfig file; in-cluster configuration (or $KUBECONFIG) when empty")
		port        = fl.Int("port", 9443, "HTTPS port of the admission endpoints")
		certDir     = fl.String("cert-dir", "/tmp/k8s-webhook-server/serving-certs", "directory of tls.crt and tls.key")
		selfSigned  = fl.Bool("self-signed-certs", true, "create, rotate and publish the certificate (false: something else, e.g. cert-manager, fills --cert-dir and the caBundle)")
		ns          = fl.String("namespace", namespace, "namespace of the webhook's Service and certificate Secret")
		service     = fl.String("service-name", "llmd-kn-webhook", "the webhook's Service, whose DNS names the certificate covers")
		secret      = fl.String("secret-name", "llmd-kn-webhook-certs", "Secret holding the CA and serving certificate")
		mutating    = fl.String("mutating-webhook-configuration", "defaulting.webhook.llm-d.ai", "MutatingWebhookConfiguration to patch the caBundle into")
		validating  = fl.String("validating-webhook-configuration", "validation.webhook.llm-d.ai", "ValidatingWebhookConfiguration to patch the caBundle into")
		knativeNS   = fl.String("knative-namespace", webhook.KnativeNamespace, "namespace of Knative Serving's ConfigMaps (config-defaults, config-features, config-autoscaler)")
		routerFile  = fl.String("router-config", "", "router configuration (the config-llmd-router data): the routing profiles accepted; built-in when empty")
		tiersFile   = fl.String("tiers", "", "SLO tier table (the config-llmd-tiers data); built-in when empty")
		healthAddr  = fl.String("health-addr", ":8081", "address of /healthz and /readyz")
		metricsAddr = fl.String("metrics-addr", ":9090", `address of /metrics ("0" disables)`)
	)
	if err := fl.Parse(args); err != nil {
		return err
	}
	logger := logr.FromSlogHandler(slog.NewJSONHandler(stderr, nil))
	ctrl.SetLogger(logger)
	ctx = logr.NewContext(ctx, logger)

	vocab, err := vocabulary(*routerFile, *tiersFile)
	if err != nil {
		return err
	}
	tiers, err := activator.LoadTiers(*tiersFile)
	if err != nil {
		return err
	}
	cfg, err := restConfig(*kubeconfig)
	if err != nil {
		return err
	}
	logger.Info("starting", "port", *port, "namespace", *ns, "knativeNamespace", *knativeNS,
		"routingProfiles", vocab.RoutingProfiles, "tiers", vocab.Tiers)
	return webhook.Run(ctx, cfg, webhook.Options{
		Port: *port, CertDir: *certDir, SelfSignedCerts: *selfSigned,
		Namespace: *ns, ServiceName: *service, SecretName: *secret,
		MutatingWebhookConfiguration: *mutating, ValidatingWebhookConfiguration: *validating,
		KnativeNamespace: *knativeNS, Vocabulary: vocab,
		Defaults: webhook.DefaultOptions{TierTPOT: func(name string) time.Duration {
			t, _ := tiers.Get(name)
			return time.Duration(t.TPOT)
		}},
		HealthAddr: *healthAddr, MetricsAddr: *metricsAddr,
	})
}

func restConfig(kubeconfig string) (*rest.Config, error) {
	if kubeconfig != "" {
		return clientcmd.BuildConfigFromFlags("", kubeconfig)
	}
	return ctrl.GetConfig()
}

// vocabulary is what annotation values are accepted: the routing
// profiles and SLO tiers the activator is configured with, and the
// built-in engine profiles.
func vocabulary(routerFile, tiersFile string) (apis.Vocabulary, error) {
	tiers, err := activator.LoadTiers(tiersFile)
	if err != nil {
		return apis.Vocabulary{}, err
	}
	rcfg, err := router.LoadConfig(routerFile)
	if err != nil {
		return apis.Vocabulary{}, err
	}
	return apis.Vocabulary{
		RoutingProfiles: rcfg.ProfileNames(),
		Tiers:           tiers.Names(),
		SimProfiles:     engine.BuiltinProfileNames(),
	}, nil
}
