package vllmsim

import (
	"encoding/json"
	"fmt"
	"log/slog"
	"math"
	"net"
	"net/url"
	"os"
	"strings"
	"time"

	"github.com/llmd-kn/llmd-kn/pkg/engine"
	"github.com/llmd-kn/llmd-kn/pkg/kvblock"
)

// Config configures one simulated vLLM server. Zero fields take the defaults
// noted on each (vLLM's, where vLLM has one).
type Config struct {
	// Model is what vLLM's --model names (a Hugging Face id or a path); it
	// is the `root` of /v1/models. Default "demo".
	Model string
	// ServedModelNames are the names clients use in the `model` field; the
	// first labels the metrics. Default [Model].
	ServedModelNames []string
	// Profile is the engine model's timing and capacity profile. Default:
	// the built-in engine.DefaultProfile.
	Profile engine.Profile
	// Role is the P/D role: both (default), prefill or decode.
	Role engine.Role
	// SchedulingPolicy is vLLM's --scheduling-policy: FCFS (default) or
	// priority, which orders the waiting queue by the requests' priority
	// field.
	SchedulingPolicy engine.Policy

	// Engine limits; zero takes the engine's (vLLM's) default.
	BlockSize           int
	MaxNumSeqs          int
	MaxNumBatchedTokens int
	MaxModelLen         int
	// MaxWaiting bounds the waiting queue; past it requests get 503. Zero
	// is unbounded, as in vLLM.
	MaxWaiting int
	// NumBlocks overrides the KV capacity the profile implies.
	NumBlocks int
	// GPUMemoryUtilization overrides the profile's when positive.
	GPUMemoryUtilization float64
	// HashSeed is vLLM's PYTHONHASHSEED: the root of the block hashes is
	// the digest of its decimal string, as vLLM derives NONE_HASH. Routers
	// need not know it: they key blocks by the token ids in KV events.
	HashSeed uint64
	// TokenizerDir holds the model's Hugging Face tokenizer files
	// (tokenizer.json, tokenizer_config.json), as vLLM's --tokenizer: the
	// simulator then tokenizes prompts and chat templates exactly as a vLLM
	// serving that model does. Empty: the project's estimate tokenizer.
	TokenizerDir string
	// HashAlgo is vLLM's --prefix-caching-hash-algo: sha256_cbor (default)
	// or xxhash_cbor. The block hashes, and the integers published in KV
	// events (the digests' last 8 bytes), are vLLM's.
	HashAlgo string
	// Seed seeds generated tokens and natural output lengths.
	Seed uint64
	// HeldTimeout frees the blocks a prefill engine holds for a decode engine
	// that never pulled them (simulated time). Default 480 s, as vLLM's
	// NIXL abort timeout.
	HeldTimeout time.Duration

	// TimeScale multiplies every simulated duration: 0.1 runs ten times
	// faster than the modelled hardware. Default 1.
	TimeScale float64
	// StreamChunkTokens is the number of decode tokens per SSE chunk; the
	// first token is always sent alone. Default 1.
	StreamChunkTokens int
	// StartupDelay is the simulated cold start (model load): /health answers
	// 503 until it has passed (scaled by TimeScale like every simulated
	// duration).
	StartupDelay time.Duration

	// KVEvents configures KV-event publishing, as vLLM's --kv-events-config.
	KVEvents KVEventsConfig
	// KVOffload configures offload to and restore from shared storage
	// (llm-d.ai/kv-offload; kvoffload.go). Off by default.
	KVOffload KVOffloadConfig
	// CPUTierBytes and DiskTierBytes size the engine's KV tiers below the
	// GPU cache, as vLLM's OffloadingConnector's (llm-d.ai/kv-cpu-tier-bytes,
	// llm-d.ai/kv-disk-tier-bytes; the engine's tiers.go): blocks written
	// through to CPU, CPU evictions to disk, loads instead of recompute,
	// KV events with medium CPU / STORAGE. 0: no tier (default).
	CPUTierBytes, DiskTierBytes int64

	// EngineID identifies this engine in kv_transfer_params. Default: a
	// random UUID, as vLLM's.
	EngineID string
	// AdvertiseHost and AdvertisePort are the address a decode engine uses
	// to reach this one (remote_host, remote_port in kv_transfer_params).
	// Defaults: Host when it is a specific address (127.0.0.1 otherwise),
	// and the port Serve listens on.
	AdvertiseHost string
	AdvertisePort int

	// Host and Port are where Run listens. Defaults 127.0.0.1 and 8000.
	Host string
	Port int

	// MaxBodyBytes bounds a request body; larger ones get 413. Default 16 MiB.
	MaxBodyBytes int64
	// ShutdownTimeout bounds the graceful drain of in-flight requests on
	// shutdown (wall time). Default 30 s.
	ShutdownTimeout time.Duration
	// ReleaseTimeout bounds the call that tells a prefill engine to free
	// the blocks a decode engine pulled (wall time). Default 2 s.
	ReleaseTimeout time.Duration

	// Logger receives structured logs; never prompts or generated text.
	// Default slog.Default().
	Logger *slog.Logger
}

// KVEventsConfig is vLLM's --kv-events-config.
type KVEventsConfig struct {
	Enable    bool   `json:"enable_kv_cache_events"`
	Publisher string `json:"publisher"`
	// Endpoint is a ZMQ endpoint. As vLLM does, a wildcard host (`*`, or an
	// IPv6 `::`) or an ipc/inproc endpoint binds; any other connects to a
	// subscriber that binds.
	Endpoint string `json:"endpoint"`
	// Topic is the first frame of every message; llm-d's convention is
	// kv@<pod ip>@<model>.
	Topic string `json:"topic"`
	// ReplayEndpoint is accepted for compatibility; replay is not
	// simulated.
	ReplayEndpoint string `json:"replay_endpoint,omitempty"`
	BufferSteps    int    `json:"buffer_steps,omitempty"`
	// HWM bounds the messages queued in the ZMQ socket (default 100,000).
	HWM int `json:"hwm,omitempty"`
	// MaxQueueSize bounds the batches queued between the engine loop and the
	// publisher; past it batches are dropped and counted (default 10,000).
	MaxQueueSize int `json:"max_queue_size,omitempty"`
}

// ParseKVEventsConfig parses the JSON of vLLM's --kv-events-config.
func ParseKVEventsConfig(s string) (KVEventsConfig, error) {
	var c KVEventsConfig
	dec := json.NewDecoder(strings.NewReader(s))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&c); err != nil {
		return c, fmt.Errorf("kv-events-config: %w", err)
	}
	if dec.More() {
		return c, fmt.Errorf("kv-events-config: trailing data after the JSON object")
	}
	if c.Enable && c.Publisher == "" {
		c.Publisher = "zmq"
	}
	if c.Enable && c.Endpoint == "" {
		c.Endpoint = "tcp://*:5557"
	}
	return c, c.validate()
}

func (c KVEventsConfig) validate() error {
	if !c.Enable {
		return nil
	}
	switch c.Publisher {
	case "zmq", "null":
	default:
		return fmt.Errorf("kv-events-config: publisher %q not supported (want zmq or null)", c.Publisher)
	}
	if c.Publisher == "null" {
		return nil
	}
	u, err := url.Parse(c.Endpoint)
	if err != nil || (u.Scheme != "tcp" && u.Scheme != "ipc") {
		return fmt.Errorf("kv-events-config: endpoint %q: want tcp://host:port or ipc://path", c.Endpoint)
	}
	if u.Scheme == "tcp" {
		if _, _, err := net.SplitHostPort(u.Host); err != nil {
			return fmt.Errorf("kv-events-config: endpoint %q: %v", c.Endpoint, err)
		}
	}
	if c.HWM < 0 || c.MaxQueueSize < 0 || c.BufferSteps < 0 {
		return fmt.Errorf("kv-events-config: negative hwm, max_queue_size or buffer_steps")
	}
	return nil
}

// bind reports whether the endpoint is one to bind (vLLM's rule) rather than
// connect.
func (c KVEventsConfig) bind() bool {
	e := c.Endpoint
	return strings.Contains(e, "*") || strings.Contains(e, "::") ||
		strings.HasPrefix(e, "ipc://") || strings.HasPrefix(e, "inproc://")
}

// LoadProfile resolves --profile: a built-in profile name, or the path of a
// YAML/JSON profile file (with "#name" to pick one of several).
func LoadProfile(spec string) (engine.Profile, error) {
	if spec == "" {
		spec = engine.DefaultProfile
	}
	if p, err := engine.BuiltinProfile(spec); err == nil {
		return p, nil
	}
	path, name, _ := strings.Cut(spec, "#")
	data, err := os.ReadFile(path)
	if err != nil {
		return engine.Profile{}, fmt.Errorf("profile %q is neither a built-in profile %v nor a readable file: %w",
			spec, engine.BuiltinProfileNames(), err)
	}
	ps, err := engine.ParseProfiles(data)
	if err != nil {
		return engine.Profile{}, fmt.Errorf("profile file %s: %w", path, err)
	}
	if name != "" {
		p, ok := ps[name]
		if !ok {
			return engine.Profile{}, fmt.Errorf("profile file %s has no profile %q", path, name)
		}
		return p, nil
	}
	if len(ps) != 1 {
		return engine.Profile{}, fmt.Errorf("profile file %s has %d profiles; name one as %s#<name>", path, len(ps), path)
	}
	for _, p := range ps {
		return p, nil
	}
	panic("unreachable")
}

// withDefaults returns c with zero fields defaulted, or the first invalid
// field.
func (c Config) withDefaults() (Config, error) {
	if c.Model == "" {
		c.Model = "demo"
	}
	if len(c.ServedModelNames) == 0 {
		c.ServedModelNames = []string{c.Model}
	}
	for _, n := range c.ServedModelNames {
		if strings.TrimSpace(n) == "" {
			return c, fmt.Errorf("served model names must not be empty")
		}
	}
	if c.Profile.Name == "" {
		p, err := engine.BuiltinProfile(engine.DefaultProfile)
		if err != nil {
			return c, err
		}
		c.Profile = p
	}
	if c.GPUMemoryUtilization != 0 {
		if !(c.GPUMemoryUtilization > 0 && c.GPUMemoryUtilization <= 1) {
			return c, fmt.Errorf("gpu memory utilization %v must be in (0, 1]", c.GPUMemoryUtilization)
		}
		c.Profile.GPUMemoryUtilization = c.GPUMemoryUtilization
	}
	if c.MaxModelLen > c.Profile.Model.MaxModelLen {
		return c, fmt.Errorf("max model len %d exceeds the model's maximum %d (profile %s)",
			c.MaxModelLen, c.Profile.Model.MaxModelLen, c.Profile.Name)
	}
	if c.HashAlgo == "" {
		c.HashAlgo = kvblock.AlgoSHA256CBOR
	}
	if c.TimeScale == 0 {
		c.TimeScale = 1
	}
	if !(c.TimeScale > 0) || math.IsInf(c.TimeScale, 0) {
		return c, fmt.Errorf("time scale %v must be a positive number", c.TimeScale)
	}
	if c.StreamChunkTokens == 0 {
		c.StreamChunkTokens = 1
	}
	if c.StreamChunkTokens < 1 || c.StreamChunkTokens > 4096 {
		return c, fmt.Errorf("stream chunk tokens %d must be in [1, 4096]", c.StreamChunkTokens)
	}
	if c.StartupDelay < 0 || c.HeldTimeout < 0 || c.ShutdownTimeout < 0 || c.ReleaseTimeout < 0 {
		return c, fmt.Errorf("durations must not be negative")
	}
	if c.MaxBodyBytes == 0 {
		c.MaxBodyBytes = 16 << 20
	}
	if c.MaxBodyBytes < 1024 {
		return c, fmt.Errorf("max body bytes %d too small", c.MaxBodyBytes)
	}
	if c.ShutdownTimeout == 0 {
		c.ShutdownTimeout = 30 * time.Second
	}
	if c.ReleaseTimeout == 0 {
		c.ReleaseTimeout = 2 * time.Second
	}
	if c.Host == "" {
		c.Host = "127.0.0.1"
	}
	if c.Port < 0 || c.Port > 65535 || c.AdvertisePort < 0 || c.AdvertisePort > 65535 {
		return c, fmt.Errorf("port out of range")
	}
	if c.Port == 0 {
		c.Port = 8000
	}
	if c.AdvertiseHost == "" {
		c.AdvertiseHost = c.Host
		if ip := net.ParseIP(c.Host); ip != nil && ip.IsUnspecified() || c.Host == "" {
			c.AdvertiseHost = "127.0.0.1"
		}
	}
	if c.EngineID == "" {
		c.EngineID = newUUID()
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	if err := c.KVEvents.validate(); err != nil {
		return c, err
	}
	if c.KVEvents.MaxQueueSize == 0 {
		c.KVEvents.MaxQueueSize = 10000
	}
	if c.KVEvents.HWM == 0 {
		c.KVEvents.HWM = 100000
	}
	if c.KVEvents.ReplayEndpoint != "" {
		c.Logger.Warn("kv events replay endpoint is not simulated; ignoring it", "replay_endpoint", c.KVEvents.ReplayEndpoint)
	}
	return c, nil
}
