package plan

import (
	"cmp"
	"slices"
	"testing"
	"time"

	"github.com/llmd-kn/llmd-kn/pkg/activator"
	"github.com/llmd-kn/llmd-kn/pkg/engine"
	"github.com/llmd-kn/llmd-kn/pkg/workload"
)

// TestDefaultBatchIsTheBatchTier: plan's batch defaults (and so its
// --batch-* flags' defaults) are the activator's default batch tier: its
// saturation gate, per-pod cap, prefill gate, yielding and queue deadline,
// so that a default plan run and the real path apply the same rules.
func TestDefaultBatchIsTheBatchTier(t *testing.T) {
	tier, ok := activator.DefaultTiers().Get(activator.BatchTier)
	if !ok {
		t.Fatal("no batch tier in the activator's default table")
	}
	b := DefaultBatch(1)
	got := []any{b.MaxSaturation, b.MaxPerPod, b.MaxPrefillPerPod, b.YieldToInteractive, b.MaxQueueTime}
	want := []any{tier.MaxSaturation, tier.MaxPerPod, tier.MaxPrefillPerPod, tier.YieldToInteractive, time.Duration(tier.MaxQueueTime)}
	if !slices.Equal(got, want) {
		t.Fatalf("plan's batch defaults (maxSaturation, maxPerPod, maxPrefillPerPod, yieldToInteractive, maxQueueTime) %v, the activator's batch tier %v", got, want)
	}
}

// TestBatchBacklogSoaksIdleCapacity: a batch backlog beside a light
// workload is served; the workload's records stay the workload's (in
// order, one each), the batch front's are apart, and every interactive
// request completes.
func TestBatchBacklogSoaksIdleCapacity(t *testing.T) {
	w := sharedPrefix(t, 20, 2, 500, 200, 20, 4, 120)
	cfg := DefaultConfig()
	cfg.Routing = "least-request"
	cfg.Engine.Policy = engine.PolicyPriority
	cfg.CriticalShare = 0.5
	cfg.Batch = DefaultBatch(300)
	cfg.Batch.InputLen, cfg.Batch.OutputLen = 256, 32
	cfg.Batch.Until = time.Hour
	res := run(t, cfg, w.Source())
	if len(res.Records) != 120 || len(res.Tiers) != 120 {
		t.Fatalf("%d workload records, %d tiers; want 120", len(res.Records), len(res.Tiers))
	}
	crit := 0
	for i, r := range res.Records {
		if r.Index != i || !r.OK() {
			t.Fatalf("record %d: index %d, ok %v (%s)", i, r.Index, r.OK(), r.Detail)
		}
		if res.Tiers[i] == "critical" {
			crit++
		}
	}
	if crit < 40 || crit > 80 {
		t.Errorf("%d of 120 critical, want about half", crit)
	}
	b := res.Batch
	if b == nil || b.Completed != 300 || len(b.Records) != 300+b.Retries || b.Drained == 0 {
		t.Fatalf("batch %+v", b)
	}
	if b.CompletionTokens != 300*32 {
		t.Errorf("batch completion tokens %d, want %d", b.CompletionTokens, 300*32)
	}
	// The same run with the same seed gives the same figures.
	again := run(t, cfg, w.Source())
	if again.Batch.End != b.End || again.Stats.Events != res.Stats.Events {
		t.Errorf("not deterministic: %v/%d vs %v/%d", again.Batch.End, again.Stats.Events, b.End, res.Stats.Events)
	}
}

// TestBatchBudgetInPlan: the SLO decider under plan, with a batch-only
// backlog and no engine: llm-d.ai/batch-max-replicas 0 leaves the
// deployment at zero (batch work never pokes, never counts), 1 wakes
// exactly one engine, which serves the backlog.
func TestBatchBudgetInPlan(t *testing.T) {
	for _, tc := range []struct {
		budget, peak int
	}{{0, 0}, {1, 1}, {2, 2}} {
		cfg := DefaultConfig()
		cfg.Routing = "least-request"
		cfg.Engines = 0
		cfg.Batch = DefaultBatch(200)
		cfg.Batch.InputLen, cfg.Batch.OutputLen = 512, 64
		cfg.Batch.Until = 2 * time.Minute
		cfg.StartupDelay = 5 * time.Second
		ac := cfg.AutoscalerConfig(Replicas{}, Replicas{Decode: 4})
		ac.BatchMaxReplicas = tc.budget
		sc, err := NewSLOScaler(ac, cfg.Profile)
		if err != nil {
			t.Fatal(err)
		}
		cfg.Scaler = sc
		res := run(t, cfg, workload.Requests(nil))
		if res.Stats.PeakReplicas.Decode != tc.peak || res.Stats.Pokes != 0 {
			t.Errorf("budget %d: peak %d engines, %d pokes; want %d, 0", tc.budget, res.Stats.PeakReplicas.Decode, res.Stats.Pokes, tc.peak)
		}
		if got := res.Batch.Completed; (tc.budget == 0) != (got == 0) {
			t.Errorf("budget %d: %d batch requests completed", tc.budget, got)
		}
		for _, d := range sc.Decisions {
			if d.Decode > max(tc.budget, 0) {
				t.Errorf("budget %d: the decider asked for %d at %v", tc.budget, d.Decode, d.At)
				break
			}
		}
	}
}

// TestBatchRequestTooLongIsFinal: a batch request the engine refuses for
// itself (longer than the model's context) is an error line, not retried.
func TestBatchRequestTooLongIsFinal(t *testing.T) {
	cfg := DefaultConfig()
	cfg.Routing = "least-request"
	cfg.Engine.MaxModelLen = 200
	cfg.Batch = DefaultBatch(50)
	cfg.Batch.InputLen, cfg.Batch.OutputLen = 256, 8
	cfg.Batch.Until = time.Minute
	res := run(t, cfg, workload.Requests(nil))
	if b := res.Batch; b.Failed != 50 || b.Retries != 0 || b.Completed != 0 {
		t.Fatalf("batch %+v", b)
	}
}

// TestBatchQueueFullRetriesLater: batch requests refused at once for want
// of room (a full queue, 429) are sent again after RetryAfter, not in the
// same instant (which looped forever), and all complete in the end.
func TestBatchQueueFullRetriesLater(t *testing.T) {
	cfg := DefaultConfig()
	cfg.Routing = "least-request"
	cfg.Flow.MaxQueued = 4
	cfg.Batch = DefaultBatch(100)
	cfg.Batch.InputLen, cfg.Batch.OutputLen = 2048, 64
	cfg.Batch.Until = 10 * time.Minute
	res := run(t, cfg, workload.Requests(nil))
	if b := res.Batch; b.Completed != 100 || b.Retries == 0 || b.Failed != 0 {
		t.Fatalf("batch %+v", b)
	}
}

// TestBatchCapPerPodInPlan: the batch tier's per-pod cap in plan (the
// activator's maxPerPod): a batch-only backlog with 20 outstanding never has
// more than the cap times the engines dispatched at once, and reaches it;
// without a cap it goes past it.
func TestBatchCapPerPodInPlan(t *testing.T) {
	for _, tc := range []struct{ engines, cap, want int }{{1, 3, 3}, {2, 3, 6}, {2, 0, 0}} {
		cfg := DefaultConfig()
		cfg.Engines = tc.engines
		cfg.Routing = "least-request"
		cfg.Engine.Policy = engine.PolicyPriority
		cfg.Batch = DefaultBatch(120)
		cfg.Batch.InputLen, cfg.Batch.OutputLen = 256, 64
		cfg.Batch.Concurrency, cfg.Batch.MaxPerPod, cfg.Batch.Until = 20, tc.cap, time.Hour
		res := run(t, cfg, emptySource{})
		if res.Batch == nil || res.Batch.Completed != 120 {
			t.Fatalf("%+v: batch %+v", tc, res.Batch)
		}
		// Most dispatched at once: +1 at dispatch (sent + queue time), -1
		// at the end; an end and a dispatch at one instant free first.
		type ev struct {
			at time.Duration
			d  int
		}
		var evs []ev
		for _, r := range res.Batch.Records {
			if r.HasQueue {
				evs = append(evs, ev{r.Sent + r.Queue, 1}, ev{r.Sent + r.E2E, -1})
			}
		}
		slices.SortFunc(evs, func(a, b ev) int {
			if a.at != b.at {
				return cmp.Compare(a.at, b.at)
			}
			return cmp.Compare(a.d, b.d)
		})
		most, n := 0, 0
		for _, e := range evs {
			n += e.d
			most = max(most, n)
		}
		switch {
		case tc.cap > 0 && most != tc.want:
			t.Errorf("%+v: at most %d batch requests dispatched at once, want %d", tc, most, tc.want)
		case tc.cap == 0 && most <= 6:
			t.Errorf("no cap: at most %d dispatched at once, want more than 6", most)
		}
	}
}

// TestBatchPrefillGateInPlan: with the prefill gate (MaxPrefillPerPod) at
// most gate x engines batch requests are between their dispatch and their
// first token at once, and a saturating backlog reaches that; without it
// more.
func TestBatchPrefillGateInPlan(t *testing.T) {
	for _, tc := range []struct{ engines, gate, want int }{{1, 1, 1}, {2, 1, 2}, {2, 2, 4}, {2, 0, 0}} {
		cfg := DefaultConfig()
		cfg.Engines = tc.engines
		cfg.Routing = "least-request"
		cfg.Engine.Policy = engine.PolicyPriority
		cfg.Batch = DefaultBatch(120)
		cfg.Batch.InputLen, cfg.Batch.OutputLen = 1024, 16
		cfg.Batch.Concurrency, cfg.Batch.MaxPerPod, cfg.Batch.MaxPrefillPerPod, cfg.Batch.Until = 20, 0, tc.gate, time.Hour
		res := run(t, cfg, emptySource{})
		if res.Batch == nil || res.Batch.Completed != 120 {
			t.Fatalf("%+v: batch %+v", tc, res.Batch)
		}
		var spans [][2]time.Duration
		for _, r := range res.Batch.Records {
			if r.HasQueue {
				spans = append(spans, [2]time.Duration{r.Sent + r.Queue, r.Sent + r.TTFT})
			}
		}
		most := mostAtOnce(spans)
		switch {
		case tc.gate > 0 && most != tc.want:
			t.Errorf("%+v: at most %d batch requests before their first token at once, want %d", tc, most, tc.want)
		case tc.gate == 0 && most <= 4:
			t.Errorf("no gate: at most %d before their first token at once, want more than 4", most)
		}
	}
}

// TestBatchYieldsToInteractiveInPlan: yielding, on one engine no batch
// request is dispatched while an interactive request there waits for its
// first token; without yielding some are.
func TestBatchYieldsToInteractiveInPlan(t *testing.T) {
	for _, yield := range []bool{true, false} {
		w := sharedPrefix(t, 20, 2, 500, 200, 20, 4, 120)
		cfg := DefaultConfig()
		cfg.Engines = 1
		cfg.Routing = "least-request"
		cfg.Engine.Policy = engine.PolicyPriority
		cfg.CriticalShare = 0.5
		cfg.Batch = DefaultBatch(300)
		cfg.Batch.InputLen, cfg.Batch.OutputLen = 256, 32
		cfg.Batch.Until, cfg.Batch.YieldToInteractive = time.Hour, yield
		res := run(t, cfg, w.Source())
		if res.Batch == nil || res.Batch.Completed != 300 {
			t.Fatalf("yield %v: batch %+v", yield, res.Batch)
		}
		inside := 0
		for _, b := range res.Batch.Records {
			at := b.Sent + b.Queue
			for _, r := range res.Records {
				if !r.OK() {
					t.Fatalf("yield %v: interactive request %d failed: %s", yield, r.Index, r.Detail)
				}
				if r.Sent+r.Queue < at && at < r.Sent+r.TTFT {
					inside++
					break
				}
			}
		}
		switch {
		case yield && inside > 0:
			t.Errorf("yielding: %d batch requests dispatched while an interactive request awaited its first token", inside)
		case !yield && inside == 0:
			t.Error("not yielding: no batch request dispatched beside an interactive prefill; the test shows nothing")
		}
	}
}

// mostAtOnce is the most spans [from, to) open at one instant; a span that
// ends at an instant closes before one that opens there.
func mostAtOnce(spans [][2]time.Duration) int {
	type ev struct {
		at time.Duration
		d  int
	}
	evs := make([]ev, 0, 2*len(spans))
	for _, s := range spans {
		evs = append(evs, ev{s[0], 1}, ev{s[1], -1})
	}
	slices.SortFunc(evs, func(a, b ev) int {
		if a.at != b.at {
			return cmp.Compare(a.at, b.at)
		}
		return cmp.Compare(a.d, b.d)
	})
	most, n := 0, 0
	for _, e := range evs {
		n += e.d
		most = max(most, n)
	}
	return most
}
