package autoscaler

import (
	"encoding/json"
	"math"
	"strings"
	"testing"
	"time"
)

// mixed is a decode-only load (every prompt token cached, as units) of
// inter replicas of interactive work and batch replicas of batch work; with
// counters false the activator reports no batch share (one that predates
// it), and with promoted set the batch work arrives promoted to standard.
func mixed(inter, batch float64, ready int, counters, promoted bool) Input {
	in := units(inter + batch)
	l := &in.Load
	rate := func(x float64) float64 { return x * decodeCap / shapeOut }
	l.RequestsPerSecond = map[string]float64{}
	l.ArrivalsPerSecond = map[string]float64{}
	if inter > 0 {
		l.RequestsPerSecond["standard"] = rate(inter)
		l.ArrivalsPerSecond["standard"] = rate(inter)
	}
	switch {
	case batch <= 0:
	case promoted:
		l.RequestsPerSecond["standard"] += rate(batch)
		l.ArrivalsPerSecond["standard"] += rate(batch)
	default:
		l.RequestsPerSecond[BatchTier] = rate(batch)
		l.ArrivalsPerSecond[BatchTier] = rate(batch)
		if counters {
			l.Batch = BatchLoad{PromptTokensPerSecond: rate(batch) * shapePrompt, OutputTokensPerSecond: rate(batch) * shapeOut,
				ArrivedPromptTokensPerSecond: rate(batch) * shapePrompt}
		}
	}
	l.ArrivedPromptTokensPerSecond = (rate(inter) + rate(batch)) * shapePrompt
	in.Pods.Decode.Ready = ready
	return in
}

// TestBatchBudget: batch work counts toward the replica count only up to
// llm-d.ai/batch-max-replicas; interactive work and promoted batch work
// count in full.
func TestBatchBudget(t *testing.T) {
	tests := []struct {
		name         string
		budget       int
		inter, batch float64 // load in decode replicas
		ready        int
		noCounters   bool // an activator without batch counters
		promoted     bool
		want         int
		wantShare    float64
	}{
		{name: "batch only at zero, budget 1: wakes one replica", budget: 1, batch: 3, want: 1, wantShare: 1.0 / 3},
		{name: "batch only at zero, budget 0: stays at zero", budget: 0, batch: 3, want: 0, wantShare: 0},
		{name: "batch only, budget 2: two replicas", budget: 2, batch: 3, ready: 1, want: 2, wantShare: 2.0 / 3},
		{name: "batch fits the budget: counted in full", budget: 10, inter: 2.5, batch: 3, ready: 3, want: 6, wantShare: 1},
		{name: "batch above the budget: total capped at the budget", budget: 5, inter: 2.5, batch: 3, ready: 3, want: 5, wantShare: 2.5 / 3},
		{name: "interactive needs more than the budget: batch adds nothing", budget: 1, inter: 2.5, batch: 3, ready: 3, want: 3, wantShare: 0},
		{name: "budget 0 with interactive load: batch adds nothing", budget: 0, inter: 2.5, batch: 3, ready: 3, want: 3, wantShare: 0},
		{name: "promoted batch work counts as standard, whatever the budget", budget: 0, inter: 2.5, batch: 3, ready: 3, promoted: true, want: 6, wantShare: 1},
		{name: "no batch counters: batch tier rates removed, tokens counted", budget: 0, inter: 2.5, batch: 3, ready: 3, noCounters: true, want: 6, wantShare: 0},
		{name: "no batch work", budget: 1, inter: 2.5, ready: 3, want: 3, wantShare: 1},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			c := toyConfig()
			c.Disaggregated = true
			c.BatchMaxReplicas = tc.budget
			d := newDecider(t, c, toyProfile())
			var rec Recommendation
			for i := range 5 {
				rec = d.Scale(t0.Add(time.Duration(i)*c.TickInterval), mixed(tc.inter, tc.batch, tc.ready, !tc.noCounters, tc.promoted))
			}
			if rec.Decode != tc.want {
				t.Errorf("decode = %d, want %d (%+v)", rec.Decode, tc.want, rec.DecodeRole)
			}
			if math.Abs(rec.BatchShare-tc.wantShare) > 0.01 {
				t.Errorf("batch share = %.3f, want %.3f", rec.BatchShare, tc.wantShare)
			}
		})
	}
}

// TestBatchBacklogCapped: queued batch requests (held by the activator
// while the pool is saturated) add to the backlog term only up to the
// budget, and with a budget of 0 keep nothing awake.
func TestBatchBacklogCapped(t *testing.T) {
	for _, tc := range []struct {
		budget, want int
	}{{0, 0}, {1, 1}, {3, 3}} {
		c := toyConfig()
		c.BatchMaxReplicas = tc.budget
		d := newDecider(t, c, toyProfile())
		var rec Recommendation
		for i := range 3 {
			in := Input{Load: Load{Queued: 10000, QueueTime: time.Minute,
				ArrivalsPerSecond: map[string]float64{BatchTier: 0},
				Batch:             BatchLoad{Queued: 10000}}}
			rec = d.Scale(t0.Add(time.Duration(i)*c.TickInterval), in)
		}
		if rec.Decode != tc.want {
			t.Errorf("budget %d: decode = %d, want %d (%+v)", tc.budget, rec.Decode, tc.want, rec.DecodeRole)
		}
	}
}

// TestBatchRates: Rates splits the batch counters out of a snapshot pair,
// and a restart (counters going backwards) counts from zero.
func TestBatchRates(t *testing.T) {
	prev := Snapshot{PromptTokens: 1000, CompletionTokens: 100, UncachedPrefillTokens: 1000,
		Batch: &BatchCounters{PromptTokens: 400, CompletionTokens: 40, UncachedPrefillTokens: 400, ArrivedPromptTokens: 500}}
	cur := Snapshot{PromptTokens: 3000, CompletionTokens: 300, UncachedPrefillTokens: 3000,
		QueuedByTier: map[string]int{BatchTier: 7, "standard": 1},
		Batch:        &BatchCounters{PromptTokens: 1400, CompletionTokens: 140, UncachedPrefillTokens: 1200, ArrivedPromptTokens: 2500, InFlight: 3}}
	l := Rates(prev, cur, 2*time.Second)
	want := BatchLoad{PromptTokensPerSecond: 500, OutputTokensPerSecond: 50, UncachedPrefillTokensPerSecond: 400,
		ArrivedPromptTokensPerSecond: 1000, Queued: 7, InFlight: 3}
	if l.Batch != want {
		t.Errorf("batch = %+v, want %+v", l.Batch, want)
	}
	if l.Queued != 8 {
		t.Errorf("queued = %d, want 8 (all tiers)", l.Queued)
	}
	// A restart: the current counters are the rates' numerators.
	restarted := Rates(cur, prev, time.Second)
	if restarted.Batch.PromptTokensPerSecond != 400 {
		t.Errorf("after a restart: batch prompt rate %v, want 400", restarted.Batch.PromptTokensPerSecond)
	}
	// The activator's JSON decodes into the Snapshot.
	var s Snapshot
	if err := json.Unmarshal([]byte(`{"revision":"ns/r","batch":{"promptTokens":5,"completionTokens":6,"uncachedPrefillTokens":4,"arrivedPromptTokens":9,"inFlight":2,"promoted":1}}`), &s); err != nil {
		t.Fatal(err)
	}
	if s.Batch == nil || *s.Batch != (BatchCounters{PromptTokens: 5, CompletionTokens: 6, UncachedPrefillTokens: 4, ArrivedPromptTokens: 9, InFlight: 2, Promoted: 1}) {
		t.Errorf("decoded batch = %+v", s.Batch)
	}
}

func TestBatchMaxReplicasValidated(t *testing.T) {
	c := DefaultConfig()
	if c.BatchMaxReplicas != DefaultBatchMaxReplicas {
		t.Errorf("default budget %d, want %d", c.BatchMaxReplicas, DefaultBatchMaxReplicas)
	}
	c.BatchMaxReplicas = -1
	if err := c.Validate(); err == nil || !strings.Contains(err.Error(), "batchMaxReplicas: must not be negative") {
		t.Errorf("validate: %v", err)
	}
}
