package autoscaler

import (
	"time"

	"github.com/llmd-kn/llmd-kn/pkg/apis"
)

// ApplySpec sets the fields of c that a revision's annotations decide, from
// its parsed llm-d configuration (pkg/apis.Spec): disaggregation, min and max
// scale per role (MaxScale 0 stays unbounded), scale to zero when min-scale
// is 0, the SLO targets (llm-d.ai/slo-ttft and llm-d.ai/slo-tpot, else
// tierTTFT and tierTPOT, the revision's default tier's targets, where
// positive; else c's) and percentile, advisory mode
// (llm-d.ai/autoscaler-mode: advise) and the batch budget
// (llm-d.ai/batch-max-replicas). The cluster's PodAutoscaler class
// (pkg/reconciler) and the local runtime (pkg/local) share it so that an
// annotation means the same in both; each caller sets its own windows, tick
// and engine limits. The result is not validated; call Config.Validate.
func ApplySpec(c *Config, spec apis.Spec, tierTTFT, tierTPOT time.Duration) {
	c.Disaggregated = spec.Disaggregated()
	c.Decode = Bounds{MinScale: spec.MinScale, MaxScale: spec.MaxScale}
	c.Prefill = Bounds{}
	if c.Disaggregated {
		c.Prefill = Bounds{MinScale: spec.PrefillMinScale, MaxScale: spec.PrefillMaxScale}
	}
	c.EnableScaleToZero = spec.MinScale == 0
	if tierTTFT > 0 {
		c.SLO.TTFT = tierTTFT
	}
	if tierTPOT > 0 {
		c.SLO.TPOT = tierTPOT
	}
	if spec.TTFT > 0 {
		c.SLO.TTFT = spec.TTFT
	}
	if spec.TPOT > 0 {
		c.SLO.TPOT = spec.TPOT
	}
	if spec.Percentile > 0 && spec.Percentile < 100 {
		c.SLO.Percentile = spec.Percentile
	}
	c.Advisory = spec.AutoscalerMode == apis.AutoscalerAdvise
	c.BatchMaxReplicas = spec.BatchMaxReplicas
}
