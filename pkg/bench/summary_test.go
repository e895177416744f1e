package bench

import (
	"math"
	"reflect"
	"testing"
	"time"
)

const ms = time.Millisecond

func gaps(n int, d time.Duration) []time.Duration {
	g := make([]time.Duration, n)
	for i := range g {
		g[i] = d
	}
	return g
}

// handRecords is a small run whose every summary figure is worked out by
// hand in TestSummarize.
func handRecords() []Record {
	return []Record{
		{ // meets TTFT 250ms and TPOT 150ms: TPOT = 1000ms/10 = 100ms
			Index: 0, Scheduled: 0, Sent: 1 * ms, TTFT: 100 * ms, E2E: 1100 * ms,
			ITL: gaps(10, 100*ms), Chunks: 11, PromptLen: 100, MaxTokens: 11,
			HasUsage: true, PromptTokens: 100, CompletionTokens: 11, CachedTokens: 50,
		},
		{ // TPOT = 2000ms/10 = 200ms: misses
			Index: 1, Scheduled: 1000 * ms, Sent: 1002 * ms, TTFT: 200 * ms, E2E: 2200 * ms,
			ITL: gaps(10, 200*ms), Chunks: 11, PromptLen: 100, MaxTokens: 11,
			HasUsage: true, PromptTokens: 100, CompletionTokens: 11,
		},
		{ // TTFT 300ms: misses; one token, so no TPOT
			Index: 2, Scheduled: 2000 * ms, Sent: 2003 * ms, TTFT: 300 * ms, E2E: 800 * ms,
			Chunks: 1, PromptLen: 200, MaxTokens: 1,
			HasUsage: true, PromptTokens: 200, CompletionTokens: 1,
		},
		{
			Index: 3, Scheduled: 3000 * ms, Sent: 3000 * ms, E2E: 5 * ms, PromptLen: 10, MaxTokens: 5,
			Error: ErrHTTP5xx, Status: 503, Detail: "503 Service Unavailable: overloaded",
		},
		{
			Index: 4, Scheduled: 3500 * ms, Sent: 3500 * ms, PromptLen: 10, MaxTokens: 5,
			Error: ErrDropped, Detail: "cap",
		},
		{
			Index: 5, Scheduled: 4000 * ms, Sent: 4000 * ms, TTFT: 50 * ms, E2E: 500 * ms,
			ITL: gaps(2, 10*ms), Chunks: 3, PromptLen: 10, MaxTokens: 5,
			Error: ErrStreamCut, Status: 200, Detail: "stream ended before [DONE]",
		},
	}
}

func near(a, b float64) bool { return math.Abs(a-b) <= 1e-9*max(1, math.Abs(b)) }

func checkDist(t *testing.T, name string, got Dist, want Dist) {
	t.Helper()
	g := []float64{float64(got.Count), got.Mean, got.Min, got.P50, got.P90, got.P99, got.Max}
	w := []float64{float64(want.Count), want.Mean, want.Min, want.P50, want.P90, want.P99, want.Max}
	for i := range g {
		if !near(g[i], w[i]) {
			t.Errorf("%s = %+v, want %+v", name, got, want)
			return
		}
	}
}

func TestSummarize(t *testing.T) {
	recs := handRecords()
	s := Summarize("hand", recs, SummaryOptions{
		SLO:    SLO{TTFT: 250 * ms, TPOT: 150 * ms},
		Ladder: []LoadStep{{1, 2 * time.Second}, {2, 2 * time.Second}, {5, 10 * time.Second}, {9, time.Second}},
	})
	if s.Name != "hand" || s.Mode != ModeRealTime {
		t.Errorf("name %q mode %q", s.Name, s.Mode)
	}
	// The run ends when the stream-cut request does, at 4.5 s.
	if !near(s.DurationSeconds, 4.5) {
		t.Fatalf("duration %v, want 4.5", s.DurationSeconds)
	}
	wantReq := Requests{
		Total: 6, Sent: 5, Completed: 3, Failed: 2, Dropped: 1,
		Errors:   map[string]int{"http_5xx": 1, "dropped": 1, "stream_cut": 1},
		ByStatus: map[string]int{"503": 1},
	}
	if !reflect.DeepEqual(s.Requests, wantReq) {
		t.Errorf("requests %+v, want %+v", s.Requests, wantReq)
	}
	if want := (Tokens{Prompt: 400, Completion: 23, Cached: 50, CacheHitRate: 0.125}); s.Tokens != want {
		t.Errorf("tokens %+v, want %+v", s.Tokens, want)
	}

	// Percentiles interpolate between ranks: TTFT {0.1, 0.2, 0.3} has p90
	// at rank 1.8, 0.2 + 0.8·0.1.
	checkDist(t, "TTFT", s.LatencySeconds.TTFT, Dist{3, 0.2, 0.1, 0.2, 0.28, 0.298, 0.3})
	checkDist(t, "TPOT", s.LatencySeconds.TPOT, Dist{2, 0.15, 0.1, 0.15, 0.19, 0.199, 0.2})
	// ITL: ten gaps of 0.1 and ten of 0.2: p50 at rank 9.5, p90 at 17.1.
	checkDist(t, "ITL", s.LatencySeconds.ITL, Dist{20, 0.15, 0.1, 0.15, 0.2, 0.2, 0.2})
	checkDist(t, "E2E", s.LatencySeconds.E2E, Dist{3, 4.1 / 3, 0.8, 1.1, 1.1 + 0.8*1.1, 1.1 + 0.98*1.1, 2.2})
	// Lateness of the five sent requests: 0, 0, 1, 2, 3 ms.
	checkDist(t, "lateness", s.LatencySeconds.Lateness, Dist{5, 0.0012, 0, 0.001, 0.0026, 0.00296, 0.003})
	if s.LatencySeconds.Queue != nil {
		t.Errorf("queue %+v without queue data", s.LatencySeconds.Queue)
	}

	// Only request 0 meets both targets: 1 of 6.
	if s.SLOAttainment == nil || !near(*s.SLOAttainment, 1.0/6) {
		t.Errorf("SLO attainment %v, want 1/6", s.SLOAttainment)
	}
	if g := s.Goodput; g == nil || g.Requests != 1 || !near(g.RequestsPerSecond, 1/4.5) || !near(g.OutputTokensPerSecond, 11/4.5) {
		t.Errorf("goodput %+v, want 1 request, 1/4.5 req/s, 11/4.5 tok/s", g)
	}
	th := s.Throughput
	// Offered: 5 gaps between the first and last scheduled times, 0 and 4 s.
	if !near(th.OfferedRequestsPerSecond, 5/4.0) || !near(th.RequestsPerSecond, 3/4.5) ||
		!near(th.OutputTokensPerSecond, 23/4.5) || !near(th.TotalTokensPerSecond, 423/4.5) {
		t.Errorf("throughput %+v", th)
	}
	if s.Concurrency.Max != 2 || !near(s.Concurrency.Mean, (1.1+2.2+0.8+0.005+0.5)/4.5) {
		t.Errorf("concurrency %+v", s.Concurrency)
	}
	if want := map[string]string{"http_5xx": "503 Service Unavailable: overloaded", "dropped": "cap", "stream_cut": "stream ended before [DONE]"}; !reflect.DeepEqual(s.ErrorExamples, want) {
		t.Errorf("error examples %v", s.ErrorExamples)
	}

	// CDF: 201 points from the smallest to the largest TTFT.
	if n := len(s.TTFTCDF); n != cdfPoints+1 {
		t.Fatalf("%d CDF points", n)
	}
	if c := s.TTFTCDF; c[0] != (CDFPoint{0, 0.1}) || !near(c[100].Seconds, 0.2) || c[200] != (CDFPoint{1, 0.3}) {
		t.Errorf("CDF ends %v %v %v", c[0], c[100], c[200])
	}

	// Time series, one-second buckets: tokens land when their event
	// arrived (request 0's every 100 ms from 0.101 s, request 1's every
	// 200 ms from 1.202 s, request 2's one at 2.303 s).
	if s.BucketSeconds != 1 || len(s.TimeSeries) != 5 {
		t.Fatalf("bucket %v, %d buckets", s.BucketSeconds, len(s.TimeSeries))
	}
	type row struct {
		offered           float64
		completed, failed int
		tokens            int64
	}
	// The last bucket, [4 s, 4.5 s), is half as wide: one request in it is
	// 2 req/s.
	want := []row{{1, 0, 0, 9}, {1, 1, 0, 6}, {1, 1, 0, 6}, {2, 1, 2, 2}, {2, 0, 1, 0}}
	for i, b := range s.TimeSeries {
		got := row{b.OfferedRate, b.Completed, b.Failed, b.OutputTokens}
		if got != want[i] || b.StartSeconds != float64(i) {
			t.Errorf("bucket %d = %+v at %v, want %+v", i, got, b.StartSeconds, want[i])
		}
	}
	for i, w := range []float64{0.1, 0.2, 0.3} {
		if p := s.TimeSeries[i].TTFTP50; p == nil || !near(*p, w) {
			t.Errorf("bucket %d TTFT p50 %v, want %v", i, p, w)
		}
	}
	if s.TimeSeries[3].TTFTP50 != nil || s.TimeSeries[4].TTFTP90 != nil {
		t.Error("buckets without completed requests have a TTFT")
	}

	// Ladder: the fourth step starts after the run and is left out.
	if len(s.Ladder) != 3 {
		t.Fatalf("%d ladder steps, want 3", len(s.Ladder))
	}
	l0, l1 := s.Ladder[0], s.Ladder[1]
	if l0.Rate != 1 || !near(l0.OfferedRate, 1) || !near(l0.RequestsPerSecond, 0.5) || !near(l0.OutputTokensPerSecond, 7.5) ||
		!near(*l0.SLOAttainment, 0.5) || !near(*l0.GoodputRequestsPerSecond, 0.5) || l0.TTFT.Count != 2 || !near(l0.TTFT.P50, 0.15) {
		t.Errorf("step 0 = %+v", l0)
	}
	if !near(l1.StartSeconds, 2) || !near(l1.OfferedRate, 1.5) || !near(l1.RequestsPerSecond, 1) || !near(l1.OutputTokensPerSecond, 4) ||
		!near(*l1.SLOAttainment, 0) || l1.TTFT.Count != 1 || l1.TPOT.Count != 0 {
		t.Errorf("step 1 = %+v", l1)
	}
	if l2 := s.Ladder[2]; !near(l2.OfferedRate, 0.1) || l2.TTFT.Count != 0 {
		t.Errorf("step 2 = %+v", l2)
	}

	// Summarize must not reorder the caller's records or their gaps.
	if !reflect.DeepEqual(recs, handRecords()) {
		t.Error("Summarize modified its input")
	}
}

func TestSummarizeNoSLOAndNoUsage(t *testing.T) {
	recs := []Record{{
		Sent: 0, TTFT: 10 * ms, E2E: 40 * ms, ITL: gaps(3, 10*ms), Chunks: 4, PromptLen: 7, MaxTokens: 4,
		Queue: 5 * ms, HasQueue: true,
	}}
	s := Summarize("x", recs, SummaryOptions{Mode: ModeVirtualTime, Bucket: 10 * ms})
	if s.SLOAttainment != nil || s.Goodput != nil {
		t.Errorf("SLO figures without targets: %v %v", s.SLOAttainment, s.Goodput)
	}
	// Without usage: the requested prompt length and one token an event.
	if s.Tokens.Prompt != 7 || s.Tokens.Completion != 4 || s.Requests.WithoutUsage != 1 || s.Tokens.CacheHitRate != 0 {
		t.Errorf("tokens %+v, without usage %d", s.Tokens, s.Requests.WithoutUsage)
	}
	if q := s.LatencySeconds.Queue; q == nil || q.Count != 1 || !near(q.P50, 0.005) {
		t.Errorf("queue %+v", q)
	}
	// TPOT = 30 ms / 3.
	if !near(s.LatencySeconds.TPOT.P50, 0.01) {
		t.Errorf("TPOT %+v", s.LatencySeconds.TPOT)
	}
	if len(s.TimeSeries) != 4 || s.Mode != ModeVirtualTime {
		t.Errorf("%d buckets, mode %s", len(s.TimeSeries), s.Mode)
	}
	var tok int64
	for _, b := range s.TimeSeries {
		tok += b.OutputTokens
	}
	if tok != 4 {
		t.Errorf("%d tokens in the time series, want 4", tok)
	}
}

func TestSummarizeEmpty(t *testing.T) {
	s := Summarize("empty", nil, SummaryOptions{SLO: SLO{TTFT: time.Second}})
	if s.Requests.Total != 0 || s.DurationSeconds != 0 || *s.SLOAttainment != 0 || s.Goodput.RequestsPerSecond != 0 {
		t.Errorf("empty summary %+v", s)
	}
	if s.TTFTCDF == nil || s.TimeSeries == nil {
		t.Error("empty lists must be [] in JSON, not null")
	}
}

func TestTokenTimesWithoutITL(t *testing.T) {
	// A record without per-event gaps (as a model might write): first
	// token at TTFT, the rest evenly to E2E.
	r := Record{Sent: time.Second, TTFT: 100 * ms, E2E: 400 * ms, Chunks: 4, HasUsage: true, CompletionTokens: 4}
	var at []time.Duration
	tokenTimes(&r, func(t time.Duration, n int64) {
		for range n {
			at = append(at, t)
		}
	})
	want := []time.Duration{1100 * ms, 1200 * ms, 1300 * ms, 1400 * ms}
	if !reflect.DeepEqual(at, want) {
		t.Errorf("token times %v, want %v", at, want)
	}
}

func TestQuantile(t *testing.T) {
	xs := []float64{1, 2, 3, 4}
	for q, want := range map[float64]float64{0: 1, 0.5: 2.5, 1: 4, 0.9: 3.7, 1.0 / 3: 2} {
		if got := quantile(xs, q); !near(got, want) {
			t.Errorf("quantile(%v) = %v, want %v", q, got, want)
		}
	}
	if got := quantile([]float64{7}, 0.99); got != 7 {
		t.Errorf("single value: %v", got)
	}
}
