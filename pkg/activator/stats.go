package activator

import (
	"sort"
	"sync"
	"time"
)

// RevisionStats is the load the activator saw for one revision, for the
// autoscaler: cumulative counters (the autoscaler differentiates them over
// its windows), current gauges, and latency percentiles over the recent
// window.
type RevisionStats struct {
	Revision string `json:"revision"`
	// Counters since the activator started.
	RequestsByTier        map[string]int64 `json:"requestsByTier"`
	Errors                int64            `json:"errors"`
	PromptTokens          int64            `json:"promptTokens"`
	CompletionTokens      int64            `json:"completionTokens"`
	CachedTokens          int64            `json:"cachedTokens"`
	PredictedCachedTokens int64            `json:"predictedCachedTokens"`
	// UncachedPrefillTokens is the prefill work the pods actually did:
	// prompt tokens minus those served from a cache.
	UncachedPrefillTokens int64 `json:"uncachedPrefillTokens"`
	Disaggregated         int64 `json:"disaggregated"`
	// ArrivedByTier and ArrivedPromptTokens count requests and their prompt
	// tokens when flow control dispatches or queues them: a
	// burst shows here a request's whole service time before it shows in
	// the per-finished-request counters above. Absent in older activators'
	// JSON (nil and 0).
	ArrivedByTier       map[string]int64 `json:"arrivedByTier,omitempty"`
	ArrivedPromptTokens int64            `json:"arrivedPromptTokens,omitempty"`
	// ShedByTier and ShedPromptTokens count the requests flow control
	// refused on arrival (429, or 503 without a pod): they never reached a
	// pod nor waited for one, and count neither in ArrivedByTier nor in
	// RequestsByTier, so that shed demand does not scale the revision
	// (issue 17). A request refused after waiting in the queue counts as
	// arrived and as a failed request.
	ShedByTier       map[string]int64 `json:"shedByTier,omitempty"`
	ShedPromptTokens int64            `json:"shedPromptTokens,omitempty"`
	// Gauges.
	QueuedByTier map[string]int `json:"queuedByTier"`
	InFlight     int            `json:"inFlight"`
	ReadyPods    int            `json:"readyPods"`
	Pods         int            `json:"pods"`
	// Roles is the ready pods' telemetry from their scraped vLLM metrics,
	// by role ("prefill", "decode"; pods that do both count as "decode"),
	// for the autoscaler's per-role view.
	Roles map[string]RoleStats `json:"roles,omitempty"`
	// MaxModelLen is the context length requests are checked against
	// (configured, or learned from the pods' /v1/models; 0: unknown).
	MaxModelLen int `json:"maxModelLen,omitempty"`
	// Recent latencies, in seconds, over Window.
	Window  string  `json:"window"`
	Samples int     `json:"samples"`
	TTFTP50 float64 `json:"ttftP50"`
	TTFTP90 float64 `json:"ttftP90"`
	TPOTP50 float64 `json:"tpotP50"`
	TPOTP90 float64 `json:"tpotP90"`
	// KVEvents summarizes the pods' KV events, nil when none publish.
	KVEvents *KVEventsStats `json:"kvEvents,omitempty"`
	// Batch is the batch tier's share of the counters above, for the
	// autoscaler's batch budget (llm-d.ai/batch-max-replicas).
	Batch *BatchStats `json:"batch,omitempty"`
}

// BatchStats is the batch tier's share of a revision's counters
// (autoscaler.BatchCounters, same JSON). A batch request promoted to a
// higher tier (its deadline was near, promote.go) counts in that tier from
// then on, and in Promoted.
type BatchStats struct {
	PromptTokens          int64 `json:"promptTokens"`
	CompletionTokens      int64 `json:"completionTokens"`
	UncachedPrefillTokens int64 `json:"uncachedPrefillTokens"`
	ArrivedPromptTokens   int64 `json:"arrivedPromptTokens"`
	InFlight              int   `json:"inFlight"`
	Promoted              int64 `json:"promoted"`
}

// RoleStats aggregates one role's ready pods: counts are sums, KVUsage
// the mean.
type RoleStats struct {
	Ready   int     `json:"ready"`
	Running int     `json:"running"`
	Waiting int     `json:"waiting"`
	KVUsage float64 `json:"kvUsage"`
}

const (
	statsWindow  = 30 * time.Second
	statsSamples = 4096
)

type latencySample struct {
	at         time.Time
	ttft, tpot float64
}

type revisionStats struct {
	mu      sync.Mutex
	c       RevisionStats
	batch   BatchStats
	samples []latencySample
	next    int
}

func newRevisionStats() *revisionStats {
	return &revisionStats{c: RevisionStats{RequestsByTier: map[string]int64{}, ArrivedByTier: map[string]int64{}, ShedByTier: map[string]int64{}}}
}

// shed counts one request of tier with promptTokens refused on arrival.
func (s *revisionStats) shed(tier string, promptTokens int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.c.ShedByTier[tier]++
	s.c.ShedPromptTokens += int64(max(promptTokens, 0))
}

// arrive counts one request of tier with promptTokens dispatched or queued
// by flow control.
func (s *revisionStats) arrive(tier string, promptTokens int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.c.ArrivedByTier[tier]++
	s.c.ArrivedPromptTokens += int64(max(promptTokens, 0))
	if tier == BatchTier {
		s.batch.ArrivedPromptTokens += int64(max(promptTokens, 0))
	}
}

// batchDispatched moves the batch in-flight gauge by delta (+1 when a batch
// request is admitted, -1 when it finishes).
func (s *revisionStats) batchDispatched(delta int) {
	s.mu.Lock()
	s.batch.InFlight += delta
	s.mu.Unlock()
}

// batchPromoted counts a batch request moved to a higher tier.
func (s *revisionStats) batchPromoted() {
	s.mu.Lock()
	s.batch.Promoted++
	s.mu.Unlock()
}

// requestDone is one finished request's accounting.
type requestDone struct {
	tier            string
	failed          bool
	usage           *Usage
	predictedCached int
	disaggregated   bool
	ttft, tpot      time.Duration
	at              time.Time
}

func (s *revisionStats) record(d requestDone) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.c.RequestsByTier[d.tier]++
	if d.failed {
		s.c.Errors++
		return
	}
	if d.disaggregated {
		s.c.Disaggregated++
	}
	s.c.PredictedCachedTokens += int64(max(d.predictedCached, 0))
	if u := d.usage; u != nil {
		s.c.PromptTokens += int64(u.PromptTokens)
		s.c.CompletionTokens += int64(u.CompletionTokens)
		s.c.CachedTokens += int64(u.CachedTokens())
		s.c.UncachedPrefillTokens += int64(max(u.PromptTokens-u.CachedTokens(), 0))
		if d.tier == BatchTier {
			s.batch.PromptTokens += int64(u.PromptTokens)
			s.batch.CompletionTokens += int64(u.CompletionTokens)
			s.batch.UncachedPrefillTokens += int64(max(u.PromptTokens-u.CachedTokens(), 0))
		}
	}
	if d.ttft > 0 {
		smp := latencySample{at: d.at, ttft: d.ttft.Seconds(), tpot: d.tpot.Seconds()}
		if len(s.samples) < statsSamples {
			s.samples = append(s.samples, smp)
		} else {
			s.samples[s.next] = smp
			s.next = (s.next + 1) % statsSamples
		}
	}
}

func (s *revisionStats) snapshot(now time.Time) RevisionStats {
	s.mu.Lock()
	out := s.c
	out.RequestsByTier = make(map[string]int64, len(s.c.RequestsByTier))
	for k, v := range s.c.RequestsByTier {
		out.RequestsByTier[k] = v
	}
	out.ArrivedByTier = make(map[string]int64, len(s.c.ArrivedByTier))
	for k, v := range s.c.ArrivedByTier {
		out.ArrivedByTier[k] = v
	}
	out.ShedByTier = make(map[string]int64, len(s.c.ShedByTier))
	for k, v := range s.c.ShedByTier {
		out.ShedByTier[k] = v
	}
	batch := s.batch
	out.Batch = &batch
	var ttft, tpot []float64
	for _, x := range s.samples {
		if now.Sub(x.at) <= statsWindow {
			ttft = append(ttft, x.ttft)
			if x.tpot > 0 {
				tpot = append(tpot, x.tpot)
			}
		}
	}
	s.mu.Unlock()
	out.Window = statsWindow.String()
	out.Samples = len(ttft)
	out.TTFTP50, out.TTFTP90 = percentile(ttft, 50), percentile(ttft, 90)
	out.TPOTP50, out.TPOTP90 = percentile(tpot, 50), percentile(tpot, 90)
	return out
}

// percentile is the nearest-rank percentile of xs (sorted in place), 0 if empty.
func percentile(xs []float64, p float64) float64 {
	if len(xs) == 0 {
		return 0
	}
	sort.Float64s(xs)
	i := int(p/100*float64(len(xs))+0.5) - 1
	return xs[min(max(i, 0), len(xs)-1)]
}
