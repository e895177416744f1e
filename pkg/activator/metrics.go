package activator

import (
	"github.com/prometheus/client_golang/prometheus"
)

// Metrics are the activator's Prometheus metrics. Label values are bounded:
// revision keys, tier names, status codes and fixed words, never a request
// id or a prompt.
type Metrics struct {
	Requests        *prometheus.CounterVec
	QueueTime       *prometheus.HistogramVec
	TTFT            *prometheus.HistogramVec
	TPOT            *prometheus.HistogramVec
	Tokens          *prometheus.CounterVec
	PredictedCached *prometheus.CounterVec
	DecisionTime    prometheus.Histogram
	PDDecisions     *prometheus.CounterVec
	Rejected        *prometheus.CounterVec
	ShedTime        *prometheus.HistogramVec
	Retries         *prometheus.CounterVec
	Queued          *prometheus.GaugeVec
}

var latencyBuckets = []float64{.005, .01, .025, .05, .075, .1, .15, .2, .3, .5, .75, 1, 1.5, 2, 3, 5, 7.5, 10, 20, 30, 60}

// NewMetrics registers the activator's metrics with reg.
func NewMetrics(reg prometheus.Registerer) *Metrics {
	const ns, sub = "llmd", "activator"
	m := &Metrics{
		Requests: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Subsystem: sub, Name: "requests_total",
			Help: "Requests handled, by revision, SLO tier and HTTP status code."}, []string{"revision", "tier", "code"}),
		QueueTime: prometheus.NewHistogramVec(prometheus.HistogramOpts{Namespace: ns, Subsystem: sub, Name: "queue_time_seconds",
			Help: "Time requests waited in the activator's flow control.", Buckets: latencyBuckets}, []string{"revision", "tier"}),
		TTFT: prometheus.NewHistogramVec(prometheus.HistogramOpts{Namespace: ns, Subsystem: sub, Name: "time_to_first_token_seconds",
			Help: "Time from arrival at the activator to the first streamed event.", Buckets: latencyBuckets}, []string{"revision", "tier"}),
		TPOT: prometheus.NewHistogramVec(prometheus.HistogramOpts{Namespace: ns, Subsystem: sub, Name: "time_per_output_token_seconds",
			Help: "Mean time per output token after the first.", Buckets: []float64{.005, .01, .02, .03, .04, .05, .075, .1, .15, .2, .3, .5, 1}}, []string{"revision", "tier"}),
		Tokens: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Subsystem: sub, Name: "tokens_total",
			Help: "Tokens by kind (prompt, completion, cached) as the endpoints reported them."}, []string{"revision", "kind"}),
		PredictedCached: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Subsystem: sub, Name: "predicted_cached_tokens_total",
			Help: "Prompt tokens the router predicted to be cached on the chosen endpoint (compare with tokens_total{kind=\"cached\"})."}, []string{"revision"}),
		DecisionTime: prometheus.NewHistogram(prometheus.HistogramOpts{Namespace: ns, Subsystem: sub, Name: "routing_decision_seconds",
			Help:    "Time to take a routing decision, tokenization and hashing included.",
			Buckets: []float64{1e-6, 5e-6, 1e-5, 2.5e-5, 5e-5, 1e-4, 2.5e-4, 5e-4, 1e-3, 5e-3}}),
		PDDecisions: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Subsystem: sub, Name: "pd_decisions_total",
			Help: "Prefill/decode decisions: disaggregated, decode_only, or fallback (prefill failed)."}, []string{"revision", "decision"}),
		Rejected: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Subsystem: sub, Name: "rejected_total",
			Help: "Requests refused by flow control, by reason (shed, queue_full, queue_timeout)."}, []string{"revision", "tier", "reason"}),
		ShedTime: prometheus.NewHistogramVec(prometheus.HistogramOpts{Namespace: ns, Subsystem: sub, Name: "shed_seconds",
			Help:    "Time from a request's arrival (its headers read) to flow control's refusal written (429 or 503), by tier and when it was decided: on arrival, or after queueing.",
			Buckets: []float64{.001, .0025, .005, .01, .025, .05, .075, .1, .25, .5, 1, 2.5, 5, 10, 30, 60}}, []string{"revision", "tier", "when"}),
		Retries: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Subsystem: sub, Name: "retries_total",
			Help: "Requests sent to another endpoint after a failure before the first byte."}, []string{"revision"}),
		Queued: prometheus.NewGaugeVec(prometheus.GaugeOpts{Namespace: ns, Subsystem: sub, Name: "queued_requests",
			Help: "Requests waiting in flow control."}, []string{"revision", "tier"}),
	}
	reg.MustRegister(m.Requests, m.QueueTime, m.TTFT, m.TPOT, m.Tokens, m.PredictedCached, m.DecisionTime,
		m.PDDecisions, m.Rejected, m.ShedTime, m.Retries, m.Queued)
	return m
}

// revMetrics are one revision's metric children, resolved once when the
// revision is created, so that a request does not look its labels up.
type revMetrics struct {
	tiers                                 map[string]*tierMetrics
	prompt, completion, cached, predicted prometheus.Counter
	retries                               prometheus.Counter
	disaggregated, decodeOnly, pdFallback prometheus.Counter
}

// tierMetrics are a revision's children for one SLO tier.
type tierMetrics struct {
	ok                    prometheus.Counter // requests_total with code 200
	queued                prometheus.Gauge
	queueTime, ttft, tpot prometheus.Observer
}

func (m *Metrics) forRevision(rev string, tiers []string) *revMetrics {
	r := &revMetrics{tiers: make(map[string]*tierMetrics, len(tiers)),
		prompt:        m.Tokens.WithLabelValues(rev, "prompt"),
		completion:    m.Tokens.WithLabelValues(rev, "completion"),
		cached:        m.Tokens.WithLabelValues(rev, "cached"),
		predicted:     m.PredictedCached.WithLabelValues(rev),
		retries:       m.Retries.WithLabelValues(rev),
		disaggregated: m.PDDecisions.WithLabelValues(rev, "disaggregated"),
		decodeOnly:    m.PDDecisions.WithLabelValues(rev, "decode_only"),
		pdFallback:    m.PDDecisions.WithLabelValues(rev, "fallback"),
	}
	for _, t := range tiers {
		r.tiers[t] = &tierMetrics{
			ok:        m.Requests.WithLabelValues(rev, t, "200"),
			queued:    m.Queued.WithLabelValues(rev, t),
			queueTime: m.QueueTime.WithLabelValues(rev, t),
			ttft:      m.TTFT.WithLabelValues(rev, t),
			tpot:      m.TPOT.WithLabelValues(rev, t),
		}
	}
	return r
}
