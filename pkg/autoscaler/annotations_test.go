package autoscaler

import (
	"testing"
	"time"

	"github.com/llmd-kn/llmd-kn/pkg/apis"
)

func TestApplySpec(t *testing.T) {
	parse := func(ann map[string]string) apis.Spec {
		t.Helper()
		s, err := apis.Parse(ann, "metadata.annotations", apis.Vocabulary{})
		if err != nil {
			t.Fatal(err)
		}
		return s
	}
	for _, tc := range []struct {
		name       string
		ann        map[string]string
		ttft, tpot time.Duration
		check      func(t *testing.T, c Config)
	}{
		{"defaults: scale to zero, unbounded, default SLO", nil, 0, 0, func(t *testing.T, c Config) {
			d := DefaultConfig()
			if c.Disaggregated || c.Decode != (Bounds{}) || c.Prefill != (Bounds{}) || !c.EnableScaleToZero || c.SLO != d.SLO || c.Advisory {
				t.Errorf("got %+v", c)
			}
		}},
		{"tier targets apply, annotations win", map[string]string{apis.SLOTPOTAnnotation: "20ms"}, 300 * time.Millisecond, 40 * time.Millisecond,
			func(t *testing.T, c Config) {
				if c.SLO.TTFT != 300*time.Millisecond || c.SLO.TPOT != 20*time.Millisecond {
					t.Errorf("SLO %+v", c.SLO)
				}
			}},
		{"prefill-decode with bounds, min-scale, advise", map[string]string{
			apis.DisaggregationAnnotation: apis.DisaggregationPrefillDecode, apis.MinScaleAnnotation: "1", apis.MaxScaleAnnotation: "8",
			apis.PrefillMinScaleAnnotation: "2", apis.PrefillMaxScaleAnnotation: "4", apis.SLOPercentileAnnotation: "99",
			apis.AutoscalerModeAnnotation: apis.AutoscalerAdvise,
		}, 0, 0, func(t *testing.T, c Config) {
			if !c.Disaggregated || c.Decode != (Bounds{1, 8}) || c.Prefill != (Bounds{2, 4}) || c.EnableScaleToZero ||
				c.SLO.Percentile != 99 || !c.Advisory {
				t.Errorf("got %+v", c)
			}
			if err := c.Validate(); err != nil {
				t.Error(err)
			}
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := DefaultConfig()
			ApplySpec(&c, parse(tc.ann), tc.ttft, tc.tpot)
			tc.check(t, c)
		})
	}
}
