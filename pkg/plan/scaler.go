package plan

import (
	"time"

	"github.com/llmd-kn/llmd-kn/pkg/router"
)

// Replicas is a replica count per role. Decode counts the decode-capable
// engines: role both without P/D, role decode with it.
type Replicas struct {
	Prefill int `json:"prefill"`
	Decode  int `json:"decode"`
}

// Total is Prefill + Decode.
func (r Replicas) Total() int { return r.Prefill + r.Decode }

func (r Replicas) String() string {
	if r.Prefill == 0 {
		return itoa(r.Decode)
	}
	return itoa(r.Prefill) + "P+" + itoa(r.Decode) + "D"
}

// Observation is what the planner shows a Scaler at each tick: the
// deployment's state and the traffic so far, as an autoscaler would see
// it from the activator's statistics and the engines' metrics.
type Observation struct {
	Now time.Duration
	// Ready engines take requests; Starting ones were asked for and are
	// not up yet.
	Ready, Starting Replicas
	// Queued requests wait in the activator's flow control; InFlight were
	// dispatched and have not finished.
	Queued, InFlight int
	// QueueTime is how long the oldest queued request has waited.
	QueueTime time.Duration
	// Arrived, Finished and Failed count requests since the start;
	// ArrivedPromptTokens sums the arrived requests' prompt lengths, as the
	// activator counts them at arrival.
	Arrived, Finished, Failed int
	ArrivedPromptTokens       int64
	// Active counts the requests the activator holds (queued or in
	// flight, from arrival to the end of the answer), and
	// ConcurrencySeconds integrates Active over time since the start: what
	// Knative's activator reports as concurrency, averaged over any
	// interval by differencing.
	Active             int
	ConcurrencySeconds float64
	// PromptTokens, CachedTokens (prefix hits, at most the prompt) and
	// CompletionTokens sum over the finished requests since the start, as
	// the activator counts them from the answers' usage.
	PromptTokens, CachedTokens, CompletionTokens int64
	// Engines are the ready engines' last scraped metrics.
	Engines []EngineMetrics
	// Batch is the batch tier's share of the counts above (included in
	// them), as the activator reports it apart (Config.Batch).
	Batch BatchObservation
}

// BatchObservation is the batch tier's share of an Observation.
type BatchObservation struct {
	Queued, InFlight                             int
	Arrived, Finished, Failed                    int
	ArrivedPromptTokens                          int64
	PromptTokens, CachedTokens, CompletionTokens int64
}

// EngineMetrics is one engine's scraped state.
type EngineMetrics struct {
	ID               string
	Role             router.Role
	Waiting, Running int
	KVUsage          float64
	// InFlight is the activator's count of requests sent to the engine.
	InFlight int
	// Step telemetry since the engine started, as vLLM's step histograms
	// give it: PrefillTokens computed in PrefillTime by the steps that
	// filled at least half the token budget (throughput while prefilling),
	// and DecodeSteps pure decode steps of DecodeSeqs sequences in all,
	// taking DecodeTime.
	PrefillTokens           int64
	PrefillTime             time.Duration
	DecodeSteps, DecodeSeqs int64
	DecodeTime              time.Duration
}

// Scaler decides the desired replica counts. The planner calls Scale every
// Config.ScaleInterval of virtual time; the Observation is valid only
// during the call. An autoscaler's decider is a Scaler.
type Scaler interface {
	Scale(obs *Observation) Replicas
}

// Poker is a Scaler that also takes the activator's scale-from-zero
// signal: the planner calls Poke, and applies its answer at once, when a
// request arrives while no decode-capable engine is ready, rather than
// waiting for the next tick.
type Poker interface {
	Scaler
	Poke(obs *Observation) Replicas
}

// Fixed is a Scaler that always wants the same counts.
type Fixed Replicas

// Scale returns the fixed counts.
func (f Fixed) Scale(*Observation) Replicas { return Replicas(f) }

// ScalerFunc adapts a function to Scaler.
type ScalerFunc func(obs *Observation) Replicas

// Scale calls f.
func (f ScalerFunc) Scale(obs *Observation) Replicas { return f(obs) }
