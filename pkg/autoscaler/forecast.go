package autoscaler

import (
	"math"
	"time"
)

// Forecast configures the decider's arrival forecast: Holt's linear trend
// (double exponential smoothing) of the arrival rate, extrapolated to when
// a replica asked for now could serve (ColdStart plus one tick). The
// decider provisions for the larger of the arrivals now and the forecast,
// so a ramp is met with the replicas it will need by the time they are
// ready rather than with those it needs now. It cannot see a burst before
// its first arrivals (nothing reactive can); it shortens how long a ramp
// outruns the replicas. The zero value turns it off.
type Forecast struct {
	// Level is the smoothing weight of a new observation in the level, in
	// (0, 1]; 0 turns the forecast off.
	Level float64 `json:"level,omitempty"`
	// Trend is the smoothing weight of a new slope in the trend, in [0, 1]
	// (0: the level alone, no trend).
	Trend float64 `json:"trend,omitempty"`
}

// DefaultForecast is the forecast kn-llmd plan's slo-forecast policy runs:
// textbook weights (neither fitted to a trace).
func DefaultForecast() Forecast { return Forecast{Level: 0.5, Trend: 0.3} }

// Enabled reports whether the forecast is on.
func (f Forecast) Enabled() bool { return f.Level > 0 }

func (f Forecast) validate(bad func(path, format string, args ...any)) {
	if !(f.Level >= 0 && f.Level <= 1) {
		bad("forecast.level", "must be in [0, 1] (0: off), got %v", f.Level)
	}
	if !(f.Trend >= 0 && f.Trend <= 1) {
		bad("forecast.trend", "must be in [0, 1], got %v", f.Trend)
	}
}

// holt is one series' Holt state: level and trend per second, at the last
// observation.
type holt struct {
	level, trend float64
	at           time.Time
	seen         bool
}

// observe adds the value x seen at now (irregular intervals allowed: the
// trend is per second) and returns the forecast h ahead, never negative.
// Observations at or before the last one only replace the level.
func (s *holt) observe(now time.Time, x float64, f Forecast, h time.Duration) float64 {
	if math.IsNaN(x) || math.IsInf(x, 0) || x < 0 {
		x = 0
	}
	switch dt := now.Sub(s.at).Seconds(); {
	case !s.seen:
		s.level, s.trend, s.seen = x, 0, true
	case dt <= 0:
		s.level = f.Level*x + (1-f.Level)*s.level
	default:
		prev := s.level
		s.level = f.Level*x + (1-f.Level)*(s.level+s.trend*dt)
		s.trend = f.Trend*(s.level-prev)/dt + (1-f.Trend)*s.trend
	}
	if !now.Before(s.at) {
		s.at = now
	}
	return max(s.level+s.trend*h.Seconds(), 0)
}

// forecaster forecasts the arrival rate and the arrived prompt-token rate.
type forecaster struct {
	requests, promptTokens holt
}

// ahead observes this tick's arrival rate and prompt-token rate and
// returns both forecast at the horizon.
func (fc *forecaster) ahead(now time.Time, rate, promptRate float64, f Forecast, h time.Duration) (float64, float64) {
	return fc.requests.observe(now, rate, f, h), fc.promptTokens.observe(now, promptRate, f, h)
}

// forecastHorizon is how far ahead the forecast looks: a replica asked
// for now serves after ColdStart, and the next chance to ask is a tick
// later.
func (c *Config) forecastHorizon() time.Duration { return c.ColdStart + c.TickInterval }
