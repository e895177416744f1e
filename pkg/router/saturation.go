package router

import "math"

// SaturationConfig holds llm-d's saturation thresholds; zero fields take the
// defaults (5 waiting requests, 80 % KV usage).
type SaturationConfig struct {
	QueueThreshold float64 `json:"queueThreshold"`
	KVThreshold    float64 `json:"kvThreshold"`
}

// Default saturation thresholds (llm-d's).
const (
	DefaultQueueThreshold = 5
	DefaultKVThreshold    = 0.8
)

func (c SaturationConfig) withDefaults() SaturationConfig {
	if c.QueueThreshold == 0 {
		c.QueueThreshold = DefaultQueueThreshold
	}
	if c.KVThreshold == 0 {
		c.KVThreshold = DefaultKVThreshold
	}
	return c
}

func (c SaturationConfig) validate() error {
	if c.QueueThreshold < 0 || math.IsNaN(c.QueueThreshold) || math.IsInf(c.QueueThreshold, 0) {
		return cfgErr("queueThreshold", "must be a positive number, got %v", c.QueueThreshold)
	}
	if c.KVThreshold < 0 || c.KVThreshold > 1 || math.IsNaN(c.KVThreshold) {
		return cfgErr("kvThreshold", "must be in (0, 1], got %v", c.KVThreshold)
	}
	return nil
}

// EndpointSaturation is llm-d's per-endpoint saturation:
// max(waiting/queueThreshold, kvUsage/kvThreshold), 1 for an endpoint whose
// metrics are stale. At 1 or more the endpoint is saturated.
func EndpointSaturation(e *Endpoint, c SaturationConfig) float64 {
	if e.Stale {
		return 1
	}
	c = c.withDefaults()
	return max(float64(e.Waiting)/c.QueueThreshold, e.KVUsage/c.KVThreshold)
}

// PoolSaturation is the mean saturation of the ready endpoints, 1 when none
// is ready: the flow-control signal that holds back lower tiers when it
// reaches 1.
func PoolSaturation(eps []Endpoint, c SaturationConfig) float64 {
	sum, n := 0.0, 0
	for i := range eps {
		if eps[i].Ready {
			sum += EndpointSaturation(&eps[i], c)
			n++
		}
	}
	if n == 0 {
		return 1
	}
	return sum / float64(n)
}
