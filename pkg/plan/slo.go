package plan

import (
	"time"

	"github.com/llmd-kn/llmd-kn/pkg/autoscaler"
	"github.com/llmd-kn/llmd-kn/pkg/engine"
	"github.com/llmd-kn/llmd-kn/pkg/router"
)

// SLOScaler drives the planner's replica counts from the SLO autoscaler's
// decider (pkg/autoscaler): every tick it turns the Observation into the
// decider's Input, as the activator's statistics and the pods' metrics
// would give it (rates over the last tick, per-role pod telemetry), and
// returns the recommendation; Poke forwards the activator's
// scale-from-zero signal. Advisory recommendations are recorded but not
// acted on: the counts stay as they are.
//
// An SLOScaler holds the decider's state and the previous tick's counters:
// use a new one for every run.
type SLOScaler struct {
	d    *autoscaler.Decider
	base time.Time

	prev     Observation
	prevAt   time.Duration
	havePrev bool
	prevEng  map[string]EngineMetrics

	// Decisions are the recommendations in order, pokes included.
	Decisions []autoscaler.Recommendation
}

// NewSLOScaler returns a Scaler (and Poker) around a new decider for
// engines of profile prof.
func NewSLOScaler(cfg autoscaler.Config, prof engine.Profile) (*SLOScaler, error) {
	d, err := autoscaler.New(cfg, prof)
	if err != nil {
		return nil, err
	}
	return &SLOScaler{d: d, base: time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC), prevEng: map[string]EngineMetrics{}}, nil
}

// Decider returns the decider the scaler drives.
func (s *SLOScaler) Decider() *autoscaler.Decider { return s.d }

// Scale feeds the decider one tick.
func (s *SLOScaler) Scale(obs *Observation) Replicas {
	rec := s.d.Scale(s.base.Add(obs.Now), s.Input(obs))
	return s.answer(obs, rec)
}

// Poke forwards the scale-from-zero signal.
func (s *SLOScaler) Poke(obs *Observation) Replicas {
	return s.answer(obs, s.d.Poke(s.base.Add(obs.Now)))
}

func (s *SLOScaler) answer(obs *Observation, rec autoscaler.Recommendation) Replicas {
	s.Decisions = append(s.Decisions, rec)
	if rec.Advisory {
		return Replicas{Prefill: obs.Ready.Prefill + obs.Starting.Prefill, Decode: obs.Ready.Decode + obs.Starting.Decode}
	}
	return Replicas{Prefill: rec.Prefill, Decode: rec.Decode}
}

// Input is the decider's input for obs: rates since the previous call of
// Input (none on the first), gauges as observed. It advances the scaler's
// counters.
func (s *SLOScaler) Input(obs *Observation) autoscaler.Input {
	var in autoscaler.Input
	l := &in.Load
	l.Queued, l.QueueTime, l.InFlight = obs.Queued, obs.QueueTime, obs.InFlight
	l.Batch.Queued, l.Batch.InFlight = obs.Batch.Queued, obs.Batch.InFlight
	if dt := (obs.Now - s.prevAt).Seconds(); s.havePrev && dt > 0 {
		p := &s.prev
		done := (obs.Finished + obs.Failed) - (p.Finished + p.Failed)
		ok := obs.Finished - p.Finished
		prompt := float64(obs.PromptTokens - p.PromptTokens)
		cached := float64(obs.CachedTokens - p.CachedTokens)
		out := float64(obs.CompletionTokens - p.CompletionTokens)
		b, pb := &obs.Batch, &p.Batch
		batchDone := (b.Finished + b.Failed) - (pb.Finished + pb.Failed)
		if done > 0 {
			l.RequestsPerSecond = map[string]float64{"standard": float64(done-batchDone) / dt}
			if batchDone > 0 {
				l.RequestsPerSecond[autoscaler.BatchTier] = float64(batchDone) / dt
			}
		}
		if arrived := obs.Arrived - p.Arrived; arrived > 0 {
			batchArrived := b.Arrived - pb.Arrived
			l.ArrivalsPerSecond = map[string]float64{"standard": float64(arrived-batchArrived) / dt}
			if batchArrived > 0 {
				l.ArrivalsPerSecond[autoscaler.BatchTier] = float64(batchArrived) / dt
			}
		}
		// The batch tier's share, as the activator reports it apart.
		l.Batch.PromptTokensPerSecond = float64(b.PromptTokens-pb.PromptTokens) / dt
		l.Batch.UncachedPrefillTokensPerSecond = float64((b.PromptTokens-pb.PromptTokens)-(b.CachedTokens-pb.CachedTokens)) / dt
		l.Batch.OutputTokensPerSecond = float64(b.CompletionTokens-pb.CompletionTokens) / dt
		l.Batch.ArrivedPromptTokensPerSecond = float64(b.ArrivedPromptTokens-pb.ArrivedPromptTokens) / dt
		l.ArrivedPromptTokensPerSecond = float64(obs.ArrivedPromptTokens-p.ArrivedPromptTokens) / dt
		l.PromptTokensPerSecond = prompt / dt
		l.UncachedPrefillTokensPerSecond = (prompt - cached) / dt
		l.OutputTokensPerSecond = out / dt
		if ok > 0 {
			l.MeanPromptTokens = prompt / float64(ok)
			l.MeanCachedTokens = cached / float64(ok)
			l.MeanOutputTokens = out / float64(ok)
		}
	}

	// Pod telemetry per role, over this tick's steps.
	var pf, dc roleAcc
	for i := range obs.Engines {
		e := &obs.Engines[i]
		acc := &dc
		if e.Role == router.RolePrefill {
			acc = &pf
		}
		prev := s.prevEng[e.ID]
		acc.add(e, &prev)
	}
	in.Pods.Prefill, in.Pods.Decode = pf.telemetry(), dc.telemetry()

	s.prev = *obs
	s.prev.Engines = nil
	s.prevAt, s.havePrev = obs.Now, true
	clear(s.prevEng)
	for _, e := range obs.Engines {
		s.prevEng[e.ID] = e
	}
	return in
}

// roleAcc aggregates one role's engines for Telemetry.
type roleAcc struct {
	t                       autoscaler.Telemetry
	kv                      float64
	prefillTokens           int64
	prefillTime, decodeTime time.Duration
	decodeSteps, decodeSeqs int64
}

func (a *roleAcc) add(e, prev *EngineMetrics) {
	a.t.Ready++
	a.t.Running += e.Running
	a.t.Waiting += e.Waiting
	a.kv += e.KVUsage
	a.prefillTokens += e.PrefillTokens - prev.PrefillTokens
	a.prefillTime += e.PrefillTime - prev.PrefillTime
	a.decodeSteps += e.DecodeSteps - prev.DecodeSteps
	a.decodeSeqs += e.DecodeSeqs - prev.DecodeSeqs
	a.decodeTime += e.DecodeTime - prev.DecodeTime
}

func (a *roleAcc) telemetry() autoscaler.Telemetry {
	t := a.t
	if t.Ready == 0 {
		return t
	}
	t.KVUsage = a.kv / float64(t.Ready)
	if a.prefillTime > 0 && a.prefillTokens > 0 {
		t.PrefillTokensPerSecond = float64(a.prefillTokens) / a.prefillTime.Seconds()
	}
	if a.decodeSteps > 0 && a.decodeTime > 0 {
		t.DecodeStepTime = a.decodeTime / time.Duration(a.decodeSteps)
		t.DecodeBatch = float64(a.decodeSeqs) / float64(a.decodeSteps)
	}
	return t
}

// AutoscalerConfig is the decider's default configuration for the
// deployment c describes: its tick is c.ScaleInterval, its batch limits the
// engines', and each role between lo and hi replicas (a Bounds MaxScale of
// 0 is unbounded). Prefill bounds apply only when c runs P/D.
func (c *Config) AutoscalerConfig(lo, hi Replicas) autoscaler.Config {
	a := autoscaler.DefaultConfig()
	a.TickInterval = c.ScaleInterval
	if a.StableWindow < a.TickInterval {
		a.StableWindow = a.TickInterval
	}
	if c.Engine.MaxNumSeqs > 0 {
		a.MaxNumSeqs = c.Engine.MaxNumSeqs
	}
	a.MaxNumBatchedTokens = c.budget()
	a.PrefillMaxNumBatchedTokens = c.Engine.PrefillMaxNumBatchedTokens
	a.Decode = autoscaler.Bounds{MinScale: lo.Decode, MaxScale: hi.Decode}
	if c.pd() {
		a.Disaggregated = true
		a.Prefill = autoscaler.Bounds{MinScale: lo.Prefill, MaxScale: hi.Prefill}
	}
	return a
}

// budget is the engines' per-step token budget.
func (c *Config) budget() int {
	if b := c.Engine.MaxNumBatchedTokens; b > 0 {
		return b
	}
	return 8192
}
