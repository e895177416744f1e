package autoscaler

import (
	"math"
	"testing"
	"time"
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
