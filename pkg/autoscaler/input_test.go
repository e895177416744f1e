package autoscaler_test

import (
	"encoding/json"
	"reflect"
	"testing"
	"time"

	"github.com/llmd-kn/llmd-kn/pkg/activator"
	"github.com/llmd-kn/llmd-kn/pkg/autoscaler"
)

// The decider reads the activator's RevisionStats JSON into a Snapshot
// without importing the activator.
func TestSnapshotReadsRevisionStats(t *testing.T) {
	rs := activator.RevisionStats{
		Revision: "r1", RequestsByTier: map[string]int64{"standard": 10, "batch": 2}, Errors: 1,
		PromptTokens: 11000, CompletionTokens: 2200, CachedTokens: 4000, UncachedPrefillTokens: 7000,
		QueuedByTier: map[string]int{"standard": 3}, InFlight: 4,
		TTFTP50: 0.1, TTFTP90: 0.3, TPOTP50: 0.02, TPOTP90: 0.04,
		ArrivedByTier: map[string]int64{"standard": 14, "batch": 2}, ArrivedPromptTokens: 15000,
	}
	b, err := json.Marshal(rs)
	if err != nil {
		t.Fatal(err)
	}
	var s autoscaler.Snapshot
	if err := json.Unmarshal(b, &s); err != nil {
		t.Fatal(err)
	}
	want := autoscaler.Snapshot{
		Revision: "r1", RequestsByTier: rs.RequestsByTier, Errors: 1,
		PromptTokens: 11000, CompletionTokens: 2200, CachedTokens: 4000, UncachedPrefillTokens: 7000,
		QueuedByTier: rs.QueuedByTier, InFlight: 4, TTFTP50: 0.1, TTFTP90: 0.3, TPOTP50: 0.02, TPOTP90: 0.04,
		ArrivedByTier: rs.ArrivedByTier, ArrivedPromptTokens: 15000,
	}
	if !reflect.DeepEqual(s, want) {
		t.Errorf("got %+v\nwant %+v", s, want)
	}

	// An older activator's JSON, without arrival counters, still decodes,
	// and its rates carry no arrivals.
	old := []byte(`{"revision":"r1","requestsByTier":{"standard":3},"promptTokens":300}`)
	var o autoscaler.Snapshot
	if err := json.Unmarshal(old, &o); err != nil {
		t.Fatal(err)
	}
	if l := autoscaler.Rates(autoscaler.Snapshot{}, o, time.Second); l.ArrivalsPerSecond != nil || l.ArrivedPromptTokensPerSecond != 0 || l.PromptTokensPerSecond != 300 {
		t.Errorf("rates from a snapshot without arrivals: %+v", l)
	}
}

func TestRates(t *testing.T) {
	prev := autoscaler.Snapshot{RequestsByTier: map[string]int64{"standard": 10}, Errors: 1,
		PromptTokens: 9000, CompletionTokens: 900, CachedTokens: 3000, UncachedPrefillTokens: 6000,
		ArrivedByTier: map[string]int64{"standard": 12}, ArrivedPromptTokens: 11000}
	cur := autoscaler.Snapshot{RequestsByTier: map[string]int64{"standard": 18, "batch": 4}, Errors: 3,
		PromptTokens: 19000, CompletionTokens: 2900, CachedTokens: 7000, UncachedPrefillTokens: 12000,
		QueuedByTier: map[string]int{"standard": 2, "batch": 5}, InFlight: 6, TTFTP90: 0.25, TPOTP50: 0.02,
		ArrivedByTier: map[string]int64{"standard": 32, "batch": 4}, ArrivedPromptTokens: 35000}
	l := autoscaler.Rates(prev, cur, 2*time.Second)
	// 12 requests in 2 s (8 standard, 4 batch), 2 of them failed: 10
	// finished with 10,000 prompt tokens (4,000 cached) and 2,000 outputs.
	// Meanwhile 24 arrived (20 standard, 4 batch) with 24,000 prompt
	// tokens: a burst the finished requests do not show yet.
	want := autoscaler.Load{
		RequestsPerSecond:              map[string]float64{"standard": 4, "batch": 2},
		ArrivalsPerSecond:              map[string]float64{"standard": 10, "batch": 2},
		ArrivedPromptTokensPerSecond:   12000,
		PromptTokensPerSecond:          5000,
		UncachedPrefillTokensPerSecond: 3000,
		OutputTokensPerSecond:          1000,
		MeanPromptTokens:               1000,
		MeanCachedTokens:               400,
		MeanOutputTokens:               200,
		Queued:                         7,
		InFlight:                       6,
		TTFT:                           autoscaler.Latency{P90: 250 * time.Millisecond},
		TPOT:                           autoscaler.Latency{P50: 20 * time.Millisecond},
		// The batch tier's queue is known by tier; its tokens only from an
		// activator that reports batch counters.
		Batch: autoscaler.BatchLoad{Queued: 5},
	}
	if !reflect.DeepEqual(l, want) {
		t.Errorf("got %+v\nwant %+v", l, want)
	}
	if got := l.Requests(); got != 6 {
		t.Errorf("Requests() = %v, want 6", got)
	}
	if got := l.Arrivals(); got != 12 {
		t.Errorf("Arrivals() = %v, want 12", got)
	}

	t.Run("counters reset by an activator restart count from zero", func(t *testing.T) {
		l := autoscaler.Rates(cur, prev, time.Second)
		if l.PromptTokensPerSecond != 9000 || l.RequestsPerSecond["standard"] != 10 || l.ArrivedPromptTokensPerSecond != 11000 {
			t.Errorf("got %+v", l)
		}
	})
	t.Run("no interval gives only gauges", func(t *testing.T) {
		l := autoscaler.Rates(prev, cur, 0)
		if l.Queued != 7 || l.InFlight != 6 || l.PromptTokensPerSecond != 0 || l.RequestsPerSecond != nil {
			t.Errorf("got %+v", l)
		}
	})
}
