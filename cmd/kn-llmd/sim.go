package main

import (
	"encoding/json"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"strconv"
	"syscall"
	"time"

	"github.com/spf13/cobra"

	"github.com/llmd-kn/llmd-kn/pkg/apis"
	"github.com/llmd-kn/llmd-kn/pkg/engine"
	"github.com/llmd-kn/llmd-kn/pkg/vllmsim"
)

// simFlags are `kn-llmd sim`'s flags, named as vLLM's where vLLM has one.
type simFlags struct {
	prefixCaching                 bool
	kvTransferConfig              string
	host, model, profile, role    string
	servedNames                   []string
	port                          int
	timeScale, gpuMemUtil         float64
	streamChunkTokens             int
	maxNumSeqs, maxBatchedTokens  int
	maxModelLen, blockSize        int
	maxWaiting, numGPUBlocks      int
	kvEventsConfig, kvEventsEndpt string
	advertiseHost, engineID       string
	startupDelay                  string
	seed, hashSeed                uint64
	hashAlgo, tokenizerDir        string
	logLevel, schedulingPolicy    string
	kvOffload, kvOffloadURI       string
	kvOffloadMaxBytes, kvPrefetch string
	kvCPUTier, kvDiskTier         string
	kvOffloadDeadline             time.Duration
	kvPayloadScale                float64
}

func newSimCommand() *cobra.Command { return bindSimFlags(&simFlags{}) }

// bindSimFlags returns the sim command with its flags bound to f.
func bindSimFlags(f *simFlags) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "sim",
		Short: "Run a vLLM-compatible simulator (OpenAI API, metrics, KV events, P/D)",
		Long: `Run a drop-in stand-in for 'vllm serve' backed by the engine model:
continuous batching, prefix caching, KV capacity and timing from a profile.

  kn-llmd sim --model demo
  curl localhost:8000/v1/completions -d '{"model":"demo","prompt":"Hello","max_tokens":8}'`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if cmd.Flags().Changed("served-model-name") && len(f.servedNames) == 0 {
				return fmt.Errorf("--served-model-name: empty name")
			}
			cfg, err := f.config()
			if err != nil {
				return err
			}
			cmd.SilenceUsage = true
			srv, err := vllmsim.New(cfg)
			if err != nil {
				return err
			}
			ctx, stop := signal.NotifyContext(cmd.Context(), os.Interrupt, syscall.SIGTERM)
			defer stop()
			return srv.Run(ctx)
		},
	}
	fl := cmd.Flags()
	fl.StringVar(&f.host, "host", "127.0.0.1", "address to listen on")
	fl.IntVar(&f.port, "port", 8000, "port to listen on")
	fl.StringVar(&f.model, "model", "demo", "model name or path (the root reported by /v1/models)")
	fl.StringSliceVar(&f.servedNames, "served-model-name", nil, "names clients use for the model (repeatable or comma-separated; default: --model)")
	fl.StringVar(&f.profile, "profile", engine.DefaultProfile, fmt.Sprintf("engine profile: a built-in name %v, or a YAML/JSON profile file (path or path#name)", engine.BuiltinProfileNames()))
	fl.Float64Var(&f.timeScale, "time-scale", 1, "multiplies every simulated duration (0.1 runs ten times faster)")
	fl.IntVar(&f.streamChunkTokens, "stream-chunk-tokens", 1, "decode tokens per streamed chunk (the first token is always sent alone)")
	fl.StringVar(&f.role, "role", "both", "P/D role: prefill, decode or both")
	fl.StringVar(&f.schedulingPolicy, "scheduling-policy", "fcfs", "fcfs, or priority: the waiting queue ordered by each request's priority field")
	fl.IntVar(&f.maxNumSeqs, "max-num-seqs", 256, "maximum sequences in a batch")
	fl.IntVar(&f.maxBatchedTokens, "max-num-batched-tokens", 8192, "token budget of one engine step")
	fl.IntVar(&f.maxModelLen, "max-model-len", 0, "context length (default: the profile's model)")
	fl.IntVar(&f.blockSize, "block-size", 16, "KV-cache block size in tokens")
	fl.Float64Var(&f.gpuMemUtil, "gpu-memory-utilization", 0, "fraction of GPU memory for the engine (default: the profile's, 0.9)")
	fl.IntVar(&f.numGPUBlocks, "num-gpu-blocks-override", 0, "KV capacity in blocks, overriding what the profile implies")
	fl.IntVar(&f.maxWaiting, "max-waiting", 0, "bound on the waiting queue; past it requests get 503 (0: unbounded)")
	fl.StringVar(&f.kvEventsConfig, "kv-events-config", "", `vLLM's KV events config, e.g. '{"enable_kv_cache_events":true,"publisher":"zmq","endpoint":"tcp://*:5557","topic":"kv@${POD_IP}@demo"}'`)
	fl.StringVar(&f.kvEventsEndpt, "kv-events-endpoint", "", "shorthand: publish KV events over ZMQ on this endpoint (e.g. tcp://*:5557), topic kv@<advertise host>@<model>")
	fl.StringVar(&f.startupDelay, "startup-delay", "0s", "simulated cold start: /health answers 503 until it passes (scaled by --time-scale)")
	fl.Uint64Var(&f.seed, "seed", 0, "seed for generated tokens and output lengths")
	fl.Uint64Var(&f.hashSeed, "hash-seed", envUint("PYTHONHASHSEED"), "seed of the KV block hashes (default: $PYTHONHASHSEED, as vLLM)")
	fl.StringVar(&f.tokenizerDir, "tokenizer", "", "folder of the model's Hugging Face tokenizer files (tokenizer.json, tokenizer_config.json), as vLLM's --tokenizer: prompts and chat templates are tokenized exactly as that model's vLLM does; the project's estimate when empty")
	fl.StringVar(&f.hashAlgo, "prefix-caching-hash-algo", "sha256_cbor", "block hash function, as vLLM's: sha256_cbor or xxhash_cbor")
	fl.StringVar(&f.advertiseHost, "advertise-host", os.Getenv("POD_IP"), "host a decode engine uses to reach this one in P/D (default: $POD_IP, else --host)")
	fl.StringVar(&f.engineID, "engine-id", "", "engine id reported in kv_transfer_params (default: random)")
	fl.StringVar(&f.logLevel, "log-level", "info", "debug, info, warn or error")
	fl.StringVar(&f.kvOffload, "kv-offload", "off", "llm-d.ai/kv-offload: off, on-scale-down or write-through (flush the most valuable KV blocks to --kv-offload-uri on SIGTERM, restore stored prefixes on demand)")
	fl.StringVar(&f.kvOffloadURI, "kv-offload-uri", "", "KV offload storage: a directory or a file://, s3://, gs://, azblob:// URL (credentials from the drivers' usual environment)")
	fl.StringVar(&f.kvOffloadMaxBytes, "kv-offload-max-bytes", "0", "bound on the modelled KV bytes a flush writes and storage keeps for this model (Kubernetes quantity, e.g. 200Gi; 0: unbounded)")
	fl.StringVar(&f.kvPrefetch, "kv-prefetch-bytes", "0", "modelled KV bytes of the hottest stored prefixes loaded into the GPU cache at start-up, before /health answers 200 (Kubernetes quantity; 0: restore on demand only)")
	fl.StringVar(&f.kvCPUTier, "kv-cpu-tier-bytes", "0", "llm-d.ai/kv-cpu-tier-bytes: CPU memory for KV blocks below the GPU cache, as vLLM's OffloadingConnector (Kubernetes quantity, e.g. 64Gi; 0: none)")
	fl.StringVar(&f.kvDiskTier, "kv-disk-tier-bytes", "0", "llm-d.ai/kv-disk-tier-bytes: local disk for KV blocks the CPU tier evicts (Kubernetes quantity, e.g. 500Gi; 0: none)")
	fl.DurationVar(&f.kvOffloadDeadline, "kv-offload-deadline", 30*time.Second, "bound on the flush at exit (wall time)")
	fl.Float64Var(&f.kvPayloadScale, "kv-payload-scale", 1, "fraction of the modelled KV bytes actually stored per block, in (0, 1]; the model charges the full transfer time")
	// vLLM flags the llmd-kn webhook injects into LLM revisions: accepted so
	// that the simulator runs in their place unchanged. Prefix caching is
	// always on in the simulator; the KV connector is checked to be JSON and
	// otherwise modelled by --role.
	fl.BoolVar(&f.prefixCaching, "enable-prefix-caching", true, "accepted for vLLM compatibility: the simulator always caches prefixes")
	fl.StringVar(&f.kvTransferConfig, "kv-transfer-config", "", `accepted for vLLM compatibility, e.g. '{"kv_connector":"NixlConnector","kv_role":"kv_both"}': must be a JSON object; P/D behaviour follows --role`)
	return cmd
}

func envUint(name string) uint64 {
	v, err := strconv.ParseUint(os.Getenv(name), 10, 64)
	if err != nil {
		return 0
	}
	return v
}

func (f *simFlags) config() (vllmsim.Config, error) {
	if !f.prefixCaching {
		return vllmsim.Config{}, fmt.Errorf("--enable-prefix-caching=false: the simulator models vLLM with prefix caching only")
	}
	var offloadCPU, offloadDisk int64 // the connector's tiers, from --kv-transfer-config (and LMCache's environment)
	if f.kvTransferConfig != "" {
		var kv map[string]any
		if err := json.Unmarshal([]byte(f.kvTransferConfig), &kv); err != nil {
			return vllmsim.Config{}, fmt.Errorf("--kv-transfer-config: not a JSON object: %v", err)
		}
		// The CPU tier the webhook configures (llm-d.ai/kv-cpu-tier-bytes
		// as the OffloadingConnector's cpu_bytes_to_use) is simulated as
		// --kv-cpu-tier-bytes, which overrides it.
		if kv["kv_connector"] == "OffloadingConnector" {
			extra, _ := kv["kv_connector_extra_config"].(map[string]any)
			if v, ok := extra["cpu_bytes_to_use"]; ok {
				n, isNum := v.(float64)
				if !isNum || n < 0 || n > 1<<50 || n != float64(int64(n)) {
					return vllmsim.Config{}, fmt.Errorf("--kv-transfer-config: cpu_bytes_to_use must be a whole number of bytes >= 0, got %v", v)
				}
				offloadCPU = int64(n)
			}
		}
		if kv["kv_connector"] == "LMCacheConnectorV1" {
			var err error
			if offloadCPU, offloadDisk, err = lmcacheTiers(os.Getenv); err != nil {
				return vllmsim.Config{}, err
			}
		}
	}
	var cfg vllmsim.Config
	for _, c := range []struct {
		name string
		v    int
	}{
		{"max-num-seqs", f.maxNumSeqs}, {"max-num-batched-tokens", f.maxBatchedTokens}, {"block-size", f.blockSize},
		{"stream-chunk-tokens", f.streamChunkTokens}, {"port", f.port},
	} {
		if c.v < 1 {
			return cfg, fmt.Errorf("--%s must be positive, got %d", c.name, c.v)
		}
	}
	for _, c := range []struct {
		name string
		v    int
	}{{"max-model-len", f.maxModelLen}, {"max-waiting", f.maxWaiting}, {"num-gpu-blocks-override", f.numGPUBlocks}} {
		if c.v < 0 {
			return cfg, fmt.Errorf("--%s must not be negative, got %d", c.name, c.v)
		}
	}
	if f.maxModelLen == 1 {
		return cfg, fmt.Errorf("--max-model-len must be at least 2")
	}
	if !(f.timeScale > 0) {
		return cfg, fmt.Errorf("--time-scale must be positive, got %v", f.timeScale)
	}
	if f.gpuMemUtil < 0 || f.gpuMemUtil > 1 {
		return cfg, fmt.Errorf("--gpu-memory-utilization must be in (0, 1], got %v", f.gpuMemUtil)
	}
	delay, err := parseDuration(f.startupDelay)
	if err != nil {
		return cfg, fmt.Errorf("--startup-delay: %w", err)
	}
	role, err := engine.ParseRole(f.role)
	if err != nil {
		return cfg, fmt.Errorf("--role: %w", err)
	}
	policy, err := engine.ParsePolicy(f.schedulingPolicy)
	if err != nil {
		return cfg, fmt.Errorf("--scheduling-policy: %w", err)
	}
	profile, err := vllmsim.LoadProfile(f.profile)
	if err != nil {
		return cfg, fmt.Errorf("--profile: %w", err)
	}
	var level slog.Level
	if err := level.UnmarshalText([]byte(f.logLevel)); err != nil {
		return cfg, fmt.Errorf("--log-level: %w", err)
	}
	names := make([]string, 0, len(f.servedNames))
	for _, n := range f.servedNames {
		if n == "" {
			return cfg, fmt.Errorf("--served-model-name: empty name")
		}
		names = append(names, n)
	}
	cfg = vllmsim.Config{
		Model: f.model, ServedModelNames: names, Profile: profile, Role: role, SchedulingPolicy: policy,
		BlockSize: f.blockSize, MaxNumSeqs: f.maxNumSeqs, MaxNumBatchedTokens: f.maxBatchedTokens,
		MaxModelLen: f.maxModelLen, MaxWaiting: f.maxWaiting, NumBlocks: f.numGPUBlocks,
		GPUMemoryUtilization: f.gpuMemUtil, HashSeed: f.hashSeed, HashAlgo: f.hashAlgo, TokenizerDir: f.tokenizerDir, Seed: f.seed,
		TimeScale: f.timeScale, StreamChunkTokens: f.streamChunkTokens, StartupDelay: delay,
		EngineID: f.engineID, AdvertiseHost: f.advertiseHost, Host: f.host, Port: f.port,
		Logger: slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: level})),
	}
	if f.kvOffload != "off" {
		maxBytes, err := apis.ParseBytes(f.kvOffloadMaxBytes)
		if err != nil {
			return cfg, fmt.Errorf("--kv-offload-max-bytes: %w", err)
		}
		prefetch, err := apis.ParseBytes(f.kvPrefetch)
		if err != nil {
			return cfg, fmt.Errorf("--kv-prefetch-bytes: %w", err)
		}
		cfg.KVOffload = vllmsim.KVOffloadConfig{Mode: f.kvOffload, URI: f.kvOffloadURI, MaxBytes: maxBytes,
			Deadline: f.kvOffloadDeadline, PayloadScale: f.kvPayloadScale, PrefetchBytes: prefetch}
	}
	if cfg.CPUTierBytes, err = apis.ParseBytes(f.kvCPUTier); err != nil {
		return cfg, fmt.Errorf("--kv-cpu-tier-bytes: %w", err)
	}
	if cfg.DiskTierBytes, err = apis.ParseBytes(f.kvDiskTier); err != nil {
		return cfg, fmt.Errorf("--kv-disk-tier-bytes: %w", err)
	}
	if cfg.CPUTierBytes == 0 {
		cfg.CPUTierBytes = offloadCPU
	}
	if cfg.DiskTierBytes == 0 {
		cfg.DiskTierBytes = offloadDisk
	}
	if f.kvEventsConfig != "" {
		kc, err := vllmsim.ParseKVEventsConfig(f.kvEventsConfig)
		if err != nil {
			return cfg, fmt.Errorf("--%w", err)
		}
		cfg.KVEvents = kc
	}
	if f.kvEventsEndpt != "" {
		if f.kvEventsConfig != "" {
			return cfg, fmt.Errorf("--kv-events-endpoint and --kv-events-config are exclusive; put the endpoint in the config")
		}
		host := f.advertiseHost
		if host == "" {
			host = f.host
		}
		model := f.model
		if len(names) > 0 {
			model = names[0]
		}
		kc, err := vllmsim.ParseKVEventsConfig(fmt.Sprintf(`{"enable_kv_cache_events":true,"publisher":"zmq","endpoint":%q,"topic":%q}`,
			f.kvEventsEndpt, "kv@"+host+"@"+model))
		if err != nil {
			return cfg, fmt.Errorf("--kv-events-endpoint: %w", err)
		}
		cfg.KVEvents = kc
	}
	return cfg, nil
}

// parseDuration accepts Go durations ("90s", "2m") and plain seconds ("30").
func parseDuration(s string) (time.Duration, error) {
	if v, err := strconv.ParseFloat(s, 64); err == nil {
		if v < 0 {
			return 0, fmt.Errorf("must not be negative, got %s", s)
		}
		return time.Duration(v * float64(time.Second)), nil
	}
	d, err := time.ParseDuration(s)
	if err != nil {
		return 0, err
	}
	if d < 0 {
		return 0, fmt.Errorf("must not be negative, got %s", s)
	}
	return d, nil
}

// lmcacheTiers reads the CPU and disk tiers the webhook gives LMCache
// (llm-d.ai/kv-cpu-tier-bytes and kv-disk-tier-bytes with a disk tier):
// LMCACHE_LOCAL_CPU and LMCACHE_MAX_LOCAL_CPU_SIZE, LMCACHE_LOCAL_DISK and
// LMCACHE_MAX_LOCAL_DISK_SIZE, sizes in LMCache's GB (1e9 bytes). The
// simulator models them as the OffloadingConnector's tiers (CPU evictions
// to disk; LMCache writes to each backend). Unset variables are no tier.
func lmcacheTiers(getenv func(string) string) (cpu, disk int64, err error) {
	size := func(name string) (int64, error) {
		v := getenv(name)
		if v == "" {
			return 0, nil
		}
		gb, err := strconv.ParseFloat(v, 64)
		if err != nil || !(gb >= 0) || gb > 1e6 {
			return 0, fmt.Errorf("%s=%q: want a size in GB >= 0", name, v)
		}
		return int64(gb * 1e9), nil
	}
	if on := getenv("LMCACHE_LOCAL_CPU"); on == "True" || on == "true" || on == "1" {
		if cpu, err = size("LMCACHE_MAX_LOCAL_CPU_SIZE"); err != nil {
			return 0, 0, err
		}
	}
	if getenv("LMCACHE_LOCAL_DISK") != "" {
		if disk, err = size("LMCACHE_MAX_LOCAL_DISK_SIZE"); err != nil {
			return 0, 0, err
		}
	}
	return cpu, disk, nil
}
