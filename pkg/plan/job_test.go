package plan

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/llmd-kn/llmd-kn/pkg/workload"
)

func TestParseCounts(t *testing.T) {
	for in, want := range map[string]string{"1..4": "[1 2 3 4]", "2..10:4": "[2 6 10]", "8,2,4,4": "[2 4 8]", "3": "[3]"} {
		got, err := parseCounts(in, 1)
		if err != nil || fmt.Sprint(got) != want {
			t.Errorf("parseCounts(%q) = %v, %v; want %s", in, got, err, want)
		}
	}
	for _, bad := range []string{"", "a..b", "1..", "1..4:0", "x", "1,,2", "0..3", "1..300"} {
		if _, err := parseCounts(bad, 1); err == nil {
			t.Errorf("parseCounts(%q) accepted", bad)
		}
	}
}

// given marks the options' flags as given, as the command's flag set does.
func given(names ...string) func(string) bool {
	return func(n string) bool {
		for _, g := range names {
			if g == n {
				return true
			}
		}
		return false
	}
}

// TestNewJobValidates: every invalid combination of kn-llmd plan's
// options is refused with an error naming the flag, before any run.
func TestNewJobValidates(t *testing.T) {
	dir := t.TempDir()
	badRouter := filepath.Join(dir, "router.yaml")
	if err := os.WriteFile(badRouter, []byte("preciseIndex: {blockSize: 0}\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name string
		mod  func(o *Options)
		want string
	}{
		{"no out", func(o *Options) { o.Out = "" }, "--out is required"},
		{"engines", func(o *Options) { o.Engines = 0 }, "--engines must be positive"},
		{"prefill engines", func(o *Options) { o.PrefillEngines = -1 }, "--prefill-engines must not be negative"},
		{"profile", func(o *Options) { o.Profile = "gpt-5-on-a-toaster" }, "--profile"},
		{"block size", func(o *Options) { o.BlockSize = 2048 }, "--block-size must be at most 1024"},
		{"negative duration", func(o *Options) { o.KVEventDelay = -time.Millisecond }, "--kv-event-delay must not be negative"},
		{"zero scrape", func(o *Options) { o.ScrapeInterval = 0 }, "--scrape-interval must be positive"},
		{"bucket", func(o *Options) { o.Bucket = time.Microsecond }, "--bucket must be at least 1ms"},
		{"flow off", func(o *Options) { o.FlowControl = false; o.Changed = given("flow-max-queued") }, "--flow-max-queued needs --flow-control"},
		{"router config", func(o *Options) { o.RouterConfig = badRouter }, "preciseIndex.blockSize"},
		{"budget", func(o *Options) { o.MaxNumBatchedTokens = "lots" }, "--max-num-batched-tokens"},
		{"unknown routing", func(o *Options) { o.Routing = "default,fastest" }, `unknown profile "fastest"`},
		{"routing twice", func(o *Options) { o.Routing = "default,default" }, "given twice"},
		{"empty routing", func(o *Options) { o.Routing = "default," }, "empty profile name"},
		{"sweep and engines", func(o *Options) {
			o.SweepReplicas, o.SLOTTFT, o.Changed = "1..4", time.Second, given("sweep-replicas", "engines")
		}, "replaces --engines"},
		{"sweep without SLO", func(o *Options) { o.SweepReplicas, o.Changed = "1..4", given("sweep-replicas") }, "need an SLO"},
		{"target without question", func(o *Options) { o.Changed = given("target-attainment") }, "needs --sweep-replicas, --find-capacity or --autoscaler static-peak"},
		{"target out of range", func(o *Options) { o.FindCapacity, o.SLOTTFT, o.TargetAttainment = true, time.Second, 1.5 }, "--target-attainment must be in (0, 1]"},
		{"unknown policy", func(o *Options) { o.Autoscaler = "hpa" }, `unknown policy "hpa"`},
		{"policy twice", func(o *Options) { o.Autoscaler = "slo-forecast,slo-forecast" }, "given twice"},
		{"bound alone", func(o *Options) { o.Autoscaler = "clairvoyant" }, "needs another policy"},
		{"comparison, several routings", func(o *Options) { o.Autoscaler = "slo,slo-forecast" }, "one routing profile"},
		{"kpa target", func(o *Options) { o.Autoscaler, o.Routing, o.KPATarget = "kpa", "default", "0" }, "--kpa-target"},
		{"kpa target without kpa", func(o *Options) { o.Autoscaler, o.Changed = "slo-forecast", given("kpa-target") }, "needs --autoscaler kpa"},
		{"startup without autoscaler", func(o *Options) { o.Changed = given("startup-delay") }, "--startup-delay needs --autoscaler slo or kpa"},
		{"percentile", func(o *Options) { o.Autoscaler, o.Routing, o.SLOPercentile = "slo-forecast", "default", 100 }, "--slo-percentile must be in (0, 100)"},
		{"min engines", func(o *Options) { o.Autoscaler, o.MinEngines = "slo", 9 }, "--min-engines must be in [0, --engines (8)]"},
		{"negative startup", func(o *Options) { o.Autoscaler, o.StartupDelay = "slo", -time.Second }, "--startup-delay and --scale-to-zero-grace must not be negative"},
		{"autoscaler without flow control", func(o *Options) { o.Autoscaler, o.FlowControl = "slo", false }, "needs --flow-control"},
		{"comparison with P/D", func(o *Options) { o.Autoscaler, o.Routing, o.PrefillEngines = "kpa", "default", 1 }, "without P/D"},
		{"bounds' window", func(o *Options) { o.Autoscaler, o.Routing, o.LowerBoundWindow = "kpa,instant-bound", "default", 0 }, "--lower-bound-window must be positive"},
		{"soak with an autoscaler", func(o *Options) { o.BatchSoak, o.Autoscaler = 10, "slo" }, "--batch-soak runs fixed engines"},
		{"soak load", func(o *Options) { o.BatchSoak, o.SoakLoad = 10, 1 }, "--soak-load must be in (0, 1)"},
		{"batch flag without soak", func(o *Options) { o.Changed = given("batch-concurrency") }, "--batch-concurrency needs --batch-soak"},
		{"include missing", func(o *Options) { o.Include = []string{filepath.Join(dir, "missing.json")} }, "--include"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			o := DefaultOptions()
			o.Out = dir
			tc.mod(&o)
			if _, err := NewJob(o); err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("err = %v, want one mentioning %q", err, tc.want)
			}
		})
	}
}

// The defaults make a valid job, and the autoscaling options reach the
// comparison: the SLO decider's cold start is --startup-delay.
func TestNewJobBuildsAComparison(t *testing.T) {
	o := DefaultOptions()
	o.Out, o.Routing, o.Autoscaler, o.StartupDelay, o.MinEngines = t.TempDir(), "default", "slo,slo-forecast,kpa,clairvoyant", 5*time.Second, 1
	o.KPATarget, o.SLOTTFT, o.SLOTPOT = "2,8", 2*time.Second, 100*time.Millisecond
	o.Changed = given("startup-delay", "min-engines", "kpa-target")
	j, err := NewJob(o)
	if err != nil {
		t.Fatal(err)
	}
	c := j.compare
	if c == nil {
		t.Fatal("no comparison")
	}
	if fmt.Sprint(c.Policies) != "[slo slo-forecast kpa clairvoyant]" || fmt.Sprint(c.KPATargets) != "[2 8]" ||
		c.SLO.ColdStart != 5*time.Second || c.Startup != 5*time.Second || c.MinEngines != 1 || c.Fixed != 8 ||
		c.SLO.SLO.TTFT != 2*time.Second || c.SLO.SLO.TPOT != 100*time.Millisecond {
		t.Errorf("comparison %+v", c)
	}
	if j.cfg.Engine.MaxNumBatchedTokens != 2048 {
		t.Errorf("auto budget %d for 100ms on the default profile, want 2048", j.cfg.Engine.MaxNumBatchedTokens)
	}
	if err := j.SetWorkload(workload.Spec{}, "", nil); err == nil {
		t.Error("a job without requests accepted")
	}
	def := DefaultOptions()
	def.Out = t.TempDir()
	if _, err := NewJob(def); err != nil {
		t.Errorf("defaults: %v", err)
	}
}
