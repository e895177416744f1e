package autoscaler

import (
	"math"
	"testing"
	"time"

	"github.com/llmd-kn/llmd-kn/pkg/engine"
)

func near(t *testing.T, what string, got, want, rel float64) {
	t.Helper()
	if math.Abs(got-want) > rel*math.Abs(want) {
		t.Errorf("%s = %.6g, want %.6g (within %.2g%%)", what, got, want, rel*100)
	}
}

func TestDecodeLoadFunction(t *testing.T) {
	p := toyProfile()
	tests := []struct {
		name      string
		tpot      time.Duration
		memory    float64
		ctx       float64
		corr      float64
		seqs      int
		tokPerSec float64
		kvLimited bool
		feasible  bool
	}{
		// Step(n) at context 1000 is memory bound: 1 ms of weights plus
		// n x 1001 tokens x 1 ns = 1 ms + 1.001 us x n (compute is about
		// 1.001 us x n). Under 1.15 ms: n <= 149.85, so 149 sequences; step
		// 1.149149 ms; 149 / 1.149149 ms = 129,662 tokens/s.
		{name: "TPOT bound", tpot: 1150 * time.Microsecond, memory: 2e9, ctx: 1000, corr: 1,
			seqs: 149, tokPerSec: 129662, feasible: true},
		// A 2x correction: 2 ms + 2.002 us x n <= 2.3 ms gives the same 149.
		{name: "correction scales step time", tpot: 2300 * time.Microsecond, memory: 2e9, ctx: 1000, corr: 2,
			seqs: 149, tokPerSec: 129662 / 2, feasible: true},
		// KV room of 1e8 bytes = 1e5 tokens holds 99 sequences of 1001.
		{name: "KV bound", tpot: 1150 * time.Microsecond, memory: 1.1e9, ctx: 1000, corr: 1,
			seqs: 99, tokPerSec: 99 / 1.099099e-3, kvLimited: true, feasible: true},
		// MaxNumSeqs 256 binds before TPOT at a short context: step(256) at
		// context 10 = 1 ms + 256 x 11 ns = 1.002816 ms.
		{name: "max-num-seqs bound", tpot: 1150 * time.Microsecond, memory: 2e9, ctx: 10, corr: 1,
			seqs: 256, tokPerSec: 256 / 1.002816e-3, feasible: true},
		// The weights alone take 1 ms: a 0.9 ms TPOT is out of reach.
		{name: "infeasible", tpot: 900 * time.Microsecond, memory: 2e9, ctx: 1000, corr: 1,
			seqs: 1, tokPerSec: 1 / 1.001001e-3, feasible: false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			c := toyConfig()
			c.SLO.TPOT = tc.tpot
			p := p
			p.Accelerator.MemoryBytes = tc.memory
			got := DecodeLoadFunction(&p, &c, tc.ctx, tc.corr)
			if got.Sequences != tc.seqs || got.KVLimited != tc.kvLimited || got.Feasible != tc.feasible {
				t.Fatalf("got %+v, want %d sequences, kvLimited %v, feasible %v", got, tc.seqs, tc.kvLimited, tc.feasible)
			}
			near(t, "tokens/s", got.TokensPerSecond, tc.tokPerSec, 1e-3)
		})
	}
}

func TestPrefillLoadFunction(t *testing.T) {
	p := toyProfile()
	c := toyConfig()
	c.Disaggregated = true
	// 2000-token prompts, budget 8192: full steps of 4 x 2000 tokens take
	// 8000 x 1 us of weights' FLOPs plus 4 x 4 x 500 x 2000 x 1000.5
	// attention FLOPs (16 GFLOP, 8 us) = 8.008 ms: 999,001 tokens/s. One
	// prompt alone: 2 ms + 2 us attention + 2 us KV transfer (2e6 bytes at
	// 1e12 B/s) = 2.004 ms.
	got := PrefillLoadFunction(&p, &c, 2000, 0, 1)
	near(t, "throughput", got.Throughput, 999001, 1e-4)
	near(t, "latency", got.Latency.Seconds(), 2.004e-3, 1e-3)
	if !got.Feasible {
		t.Fatal("2 ms prefill under a 20 ms TTFT is feasible")
	}
	// The p90 wait at the solved utilization fills the TTFT slack:
	// s/(2(1-rho)) ln(10 rho) = 20 - 2.004 ms, with s = 2000/999001 s;
	// by hand rho is between 0.879 (17.96 ms) and 0.88 (18.12 ms).
	s := 2000 / got.Throughput
	wait := s / (2 * (1 - got.Utilization)) * math.Log(got.Utilization/0.1)
	near(t, "p90 wait + latency", wait+got.Latency.Seconds(), 0.020, 1e-6)
	if got.Utilization < 0.879 || got.Utilization > 0.88 {
		t.Errorf("utilization %v, want in [0.879, 0.88]", got.Utilization)
	}
	near(t, "tokens/s", got.TokensPerSecond, got.Utilization*got.Throughput, 1e-12)

	t.Run("target utilization caps a loose SLO", func(t *testing.T) {
		c := c
		c.SLO.TTFT = 10 * time.Second
		c.TargetUtilization = 0.7
		got := PrefillLoadFunction(&p, &c, 2000, 0, 1)
		if got.Utilization != 0.7 {
			t.Errorf("utilization %v, want 0.7", got.Utilization)
		}
	})
	t.Run("infeasible TTFT plans throughput at the target utilization", func(t *testing.T) {
		c := c
		c.SLO.TTFT = time.Millisecond
		c.TargetUtilization = 0.8
		got := PrefillLoadFunction(&p, &c, 2000, 0, 1)
		if got.Feasible || got.Utilization != 0.8 {
			t.Errorf("got %+v, want infeasible at 0.8", got)
		}
	})
	t.Run("correction divides throughput", func(t *testing.T) {
		got2 := PrefillLoadFunction(&p, &c, 2000, 0, 2)
		near(t, "throughput", got2.Throughput, got.Throughput/2, 1e-9)
		if got2.TokensPerSecond >= got.TokensPerSecond/2 {
			t.Errorf("a slower prefill also queues longer: %v >= %v", got2.TokensPerSecond, got.TokensPerSecond/2)
		}
	})
	t.Run("long prompts are chunked by the token budget", func(t *testing.T) {
		// 20,000 tokens: chunks of 8192, 8192, 3616, about 20 ms of
		// compute plus attention over the growing context.
		got := PrefillLoadFunction(&p, &c, 20000, 0, 1)
		if l := got.Latency.Seconds(); l < 0.020 || l > 0.0215 {
			t.Errorf("latency %v, want about 20-21.5 ms", got.Latency)
		}
	})
}

// Prefill chunks in a co-located replica's steps slow its decodes: the
// TPOT-driven need exceeds the sum of the prefill and decode fractions
// once a chunk step alone is over the target, grows with the prefill load
// at a fixed output rate, and is nothing but the decode need without
// prefill.
func TestColocatedInterferenceRaisesTheNeed(t *testing.T) {
	p := h100(t)
	cfg := DefaultConfig()
	cfg.SLO = SLO{TTFT: 2 * time.Second, TPOT: 100 * time.Millisecond, Percentile: 90}
	toy, toyCfg := toyProfile(), toyConfig()
	code := Shape{Prompt: 3072, Cached: 1024, Output: 28} // the Azure code trace's shape
	tests := []struct {
		name        string
		p           *engine.Profile
		cfg         Config
		s           Shape
		rate        float64 // requests/s
		wantAbove   bool    // the need exceeds the fractions' sum
		min, max    float64 // the need's range
		minMiss     float64 // on one replica, at least this share misses
		uncachedOff bool    // every prompt token cached: no prefill
	}{
		// 2000-token chunks take 2 ms on the toy against a 1.15 ms target:
		// 1500 req/s needs 23 replicas, not the fractions' 8.27.
		{name: "toy: a chunk step alone misses the target", p: &toy, cfg: toyCfg, s: Shape{Prompt: 2000, Output: 200}, rate: 1500,
			wantAbove: true, min: 22.5, max: 23.5, minMiss: 0.99},
		// H100, 10 req/s of code completions: mixed steps of two or more
		// prompts pass 100 ms: 1.02 replicas where the fractions say 0.85.
		{name: "h100 code trace shape at 10 req/s", p: &p, cfg: cfg, s: code, rate: 10, wantAbove: true, min: 0.95, max: 1.1, minMiss: 0.1},
		{name: "h100 code trace shape at 20 req/s", p: &p, cfg: cfg, s: code, rate: 20, wantAbove: true, min: 1.9, max: 2.2, minMiss: 0.9},
		// At p99 the tail must be ten times thinner.
		{name: "h100 code trace shape at 10 req/s, p99", p: &p, cfg: withPercentile(cfg, 99), s: code, rate: 10, wantAbove: true, min: 1.3, max: 1.6},
		// Light prefill load: one prompt per mixed step stays under the
		// target; the fractions rule.
		{name: "h100 chat shape at 5 req/s", p: &p, cfg: cfg, s: Shape{Prompt: 1000, Output: 200}, rate: 5, min: 0.2, max: 0.3},
		// No prefill: decodes alone (1000 output tokens/s in 7 ms steps)
		// meet the target on a fraction of a replica; the fractions rule.
		{name: "no prefill", p: &p, cfg: cfg, s: Shape{Prompt: 1000, Cached: 1000, Output: 200}, rate: 5, min: 0.001, max: 0.1, uncachedOff: true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			prefill := tc.rate * (tc.s.Prompt - tc.s.Cached)
			out := tc.rate * tc.s.Output
			need := ColocatedNeed(tc.p, &tc.cfg, tc.s, prefill, out, 1)
			pc := PrefillLoadFunction(tc.p, &tc.cfg, tc.s.Prompt, tc.s.Cached, 1)
			dc := DecodeLoadFunction(tc.p, &tc.cfg, tc.s.Prompt+tc.s.Output/2, 1)
			fractions := out / dc.TokensPerSecond
			if !tc.uncachedOff {
				fractions += prefill / pc.TokensPerSecond
			}
			if need < tc.min || need > tc.max {
				t.Errorf("need %.3f, want in [%g, %g] (fractions %.3f)", need, tc.min, tc.max, fractions)
			}
			if tc.wantAbove != (need > fractions) {
				t.Errorf("need %.3f against fractions %.3f: above is %v, want %v", need, fractions, need > fractions, tc.wantAbove)
			}
			one := PredictColocatedTPOT(tc.p, &tc.cfg, tc.s, prefill, out, 1)
			if one.Miss < tc.minMiss {
				t.Errorf("on one replica %.3f of the requests miss, want at least %g (%+v)", one.Miss, tc.minMiss, one)
			}
			// At the need, the predicted tail meets the percentile.
			if need > 0 {
				at := PredictColocatedTPOT(tc.p, &tc.cfg, tc.s, prefill/need, out/need, 1)
				if at.Miss > 1-tc.cfg.SLO.Percentile/100+1e-6 || at.Quantile > tc.cfg.SLO.TPOT {
					t.Errorf("at the need: miss %.4f, p%g TPOT %v (%+v)", at.Miss, tc.cfg.SLO.Percentile, at.Quantile, at)
				}
			}
		})
	}

	t.Run("more prefill at the same output rate needs more", func(t *testing.T) {
		last := -1.0
		for _, prefill := range []float64{0, 5000, 10000, 20000, 40000} {
			need := ColocatedNeed(&p, &cfg, code, prefill, 300, 1)
			if need <= last {
				t.Errorf("%g prefill tokens/s: need %.3f, not above %.3f", prefill, need, last)
			}
			last = need
		}
	})
	t.Run("a slower profile (correction 2) needs more", func(t *testing.T) {
		a := ColocatedNeed(&p, &cfg, code, 20000, 300, 1)
		b := ColocatedNeed(&p, &cfg, code, 20000, 300, 2)
		if b <= a*1.5 {
			t.Errorf("need %.3f at correction 2 against %.3f at 1", b, a)
		}
	})
	t.Run("no load needs nothing; bad rates are no load", func(t *testing.T) {
		for _, r := range [][2]float64{{0, 0}, {math.NaN(), 1}, {math.Inf(1), 1}, {-5, 0}} {
			if need := ColocatedNeed(&p, &cfg, code, r[0], r[1], 1); need != 0 {
				t.Errorf("rates %v: need %v", r, need)
			}
		}
	})
}

// The model agrees with the simulator's engine (pkg/engine, the same
// roofline, continuous batching with chunked prefill and a prefix cache)
// at the load one replica is planned for (the decider's need, the larger
// of the fractions' sum and ColocatedNeed, is 1), for a simulated replica
// under Poisson arrivals: the mean TPOT within 15%, the p90 within 15% for
// one-chunk prompts (within 25% just under saturation, where the tail is
// steep), and the share of requests over the target within 0.05. Prompts
// of two chunks are over-predicted (measured: +22% mean, +49% p90): the
// model is conservative there, and the test holds it to that side.
func TestColocatedTPOTMatchesTheSimulator(t *testing.T) {
	p := h100(t)
	cfg := DefaultConfig()
	cfg.SLO = SLO{TTFT: 2 * time.Second, TPOT: 100 * time.Millisecond, Percentile: 90}
	for _, tc := range []struct {
		name           string
		s              Shape
		mean, p90      float64 // relative tolerance
		conservativeTo float64 // when set: predicted >= simulated, at most this factor above
	}{
		{name: "code completions, shared system prompt", s: Shape{Prompt: 3072, Cached: 1024, Output: 28}, mean: 0.15, p90: 0.15},
		{name: "short prompts, no cache hits, 87% busy prefilling", s: Shape{Prompt: 1500, Output: 16}, mean: 0.15, p90: 0.25},
		{name: "long prompts in two chunks", s: Shape{Prompt: 12000, Cached: 2000, Output: 40}, conservativeTo: 1.6},
	} {
		t.Run(tc.name, func(t *testing.T) {
			// The request rate one replica is planned for: the decider's
			// need, the larger of the fractions' sum and the TPOT need.
			pc := PrefillLoadFunction(&p, &cfg, tc.s.Prompt, tc.s.Cached, 1)
			dc := DecodeLoadFunction(&p, &cfg, tc.s.Prompt+tc.s.Output/2, 1)
			need := func(rate float64) float64 {
				prefill, out := rate*(tc.s.Prompt-tc.s.Cached), rate*tc.s.Output
				return max(prefill/pc.TokensPerSecond+out/dc.TokensPerSecond, ColocatedNeed(&p, &cfg, tc.s, prefill, out, 1))
			}
			lo, hi := 0.0, 1.0
			for need(hi) < 1 {
				lo, hi = hi, hi*2
			}
			for range 30 {
				if mid := (lo + hi) / 2; need(mid) < 1 {
					lo = mid
				} else {
					hi = mid
				}
			}
			sim, err := simulateColocated(p, &cfg, tc.s, lo, 15*time.Minute, 1)
			if err != nil {
				t.Fatal(err)
			}
			// Predicted at the load the simulated replica actually got.
			pred := PredictColocatedTPOT(&p, &cfg, tc.s, sim.prefillTokens, sim.outputTokens, 1)
			t.Logf("%.2f req/s (%d requests): simulated mean %v p90 %v miss %.3f; predicted mean %v p90 %v miss %.3f",
				lo, sim.requests, sim.meanTPOT, sim.p90TPOT, sim.miss, pred.Mean, pred.Quantile, pred.Miss)
			if math.Abs(pred.Miss-sim.miss) > 0.05 {
				t.Errorf("share over the target: predicted %.3f, simulated %.3f", pred.Miss, sim.miss)
			}
			if f := tc.conservativeTo; f > 0 {
				for _, x := range [][3]any{{"mean", pred.Mean, sim.meanTPOT}, {"p90", pred.Quantile, sim.p90TPOT}} {
					if got, want := x[1].(time.Duration), x[2].(time.Duration); got < want || got.Seconds() > f*want.Seconds() {
						t.Errorf("%s TPOT predicted %v, simulated %v: want at or above, at most %gx", x[0], got, want, f)
					}
				}
				return
			}
			near(t, "mean TPOT", pred.Mean.Seconds(), sim.meanTPOT.Seconds(), tc.mean)
			near(t, "p90 TPOT", pred.Quantile.Seconds(), sim.p90TPOT.Seconds(), tc.p90)
		})
	}
}

func h100(t *testing.T) engine.Profile {
	t.Helper()
	p, err := engine.BuiltinProfile("llama-3.1-8b-h100")
	if err != nil {
		t.Fatal(err)
	}
	return p
}

func withPercentile(c Config, p float64) Config {
	c.SLO.Percentile = p
	return c
}
