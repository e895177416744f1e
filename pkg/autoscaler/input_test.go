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
	}
	if !reflect.DeepEqual(s, want) {
		t.Errorf("got %+v\nwant %+v", s, want)
	}
}

func TestRates(t *testing.T) {
	prev := autoscaler.Snapshot{RequestsByTier: map[string]int64{"standard": 10}, Errors: 1,
		PromptTokens: 9000, CompletionTokens: 900, CachedTokens: 3000, UncachedPrefillTokens: 6000}
	cur := autoscaler.Snapshot{RequestsByTier: map[string]int64{"standard": 18, "batch": 4}, Errors: 3,
		PromptTokens: 19000, CompletionTokens: 2900, CachedTokens: 7000, UncachedPrefillTokens: 12000,
		QueuedByTier: map[string]int{"standard": 2, "batch": 5}, InFlight: 6, TTFTP90: 0.25, TPOTP50: 0.02}
	l := autoscaler.Rates(prev, cur, 2*time.Second)
	// 12 requests in 2 s (8 standard, 4 batch), 2 of them failed: 10
	// finished with 10,000 prompt tokens (4,000 cached) and 2,000 outputs.
	want := autoscaler.Load{
		RequestsPerSecond:              map[string]float64{"standard": 4, "batch": 2},
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
	}
	if !reflect.DeepEqual(l, want) {
		t.Errorf("got %+v\nwant %+v", l, want)
	}
	if got := l.Requests(); got != 6 {
		t.Errorf("Requests() = %v, want 6", got)
	}

	t.Run("counters reset by an activator restart count from zero", func(t *testing.T) {
		l := autoscaler.Rates(cur, prev, time.Second)
		if l.PromptTokensPerSecond != 9000 || l.RequestsPerSecond["standard"] != 10 {
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
