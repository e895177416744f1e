package admission

import (
	"context"
	"errors"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	servingv1 "knative.dev/serving/pkg/apis/serving/v1"

	"github.com/llmd-kn/llmd-kn/pkg/apis"
)

var vocab = apis.Vocabulary{
	RoutingProfiles: []string{"default", "kv-precise"},
	Tiers:           []string{"critical", "standard", "batch"},
	SimProfiles:     []string{"llama-3.1-8b-h100"},
}

func service(ann map[string]string, mod func(*servingv1.Service)) *servingv1.Service {
	s := &servingv1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: "llm", Namespace: "default"},
		Spec: servingv1.ServiceSpec{ConfigurationSpec: servingv1.ConfigurationSpec{Template: servingv1.RevisionTemplateSpec{
			ObjectMeta: metav1.ObjectMeta{Annotations: ann},
			Spec: servingv1.RevisionSpec{PodSpec: corev1.PodSpec{Containers: []corev1.Container{{
				Image: "vllm/vllm-openai:v0.11.0", Args: []string{"--model", "m"},
			}}}},
		}}},
	}
	if mod != nil {
		mod(s)
	}
	return s
}

func TestDefaultSetsKnativeAndLLMDDefaults(t *testing.T) {
	s := service(map[string]string{apis.DisaggregationAnnotation: "prefill-decode"}, nil)
	Default(context.Background(), s)
	ann := s.Spec.Template.Annotations
	if ann[apis.ClassAnnotation] != apis.AutoscalerClass || ann[apis.TargetBurstCapacityAnnotation] != "-1" {
		t.Fatalf("llm-d defaults missing: %v", ann)
	}
	if s.Spec.Template.Spec.Containers[0].Name == "" || s.Spec.Template.Spec.TimeoutSeconds == nil {
		t.Fatalf("Knative defaults missing: %+v", s.Spec.Template.Spec)
	}
	if len(s.Spec.Traffic) != 1 || s.Spec.Traffic[0].LatestRevision == nil || !*s.Spec.Traffic[0].LatestRevision {
		t.Fatalf("default traffic: %+v", s.Spec.Traffic)
	}
	// Idempotent, and a service with no llm-d key keeps Knative's class.
	Default(context.Background(), s)
	plain := service(nil, nil)
	Default(context.Background(), plain)
	if _, ok := plain.Spec.Template.Annotations[apis.ClassAnnotation]; ok {
		t.Fatalf("class set on a plain Service: %v", plain.Spec.Template.Annotations)
	}
	if _, _, err := Validate(context.Background(), s, vocab); err != nil {
		t.Fatalf("defaulted service invalid: %v", err)
	}
}

func TestValidate(t *testing.T) {
	tests := []struct {
		name string
		ann  map[string]string
		mod  func(*servingv1.Service)
		want []string // "path: message fragment"
	}{
		{name: "valid", ann: map[string]string{apis.RoutingProfileAnnotation: "kv-precise", apis.MinScaleAnnotation: "2"}},
		{name: "unknown routing profile", ann: map[string]string{apis.RoutingProfileAnnotation: "fastest"},
			want: []string{`spec.template.metadata.annotations[llm-d.ai/routing-profile]: invalid value "fastest"`}},
		{name: "negative min-scale reported once, in llm-d's words", ann: map[string]string{apis.MinScaleAnnotation: "-1"},
			want: []string{`spec.template.metadata.annotations[autoscaling.knative.dev/min-scale]: invalid value "-1": must be an integer >= 0`}},
		{name: "knative-only annotation error keeps knative's message", ann: map[string]string{"autoscaling.knative.dev/window": "2h"},
			want: []string{`spec.template.metadata.annotations[autoscaling.knative.dev/window]: expected 6s <= 2h <= 1h0m0s`}},
		{name: "llm-d key on the Service only", mod: func(s *servingv1.Service) {
			s.Annotations = map[string]string{apis.DisaggregationAnnotation: "prefill-decode"}
		}, want: []string{`metadata.annotations[llm-d.ai/disaggregation]: llm-d annotations configure revisions: set it on the revision template`}},
		{name: "llm-d key on the Service with another value than the template's", ann: map[string]string{apis.DisaggregationAnnotation: "none"},
			mod: func(s *servingv1.Service) {
				s.Annotations = map[string]string{apis.DisaggregationAnnotation: "prefill-decode"}
			}, want: []string{`metadata.annotations[llm-d.ai/disaggregation]: llm-d annotations configure revisions`}},
		{name: "llm-d key on both, as kn --annotation writes it", ann: map[string]string{apis.DisaggregationAnnotation: "prefill-decode"},
			mod: func(s *servingv1.Service) {
				s.Annotations = map[string]string{apis.DisaggregationAnnotation: "prefill-decode"}
			}},
		{name: "no image", mod: func(s *servingv1.Service) { s.Spec.Template.Spec.Containers[0].Image = "" },
			want: []string{`spec.template.spec.containers[0].image: missing field(s)`}},
		{name: "bad name", mod: func(s *servingv1.Service) { s.Name = "LLM_1" },
			want: []string{"metadata.name: "}},
		{name: "every problem at once", ann: map[string]string{apis.DisaggregationAnnotation: "both", "llm-d.ai/typo": "x"},
			want: []string{`[llm-d.ai/disaggregation]: invalid value "both"`, `[llm-d.ai/typo]: unknown llm-d annotation`}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			s := service(tc.ann, tc.mod)
			Default(context.Background(), s)
			_, _, err := Validate(context.Background(), s, vocab)
			if len(tc.want) == 0 {
				if err != nil {
					t.Fatalf("unexpected error: %v", err)
				}
				return
			}
			var fes apis.Errors
			if !errors.As(err, &fes) {
				t.Fatalf("error %v (%T), want apis.Errors", err, err)
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q lacks %q", err, w)
				}
			}
			if tc.name == "negative min-scale reported once, in llm-d's words" && len(fes) != 1 {
				t.Errorf("want one error, got %d: %v", len(fes), err)
			}
		})
	}
}

func TestNormalizePath(t *testing.T) {
	for in, want := range map[string]string{
		"spec.template.metadata.annotations.autoscaling.knative.dev/min-scale": "spec.template.metadata.annotations[autoscaling.knative.dev/min-scale]",
		"metadata.labels.serving.knative.dev/visibility":                       "metadata.labels[serving.knative.dev/visibility]",
		"spec.template.spec.containers[0].image":                               "spec.template.spec.containers[0].image",
		"metadata.annotations[llm-d.ai/model]":                                 "metadata.annotations[llm-d.ai/model]",
		"spec.template.metadata.myannotations.x":                               "spec.template.metadata.myannotations.x",
	} {
		if got := NormalizePath(in); got != want {
			t.Errorf("NormalizePath(%q) = %q, want %q", in, got, want)
		}
	}
}
