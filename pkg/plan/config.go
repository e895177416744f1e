package plan

import (
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"slices"
	"strconv"
	"time"

	"github.com/llmd-kn/llmd-kn/pkg/engine"
	"github.com/llmd-kn/llmd-kn/pkg/kvblock"
	"github.com/llmd-kn/llmd-kn/pkg/router"
)

// Defaults of a Config, the activator's and vLLM's.
const (
	DefaultScrapeInterval = 50 * time.Millisecond
	DefaultStaleAfter     = 500 * time.Millisecond
	DefaultKVEventDelay   = 5 * time.Millisecond
	DefaultScaleInterval  = 2 * time.Second
	DefaultRequestTimeout = 10 * time.Minute
	DefaultPDThreshold    = 512
)

// Config describes a modelled deployment and how requests reach it. Start
// from DefaultConfig: zero values are taken literally (a zero KVEventDelay
// is an instant index, a zero Overhead a free network).
type Config struct {
	// Profile is the engines' model and accelerator.
	Profile engine.Profile
	// Engines is the number of decode-capable engines (role both, or role
	// decode with P/D); PrefillEngines the prefill engines. With
	// PrefillEngines > 0, or Disaggregated, the deployment runs P/D: the
	// decode engines take the decode role.
	Engines        int
	PrefillEngines int
	Disaggregated  bool
	// Engine configures every engine (its Profile, Role, Seed and HashSeed
	// are set by the planner).
	Engine EngineConfig

	// RouterConfig is the router's configuration (nil: the built-in one).
	// Its precise index keys blocks by their tokens at its own block size,
	// whatever the engines' (Engine.BlockSize).
	RouterConfig *router.Config
	// Routing is the routing profile ("" for the configuration's default).
	Routing string
	// PDThreshold is the uncached prompt length from which a profile with
	// a P/D decider disaggregates (the llm-d.ai/pd-threshold-tokens
	// annotation, which the activator always applies).
	PDThreshold int

	// Model is the model name requests carry (it seeds the router's
	// approximate keys); "" means the profile's model name.
	Model string
	// IgnoreEOS generates exactly each request's MaxTokens, as bench asks
	// vLLM to by default.
	IgnoreEOS bool

	// ScrapeInterval is how often the activator reads each engine's
	// metrics; StaleAfter when they count as unknown.
	ScrapeInterval time.Duration
	StaleAfter     time.Duration
	// KVEventDelay is the lag from the end of an engine step to its KV
	// events reaching the router's precise index.
	KVEventDelay time.Duration
	// Overhead is added to every request hop from the activator to an
	// engine (network, proxy): once for a plain request, twice for P/D.
	Overhead time.Duration
	// Flow is the activator's flow control.
	Flow FlowConfig
	// RequestTimeout is the client's per-request timeout from send to the
	// end of the stream (bench's default: 10 minutes); 0 means none.
	RequestTimeout time.Duration

	// Scaler decides replica counts every ScaleInterval; nil keeps Engines
	// and PrefillEngines. StartupDelay is how long a new engine takes to
	// come up.
	Scaler        Scaler
	ScaleInterval time.Duration
	StartupDelay  time.Duration

	// Seed drives the router's tie-breaks and the engines' sampling.
	Seed uint64

	// CriticalShare is the fraction of the workload's requests sent in the
	// critical tier (chosen by a fixed hash of their index; the others are
	// standard): vLLM priority 0 instead of 50 under the priority policy.
	CriticalShare float64
	// Batch is a backlog of batch-tier work run beside the workload (see
	// BatchConfig); the zero value runs none.
	Batch BatchConfig
	// KVOffload is the modelled KV offload to shared storage (see
	// KVOffloadConfig); the zero value is off.
	KVOffload KVOffloadConfig
}

// EngineConfig is the vLLM configuration of every engine; zero fields take
// vLLM's defaults (see engine.Config).
type EngineConfig struct {
	BlockSize           int
	MaxNumSeqs          int
	MaxNumBatchedTokens int
	// PrefillMaxNumBatchedTokens is the prefill engines' budget when it
	// differs (a chosen budget: prefill engines have no TPOT to protect);
	// 0 means MaxNumBatchedTokens.
	PrefillMaxNumBatchedTokens int
	MaxModelLen                int
	// NumBlocks overrides the KV capacity derived from the profile.
	NumBlocks int
	Policy    engine.Policy
	// CPUTierBytes and DiskTierBytes size every aggregated engine's KV
	// tiers below its GPU cache (llm-d.ai/kv-cpu-tier-bytes,
	// kv-disk-tier-bytes; engine.Config). Prefill and decode engines get
	// none, as the simulator's pods. 0: no tier.
	CPUTierBytes, DiskTierBytes int64
}

// FlowConfig is the activator's flow control for the requests' tier (the
// standard tier of the default tier table by default).
type FlowConfig struct {
	// Enabled holds requests in the activator while the pool is saturated.
	Enabled bool
	// MaxSaturation is the pool saturation under which requests are
	// dispatched (0: no limit, only queueing for a ready engine).
	MaxSaturation float64
	// MaxQueueTime bounds the wait; past it the request gets a 503.
	MaxQueueTime time.Duration
	// MaxQueued bounds the queue; past it arrivals get a 503.
	MaxQueued int
}

// DefaultFlow is the standard tier of the activator's default tier table.
func DefaultFlow() FlowConfig {
	return FlowConfig{Enabled: true, MaxSaturation: 1, MaxQueueTime: 60 * time.Second, MaxQueued: 10000}
}

// DefaultConfig is one Llama-3.1-8B engine on an H100 behind the activator
// with its defaults, the default routing profile and no P/D.
func DefaultConfig() Config {
	p, err := engine.BuiltinProfile(engine.DefaultProfile)
	if err != nil {
		panic(err)
	}
	return Config{
		Profile:        p,
		Engines:        1,
		PDThreshold:    DefaultPDThreshold,
		IgnoreEOS:      true,
		ScrapeInterval: DefaultScrapeInterval,
		StaleAfter:     DefaultStaleAfter,
		KVEventDelay:   DefaultKVEventDelay,
		Flow:           DefaultFlow(),
		RequestTimeout: DefaultRequestTimeout,
		ScaleInterval:  DefaultScaleInterval,
	}
}

// pd reports whether the deployment runs prefill/decode disaggregation.
func (c *Config) pd() bool { return c.Disaggregated || c.PrefillEngines > 0 }

// blockSize is the engines' KV block size.
func (c *Config) blockSize() int {
	if c.Engine.BlockSize > 0 {
		return c.Engine.BlockSize
	}
	return kvblock.DefaultBlockSize
}

// Validate reports the first problem with the configuration.
func (c *Config) Validate() error {
	if err := c.Profile.Validate(); err != nil {
		return err
	}
	nonNeg := func(name string, d time.Duration) error {
		if d < 0 {
			return fmt.Errorf("%s must not be negative, got %s", name, d)
		}
		return nil
	}
	switch {
	case c.Engines < 0 || c.PrefillEngines < 0:
		return fmt.Errorf("engine counts must not be negative (engines %d, prefill engines %d)", c.Engines, c.PrefillEngines)
	case c.Engines == 0 && c.Scaler == nil:
		return errors.New("no decode-capable engine: requests could never be served")
	case c.PDThreshold < 0:
		return fmt.Errorf("P/D threshold must not be negative, got %d", c.PDThreshold)
	case c.ScrapeInterval <= 0:
		return fmt.Errorf("scrape interval must be positive, got %s", c.ScrapeInterval)
	case c.StaleAfter <= 0:
		return fmt.Errorf("stale-after must be positive, got %s", c.StaleAfter)
	case c.ScaleInterval <= 0:
		return fmt.Errorf("scale interval must be positive, got %s", c.ScaleInterval)
	case c.Engine.BlockSize < 0 || c.Engine.MaxNumSeqs < 0 || c.Engine.MaxNumBatchedTokens < 0 || c.Engine.PrefillMaxNumBatchedTokens < 0 ||
		c.Engine.MaxModelLen < 0 || c.Engine.NumBlocks < 0:
		return errors.New("engine limits must not be negative")
	}
	for _, d := range []struct {
		name string
		v    time.Duration
	}{{"KV event delay", c.KVEventDelay}, {"overhead", c.Overhead}, {"request timeout", c.RequestTimeout},
		{"startup delay", c.StartupDelay}, {"flow-control queue time", c.Flow.MaxQueueTime}} {
		if err := nonNeg(d.name, d.v); err != nil {
			return err
		}
	}
	if f := c.Flow; f.Enabled {
		if f.MaxSaturation < 0 || math.IsNaN(f.MaxSaturation) || math.IsInf(f.MaxSaturation, 0) {
			return fmt.Errorf("flow control: max saturation must be a non-negative number, got %v", f.MaxSaturation)
		}
		if f.MaxQueueTime <= 0 {
			return fmt.Errorf("flow control: max queue time must be positive, got %s", f.MaxQueueTime)
		}
		if f.MaxQueued < 1 {
			return fmt.Errorf("flow control: max queued must be positive, got %d", f.MaxQueued)
		}
	}
	if !(c.CriticalShare >= 0 && c.CriticalShare <= 1) {
		return fmt.Errorf("critical share must be in [0, 1], got %v", c.CriticalShare)
	}
	if err := c.Batch.validate(); err != nil {
		return err
	}
	if err := c.KVOffload.validate(c); err != nil {
		return err
	}
	rc := c.routerConfig()
	if _, err := engine.New(c.engineConfig(engine.RoleBoth, 0, false)); err != nil {
		return err
	}
	name := c.Routing
	if name == "" {
		name = rc.DefaultProfile
	}
	if !slices.Contains(rc.ProfileNames(), name) {
		return fmt.Errorf("unknown routing profile %q (have %v)", name, rc.ProfileNames())
	}
	return nil
}

// engineConfig is the configuration of one engine.
func (c *Config) engineConfig(role engine.Role, seed uint64, kvEvents bool) engine.Config {
	e := c.Engine
	if role == engine.RolePrefill && e.PrefillMaxNumBatchedTokens > 0 {
		e.MaxNumBatchedTokens = e.PrefillMaxNumBatchedTokens
	}
	tier := func(b int64) int64 {
		if role != engine.RoleBoth {
			return 0
		}
		return b
	}
	return engine.Config{
		Profile:             c.Profile,
		Role:                role,
		BlockSize:           e.BlockSize,
		MaxNumSeqs:          e.MaxNumSeqs,
		MaxNumBatchedTokens: e.MaxNumBatchedTokens,
		MaxModelLen:         e.MaxModelLen,
		NumBlocks:           e.NumBlocks,
		Policy:              e.Policy,
		HashSeed:            c.routerConfig().PreciseIndex.HashSeed,
		Seed:                seed,
		DisableKVEvents:     !kvEvents,
		CPUTierBytes:        tier(e.CPUTierBytes),
		DiskTierBytes:       tier(e.DiskTierBytes),
	}
}

func (c *Config) routerConfig() *router.Config {
	if c.RouterConfig != nil {
		return c.RouterConfig
	}
	return router.DefaultConfig()
}

// RouterConfigFor returns the built-in router configuration with the
// precise index at the engines' block size and hash seed, which is what a
// deployment with that block size configures.
func RouterConfigFor(blockSize int, hashSeed uint64) (*router.Config, error) {
	doc, err := json.Marshal(map[string]any{"preciseIndex": map[string]any{"blockSize": blockSize, "hashSeed": hashSeed}})
	if err != nil {
		return nil, err
	}
	return router.ParseConfig(doc)
}

// ChooseStepBudget resolves a --max-num-batched-tokens value for engines
// of prof: a token count as given, or "auto": engine.StepBudgetFor from
// the TPOT target (decode engines' when disaggregated), as the webhook
// and kn-llmd local choose it, with prefill engines' own budget. It
// returns the budgets and the reason.
func ChooseStepBudget(value string, prof *engine.Profile, tpot time.Duration, disaggregated bool) (budget, prefill int, reason string, err error) {
	if value != "auto" {
		n, err := strconv.Atoi(value)
		if err != nil || n < 1 {
			return 0, 0, "", fmt.Errorf("must be auto or a positive token count, got %q", value)
		}
		return n, 0, "given", nil
	}
	role := engine.RoleBoth
	if disaggregated {
		role = engine.RoleDecode
		prefill = prof.StepBudgetFor(engine.RolePrefill, tpot).MaxNumBatchedTokens
	}
	b := prof.StepBudgetFor(role, tpot)
	return b.MaxNumBatchedTokens, prefill, b.Reason, nil
}
