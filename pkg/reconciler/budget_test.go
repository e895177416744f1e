package reconciler

import (
	"testing"

	"github.com/google/go-cmp/cmp"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"knative.dev/serving/pkg/apis/autoscaling/v1alpha1"

	"github.com/llmd-kn/llmd-kn/pkg/apis"
)

func TestPrefillDeploymentStepBudget(t *testing.T) {
	for _, tc := range []struct {
		name   string
		choice string
		args   []string
		want   []string
	}{
		{"webhook's choice, inline", "2048 prefill=8192: TPOT 100ms", []string{"m", "--max-num-batched-tokens=2048"}, []string{"m", "--max-num-batched-tokens=8192"}},
		{"webhook's choice, separate", "2048 prefill=8192: TPOT 100ms", []string{"--max-num-batched-tokens", "2048", "--port", "8000"}, []string{"--max-num-batched-tokens", "8192", "--port", "8000"}},
		{"user's value", "2048 prefill=8192: TPOT 100ms", []string{"--max-num-batched-tokens=1000"}, []string{"--max-num-batched-tokens=1000"}},
		{"no prefill budget", "2048: TPOT 100ms", []string{"--max-num-batched-tokens=2048"}, []string{"--max-num-batched-tokens=2048"}},
		{"no choice", "", []string{"--max-num-batched-tokens=2048"}, []string{"--max-num-batched-tokens=2048"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			pa := &v1alpha1.PodAutoscaler{ObjectMeta: metav1.ObjectMeta{Name: "rev", Namespace: "ns", UID: "u"}}
			decode := &appsv1.Deployment{Spec: appsv1.DeploymentSpec{Template: corev1.PodTemplateSpec{
				ObjectMeta: metav1.ObjectMeta{Annotations: map[string]string{}},
				Spec:       corev1.PodSpec{Containers: []corev1.Container{{Name: "user-container", Args: tc.args}}},
			}}}
			if tc.choice != "" {
				decode.Spec.Template.Annotations[apis.StepTokenBudgetChoiceAnnotation] = tc.choice
			}
			before := append([]string(nil), tc.args...)
			d := MakePrefillDeployment(pa, decode, 1)
			if diff := cmp.Diff(tc.want, d.Spec.Template.Spec.Containers[0].Args); diff != "" {
				t.Errorf("prefill args (-want +got):\n%s", diff)
			}
			if diff := cmp.Diff(before, decode.Spec.Template.Spec.Containers[0].Args); diff != "" {
				t.Errorf("decode template changed:\n%s", diff)
			}
		})
	}
}
