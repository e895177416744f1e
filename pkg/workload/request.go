package workload

import (
	"slices"
	"time"

	"github.com/llmd-kn/llmd-kn/pkg/tokenizer"
)

// Request is one timed request of a workload. It is a small value: the prompt
// is not stored but made on demand from seeds (AppendPrompt), so a consumer
// that replays thousands of long prompts holds only the ones in flight.
type Request struct {
	// Index is the request's position in its workload, from 0.
	Index int
	// At is the arrival time, as an offset from the start of the workload.
	// It never decreases from one request to the next.
	At time.Duration
	// PromptLen is the number of prompt token ids AppendPrompt produces.
	PromptLen int
	// MaxTokens is the output length. Benchmarks send it with ignore_eos, so
	// it is the number of tokens generated.
	MaxTokens int
	// Group names the shared prefix the prompt starts with: the group of
	// shared-prefix, the prefix of prefix-repetition, 0 for the Azure and
	// random datasets when they prepend a shared prefix. It is -1 when the
	// dataset has no notion of groups (Mooncake: sharing is in the blocks).
	Group int
	// Item is the dataset entry the request was made from: the 0-based row
	// of a trace (in file order) or the index of a generated prompt. Two
	// requests of one dataset with equal Item have equal prompts.
	Item int

	prompt promptPlan
}

// promptPlan describes prompt token ids without holding them: first the
// Mooncake blocks (hash ids, MooncakeBlockTokens each, the last one cut to
// fit PromptLen), then up to two generated segments (for example a shared
// system prompt and a per-request question), or literal ids.
type promptPlan struct {
	blocks  []int64
	segs    [2]segment
	literal []uint32
}

// segment is n token ids from the deterministic stream of one seed. Equal
// seeds give equal ids, so a seed shared between requests is a shared prefix.
type segment struct {
	seed uint64
	n    int
}

// NewRequest returns a request whose prompt is the given token ids, for
// callers that build workloads of their own (tests, recorded traffic). The
// request keeps prompt; the caller must not modify it afterwards.
func NewRequest(index int, at time.Duration, prompt []uint32, maxTokens int) Request {
	return Request{
		Index:     index,
		At:        at,
		PromptLen: len(prompt),
		MaxTokens: maxTokens,
		Group:     -1,
		Item:      index,
		prompt:    promptPlan{literal: prompt},
	}
}

// AppendPrompt appends the request's PromptLen prompt token ids to dst and
// returns the extended slice. Reusing dst across requests makes iteration
// allocation-free. The ids are ordinary ids of pkg/tokenizer (below
// tokenizer.SpecialBase), drawn from its generated vocabulary; no BOS or chat
// template is added.
func (r Request) AppendPrompt(dst []uint32) []uint32 {
	p := &r.prompt
	if p.literal != nil {
		return append(dst, p.literal...)
	}
	dst = slices.Grow(dst, r.PromptLen)
	left := r.PromptLen
	for _, h := range p.blocks {
		n := min(left, MooncakeBlockTokens)
		dst = appendTokens(dst, mooncakeBlockSeed(h), n)
		left -= n
	}
	for _, s := range p.segs {
		dst = appendTokens(dst, s.seed, s.n)
	}
	return dst
}

// Prompt returns the request's prompt token ids in a new slice.
func (r Request) Prompt() []uint32 {
	return r.AppendPrompt(make([]uint32, 0, r.PromptLen))
}

// appendTokens appends n ids of the stream of seed: each splitmix64 output
// gives two ids, each chosen by multiply-shift from the tokenizer's
// generated vocabulary.
func appendTokens(dst []uint32, seed uint64, n int) []uint32 {
	vocab := tokenizer.GeneratedVocab()
	m := uint64(len(vocab))
	s := seed
	for ; n >= 2; n -= 2 {
		s += golden
		z := mix(s)
		dst = append(dst, vocab[(z>>32)*m>>32], vocab[(z&0xffffffff)*m>>32])
	}
	if n == 1 {
		z := mix(s + golden)
		dst = append(dst, vocab[(z>>32)*m>>32])
	}
	return dst
}

// Source yields a workload's requests in arrival order. A Source is an
// iterator: it is not safe for concurrent use, and a fresh one starts again
// from the first request (see Workload.Source). Sources here read and check
// their input completely before the first Next, so iteration cannot fail.
type Source interface {
	// Next returns the next request; ok is false when there are no more.
	Next() (r Request, ok bool)
	// Len returns the total number of requests the source yields from its
	// start, or -1 when that is not known in advance.
	Len() int
}

// Requests returns a Source that yields reqs in order. Their At values must
// not decrease.
func Requests(reqs []Request) Source { return &sliceSource{reqs: reqs} }

type sliceSource struct {
	reqs []Request
	next int
}

func (s *sliceSource) Next() (Request, bool) {
	if s.next >= len(s.reqs) {
		return Request{}, false
	}
	s.next++
	return s.reqs[s.next-1], true
}

func (s *sliceSource) Len() int { return len(s.reqs) }
