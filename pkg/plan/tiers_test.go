package plan

import (
	"strings"
	"testing"
	"time"

	"github.com/llmd-kn/llmd-kn/pkg/workload"
)

// TestKVTiersInPlan: one engine whose GPU cache holds one long prompt at a
// time serves A, B, C, then A again. Without tiers A is recomputed; with a
// CPU tier it is loaded (reported as cached, counted in the run's tier
// stats) and its TTFT is below the recompute's; with a tiny CPU tier above
// a disk tier it comes from disk. The router gets the tiers' events with
// their medium.
func TestKVTiersInPlan(t *testing.T) {
	const promptLen, bs = 3000, 16
	const block = bs * 131072
	src := func() workload.Source {
		a := tokens(promptLen, 1)
		return workload.Requests([]workload.Request{
			workload.NewRequest(0, 0, a, 4),
			workload.NewRequest(1, 10*time.Second, tokens(promptLen, 2), 4),
			workload.NewRequest(2, 20*time.Second, tokens(promptLen, 3), 4),
			workload.NewRequest(3, 30*time.Second, a, 4),
		})
	}
	base := DefaultConfig()
	base.Engine.NumBlocks = 200 // 3,200 tokens
	loadable := int64((promptLen - 1) / bs * bs)
	cases := []struct {
		name            string
		cpu, disk       int64
		wantCPU, wantDk int64
	}{
		{name: "off"},
		{name: "cpu", cpu: 1000 * block, wantCPU: loadable},
		{name: "disk", cpu: 10 * block, disk: 1000 * block, wantDk: loadable},
	}
	var recompute time.Duration
	for _, c := range cases {
		cfg := base
		cfg.Engine.CPUTierBytes, cfg.Engine.DiskTierBytes = c.cpu, c.disk
		res := run(t, cfg, src())
		r := res.Records[3]
		if !r.OK() {
			t.Fatalf("%s: %+v", c.name, r)
		}
		if got := int64(r.CachedTokens); got != c.wantCPU+c.wantDk {
			t.Errorf("%s: A again had %d cached tokens, want %d", c.name, got, c.wantCPU+c.wantDk)
		}
		if st := res.Stats; st.CPUTierHitTokens != c.wantCPU || st.DiskTierHitTokens != c.wantDk {
			t.Errorf("%s: tier hits cpu %d disk %d, want %d %d", c.name, st.CPUTierHitTokens, st.DiskTierHitTokens, c.wantCPU, c.wantDk)
		}
		if c.name == "off" {
			recompute = r.TTFT
		} else if r.TTFT >= recompute {
			t.Errorf("%s: TTFT %v not below the recompute's %v", c.name, r.TTFT, recompute)
		}
		if !res.Stats.KVEvents || res.Stats.KVApplyErrors != 0 {
			t.Errorf("%s: KV events %v, apply errors %d", c.name, res.Stats.KVEvents, res.Stats.KVApplyErrors)
		}
	}
}

func TestKVTierFlags(t *testing.T) {
	var e EngineConfig
	got, err := parseTiers(Options{KVTiers: "off,on", KVCPUTierBytes: "64Gi", KVDiskTierBytes: "200Gi"}, &e)
	if err != nil || len(got) != 2 || got[0] || !got[1] || e.CPUTierBytes != 64<<30 || e.DiskTierBytes != 200<<30 {
		t.Errorf("off,on: %v %+v %v", got, e, err)
	}
	if got, err := parseTiers(Options{}, &e); err != nil || len(got) != 1 || !got[0] || e.CPUTierBytes != 0 {
		t.Errorf("default: %v %+v %v", got, e, err)
	}
	for _, c := range []struct {
		o    Options
		want string
	}{
		{Options{KVCPUTierBytes: "lots"}, "byte size"},
		{Options{KVDiskTierBytes: "-1"}, "byte size"},
		{Options{KVTiers: "on,on", KVCPUTierBytes: "1Gi"}, "twice"},
		{Options{KVTiers: "maybe"}, "unknown setting"},
		{Options{KVTiers: "off,on"}, "neither"},
	} {
		if _, err := parseTiers(c.o, &e); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%+v: %v, want %q", c.o, err, c.want)
		}
	}
	bad := DefaultConfig()
	bad.Engine.CPUTierBytes = 1
	if err := bad.Validate(); err == nil || !strings.Contains(err.Error(), "holds no block") {
		t.Errorf("a 1-byte CPU tier: %v", err)
	}
}
