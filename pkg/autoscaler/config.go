package autoscaler

import (
	"errors"
	"fmt"
	"math"
	"time"
)

// Bounds are a role's replica bounds. MaxScale 0 means unbounded, as
// Knative's autoscaling.knative.dev/max-scale.
type Bounds struct {
	// MinScale: autoscaling.knative.dev/min-scale (decode) or
	// llm-d.ai/prefill-min-scale.
	MinScale int `json:"minScale"`
	// MaxScale: autoscaling.knative.dev/max-scale (decode) or
	// llm-d.ai/prefill-max-scale.
	MaxScale int `json:"maxScale"`
}

// SLO is a revision's latency targets.
type SLO struct {
	// TTFT is llm-d.ai/slo-ttft.
	TTFT time.Duration `json:"ttft"`
	// TPOT is llm-d.ai/slo-tpot.
	TPOT time.Duration `json:"tpot"`
	// Percentile is llm-d.ai/slo-percentile, in (0, 100).
	Percentile float64 `json:"percentile"`
}

// Config is one revision's decider configuration. Field names follow
// Knative's autoscaler config (config-autoscaler) where one exists.
type Config struct {
	// TickInterval is how often the caller calls Scale (Knative's
	// tick-interval). The decider does not keep time; this only sizes
	// history.
	TickInterval time.Duration `json:"tickInterval"`
	// StableWindow is the averaging window of the stable mode.
	StableWindow time.Duration `json:"stableWindow"`
	// PanicWindowPercentage is the panic window as a percentage of the
	// stable window.
	PanicWindowPercentage float64 `json:"panicWindowPercentage"`
	// PanicThresholdPercentage: panic starts when the panic window wants at
	// least this percentage of the ready replicas.
	PanicThresholdPercentage float64 `json:"panicThresholdPercentage"`
	// MaxScaleUpRate bounds one decision to ceil(rate x ready).
	MaxScaleUpRate float64 `json:"maxScaleUpRate"`
	// MaxScaleDownRate bounds one decision to floor(ready / rate).
	MaxScaleDownRate float64 `json:"maxScaleDownRate"`
	// ScaleDownDelay holds the highest recommendation this long before
	// scaling down.
	ScaleDownDelay time.Duration `json:"scaleDownDelay"`
	// EnableScaleToZero allows a role to reach zero replicas.
	EnableScaleToZero bool `json:"enableScaleToZero"`
	// ScaleToZeroGracePeriod is how long a role goes without traffic before
	// it may reach zero.
	ScaleToZeroGracePeriod time.Duration `json:"scaleToZeroGracePeriod"`
	// TargetUtilization caps the utilization a replica is planned at, as
	// Knative's container-concurrency-target-percentage (as a fraction).
	TargetUtilization float64 `json:"targetUtilization"`

	// Disaggregated revisions get prefill and decode counts; others one
	// count (in Recommendation.Decode).
	Disaggregated bool   `json:"disaggregated"`
	Prefill       Bounds `json:"prefill"`
	Decode        Bounds `json:"decode"`
	// DecodeOnlyLoad, when positive, keeps a disaggregated revision's
	// prefill role at zero while its prefill load is below this many prefill
	// replicas' worth: decode pods then prefill small requests themselves
	// (the activator falls back to decode-only with no prefill endpoint).
	// Poke then wakes decode only.
	DecodeOnlyLoad float64 `json:"decodeOnlyLoad"`

	SLO SLO `json:"slo"`
	// MaxNumSeqs and MaxNumBatchedTokens are the engine's batch limits
	// (vLLM's --max-num-seqs and --max-num-batched-tokens).
	MaxNumSeqs          int `json:"maxNumSeqs"`
	MaxNumBatchedTokens int `json:"maxNumBatchedTokens"`
	// PrefillMaxNumBatchedTokens is the prefill pods' budget of a
	// disaggregated revision when it differs (the step-budget choice gives
	// prefill pods vLLM's default); 0 means MaxNumBatchedTokens.
	PrefillMaxNumBatchedTokens int `json:"prefillMaxNumBatchedTokens,omitempty"`
	// AssumedPromptTokens and AssumedOutputTokens stand in for the mean
	// lengths until traffic has shown them (scale from zero).
	AssumedPromptTokens int `json:"assumedPromptTokens"`
	AssumedOutputTokens int `json:"assumedOutputTokens"`

	// CorrectionSmoothing is the EWMA weight of a new observed/predicted
	// ratio in the per-role correction factor; CorrectionMin and
	// CorrectionMax bound the factor.
	CorrectionSmoothing float64 `json:"correctionSmoothing"`
	CorrectionMin       float64 `json:"correctionMin"`
	CorrectionMax       float64 `json:"correctionMax"`

	// ColdStart is how long a new replica takes to become ready. When
	// positive, the decider provisions for the load that may arrive while
	// one starts at the SLO percentile, not for its mean: arrivals over
	// ColdStart are counted as Poisson, and the load is scaled by
	// q_p(N)/N, N the mean arrivals in ColdStart and q_p its p-quantile
	// (BurstHeadroom). 0 plans for the mean (Knative's way).
	ColdStart time.Duration `json:"coldStart,omitempty"`
	// Forecast provisions for the arrival rate forecast at ColdStart plus
	// a tick ahead when it is larger than now's (forecast.go); off by
	// default.
	Forecast Forecast `json:"forecast,omitempty"`

	// BatchMaxReplicas is llm-d.ai/batch-max-replicas: the most replicas
	// batch-tier work alone may keep or wake (0: batch work never scales
	// the revision, not even from zero). See Decider.BatchShare.
	BatchMaxReplicas int `json:"batchMaxReplicas"`

	// Advisory marks recommendations as advice (llm-d.ai/autoscaler-mode:
	// advise): the decider computes them the same way; the caller does not
	// act on them.
	Advisory bool `json:"advisory"`
}

// DefaultConfig is Knative's autoscaler defaults plus the SLO defaults.
func DefaultConfig() Config {
	return Config{
		TickInterval:             2 * time.Second,
		StableWindow:             60 * time.Second,
		PanicWindowPercentage:    10,
		PanicThresholdPercentage: 200,
		MaxScaleUpRate:           1000,
		MaxScaleDownRate:         2,
		EnableScaleToZero:        true,
		ScaleToZeroGracePeriod:   30 * time.Second,
		TargetUtilization:        0.9,
		SLO:                      SLO{TTFT: time.Second, TPOT: 50 * time.Millisecond, Percentile: 90},
		MaxNumSeqs:               256,
		MaxNumBatchedTokens:      8192,
		AssumedPromptTokens:      1024,
		AssumedOutputTokens:      256,
		CorrectionSmoothing:      0.3,
		CorrectionMin:            0.25,
		CorrectionMax:            4,
		BatchMaxReplicas:         DefaultBatchMaxReplicas,
	}
}

// FieldError is an invalid configuration value and its field path.
type FieldError struct {
	Path    string
	Message string
}

func (e *FieldError) Error() string { return e.Path + ": " + e.Message }

// Validate reports every invalid field, joined, each with its path.
func (c *Config) Validate() error {
	var errs []error
	bad := func(path, format string, args ...any) {
		errs = append(errs, &FieldError{Path: path, Message: fmt.Sprintf(format, args...)})
	}
	posDur := func(path string, d time.Duration) {
		if d <= 0 {
			bad(path, "must be positive, got %v", d)
		}
	}
	finite := func(v float64) bool { return !math.IsNaN(v) && !math.IsInf(v, 0) }
	posDur("tickInterval", c.TickInterval)
	posDur("stableWindow", c.StableWindow)
	if c.StableWindow > 0 && c.TickInterval > 0 && c.StableWindow < c.TickInterval {
		bad("stableWindow", "must be at least tickInterval (%v), got %v", c.TickInterval, c.StableWindow)
	}
	if !(c.PanicWindowPercentage >= 1 && c.PanicWindowPercentage <= 100) {
		bad("panicWindowPercentage", "must be in [1, 100], got %v", c.PanicWindowPercentage)
	}
	if !(c.PanicThresholdPercentage >= 110 && c.PanicThresholdPercentage <= 1000) {
		bad("panicThresholdPercentage", "must be in [110, 1000], got %v", c.PanicThresholdPercentage)
	}
	if !(c.MaxScaleUpRate > 1) || !finite(c.MaxScaleUpRate) {
		bad("maxScaleUpRate", "must be greater than 1, got %v", c.MaxScaleUpRate)
	}
	if !(c.MaxScaleDownRate > 1) || !finite(c.MaxScaleDownRate) {
		bad("maxScaleDownRate", "must be greater than 1, got %v", c.MaxScaleDownRate)
	}
	if c.ScaleDownDelay < 0 {
		bad("scaleDownDelay", "must not be negative, got %v", c.ScaleDownDelay)
	}
	if c.BatchMaxReplicas < 0 {
		bad("batchMaxReplicas", "must not be negative, got %d", c.BatchMaxReplicas)
	}
	if c.ColdStart < 0 {
		bad("coldStart", "must not be negative, got %v", c.ColdStart)
	}
	c.Forecast.validate(bad)
	if c.ScaleToZeroGracePeriod < 0 {
		bad("scaleToZeroGracePeriod", "must not be negative, got %v", c.ScaleToZeroGracePeriod)
	}
	if !(c.TargetUtilization > 0 && c.TargetUtilization <= 1) {
		bad("targetUtilization", "must be in (0, 1], got %v", c.TargetUtilization)
	}
	for _, r := range []struct {
		path string
		b    Bounds
	}{{"prefill", c.Prefill}, {"decode", c.Decode}} {
		if r.b.MinScale < 0 {
			bad(r.path+".minScale", "must not be negative, got %d", r.b.MinScale)
		}
		if r.b.MaxScale < 0 {
			bad(r.path+".maxScale", "must not be negative, got %d", r.b.MaxScale)
		}
		if r.b.MaxScale > 0 && r.b.MinScale > r.b.MaxScale {
			bad(r.path+".minScale", "must not exceed maxScale (%d), got %d", r.b.MaxScale, r.b.MinScale)
		}
	}
	if !c.Disaggregated && (c.Prefill != Bounds{}) {
		bad("prefill", "is only meaningful for a disaggregated revision")
	}
	if c.DecodeOnlyLoad < 0 || !finite(c.DecodeOnlyLoad) {
		bad("decodeOnlyLoad", "must not be negative, got %v", c.DecodeOnlyLoad)
	}
	posDur("slo.ttft", c.SLO.TTFT)
	posDur("slo.tpot", c.SLO.TPOT)
	if !(c.SLO.Percentile > 0 && c.SLO.Percentile < 100) {
		bad("slo.percentile", "must be in (0, 100), got %v", c.SLO.Percentile)
	}
	if c.MaxNumSeqs < 1 {
		bad("maxNumSeqs", "must be positive, got %d", c.MaxNumSeqs)
	}
	if c.MaxNumBatchedTokens < 1 {
		bad("maxNumBatchedTokens", "must be positive, got %d", c.MaxNumBatchedTokens)
	}
	if c.PrefillMaxNumBatchedTokens < 0 {
		bad("prefillMaxNumBatchedTokens", "must not be negative, got %d", c.PrefillMaxNumBatchedTokens)
	}
	if c.AssumedPromptTokens < 1 {
		bad("assumedPromptTokens", "must be positive, got %d", c.AssumedPromptTokens)
	}
	if c.AssumedOutputTokens < 1 {
		bad("assumedOutputTokens", "must be positive, got %d", c.AssumedOutputTokens)
	}
	if !(c.CorrectionSmoothing > 0 && c.CorrectionSmoothing <= 1) {
		bad("correctionSmoothing", "must be in (0, 1], got %v", c.CorrectionSmoothing)
	}
	if !(c.CorrectionMin > 0 && c.CorrectionMin <= 1) {
		bad("correctionMin", "must be in (0, 1], got %v", c.CorrectionMin)
	}
	if !(c.CorrectionMax >= 1) || !finite(c.CorrectionMax) {
		bad("correctionMax", "must be at least 1, got %v", c.CorrectionMax)
	}
	return errors.Join(errs...)
}

// prefillBudget is the per-step token budget of the engines that prefill:
// the prefill pods' own when disaggregated and set.
func (c *Config) prefillBudget() int {
	if c.Disaggregated && c.PrefillMaxNumBatchedTokens > 0 {
		return c.PrefillMaxNumBatchedTokens
	}
	return c.MaxNumBatchedTokens
}

// panicWindow is the panic averaging window.
func (c *Config) panicWindow() time.Duration {
	return time.Duration(float64(c.StableWindow) * c.PanicWindowPercentage / 100)
}
