package discovery

import (
	"slices"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	servingv1 "knative.dev/serving/pkg/apis/serving/v1"

	"github.com/llmd-kn/llmd-kn/pkg/activator"
	"github.com/llmd-kn/llmd-kn/pkg/apis"
	"github.com/llmd-kn/llmd-kn/pkg/engine"
	"github.com/llmd-kn/llmd-kn/pkg/router"
)

func readyPod(mod func(*corev1.Pod)) *corev1.Pod {
	p := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: "llm-00001-deployment-abc", Labels: map[string]string{}},
		Spec: corev1.PodSpec{Containers: []corev1.Container{
			{Name: "user-container", Ports: []corev1.ContainerPort{{Name: "user-port", ContainerPort: 8000}}},
			{Name: QueueProxy, Ports: []corev1.ContainerPort{{ContainerPort: 8012}}},
		}},
		Status: corev1.PodStatus{Phase: corev1.PodRunning, PodIP: "10.0.0.7",
			Conditions: []corev1.PodCondition{{Type: corev1.PodReady, Status: corev1.ConditionTrue}}},
	}
	if mod != nil {
		mod(p)
	}
	return p
}

func TestRoutable(t *testing.T) {
	now := metav1.NewTime(time.Now())
	for _, tc := range []struct {
		name string
		mod  func(*corev1.Pod)
		want bool
	}{
		{"running and ready", nil, true},
		{"pending", func(p *corev1.Pod) { p.Status.Phase = corev1.PodPending }, false},
		{"not ready", func(p *corev1.Pod) { p.Status.Conditions[0].Status = corev1.ConditionFalse }, false},
		{"no ready condition", func(p *corev1.Pod) { p.Status.Conditions = nil }, false},
		{"no IP yet", func(p *corev1.Pod) { p.Status.PodIP = "" }, false},
		{"terminating", func(p *corev1.Pod) { p.DeletionTimestamp = &now }, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := Routable(readyPod(tc.mod)); got != tc.want {
				t.Fatalf("Routable = %v, want %v", got, tc.want)
			}
		})
	}
}

func TestPodSpec(t *testing.T) {
	for _, tc := range []struct {
		name          string
		mod           func(*corev1.Pod)
		disaggregated bool
		want          activator.PodSpec
		err           string
	}{
		{name: "vLLM container past queue-proxy", want: activator.PodSpec{Name: "llm-00001-deployment-abc", URL: "http://10.0.0.7:8000", Role: router.RoleBoth}},
		{name: "queue-proxy first", mod: func(p *corev1.Pod) { slices.Reverse(p.Spec.Containers) },
			want: activator.PodSpec{Name: "llm-00001-deployment-abc", URL: "http://10.0.0.7:8000", Role: router.RoleBoth}},
		{name: "no port declared: 8080", mod: func(p *corev1.Pod) { p.Spec.Containers[0].Ports = nil },
			want: activator.PodSpec{Name: "llm-00001-deployment-abc", URL: "http://10.0.0.7:8080", Role: router.RoleBoth}},
		{name: "KV events", mod: func(p *corev1.Pod) {
			p.Spec.Containers[0].Args = []string{"--model", "m", "--kv-events-config", `{"enable_kv_cache_events":true}`}
		}, want: activator.PodSpec{Name: "llm-00001-deployment-abc", URL: "http://10.0.0.7:8000", Role: router.RoleBoth, KVEvents: "tcp://10.0.0.7:5557"}},
		{name: "IPv6", mod: func(p *corev1.Pod) { p.Status.PodIP = "fd00::7" },
			want: activator.PodSpec{Name: "llm-00001-deployment-abc", URL: "http://[fd00::7]:8000", Role: router.RoleBoth}},
		{name: "decode pod of a P/D revision", disaggregated: true,
			want: activator.PodSpec{Name: "llm-00001-deployment-abc", URL: "http://10.0.0.7:8000", Role: router.RoleDecode}},
		{name: "prefill pod", disaggregated: true, mod: func(p *corev1.Pod) { p.Labels[RoleLabel] = "prefill" },
			want: activator.PodSpec{Name: "llm-00001-deployment-abc", URL: "http://10.0.0.7:8000", Role: router.RolePrefill}},
		{name: "bad role", mod: func(p *corev1.Pod) { p.Labels[RoleLabel] = "both" }, err: "metadata.labels[llm-d.ai/role]"},
		{name: "only queue-proxy", mod: func(p *corev1.Pod) { p.Spec.Containers = p.Spec.Containers[1:] }, err: "spec.containers"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := PodSpec(readyPod(tc.mod), tc.disaggregated)
			if tc.err != "" {
				if err == nil || !strings.Contains(err.Error(), tc.err) {
					t.Fatalf("err = %v, want one naming %s", err, tc.err)
				}
				return
			}
			if err != nil || got != tc.want {
				t.Fatalf("PodSpec = %+v, %v; want %+v", got, err, tc.want)
			}
		})
	}
}

func TestRevisionConfig(t *testing.T) {
	vocab := activator.NewVocabulary(activator.DefaultTiers(), router.DefaultConfig())
	rev := func(ann map[string]string, args ...string) *servingv1.Revision {
		r := &servingv1.Revision{ObjectMeta: metav1.ObjectMeta{Name: "llm-00002", Namespace: "ns", Annotations: ann,
			Labels: map[string]string{"serving.knative.dev/service": "llm", "serving.knative.dev/configuration": "llm"}}}
		r.Spec.Containers = []corev1.Container{{Image: "vllm", Args: args}}
		return r
	}
	route := &servingv1.Route{}
	route.Status.Traffic = []servingv1.TrafficTarget{
		{RevisionName: "llm-00002", Tag: "batch"}, {RevisionName: "llm-00001", Tag: "old"}, {RevisionName: "llm-00002", Tag: "canary"}, {RevisionName: "llm-00002"},
	}
	for _, tc := range []struct {
		name     string
		rev      *servingv1.Revision
		models   []string
		priority bool
	}{
		{"model annotation", rev(map[string]string{apis.ModelAnnotation: "llama"}, "--served-model-name", "other"), []string{"llama"}, false},
		{"served model names", rev(nil, "--served-model-name", "a", "b", "--scheduling-policy", "priority"), []string{"a", "b"}, true},
		{"served model name inline", rev(nil, "--served_model_name=a", "--scheduling-policy=fcfs"), []string{"a"}, false},
		{"--model", rev(nil, "--model", "meta-llama/Llama-3.1-8B", "--port", "8000"), []string{"meta-llama/Llama-3.1-8B"}, false},
		{"vllm serve MODEL", rev(nil, "vllm", "serve", "Qwen/Qwen3-8B"), []string{"Qwen/Qwen3-8B"}, false},
		{"the image's vllm serve entrypoint", rev(nil, "Qwen/Qwen3-8B", "--port", "8000"), []string{"Qwen/Qwen3-8B"}, false},
		{"the Service's name", rev(nil, "--port", "8000"), []string{"llm"}, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg, err := RevisionConfig(tc.rev, route, vocab)
			if err != nil {
				t.Fatal(err)
			}
			if !slices.Equal(cfg.Models, tc.models) || cfg.PriorityScheduling != tc.priority || cfg.Service != "llm" ||
				!slices.Equal(cfg.Tags, []string{"batch", "canary"}) || cfg.Key != (activator.RevisionKey{Namespace: "ns", Name: "llm-00002"}) {
				t.Fatalf("got %+v", cfg)
			}
		})
	}
	// --max-num-seqs reaches admission (KV-bound pods under priority
	// scheduling); a value vLLM would refuse leaves it unknown.
	for args, want := range map[string]int{"--max-num-seqs 8": 8, "--max-num-seqs=16": 16, "--max-num-seqs lots": 0, "--port 8000": engine.DefaultMaxNumSeqs} {
		cfg, err := RevisionConfig(rev(nil, strings.Fields(args)...), route, vocab)
		if err != nil || cfg.MaxNumSeqs != want {
			t.Errorf("%s: MaxNumSeqs %d (%v), want %d", args, cfg.MaxNumSeqs, err, want)
		}
	}
	_, err := RevisionConfig(rev(map[string]string{apis.SLOTTFTAnnotation: "soon"}), nil, vocab)
	if err == nil || !strings.Contains(err.Error(), "metadata.annotations[llm-d.ai/slo-ttft]") {
		t.Fatalf("bad annotation: %v", err)
	}
}
