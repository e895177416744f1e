package webhook

import (
	"context"
	"fmt"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/types"
	"knative.dev/serving/pkg/apis/config"
	asconfig "knative.dev/serving/pkg/autoscaler/config"
	"sigs.k8s.io/controller-runtime/pkg/client"
)

// KnativeNamespace is where Knative Serving keeps its configuration.
const KnativeNamespace = "knative-serving"

// KnativeConfig reads Knative Serving's configuration (config-defaults,
// config-features, config-autoscaler) from the cluster, parsed by
// Knative's own code, so that llmd-kn's defaults stay within what
// Knative's webhook will accept (for example max-revision-timeout-seconds)
// and its validation judges Knative's fields as Knative does. A missing
// ConfigMap means Knative's built-in defaults.
type KnativeConfig struct {
	// Reader is normally the manager's cache, restricted to the
	// ConfigMaps of Namespace.
	Reader    client.Reader
	Namespace string
}

// Load returns the current configuration.
func (k *KnativeConfig) Load(ctx context.Context) (*config.Config, error) {
	ns := k.Namespace
	if ns == "" {
		ns = KnativeNamespace
	}
	data := func(name string) (map[string]string, error) {
		var cm corev1.ConfigMap
		err := k.Reader.Get(ctx, types.NamespacedName{Namespace: ns, Name: name}, &cm)
		if apierrors.IsNotFound(err) {
			return map[string]string{}, nil
		}
		if err != nil {
			return nil, fmt.Errorf("read Knative configuration %s/%s: %w", ns, name, err)
		}
		return cm.Data, nil
	}
	var cfg config.Config
	d, err := data(config.DefaultsConfigName)
	if err != nil {
		return nil, err
	}
	if cfg.Defaults, err = config.NewDefaultsConfigFromMap(d); err != nil {
		return nil, fmt.Errorf("%s/%s: %w", ns, config.DefaultsConfigName, err)
	}
	if d, err = data(config.FeaturesConfigName); err != nil {
		return nil, err
	}
	if cfg.Features, err = config.NewFeaturesConfigFromMap(d); err != nil {
		return nil, fmt.Errorf("%s/%s: %w", ns, config.FeaturesConfigName, err)
	}
	if d, err = data(asconfig.ConfigName); err != nil {
		return nil, err
	}
	if cfg.Autoscaler, err = asconfig.NewConfigFromMap(d); err != nil {
		return nil, fmt.Errorf("%s/%s: %w", ns, asconfig.ConfigName, err)
	}
	return &cfg, nil
}
