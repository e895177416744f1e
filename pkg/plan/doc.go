// Package plan is `kn-llmd plan`: a discrete-event model of a whole llmd-kn
// deployment that replays a workload in virtual time. It runs the real
// pieces, not copies: N pkg/engine engines (per role and profile), the real
// pkg/router with any routing profile, and the activator's request path as
// pkg/activator implements it in real time (metrics scraped on an interval,
// in-flight accounting, the P/D two-step, flow control), so that an hour of
// trace on a fleet of engines takes seconds and its results compare cell by
// cell with a real-time `kn-llmd bench` run of the same workload.
//
// # The model
//
// One event queue (container/heap) orders, in virtual time: workload
// arrivals, engine step completions, KV-event deliveries, metric scrapes,
// the scaler's ticks, and the activator's timers (flow-control queue
// deadlines and client timeouts). Events at the same instant run in a fixed
// order (step completions, KV events, engine starts, scrapes, sends,
// arrivals, timers, scaler ticks, and last the engine kicks), then by
// insertion, so a seed gives the same run on every machine.
//
// Engines. Each engine is stepped whenever it is idle and has work: a step
// starting at t is computed at once (engine.Step) and its outputs are
// delivered at t+Duration, when the next step starts. An idle engine whose
// only work is a KV transfer in flight sleeps until the transfer completes.
//
// The activator, per request, as pkg/activator does it:
//
//   - Flow control (optional, on by default with the standard tier's
//     limits): a request is admitted while llm-d's pool saturation
//     (mean over decode-capable engines of max(waiting/5, kv/0.8), with
//     requests admitted but not yet visible in the metrics counted as
//     waiting) is under MaxSaturation; otherwise it waits in a FIFO,
//     re-examined on every scrape and every finished request, and is
//     refused with 503 after MaxQueueTime.
//   - Routing: router.Scheduler.Decide over a snapshot of the engines. The
//     scraped fields (waiting, running, KV usage) are as of the engine's
//     last scrape, every ScrapeInterval (50 ms) with each engine on its own
//     phase, and every 4th such tick while the engine is quiet (its last
//     scrape showed nothing running or waiting and nothing is in flight to
//     it); in-flight requests and in-flight prefill tokens are the
//     activator's own live counts, kept exactly as it keeps them (a P/D
//     request counts on its prefill engine during prefill and on its
//     decode engine from the moment the decode request is sent; its
//     uncached prompt tokens count until its first token).
//   - Router.Record when the (decode) request is sent; KV events of every
//     engine step reach Router.Apply KVEventDelay after the step ends
//     (5 ms by default: ZMQ and the subscriber are not instantaneous).
//     KV events are built only when the routing profile reads the precise
//     index.
//   - P/D: when the decision disaggregates, the prefill engine computes the
//     prompt with one output token and holds the blocks; the decode engine
//     then gets the request with RemotePrefill and pays the KV transfer of
//     what it does not cache itself; the prefill engine's blocks are
//     released at the decode engine's first token. A prefill the engine
//     refuses falls back to decode only, as the activator does.
//   - Every request-carrying hop (activator to engine) costs Overhead.
//
// What a client observes is what goes into each bench.Record: the first
// token arrives at the end of the step that produced it, every later token
// likewise; TTFT, inter-token gaps, E2E, prompt, completion and cached
// tokens (the engine's prefix hits; for a disaggregated request the prefill
// engine's, as the activator reports them). Records are summarized by
// bench.Summarize and written by bench.WriteReport, the same code `kn-llmd
// bench` uses.
//
// What is not modelled: HTTP and SSE costs beyond the Overhead constant,
// retries (engines do not fail), SLO tiers other than one (every request is
// in the standard tier), and vLLM's own admission limits beyond the
// engine model's.
//
// Replica counts come from a Scaler asked every ScaleInterval; Fixed keeps
// the configured counts. New engines become ready after StartupDelay and
// their first scrape; engines scaled away stop taking requests at once and
// leave when their work is done. SLOScaler drives the counts from the SLO
// autoscaler's decider (pkg/autoscaler): the Observation carries what the
// activator's statistics and the pods' metrics would give it (token
// counters of finished requests, queue, per-engine step telemetry), and a
// Scaler that is a Poker is poked, with its answer applied at once, when
// flow control queues a request while no decode-capable engine is ready.
// Result.Replicas is the replica counts over time and Stats.ReplicaSeconds
// the provisioned engine time (startup included), the run's GPU cost.
//
// Capacity questions (Sweep, FindCapacity) run the model repeatedly over
// replica counts.
//
// The package is pure: it reads no clock, starts no goroutine and does no
// I/O beyond WriteCapacity writing the files its caller names (workloads
// come opened, reports are written with pkg/bench). It must not depend on
// HTTP, Kubernetes or pkg/activator: it reproduces the activator's
// accounting rather than importing its HTTP-bound code, and a change there
// must be mirrored here.
package plan
