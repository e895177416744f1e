package webhook

import (
	"context"
	"encoding/json"
	"math/rand/v2"
	"strings"
	"testing"

	jsonpatch "github.com/evanphx/json-patch/v5"
	"github.com/google/go-cmp/cmp"
	admissionv1 "k8s.io/api/admission/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"knative.dev/serving/pkg/apis/config"
	"sigs.k8s.io/controller-runtime/pkg/webhook/admission"

	"github.com/llmd-kn/llmd-kn/pkg/apis"
)

type staticConfig struct{ cfg *config.Config }

func (s staticConfig) Load(context.Context) (*config.Config, error) { return s.cfg, nil }

func request(kind, op string, obj string) admission.Request {
	return admission.Request{AdmissionRequest: admissionv1.AdmissionRequest{
		Kind:      metav1.GroupVersionKind{Group: "serving.knative.dev", Version: "v1", Kind: kind},
		Operation: admissionv1.Operation(op),
		Object:    runtime.RawExtension{Raw: []byte(obj)},
	}}
}

// apply applies a response's patches to the request's object, as the API
// server does.
func apply(t *testing.T, raw string, resp admission.Response) map[string]any {
	t.Helper()
	if !resp.Allowed {
		t.Fatalf("denied: %v", resp.Result)
	}
	ops, err := json.Marshal(resp.Patches)
	if err != nil {
		t.Fatal(err)
	}
	p, err := jsonpatch.DecodePatch(ops)
	if err != nil {
		t.Fatal(err)
	}
	out, err := p.Apply([]byte(raw))
	if err != nil {
		t.Fatalf("patch does not apply to the raw object: %v\npatch: %s", err, ops)
	}
	var m map[string]any
	if err := json.Unmarshal(out, &m); err != nil {
		t.Fatal(err)
	}
	return m
}

func TestPatchKeepsUnknownFieldsAndAddsMissingParents(t *testing.T) {
	// No spec.template.metadata at all, and a field no Go type here knows.
	raw := `{"apiVersion":"serving.knative.dev/v1","kind":"Service",
		"metadata":{"name":"s","namespace":"ns","annotations":{"x":"y"}},
		"spec":{"futureField":{"a":1},"template":{"spec":{"containers":[{"image":"vllm/vllm-openai","args":["m"],"futureContainerField":true}]}}}}`
	// Without llm-d annotations on the template: nothing.
	d := &Defaulter{Config: staticConfig{knativeConfig(t, nil, fieldRefOn)}}
	if resp := d.Handle(context.Background(), request("Service", "CREATE", raw)); len(resp.Patches) != 0 || !resp.Allowed {
		t.Fatalf("a Service without llm-d annotations was patched: %+v", resp)
	}

	raw = strings.Replace(raw, `"template":{`, `"template":{"metadata":{"annotations":{"llm-d.ai/model":"m"}},`, 1)
	resp := d.Handle(context.Background(), request("Service", "CREATE", raw))
	got := apply(t, raw, resp)
	spec := got["spec"].(map[string]any)
	if d := cmp.Diff(map[string]any{"a": 1.0}, spec["futureField"]); d != "" {
		t.Errorf("unknown field lost (-want +got):\n%s", d)
	}
	ann := spec["template"].(map[string]any)["metadata"].(map[string]any)["annotations"].(map[string]any)
	if ann[apis.ClassAnnotation] != apis.AutoscalerClass {
		t.Errorf("annotations %v", ann)
	}
	if m := got["metadata"].(map[string]any)["annotations"].(map[string]any); len(m) != 1 {
		t.Errorf("Service annotations changed: %v", m)
	}
	for _, p := range resp.Patches {
		if p.Operation == "remove" {
			t.Errorf("patch removes %s", p.Path)
		}
	}

	// Idempotent through the handler too.
	again, _ := json.Marshal(got)
	if resp := d.Handle(context.Background(), request("Service", "UPDATE", string(again))); len(resp.Patches) != 0 {
		t.Errorf("second pass patched: %+v", resp.Patches)
	}
}

func TestHandlersSkipServiceOwnedConfigurations(t *testing.T) {
	raw := `{"apiVersion":"serving.knative.dev/v1","kind":"Configuration",
		"metadata":{"name":"c","namespace":"ns","labels":{"serving.knative.dev/service":"s"}},
		"spec":{"template":{"metadata":{"annotations":{"llm-d.ai/routing-profile":"fastest"}},"spec":{"containers":[{"image":"x/y"}]}}}}`
	d := &Defaulter{Config: staticConfig{knativeConfig(t, nil, nil)}}
	if resp := d.Handle(context.Background(), request("Configuration", "UPDATE", raw)); len(resp.Patches) != 0 {
		t.Errorf("Service-owned Configuration defaulted: %+v", resp.Patches)
	}
	v := &Validator{Config: staticConfig{knativeConfig(t, nil, nil)}, Vocabulary: apis.Vocabulary{RoutingProfiles: []string{"default"}}}
	if resp := v.Handle(context.Background(), request("Configuration", "UPDATE", raw)); !resp.Allowed {
		t.Errorf("Service-owned Configuration judged on its own: %v", resp.Result)
	}
	standalone := strings.Replace(raw, `"labels":{"serving.knative.dev/service":"s"}`, `"labels":{}`, 1)
	resp := v.Handle(context.Background(), request("Configuration", "CREATE", standalone))
	if resp.Allowed || !strings.Contains(resp.Result.Message, `: spec.template.metadata.annotations[llm-d.ai/routing-profile]`) {
		t.Errorf("stand-alone Configuration with a bad profile: %+v", resp.Result)
	}
}

// TestDefaulterIdempotentOnRandomCommandLines: for container command lines
// drawn from the words that matter (vLLM flags in both spellings, shells,
// models), the defaulting patch applies to the object the API server sent,
// and a second round on the result patches nothing. A seeded generator
// rather than a fuzz target: fuzzing instruments and rebuilds every
// Kubernetes and Knative package this one imports, minutes on a cold CI
// machine.
func TestDefaulterIdempotentOnRandomCommandLines(t *testing.T) {
	words := []string{"vllm", "serve", "sh", "-c", "bash", "-lc", "m", "org/model", "--port", "8000",
		"--model", "--model=x", "--served-model-name", "--served_model_name=y",
		"--enable-prefix-caching", "--no-enable-prefix-caching", "--enable_prefix_caching",
		"--scheduling-policy", "fcfs", "--scheduling-policy=priority",
		"--kv-events-config", "{}", `--kv-events-config={"enable_kv_cache_events":true,"publisher":"zmq","endpoint":"tcp://*:5557","topic":"kv@$(POD_IP)@old"}`,
		"--kv-transfer-config", "--kv_transfer_config={}", "", "-"}
	pick := func(r *rand.Rand) []string {
		n := r.IntN(7)
		out := make([]string, n)
		for i := range out {
			out[i] = words[r.IntN(len(words))]
		}
		return out
	}
	on := &Defaulter{Config: staticConfig{knativeConfig(t, nil, fieldRefOn)}}
	off := &Defaulter{Config: staticConfig{knativeConfig(t, nil, nil)}}
	r := rand.New(rand.NewPCG(1, 2))
	for i := range 2000 {
		ann := map[string]any{apis.SLOTierAnnotation: "standard"}
		if m := words[r.IntN(len(words))]; r.IntN(2) == 0 {
			ann[apis.ModelAnnotation] = m
		}
		if r.IntN(2) == 0 {
			ann[apis.DisaggregationAnnotation] = apis.DisaggregationPrefillDecode
		}
		container := map[string]any{"image": "vllm/vllm-openai", "args": pick(r)}
		if c := pick(r); len(c) > 0 {
			container["command"] = c
		}
		if r.IntN(3) == 0 {
			container["env"] = []any{map[string]any{"name": "POD_IP", "value": "10.0.0.1"}}
		}
		raw, err := json.Marshal(map[string]any{
			"apiVersion": "serving.knative.dev/v1", "kind": "Service",
			"metadata": map[string]any{"name": "s", "namespace": "ns"},
			"spec": map[string]any{"template": map[string]any{
				"metadata": map[string]any{"annotations": ann},
				"spec":     map[string]any{"containers": []any{container}},
			}},
		})
		if err != nil {
			t.Fatal(err)
		}
		d := off
		if r.IntN(2) == 0 {
			d = on
		}
		once := apply(t, string(raw), d.Handle(context.Background(), request("Service", "CREATE", string(raw))))
		again, err := json.Marshal(once)
		if err != nil {
			t.Fatal(err)
		}
		if resp := d.Handle(context.Background(), request("Service", "UPDATE", string(again))); len(resp.Patches) != 0 || !resp.Allowed {
			t.Fatalf("case %d: second round: allowed %v, patches %+v\nsent: %s\nafter the first: %s", i, resp.Allowed, resp.Patches, raw, again)
		}
	}
}
