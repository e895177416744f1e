package plan

import (
	"cmp"
	"slices"
	"testing"
	"time"

	"github.com/llmd-kn/llmd-kn/pkg/engine"
	"github.com/llmd-kn/llmd-kn/pkg/workload"
)

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
