package main

import (
	"bytes"
	"encoding/json"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/llmd-kn/llmd-kn/pkg/bench"
	"github.com/llmd-kn/llmd-kn/pkg/plan"
)

func runPlan(t *testing.T, args ...string) (string, error) {
	t.Helper()
	cmd := newPlanCmd()
	var out bytes.Buffer
	cmd.SetOut(&out)
	cmd.SetErr(&out)
	cmd.SetArgs(args)
	err := cmd.Execute()
	return out.String(), err
}

func TestPlanRejectsBadFlags(t *testing.T) {
	dir := t.TempDir()
	wl := []string{"--dataset", "shared-prefix", "--rate", "1", "--max-requests", "2", "--out", dir}
	cfgFile := filepath.Join(dir, "router.yaml")
	if err := os.WriteFile(cfgFile, []byte("preciseIndex: {blockSize: 0}\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		args []string
		want string
	}{
		{[]string{"--dataset", "shared-prefix", "--rate", "1"}, "--out is required"},
		{append([]string{"--engines", "0"}, wl...), "--engines"},
		{append([]string{"--prefill-engines", "-1"}, wl...), "--prefill-engines"},
		{append([]string{"--profile", "gpt-5-on-a-toaster"}, wl...), "--profile"},
		{append([]string{"--routing", "round-robin,fastest"}, wl...), "unknown profile \"fastest\""},
		{append([]string{"--routing", "default,default"}, wl...), "given twice"},
		{append([]string{"--routing", "default,"}, wl...), "empty profile name"},
		{append([]string{"--block-size", "0"}, wl...), "--block-size"},
		{append([]string{"--router-config", cfgFile}, wl...), "preciseIndex.blockSize"},
		{append([]string{"--kv-event-delay", "-1ms"}, wl...), "--kv-event-delay"},
		{append([]string{"--scrape-interval", "0s"}, wl...), "--scrape-interval"},
		{append([]string{"--flow-control=false", "--flow-max-queue-time", "5s"}, wl...), "needs --flow-control"},
		{append([]string{"--sweep-replicas", "1..4", "--engines", "2", "--slo-ttft", "1s"}, wl...), "replaces --engines"},
		{append([]string{"--sweep-replicas", "4..1", "--slo-ttft", "1s"}, wl...), "empty"},
		{append([]string{"--sweep-replicas", "0..4", "--slo-ttft", "1s"}, wl...), "below 1"},
		{append([]string{"--sweep-replicas", "1..4"}, wl...), "need an SLO"},
		{append([]string{"--find-capacity", "--slo-ttft", "1s", "--target-attainment", "1.5"}, wl...), "--target-attainment"},
		{append([]string{"--target-attainment", "0.9"}, wl...), "needs --sweep-replicas, --find-capacity or --autoscaler static-peak"},
		{append([]string{"--sweep-prefill", "0..2", "--slo-ttft", "1s"}, wl...), "--sweep-prefill needs"},
		{append([]string{"--find-capacity", "--sweep-replicas", "1..3", "--slo-ttft", "1s"}, wl...), "give one"},
		{[]string{"--out", dir}, "give one workload"},
		{[]string{"--out", dir, "--dataset", "shared-prefix"}, "no timestamps"},
		{[]string{"--out", dir, "--trace", "mooncake:/no/such/file"}, "--trace"},
		{append([]string{"extra"}, wl...), "unknown command"},
		{append([]string{"--autoscaler", "hpa"}, wl...), "unknown policy \"hpa\""},
		{append([]string{"--autoscaler", "slo,slo"}, wl...), "given twice"},
		{append([]string{"--autoscaler", "lower-bound"}, wl...), "needs another policy"},
		{append([]string{"--autoscaler", "slo,kpa"}, wl...), "one routing profile"},
		{append([]string{"--autoscaler", "kpa", "--routing", "default", "--kpa-target", "0"}, wl...), "--kpa-target"},
		{append([]string{"--autoscaler", "kpa", "--routing", "default", "--kpa-target", "8,8"}, wl...), "given twice"},
		{append([]string{"--autoscaler", "slo", "--kpa-target", "8"}, wl...), "needs --autoscaler kpa"},
		{append([]string{"--autoscaler", "slo", "--lower-bound-window", "5s"}, wl...), "needs an autoscaling comparison"},
		{append([]string{"--autoscaler", "kpa,lower-bound", "--routing", "default", "--lower-bound-window", "0s"}, wl...), "--lower-bound-window"},
		{append([]string{"--autoscaler", "kpa", "--routing", "default", "--slo-percentile", "100"}, wl...), "--slo-percentile"},
		{append([]string{"--autoscaler", "kpa", "--routing", "default", "--prefill-engines", "1"}, wl...), "without P/D"},
		{append([]string{"--min-engines", "1"}, wl...), "needs --autoscaler slo or kpa"},
		{append([]string{"--startup-delay", "5s"}, wl...), "needs --autoscaler slo or kpa"},
		{append([]string{"--autoscaler", "slo", "--engines", "2", "--min-engines", "3"}, wl...), "--min-engines"},
		{append([]string{"--autoscaler", "slo", "--flow-control=false"}, wl...), "needs --flow-control"},
		{append([]string{"--autoscaler", "slo", "--find-capacity", "--slo-ttft", "1s"}, wl...), "no capacity question"},
	}
	for _, tc := range tests {
		t.Run(strings.Join(tc.args, " "), func(t *testing.T) {
			_, err := runPlan(t, tc.args...)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("err = %v, want one mentioning %q", err, tc.want)
			}
		})
	}
}

func TestPlanWritesAComparisonReport(t *testing.T) {
	dir := t.TempDir()
	out, err := runPlan(t, "--dataset", "shared-prefix", "--rate", "4", "--max-requests", "12", "--engines", "2",
		"--routing", "round-robin,kv-precise", "--slo-ttft", "1s", "--out", dir)
	if err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	sum, err := bench.ReadSummary(filepath.Join(dir, bench.SummaryFile))
	if err != nil {
		t.Fatal(err)
	}
	if len(sum.Runs) != 2 || sum.Runs[0].Name != "round-robin" || sum.Runs[1].Name != "kv-precise" {
		t.Fatalf("runs %+v", sum.Runs)
	}
	for _, r := range sum.Runs {
		if r.Mode != bench.ModeVirtualTime || r.Requests.Completed != 12 || r.SLOAttainment == nil {
			t.Errorf("run %s: mode %s, %d completed, attainment %v", r.Name, r.Mode, r.Requests.Completed, r.SLOAttainment)
		}
	}
	if !strings.Contains(out, "report: ") {
		t.Errorf("output lacks the report path:\n%s", out)
	}

	// Another plan includes it.
	dir2 := t.TempDir()
	if out, err := runPlan(t, "--dataset", "shared-prefix", "--rate", "4", "--max-requests", "4", "--engines", "1",
		"--routing", "default", "--include", filepath.Join(dir, bench.SummaryFile), "--out", dir2); err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	if sum, err := bench.ReadSummary(filepath.Join(dir2, bench.SummaryFile)); err != nil || len(sum.Runs) != 3 {
		t.Errorf("included report: %d runs, %v", len(sum.Runs), err)
	}
}

func TestPlanSweepWritesCapacity(t *testing.T) {
	dir := t.TempDir()
	out, err := runPlan(t, "--dataset", "shared-prefix", "--rate", "8", "--max-requests", "24", "--routing", "least-request",
		"--sweep-replicas", "1,2", "--slo-ttft", "2s", "--target-attainment", "0.5", "--out", dir)
	if err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	for _, f := range []string{plan.CapacityJSON, plan.CapacityMD, plan.CapacityChart, bench.SummaryFile} {
		if _, err := os.Stat(filepath.Join(dir, f)); err != nil {
			t.Error(err)
		}
	}
	if !strings.Contains(out, "capacity least-request:") {
		t.Errorf("output lacks the capacity line:\n%s", out)
	}
}

func TestPlanSLOAutoscalerReportsReplicaSeconds(t *testing.T) {
	dir := t.TempDir()
	out, err := runPlan(t, "--dataset", "shared-prefix", "--rate", "4", "--max-requests", "12", "--routing", "least-request",
		"--autoscaler", "slo", "--engines", "3", "--min-engines", "0", "--startup-delay", "5s", "--scale-to-zero-grace", "10s",
		"--slo-ttft", "2s", "--out", dir)
	if err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	sum, err := bench.ReadSummary(filepath.Join(dir, bench.SummaryFile))
	if err != nil {
		t.Fatal(err)
	}
	r := sum.Runs[0]
	if r.Requests.Completed != 12 || r.Settings["replicaSeconds"] == "" || !strings.Contains(r.Settings["scaler"], "slo") ||
		!strings.Contains(r.Target, "slo-autoscaled 0..3") {
		t.Errorf("completed %d, target %q, settings %v", r.Requests.Completed, r.Target, r.Settings)
	}
	// The first request waited for the cold start.
	if r.LatencySeconds.TTFT.Max < 5 {
		t.Errorf("max TTFT %vs, want at least the 5s startup delay", r.LatencySeconds.TTFT.Max)
	}
	if !strings.Contains(out, "replica-seconds") {
		t.Errorf("output lacks replica-seconds:\n%s", out)
	}
	csv, err := os.ReadFile(filepath.Join(dir, plan.ReplicasCSV))
	if err != nil {
		t.Fatal(err)
	}
	if lines := strings.Split(strings.TrimSpace(string(csv)), "\n"); len(lines) < 3 || !strings.HasPrefix(lines[0], "run,seconds") ||
		lines[1] != "least-request,0.000,0,0,0,0" || !strings.Contains(string(csv), ",0,1,0,") {
		t.Errorf("replicas.csv:\n%s", csv)
	}
}

func TestPlanComparesAutoscalers(t *testing.T) {
	dir := t.TempDir()
	out, err := runPlan(t, "--dataset", "shared-prefix", "--rate", "6", "--max-requests", "40", "--routing", "least-request",
		"--autoscaler", "fixed,slo,slo-forecast,kpa,static-peak,lower-bound,clairvoyant", "--kpa-target", "4,16", "--engines", "3", "--startup-delay", "2s",
		"--slo-ttft", "5s", "--slo-tpot", "100ms", "--target-attainment", "0.9", "--out", dir)
	if err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	data, err := os.ReadFile(filepath.Join(dir, plan.AutoscalingJSON))
	if err != nil {
		t.Fatal(err)
	}
	var rep plan.AutoscalingReport
	if err := json.Unmarshal(data, &rep); err != nil {
		t.Fatal(err)
	}
	var names []string
	gpu := map[string]float64{}
	for _, p := range rep.Policies {
		names = append(names, p.Policy)
		gpu[p.Policy] = p.GPUSeconds
	}
	if want := "fixed,slo,slo-forecast,kpa-4,kpa-16,static-peak,instant-bound,clairvoyant"; strings.Join(names, ",") != want {
		t.Fatalf("policies %v, want %s", names, want)
	}
	// The bound is in the load functions' terms (pkg/plan tests it against
	// every policy); here it must lie under the fixed fleet of the maximum.
	// The clairvoyant bound pays cold starts and the grace the instant one
	// does not.
	if gpu["instant-bound"] <= 0 || gpu["instant-bound"] > gpu["fixed"] || gpu["static-peak"] > gpu["fixed"] ||
		gpu["clairvoyant"] < gpu["instant-bound"] {
		t.Errorf("GPU-seconds %v", gpu)
	}
	if rep.Percentile != 90 || rep.TTFT != 5 || rep.TPOT != 0.1 {
		t.Errorf("report SLO %v/%v at p%v", rep.TTFT, rep.TPOT, rep.Percentile)
	}
	md, err := os.ReadFile(filepath.Join(dir, plan.AutoscalingMD))
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(md), "| kpa-16 (Knative KPA, concurrency target 16 x 0.7) |") {
		t.Errorf("autoscaling.md:\n%s", md)
	}
	sum, err := bench.ReadSummary(filepath.Join(dir, bench.SummaryFile))
	if err != nil {
		t.Fatal(err)
	}
	if len(sum.Runs) != 7 {
		t.Errorf("%d runs in the report, want 7 (the instant bound is no run; the clairvoyant one is replayed)", len(sum.Runs))
	}
}

// --slo-percentile reaches the SLO decider and changes what it provisions:
// with a cold start it keeps headroom for the burst at the percentile
// (autoscaler.BurstHeadroom), more at p99 than at p90 for the same load
// (pkg/autoscaler tests that); over a run the provisioning differs, not
// always upwards (a fleet scaled up earlier drains its queue sooner).
func TestPlanPercentileChangesTheSLODecider(t *testing.T) {
	gpu := map[string]float64{}
	for _, pct := range []string{"90", "99"} {
		dir := t.TempDir()
		out, err := runPlan(t, "--dataset", "shared-prefix", "--rate", "12", "--max-requests", "120", "--routing", "least-request",
			"--autoscaler", "slo,instant-bound", "--engines", "8", "--startup-delay", "5s",
			"--slo-ttft", "2s", "--slo-tpot", "100ms", "--slo-percentile", pct, "--out", dir)
		if err != nil {
			t.Fatalf("%v\n%s", err, out)
		}
		data, err := os.ReadFile(filepath.Join(dir, plan.AutoscalingJSON))
		if err != nil {
			t.Fatal(err)
		}
		var rep plan.AutoscalingReport
		if err := json.Unmarshal(data, &rep); err != nil {
			t.Fatal(err)
		}
		if rep.Percentile != mustFloat(t, pct) {
			t.Fatalf("report at p%v", rep.Percentile)
		}
		gpu[pct] = rep.Policies[0].GPUSeconds
	}
	if gpu["99"] == gpu["90"] {
		t.Fatalf("SLO decider GPU-seconds at p90 and p99 both %.1f: the percentile changed nothing", gpu["90"])
	}
}

func mustFloat(t *testing.T, s string) float64 {
	t.Helper()
	v, err := strconv.ParseFloat(s, 64)
	if err != nil {
		t.Fatal(err)
	}
	return v
}
