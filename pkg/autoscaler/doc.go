// Package autoscaler is the decider of the slo.autoscaling.llm-d.ai
// autoscaler class: given the load a revision sees (from the activator's
// statistics) and its pods' telemetry, it recommends prefill and decode
// replica counts (one count for a revision that is not disaggregated) that
// keep TTFT and TPOT under the revision's SLO targets.
//
// Capacity comes from load functions over the engine profile's roofline
// (pkg/engine): what one prefill replica sustains under the TTFT target at
// the target percentile (an M/D/1 queueing approximation, see
// PrefillCapacity) and what one decode replica sustains under the TPOT target
// given the mean context and KV capacity (see DecodeCapacity). A replica
// that is not disaggregated time-shares both, and its prefill chunks slow
// its decodes: ColocatedNeed is the replicas whose TPOT still meets the
// target at the percentile (see PredictColocatedTPOT). Load comes from
// finished requests and from arrivals, the earlier signal. A bounded
// correction factor per role, fitted online from observed against predicted
// step times, lets a wrong profile converge to the truth.
//
// Dynamics follow Knative's KPA (knative.dev/serving/pkg/autoscaler/scaling):
// stable and panic windows, panic threshold with no scale-down in panic, max
// scale-up and scale-down rates, scale-down delay, min/max per role, scale to
// zero after a grace period with no traffic, and Poke for scale from zero at
// the first buffered request.
//
// The package is pure: it must not depend on Kubernetes, HTTP, a clock,
// goroutines or global state. Time is passed in (Decider.Scale(now, in),
// Decider.Poke(now)), so the same code runs in a cluster, in the local
// runtime and in virtual time under pkg/plan. A Decider is not safe for
// concurrent use; its caller serializes calls.
package autoscaler
