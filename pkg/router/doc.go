// Package router is the scheduling library of the activator: given a request
// (model, tier, prompt tokens and their KV block hashes) and a snapshot of
// endpoints, it decides which endpoint decodes the request, whether a
// separate prefill endpoint computes the prompt first, and why (the score of
// every plugin for every endpoint).
//
// It follows the Gateway API Inference Extension scheduling framework: a
// named profile is a list of filters, weighted scorers (each in [0, 1]), one
// picker and optionally a prefill/decode decider, configured from YAML (the
// ConfigMap config-llmd-router in a cluster, a file locally). The built-in
// profiles reproduce the peers we measure against (round-robin, Knative's
// least-request, llm-d's prefix-approx and kv-precise) next to our own
// cost-based default, which predicts each endpoint's time to first token.
//
// Two prefix indexes are shared by all profiles of a Router: the approximate
// index remembers which prompt blocks the router itself sent where (see
// Router.Record), the precise index mirrors the engines' KV events (see
// Router.Apply). Both map a block key to the set of endpoints holding it, so
// one pass over the request's blocks answers for every endpoint at once.
//
// The package is pure: it must not depend on HTTP, Kubernetes, a transport
// for KV events or the clock. Time never enters a decision, randomness comes
// from the seed given to New, and a Router holds no global state, so the
// activator (real time) and the planner (virtual time) run the same code. A
// Router is safe for concurrent use.
package router
