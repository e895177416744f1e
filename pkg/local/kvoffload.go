package local

import (
	"fmt"
	"os"
	"path/filepath"

	"github.com/llmd-kn/llmd-kn/pkg/engine"
	"github.com/llmd-kn/llmd-kn/pkg/vllmsim"
)

// DefaultKVPayloadScale shrinks the KV objects simulated pods store 1024
// times (a 16-token block of Llama-3.1-8B is 2 MiB of KV, 2 KiB on disk):
// the engine model still charges the full transfer time.
const DefaultKVPayloadScale = 1.0 / 1024

// DefaultKVOffloadDir is where revisions that offload without a
// llm-d.ai/kv-offload-uri keep their KV locally: a folder under the user's
// cache directory (the temporary directory when there is none).
func DefaultKVOffloadDir() string {
	base, err := os.UserCacheDir()
	if err != nil || base == "" {
		base = os.TempDir()
	}
	return filepath.Join(base, "llmd-kn", "kv-offload")
}

// kvOffloadConfig is what a simulated pod of svc does with its KV cache
// beyond the GPU (llm-d.ai/kv-offload and its companions): flush the most
// valuable blocks when it stops, restore them on demand when it serves.
// Prefill and decode pods do not offload (as in a cluster, where the
// webhook leaves NIXL's connector alone).
func (r *Runtime) kvOffloadConfig(svc *Service, role engine.Role) (vllmsim.KVOffloadConfig, error) {
	k := svc.Spec.KVOffload
	if !k.Enabled() || role != engine.RoleBoth {
		return vllmsim.KVOffloadConfig{}, nil
	}
	uri := k.URI
	if uri == "" {
		uri = r.opts.KVOffloadDir
	}
	if uri == "" {
		return vllmsim.KVOffloadConfig{}, fmt.Errorf("local: %s offloads KV but no storage is set", svc.Key())
	}
	return vllmsim.KVOffloadConfig{
		Mode: k.Mode, URI: uri, MaxBytes: k.MaxBytes, Deadline: k.Deadline,
		PayloadScale: r.opts.KVPayloadScale, PrefetchBytes: k.PrefetchBytes,
	}, nil
}

// kvTiers sizes a simulated pod's own CPU and disk KV tiers below its GPU
// cache (llm-d.ai/kv-cpu-tier-bytes, llm-d.ai/kv-disk-tier-bytes; vLLM's
// OffloadingConnector). Prefill and decode pods get none: they keep NIXL's
// connector alone, as the webhook does in a cluster.
func kvTiers(svc *Service, role engine.Role) (cpu, disk int64) {
	if role != engine.RoleBoth {
		return 0, 0
	}
	return svc.Spec.KVOffload.CPUTierBytes, svc.Spec.KVOffload.DiskTierBytes
}
