package reconciler

import (
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"knative.dev/serving/pkg/apis/autoscaling/v1alpha1"

	"github.com/llmd-kn/llmd-kn/pkg/autoscaler"
)

// TestKnativeAnnotationsOverrideTheDefaults: a Knative user's per-revision
// autoscaling annotations mean the same for this class as for the KPA.
func TestKnativeAnnotationsOverrideTheDefaults(t *testing.T) {
	def := autoscaler.DefaultConfig()
	cases := []struct {
		name  string
		ann   map[string]string
		check func(c autoscaler.Config) bool
	}{
		{"none", nil, func(c autoscaler.Config) bool { return c == def }},
		{"window", map[string]string{"autoscaling.knative.dev/window": "2m"},
			func(c autoscaler.Config) bool { return c.StableWindow == 2*time.Minute }},
		{"panic window and threshold", map[string]string{"autoscaling.knative.dev/panic-window-percentage": "20", "autoscaling.knative.dev/panic-threshold-percentage": "400"},
			func(c autoscaler.Config) bool {
				return c.PanicWindowPercentage == 20 && c.PanicThresholdPercentage == 400
			}},
		{"scale-down delay", map[string]string{"autoscaling.knative.dev/scale-down-delay": "45s"},
			func(c autoscaler.Config) bool { return c.ScaleDownDelay == 45*time.Second }},
		{"target utilization", map[string]string{"autoscaling.knative.dev/target-utilization-percentage": "60"},
			func(c autoscaler.Config) bool { return c.TargetUtilization == 0.6 }},
		{"retention longer than the grace period", map[string]string{"autoscaling.knative.dev/scale-to-zero-pod-retention-period": "10m"},
			func(c autoscaler.Config) bool { return c.ScaleToZeroGracePeriod == 10*time.Minute }},
		{"retention shorter than the grace period", map[string]string{"autoscaling.knative.dev/scale-to-zero-pod-retention-period": "1s"},
			func(c autoscaler.Config) bool { return c.ScaleToZeroGracePeriod == def.ScaleToZeroGracePeriod }},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			c := def
			knativeOverrides(&c, &v1alpha1.PodAutoscaler{ObjectMeta: metav1.ObjectMeta{Annotations: tc.ann}})
			if !tc.check(c) {
				t.Fatalf("config %+v", c)
			}
			if err := c.Validate(); err != nil {
				t.Fatal(err)
			}
		})
	}
}
