package autoscaler

import (
	"reflect"
	"testing"
	"time"

	"github.com/llmd-kn/llmd-kn/pkg/engine"
)

// The shape used by the dynamics tests: 2000-token prompts, 200-token
// outputs (decode context 2100). On the toy profile one decode replica holds
// 71 sequences under 1.15 ms (1 ms + 71 x 2.101 us = 1.149 ms): 61,784
// output tokens/s.
const (
	shapePrompt = 2000
	shapeOut    = 200
	decodeCap   = 71 / 1.149171e-3
)

// units is an input whose decode load needs exactly x decode replicas and
// no prefill (as if every prompt token hit the cache).
func units(x float64) Input {
	in := shape{rate: x * decodeCap / shapeOut, prompt: shapePrompt, out: shapeOut}.input()
	in.Load.UncachedPrefillTokensPerSecond = 0
	return in
}

func TestSteadyLoad(t *testing.T) {
	tests := []struct {
		name             string
		disaggregated    bool
		load             shape
		prefill, decode  int
		wantPrefillRatio float64 // required prefill replicas, fractional
		wantDecodeRatio  float64
		wantFractions    float64 // aggregated: prefill + decode fractions, below the interference need
	}{
		// Prefill: 1500 req/s x 2000 uncached tokens = 3.0M tokens/s over
		// about 0.8795 x 999,001 = 878.6k tokens/s per replica = 3.41 -> 4.
		// Decode: 1500 x 200 = 300k tokens/s over 61,784 = 4.86 -> 5.
		{name: "disaggregated 2000 in / 200 out at 1500 req/s", disaggregated: true,
			load:    shape{rate: 1500, prompt: 2000, out: 200},
			prefill: 4, decode: 5, wantPrefillRatio: 3.41, wantDecodeRatio: 4.86},
		// One pool time-shares both: 3.41 + 4.86 = 8.27; but a 2000-token
		// chunk (2 ms on the toy) in a decode step misses the 1.15 ms TPOT,
		// so the interference model asks for more: 23.06 -> 24 (see
		// TestColocatedInterferenceRaisesTheNeed).
		{name: "aggregated: the fractions add, interference needs more", load: shape{rate: 1500, prompt: 2000, out: 200},
			decode: 24, wantDecodeRatio: 23.06, wantFractions: 8.27},
		// 100 req/s: 200k prefill tokens/s (0.23) and 20k output tokens/s
		// (0.32): one of each.
		{name: "light load: one of each", disaggregated: true, load: shape{rate: 100, prompt: 2000, out: 200},
			prefill: 1, decode: 1, wantPrefillRatio: 0.228, wantDecodeRatio: 0.324},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			c := toyConfig()
			c.Disaggregated = tc.disaggregated
			d := newDecider(t, c, toyProfile())
			recs := run(d, t0, 40, true, steady(tc.load))
			got := recs[len(recs)-1]
			if got.Prefill != tc.prefill || got.Decode != tc.decode {
				t.Fatalf("got %v, want %dP+%dD", got, tc.prefill, tc.decode)
			}
			if tc.disaggregated {
				near(t, "prefill required", got.PrefillRole.Required, tc.wantPrefillRatio, 0.01)
			}
			near(t, "decode required", got.DecodeRole.Required, tc.wantDecodeRatio, 0.01)
			if tc.wantFractions > 0 {
				near(t, "interference", got.DecodeRole.Interference, tc.wantDecodeRatio, 0.01)
				pc, dc := d.Capacity()
				fractions := tc.load.rate*tc.load.prompt/pc.TokensPerSecond + tc.load.rate*tc.load.out/dc.TokensPerSecond
				near(t, "fractions", fractions, tc.wantFractions, 0.01)
			}
			for i, r := range recs {
				if r.Prefill != tc.prefill || r.Decode != tc.decode {
					t.Errorf("tick %d: %v, want steady %dP+%dD from the first tick", i, r, tc.prefill, tc.decode)
				}
			}
		})
	}
}

func TestPanic(t *testing.T) {
	d := newDecider(t, toyConfig(), toyProfile())
	recs := run(d, t0, 90, false, func(i int, last Recommendation) Input {
		var in Input
		switch {
		case i < 30: // 60 s at 2 replicas' worth
			in = units(2)
		case i < 33: // a 6 s surge to 10
			in = units(10)
		default: // then 1
			in = units(1)
		}
		in.Pods.Decode.Ready = max(last.Decode, 2) // two replicas were up already
		return in
	})
	if r := recs[29]; r.Decode != 2 || r.DecodeRole.InPanic {
		t.Fatalf("before the surge: %v (panic %v), want 2 and calm", r, r.DecodeRole.InPanic)
	}
	// First surge tick: the 6 s panic window holds 2, 2, 10 (4.67 -> 5,
	// 250% of 2 ready: panic); the stable window alone would say 3.
	if r := recs[30]; !r.DecodeRole.InPanic || r.Decode != 5 || ceil(r.DecodeRole.Stable) != 3 {
		t.Fatalf("first surge tick: %v, panic %v, stable %.2f; want panic at 5", r, r.DecodeRole.InPanic, r.DecodeRole.Stable)
	}
	if r := recs[32]; r.Decode != 10 {
		t.Errorf("third surge tick: %v, want 10", r)
	}
	// Panic lasts until a stable window (60 s) passes without crossing the
	// threshold; meanwhile nothing scales down even though the load is 1.
	lastOver := 0
	for i := 30; i < len(recs); i++ {
		if ceil(recs[i].DecodeRole.Panic)/float64(max(1, recs[i].DecodeRole.Ready)) >= 2 {
			lastOver = i
		}
	}
	for i := 31; i < len(recs); i++ {
		inPanic := i <= lastOver+30
		if recs[i].DecodeRole.InPanic != inPanic {
			t.Fatalf("tick %d: panic %v, want %v (last over threshold at tick %d)", i, recs[i].DecodeRole.InPanic, inPanic, lastOver)
		}
		if inPanic && recs[i].Decode < recs[i-1].Decode {
			t.Fatalf("tick %d: scaled down from %d to %d in panic", i, recs[i-1].Decode, recs[i].Decode)
		}
	}
	if r := recs[len(recs)-1]; r.DecodeRole.InPanic || r.Decode >= 10 {
		t.Errorf("after panic: %v, want calm and below 10", r)
	}
}

func TestScaleRates(t *testing.T) {
	tests := []struct {
		name           string
		up, down       float64
		ready          int
		required       float64
		want           int
		wantPanic      bool
		disaggregated  bool
		prefillToo     bool
		wantPrefillMax int
	}{
		{name: "down by at most half of 10 ready", up: 1000, down: 2, ready: 10, required: 1, want: 5},
		{name: "down from 3 ready floors to 1", up: 1000, down: 2, ready: 3, required: 1, want: 1},
		{name: "down rate 4 from 10 ready", up: 1000, down: 4, ready: 10, required: 1, want: 2},
		{name: "up by at most 2x of 2 ready", up: 2, down: 2, ready: 2, required: 10, want: 4, wantPanic: true},
		{name: "up from zero ready counts as one", up: 3, down: 2, ready: 0, required: 10, want: 3, wantPanic: true},
		{name: "default up rate does not bind", up: 1000, down: 2, ready: 2, required: 10, want: 10, wantPanic: true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			c := toyConfig()
			c.MaxScaleUpRate, c.MaxScaleDownRate = tc.up, tc.down
			d := newDecider(t, c, toyProfile())
			in := units(tc.required)
			in.Pods.Decode.Ready = tc.ready
			r := d.Scale(t0, in)
			if r.Decode != tc.want || r.DecodeRole.InPanic != tc.wantPanic {
				t.Errorf("got %d (panic %v), want %d (panic %v)", r.Decode, r.DecodeRole.InPanic, tc.want, tc.wantPanic)
			}
		})
	}
}

func TestScaleDownDelay(t *testing.T) {
	for _, delay := range []time.Duration{0, 20 * time.Second} {
		t.Run("delay "+delay.String(), func(t *testing.T) {
			c := toyConfig()
			c.StableWindow = c.TickInterval // the window holds one tick: only the delay holds
			c.ScaleDownDelay = delay
			d := newDecider(t, c, toyProfile())
			recs := run(d, t0, 15, false, func(i int, last Recommendation) Input {
				in := units(1)
				if i == 0 {
					in = units(5)
				}
				in.Pods.Decode.Ready = max(last.Decode, 5*(1-min(i, 1))) // 5 up at first
				return in
			})
			for i, r := range recs {
				at := time.Duration(i) * c.TickInterval
				held := at < delay
				if held && r.Decode != 5 {
					t.Errorf("at %v: %d, want 5 held by the delay", at, r.Decode)
				}
				if !held && i > 0 && r.Decode >= 5 {
					t.Errorf("at %v: %d, want below 5", at, r.Decode)
				}
			}
			// Without a delay: 5 -> 2 (rate limit) -> 1. With one, each step
			// down waits: 2 came at 20 s, and 1 cannot come before 40 s.
			want := 1
			if delay > 0 {
				want = 2
			}
			if last := recs[len(recs)-1]; last.Decode != want {
				t.Errorf("at 28 s: %d, want %d", last.Decode, want)
			}
		})
	}
}

func TestScaleToZero(t *testing.T) {
	idle := Input{}
	tests := []struct {
		name          string
		mutate        func(*Config)
		zeroAt        time.Duration // 0: never
		floor         int
		disaggregated bool
	}{
		// Last traffic at 18 s; 30 s grace: zero at 48 s, not before.
		{name: "after the grace period, not before", zeroAt: 48 * time.Second},
		{name: "longer grace", mutate: func(c *Config) { c.ScaleToZeroGracePeriod = 60 * time.Second }, zeroAt: 78 * time.Second},
		{name: "both roles when disaggregated", disaggregated: true, zeroAt: 48 * time.Second},
		{name: "disabled keeps one", mutate: func(c *Config) { c.EnableScaleToZero = false }, floor: 1},
		{name: "min-scale keeps its floor", mutate: func(c *Config) { c.Decode.MinScale = 2 }, floor: 2},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			c := toyConfig()
			c.Disaggregated = tc.disaggregated
			if tc.mutate != nil {
				tc.mutate(&c)
			}
			d := newDecider(t, c, toyProfile())
			// 20 req/s: under one replica's worth (no panic to hold it).
			load := shape{rate: 20, prompt: 2000, out: 200}.input()
			recs := run(d, t0, 60, true, func(i int, _ Recommendation) Input {
				if i < 10 {
					return load
				}
				return idle
			})
			for i, r := range recs {
				at := time.Duration(i) * c.TickInterval
				wantZero := tc.zeroAt > 0 && at >= tc.zeroAt
				switch {
				case wantZero && (r.Decode != 0 || r.Prefill != 0):
					t.Fatalf("at %v: %v, want zero", at, r)
				case !wantZero && r.Decode < max(1, tc.floor):
					t.Fatalf("at %v: %v, want at least %d", at, r, max(1, tc.floor))
				case !wantZero && tc.disaggregated && r.Prefill < 1:
					t.Fatalf("at %v: prefill %d before the grace period", at, r.Prefill)
				}
			}
			if tc.floor > 0 && recs[len(recs)-1].Decode != tc.floor {
				t.Errorf("finally %v, want %d", recs[len(recs)-1], tc.floor)
			}
		})
	}
}

func TestPokeFromZero(t *testing.T) {
	tests := []struct {
		name          string
		disaggregated bool
		decodeOnly    float64
		wantPrefill   int
	}{
		{name: "aggregated"},
		{name: "disaggregated wakes both roles", disaggregated: true, wantPrefill: 1},
		{name: "decode-only mode wakes decode alone", disaggregated: true, decodeOnly: 0.5},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			c := toyConfig()
			c.Disaggregated, c.DecodeOnlyLoad = tc.disaggregated, tc.decodeOnly
			d := newDecider(t, c, toyProfile())
			if r := d.Scale(t0, Input{}); r.Decode != 0 || r.Prefill != 0 {
				t.Fatalf("idle revision: %v, want zero", r)
			}
			// The first request is buffered 0.5 s after the tick: the answer
			// comes now, not at the next tick.
			r := d.Poke(t0.Add(500 * time.Millisecond))
			if !r.Poked || r.Decode != 1 || r.Prefill != tc.wantPrefill {
				t.Fatalf("poke: %v, want %dP+1D", r, tc.wantPrefill)
			}
			// At the next ticks the request waits (queued, no pod ready yet)
			// and nothing goes back to zero.
			for i := 1; i <= 10; i++ {
				in := Input{Load: Load{Queued: 1}}
				r := d.Scale(t0.Add(time.Duration(i)*c.TickInterval), in)
				if r.Decode != 1 || r.Prefill != tc.wantPrefill {
					t.Fatalf("tick %d after poke: %v, want %dP+1D", i, r, tc.wantPrefill)
				}
			}
			// A second poke with replicas up changes nothing.
			if r := d.Poke(t0.Add(21 * time.Second)); r.Decode != 1 {
				t.Errorf("second poke: %v", r)
			}
		})
	}
	t.Run("poke respects max-scale and min-scale", func(t *testing.T) {
		c := toyConfig()
		c.Decode = Bounds{MinScale: 2, MaxScale: 3}
		d := newDecider(t, c, toyProfile())
		if r := d.Poke(t0); r.Decode != 2 {
			t.Errorf("poke: %v, want min-scale 2", r)
		}
	})
	t.Run("a poke keeps the role up through the grace period", func(t *testing.T) {
		d := newDecider(t, toyConfig(), toyProfile())
		d.Poke(t0)
		if r := d.Scale(t0.Add(28*time.Second), Input{Pods: Pods{Decode: Telemetry{Ready: 1}}}); r.Decode != 1 {
			t.Errorf("28 s after the poke: %v, want 1", r)
		}
		if r := d.Scale(t0.Add(30*time.Second), Input{Pods: Pods{Decode: Telemetry{Ready: 1}}}); r.Decode != 0 {
			t.Errorf("30 s after the poke with no traffic: %v, want 0", r)
		}
	})
}

func TestMinMaxScale(t *testing.T) {
	tests := []struct {
		name            string
		prefill, decode Bounds
		load            Input
		want            [2]int // prefill, decode
	}{
		{name: "decode max-scale caps", decode: Bounds{MaxScale: 4}, load: units(10), want: [2]int{0, 4}},
		{name: "decode min-scale floors an idle revision", decode: Bounds{MinScale: 3}, load: Input{}, want: [2]int{0, 3}},
		{name: "prefill min-scale floors", prefill: Bounds{MinScale: 2}, load: units(1), want: [2]int{2, 1}},
		{name: "prefill max-scale caps", prefill: Bounds{MaxScale: 2},
			load: shape{rate: 3000, prompt: 2000, out: 1}.input(), want: [2]int{2, 1}},
		{name: "unbounded", load: shape{rate: 3000, prompt: 2000, out: 1}.input(), want: [2]int{7, 1}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			c := toyConfig()
			c.Disaggregated = true
			c.Prefill, c.Decode = tc.prefill, tc.decode
			d := newDecider(t, c, toyProfile())
			r := d.Scale(t0, tc.load)
			if r.Prefill != tc.want[0] || r.Decode != tc.want[1] {
				t.Errorf("got %v, want %dP+%dD", r, tc.want[0], tc.want[1])
			}
		})
	}
}

func TestPDMix(t *testing.T) {
	c := toyConfig()
	c.Disaggregated = true
	scale := func(s shape) Recommendation {
		d := newDecider(t, c, toyProfile())
		recs := run(d, t0, 40, true, steady(s))
		return recs[len(recs)-1]
	}
	// Same request rate, different shapes.
	promptHeavy := scale(shape{rate: 400, prompt: 8000, out: 20})
	decodeHeavy := scale(shape{rate: 400, prompt: 200, out: 1000})
	t.Logf("prompt-heavy %v, decode-heavy %v", promptHeavy, decodeHeavy)
	// Prompt-heavy: 3.2M prefill tokens/s of 8000-token prompts; one
	// prompt takes 8.04 ms, so the p90 wait must stay under 11.96 ms:
	// ln(10 rho)/(1-rho) <= 2.98, rho ~ 0.474 of 996k tokens/s = 472k per
	// replica: 6.8 -> 7. Decode: 8000 tokens/s at context 8010 holds 18
	// sequences (15.7k tokens/s): 1.
	// Decode-heavy: 80k prefill tokens/s: 1. Decode: 400k tokens/s at
	// context 700 holds 213 sequences (185k tokens/s): 2.2 -> 3.
	if promptHeavy.Prefill != 7 || promptHeavy.Decode != 1 || decodeHeavy.Prefill != 1 || decodeHeavy.Decode != 3 {
		t.Errorf("prompt-heavy %v, decode-heavy %v: want 7P+1D and 1P+3D", promptHeavy, decodeHeavy)
	}
	if promptHeavy.Prefill <= promptHeavy.Decode {
		t.Errorf("prompt-heavy load %v: want more prefill than decode", promptHeavy)
	}
	if decodeHeavy.Decode <= decodeHeavy.Prefill {
		t.Errorf("decode-heavy load %v: want more decode than prefill", decodeHeavy)
	}
	if promptHeavy.Prefill <= decodeHeavy.Prefill || decodeHeavy.Decode <= promptHeavy.Decode {
		t.Errorf("roles do not respond separately: prompt-heavy %v, decode-heavy %v", promptHeavy, decodeHeavy)
	}

	t.Run("decode-only below the threshold", func(t *testing.T) {
		c := c
		c.DecodeOnlyLoad = 0.5
		d := newDecider(t, c, toyProfile())
		// 50 req/s x 2000 = 100k prefill tokens/s: 0.11 prefill replicas,
		// carried by decode.
		small := run(d, t0, 5, true, steady(shape{rate: 50, prompt: 2000, out: 200}))
		r := small[len(small)-1]
		if r.Prefill != 0 || !r.DecodeOnly || r.Decode != 1 {
			t.Fatalf("small load: %v (decode-only %v), want 0P+1D decode-only", r, r.DecodeOnly)
		}
		near(t, "decode carries prefill", r.DecodeRole.Required, 0.114+0.162, 0.02)
		big := run(d, t0.Add(10*time.Second), 5, true, steady(shape{rate: 1500, prompt: 2000, out: 200}))
		if r := big[len(big)-1]; r.Prefill < 1 || r.DecodeOnly {
			t.Errorf("large load: %v, want prefill replicas", r)
		}
	})
}

func TestCacheHitsReducePrefill(t *testing.T) {
	c := toyConfig()
	c.Disaggregated = true
	tests := []struct {
		name    string
		cached  float64
		prefill int
	}{
		// 1500 req/s x 2000 tokens: 4 prefill replicas (TestSteadyLoad).
		{name: "no cache hits", cached: 0, prefill: 4},
		// Three quarters cached: 750k uncached tokens/s, 500-token chunks
		// over a 1500-token context: one replica's worth at most.
		{name: "75% cache hits", cached: 1500, prefill: 1},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			d := newDecider(t, c, toyProfile())
			recs := run(d, t0, 40, true, steady(shape{rate: 1500, prompt: 2000, cached: tc.cached, out: 200}))
			r := recs[len(recs)-1]
			if r.Prefill != tc.prefill || r.Decode != 5 {
				t.Errorf("got %v, want %dP+5D (decode does not change)", r, tc.prefill)
			}
		})
	}
}

// telemetryFrom is what pods running on the true profile report.
func telemetryFrom(truth engine.Profile, c Config, s shape, batch int) Input {
	in := s.input()
	tel := Telemetry{Ready: 1,
		PrefillTokensPerSecond: PrefillLoadFunction(&truth, &c, s.prompt, s.cached, 1).Throughput}
	steps := make([]engine.StepInput, batch)
	for i := range steps {
		steps[i] = engine.StepInput{Query: 1, Context: int(s.prompt + s.out/2)}
	}
	tel.DecodeStepTime, tel.DecodeBatch = truth.StepTime(steps), float64(batch)
	in.Pods = Pods{Prefill: tel, Decode: tel}
	return in
}

func TestCorrectionConverges(t *testing.T) {
	c := toyConfig()
	c.Disaggregated = true
	believed := toyProfile()
	// The truth is half as fast as the profile believes, in compute and in
	// memory: every step takes 2x.
	truth := toyProfile()
	truth.MFU, truth.MBU = 0.5, 0.5
	load := shape{rate: 750, prompt: 2000, out: 200}

	want := newDecider(t, c, truth)
	wantRec := want.Scale(t0, load.input())

	d := newDecider(t, c, believed)
	first := d.Scale(t0, load.input())
	if first.Prefill >= wantRec.Prefill || first.Decode >= wantRec.Decode {
		t.Fatalf("the optimistic profile should under-provision at first: %v vs truth %v", first, wantRec)
	}
	var prev float64
	for i := 1; i <= 30; i++ {
		d.Scale(t0.Add(time.Duration(i)*c.TickInterval), telemetryFrom(truth, c, load, 60))
		p, dc := d.Corrections()
		if i > 1 && (p <= prev || p > 2 || dc > 2) {
			t.Fatalf("tick %d: corrections %.4f, %.4f: want monotone towards 2", i, p, dc)
		}
		prev = p
	}
	p, dc := d.Corrections()
	near(t, "prefill correction", p, 2, 1e-3)
	near(t, "decode correction", dc, 2, 1e-3)
	gotP, gotD := d.Capacity()
	truthP, truthD := want.Capacity()
	near(t, "prefill capacity", gotP.TokensPerSecond, truthP.TokensPerSecond, 1e-3)
	near(t, "decode capacity", gotD.TokensPerSecond, truthD.TokensPerSecond, 1e-3)
	if gotD.Sequences != truthD.Sequences {
		t.Errorf("decode sequences %d, truth %d", gotD.Sequences, truthD.Sequences)
	}
	// Fresh windows: the converged decider recommends what the truth does.
	d.roles[rolePrefill].window, d.roles[roleDecode].window = nil, nil
	if r := d.Scale(t0.Add(time.Hour), load.input()); r.Prefill != wantRec.Prefill || r.Decode != wantRec.Decode {
		t.Errorf("converged: %v, truth %v", r, wantRec)
	}

	t.Run("factor is clamped", func(t *testing.T) {
		slow := toyProfile()
		slow.MFU, slow.MBU = 0.05, 0.05 // 20x slower than believed
		d := newDecider(t, c, believed)
		for i := range 50 {
			d.Scale(t0.Add(time.Duration(i)*c.TickInterval), telemetryFrom(slow, c, load, 60))
		}
		if p, dc := d.Corrections(); p > c.CorrectionMax || dc > c.CorrectionMax || p < 0.999*c.CorrectionMax || dc < 0.999*c.CorrectionMax {
			t.Errorf("corrections %v, %v, want clamped at %v", p, dc, c.CorrectionMax)
		}
	})
	t.Run("no telemetry leaves the profile alone", func(t *testing.T) {
		d := newDecider(t, c, believed)
		run(d, t0, 10, true, steady(load))
		if p, dc := d.Corrections(); p != 1 || dc != 1 {
			t.Errorf("corrections %v, %v, want 1", p, dc)
		}
	})
}

func TestAdvisory(t *testing.T) {
	c := toyConfig()
	c.Disaggregated = true
	acting := newDecider(t, c, toyProfile())
	c.Advisory = true
	advising := newDecider(t, c, toyProfile())
	load := steady(shape{rate: 1500, prompt: 2000, out: 200})
	a, b := run(acting, t0, 10, true, load), run(advising, t0, 10, true, load)
	for i := range a {
		if !b[i].Advisory || a[i].Advisory || a[i].Prefill != b[i].Prefill || a[i].Decode != b[i].Decode {
			t.Fatalf("tick %d: acting %v, advising %v: want the same counts, marked advisory", i, a[i], b[i])
		}
	}
	if r := advising.Poke(t0.Add(time.Minute)); !r.Advisory {
		t.Error("poke answer not marked advisory")
	}
}

func TestDeterminism(t *testing.T) {
	c := toyConfig()
	c.Disaggregated = true
	truth := toyProfile()
	truth.MBU = 0.6
	in := func(i int, _ Recommendation) Input {
		s := shape{rate: float64(100 + 37*(i%17)), prompt: float64(1000 + 100*(i%5)), cached: float64(50 * (i % 7)), out: 300}
		x := telemetryFrom(truth, c, s, 10+i%40)
		x.Load.RequestsPerSecond = map[string]float64{"interactive": s.rate / 3, "standard": s.rate / 3, "batch": s.rate / 3}
		x.Load.Queued = i % 3
		return x
	}
	a := run(newDecider(t, c, toyProfile()), t0, 200, true, in)
	b := run(newDecider(t, c, toyProfile()), t0, 200, true, in)
	if !reflect.DeepEqual(a, b) {
		t.Fatal("two deciders fed the same inputs disagree")
	}
}

// A queue is a backlog, not a rate: the replicas that drain it within the
// TTFT target are added at the tick that sees it, on top of the windowed
// load, without entering panic mode, and are no longer asked for once it
// drained. (Averaged into the windows, a backlog that builds during a cold
// start panicked and held its peak for a stable window.)
func TestQueueBacklog(t *testing.T) {
	tests := []struct {
		name          string
		disaggregated bool
		queued        int
		wantPrefill   int
		wantDecode    int
	}{
		// 43 queued 2000-token prompts to prefill within 20 ms: 4.3M
		// tokens/s over 878.6k per replica = 4.894 replicas; aggregated, on
		// top of the 2 decode replicas' load: 6.894 -> 7.
		{name: "aggregated: added to the windowed load", queued: 43, wantDecode: 7},
		// Disaggregated: the prefill role takes it (5), decode keeps 2.
		{name: "disaggregated: the prefill role drains it", disaggregated: true, queued: 43, wantPrefill: 5, wantDecode: 2},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			c := toyConfig()
			c.Disaggregated = tc.disaggregated
			d := newDecider(t, c, toyProfile())
			recs := run(d, t0, 40, false, func(i int, _ Recommendation) Input {
				in := units(2)
				if i == 30 {
					in.Load.Queued = tc.queued
				}
				in.Pods.Decode.Ready, in.Pods.Prefill.Ready = 2, 1 // what was up; the rest still starting
				return in
			})
			role := func(r Recommendation) RoleDecision {
				if tc.disaggregated {
					return r.PrefillRole
				}
				return r.DecodeRole
			}
			if r := recs[29]; r.Decode != 2 {
				t.Fatalf("before the queue: %v, want 2 decode", r)
			}
			r := recs[30]
			if r.Prefill != tc.wantPrefill || r.Decode != tc.wantDecode {
				t.Fatalf("with %d queued: %v, want %dP+%dD", tc.queued, r, tc.wantPrefill, tc.wantDecode)
			}
			near(t, "backlog", role(r).Backlog, 4.894, 0.01)
			for i := 31; i < len(recs); i++ {
				if r := recs[i]; r.Decode != 2 || role(r).Backlog != 0 {
					t.Fatalf("tick %d, the queue drained: %v (backlog %.2f), want 2 decode and none held", i, r, role(r).Backlog)
				}
			}
			for i, r := range recs {
				if r.DecodeRole.InPanic || r.PrefillRole.InPanic {
					t.Fatalf("tick %d: panic mode; a backlog must not start it", i)
				}
			}
		})
	}
}

// Arrivals are counted a service time before completions: a burst that has
// not finished yet scales up from its arrival rates, and the larger of the
// two rates counts; without arrival counters (an older activator) the
// decider plans on completions alone.
func TestArrivalsLeadCompletions(t *testing.T) {
	burst := shape{rate: 1500, prompt: 2000, out: 200}
	tests := []struct {
		name string
		in   func() Input
		want int
	}{
		{name: "arrivals only (nothing finished yet) scale up at once", want: 5, in: func() Input {
			var in Input
			in.Load.ArrivalsPerSecond = map[string]float64{"standard": burst.rate}
			in.Load.ArrivedPromptTokensPerSecond = burst.rate * burst.prompt
			return in
		}},
		{name: "completions only, as from an older activator", want: 5, in: func() Input { return burst.input() }},
		{name: "arrivals above completions count", want: 5, in: func() Input {
			in := shape{rate: 100, prompt: 2000, out: 200}.input()
			in.Load.ArrivalsPerSecond = map[string]float64{"standard": burst.rate}
			in.Load.ArrivedPromptTokensPerSecond = burst.rate * burst.prompt
			return in
		}},
		{name: "completions above arrivals count", want: 5, in: func() Input {
			in := burst.input()
			in.Load.ArrivalsPerSecond = map[string]float64{"standard": 100}
			in.Load.ArrivedPromptTokensPerSecond = 100 * burst.prompt
			return in
		}},
		{name: "neither: the light load's one replica", want: 1, in: func() Input { return shape{rate: 100, prompt: 2000, out: 200}.input() }},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			c := toyConfig()
			c.Disaggregated = true
			c.AssumedPromptTokens, c.AssumedOutputTokens = shapePrompt, shapeOut
			d := newDecider(t, c, toyProfile())
			// The disaggregated decode role counts output tokens alone:
			// 1500 req/s x 200 = 300k tokens/s = 4.86 replicas -> 5.
			got := d.Scale(t0, tc.in())
			if got.Decode != tc.want {
				t.Fatalf("got %v, want %d decode replicas", got, tc.want)
			}
		})
	}
}
