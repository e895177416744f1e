// Package bench is llmd-kn's real-time load generator and the report format
// shared by both measuring instruments: `kn-llmd bench` drives an
// OpenAI-compatible endpoint (the simulator, the local runtime, a cluster,
// a real vLLM) with a pkg/workload workload, and `kn-llmd plan` replays the
// same workload through a model of a deployment in virtual time. Both turn
// per-request Records into a RunSummary with the pure function Summarize,
// and write summary.json, SVG charts and report.md with WriteReport, so a
// real-time run and a virtual-time run of one workload compare cell by
// cell.
//
// # The driver
//
// Run is open loop: request i is sent at its scheduled time whether or not
// earlier ones have finished, each on its own goroutine, so a slow server
// does not slow the offered load; the generator's own lateness (actual
// minus scheduled send time) is recorded for every request and reported.
// MaxConcurrency, when set, holds requests back (the wait shows as
// lateness); HardCap (10,000 by default) is a safety bound past which
// requests are dropped and counted as ErrDropped, never silently lost.
//
// Every request streams: `"stream": true`, `"stream_options":
// {"include_usage": true}`, `"max_tokens"` (chat: `"max_completion_tokens"`)
// from the workload, and vLLM's `"ignore_eos": true` unless disabled. The
// prompt goes to /v1/completions as token ids by default (exact lengths on
// any tokenizer), as text decoded by pkg/tokenizer on request, or as one
// user message to /v1/chat/completions.
//
// Measurements, per request, from the moment just before the request is
// written:
//
//   - TTFT: to the first event carrying generated text. A chat stream's
//     role-only first chunk and empty-text chunks do not count.
//   - ITL: the gaps between successive content events. A server that puts
//     several tokens in one event gives one gap for them (as vLLM's own
//     benchmark counts).
//   - E2E: to `data: [DONE]`.
//   - TPOT: (E2E − TTFT) / (completion tokens − 1), for two or more tokens.
//   - Tokens: prompt, completion and cached
//     (prompt_tokens_details.cached_tokens) from the usage chunk. Without
//     one, the requested prompt length and the number of content events
//     stand in.
//   - Errors by kind (ErrorKind): HTTP 4xx / 5xx / other (with the exact
//     status counted too), connection, timeout, stream cut before [DONE],
//     error event in the stream, protocol (not an event stream), canceled,
//     dropped.
//
// The generator stays out of the way of what it measures. Request bodies
// are rendered ahead of their due time by a goroutine of their own (a
// 7,000-token prompt takes 0.1–0.3 ms), so at the due time only the send
// remains. The stream path works on bytes: the SSE scanner cuts lines in a
// reused buffer, events are classified by looking for a few keys, and only
// the usage object (once per request) and error events go through
// encoding/json. BenchmarkDriverStreams and BenchmarkDriverPaced2000
// measure, on one core shared with a loopback server, the most chunks per
// second and the share of the core that 200 streams at 2,000 chunks/s take.
//
// # summary.json, schema version 1
//
// The file is a Summary: {"schemaVersion": 1, "runs": [RunSummary...]}.
// Fields are only added within a version; a field that changes meaning or
// goes away bumps SchemaVersion. All durations are seconds (float), all
// rates per second, all counts integers. A run has:
//
//	name                 run name, unique within the file
//	mode                 "real-time" (bench) or "virtual-time" (plan)
//	target               URL driven, or the modelled deployment
//	model                model name sent
//	workload             {description: one line, spec: the pkg/workload Spec as JSON}
//	settings             free-form strings (api, prompt format, caps, router profile...)
//	start                RFC 3339 start of the run (absent when unknown)
//	durationSeconds      time 0 to the end of the last request; the denominator of every rate
//	interrupted          true if the run was stopped early
//	slo                  {ttftSeconds, tpotSeconds}; 0 = no target
//	requests             {total, sent, completed, failed, dropped,
//	                      errors: {kind: count}, byStatus: {"503": count}, withoutUsage}
//	                     total = sent + dropped; sent = completed + failed
//	tokens               {prompt, completion, cached, cacheHitRate = cached/prompt}, completed requests
//	latencySeconds       {ttft, tpot, itl, e2e, lateness, queue?}, each a Dist:
//	                     {count, mean, min, p50, p90, p99, max}; percentiles interpolate
//	                     linearly between ranks (NumPy default). ttft/tpot/itl/e2e over
//	                     completed requests; lateness over sent ones; queue only when the
//	                     records know server queue time (plan)
//	throughput           {offeredRequestsPerSecond ((total − 1) / span of scheduled times),
//	                     requestsPerSecond (completed / duration), outputTokensPerSecond,
//	                     totalTokensPerSecond (prompt + output)}
//	sloAttainment        fraction of ALL requests (failed and dropped count as misses) that
//	                     completed with TTFT ≤ target and TPOT ≤ target (a request with one
//	                     output token meets any TPOT target); null without targets
//	goodput              {requests, requestsPerSecond, outputTokensPerSecond} of the requests
//	                     meeting the SLO; null without targets
//	concurrency          {max, mean} requests in flight (mean = Σ E2E / duration)
//	ttftCDF              201 points {q, seconds}: the TTFT quantile at q = 0, 0.005, ... 1
//	bucketSeconds        width of timeSeries buckets (1 s unless the run needs > 20,000);
//	                     the last bucket ends with the run, so may be narrower
//	timeSeries           [{t (bucket start), offeredRate (scheduled req/s), completed, failed,
//	                     outputTokens (arrived in the bucket), ttftP50, ttftP90, e2eP50
//	                     (requests sent in the bucket; null if none)}]
//	ladder               per step of a rate ladder: {startSeconds, durationSeconds, rate
//	                     (configured), offeredRate (measured), requestsPerSecond and
//	                     outputTokensPerSecond (delivered within the step), ttft, tpot (Dist,
//	                     requests scheduled in the step), sloAttainment, goodputRequestsPerSecond}
//	errorExamples        {kind: first error message of that kind}
//
// # Dependencies
//
// Summarize and the report writer have no clock, no goroutines and no
// network: they are what `kn-llmd plan` shares. The driver uses net/http
// and the wall clock. This package imports pkg/workload and pkg/tokenizer
// only; it must not depend on the router, the engine model, the activator
// or Kubernetes, so that it measures any endpoint the same way.
package bench
