package autoscaler

import (
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/llmd-kn/llmd-kn/pkg/apis"
	"github.com/llmd-kn/llmd-kn/pkg/engine"
)

// StepBudgets is a revision's per-step token budget for each role: Decode
// for decode pods (or every pod without P/D), Prefill for the prefill pods
// of a prefill-decode revision (zero otherwise).
type StepBudgets struct {
	Decode  engine.StepBudget `json:"decode"`
	Prefill engine.StepBudget `json:"prefill,omitzero"`
}

// ChooseStepBudgets resolves llm-d.ai/step-token-budget for a revision:
// the number it gives for every role, or (auto) engine.StepBudgetFor from
// the revision's TPOT target (llm-d.ai/slo-tpot, else its tier's tierTPOT,
// else the decider's default) on its engine profile (llm-d.ai/sim-profile,
// else the default profile), at least maxNumSeqs (the args'
// --max-num-seqs, 0 when absent: vLLM refuses a smaller budget). It is what the webhook and `kn-llmd local`
// write into the pods' args when the user did not.
func ChooseStepBudgets(spec apis.Spec, tierTPOT time.Duration, maxNumSeqs int) (StepBudgets, error) {
	name := spec.SimProfile
	if name == "" {
		name = engine.DefaultProfile
	}
	prof, err := engine.BuiltinProfile(name)
	if err != nil {
		return StepBudgets{}, fmt.Errorf("%s: %w", apis.SimProfileAnnotation, err)
	}
	if maxNumSeqs > 0 {
		prof.MaxNumSeqs = maxNumSeqs
	}
	c := DefaultConfig()
	ApplySpec(&c, spec, 0, tierTPOT)
	var out StepBudgets
	if n := spec.StepTokenBudget; n > 0 {
		fixed := engine.StepBudget{MaxNumBatchedTokens: n, MaxNumSeqs: prof.MaxNumSeqs, StepTime: prof.FullStepTime(n), Feasible: true}
		fixed.Reason = fmt.Sprintf("%s=%d: a full step takes %s on %s", apis.StepTokenBudgetAnnotation, n, fixed.StepTime.Round(time.Millisecond), prof.Name)
		out.Decode = fixed
		if spec.Disaggregated() {
			out.Prefill = fixed
		}
		return out, nil
	}
	role := engine.RoleBoth
	if spec.Disaggregated() {
		role = engine.RoleDecode
		out.Prefill = prof.StepBudgetFor(engine.RolePrefill, c.SLO.TPOT)
	}
	out.Decode = prof.StepBudgetFor(role, c.SLO.TPOT)
	return out, nil
}

// String is the choice as the status annotation records it:
// "2048 prefill=8192: REASON".
func (b StepBudgets) String() string {
	s := strconv.Itoa(b.Decode.MaxNumBatchedTokens)
	if b.Prefill.MaxNumBatchedTokens > 0 {
		s += " prefill=" + strconv.Itoa(b.Prefill.MaxNumBatchedTokens)
	}
	return s + ": " + b.Decode.Reason
}

// ParseStepBudgetChoice reads the decode and prefill budgets back from a
// status annotation String wrote (prefill 0 when absent).
func ParseStepBudgetChoice(v string) (decode, prefill int, ok bool) {
	head, _, found := strings.Cut(v, ":")
	if !found {
		return 0, 0, false
	}
	f := strings.Fields(head)
	if len(f) == 0 || len(f) > 2 {
		return 0, 0, false
	}
	d, err := strconv.Atoi(f[0])
	if err != nil || d < 1 {
		return 0, 0, false
	}
	if len(f) == 2 {
		p, found := strings.CutPrefix(f[1], "prefill=")
		n, err := strconv.Atoi(p)
		if !found || err != nil || n < 1 {
			return 0, 0, false
		}
		prefill = n
	}
	return d, prefill, true
}
