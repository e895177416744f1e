package config_test

import (
	"context"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	servingv1 "knative.dev/serving/pkg/apis/serving/v1"
	"sigs.k8s.io/yaml"

	"github.com/llmd-kn/llmd-kn/pkg/activator"
	"github.com/llmd-kn/llmd-kn/pkg/admission"
	"github.com/llmd-kn/llmd-kn/pkg/apis"
	"github.com/llmd-kn/llmd-kn/pkg/engine"
	"github.com/llmd-kn/llmd-kn/pkg/local"
	"github.com/llmd-kn/llmd-kn/pkg/router"
	"github.com/llmd-kn/llmd-kn/pkg/webhook"
)

// vocabulary is what the deployed webhook accepts: the routing profiles and
// tiers of the ConfigMaps it mounts, as cmd/webhook builds it.
func vocabulary(t *testing.T) apis.Vocabulary {
	t.Helper()
	rcfg, err := router.ParseConfig([]byte(configMap(t, router.ConfigMapName).Data[router.ConfigKey]))
	if err != nil {
		t.Fatal(err)
	}
	tiers, err := activator.ParseTiers([]byte(configMap(t, "config-llmd-tiers").Data["tiers.yaml"]))
	if err != nil {
		t.Fatal(err)
	}
	return apis.Vocabulary{RoutingProfiles: rcfg.ProfileNames(), Tiers: tiers.Names(), SimProfiles: engine.BuiltinProfileNames()}
}

// readService decodes a sample strictly: a misspelt field is an error here
// rather than silently dropped by the API server.
func readService(t *testing.T, path string) *servingv1.Service {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	svc := &servingv1.Service{}
	if err := yaml.UnmarshalStrict(data, svc); err != nil {
		t.Fatalf("%s: %v", filepath.Base(path), err)
	}
	return svc
}

// admit defaults and validates svc as the webhook does on create.
func admit(svc *servingv1.Service, vocab apis.Vocabulary) (apis.Spec, []string, error) {
	ctx := context.Background()
	admission.Default(ctx, svc)
	return admission.Validate(ctx, svc, vocab)
}

// Every sample is a Knative Service the webhook admits, defaulted to
// llmd-kn's autoscaler class, and shows what its name promises.
func TestSamplesPassAdmission(t *testing.T) {
	vocab := vocabulary(t)
	files, err := filepath.Glob(filepath.Join(repo(t), "config", "samples", "*.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	seen := map[string]bool{}
	for _, f := range files {
		name := filepath.Base(f)
		seen[name] = true
		t.Run(name, func(t *testing.T) {
			// `kn-llmd local -f` runs every sample too.
			data, err := os.ReadFile(f)
			if err != nil {
				t.Fatal(err)
			}
			if _, err := local.Parse(name, data, local.DefaultVocabulary()); err != nil {
				t.Errorf("kn-llmd local would refuse %s: %v", name, err)
			}
			svc := readService(t, f)
			spec, warnings, err := admit(svc, vocab)
			if err != nil {
				t.Fatalf("the webhook would refuse %s: %v", name, err)
			}
			for _, w := range warnings {
				// Knative warns about every container that leaves the
				// Kubernetes security defaults; vLLM's image runs as root.
				if strings.Contains(w, "Knative may default this to secure") {
					continue
				}
				t.Errorf("warning: %s", w)
			}
			if got := svc.Spec.Template.Annotations[apis.ClassAnnotation]; got != apis.AutoscalerClass {
				t.Errorf("autoscaler class %q, want %q", got, apis.AutoscalerClass)
			}
			switch name {
			case "pd.yaml", "quickstart.yaml":
				if !spec.Disaggregated() {
					t.Errorf("%s is not prefill-decode", name)
				}
			case "kv-offload.yaml":
				k := spec.KVOffload
				if !k.Enabled() || k.URI == "" || k.Secret == "" || k.CPUTierBytes == 0 {
					t.Errorf("%s does not offload to storage with a Secret and a CPU tier: %+v", name, k)
				}
				// What the cluster webhook injects still passes Knative's
				// validation, without warnings about offload (KV events need
				// a Knative feature flag a default config lacks).
				injected := svc.DeepCopy()
				for _, w := range webhook.DefaultService(injected, nil) {
					if !strings.HasPrefix(w, "KV events not configured") {
						t.Errorf("%s: webhook warning %s", name, w)
					}
				}
				if _, _, err := admission.Validate(context.Background(), injected, vocab); err != nil {
					t.Errorf("%s after the webhook's injection: %v", name, err)
				}
				c := injected.Spec.Template.Spec.Containers[0]
				if len(c.EnvFrom) != 1 || c.EnvFrom[0].SecretRef == nil || c.EnvFrom[0].SecretRef.Name != k.Secret {
					t.Errorf("%s: the Secret is not referenced by envFrom after defaulting: %+v", name, c.EnvFrom)
				}
				if !slices.Contains(c.Args, "--kv-transfer-config") {
					t.Errorf("%s: no --kv-transfer-config after defaulting: %v", name, c.Args)
				}
			case "slo-tiers.yaml":
				var tags []string
				for _, tt := range svc.Spec.Traffic {
					if tt.Tag == "" {
						continue
					}
					tags = append(tags, tt.Tag)
					if !spec.AllowsTier(tt.Tag) {
						t.Errorf("traffic tag %q is not a tier the Service accepts (%v)", tt.Tag, spec.AllowedTiers)
					}
				}
				if len(tags) < 2 {
					t.Errorf("traffic tags %v, want at least two tiers", tags)
				}
			}
		})
	}
	for _, want := range []string{"quickstart.yaml", "pd.yaml", "slo-tiers.yaml", "kv-offload.yaml"} {
		if !seen[want] {
			t.Errorf("config/samples/%s missing", want)
		}
	}
}

// The check above has teeth: with the vocabulary of the deployed
// ConfigMaps, a sample with a bad value is refused, naming the annotation.
func TestSampleWithBadAnnotationIsRefused(t *testing.T) {
	vocab := vocabulary(t)
	for _, tc := range []struct{ file, key, value string }{
		{"quickstart.yaml", apis.RoutingProfileAnnotation, "fastest"},
		{"slo-tiers.yaml", apis.SLOTiersAnnotation, "critical,gold"},
		{"slo-tiers.yaml", apis.SLOTierAnnotation, "gold"},
		{"pd.yaml", apis.PDThresholdAnnotation, "-1"},
		{"pd.yaml", "llm-d.ai/prefill-scale", "1"},
		{"kv-offload.yaml", apis.KVOffloadURIAnnotation, "s3://key:secret@bucket/x"},
		{"kv-offload.yaml", apis.KVOffloadSecretAnnotation, "AWS_SECRET_ACCESS_KEY=x"},
	} {
		t.Run(tc.key+"="+tc.value, func(t *testing.T) {
			svc := readService(t, filepath.Join(repo(t), "config", "samples", tc.file))
			svc.Spec.Template.Annotations[tc.key] = tc.value
			_, _, err := admit(svc, vocab)
			want := admission.TemplateAnnotationsPath + "[" + tc.key + "]"
			if err == nil || !strings.Contains(err.Error(), want) {
				t.Errorf("%s with %s=%s: %v, want an error at %s", tc.file, tc.key, tc.value, err, want)
			}
		})
	}
}
