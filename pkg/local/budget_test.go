package local

import (
	"strings"
	"testing"
)

// The local runtime chooses the pods' step budget as the webhook does (the
// standard tier's TPOT is 100 ms), never over the args' own.
func TestStepBudgetDefaulting(t *testing.T) {
	for _, tc := range []struct {
		name            string
		ann             string
		args            string
		decode, prefill int
		seqs            int
		chosen          bool
		line            string
		invalid         bool
	}{
		{"standard tier", "", "", 2048, 0, 0, true, "--max-num-batched-tokens 2048: TPOT 100ms", false},
		{"critical tier", `llm-d.ai/slo-tier: critical`, "", 0, 0, 0, true, "--max-num-batched-tokens", false},
		{"slo-tpot", `llm-d.ai/slo-tpot: 50ms`, "", 1024, 0, 0, true, "--max-num-batched-tokens 1024: TPOT 50ms", false},
		{"qwen", `{llm-d.ai/slo-tpot: 100ms, llm-d.ai/sim-profile: qwen3-32b-2xh100}`, "", 1024, 0, 0, true, "on qwen3-32b-2xh100", false},
		{"prefill-decode", `llm-d.ai/disaggregation: prefill-decode`, "", 2048, 8192, 0, true, "(prefill pods 8192)", false},
		{"annotation N", `llm-d.ai/step-token-budget: "512"`, "", 512, 0, 0, true, "llm-d.ai/step-token-budget=512", false},
		{"args win", `llm-d.ai/step-token-budget: "512"`, `, "--max-num-batched-tokens", "4096"`, 4096, 0, 0, false, "4096 (from the container's args)", false},
		{"max-num-seqs raises the floor", `llm-d.ai/slo-tpot: 10ms`, `, "--max-num-seqs", "600"`, 768, 0, 600, true, "too tight", false},
		{"invalid annotation", `llm-d.ai/step-token-budget: "-1"`, "", 0, 0, 0, false, "", true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			m := manifest(tc.ann)
			m = strings.Replace(m, `args: ["--model", "org/m"]`, `args: ["--model", "org/m"`+tc.args+`]`, 1)
			svcs, err := Parse("svc.yaml", []byte(m), DefaultVocabulary())
			if tc.invalid {
				if err == nil || !strings.Contains(err.Error(), "spec.template.metadata.annotations[llm-d.ai/step-token-budget]") {
					t.Fatalf("want a field error, got %v", err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			s := svcs[0]
			if tc.decode > 0 && (s.Engine.MaxNumBatchedTokens != tc.decode || s.Engine.PrefillMaxNumBatchedTokens != tc.prefill) {
				t.Errorf("budget %d prefill %d, want %d %d", s.Engine.MaxNumBatchedTokens, s.Engine.PrefillMaxNumBatchedTokens, tc.decode, tc.prefill)
			}
			if tc.seqs > 0 && s.Engine.MaxNumSeqs != tc.seqs {
				t.Errorf("max-num-seqs %d", s.Engine.MaxNumSeqs)
			}
			if (s.StepBudget != nil) != tc.chosen {
				t.Errorf("chosen %v", s.StepBudget)
			}
			if got := StepBudgetLine(s); !strings.Contains(got, tc.line) {
				t.Errorf("line %q, want %q in it", got, tc.line)
			}
			// Pods from --pod-command get the chosen budget per role, and
			// nothing is added to args that set it.
			for _, role := range []string{"decode", "prefill"} {
				pc, err := expandPodCommand("vllm serve {model} {args}", s, "p", role, 1, "")
				if err != nil {
					t.Fatal(err)
				}
				n := strings.Count(pc.line, "--max-num-batched-tokens")
				if n != 1 {
					t.Errorf("%s: %q carries the budget %d times", role, pc.line, n)
				}
				if role == "prefill" && tc.prefill > 0 && !strings.Contains(pc.line, "--max-num-batched-tokens 8192") {
					t.Errorf("prefill pod: %q", pc.line)
				}
				if strings.Count(pc.line, "--max-num-seqs") > 1 {
					t.Errorf("%q: max-num-seqs twice", pc.line)
				}
			}
		})
	}
}
