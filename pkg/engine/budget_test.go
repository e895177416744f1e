package engine

import (
	"strings"
	"testing"
	"time"
)

func TestStepBudgetFor(t *testing.T) {
	ms := time.Millisecond
	cases := []struct {
		profile  string
		role     Role
		tpot     time.Duration
		want     int
		feasible bool
	}{
		{"llama-3.1-8b-h100", RoleBoth, 50 * ms, 1024, true},
		{"llama-3.1-8b-h100", RoleBoth, 100 * ms, 2048, true},
		{"llama-3.1-8b-h100", RoleDecode, 100 * ms, 2048, true},
		{"llama-3.1-8b-h100", RoleBoth, 200 * ms, 3840, true},
		{"llama-3.1-8b-h100", RoleBoth, time.Second, 8192, true},
		{"llama-3.1-8b-h100", RolePrefill, 100 * ms, 8192, true},
		{"llama-3.1-8b-h100", RoleBoth, 0, 8192, true},
		{"llama-3.1-8b-a100", RoleBoth, 100 * ms, 512, true},
		{"llama-3.1-8b-a100", RoleBoth, 20 * ms, 256, false},
		{"qwen3-32b-2xh100", RoleBoth, 50 * ms, 512, true},
		{"qwen3-32b-2xh100", RoleBoth, 100 * ms, 1024, true},
		{"qwen3-32b-2xh100", RolePrefill, 50 * ms, 8192, true},
		{"llama-3.1-70b-4xh100", RoleBoth, 100 * ms, 768, true},
		{"llama-3.1-70b-4xh100", RoleBoth, 200 * ms, 1792, true},
	}
	for _, tc := range cases {
		t.Run(tc.profile+"/"+tc.role.String()+"/"+tc.tpot.String(), func(t *testing.T) {
			p, err := BuiltinProfile(tc.profile)
			if err != nil {
				t.Fatal(err)
			}
			got := p.StepBudgetFor(tc.role, tc.tpot)
			if got.MaxNumBatchedTokens != tc.want || got.Feasible != tc.feasible {
				t.Fatalf("budget %d feasible %v, want %d %v (%s)", got.MaxNumBatchedTokens, got.Feasible, tc.want, tc.feasible, got.Reason)
			}
			if got.Reason == "" || got.MaxNumSeqs != 0 {
				t.Errorf("reason %q, max-num-seqs %d", got.Reason, got.MaxNumSeqs)
			}
			// What it guarantees: a full step within the headroom (when
			// feasible), and the next larger budget beyond it (unless
			// capped at vLLM's default).
			limit := time.Duration(float64(tc.tpot) * StepBudgetHeadroom)
			if tc.role != RolePrefill && tc.tpot > 0 && tc.feasible {
				if p.FullStepTime(got.MaxNumBatchedTokens) > limit {
					t.Errorf("step %s over %s", p.FullStepTime(got.MaxNumBatchedTokens), limit)
				}
				if got.MaxNumBatchedTokens < DefaultMaxNumBatchedTokens && p.FullStepTime(got.MaxNumBatchedTokens+256) <= limit {
					t.Errorf("%d tokens would fit too", got.MaxNumBatchedTokens+256)
				}
			}
		})
	}
}

func TestStepBudgetForProfileSeqs(t *testing.T) {
	p, _ := BuiltinProfile(DefaultProfile)
	p.MaxNumSeqs = 600
	got := p.StepBudgetFor(RoleBoth, 20*time.Millisecond)
	// vLLM refuses a budget below --max-num-seqs: the floor rises to it
	// (rounded up to 256), and the profile's bound is passed on.
	if got.MaxNumBatchedTokens != 768 || got.MaxNumSeqs != 600 || got.Feasible {
		t.Fatalf("got %+v", got)
	}
	if !strings.Contains(got.Reason, "too tight") {
		t.Errorf("reason %q", got.Reason)
	}
	if err := p.Validate(); err != nil {
		t.Fatal(err)
	}
	p.MaxNumSeqs = -1
	if err := p.Validate(); err == nil || !strings.Contains(err.Error(), "maxNumSeqs") {
		t.Fatalf("negative maxNumSeqs: %v", err)
	}
}
