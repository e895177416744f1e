package autoscaler

import (
	"testing"
	"time"

	"github.com/llmd-kn/llmd-kn/pkg/engine"
)

// toyProfile has round numbers so that load functions can be computed by
// hand: 1e9 parameters of 1 byte (weights read in 1 ms at 1e12 B/s), 1 us of
// compute per token (2e9 FLOPs at 2e15 FLOP/s), 1000 KV bytes per token
// (1 layer x 1 KV head x head dim 500 x 2 (K,V) x 1 byte) so one token of
// context costs 1 ns to read, room for 1e6 tokens of KV, no step overhead.
func toyProfile() engine.Profile {
	return engine.Profile{
		Name: "toy",
		Model: engine.Model{Name: "toy", Params: 1e9, Layers: 1, Hidden: 500, AttentionHeads: 1,
			KVHeads: 1, HeadDim: 500, DtypeBytes: 1, MaxModelLen: 1 << 20},
		Accelerator: engine.Accelerator{Name: "toy", Count: 1, MemoryBytes: 2e9, PeakFlops: 2e15, HBMBandwidth: 1e12},
		MFU:         1, MBU: 1, GPUMemoryUtilization: 1, KVLinkBandwidth: 1e12,
	}
}

// toyConfig is the default config with the toy's SLO: TTFT 20 ms, TPOT
// 1.15 ms at p90, planned at full utilization so hand numbers stay simple.
func toyConfig() Config {
	c := DefaultConfig()
	c.SLO = SLO{TTFT: 20 * time.Millisecond, TPOT: 1150 * time.Microsecond, Percentile: 90}
	c.TargetUtilization = 1
	return c
}

var t0 = time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)

func newDecider(t *testing.T, c Config, p engine.Profile) *Decider {
	t.Helper()
	d, err := New(c, p)
	if err != nil {
		t.Fatal(err)
	}
	return d
}

// shape is a steady load of requests of one shape, and the ready pods;
// input turns it into a tick's Input.
type shape struct {
	rate                  float64 // requests/s
	prompt, cached, out   float64 // tokens per request
	queued, inFlight      int
	readyPrefill, readyDc int
}

func (s shape) input() Input {
	l := Load{Queued: s.queued, InFlight: s.inFlight}
	if s.rate > 0 {
		l.RequestsPerSecond = map[string]float64{"standard": s.rate}
		l.PromptTokensPerSecond = s.rate * s.prompt
		l.UncachedPrefillTokensPerSecond = s.rate * (s.prompt - s.cached)
		l.OutputTokensPerSecond = s.rate * s.out
		l.MeanPromptTokens, l.MeanCachedTokens, l.MeanOutputTokens = s.prompt, s.cached, s.out
	}
	return Input{Load: l, Pods: Pods{Prefill: Telemetry{Ready: s.readyPrefill}, Decode: Telemetry{Ready: s.readyDc}}}
}

// run calls Scale every tick from start for n ticks; the pods follow the
// recommendation instantly when follow is set. It returns every
// recommendation.
func run(d *Decider, start time.Time, n int, follow bool, in func(i int, last Recommendation) Input) []Recommendation {
	var out []Recommendation
	var last Recommendation
	for i := range n {
		x := in(i, last)
		if follow {
			x.Pods.Prefill.Ready, x.Pods.Decode.Ready = last.Prefill, last.Decode
		}
		last = d.Scale(start.Add(time.Duration(i)*d.cfg.TickInterval), x)
		out = append(out, last)
	}
	return out
}

func steady(s shape) func(int, Recommendation) Input {
	return func(int, Recommendation) Input { return s.input() }
}
