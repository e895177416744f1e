package plan

import (
	"testing"
	"time"

	"github.com/llmd-kn/llmd-kn/pkg/activator"
)

// TestIdleScrapeEveryMatchesTheActivator keeps plan's schedule for quiet
// engines the activator's.
func TestIdleScrapeEveryMatchesTheActivator(t *testing.T) {
	for _, c := range []struct {
		interval, stale time.Duration
		want            int
	}{
		{50 * time.Millisecond, 500 * time.Millisecond, 4},
		{20 * time.Millisecond, 500 * time.Millisecond, 4},
		{100 * time.Millisecond, 500 * time.Millisecond, 2},
		{200 * time.Millisecond, 500 * time.Millisecond, 1},
		{time.Second, 4 * time.Second, 2},
		{0, time.Second, 1},
	} {
		got, act := idleScrapeEvery(c.interval, c.stale), activator.IdleScrapeEvery(c.interval, c.stale)
		if got != c.want || act != c.want {
			t.Errorf("interval %s, stale after %s: plan %d, activator %d, want %d", c.interval, c.stale, got, act, c.want)
		}
	}
}
