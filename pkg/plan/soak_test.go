package plan

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/llmd-kn/llmd-kn/pkg/bench"
	"github.com/llmd-kn/llmd-kn/pkg/workload"
)

// TestSoakSmall: a small soak runs its four runs, rate-scales the workload
// to the asked share of the measured capacity, reports both tiers and the
// batch throughput, and writes its table.
func TestSoakSmall(t *testing.T) {
	spec := workload.Spec{Kind: workload.KindRandom, Seed: 5,
		Random:  &workload.RandomConfig{NumPrompts: 400, InputLen: 512, OutputLen: 32},
		Arrival: workload.Arrival{Kind: workload.ArrivalPoisson, Rate: 1}}
	cfg := DefaultConfig()
	cfg.Engines = 1
	cfg.Routing = "least-request"
	b := DefaultBatch(2000)
	b.InputLen, b.OutputLen = 256, 64
	opts := SoakOptions{Load: 0.5, Batch: b, CriticalShare: 0.5, CapacityWindow: 20 * time.Second,
		Critical: bench.SLO{TTFT: 500 * time.Millisecond, TPOT: 50 * time.Millisecond}, Standard: bench.SLO{TTFT: 2 * time.Second, TPOT: 100 * time.Millisecond},
		Command: "kn-llmd plan --batch-soak 2000"}
	r, err := Soak(context.Background(), cfg, spec, "", opts)
	if err != nil {
		t.Fatal(err)
	}
	if r.InteractiveCapacity <= 0 || r.BatchCapacity <= 0 || r.BatchCompleted == 0 || r.BatchTokensRate <= 0 {
		t.Fatalf("result %+v", r)
	}
	// The scaled workload's rate is the asked share of the capacity
	// (Poisson arrivals: within a few percent over 400 requests).
	if r.Utilization < 0.4 || r.Utilization > 0.6 {
		t.Errorf("utilization %.3f, want about 0.5", r.Utilization)
	}
	for _, m := range []map[string]TierFigures{r.Alone, r.WithBatch} {
		if m["critical"].Requests+m["standard"].Requests != 400 || m["critical"].Requests == 0 {
			t.Errorf("tiers %+v", m)
		}
	}
	// The requests sent while batch ran: the same ones in both runs.
	for tr, a := range r.AloneBeside {
		if m := r.WithBatchBeside[tr]; a.Requests == 0 || m.Requests != a.Requests || a.Requests > r.Alone[tr].Requests {
			t.Errorf("%s beside batch: %d alone, %d with batch (of %d)", tr, a.Requests, m.Requests, r.Alone[tr].Requests)
		}
	}
	if len(r.AloneBeside) == 0 {
		t.Error("no figures beside batch")
	}
	for tr, a := range r.AloneBeside {
		if !(a.TTFTMean > 0 && a.TTFTP50 > 0 && a.TTFTP50 <= a.TTFTP90) {
			t.Errorf("%s beside batch alone: mean %v, p50 %v, p90 %v", tr, a.TTFTMean, a.TTFTP50, a.TTFTP90)
		}
	}
	if !(r.IdleUsed > 0) {
		t.Errorf("idle capacity used %.2f", r.IdleUsed)
	}
	dir := t.TempDir()
	if err := WriteSoak(dir, r); err != nil {
		t.Fatal(err)
	}
	md, err := os.ReadFile(filepath.Join(dir, SoakMD))
	if err != nil || !strings.Contains(string(md), "idle capacity used by batch") || !strings.Contains(string(md), "| critical |") ||
		!strings.Contains(string(md), "kn-llmd plan --batch-soak 2000") || !strings.Contains(string(md), "| TTFT mean alone |") {
		t.Fatalf("table: %s %v", md, err)
	}
}

// TestSoakCapacityOfAShortDataset: a generated dataset whose requests all
// end long before the capacity window (a few hundred short requests against
// 10 minutes) is measured up to its last request sent, not refused with "no
// capacity measured" (its records all ended before the window's first fifth).
func TestSoakCapacityOfAShortDataset(t *testing.T) {
	spec := workload.Spec{Kind: workload.KindRandom, Seed: 3,
		Random:  &workload.RandomConfig{NumPrompts: 300, InputLen: 256, OutputLen: 16},
		Arrival: workload.Arrival{Kind: workload.ArrivalPoisson, Rate: 1}}
	cfg := DefaultConfig()
	cfg.Engines = 1
	cfg.Routing = "least-request"
	b := DefaultBatch(200)
	b.InputLen, b.OutputLen = 256, 16
	opts := SoakOptions{Load: 0.5, Batch: b, CapacityWindow: 10 * time.Minute,
		Critical: bench.SLO{TTFT: 500 * time.Millisecond, TPOT: 50 * time.Millisecond}, Standard: bench.SLO{TTFT: 2 * time.Second, TPOT: 100 * time.Millisecond}}
	r, err := Soak(context.Background(), cfg, spec, "", opts)
	if err != nil {
		t.Fatal(err)
	}
	if r.InteractiveCapacity <= 0 || r.Utilization < 0.4 || r.Utilization > 0.6 {
		t.Fatalf("capacity %.2f req/s, utilization %.3f", r.InteractiveCapacity, r.Utilization)
	}
}
