package plan

import (
	"bytes"
	"context"
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/llmd-kn/llmd-kn/pkg/bench"
	"github.com/llmd-kn/llmd-kn/pkg/engine"
	"github.com/llmd-kn/llmd-kn/pkg/router"
	"github.com/llmd-kn/llmd-kn/pkg/workload"
)

// tokens returns a prompt of n ids, distinct for each seed.
func tokens(n int, seed uint32) []uint32 {
	p := make([]uint32, n)
	for i := range p {
		p[i] = 1000 + (seed*7919+uint32(i)*31)%20000
	}
	return p
}

// sharedPrefix is a small llm-d-style workload: groups of prompts sharing
// a system prompt, Poisson arrivals.
func sharedPrefix(t testing.TB, groups, perGroup, system, question, out int, rate float64, n int) *workload.Workload {
	t.Helper()
	ds, err := workload.NewSharedPrefix(workload.SharedPrefixConfig{
		Groups: groups, PromptsPerGroup: perGroup, SystemPromptLen: system, QuestionLen: question, OutputLen: out,
	}, 7)
	if err != nil {
		t.Fatal(err)
	}
	w, err := workload.New(ds, workload.Arrival{Kind: workload.ArrivalPoisson, Rate: rate}, workload.Options{Seed: 3, MaxRequests: n})
	if err != nil {
		t.Fatal(err)
	}
	return w
}

func run(t testing.TB, cfg Config, src workload.Source) *Result {
	t.Helper()
	res, err := Run(context.Background(), cfg, src)
	if err != nil {
		t.Fatal(err)
	}
	return res
}

func one(prompt, out int) workload.Source {
	return workload.Requests([]workload.Request{workload.NewRequest(0, 0, tokens(prompt, 1), out)})
}

func TestOneRequestTTFTIsThePrefillStep(t *testing.T) {
	for _, routing := range []string{"round-robin", "default"} {
		t.Run(routing, func(t *testing.T) {
			cfg := DefaultConfig()
			cfg.Routing = routing
			const prompt, out = 2000, 5
			res := run(t, cfg, one(prompt, out))
			r := res.Records[0]
			if !r.OK() {
				t.Fatalf("request failed: %s %s", r.Error, r.Detail)
			}
			p := &cfg.Profile
			prefill := p.StepTime([]engine.StepInput{{Query: prompt, Context: 0}})
			if r.TTFT != prefill {
				t.Errorf("TTFT = %v, want the prefill step %v", r.TTFT, prefill)
			}
			e2e := prefill
			for k := range out - 1 {
				gap := p.StepTime([]engine.StepInput{{Query: 1, Context: prompt + k}})
				if r.ITL[k] != gap {
					t.Errorf("gap %d = %v, want the decode step %v", k, r.ITL[k], gap)
				}
				e2e += gap
			}
			if r.E2E != e2e {
				t.Errorf("E2E = %v, want %v", r.E2E, e2e)
			}
			if r.Chunks != out || r.CompletionTokens != out || r.PromptTokens != prompt || len(r.ITL) != out-1 || !r.HasUsage {
				t.Errorf("record %+v: want %d chunks and completion tokens, %d prompt tokens, %d gaps", r, out, prompt, out-1)
			}
		})
	}
}

func TestOverheadIsPaidPerHop(t *testing.T) {
	cfg := DefaultConfig()
	cfg.Overhead = 3 * time.Millisecond
	res := run(t, cfg, one(1000, 2))
	want := cfg.Overhead + cfg.Profile.StepTime([]engine.StepInput{{Query: 1000}})
	if got := res.Records[0].TTFT; got != want {
		t.Errorf("TTFT = %v, want overhead + prefill step = %v", got, want)
	}
}

func TestSecondRequestHitsThePrefixCache(t *testing.T) {
	cfg := DefaultConfig()
	cfg.Engines = 1
	p := tokens(4096, 9)
	src := workload.Requests([]workload.Request{
		workload.NewRequest(0, 0, p, 1),
		workload.NewRequest(1, time.Second, p, 1),
	})
	res := run(t, cfg, src)
	// 4096 tokens in blocks of 16: all but the last block is reused (the
	// last prompt token is always computed).
	if got, want := res.Records[1].CachedTokens, 4096-16; got != want {
		t.Errorf("cached tokens = %d, want %d", got, want)
	}
	if res.Records[1].TTFT >= res.Records[0].TTFT/4 {
		t.Errorf("cached TTFT %v not much below cold %v", res.Records[1].TTFT, res.Records[0].TTFT)
	}
}

func summaryJSON(t *testing.T, res *Result) []byte {
	t.Helper()
	s := Summarize(res, SummaryOptions{SLO: bench.SLO{TTFT: time.Second, TPOT: 50 * time.Millisecond}})
	js, err := json.Marshal(s)
	if err != nil {
		t.Fatal(err)
	}
	return js
}

func TestSameSeedSameSummary(t *testing.T) {
	w := sharedPrefix(t, 6, 4, 1500, 300, 40, 12, 120)
	cfg := DefaultConfig()
	cfg.Engines = 3
	cfg.Seed = 42
	for _, routing := range []string{"least-request", "default"} {
		cfg.Routing = routing
		a := summaryJSON(t, run(t, cfg, w.Source()))
		b := summaryJSON(t, run(t, cfg, w.Source()))
		if !bytes.Equal(a, b) {
			t.Errorf("%s: two runs with seed 42 differ", routing)
		}
	}
	// The seed matters to randomized pickers.
	cfg.Routing = "least-request"
	a := summaryJSON(t, run(t, cfg, w.Source()))
	cfg.Seed = 43
	if b := summaryJSON(t, run(t, cfg, w.Source())); bytes.Equal(a, b) {
		t.Error("seeds 42 and 43 give identical least-request runs; is the seed used?")
	}
}

func TestPrefixAwareRoutingBeatsRoundRobin(t *testing.T) {
	// 16 groups whose 3,000-token system prompts fit in the fleet's caches
	// but not all in each engine's: where a request goes decides whether
	// it hits.
	w := sharedPrefix(t, 16, 5, 3000, 300, 20, 24, 400)
	cfg := DefaultConfig()
	cfg.Engines = 4
	cfg.Engine.NumBlocks = 2500 // 40,000 tokens a engine
	sum := map[string]bench.RunSummary{}
	for _, routing := range []string{"round-robin", "prefix-approx", "kv-precise", "default"} {
		cfg.Routing = routing
		res := run(t, cfg, w.Source())
		sum[routing] = Summarize(res, SummaryOptions{})
		s := sum[routing]
		t.Logf("%-13s cache hit %.3f TTFT p50 %.3fs p90 %.3fs", routing, s.Tokens.CacheHitRate, s.LatencySeconds.TTFT.P50, s.LatencySeconds.TTFT.P90)
	}
	rr := sum["round-robin"]
	for _, routing := range []string{"prefix-approx", "kv-precise", "default"} {
		s := sum[routing]
		if s.Tokens.CacheHitRate <= rr.Tokens.CacheHitRate+0.1 {
			t.Errorf("%s cache hit rate %.3f, round-robin %.3f: want clearly higher", routing, s.Tokens.CacheHitRate, rr.Tokens.CacheHitRate)
		}
		if s.LatencySeconds.TTFT.P90 >= rr.LatencySeconds.TTFT.P90 {
			t.Errorf("%s TTFT p90 %.3fs, round-robin %.3fs: want lower", routing, s.LatencySeconds.TTFT.P90, rr.LatencySeconds.TTFT.P90)
		}
	}
}

func TestKVEventsOnlyForPreciseProfiles(t *testing.T) {
	want := map[string]bool{"round-robin": false, "least-request": false, "prefix-approx": false, "kv-precise": true, "ttft-cost": true, "default": true}
	for routing, kv := range want {
		cfg := DefaultConfig()
		cfg.Routing = routing
		res := run(t, cfg, one(100, 2))
		if res.Stats.KVEvents != kv {
			t.Errorf("%s: KV events %v, want %v", routing, res.Stats.KVEvents, kv)
		}
		if kv && res.Stats.KVBatches == 0 {
			t.Errorf("%s: no KV batch reached the router", routing)
		}
	}
}

func TestPrefillDecodeDisaggregation(t *testing.T) {
	cfg := DefaultConfig()
	cfg.PrefillEngines, cfg.Engines = 1, 1
	cfg.Overhead = time.Millisecond
	const long, short = 3000, 200
	src := workload.Requests([]workload.Request{
		workload.NewRequest(0, 0, tokens(long, 1), 4),
		workload.NewRequest(1, 10*time.Second, tokens(short, 2), 4),
	})
	res := run(t, cfg, src)
	if res.Stats.Disaggregated != 1 || res.Stats.Decisions != 2 {
		t.Fatalf("disaggregated %d of %d decisions, want 1 of 2 (only the prompt above the 512-token threshold)", res.Stats.Disaggregated, res.Stats.Decisions)
	}
	p := &cfg.Profile
	// Prefill engine: the whole prompt in one step; then the KV of all but
	// the last token crosses the link; the decode engine computes the last
	// prompt token and samples the first output token. Two hops.
	want := 2*cfg.Overhead + p.StepTime([]engine.StepInput{{Query: long}}) + p.TransferTime(long-1) +
		p.StepTime([]engine.StepInput{{Query: 1, Context: long - 1}})
	r := res.Records[0]
	if !r.OK() || r.TTFT != want {
		t.Errorf("disaggregated TTFT %v (%s), want prefill + transfer + one decode step + 2 hops = %v", r.TTFT, r.Error, want)
	}
	if r2 := res.Records[1]; r2.TTFT != cfg.Overhead+p.StepTime([]engine.StepInput{{Query: short}}) {
		t.Errorf("decode-only TTFT %v, want one hop and the prefill step on the decode engine", r2.TTFT)
	}
	for _, e := range res.Engines {
		if e.Stats.Held != 0 {
			t.Errorf("%s still holds %d requests' blocks: the decode engine's first token must release them", e.ID, e.Stats.Held)
		}
		if e.Role == router.RolePrefill && e.Stats.Finished != 1 {
			t.Errorf("prefill engine finished %d requests, want 1", e.Stats.Finished)
		}
		if e.Role == router.RoleDecode && e.Stats.ExternalTokens != long-1 {
			t.Errorf("decode engine loaded %d external tokens, want %d", e.Stats.ExternalTokens, long-1)
		}
	}
}

func TestFailedDecodeReleasesThePrefillBlocks(t *testing.T) {
	cfg := DefaultConfig()
	cfg.PrefillEngines, cfg.Engines = 1, 1
	cfg.Routing = "kv-precise"
	cfg.Engine.MaxModelLen = 5000
	res := run(t, cfg, workload.Requests([]workload.Request{workload.NewRequest(0, 0, tokens(4000, 1), 2000)}))
	r := res.Records[0]
	// max_tokens 2000 + 4000 > 5000 on both engines: a 400 either way,
	// but only after the prefill (max_tokens 1) succeeded.
	if r.Error != bench.ErrHTTP4xx || r.Status != 400 {
		t.Fatalf("record %s %d, want a 400 from the decode engine", r.Error, r.Status)
	}
	for _, e := range res.Engines {
		if e.Stats.Held != 0 {
			t.Errorf("%s holds blocks after the decode request failed", e.ID)
		}
	}
}

func TestOverloadWithFlowControlRejects(t *testing.T) {
	// 40 requests a second of 6,000-token prompts on one engine: far more
	// prefill than it computes.
	w := sharedPrefix(t, 200, 1, 5000, 1000, 10, 40, 400)
	cfg := DefaultConfig()
	cfg.Flow.MaxQueueTime = 2 * time.Second
	cfg.RequestTimeout = 0
	res := run(t, cfg, w.Source())
	s := Summarize(res, SummaryOptions{SLO: bench.SLO{TTFT: time.Second}})
	if s.Requests.ByStatus["503"] == 0 || res.Stats.Rejected == 0 {
		t.Fatalf("no 503 from flow control under 10x overload: %+v", s.Requests)
	}
	if s.LatencySeconds.Queue == nil || s.LatencySeconds.Queue.Max < 1 {
		t.Errorf("queue time %+v: requests should have waited in the activator", s.LatencySeconds.Queue)
	}
	cfg.Flow.Enabled = false
	res = run(t, cfg, w.Source())
	if s := Summarize(res, SummaryOptions{}); s.Requests.Failed != 0 {
		t.Errorf("without flow control and timeouts every request completes; %d failed", s.Requests.Failed)
	}
}

func TestClientTimeoutAbortsTheRequest(t *testing.T) {
	cfg := DefaultConfig()
	cfg.RequestTimeout = 50 * time.Millisecond
	res := run(t, cfg, one(100, 100000/20))
	r := res.Records[0]
	if r.Error != bench.ErrTimeout || r.E2E != cfg.RequestTimeout {
		t.Fatalf("record %s after %v, want a timeout after %v", r.Error, r.E2E, cfg.RequestTimeout)
	}
	if st := res.Engines[0].Stats; st.Aborted != 1 || st.Running != 0 {
		t.Errorf("engine aborted %d, running %d: the timeout must abort the request", st.Aborted, st.Running)
	}
}

func TestScalerAddsAndRemovesEngines(t *testing.T) {
	w := sharedPrefix(t, 50, 2, 1000, 500, 30, 20, 600)
	cfg := DefaultConfig()
	cfg.Routing = "least-request"
	cfg.StartupDelay = 2 * time.Second
	var ticks int
	cfg.Scaler = ScalerFunc(func(o *Observation) Replicas {
		ticks++
		switch {
		case o.Now < 5*time.Second:
			return Replicas{Decode: 1}
		case o.Now < 20*time.Second:
			return Replicas{Decode: 4}
		}
		return Replicas{Decode: 2}
	})
	res := run(t, cfg, w.Source())
	if ticks == 0 {
		t.Fatal("the scaler was never asked")
	}
	if res.Stats.PeakReplicas.Decode != 4 {
		t.Errorf("peak %+v, want 4 decode-capable engines", res.Stats.PeakReplicas)
	}
	removed := 0
	for _, e := range res.Engines {
		if e.Removed {
			removed++
			if e.Stopped < 20*time.Second {
				t.Errorf("%s removed at %v, before the scale-down", e.ID, e.Stopped)
			}
		}
		if e.ID != "engine-0" && e.Started < 5*time.Second+cfg.StartupDelay {
			t.Errorf("%s started at %v, before the scale-up plus its startup delay", e.ID, e.Started)
		}
	}
	if removed != 2 {
		t.Errorf("%d engines removed, want 2", removed)
	}
	if s := Summarize(res, SummaryOptions{}); s.Requests.Completed != s.Requests.Total {
		t.Errorf("%d of %d requests completed across scaling", s.Requests.Completed, s.Requests.Total)
	}
}

// The scaler sees requests and their prompt tokens when they arrive, as
// the activator counts them, before any of them finishes.
func TestObservationCountsArrivals(t *testing.T) {
	reqs := []workload.Request{
		workload.NewRequest(0, 0, tokens(3000, 1), 50),
		workload.NewRequest(1, 100*time.Millisecond, tokens(1000, 2), 50),
	}
	cfg := DefaultConfig()
	cfg.ScaleInterval = 200 * time.Millisecond
	var first *Observation
	cfg.Scaler = ScalerFunc(func(o *Observation) Replicas {
		if first == nil && o.Now >= 200*time.Millisecond {
			c := *o
			first = &c
		}
		return Replicas{Decode: 1}
	})
	run(t, cfg, workload.Requests(reqs))
	if first == nil {
		t.Fatal("the scaler was never asked after both arrivals")
	}
	if first.Arrived != 2 || first.ArrivedPromptTokens != 4000 || first.Finished != 0 || first.PromptTokens != 0 {
		t.Errorf("at %v: arrived %d with %d prompt tokens, finished %d with %d (want 2, 4000, 0, 0)",
			first.Now, first.Arrived, first.ArrivedPromptTokens, first.Finished, first.PromptTokens)
	}
}

func TestScalerAskingForPrefillWithoutPDFails(t *testing.T) {
	cfg := DefaultConfig()
	cfg.Scaler = Fixed{Prefill: 1, Decode: 1}
	if _, err := Run(context.Background(), cfg, one(100, 2)); err == nil || !strings.Contains(err.Error(), "P/D") {
		t.Errorf("err = %v, want a complaint about P/D", err)
	}
}

func TestValidate(t *testing.T) {
	rc64, err := RouterConfigFor(64, 0)
	if err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		name string
		mod  func(*Config)
		want string
	}{
		{"engine blocks of 64 under a router's of 16", func(c *Config) { c.Engine.BlockSize = 64 }, ""},
		{"block sizes agree", func(c *Config) { c.Engine.BlockSize = 64; c.RouterConfig = rc64 }, ""},
		{"unknown routing profile", func(c *Config) { c.Routing = "fastest" }, "unknown routing profile"},
		{"no engine", func(c *Config) { c.Engines = 0 }, "no decode-capable engine"},
		{"negative prefill engines", func(c *Config) { c.PrefillEngines = -1 }, "negative"},
		{"negative KV delay", func(c *Config) { c.KVEventDelay = -time.Millisecond }, "KV event delay"},
		{"zero scrape interval", func(c *Config) { c.ScrapeInterval = 0 }, "scrape interval"},
		{"flow control without a deadline", func(c *Config) { c.Flow.MaxQueueTime = 0 }, "max queue time"},
		{"flow control off needs no deadline", func(c *Config) { c.Flow = FlowConfig{} }, ""},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			c := DefaultConfig()
			tc.mod(&c)
			err := c.Validate()
			switch {
			case tc.want == "" && err != nil:
				t.Errorf("unexpected error %v", err)
			case tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)):
				t.Errorf("err = %v, want one mentioning %q", err, tc.want)
			}
		})
	}
}

func TestTooLongRequestIsA400(t *testing.T) {
	cfg := DefaultConfig()
	cfg.Engine.MaxModelLen = 1000
	res := run(t, cfg, one(2000, 1))
	if r := res.Records[0]; r.Error != bench.ErrHTTP4xx || r.Status != 400 || !strings.Contains(r.Detail, "maximum context length") {
		t.Errorf("record %s %d %q, want vLLM's 400", r.Error, r.Status, r.Detail)
	}
}

func TestSummaryIsVirtualTime(t *testing.T) {
	cfg := DefaultConfig()
	s := Summarize(run(t, cfg, one(100, 3)), SummaryOptions{Name: "x"})
	if s.Mode != bench.ModeVirtualTime || s.Name != "x" || !strings.Contains(s.Target, cfg.Profile.Name) || s.Settings["routing"] != "default" {
		t.Errorf("summary %q %q %q %v", s.Name, s.Mode, s.Target, s.Settings)
	}
}
