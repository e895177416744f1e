package reconciler

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"knative.dev/serving/pkg/apis/autoscaling/v1alpha1"
	"sigs.k8s.io/yaml"

	"github.com/llmd-kn/llmd-kn/internal/kubetest"
	"github.com/llmd-kn/llmd-kn/pkg/apis"
	"github.com/llmd-kn/llmd-kn/pkg/autoscaler"
)

func TestParseConfig(t *testing.T) {
	for _, tc := range []struct {
		name    string
		data    map[string]string
		check   func(t *testing.T, c autoscaler.Config)
		wantErr []string
	}{
		{name: "empty is the defaults", data: nil, check: func(t *testing.T, c autoscaler.Config) {
			if c != autoscaler.DefaultConfig() {
				t.Errorf("got %+v, want the defaults", c)
			}
		}},
		{name: "every key", data: map[string]string{
			KeyTickInterval: "1s", KeyStableWindow: "30s", KeyPanicWindowPercentage: "20", KeyPanicThresholdPercentage: "300",
			KeyMaxScaleUpRate: "10", KeyMaxScaleDownRate: "4", KeyScaleDownDelay: "15s", KeyScaleToZeroGracePeriod: " 45s\n",
			KeyTargetUtilization: "0.7", KeyColdStart: "45s", "_example": "ignored text",
		}, check: func(t *testing.T, c autoscaler.Config) {
			want := autoscaler.DefaultConfig()
			want.ColdStart = 45 * time.Second
			want.TickInterval, want.StableWindow, want.ScaleDownDelay, want.ScaleToZeroGracePeriod = time.Second, 30*time.Second, 15*time.Second, 45*time.Second
			want.PanicWindowPercentage, want.PanicThresholdPercentage, want.MaxScaleUpRate, want.MaxScaleDownRate, want.TargetUtilization = 20, 300, 10, 4, 0.7
			if c != want {
				t.Errorf("got %+v\nwant %+v", c, want)
			}
		}},
		{name: "bad values name their keys", data: map[string]string{KeyTickInterval: "two", KeyTargetUtilization: "most"},
			wantErr: []string{`tick-interval: invalid value "two"`, `target-utilization: invalid value "most"`}},
		{name: "cold start", data: map[string]string{KeyColdStart: "2m"}, check: func(t *testing.T, c autoscaler.Config) {
			if c.ColdStart != 2*time.Minute {
				t.Errorf("cold start %v, want 2m", c.ColdStart)
			}
		}},
		{name: "cold start not a duration", data: map[string]string{KeyColdStart: "slow"},
			wantErr: []string{`cold-start: invalid value "slow": must be a duration`}},
		{name: "cold start without a unit", data: map[string]string{KeyColdStart: "30"},
			wantErr: []string{`cold-start: invalid value "30": must be a duration`}},
		{name: "negative cold start", data: map[string]string{KeyColdStart: "-10s"},
			wantErr: []string{"cold-start: must not be negative"}},
		{name: "unknown key", data: map[string]string{"stable-windw": "60s"}, wantErr: []string{"stable-windw: unknown key", KeyStableWindow}},
		{name: "out of range names the key", data: map[string]string{KeyTargetUtilization: "1.5", KeyMaxScaleDownRate: "1"},
			wantErr: []string{"target-utilization: must be in (0, 1]", "max-scale-down-rate: must be greater than 1"}},
		{name: "stable window shorter than the tick", data: map[string]string{KeyTickInterval: "10s", KeyStableWindow: "5s"},
			wantErr: []string{"stable-window: must be at least tickInterval"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c, err := ParseConfig(tc.data)
			if len(tc.wantErr) > 0 {
				if err == nil {
					t.Fatal("no error")
				}
				for _, w := range tc.wantErr {
					if !strings.Contains(err.Error(), w) {
						t.Errorf("error %q does not contain %q", err, w)
					}
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			tc.check(t, c)
		})
	}
}

// TestLoadConfigDir reads a directory laid out as Kubernetes mounts a
// ConfigMap: keys are symlinks into a timestamped directory.
func TestLoadConfigDir(t *testing.T) {
	dir := t.TempDir()
	data := filepath.Join(dir, "..2026_11_23_23_00_00.123")
	if err := os.Mkdir(data, 0o755); err != nil {
		t.Fatal(err)
	}
	for k, v := range map[string]string{KeyTickInterval: "500ms", KeyScaleToZeroGracePeriod: "10s", "_example": "# docs"} {
		if err := os.WriteFile(filepath.Join(data, k), []byte(v), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.Symlink(filepath.Base(data), filepath.Join(dir, "..data")); err != nil {
		t.Fatal(err)
	}
	for _, k := range []string{KeyTickInterval, KeyScaleToZeroGracePeriod, "_example"} {
		if err := os.Symlink(filepath.Join("..data", k), filepath.Join(dir, k)); err != nil {
			t.Fatal(err)
		}
	}
	c, err := LoadConfigDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	if c.TickInterval != 500*time.Millisecond || c.ScaleToZeroGracePeriod != 10*time.Second || c.StableWindow != autoscaler.DefaultConfig().StableWindow {
		t.Errorf("got tick %v, grace %v, stable window %v", c.TickInterval, c.ScaleToZeroGracePeriod, c.StableWindow)
	}

	if err := os.WriteFile(filepath.Join(dir, KeyMaxScaleUpRate), []byte("fast"), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := LoadConfigDir(dir); err == nil || !strings.Contains(err.Error(), `max-scale-up-rate: invalid value "fast"`) {
		t.Errorf("bad value: got %v", err)
	}
	if _, err := LoadConfigDir(filepath.Join(dir, "missing")); err == nil {
		t.Error("missing directory: no error")
	}
	if c, err := LoadConfigDir(""); err != nil || c != autoscaler.DefaultConfig() {
		t.Errorf("empty dir name: got %+v, %v", c, err)
	}
}

// TestShippedConfigMapIsTheDefaults keeps config-llmd-autoscaler's values
// (config/configmaps) equal to the code's defaults, and parseable.
func TestShippedConfigMapIsTheDefaults(t *testing.T) {
	root, err := kubetest.RepoRoot()
	if err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(filepath.Join(root, "config", "configmaps", "200-config-llmd-autoscaler.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	var cm corev1.ConfigMap
	if err := yaml.Unmarshal(b, &cm); err != nil {
		t.Fatal(err)
	}
	if len(cm.Data) < len(configKeys) {
		t.Errorf("the ConfigMap has %d keys, want all %d", len(cm.Data), len(configKeys))
	}
	c, err := ParseConfig(cm.Data)
	if err != nil {
		t.Fatal(err)
	}
	if c != autoscaler.DefaultConfig() {
		t.Errorf("ConfigMap gives %+v\nthe code's defaults are %+v", c, autoscaler.DefaultConfig())
	}
}

// TestColdStartReachesTheDecider: config-llmd-autoscaler's cold-start is in
// every revision's decider configuration, whatever its annotations.
func TestColdStartReachesTheDecider(t *testing.T) {
	base, err := ParseConfig(map[string]string{KeyColdStart: "40s"})
	if err != nil {
		t.Fatal(err)
	}
	r := &PodAutoscalerReconciler{opts: Options{Config: base}}
	pa := &v1alpha1.PodAutoscaler{ObjectMeta: metav1.ObjectMeta{Name: "rev", Namespace: "ns",
		Annotations: map[string]string{"autoscaling.knative.dev/window": "2m"}}}
	c, _, err := r.configFor(pa, apis.Spec{}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if c.ColdStart != 40*time.Second || c.StableWindow != 2*time.Minute {
		t.Errorf("cold start %v, stable window %v; want 40s and 2m", c.ColdStart, c.StableWindow)
	}
}
