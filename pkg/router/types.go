package router

import (
	"fmt"
	"math"
	"strings"

	"github.com/llmd-kn/llmd-kn/pkg/engine"
	"github.com/llmd-kn/llmd-kn/pkg/kvblock"
)

// Role is the part of a request an endpoint serves: the engine model's roles.
type Role = engine.Role

const (
	// RoleBoth serves prefill and decode (an ordinary vLLM).
	RoleBoth = engine.RoleBoth
	// RolePrefill computes prompts for decode endpoints.
	RolePrefill = engine.RolePrefill
	// RoleDecode generates from KV computed locally or by a prefill endpoint.
	RoleDecode = engine.RoleDecode
)

// ParseRole parses "prefill", "decode" or "both" (an empty role is an
// error here, unlike in the engine's flags).
func ParseRole(s string) (Role, error) {
	if s == "" {
		return 0, fmt.Errorf("empty role (want prefill, decode or both)")
	}
	return engine.ParseRole(s)
}

// Request is what the router knows of one request.
type Request struct {
	Model string
	// Tier is the SLO tier; no built-in plugin reads it yet.
	Tier string
	// Tokens is the tokenized prompt.
	Tokens []uint32
	// BlockHashes are the prompt's block keys: kvblock.Hasher at the
	// precise index's block size and hash seed (Config.PreciseIndex), the
	// router's own keys, unrelated to any engine's hashes. When empty, the
	// router computes them from Tokens; a caller that already has them
	// saves that cost.
	BlockHashes []uint64
	// HashCache, when set (and BlockHashes is empty), computes the block
	// hashes, reusing those of a cached prompt this one extends (a
	// conversation's earlier turns): see Router.NewHashCache. The caller
	// keeps it (one per Router) and must not modify Tokens afterwards: the
	// cache keeps a reference to them.
	HashCache *kvblock.HashCache
	// ExpectedOutput is the expected number of output tokens, 0 if unknown;
	// no built-in plugin reads it yet.
	ExpectedOutput int
	// LoRA is the adapter the request runs under ("" the base model): its
	// blocks are those KV events and storage manifests name with that
	// adapter, never the base model's or another adapter's.
	LoRA string
	// CacheSalt is vLLM's cache_salt: the engine's prefix cache keeps a
	// salted request's blocks apart from every other salt's (and the
	// unsalted). KV events and manifests do not say a block's salt, so a
	// salted request matches none of them: it is predicted cached only by
	// the router's own record of where this salt's prompts went (the
	// approximate index). HashCache is not used for it.
	CacheSalt string
}

// promptTokens is the prompt length, from the tokens or, failing them, the
// full blocks.
func (r *Request) promptTokens(blockSize int) int {
	return max(len(r.Tokens), len(r.BlockHashes)*blockSize)
}

// Endpoint is a snapshot of one engine as the caller sees it.
type Endpoint struct {
	// ID identifies the endpoint across snapshots and in the indexes (for
	// example the pod name); Address is where to send requests.
	ID, Address string
	Role        Role
	Ready       bool
	// Stale marks metrics older than the caller's staleness bound: the
	// scraped fields (Waiting, Running, KVUsage) are then unknown, not idle.
	Stale bool
	// Waiting and Running are vLLM's num_requests_waiting and
	// num_requests_running; KVUsage is kv_cache_usage_perc in [0, 1].
	Waiting, Running int
	KVUsage          float64
	// BlockSize and NumBlocks are from vllm:cache_config_info (0: unknown).
	BlockSize, NumBlocks int
	// InFlight counts requests the caller sent that have not finished.
	// InFlightTokens counts the prompt tokens still to be prefilled for
	// them: the uncached tokens of requests sent that have not produced a
	// first token (Decision.PromptTokens - Decision.PrefixHitTokens at
	// routing time is a good estimate).
	InFlight, InFlightTokens int
	// Rates feed the ttft-cost scorer; zero fields take the scorer's
	// engine profile (see RatesFromProfile).
	Rates Rates
}

// Rates are an engine's speeds, as the ttft-cost scorer models them.
type Rates struct {
	// PrefillTokensPerSecond is the compute-bound prefill throughput of the
	// dense part of the model (2·params FLOPs per token).
	PrefillTokensPerSecond float64
	// AttentionSecondsPerTokenPair is the extra prefill time per (new
	// token, context token) pair: attention's quadratic part.
	AttentionSecondsPerTokenPair float64
	// StepSeconds is the duration of one engine step at the current batch
	// (the inter-token latency); no step is shorter.
	StepSeconds float64
	// MaxBatchedTokens is the per-step token budget
	// (vLLM's max_num_batched_tokens).
	MaxBatchedTokens int
	// KVTransferTokensPerSecond is how fast prompt KV moves from a prefill
	// endpoint to a decode endpoint; 0 means transfer is free.
	KVTransferTokensPerSecond float64
}

// PluginScores are one scorer's scores for every endpoint of a snapshot.
type PluginScores struct {
	Plugin string
	Weight float64
	// Values is indexed like the endpoints given to Decide; NaN marks an
	// endpoint that did not reach the scorers (filtered out).
	Values []float64
}

// Decision is the outcome of Scheduler.Decide. A Decision can be reused
// across calls (its slices are recycled), which makes steady-state decisions
// allocation-free; it must not be shared by concurrent calls.
type Decision struct {
	Profile string
	// Decode is the index of the chosen endpoint in the snapshot.
	Decode   int
	DecodeID string
	// Prefill is the index of the prefill endpoint, -1 for decode-only.
	Prefill   int
	PrefillID string
	// Disaggregated is Prefill >= 0.
	Disaggregated bool
	PromptTokens  int
	// PrefixHitTokens is the predicted number of prompt tokens already
	// cached on the decode endpoint (precise index where it has data for
	// the endpoint, else the approximate one), -1 when the profile did not
	// look at prefixes. PrefillHitTokens is the same for the prefill
	// endpoint.
	PrefixHitTokens  int
	PrefillHitTokens int
	// PreciseHitTokens and ApproxHitTokens are each index's prediction for
	// the decode endpoint, -1 where the profile does not read that index
	// (or, for the precise one, it has no data for the endpoint). Pass them
	// to Router.Observe with the engine's answer.
	PreciseHitTokens, ApproxHitTokens int
	// PredictedTTFT is the ttft-cost prediction for the decode endpoint in
	// seconds (decode-only path), 0 when the profile does not use it.
	PredictedTTFT float64
	// Candidates are the endpoints that passed the decode profile's filters.
	Candidates []int
	// Scores and Totals explain the decode choice: one entry per scorer and
	// the weighted sum per endpoint (NaN where filtered out).
	Scores []PluginScores
	Totals []float64
	// PrefillScores and PrefillTotals explain the prefill choice.
	PrefillScores []PluginScores
	PrefillTotals []float64

	// Kept for Router.Record.
	approxKeys            []uint64
	preciseHashes         []uint64
	decodeCap, prefillCap int
	recordApprox          bool
}

// BlockHashes are the prompt's block hashes the decision used (empty when
// its profile needed none), valid until d is reused: a caller that decides
// again for the same request (a retry) passes a copy as
// Request.BlockHashes instead of having the prompt hashed again.
func (d *Decision) BlockHashes() []uint64 { return d.preciseHashes }

func (d *Decision) reset(profile string) {
	d.Profile = profile
	d.Decode, d.DecodeID = -1, ""
	d.Prefill, d.PrefillID = -1, ""
	d.Disaggregated = false
	d.PromptTokens, d.PrefixHitTokens, d.PrefillHitTokens = 0, -1, -1
	d.PreciseHitTokens, d.ApproxHitTokens = -1, -1
	d.PredictedTTFT = 0
	d.Candidates = d.Candidates[:0]
	d.Scores, d.Totals = d.Scores[:0], d.Totals[:0]
	d.PrefillScores, d.PrefillTotals = d.PrefillScores[:0], d.PrefillTotals[:0]
	d.approxKeys = d.approxKeys[:0]
	d.preciseHashes = d.preciseHashes[:0]
	d.decodeCap, d.prefillCap = 0, 0
	d.recordApprox = false
}

// Explain describes the decision in one line for a debug header: the chosen
// endpoint(s) and, for the decode choice, the best top endpoints with their
// weighted totals and per-plugin scores. eps must be the snapshot given to
// Decide.
func (d *Decision) Explain(eps []Endpoint, top int) string {
	var b strings.Builder
	fmt.Fprintf(&b, "profile=%s decode=%s", d.Profile, d.DecodeID)
	if d.Disaggregated {
		fmt.Fprintf(&b, " prefill=%s", d.PrefillID)
	}
	if d.PrefixHitTokens >= 0 {
		fmt.Fprintf(&b, " cached=%d/%d", d.PrefixHitTokens, d.PromptTokens)
	}
	order := append([]int(nil), d.Candidates...)
	// Insertion sort by total, highest first: top is small and so is the
	// candidate list of a debug request.
	for i := 1; i < len(order); i++ {
		for j := i; j > 0 && d.Totals[order[j]] > d.Totals[order[j-1]]; j-- {
			order[j], order[j-1] = order[j-1], order[j]
		}
	}
	for k, i := range order {
		if k == top {
			break
		}
		fmt.Fprintf(&b, "; %s=%.3f", eps[i].ID, d.Totals[i])
		for _, s := range d.Scores {
			if v := s.Values[i]; !math.IsNaN(v) {
				fmt.Fprintf(&b, " %s:%.2f", s.Plugin, v)
			}
		}
	}
	return b.String()
}
