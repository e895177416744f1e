package autoscaler

import (
	"sort"
	"time"
)

// Input is what the decider sees at one tick for one revision.
type Input struct {
	Load Load `json:"load"`
	Pods Pods `json:"pods"`
}

// Load is the offered load the activators observed over the last tick, as
// rates (see Rates for deriving it from two stats snapshots).
type Load struct {
	// RequestsPerSecond by SLO tier (finished requests, failed included).
	RequestsPerSecond map[string]float64 `json:"requestsPerSecond,omitempty"`
	// PromptTokensPerSecond is all prompt tokens; UncachedPrefillTokens
	// those the pods had to compute (cache hits reduce prefill load);
	// OutputTokensPerSecond the generated tokens.
	PromptTokensPerSecond          float64 `json:"promptTokensPerSecond"`
	UncachedPrefillTokensPerSecond float64 `json:"uncachedPrefillTokensPerSecond"`
	OutputTokensPerSecond          float64 `json:"outputTokensPerSecond"`
	// ArrivalsPerSecond by SLO tier and ArrivedPromptTokensPerSecond count
	// requests when they reach the activator, not when they finish: a
	// burst shows here a service time earlier. Zero from activators that
	// do not report arrivals; the decider then plans on the rates above.
	ArrivalsPerSecond            map[string]float64 `json:"arrivalsPerSecond,omitempty"`
	ArrivedPromptTokensPerSecond float64            `json:"arrivedPromptTokensPerSecond,omitempty"`
	// MeanPromptTokens, MeanCachedTokens and MeanOutputTokens are per
	// finished request; zero when nothing finished (the decider then keeps
	// the last known means).
	MeanPromptTokens float64 `json:"meanPromptTokens"`
	MeanCachedTokens float64 `json:"meanCachedTokens"`
	MeanOutputTokens float64 `json:"meanOutputTokens"`
	// MeanContextTokens is the mean context of a decoding sequence; zero
	// means prompt + output/2.
	MeanContextTokens float64 `json:"meanContextTokens"`
	// Queued requests wait in the activator; QueueTime is the longest wait
	// among them; InFlight were dispatched and not finished.
	Queued    int           `json:"queued"`
	QueueTime time.Duration `json:"queueTime"`
	InFlight  int           `json:"inFlight"`
	// Observed latencies over the activator's recent window.
	TTFT Latency `json:"ttft"`
	TPOT Latency `json:"tpot"`
	// Batch is the batch tier's share of the rates and gauges above
	// (included in them): the decider counts it only up to
	// Config.BatchMaxReplicas (see Decider.BatchShare).
	Batch BatchLoad `json:"batch,omitempty"`
}

// Latency is an observed latency distribution's percentiles.
type Latency struct {
	P50 time.Duration `json:"p50"`
	P90 time.Duration `json:"p90"`
}

// Requests is the total request rate over tiers.
func (l *Load) Requests() float64 { return sumRates(l.RequestsPerSecond) }

// Arrivals is the total arrival rate over tiers.
func (l *Load) Arrivals() float64 { return sumRates(l.ArrivalsPerSecond) }

func sumRates(m map[string]float64) float64 {
	tiers := make([]string, 0, len(m))
	for t := range m {
		tiers = append(tiers, t)
	}
	sort.Strings(tiers) // a fixed summation order keeps results bit-identical
	var sum float64
	for _, t := range tiers {
		sum += m[t]
	}
	return sum
}

// active reports whether the revision saw any traffic this tick.
func (l *Load) active() bool {
	return l.Requests() > 0 || l.Queued > 0 || l.InFlight > 0 ||
		l.PromptTokensPerSecond > 0 || l.OutputTokensPerSecond > 0 ||
		l.Arrivals() > 0 || l.ArrivedPromptTokensPerSecond > 0
}

// Pods is the pods' telemetry per role. A revision that is not
// disaggregated reports its pods under Decode.
type Pods struct {
	Prefill Telemetry `json:"prefill"`
	Decode  Telemetry `json:"decode"`
}

// Telemetry is one role's pods, aggregated (sums for counts, means for the
// rest).
type Telemetry struct {
	Ready   int     `json:"ready"`
	Running int     `json:"running"`
	Waiting int     `json:"waiting"`
	KVUsage float64 `json:"kvUsage"`
	// PrefillTokensPerSecond is measured prefill throughput while
	// prefilling: prefill tokens per second of prefill step time. Zero is
	// unknown.
	PrefillTokensPerSecond float64 `json:"prefillTokensPerSecond"`
	// DecodeStepTime is the measured mean decode step time at a mean batch
	// of DecodeBatch sequences (Running when zero). Zero is unknown.
	DecodeStepTime time.Duration `json:"decodeStepTime"`
	DecodeBatch    float64       `json:"decodeBatch"`
}

// Snapshot is the activator's per-revision statistics as it serves them
// (pkg/activator.RevisionStats, same JSON): cumulative counters, gauges and
// recent latency percentiles in seconds. The decider package does not import
// the activator; a caller decodes the activator's JSON into a Snapshot or
// copies the fields.
type Snapshot struct {
	Revision              string           `json:"revision"`
	RequestsByTier        map[string]int64 `json:"requestsByTier"`
	Errors                int64            `json:"errors"`
	PromptTokens          int64            `json:"promptTokens"`
	CompletionTokens      int64            `json:"completionTokens"`
	CachedTokens          int64            `json:"cachedTokens"`
	UncachedPrefillTokens int64            `json:"uncachedPrefillTokens"`
	QueuedByTier          map[string]int   `json:"queuedByTier"`
	InFlight              int              `json:"inFlight"`
	TTFTP50               float64          `json:"ttftP50"`
	TTFTP90               float64          `json:"ttftP90"`
	TPOTP50               float64          `json:"tpotP50"`
	TPOTP90               float64          `json:"tpotP90"`
	// ArrivedByTier and ArrivedPromptTokens count requests at arrival;
	// absent (nil, 0) from activators that predate them.
	ArrivedByTier       map[string]int64 `json:"arrivedByTier,omitempty"`
	ArrivedPromptTokens int64            `json:"arrivedPromptTokens,omitempty"`
	// Roles is the ready pods' telemetry by role ("prefill", "decode") as
	// the activator scraped it (pkg/activator.RoleStats: ready, running,
	// waiting, kvUsage).
	Roles map[string]Telemetry `json:"roles,omitempty"`
	// Batch is the batch tier's share of the counters and gauges above;
	// nil from activators that predate it.
	Batch *BatchCounters `json:"batch,omitempty"`
}

// Rates turns two snapshots taken dt apart into a Load. Counters that went
// backwards (an activator restart) count from zero. A non-positive dt gives
// only the gauges.
func Rates(prev, cur Snapshot, dt time.Duration) Load {
	l := Load{
		InFlight: cur.InFlight,
		TTFT:     Latency{P50: seconds(cur.TTFTP50), P90: seconds(cur.TTFTP90)},
		TPOT:     Latency{P50: seconds(cur.TPOTP50), P90: seconds(cur.TPOTP90)},
	}
	for _, n := range cur.QueuedByTier {
		l.Queued += n
	}
	if dt <= 0 {
		l.Batch = batchRates(prev, cur, 0, false)
		return l
	}
	var reqs, prevReqs int64
	for _, n := range cur.RequestsByTier {
		reqs += n
	}
	for _, n := range prev.RequestsByTier {
		prevReqs += n
	}
	var arrived, prevArrived int64
	for _, n := range cur.ArrivedByTier {
		arrived += n
	}
	for _, n := range prev.ArrivedByTier {
		prevArrived += n
	}
	if reqs < prevReqs || cur.Errors < prev.Errors || cur.PromptTokens < prev.PromptTokens ||
		cur.CompletionTokens < prev.CompletionTokens || cur.UncachedPrefillTokens < prev.UncachedPrefillTokens ||
		arrived < prevArrived || cur.ArrivedPromptTokens < prev.ArrivedPromptTokens {
		prev = Snapshot{}
	}
	sec := dt.Seconds()
	l.Batch = batchRates(prev, cur, sec, false)
	l.RequestsPerSecond = make(map[string]float64, len(cur.RequestsByTier))
	for tier, n := range cur.RequestsByTier {
		if d := n - prev.RequestsByTier[tier]; d > 0 {
			l.RequestsPerSecond[tier] = float64(d) / sec
		}
	}
	if len(cur.ArrivedByTier) > 0 {
		l.ArrivalsPerSecond = make(map[string]float64, len(cur.ArrivedByTier))
		for tier, n := range cur.ArrivedByTier {
			if d := n - prev.ArrivedByTier[tier]; d > 0 {
				l.ArrivalsPerSecond[tier] = float64(d) / sec
			}
		}
	}
	l.ArrivedPromptTokensPerSecond = float64(cur.ArrivedPromptTokens-prev.ArrivedPromptTokens) / sec
	prompt := float64(cur.PromptTokens - prev.PromptTokens)
	out := float64(cur.CompletionTokens - prev.CompletionTokens)
	cached := float64(max(cur.CachedTokens-prev.CachedTokens, 0))
	l.PromptTokensPerSecond = prompt / sec
	l.OutputTokensPerSecond = out / sec
	l.UncachedPrefillTokensPerSecond = float64(cur.UncachedPrefillTokens-prev.UncachedPrefillTokens) / sec
	prevReqs = 0
	for _, n := range prev.RequestsByTier {
		prevReqs += n
	}
	if ok := float64((reqs - prevReqs) - (cur.Errors - prev.Errors)); ok > 0 {
		l.MeanPromptTokens = prompt / ok
		l.MeanCachedTokens = min(cached, prompt) / ok
		l.MeanOutputTokens = out / ok
	}
	return l
}
