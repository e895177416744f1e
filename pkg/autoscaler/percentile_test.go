package autoscaler

import (
	"math"
	"testing"
	"time"

	"github.com/llmd-kn/llmd-kn/pkg/engine"
)

func TestBurstHeadroom(t *testing.T) {
	for _, tc := range []struct {
		rate    float64
		horizon time.Duration
		pct     float64
		want    float64
	}{
		{2, 10 * time.Second, 90, 1 + 1.2815515655446004/math.Sqrt(20)},
		{2, 10 * time.Second, 99, 1 + 2.3263478740408408/math.Sqrt(20)},
		{0.01, 10 * time.Second, 99, 1 + 2.3263478740408408}, // fewer than one arrival
		{2, 0, 99, 1},
		{0, 10 * time.Second, 99, 1},
		{2, 10 * time.Second, 50, 1},
		{math.NaN(), 10 * time.Second, 90, 1},
	} {
		if got := BurstHeadroom(tc.rate, tc.horizon, tc.pct); math.Abs(got-tc.want) > 1e-9 {
			t.Errorf("BurstHeadroom(%v, %v, %v) = %v, want %v", tc.rate, tc.horizon, tc.pct, got, tc.want)
		}
	}
}

// The SLO percentile reaches the decision: on the Azure-like shape the load
// functions plan the same replicas at p90 and p99 (their queueing and TPOT
// tails sit far inside the targets), and with a cold start the decider
// provisions for the burst at the percentile, more at p99.
func TestPercentileChangesTheDecision(t *testing.T) {
	p, err := engine.BuiltinProfile(engine.DefaultProfile)
	if err != nil {
		t.Fatal(err)
	}
	s := shape{rate: 14, prompt: 2500, cached: 1024, out: 30, readyDc: 2}
	desired := func(pct float64, coldStart time.Duration) (int, float64) {
		c := DefaultConfig()
		c.SLO = SLO{TTFT: 2 * time.Second, TPOT: 100 * time.Millisecond, Percentile: pct}
		c.MaxNumBatchedTokens = 2048
		c.ColdStart = coldStart
		d := newDecider(t, c, p)
		recs := run(d, t0, 40, false, steady(s))
		last := recs[len(recs)-1]
		return last.Decode, last.DecodeRole.Stable
	}
	n90, s90 := desired(90, 0)
	n99, s99 := desired(99, 0)
	if n90 != n99 || math.Abs(s90-s99) > 0.05*s90 {
		t.Fatalf("without a cold start p90 and p99 should plan alike: %d (%.3f) vs %d (%.3f)", n90, s90, n99, s99)
	}
	c90, cs90 := desired(90, 10*time.Second)
	c99, cs99 := desired(99, 10*time.Second)
	if !(cs90 > s90 && cs99 > cs90 && c99 > c90) {
		t.Fatalf("with a 10s cold start: p90 %d (%.3f), p99 %d (%.3f); mean %.3f", c90, cs90, c99, cs99, s90)
	}
	h90, h99 := BurstHeadroom(14, 10*time.Second, 90), BurstHeadroom(14, 10*time.Second, 99)
	if math.Abs(cs90/s90-h90) > 0.05 || math.Abs(cs99/s99-h99) > 0.05 {
		t.Errorf("stable load ratios %.3f %.3f, want about %.3f %.3f", cs90/s90, cs99/s99, h90, h99)
	}
}
