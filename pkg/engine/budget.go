package engine

import (
	"fmt"
	"time"
)

// Step token budget limits.
const (
	// DefaultMaxNumBatchedTokens is vLLM's default per-step token budget
	// for online serving, and the largest budget StepBudgetFor chooses:
	// beyond it a step is compute-bound already and gains no throughput.
	DefaultMaxNumBatchedTokens = 8192
	// DefaultMaxNumSeqs is vLLM's default running-batch bound.
	DefaultMaxNumSeqs = 256
	// StepBudgetHeadroom is the share of the TPOT target a full step may
	// take. A decode waits for whole steps, and a step that carries a
	// prefill chunk is the long one: keeping it within three quarters of
	// the target leaves room for the decode batch's own time and for the
	// model's error.
	StepBudgetHeadroom = 0.75
	// stepBudgetQuantum: budgets are multiples of it (as people write
	// them, and so that a small change of target does not change them).
	stepBudgetQuantum = 256
)

// StepBudget is a chosen per-step token budget and why.
type StepBudget struct {
	// MaxNumBatchedTokens is vLLM's --max-num-batched-tokens.
	MaxNumBatchedTokens int `json:"maxNumBatchedTokens"`
	// MaxNumSeqs is vLLM's --max-num-seqs when the profile names one; 0
	// leaves vLLM's default.
	MaxNumSeqs int `json:"maxNumSeqs,omitempty"`
	// StepTime is the modelled time of a full step at this budget.
	StepTime time.Duration `json:"stepTime"`
	// Feasible is false when even the smallest budget's step exceeds the
	// headroom: the target cannot be met while prompts are prefilled.
	Feasible bool `json:"feasible"`
	// Reason says how the budget was chosen, for people.
	Reason string `json:"reason"`
}

// FullStepTime is the modelled time of a step that uses a whole budget of
// tokens: one prefill chunk of budget tokens over a context of as many (the
// second chunk of a long prompt). Decodes in the same step cost about what
// the chunk tokens they displace would.
func (p *Profile) FullStepTime(budget int) time.Duration {
	return p.StepTime([]StepInput{{Query: budget, Context: budget}})
}

// StepBudgetFor chooses vLLM's per-step token budget for an engine of this
// profile in role, so that a full step (FullStepTime) stays within
// StepBudgetHeadroom of the TPOT target: the largest multiple of 256 that
// does, at least the running-batch bound (vLLM refuses a smaller budget)
// and at most vLLM's default of 8,192. A prefill engine has no TPOT to
// protect and keeps the default; so does an engine with no TPOT target
// (tpot <= 0). It is pure: the same inputs give the same budget.
func (p *Profile) StepBudgetFor(role Role, tpot time.Duration) StepBudget {
	seqs := DefaultMaxNumSeqs
	if p.MaxNumSeqs > 0 {
		seqs = p.MaxNumSeqs
	}
	floor := max(stepBudgetQuantum, (seqs+stepBudgetQuantum-1)/stepBudgetQuantum*stepBudgetQuantum)
	out := StepBudget{MaxNumSeqs: p.MaxNumSeqs, Feasible: true}
	if role == RolePrefill || tpot <= 0 {
		out.MaxNumBatchedTokens = max(DefaultMaxNumBatchedTokens, floor)
		out.StepTime = p.FullStepTime(out.MaxNumBatchedTokens)
		if role == RolePrefill {
			out.Reason = fmt.Sprintf("prefill engine: no TPOT to protect, vLLM's default (a full step takes %s on %s)", ms(out.StepTime), p.Name)
		} else {
			out.Reason = fmt.Sprintf("no TPOT target: vLLM's default (a full step takes %s on %s)", ms(out.StepTime), p.Name)
		}
		return out
	}
	limit := time.Duration(float64(tpot) * StepBudgetHeadroom)
	b := floor
	// Step time grows with the budget: the largest quantum multiple
	// within the limit, by bisection over multiples.
	lo, hi := floor/stepBudgetQuantum, max(floor, DefaultMaxNumBatchedTokens)/stepBudgetQuantum
	if p.FullStepTime(lo*stepBudgetQuantum) > limit {
		out.Feasible = false
	} else {
		for lo < hi {
			mid := (lo + hi + 1) / 2
			if p.FullStepTime(mid*stepBudgetQuantum) <= limit {
				lo = mid
			} else {
				hi = mid - 1
			}
		}
		b = lo * stepBudgetQuantum
	}
	out.MaxNumBatchedTokens = b
	out.StepTime = p.FullStepTime(b)
	switch {
	case !out.Feasible:
		out.Reason = fmt.Sprintf("TPOT %s is too tight for %s: even a %d-token step takes %s (over %.0f%% of the target); the smallest budget vLLM accepts",
			ms(tpot), p.Name, b, ms(out.StepTime), StepBudgetHeadroom*100)
	case b == DefaultMaxNumBatchedTokens && floor <= DefaultMaxNumBatchedTokens:
		out.Reason = fmt.Sprintf("TPOT %s: vLLM's default fits, a full %d-token step takes %s on %s (within %.0f%% of the target)",
			ms(tpot), b, ms(out.StepTime), p.Name, StepBudgetHeadroom*100)
	default:
		out.Reason = fmt.Sprintf("TPOT %s: a full %d-token step takes %s on %s, within %.0f%% of the target (vLLM's default of %d takes %s)",
			ms(tpot), b, ms(out.StepTime), p.Name, StepBudgetHeadroom*100, DefaultMaxNumBatchedTokens, ms(p.FullStepTime(DefaultMaxNumBatchedTokens)))
	}
	return out
}

// ms formats a duration in whole milliseconds (or finer below 10 ms).
func ms(d time.Duration) string {
	if d < 10*time.Millisecond {
		return d.Round(100 * time.Microsecond).String()
	}
	return d.Round(time.Millisecond).String()
}
