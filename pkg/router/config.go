package router

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"os"
	"regexp"
	"slices"
	"strings"

	"sigs.k8s.io/yaml"
)

// ConfigMapName is the cluster ConfigMap holding the router configuration
// (key ConfigKey); locally the same YAML is a file.
const (
	ConfigMapName = "config-llmd-router"
	ConfigKey     = "router.yaml"
)

// DefaultConfigYAML is the built-in configuration. ParseConfig starts from
// it: a document adds profiles or replaces them by name, and overrides the
// index settings it names.
const DefaultConfigYAML = `# The profile a Service gets without the llm-d.ai/routing-profile annotation.
defaultProfile: default

# The router's own record of which prompt blocks it sent where (llm-d's
# estimated prefix cache). Blocks are blockSize tokens, or the endpoints'
# KV block size if larger; at most maxBlocks blocks of a prompt are indexed.
# lruCapacity bounds each endpoint's record in blocks: 0 takes the
# endpoint's reported KV capacity (NumBlocks) when known, else 31250.
approximateIndex:
  blockSize: 64
  maxBlocks: 2048
  lruCapacity: 0

# The mirror of the engines' prefix caches, fed by their KV events: keyed by
# the router's own hash (seeded by hashSeed) of the token ids the events
# carry, at its own blockSize, so neither needs to match the engines' (any
# vLLM block_size, PYTHONHASHSEED or --prefix-caching-hash-algo works); an
# endpoint that reports more than maxBlocksPerEndpoint blocks on one medium
# (GPU, CPU, disk: each tier counts apart) has lost removal events and is
# cleared.
preciseIndex:
  blockSize: 16
  hashSeed: 0
  maxBlocksPerEndpoint: 262144

profiles:
# Baseline: rotate over ready endpoints.
- name: round-robin
  plugins:
  - name: ready
  - name: role
  - name: round-robin

# Baseline: Knative's activator with containerConcurrency 0: two endpoints
# drawn at random, the one with fewer requests in flight wins.
- name: least-request
  plugins:
  - name: ready
  - name: role
  - name: least-request
  - name: p2c

# Baseline: llm-d's estimated prefix-cache configuration.
- name: prefix-approx
  plugins:
  - name: ready
  - name: role
  - name: prefix-approx
    weight: 1
  - name: kv-cache-utilization
    weight: 1
  - name: queue
    weight: 1
  - name: max-score
  - name: pd-decider
    parameters:
      threshold: 512
      prefillProfile: prefill-approx

# Baseline: llm-d's precise prefix-cache configuration.
- name: kv-precise
  plugins:
  - name: ready
  - name: role
  - name: prefix-precise
    weight: 3
  - name: kv-cache-utilization
    weight: 2
  - name: queue
    weight: 2
  - name: max-score
  - name: pd-decider
    parameters:
      threshold: 512
      prefillProfile: prefill-precise

# Ours, the best measured (docs/benchmarks/routing-local): cache affinity
# from the engines' own KV events as a strong prior, the predicted time to
# first token (queue, uncached prefill, transfer) in place of llm-d's queue
# length, and KV headroom. Pure TTFT prediction alone spreads a group's
# requests and loses its prefix under load; affinity alone piles work on one
# pod while others idle.
- name: default
  plugins:
  - name: ready
  - name: role
  - name: fresh
  - name: prefix-precise
    weight: 3
  - name: ttft-cost
    weight: 2
  - name: kv-cache-utilization
    weight: 1
  - name: max-score
  - name: pd-decider
    parameters:
      threshold: 512
      prefillProfile: prefill

# The cost model alone: the endpoint with the lowest predicted time to first
# token.
- name: ttft-cost
  plugins:
  - name: ready
  - name: role
  - name: fresh
  - name: ttft-cost
    weight: 1
  - name: max-score
  - name: pd-decider
    parameters:
      threshold: 512
      prefillProfile: prefill

# Prefill-endpoint profiles used by the P/D deciders above.
- name: prefill
  plugins:
  - name: ready
  - name: role
    parameters:
      roles: [prefill]
  - name: fresh
  - name: ttft-cost
  - name: max-score
- name: prefill-approx
  plugins:
  - name: ready
  - name: role
    parameters:
      roles: [prefill]
  - name: prefix-approx
  - name: queue
  - name: max-score
- name: prefill-precise
  plugins:
  - name: ready
  - name: role
    parameters:
      roles: [prefill]
  - name: prefix-precise
  - name: queue
  - name: max-score
`

// Config is a parsed, validated router configuration.
type Config struct {
	DefaultProfile   string             `json:"defaultProfile"`
	ApproximateIndex ApproxIndexConfig  `json:"approximateIndex"`
	PreciseIndex     PreciseIndexConfig `json:"preciseIndex"`
	Profiles         []ProfileConfig    `json:"profiles"`

	specs map[string]*profileSpec
}

// ApproxIndexConfig configures the approximate prefix index.
type ApproxIndexConfig struct {
	BlockSize   int `json:"blockSize"`
	MaxBlocks   int `json:"maxBlocks"`
	LRUCapacity int `json:"lruCapacity"`
}

// PreciseIndexConfig configures the precise prefix index.
type PreciseIndexConfig struct {
	BlockSize            int    `json:"blockSize"`
	HashSeed             uint64 `json:"hashSeed"`
	MaxBlocksPerEndpoint int    `json:"maxBlocksPerEndpoint"`
}

// ProfileConfig is a named list of plugins.
type ProfileConfig struct {
	Name    string         `json:"name"`
	Plugins []PluginConfig `json:"plugins"`
}

// PluginConfig is one plugin of a profile: its registered name, a weight
// (scorers only, default 1) and its typed parameters.
type PluginConfig struct {
	Name       string          `json:"name"`
	Weight     *float64        `json:"weight,omitempty"`
	Parameters json.RawMessage `json:"parameters,omitempty"`
}

// ProfileNames lists the configured profiles, sorted.
func (c *Config) ProfileNames() []string {
	names := make([]string, 0, len(c.Profiles))
	for _, p := range c.Profiles {
		names = append(names, p.Name)
	}
	slices.Sort(names)
	return names
}

// DefaultLRUCapacity is llm-d's per-endpoint approximate-index capacity for
// endpoints that do not report theirs: a Llama-3-8B's 31,250 KV blocks on
// one H100.
const DefaultLRUCapacity = 31250

// ConfigError is a configuration problem at a field path, such as
// profiles[2].plugins[1].parameters.blockSize.
type ConfigError struct {
	Path, Msg string
}

func (e *ConfigError) Error() string {
	if e.Path == "" {
		return "router config: " + e.Msg
	}
	return "router config: " + e.Path + ": " + e.Msg
}

func cfgErr(path, format string, args ...any) *ConfigError {
	return &ConfigError{Path: path, Msg: fmt.Sprintf(format, args...)}
}

// within prefixes the path of a ConfigError from a nested decode or
// validation; other errors are placed at prefix.
func within(prefix string, err error) error {
	var ce *ConfigError
	if errors.As(err, &ce) {
		return &ConfigError{Path: joinPath(prefix, ce.Path), Msg: ce.Msg}
	}
	return &ConfigError{Path: prefix, Msg: err.Error()}
}

func joinPath(a, b string) string {
	switch {
	case a == "":
		return b
	case b == "":
		return a
	case b[0] == '[':
		return a + b
	}
	return a + "." + b
}

// decodeStrict decodes JSON into v, rejecting unknown fields and trailing
// data, with errors placed at their field.
func decodeStrict(data []byte, v any) error {
	if len(data) == 0 || bytes.Equal(bytes.TrimSpace(data), []byte("null")) {
		return nil
	}
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		var te *json.UnmarshalTypeError
		if errors.As(err, &te) {
			return cfgErr(te.Field, "cannot use %s as %s", article(te.Value), typeWord(te.Type.Kind().String()))
		}
		msg := strings.TrimPrefix(err.Error(), "json: ")
		return cfgErr("", "%s", msg)
	}
	if dec.More() {
		return cfgErr("", "trailing data")
	}
	return nil
}

func article(w string) string {
	if w != "" && strings.ContainsRune("aeiou", rune(w[0])) {
		return "an " + w
	}
	return "a " + w
}

func typeWord(kind string) string {
	switch {
	case strings.HasPrefix(kind, "int"), strings.HasPrefix(kind, "uint"):
		return "an integer"
	case strings.HasPrefix(kind, "float"):
		return "a number"
	case kind == "struct", kind == "map":
		return "a mapping"
	case kind == "slice":
		return "a list"
	}
	return article(kind)
}

var profileNameRE = regexp.MustCompile(`^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$`)

// ParseConfig parses a router configuration (YAML or JSON) over the built-in
// one (DefaultConfigYAML). Unknown fields, unknown plugins and bad
// parameters are errors that name the offending field path.
func ParseConfig(data []byte) (*Config, error) {
	base, err := parseDocument([]byte(DefaultConfigYAML), nil)
	if err != nil {
		return nil, fmt.Errorf("built-in %w", err)
	}
	if len(bytes.TrimSpace(data)) == 0 {
		return base, nil
	}
	return parseDocument(data, base)
}

// DefaultConfig returns the built-in configuration.
func DefaultConfig() *Config {
	c, err := ParseConfig(nil)
	if err != nil {
		panic(err) // the built-in YAML is tested
	}
	return c
}

type document struct {
	DefaultProfile   *string           `json:"defaultProfile"`
	ApproximateIndex json.RawMessage   `json:"approximateIndex"`
	PreciseIndex     json.RawMessage   `json:"preciseIndex"`
	Profiles         []json.RawMessage `json:"profiles"`
}

type profileDoc struct {
	Name    string            `json:"name"`
	Plugins []json.RawMessage `json:"plugins"`
}

func parseDocument(data []byte, base *Config) (*Config, error) {
	js, err := yaml.YAMLToJSONStrict(data)
	if err != nil {
		msg := strings.ReplaceAll(strings.ReplaceAll(err.Error(), ":\n", ": "), "\n", "; ")
		msg = strings.Join(strings.Fields(msg), " ")
		return nil, cfgErr("", "%s", msg)
	}
	var doc document
	if err := decodeStrict(js, &doc); err != nil {
		return nil, err
	}
	cfg := &Config{specs: map[string]*profileSpec{}}
	if base != nil {
		cfg.DefaultProfile = base.DefaultProfile
		cfg.ApproximateIndex, cfg.PreciseIndex = base.ApproximateIndex, base.PreciseIndex
		cfg.Profiles = slices.Clone(base.Profiles)
		for k, v := range base.specs {
			cfg.specs[k] = v
		}
	}
	if doc.DefaultProfile != nil {
		cfg.DefaultProfile = *doc.DefaultProfile
	}
	if err := decodeStrict(doc.ApproximateIndex, &cfg.ApproximateIndex); err != nil {
		return nil, within("approximateIndex", err)
	}
	if err := decodeStrict(doc.PreciseIndex, &cfg.PreciseIndex); err != nil {
		return nil, within("preciseIndex", err)
	}
	if err := cfg.validateIndexes(); err != nil {
		return nil, err
	}
	seen := map[string]bool{}
	for i, raw := range doc.Profiles {
		path := fmt.Sprintf("profiles[%d]", i)
		pc, spec, err := parseProfile(raw, path)
		if err != nil {
			return nil, err
		}
		if seen[pc.Name] {
			return nil, cfgErr(path+".name", "duplicate profile %q", pc.Name)
		}
		seen[pc.Name] = true
		if j := slices.IndexFunc(cfg.Profiles, func(p ProfileConfig) bool { return p.Name == pc.Name }); j >= 0 {
			cfg.Profiles[j] = pc
		} else {
			cfg.Profiles = append(cfg.Profiles, pc)
		}
		cfg.specs[pc.Name] = spec
	}
	return cfg, cfg.validateProfiles()
}

func (c *Config) validateIndexes() error {
	a, p := c.ApproximateIndex, c.PreciseIndex
	switch {
	case a.BlockSize < 1 || a.BlockSize > 1<<16:
		return cfgErr("approximateIndex.blockSize", "must be in [1, 65536], got %d", a.BlockSize)
	case a.MaxBlocks < 1:
		return cfgErr("approximateIndex.maxBlocks", "must be >= 1, got %d", a.MaxBlocks)
	case a.LRUCapacity < 0:
		return cfgErr("approximateIndex.lruCapacity", "must be >= 0 (0: the endpoint's KV capacity), got %d", a.LRUCapacity)
	case p.BlockSize < 1 || p.BlockSize > 1<<16:
		return cfgErr("preciseIndex.blockSize", "must be in [1, 65536], got %d", p.BlockSize)
	case p.MaxBlocksPerEndpoint < 1:
		return cfgErr("preciseIndex.maxBlocksPerEndpoint", "must be >= 1, got %d", p.MaxBlocksPerEndpoint)
	}
	return nil
}

func (c *Config) validateProfiles() error {
	if _, ok := c.specs[c.DefaultProfile]; !ok {
		return cfgErr("defaultProfile", "unknown profile %q (have %s)", c.DefaultProfile, strings.Join(c.ProfileNames(), ", "))
	}
	for _, name := range c.ProfileNames() {
		s := c.specs[name]
		if s.pd == nil {
			continue
		}
		path := joinPath(s.pdPath, "parameters.prefillProfile")
		pre, ok := c.specs[s.pd.prefillProfile]
		switch {
		case !ok:
			return cfgErr(path, "unknown profile %q", s.pd.prefillProfile)
		case pre.name == s.name:
			return cfgErr(path, "a profile cannot be its own prefill profile")
		case pre.pd != nil:
			return cfgErr(path, "profile %q has a pd-decider itself", pre.name)
		}
	}
	return nil
}

type pluginDoc struct {
	Name       string          `json:"name"`
	Weight     *float64        `json:"weight"`
	Parameters json.RawMessage `json:"parameters"`
}

func parseProfile(raw json.RawMessage, path string) (ProfileConfig, *profileSpec, error) {
	var pd profileDoc
	if err := decodeStrict(raw, &pd); err != nil {
		return ProfileConfig{}, nil, within(path, err)
	}
	if !profileNameRE.MatchString(pd.Name) {
		return ProfileConfig{}, nil, cfgErr(path+".name", "%q is not a valid profile name (lower-case letters, digits and '-', at most 63)", pd.Name)
	}
	pc := ProfileConfig{Name: pd.Name}
	spec := &profileSpec{name: pd.Name}
	used := map[string]bool{}
	for j, rawPlugin := range pd.Plugins {
		pp := fmt.Sprintf("%s.plugins[%d]", path, j)
		var doc pluginDoc
		if err := decodeStrict(rawPlugin, &doc); err != nil {
			return pc, nil, within(pp, err)
		}
		def, ok := registry[doc.Name]
		if !ok {
			return pc, nil, cfgErr(pp+".name", "unknown plugin %q (known: %s)", doc.Name, strings.Join(PluginNames(), ", "))
		}
		if used[doc.Name] {
			return pc, nil, cfgErr(pp+".name", "plugin %q appears twice", doc.Name)
		}
		used[doc.Name] = true
		impl, err := def.parse(doc.Parameters)
		if err != nil {
			return pc, nil, within(pp+".parameters", err)
		}
		weight := 1.0
		if doc.Weight != nil {
			if def.kind != KindScorer {
				return pc, nil, cfgErr(pp+".weight", "only scorers take a weight; %q is a %s", doc.Name, def.kind)
			}
			weight = *doc.Weight
			if !(weight > 0) || math.IsInf(weight, 0) {
				return pc, nil, cfgErr(pp+".weight", "must be a positive number, got %v", weight)
			}
		}
		switch def.kind {
		case KindFilter:
			spec.filters = append(spec.filters, named[filter]{doc.Name, impl.(filter)})
		case KindScorer:
			spec.scorers = append(spec.scorers, weighted{doc.Name, weight, impl.(scorer)})
		case KindPicker:
			if spec.picker.impl != nil {
				return pc, nil, cfgErr(pp+".name", "profile has a second picker (%q after %q)", doc.Name, spec.picker.name)
			}
			spec.picker = named[pickerSpec]{doc.Name, impl.(pickerSpec)}
		case KindDecider:
			spec.pd, spec.pdPath = impl.(*pdDecider), pp
		}
		pc.Plugins = append(pc.Plugins, PluginConfig{Name: doc.Name, Weight: doc.Weight, Parameters: doc.Parameters})
	}
	if spec.picker.impl == nil {
		spec.picker = named[pickerSpec]{"max-score", maxScorePicker{}}
	}
	spec.finish()
	return pc, spec, nil
}

// LoadConfig reads the router configuration at path (the
// config-llmd-router data as mounted); an empty path is DefaultConfig.
// Errors name the file.
func LoadConfig(path string) (*Config, error) {
	if path == "" {
		return DefaultConfig(), nil
	}
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	c, err := ParseConfig(data)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return c, nil
}
