// Package workload produces the timed requests that llmd-kn's two measuring
// instruments replay: `kn-llmd bench` sends them to an endpoint in real time,
// and `kn-llmd plan` feeds them to a model of a deployment in virtual time.
// Both must see the same requests, so everything here is a pure function of
// its inputs: a trace file's bytes, a configuration and a seed.
//
// A Workload pairs a Dataset (what each request asks: prompt and output
// length) with an arrival process (when it arrives), then applies replay
// speed-up, rate scaling and truncation. Datasets are the Mooncake JSONL
// trace, the Azure LLM inference CSV trace, llm-d's shared-prefix generator
// (inference-perf's `shared_prefix`) and vLLM's `prefix_repetition` and
// `random` generators. Arrival processes are the trace's own timestamps,
// Poisson, constant rate, and rate ladders (Poisson within each step). A
// Spec, read from YAML or JSON, describes a workload for the CLI.
//
// Prompts are token ids in pkg/tokenizer's id space, drawn from its generated
// vocabulary (one common English word a token), so tokenizer.DecodeString
// gives text that tokenizer.Encode turns back into the same ids: a real-time
// client can send text and an endpoint using that tokenizer sees the prompt
// the planner uses (plus whatever BOS or chat template the endpoint adds).
// Prompt ids are made on demand (Request.AppendPrompt) from a few seeds held
// by the request, so iterating an hour of long-prompt trace holds no prompt
// in memory.
//
// Trace files are read and validated completely when a workload is opened: a
// malformed or unknown row is an error that names its line, never a row
// skipped, and iteration after that cannot fail.
//
// This package must not depend on a clock, on global mutable state, on
// goroutines, on HTTP or on Kubernetes; its only I/O is reading the trace
// file a caller names. Randomness comes from the seed it is given, through
// its own generator, so that a seed gives the same requests on every Go
// release.
package workload
