package config_test

import (
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	eventingv1 "knative.dev/eventing/pkg/apis/eventing/v1"
	servingv1 "knative.dev/serving/pkg/apis/serving/v1"
	"sigs.k8s.io/controller-runtime/pkg/envtest"

	"github.com/llmd-kn/llmd-kn/internal/kubetest"
	"github.com/llmd-kn/llmd-kn/pkg/batch"
)

const eventingSample = "config/samples/eventing/batch.yaml"

// The Knative Eventing sample decodes strictly into Eventing's own types,
// subscribes the quickstart's Service to llmd-kn's request events, routes
// its response and error events, and names a dead-letter sink.
func TestEventingSampleShape(t *testing.T) {
	data, err := os.ReadFile(filepath.Join(repo(t), eventingSample))
	if err != nil {
		t.Fatal(err)
	}
	objs, err := decodeAll(data)
	if err != nil {
		t.Fatal(err)
	}
	var requests, results bool
	for _, u := range objs {
		raw, _ := json.Marshal(u.Object)
		switch u.GetKind() {
		case "Broker":
			var b eventingv1.Broker
			if err := strictJSON(raw, &b); err != nil {
				t.Fatalf("Broker %s: %v", u.GetName(), err)
			}
			if b.Spec.Delivery == nil || b.Spec.Delivery.DeadLetterSink == nil {
				t.Errorf("Broker %s has no dead-letter sink", b.Name)
			}
		case "Trigger":
			var tr eventingv1.Trigger
			if err := strictJSON(raw, &tr); err != nil {
				t.Fatalf("Trigger %s: %v", u.GetName(), err)
			}
			switch {
			case tr.Spec.Filter != nil && tr.Spec.Filter.Attributes["type"] == batch.TypeRequest:
				requests = tr.Spec.Subscriber.Ref != nil && tr.Spec.Subscriber.Ref.Kind == "Service" && tr.Spec.Subscriber.Ref.Name == "llm" &&
					tr.Spec.Delivery != nil && tr.Spec.Delivery.DeadLetterSink != nil
			case strings.Contains(string(raw), batch.TypeResponse) && strings.Contains(string(raw), batch.TypeError):
				results = true
			}
		case "Service":
			var svc servingv1.Service
			if err := strictJSON(raw, &svc); err != nil {
				t.Fatalf("Service %s: %v", u.GetName(), err)
			}
		default:
			t.Errorf("unexpected %s in the sample", u.GetKind())
		}
	}
	if !requests || !results {
		t.Fatalf("request trigger to the llm Service with a dead-letter sink: %v; results trigger: %v", requests, results)
	}
}

func strictJSON(raw []byte, v any) error {
	dec := json.NewDecoder(strings.NewReader(string(raw)))
	dec.DisallowUnknownFields()
	return dec.Decode(v)
}

// TestEventingSampleApplies applies the sample with the real kubectl, as a
// server-side dry run, to a real API server with Knative Eventing's CRDs
// (from the knative.dev/eventing module) and Serving's.
func TestEventingSampleApplies(t *testing.T) {
	kc := kubectl(t)
	assets := kubetest.AssetsOrSkip(t)
	crds, err := kubetest.EventingCRDs("broker", "trigger")
	if err != nil {
		t.Fatal(err)
	}
	serving, err := kubetest.ServingCRDs("service")
	if err != nil {
		t.Fatal(err)
	}
	env := &envtest.Environment{BinaryAssetsDirectory: assets, ErrorIfCRDPathMissing: true,
		CRDInstallOptions: envtest.CRDInstallOptions{Paths: append(crds, serving...)}}
	if _, err := env.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = env.Stop() })
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
	out, err := runKubectl(context.Background(), kc, kubeconfig, "apply", "--dry-run=server", "-f", filepath.Join(repo(t), eventingSample))
	if err != nil {
		t.Fatalf("kubectl apply --dry-run=server -f %s: %v\n%s", eventingSample, err, out)
	}
	for _, want := range []string{
		"broker.eventing.knative.dev/llm-batch created (server dry run)",
		"trigger.eventing.knative.dev/llm-batch-requests created (server dry run)",
		"trigger.eventing.knative.dev/llm-batch-results created (server dry run)",
		"service.serving.knative.dev/llm-batch-dead-letters created (server dry run)",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("kubectl said\n%s\nwant %q", out, want)
		}
	}
}
