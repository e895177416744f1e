package activator

import (
	"context"
	"testing"

	"github.com/llmd-kn/llmd-kn/internal/simtest"
)

// BenchmarkScrapeIdlePods is the CPU of reading idle simulated pods'
// metrics as the activator does (its scrape client, its parser), both sides
// in this process, as in kn-llmd local: cpu-µs/scrape times the scrapes per
// second (pods / ScrapeInterval) is the idle telemetry cost.
func BenchmarkScrapeIdlePods(b *testing.B) {
	const pods = 16
	urls := make([]string, pods)
	for i := range urls {
		_, addr := simtest.Start(b, "m")
		urls[i] = "http://" + addr
	}
	c := NewScrapeClient()
	ctx := context.Background()
	for _, u := range urls { // connect, render once
		if _, err := Scrape(ctx, c, u); err != nil {
			b.Fatal(err)
		}
	}
	c0 := cpuNow()
	for b.Loop() {
		for _, u := range urls {
			if _, err := Scrape(ctx, c, u); err != nil {
				b.Fatal(err)
			}
		}
	}
	b.ReportMetric(float64((cpuNow()-c0).Nanoseconds())/1e3/float64(b.N*pods), "cpu-µs/scrape")
}
