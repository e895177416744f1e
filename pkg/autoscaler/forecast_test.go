package autoscaler

import (
	"math"
	"strings"
	"testing"
	"time"

	"github.com/llmd-kn/llmd-kn/pkg/engine"
)

func TestHoltForecast(t *testing.T) {
	type obs struct {
		at   time.Duration // after t0
		x    float64
		want float64 // forecast 10 s ahead
	}
	for _, tc := range []struct {
		name string
		f    Forecast
		obs  []obs
	}{
		// With both weights 1 the forecast extrapolates the last slope.
		{"linear ramp, weights 1", Forecast{Level: 1, Trend: 1}, []obs{
			{0, 4, 4}, {2 * time.Second, 8, 8 + 2*10}, {4 * time.Second, 12, 12 + 2*10}, {6 * time.Second, 12, 12}}},
		// Level 0.5, trend 0.3 by hand: level 0.5*8 + 0.5*(4+0) = 6; trend
		// 0.3*(6-4)/2 = 0.3; forecast 6 + 0.3*10 = 9. Then x=8 at 4 s:
		// level 0.5*8 + 0.5*(6+0.3*2) = 7.3; trend 0.3*(7.3-6)/2 + 0.7*0.3
		// = 0.405; forecast 7.3 + 4.05 = 11.35.
		{"textbook weights", DefaultForecast(), []obs{{0, 4, 4}, {2 * time.Second, 8, 9}, {4 * time.Second, 8, 11.35}}},
		// A falling series forecasts zero, never a negative rate.
		{"falling", Forecast{Level: 1, Trend: 1}, []obs{{0, 10, 10}, {2 * time.Second, 2, 0}}},
		// Bad input counts as no arrivals.
		{"NaN", Forecast{Level: 1}, []obs{{0, math.NaN(), 0}, {2 * time.Second, 3, 3}}},
		// A repeated timestamp moves the level only.
		{"same tick", Forecast{Level: 1, Trend: 1}, []obs{{0, 4, 4}, {0, 6, 6}, {2 * time.Second, 6, 6}}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var s holt
			for i, o := range tc.obs {
				if got := s.observe(t0.Add(o.at), o.x, tc.f, 10*time.Second); math.Abs(got-o.want) > 1e-9 {
					t.Errorf("observation %d: forecast %v, want %v", i, got, o.want)
				}
			}
		})
	}
}

func TestForecastValidation(t *testing.T) {
	for _, tc := range []struct {
		f    Forecast
		want string
	}{
		{Forecast{Level: 1.5}, "forecast.level: must be in [0, 1]"},
		{Forecast{Level: -0.1}, "forecast.level"},
		{Forecast{Level: math.NaN()}, "forecast.level"},
		{Forecast{Level: 0.5, Trend: 2}, "forecast.trend: must be in [0, 1]"},
	} {
		c := DefaultConfig()
		c.Forecast = tc.f
		if err := c.Validate(); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%+v: error %v, want %q", tc.f, err, tc.want)
		}
	}
	c := DefaultConfig()
	c.Forecast = DefaultForecast()
	if err := c.Validate(); err != nil {
		t.Errorf("default forecast: %v", err)
	}
}

// On a steady load the forecast is the load: the decisions are the same
// as without it. On a ramp it asks for the replicas sooner, never fewer.
func TestForecastScalesUpARampSooner(t *testing.T) {
	p, err := engine.BuiltinProfile(engine.DefaultProfile)
	if err != nil {
		t.Fatal(err)
	}
	base := DefaultConfig()
	base.SLO = SLO{TTFT: 2 * time.Second, TPOT: 100 * time.Millisecond, Percentile: 90}
	base.MaxNumBatchedTokens = 2048
	base.ColdStart = 10 * time.Second
	withForecast := base
	withForecast.Forecast = DefaultForecast()
	s := shape{rate: 10, prompt: 2500, cached: 1024, out: 30}

	steadyWithout := run(newDecider(t, base, p), t0, 30, true, steady(s))
	steadyWith := run(newDecider(t, withForecast, p), t0, 30, true, steady(s))
	for i := range steadyWith {
		if steadyWith[i].Decode != steadyWithout[i].Decode {
			t.Fatalf("steady load, tick %d: %d replicas with the forecast, %d without", i, steadyWith[i].Decode, steadyWithout[i].Decode)
		}
	}

	// From 1 to 40 requests/s over a minute.
	ramp := func(i int, _ Recommendation) Input {
		r := s
		r.rate = 1 + 39*min(float64(i), 30)/30
		return r.input()
	}
	without := run(newDecider(t, base, p), t0, 40, true, ramp)
	with := run(newDecider(t, withForecast, p), t0, 40, true, ramp)
	sooner := false
	for i := range with {
		if with[i].Decode < without[i].Decode {
			t.Fatalf("ramp, tick %d: %d replicas with the forecast, fewer than %d without", i, with[i].Decode, without[i].Decode)
		}
		sooner = sooner || with[i].Decode > without[i].Decode
	}
	if !sooner {
		t.Errorf("the forecast never asked for more on a ramp: %v", decodes(with))
	}
}

func decodes(recs []Recommendation) []int {
	out := make([]int, len(recs))
	for i, r := range recs {
		out[i] = r.Decode
	}
	return out
}
