package autoscaler

import (
	"math"
)

// BatchTier is the SLO tier of batch work (CloudEvents and the Batch API):
// the activator holds it while the pool is saturated and sheds it first.
const BatchTier = "batch"

// DefaultBatchMaxReplicas is llm-d.ai/batch-max-replicas' default.
const DefaultBatchMaxReplicas = 1

// BatchLoad is the batch tier's share of a Load: the same quantities as
// Load's totals, for batch work only (Load's totals include it). Its
// request and arrival rates are the BatchTier entries of Load's per-tier
// maps. A batch request promoted to a higher tier because its deadline
// would otherwise be missed counts in that tier, not here.
type BatchLoad struct {
	PromptTokensPerSecond          float64 `json:"promptTokensPerSecond,omitempty"`
	UncachedPrefillTokensPerSecond float64 `json:"uncachedPrefillTokensPerSecond,omitempty"`
	OutputTokensPerSecond          float64 `json:"outputTokensPerSecond,omitempty"`
	ArrivedPromptTokensPerSecond   float64 `json:"arrivedPromptTokensPerSecond,omitempty"`
	// Queued batch requests wait in the activator (held while the pool is
	// saturated); InFlight were dispatched and not finished.
	Queued   int `json:"queued,omitempty"`
	InFlight int `json:"inFlight,omitempty"`
}

// BatchCounters is the batch tier's share of a Snapshot's counters and
// gauges (pkg/activator.BatchStats, same JSON). Absent from activators that
// predate it: the decider then sees all load as interactive.
type BatchCounters struct {
	PromptTokens          int64 `json:"promptTokens"`
	CompletionTokens      int64 `json:"completionTokens"`
	UncachedPrefillTokens int64 `json:"uncachedPrefillTokens"`
	ArrivedPromptTokens   int64 `json:"arrivedPromptTokens"`
	InFlight              int   `json:"inFlight"`
	// Promoted counts batch requests moved to a higher tier because their
	// deadline was near (they count in that tier from then on).
	Promoted int64 `json:"promoted"`
}

// batchRates is the batch share of Rates(prev, cur, dt) over sec seconds;
// restarted is Rates' verdict on counters that went backwards.
func batchRates(prev, cur Snapshot, sec float64, restarted bool) BatchLoad {
	var b BatchLoad
	b.Queued = cur.QueuedByTier[BatchTier]
	if cur.Batch == nil {
		return b
	}
	b.InFlight = cur.Batch.InFlight
	if sec <= 0 {
		return b
	}
	var p BatchCounters
	if prev.Batch != nil && !restarted {
		p = *prev.Batch
	}
	c := cur.Batch
	if c.PromptTokens < p.PromptTokens || c.CompletionTokens < p.CompletionTokens ||
		c.UncachedPrefillTokens < p.UncachedPrefillTokens || c.ArrivedPromptTokens < p.ArrivedPromptTokens {
		p = BatchCounters{}
	}
	b.PromptTokensPerSecond = float64(c.PromptTokens-p.PromptTokens) / sec
	b.OutputTokensPerSecond = float64(c.CompletionTokens-p.CompletionTokens) / sec
	b.UncachedPrefillTokensPerSecond = float64(c.UncachedPrefillTokens-p.UncachedPrefillTokens) / sec
	b.ArrivedPromptTokensPerSecond = float64(c.ArrivedPromptTokens-p.ArrivedPromptTokens) / sec
	return b
}

// withBatchShare returns l with its batch share scaled by share in [0, 1]:
// 0 removes batch work from every rate and gauge, 1 returns l as it is.
func (l Load) withBatchShare(share float64) Load {
	if share >= 1 {
		return l
	}
	share = math.Max(share, 0)
	b := l.Batch
	cut := 1 - share
	sub := func(total, part float64) float64 { return math.Max(total-cut*part, 0) }
	subInt := func(total, part int) int {
		return max(total-part+int(math.Floor(share*float64(part))), 0)
	}
	scaleTier := func(m map[string]float64) map[string]float64 {
		if _, ok := m[BatchTier]; !ok {
			return m
		}
		out := make(map[string]float64, len(m))
		for t, v := range m {
			out[t] = v
		}
		if share == 0 {
			delete(out, BatchTier)
		} else {
			out[BatchTier] *= share
		}
		return out
	}
	l.RequestsPerSecond = scaleTier(l.RequestsPerSecond)
	l.ArrivalsPerSecond = scaleTier(l.ArrivalsPerSecond)
	l.PromptTokensPerSecond = sub(l.PromptTokensPerSecond, b.PromptTokensPerSecond)
	l.UncachedPrefillTokensPerSecond = sub(l.UncachedPrefillTokensPerSecond, b.UncachedPrefillTokensPerSecond)
	l.OutputTokensPerSecond = sub(l.OutputTokensPerSecond, b.OutputTokensPerSecond)
	l.ArrivedPromptTokensPerSecond = sub(l.ArrivedPromptTokensPerSecond, b.ArrivedPromptTokensPerSecond)
	l.Queued = subInt(l.Queued, b.Queued)
	l.InFlight = subInt(l.InFlight, b.InFlight)
	l.Batch = BatchLoad{
		PromptTokensPerSecond: share * b.PromptTokensPerSecond, UncachedPrefillTokensPerSecond: share * b.UncachedPrefillTokensPerSecond,
		OutputTokensPerSecond: share * b.OutputTokensPerSecond, ArrivedPromptTokensPerSecond: share * b.ArrivedPromptTokensPerSecond,
		Queued: int(math.Floor(share * float64(b.Queued))), InFlight: int(math.Floor(share * float64(b.InFlight))),
	}
	return l
}

// batchWork reports whether l carries any batch work.
func (l *Load) batchWork() bool {
	b := &l.Batch
	return l.RequestsPerSecond[BatchTier] > 0 || l.ArrivalsPerSecond[BatchTier] > 0 || b.Queued > 0 || b.InFlight > 0 ||
		b.PromptTokensPerSecond > 0 || b.OutputTokensPerSecond > 0 || b.ArrivedPromptTokensPerSecond > 0
}

// BatchShare is the fraction of the batch load that the decider counts
// this tick, so that batch work alone never asks for more than
// Config.BatchMaxReplicas replicas of a role (llm-d.ai/batch-max-replicas):
//
//   - 0 removes batch work from the load: with a budget of 0, or when the
//     interactive load alone already needs the budget or more (batch then
//     soaks what those replicas leave idle, held by the activator while
//     they are saturated, and adds none).
//   - Otherwise the share whose load, added to the interactive load, needs
//     the budget: need(interactive) + share x (need(all) - need(interactive))
//     = budget, capped at 1 (all of it when it fits); the smallest over the
//     roles of a disaggregated revision.
//
// need is the decider's own replica estimate without the colocated
// interference term (which is not linear in the rates): per role, the
// larger of the completion and arrival estimates (prefill tokens over a
// replica's prefill throughput; output tokens over its decode throughput,
// at least the concurrent sequences over the sequences it holds), plus the
// queued prompts drained within the TTFT target; a replica that is not
// disaggregated adds its prefill and decode fractions. A batch-only load at
// zero therefore wakes the revision only when the budget is at least 1,
// and batch backlog scales it up to the budget at most. Batch requests
// promoted because their deadline would otherwise be missed are not batch
// load any more (the activator counts them in the tier they were moved
// to): they count in full.
func (d *Decider) BatchShare(l *Load) float64 {
	if !l.batchWork() {
		return 1
	}
	budget := float64(d.cfg.BatchMaxReplicas)
	if budget <= 0 {
		return 0
	}
	inter := l.withBatchShare(0)
	ni, na := d.linearNeed(&inter), d.linearNeed(l)
	share := 1.0
	for r := range ni {
		switch {
		case na[r] <= budget || na[r] <= ni[r]:
		case ni[r] >= budget:
			return 0
		default:
			share = math.Min(share, (budget-ni[r])/(na[r]-ni[r]))
		}
	}
	return share
}

// linearNeed is BatchShare's replica estimate of a load, per role
// (rolePrefill, roleDecode); a revision that is not disaggregated has its
// one count in roleDecode.
func (d *Decider) linearNeed(l *Load) [2]float64 {
	var out [2]float64
	pc, dc := d.Capacity()
	if pc.TokensPerSecond <= 0 || dc.TokensPerSecond <= 0 || dc.Sequences <= 0 {
		return out
	}
	uncached := math.Max(d.prompt-d.cached, 1)
	concurrency := float64(l.InFlight+l.Queued) / (d.cfg.TargetUtilization * float64(dc.Sequences))
	backlog := float64(l.Queued) * uncached / d.cfg.SLO.TTFT.Seconds() / pc.TokensPerSecond
	donePrefill := l.UncachedPrefillTokensPerSecond / pc.TokensPerSecond
	doneDecode := math.Max(l.OutputTokensPerSecond/dc.TokensPerSecond, concurrency)
	arrPrefill := l.ArrivedPromptTokensPerSecond * uncached / math.Max(d.prompt, 1) / pc.TokensPerSecond
	arrDecode := math.Max(l.Arrivals()*d.output/dc.TokensPerSecond, concurrency)
	if d.cfg.Disaggregated {
		out[rolePrefill] = math.Max(donePrefill, arrPrefill) + backlog
		out[roleDecode] = math.Max(doneDecode, arrDecode)
	} else {
		out[roleDecode] = math.Max(donePrefill+doneDecode, arrPrefill+arrDecode) + backlog
	}
	for r, n := range out {
		if math.IsNaN(n) || n < 0 {
			n = 0
		}
		out[r] = math.Min(n, maxRequired)
	}
	return out
}

// capBatchOnly makes the budget exact when batch work is the only traffic
// this tick and was capped (BatchShare < 1): BatchShare's estimate is this
// tick's, while the decider averages over its windows and adds the
// backlog, so the two may round past the budget. A role then gets at most
// the budget, or the replicas it has ready (batch work never scales up
// past the budget; what interactive traffic brought stays as the windows
// decide), and never less than its minimum scale.
func (d *Decider) capBatchOnly(rec Recommendation, batchOnly bool, readyPrefill, readyDecode int) Recommendation {
	if !batchOnly {
		return rec
	}
	budget := d.cfg.BatchMaxReplicas
	capRole := func(n *int, ready int, b Bounds, role int) {
		if c := clampBounds(max(budget, ready), b); *n > c {
			*n = c
			d.roles[role].last = c
		}
	}
	capRole(&rec.Decode, readyDecode, d.cfg.Decode, roleDecode)
	rec.DecodeRole.Desired = rec.Decode
	if d.cfg.Disaggregated {
		capRole(&rec.Prefill, readyPrefill, d.cfg.Prefill, rolePrefill)
		rec.PrefillRole.Desired = rec.Prefill
	}
	return rec
}
