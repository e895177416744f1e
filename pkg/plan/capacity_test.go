package plan

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/llmd-kn/llmd-kn/pkg/bench"
)

func TestSearchMin(t *testing.T) {
	cases := []struct {
		lo, hi, first int
		want          int
		found         bool
	}{
		{1, 16, 5, 5, true},
		{1, 16, 1, 1, true},
		{1, 16, 16, 16, true},
		{1, 16, 17, 0, false},
		{3, 3, 3, 3, true},
		{4, 3, 1, 0, false},
	}
	for _, tc := range cases {
		calls := 0
		n, found, err := SearchMin(tc.lo, tc.hi, func(n int) (bool, error) { calls++; return n >= tc.first, nil })
		if err != nil || n != tc.want || found != tc.found {
			t.Errorf("SearchMin(%d, %d) with threshold %d = %d, %v, %v; want %d, %v", tc.lo, tc.hi, tc.first, n, found, err, tc.want, tc.found)
		}
		if calls > 6 {
			t.Errorf("SearchMin(%d, %d): %d calls, want O(log n)", tc.lo, tc.hi, calls)
		}
	}
	boom := errors.New("boom")
	if _, _, err := SearchMin(1, 8, func(int) (bool, error) { return false, boom }); !errors.Is(err, boom) {
		t.Errorf("err = %v, want the evaluator's", err)
	}
}

// fakeEval pretends attainment is min(1, replicas·k) with prefill
// engines worth half a decode engine.
func fakeEval(k float64) Evaluator {
	return func(_ context.Context, r Replicas) (bench.RunSummary, error) {
		a := min(1, k*(float64(r.Decode)+0.5*float64(r.Prefill)))
		return bench.RunSummary{SLOAttainment: &a, Goodput: &bench.Goodput{}}, nil
	}
}

func TestFindCapacityPerRole(t *testing.T) {
	c, err := FindCapacity(context.Background(), fakeEval(0.1), "x", 1, Range{0, 0}, Range{1, 64}, nil)
	if err != nil || !c.Found || c.Replicas != (Replicas{Decode: 10}) {
		t.Errorf("without P/D: %+v, %v; want 10 decode", c, err)
	}
	// With P/D, 4 prefill + 8 decode (total 12) is worse than 0 + 10, and
	// 2 + 9 = 11 > 10, so the search must keep the smallest total.
	c, err = FindCapacity(context.Background(), fakeEval(0.1), "x", 1, Range{0, 4}, Range{1, 64}, nil)
	if err != nil || !c.Found || c.Replicas.Total() != 10 || c.Replicas.Prefill != 0 {
		t.Errorf("with P/D: %+v, %v; want 10 in total with no prefill engine", c.Replicas, err)
	}
	c, err = FindCapacity(context.Background(), fakeEval(0.01), "x", 1, Range{0, 0}, Range{1, 8}, nil)
	if err != nil || c.Found {
		t.Errorf("unreachable target: %+v, %v; want not found", c, err)
	}
	if _, err := FindCapacity(context.Background(), fakeEval(1), "x", 1.5, Range{0, 0}, Range{1, 8}, nil); err == nil {
		t.Error("target 1.5 accepted")
	}
}

func TestCapacityOfAnOverloadedWorkload(t *testing.T) {
	// 16 requests a second of 2,500-token prompts: about 40,000 prefill
	// tokens a second, more than one Llama-3.1-8B engine computes.
	w := sharedPrefix(t, 400, 1, 2000, 500, 20, 16, 160)
	cfg := DefaultConfig()
	cfg.Routing = "least-request"
	so := SummaryOptions{SLO: bench.SLO{TTFT: 500 * time.Millisecond}}
	eval := Evaluate(cfg, w, so)
	one, err := eval(context.Background(), Replicas{Decode: 1})
	if err != nil {
		t.Fatal(err)
	}
	if *one.SLOAttainment >= 0.9 {
		t.Fatalf("one engine attains %.2f: the workload does not overload it", *one.SLOAttainment)
	}
	c, err := FindCapacity(context.Background(), eval, "least-request", 0.99, Range{0, 0}, Range{1, 8}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if !c.Found || c.Replicas.Decode < 2 {
		t.Fatalf("capacity %+v, want found and above one engine", c)
	}
	var below, at Point
	for _, p := range c.Points {
		switch p.Replicas.Decode {
		case c.Replicas.Decode - 1:
			below = p
		case c.Replicas.Decode:
			at = p
		}
	}
	t.Logf("capacity %s: attainment %.3f there, %.3f with one engine fewer", c.Replicas, at.SLOAttainment, below.SLOAttainment)
	if at.SLOAttainment < 0.99 || (below.Replicas.Decode > 0 && below.SLOAttainment >= 0.99) {
		t.Errorf("capacity %s not the smallest meeting 0.99: points %+v", c.Replicas, c.Points)
	}

	// The sweep gives the curve, and the report files.
	pts, err := Sweep(context.Background(), eval, "least-request", []Replicas{{Decode: 1}, {Decode: 2}, {Decode: 4}}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if pts[0].SLOAttainment >= pts[2].SLOAttainment {
		t.Errorf("attainment does not grow from 1 to 4 engines: %+v", pts)
	}
	dir := t.TempDir()
	rep := CapacityReport{Deployment: "test", Target: 0.99, SLO: bench.SLOTargets{TTFTSeconds: 0.5},
		Results: []Capacity{CapacityFromPoints("least-request", 0.99, pts)}}
	if err := WriteCapacity(dir, rep); err != nil {
		t.Fatal(err)
	}
	md, err := os.ReadFile(filepath.Join(dir, CapacityMD))
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(md), "| least-request |") {
		t.Errorf("capacity.md lacks the routing row:\n%s", md)
	}
	for _, f := range []string{CapacityJSON, CapacityChart} {
		if _, err := os.Stat(filepath.Join(dir, f)); err != nil {
			t.Error(err)
		}
	}
}
