package main

import (
	"context"
	"io"
	"strings"
	"testing"
	"time"

	"github.com/llmd-kn/llmd-kn/pkg/engine"
)

func TestSimRejectsBadFlags(t *testing.T) {
	tests := []struct {
		args []string
		want string
	}{
		{[]string{"--time-scale", "0"}, "--time-scale"},
		{[]string{"--time-scale", "-1"}, "--time-scale"},
		{[]string{"--time-scale", "abc"}, "invalid argument"},
		{[]string{"--role", "router"}, "--role"},
		{[]string{"--scheduling-policy", "lifo"}, "--scheduling-policy"},
		{[]string{"--max-num-seqs", "0"}, "--max-num-seqs"},
		{[]string{"--block-size", "-16"}, "--block-size"},
		{[]string{"--stream-chunk-tokens", "0"}, "--stream-chunk-tokens"},
		{[]string{"--max-waiting", "-1"}, "--max-waiting"},
		{[]string{"--gpu-memory-utilization", "1.5"}, "--gpu-memory-utilization"},
		{[]string{"--startup-delay", "soon"}, "--startup-delay"},
		{[]string{"--startup-delay", "-5s"}, "--startup-delay"},
		{[]string{"--profile", "/no/such/profile.yaml"}, "--profile"},
		{[]string{"--kv-events-config", `{"enable_kv_cache_events":true,"endpoint":"udp://x"}`}, "kv-events-config"},
		{[]string{"--kv-events-config", `{"enable_kv_cache_events":true,"typo":1}`}, "kv-events-config"},
		{[]string{"--kv-events-endpoint", "tcp://*:5557", "--kv-events-config", `{}`}, "exclusive"},
		{[]string{"--served-model-name", ""}, "--served-model-name"},
		{[]string{"--max-model-len", "99999999"}, "max model len"},
		{[]string{"extra-arg"}, "unknown command"},
	}
	for _, tc := range tests {
		t.Run(strings.Join(tc.args, " "), func(t *testing.T) {
			cmd := newRootCommand()
			cmd.SetArgs(append([]string{"sim"}, tc.args...))
			cmd.SetOut(io.Discard)
			cmd.SetErr(io.Discard)
			// Should a bad flag slip through, the server stops with the
			// context instead of hanging the test.
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
			defer cancel()
			err := cmd.ExecuteContext(ctx)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("error %v, want one mentioning %q", err, tc.want)
			}
		})
	}
}

func TestSimFlagsToConfig(t *testing.T) {
	f := &simFlags{}
	cmd := bindSimFlags(f)
	if err := cmd.ParseFlags([]string{
		"--model", "m", "--served-model-name", "a,b", "--served-model-name", "c", "--role", "prefill",
		"--time-scale", "0.1", "--stream-chunk-tokens", "4", "--startup-delay", "90s", "--max-waiting", "10",
		"--kv-events-endpoint", "tcp://*:5557", "--advertise-host", "10.1.2.3", "--profile", "qwen3-32b-2xh100",
	}); err != nil {
		t.Fatal(err)
	}
	cfg, err := f.config()
	if err != nil {
		t.Fatal(err)
	}
	if strings.Join(cfg.ServedModelNames, ",") != "a,b,c" || cfg.Role != engine.RolePrefill || cfg.TimeScale != 0.1 ||
		cfg.StreamChunkTokens != 4 || cfg.StartupDelay != 90*time.Second || cfg.MaxWaiting != 10 ||
		cfg.Profile.Name != "qwen3-32b-2xh100" || cfg.AdvertiseHost != "10.1.2.3" {
		t.Fatalf("config %+v", cfg)
	}
	kv := cfg.KVEvents
	if !kv.Enable || kv.Publisher != "zmq" || kv.Endpoint != "tcp://*:5557" || kv.Topic != "kv@10.1.2.3@a" {
		t.Fatalf("kv events %+v", kv)
	}
}

func TestSimAcceptsTheFlagsTheWebhookInjects(t *testing.T) {
	cmd := newSimCommand()
	if err := cmd.Flags().Parse([]string{"--enable-prefix-caching", "--kv-transfer-config", `{"kv_connector":"NixlConnector","kv_role":"kv_both"}`,
		"--scheduling-policy", "priority"}); err != nil {
		t.Fatal(err)
	}
	// The webhook's CPU tier (llm-d.ai/kv-cpu-tier-bytes) reaches the
	// simulated engine; --kv-cpu-tier-bytes overrides it.
	for _, c := range []struct {
		args []string
		want int64
	}{
		{[]string{"--kv-transfer-config", `{"kv_connector":"OffloadingConnector","kv_role":"kv_both","kv_connector_extra_config":{"cpu_bytes_to_use":68719476736}}`}, 64 << 30},
		{[]string{"--kv-transfer-config", `{"kv_connector":"OffloadingConnector","kv_role":"kv_both","kv_connector_extra_config":{"cpu_bytes_to_use":68719476736}}`, "--kv-cpu-tier-bytes", "1Gi"}, 1 << 30},
		{[]string{"--kv-transfer-config", `{"kv_connector":"NixlConnector","kv_role":"kv_both"}`}, 0},
	} {
		f := &simFlags{}
		if err := bindSimFlags(f).ParseFlags(c.args); err != nil {
			t.Fatal(err)
		}
		cfg, err := f.config()
		if err != nil || cfg.CPUTierBytes != c.want {
			t.Errorf("%v: CPU tier %d (%v), want %d", c.args, cfg.CPUTierBytes, err, c.want)
		}
	}
	// With a disk tier the webhook configures LMCache through its
	// environment.
	env := map[string]string{"LMCACHE_LOCAL_CPU": "True", "LMCACHE_MAX_LOCAL_CPU_SIZE": "68.719476736",
		"LMCACHE_LOCAL_DISK": "file:///var/lib/llm-d/kv-disk/", "LMCACHE_MAX_LOCAL_DISK_SIZE": "500"}
	if cpu, disk, err := lmcacheTiers(func(k string) string { return env[k] }); err != nil || cpu != 64<<30 || disk != 500e9 {
		t.Errorf("LMCache tiers %d %d (%v), want 64Gi and 500 GB", cpu, disk, err)
	}
	env["LMCACHE_LOCAL_CPU"] = "False"
	if cpu, disk, err := lmcacheTiers(func(k string) string { return env[k] }); err != nil || cpu != 0 || disk != 500e9 {
		t.Errorf("LMCache without a CPU tier: %d %d (%v)", cpu, disk, err)
	}
	env["LMCACHE_MAX_LOCAL_DISK_SIZE"] = "big"
	if _, _, err := lmcacheTiers(func(k string) string { return env[k] }); err == nil || !strings.Contains(err.Error(), "LMCACHE_MAX_LOCAL_DISK_SIZE") {
		t.Errorf("a bad LMCache disk size: %v", err)
	}
	t.Setenv("LMCACHE_LOCAL_DISK", "file:///tmp/kv/")
	t.Setenv("LMCACHE_MAX_LOCAL_DISK_SIZE", "2")
	lf := &simFlags{}
	if err := bindSimFlags(lf).ParseFlags([]string{"--kv-transfer-config", `{"kv_connector":"LMCacheConnectorV1","kv_role":"kv_both"}`}); err != nil {
		t.Fatal(err)
	}
	if cfg, err := lf.config(); err != nil || cfg.DiskTierBytes != 2e9 || cfg.CPUTierBytes != 0 {
		t.Errorf("LMCache connector with a 2 GB disk: cpu %d disk %d (%v)", cfg.CPUTierBytes, cfg.DiskTierBytes, err)
	}
	f := &simFlags{}
	if err := bindSimFlags(f).ParseFlags([]string{"--kv-transfer-config", `{"kv_connector":"OffloadingConnector","kv_connector_extra_config":{"cpu_bytes_to_use":"lots"}}`}); err != nil {
		t.Fatal(err)
	}
	if _, err := f.config(); err == nil || !strings.Contains(err.Error(), "cpu_bytes_to_use") {
		t.Errorf("a non-numeric cpu_bytes_to_use: %v", err)
	}
	bad := newSimCommand()
	bad.SetArgs([]string{"--kv-transfer-config", "{not json", "--port", "0"})
	bad.SetOut(io.Discard)
	bad.SetErr(io.Discard)
	if err := bad.Execute(); err == nil || !strings.Contains(err.Error(), "--kv-transfer-config") {
		t.Fatalf("bad --kv-transfer-config: %v", err)
	}
}
