package autoscaler

import (
	"errors"
	"strings"
	"testing"
	"time"
)

func TestDefaultConfigMirrorsKnative(t *testing.T) {
	c := DefaultConfig()
	if err := c.Validate(); err != nil {
		t.Fatal(err)
	}
	if c.TickInterval != 2*time.Second || c.StableWindow != time.Minute || c.panicWindow() != 6*time.Second ||
		c.PanicThresholdPercentage != 200 || c.MaxScaleUpRate != 1000 || c.MaxScaleDownRate != 2 ||
		c.ScaleToZeroGracePeriod != 30*time.Second || !c.EnableScaleToZero || c.SLO.Percentile != 90 {
		t.Errorf("defaults drifted from Knative's: %+v", c)
	}
}

func TestConfigValidate(t *testing.T) {
	tests := []struct {
		name   string
		mutate func(*Config)
		paths  []string
	}{
		{name: "zero tick", mutate: func(c *Config) { c.TickInterval = 0 }, paths: []string{"tickInterval"}},
		{name: "stable window below tick", mutate: func(c *Config) { c.StableWindow = time.Second }, paths: []string{"stableWindow"}},
		{name: "panic window", mutate: func(c *Config) { c.PanicWindowPercentage = 0 }, paths: []string{"panicWindowPercentage"}},
		{name: "panic threshold", mutate: func(c *Config) { c.PanicThresholdPercentage = 100 }, paths: []string{"panicThresholdPercentage"}},
		{name: "rates", mutate: func(c *Config) { c.MaxScaleUpRate, c.MaxScaleDownRate = 1, 0.5 },
			paths: []string{"maxScaleUpRate", "maxScaleDownRate"}},
		{name: "negative delay and grace", mutate: func(c *Config) { c.ScaleDownDelay, c.ScaleToZeroGracePeriod = -1, -1 },
			paths: []string{"scaleDownDelay", "scaleToZeroGracePeriod"}},
		{name: "utilization", mutate: func(c *Config) { c.TargetUtilization = 1.5 }, paths: []string{"targetUtilization"}},
		{name: "decode min above max", mutate: func(c *Config) { c.Decode = Bounds{MinScale: 5, MaxScale: 2} }, paths: []string{"decode.minScale"}},
		{name: "negative prefill bounds", mutate: func(c *Config) { c.Disaggregated = true; c.Prefill = Bounds{MinScale: -1, MaxScale: -1} },
			paths: []string{"prefill.minScale", "prefill.maxScale"}},
		{name: "prefill bounds without disaggregation", mutate: func(c *Config) { c.Prefill.MinScale = 1 }, paths: []string{"prefill"}},
		{name: "SLO", mutate: func(c *Config) { c.SLO = SLO{Percentile: 100} }, paths: []string{"slo.ttft", "slo.tpot", "slo.percentile"}},
		{name: "engine limits", mutate: func(c *Config) { c.MaxNumSeqs, c.MaxNumBatchedTokens = 0, 0 },
			paths: []string{"maxNumSeqs", "maxNumBatchedTokens"}},
		{name: "correction", mutate: func(c *Config) { c.CorrectionSmoothing, c.CorrectionMin, c.CorrectionMax = 0, 2, 0.5 },
			paths: []string{"correctionSmoothing", "correctionMin", "correctionMax"}},
		{name: "decode-only load", mutate: func(c *Config) { c.DecodeOnlyLoad = -1 }, paths: []string{"decodeOnlyLoad"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			c := DefaultConfig()
			tc.mutate(&c)
			err := c.Validate()
			if err == nil {
				t.Fatal("accepted")
			}
			for _, p := range tc.paths {
				if !strings.Contains(err.Error(), p+": ") {
					t.Errorf("error %q does not name %s", err, p)
				}
			}
			var fe *FieldError
			if !errors.As(err, &fe) || fe.Path != tc.paths[0] {
				t.Errorf("first field error %v, want path %s", fe, tc.paths[0])
			}
			if _, err := New(c, toyProfile()); err == nil {
				t.Error("New accepted an invalid config")
			}
		})
	}
}
