package bench

import (
	"encoding/json"
	"math"
	"slices"
	"sort"
	"strconv"
	"time"
)

// SchemaVersion is the version of the summary.json schema documented in the
// package comment. It changes only when a field changes meaning or goes
// away; added fields keep it.
const SchemaVersion = 1

// Modes of a run.
const (
	ModeRealTime    = "real-time"    // kn-llmd bench
	ModeVirtualTime = "virtual-time" // kn-llmd plan
)

// Summary is the content of summary.json: every run of one invocation.
type Summary struct {
	SchemaVersion int          `json:"schemaVersion"`
	Runs          []RunSummary `json:"runs"`
}

// RunSummary is one run, as the package comment documents field by field.
// All durations are in seconds and all rates per second.
type RunSummary struct {
	Name            string            `json:"name"`
	Mode            string            `json:"mode"`
	Target          string            `json:"target,omitempty"`
	Model           string            `json:"model,omitempty"`
	Workload        WorkloadInfo      `json:"workload"`
	Settings        map[string]string `json:"settings,omitempty"`
	Start           time.Time         `json:"start,omitzero"`
	DurationSeconds float64           `json:"durationSeconds"`
	Interrupted     bool              `json:"interrupted,omitempty"`
	SLO             SLOTargets        `json:"slo"`

	Requests       Requests    `json:"requests"`
	Tokens         Tokens      `json:"tokens"`
	LatencySeconds Latencies   `json:"latencySeconds"`
	Throughput     Throughput  `json:"throughput"`
	SLOAttainment  *float64    `json:"sloAttainment"`
	Goodput        *Goodput    `json:"goodput"`
	Concurrency    Concurrency `json:"concurrency"`

	TTFTCDF       []CDFPoint        `json:"ttftCDF"`
	BucketSeconds float64           `json:"bucketSeconds"`
	TimeSeries    []Bucket          `json:"timeSeries"`
	Ladder        []LadderStep      `json:"ladder,omitempty"`
	ErrorExamples map[string]string `json:"errorExamples,omitempty"`
}

// WorkloadInfo says what was replayed.
type WorkloadInfo struct {
	// Description is one human line, for example "mooncake trace.jsonl,
	// trace arrivals, speedup 2: 1,234 requests over 5m0s".
	Description string `json:"description"`
	// Spec is the workload spec (pkg/workload.Spec as JSON), when there is
	// one.
	Spec json.RawMessage `json:"spec,omitempty"`
}

// SLOTargets are the targets SLO attainment and goodput are measured
// against; 0 means no target on that latency.
type SLOTargets struct {
	TTFTSeconds float64 `json:"ttftSeconds"`
	TPOTSeconds float64 `json:"tpotSeconds"`
}

// Requests counts what happened to the run's requests.
type Requests struct {
	// Total is every request the run reached; Sent excludes the dropped;
	// Completed + Failed = Sent.
	Total     int `json:"total"`
	Sent      int `json:"sent"`
	Completed int `json:"completed"`
	Failed    int `json:"failed"`
	Dropped   int `json:"dropped"`
	// Errors counts requests by ErrorKind, dropped and canceled included;
	// kinds with no request are left out.
	Errors map[string]int `json:"errors"`
	// ByStatus counts answers by HTTP status when it was not 2xx.
	ByStatus map[string]int `json:"byStatus,omitempty"`
	// WithoutUsage counts completed requests whose stream had no usage.
	WithoutUsage int `json:"withoutUsage"`
}

// Tokens are the token counts of completed requests.
type Tokens struct {
	Prompt     int64 `json:"prompt"`
	Completion int64 `json:"completion"`
	Cached     int64 `json:"cached"`
	// CacheHitRate is Cached / Prompt (0 without prompt tokens).
	CacheHitRate float64 `json:"cacheHitRate"`
}

// Dist describes a distribution in seconds. Percentiles interpolate
// linearly between the two nearest ranks (NumPy's default, as vLLM's
// benchmark reports them). With Count 0 every other field is 0.
type Dist struct {
	Count int     `json:"count"`
	Mean  float64 `json:"mean"`
	Min   float64 `json:"min"`
	P50   float64 `json:"p50"`
	P90   float64 `json:"p90"`
	P99   float64 `json:"p99"`
	Max   float64 `json:"max"`
}

// Latencies are the run's latency distributions.
type Latencies struct {
	// TTFT, TPOT, ITL and E2E are over completed requests (TPOT over those
	// with at least two output tokens; ITL over every gap of them).
	TTFT Dist `json:"ttft"`
	TPOT Dist `json:"tpot"`
	ITL  Dist `json:"itl"`
	E2E  Dist `json:"e2e"`
	// Lateness is the generator's: actual minus scheduled send time, over
	// sent requests.
	Lateness Dist `json:"lateness"`
	// Queue is the server-side queue time, when the records know it.
	Queue *Dist `json:"queue,omitempty"`
}

// Throughput is the run's delivered rate over DurationSeconds, and the rate
// offered: (requests − 1) / (last − first scheduled time).
type Throughput struct {
	OfferedRequestsPerSecond float64 `json:"offeredRequestsPerSecond"`
	RequestsPerSecond        float64 `json:"requestsPerSecond"`
	OutputTokensPerSecond    float64 `json:"outputTokensPerSecond"`
	TotalTokensPerSecond     float64 `json:"totalTokensPerSecond"`
}

// Goodput is the throughput of requests that met the SLO.
type Goodput struct {
	Requests              int     `json:"requests"`
	RequestsPerSecond     float64 `json:"requestsPerSecond"`
	OutputTokensPerSecond float64 `json:"outputTokensPerSecond"`
}

// Concurrency is how many requests were in flight.
type Concurrency struct {
	Max  int     `json:"max"`
	Mean float64 `json:"mean"`
}

// CDFPoint is one point of a distribution function: a fraction Q of the
// values are at most Seconds.
type CDFPoint struct {
	Q       float64 `json:"q"`
	Seconds float64 `json:"seconds"`
}

// Bucket is one interval of the time series. Requests are placed by when
// they were scheduled (OfferedRate), sent (TTFT, E2E), ended (Completed,
// Failed), and output tokens by when they arrived. Every bucket is
// RunSummary.BucketSeconds wide except the last, which ends with the run.
type Bucket struct {
	StartSeconds float64 `json:"t"`
	OfferedRate  float64 `json:"offeredRate"`
	Completed    int     `json:"completed"`
	Failed       int     `json:"failed"`
	OutputTokens int64   `json:"outputTokens"`
	// TTFTP50, TTFTP90 and E2EP50 are null when no completed request was
	// sent in the bucket.
	TTFTP50 *float64 `json:"ttftP50"`
	TTFTP90 *float64 `json:"ttftP90"`
	E2EP50  *float64 `json:"e2eP50"`
}

// LadderStep is one step of a rate ladder: what was offered and what came
// out during it.
type LadderStep struct {
	StartSeconds    float64 `json:"startSeconds"`
	DurationSeconds float64 `json:"durationSeconds"`
	// Rate is the configured rate; OfferedRate what was scheduled.
	Rate        float64 `json:"rate"`
	OfferedRate float64 `json:"offeredRate"`
	// RequestsPerSecond and OutputTokensPerSecond count completions and
	// tokens that arrived within the step.
	RequestsPerSecond     float64 `json:"requestsPerSecond"`
	OutputTokensPerSecond float64 `json:"outputTokensPerSecond"`
	// TTFT and TPOT are over completed requests scheduled in the step.
	TTFT Dist `json:"ttft"`
	TPOT Dist `json:"tpot"`
	// SLOAttainment is over requests scheduled in the step.
	SLOAttainment *float64 `json:"sloAttainment"`
	// GoodputRequestsPerSecond is the requests scheduled in the step that
	// met the SLO, per second of the step.
	GoodputRequestsPerSecond *float64 `json:"goodputRequestsPerSecond"`
}

// SLO is a pair of latency targets; a zero target is not checked.
type SLO struct {
	TTFT time.Duration
	TPOT time.Duration
}

func (s SLO) set() bool { return s.TTFT > 0 || s.TPOT > 0 }

// meets reports whether r completed within the targets. A request with
// fewer than two output tokens has no TPOT and meets any TPOT target.
func (s SLO) meets(r *Record) bool {
	if !r.OK() {
		return false
	}
	if s.TTFT > 0 && r.TTFT > s.TTFT {
		return false
	}
	if s.TPOT > 0 {
		if tp, ok := r.tpot(); ok && tp > s.TPOT.Seconds() {
			return false
		}
	}
	return true
}

// LoadStep is a step of an offered-load ladder, in run time (after any
// speed-up or rate scaling).
type LoadStep struct {
	Rate     float64
	Duration time.Duration
}

// SummaryOptions describe a run for Summarize beyond its records.
type SummaryOptions struct {
	// Mode is ModeRealTime (default) or ModeVirtualTime.
	Mode string
	// Target is the URL driven, or a description of the modelled
	// deployment.
	Target string
	Model  string
	// Workload describes what was replayed.
	Workload WorkloadInfo
	// Settings are free-form facts shown with the run (API, concurrency
	// cap, router profile...). Never put a secret here.
	Settings map[string]string
	// Start is the wall-clock (or virtual) time of the run's time 0.
	Start time.Time
	// Duration is the run's length; 0 means from time 0 to the end of the
	// last request (or the last scheduled time).
	Duration time.Duration
	// Interrupted marks a run stopped early.
	Interrupted bool
	// SLO are the targets for attainment and goodput.
	SLO SLO
	// Bucket is the time-series interval; 0 means one second. It is
	// widened if the run would need more than MaxBuckets.
	Bucket time.Duration
	// Ladder is the offered-load ladder, when the workload has one.
	Ladder []LoadStep
}

// MaxBuckets bounds the time series of a run.
const MaxBuckets = 20000

// cdfPoints is the number of intervals of RunSummary.TTFTCDF.
const cdfPoints = 200

// Summarize computes a run's summary from its records. It is a pure
// function: no clock, no I/O; records are not modified.
func Summarize(name string, records []Record, opts SummaryOptions) RunSummary {
	s := RunSummary{
		Name:     name,
		Mode:     opts.Mode,
		Target:   opts.Target,
		Model:    opts.Model,
		Workload: opts.Workload,
		Settings: opts.Settings,
		Start:    opts.Start,
		SLO: SLOTargets{
			TTFTSeconds: opts.SLO.TTFT.Seconds(),
			TPOTSeconds: opts.SLO.TPOT.Seconds(),
		},
		Interrupted: opts.Interrupted,
		Requests:    Requests{Total: len(records), Errors: map[string]int{}},
	}
	if s.Mode == "" {
		s.Mode = ModeRealTime
	}

	// The run's span.
	dur := opts.Duration
	if dur <= 0 {
		for i := range records {
			r := &records[i]
			dur = max(dur, r.Scheduled)
			if r.Error != ErrDropped {
				dur = max(dur, r.Sent+r.E2E)
			}
		}
	}
	s.DurationSeconds = dur.Seconds()
	perSec := func(x float64) float64 {
		if dur <= 0 {
			return 0
		}
		return x / dur.Seconds()
	}

	var ttft, e2e, itl, late, queue []time.Duration
	var tpot []float64
	var good int
	var goodTokens int64
	hasQueue := false
	for i := range records {
		r := &records[i]
		if r.Error == ErrDropped {
			s.Requests.Dropped++
		} else {
			s.Requests.Sent++
			late = append(late, r.Sent-r.Scheduled)
		}
		if r.Status != 0 && (r.Status < 200 || r.Status > 299) {
			if s.Requests.ByStatus == nil {
				s.Requests.ByStatus = map[string]int{}
			}
			s.Requests.ByStatus[strconv.Itoa(r.Status)]++
		}
		if r.HasQueue {
			hasQueue = true
			queue = append(queue, r.Queue)
		}
		if !r.OK() {
			s.Requests.Errors[string(r.Error)]++
			if r.Error != ErrDropped {
				s.Requests.Failed++
			}
			if r.Detail != "" {
				if s.ErrorExamples == nil {
					s.ErrorExamples = map[string]string{}
				}
				if _, ok := s.ErrorExamples[string(r.Error)]; !ok {
					s.ErrorExamples[string(r.Error)] = r.Detail
				}
			}
			continue
		}
		s.Requests.Completed++
		if !r.HasUsage {
			s.Requests.WithoutUsage++
		}
		out := int64(r.completionTokens())
		s.Tokens.Prompt += int64(r.promptTokens())
		s.Tokens.Completion += out
		if r.HasUsage {
			s.Tokens.Cached += int64(r.CachedTokens)
		}
		if r.Chunks > 0 {
			ttft = append(ttft, r.TTFT)
		}
		e2e = append(e2e, r.E2E)
		itl = append(itl, r.ITL...)
		if tp, ok := r.tpot(); ok {
			tpot = append(tpot, tp)
		}
		if opts.SLO.set() && opts.SLO.meets(r) {
			good++
			goodTokens += out
		}
	}
	if s.Tokens.Prompt > 0 {
		s.Tokens.CacheHitRate = float64(s.Tokens.Cached) / float64(s.Tokens.Prompt)
	}
	s.LatencySeconds = Latencies{
		TTFT:     distOf(ttft, 1e9),
		TPOT:     distOf(tpot, 1),
		ITL:      distOf(itl, 1e9),
		E2E:      distOf(e2e, 1e9),
		Lateness: distOf(late, 1e9),
	}
	if hasQueue {
		q := distOf(queue, 1e9)
		s.LatencySeconds.Queue = &q
	}
	s.TTFTCDF = cdf(ttft)
	s.Throughput = Throughput{
		OfferedRequestsPerSecond: offeredRate(records, perSec),
		RequestsPerSecond:        perSec(float64(s.Requests.Completed)),
		OutputTokensPerSecond:    perSec(float64(s.Tokens.Completion)),
		TotalTokensPerSecond:     perSec(float64(s.Tokens.Prompt + s.Tokens.Completion)),
	}
	if opts.SLO.set() {
		att := 0.0
		if len(records) > 0 {
			att = float64(good) / float64(len(records))
		}
		s.SLOAttainment = &att
		s.Goodput = &Goodput{
			Requests:              good,
			RequestsPerSecond:     perSec(float64(good)),
			OutputTokensPerSecond: perSec(float64(goodTokens)),
		}
	}
	s.Concurrency = concurrency(records, dur)
	s.BucketSeconds, s.TimeSeries = timeSeries(records, dur, opts.Bucket)
	s.Ladder = ladder(records, dur, opts.Ladder, opts.SLO)
	return s
}

// offeredRate is the rate at which requests were scheduled: n − 1 gaps over
// the span from the first scheduled time to the last, exact for constant
// arrivals. With fewer than two distinct times it falls back to n over the
// run's duration.
func offeredRate(records []Record, perSec func(float64) float64) float64 {
	if len(records) < 2 {
		return perSec(float64(len(records)))
	}
	first, last := records[0].Scheduled, records[0].Scheduled
	for i := range records {
		first, last = min(first, records[i].Scheduled), max(last, records[i].Scheduled)
	}
	if last <= first {
		return perSec(float64(len(records)))
	}
	return float64(len(records)-1) / (last - first).Seconds()
}

// distOf describes xs in seconds: durations with unit 1e9 (nanoseconds a
// second), or seconds with unit 1. Dividing rather than multiplying by
// 1e-9 keeps round values round (0.3, not 0.30000000000000004). It sorts xs
// in place.
func distOf[T ~int64 | ~float64](xs []T, unit float64) Dist {
	if len(xs) == 0 {
		return Dist{}
	}
	slices.Sort(xs)
	var sum float64
	for _, x := range xs {
		sum += float64(x)
	}
	return Dist{
		Count: len(xs),
		Mean:  sum / float64(len(xs)) / unit,
		Min:   float64(xs[0]) / unit,
		P50:   quantile(xs, 0.50) / unit,
		P90:   quantile(xs, 0.90) / unit,
		P99:   quantile(xs, 0.99) / unit,
		Max:   float64(xs[len(xs)-1]) / unit,
	}
}

// quantile returns the q-quantile of sorted xs, interpolating linearly
// between the ranks around q·(n−1).
func quantile[T ~int64 | ~float64](sorted []T, q float64) float64 {
	n := len(sorted)
	if n == 0 {
		return 0
	}
	h := q * float64(n-1)
	lo := int(math.Floor(h))
	if lo >= n-1 {
		return float64(sorted[n-1])
	}
	a, b := float64(sorted[lo]), float64(sorted[lo+1])
	return a + (h-float64(lo))*(b-a)
}

// cdf samples the distribution of sorted durations at cdfPoints+1 evenly
// spaced fractions.
func cdf(sorted []time.Duration) []CDFPoint {
	if len(sorted) == 0 {
		return []CDFPoint{}
	}
	pts := make([]CDFPoint, cdfPoints+1)
	for i := range pts {
		q := float64(i) / cdfPoints
		pts[i] = CDFPoint{Q: q, Seconds: quantile(sorted, q) / 1e9}
	}
	return pts
}

// concurrency sweeps the sent requests' [Sent, Sent+E2E) intervals.
func concurrency(records []Record, dur time.Duration) Concurrency {
	type edge struct {
		at    time.Duration
		delta int
	}
	edges := make([]edge, 0, 2*len(records))
	var busy time.Duration
	for i := range records {
		r := &records[i]
		if r.Error == ErrDropped {
			continue
		}
		edges = append(edges, edge{r.Sent, 1}, edge{r.Sent + r.E2E, -1})
		busy += r.E2E
	}
	// Ends before starts at the same instant: back-to-back requests are
	// not concurrent.
	slices.SortFunc(edges, func(a, b edge) int {
		if a.at != b.at {
			return compare(a.at, b.at)
		}
		return a.delta - b.delta
	})
	var c Concurrency
	n := 0
	for _, e := range edges {
		n += e.delta
		c.Max = max(c.Max, n)
	}
	if dur > 0 {
		c.Mean = busy.Seconds() / dur.Seconds()
	}
	return c
}

func compare(a, b time.Duration) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}

// tokenTimes calls fn with the arrival times of r's output tokens, as
// offsets from the run's start: when r has an ITL for each event, its
// completion tokens are spread evenly over its events; otherwise the first
// token arrives at TTFT and the rest evenly up to E2E.
func tokenTimes(r *Record, fn func(at time.Duration, n int64)) {
	total := int64(r.completionTokens())
	if total <= 0 || r.Chunks <= 0 {
		return
	}
	at := r.Sent + r.TTFT
	if len(r.ITL) == r.Chunks-1 {
		c := int64(r.Chunks)
		for j := int64(0); j < c; j++ {
			if j > 0 {
				at += r.ITL[j-1]
			}
			if n := (j+1)*total/c - j*total/c; n > 0 {
				fn(at, n)
			}
		}
		return
	}
	fn(at, 1)
	span := r.E2E - r.TTFT
	for k := int64(1); k < total; k++ {
		fn(at+time.Duration(float64(span)*float64(k)/float64(total-1)), 1)
	}
}

// timeSeries buckets the run by width (one second by default).
func timeSeries(records []Record, dur, width time.Duration) (float64, []Bucket) {
	if width <= 0 {
		width = time.Second
	}
	if dur <= 0 {
		return width.Seconds(), []Bucket{}
	}
	if int64(dur/width) >= MaxBuckets {
		width = (dur + MaxBuckets - 1) / MaxBuckets
	}
	n := int((dur + width - 1) / width)
	bs := make([]Bucket, n)
	idx := func(t time.Duration) int { return min(max(int(t/width), 0), n-1) }
	ttft := make([][]time.Duration, n)
	e2e := make([][]time.Duration, n)
	for i := range records {
		r := &records[i]
		bs[idx(r.Scheduled)].OfferedRate++
		if r.Error == ErrDropped {
			bs[idx(r.Scheduled)].Failed++
			continue
		}
		end := idx(r.Sent + r.E2E)
		if !r.OK() {
			bs[end].Failed++
			continue
		}
		bs[end].Completed++
		sent := idx(r.Sent)
		if r.Chunks > 0 {
			ttft[sent] = append(ttft[sent], r.TTFT)
		}
		e2e[sent] = append(e2e[sent], r.E2E)
		tokenTimes(r, func(at time.Duration, k int64) { bs[idx(at)].OutputTokens += k })
	}
	for i := range bs {
		b := &bs[i]
		b.StartSeconds = (time.Duration(i) * width).Seconds()
		// The last bucket may be cut short by the end of the run.
		b.OfferedRate /= min(width, dur-time.Duration(i)*width).Seconds()
		b.TTFTP50, b.TTFTP90 = pctPtr(ttft[i], 0.5), pctPtr(ttft[i], 0.9)
		b.E2EP50 = pctPtr(e2e[i], 0.5)
	}
	return width.Seconds(), bs
}

// pctPtr returns the q-quantile of xs in seconds, or nil for no xs. It
// sorts xs in place.
func pctPtr(xs []time.Duration, q float64) *float64 {
	if len(xs) == 0 {
		return nil
	}
	slices.Sort(xs)
	v := quantile(xs, q) / 1e9
	return &v
}

// ladder measures each step of steps that starts within the run.
func ladder(records []Record, dur time.Duration, steps []LoadStep, slo SLO) []LadderStep {
	if len(steps) == 0 {
		return nil
	}
	ends := make([]time.Duration, 0, len(steps))
	var out []LadderStep
	var t time.Duration
	for _, st := range steps {
		if st.Duration <= 0 || t >= dur {
			break
		}
		out = append(out, LadderStep{StartSeconds: t.Seconds(), DurationSeconds: st.Duration.Seconds(), Rate: st.Rate})
		t += st.Duration
		ends = append(ends, t)
	}
	if len(out) == 0 {
		return nil
	}
	// stepOf returns the step holding t, or -1 past the ladder.
	stepOf := func(t time.Duration) int {
		i := sort.Search(len(ends), func(i int) bool { return ends[i] > t })
		if i == len(ends) || t < 0 {
			return -1
		}
		return i
	}
	n := len(out)
	ttft := make([][]time.Duration, n)
	tpot := make([][]float64, n)
	offered := make([]int, n)
	good := make([]int, n)
	completed := make([]int, n)
	tokens := make([]int64, n)
	for i := range records {
		r := &records[i]
		k := stepOf(r.Scheduled)
		if k >= 0 {
			offered[k]++
			if slo.set() && slo.meets(r) {
				good[k]++
			}
			if r.OK() {
				if r.Chunks > 0 {
					ttft[k] = append(ttft[k], r.TTFT)
				}
				if tp, ok := r.tpot(); ok {
					tpot[k] = append(tpot[k], tp)
				}
			}
		}
		if !r.OK() {
			continue
		}
		if e := stepOf(r.Sent + r.E2E); e >= 0 {
			completed[e]++
		}
		tokenTimes(r, func(at time.Duration, n int64) {
			if e := stepOf(at); e >= 0 {
				tokens[e] += n
			}
		})
	}
	for k := range out {
		s := &out[k]
		d := s.DurationSeconds
		s.OfferedRate = float64(offered[k]) / d
		s.RequestsPerSecond = float64(completed[k]) / d
		s.OutputTokensPerSecond = float64(tokens[k]) / d
		s.TTFT = distOf(ttft[k], 1e9)
		s.TPOT = distOf(tpot[k], 1)
		if slo.set() {
			att, gp := 0.0, float64(good[k])/d
			if offered[k] > 0 {
				att = float64(good[k]) / float64(offered[k])
			}
			s.SLOAttainment, s.GoodputRequestsPerSecond = &att, &gp
		}
	}
	return out
}
