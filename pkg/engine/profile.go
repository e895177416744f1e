package engine

import (
	_ "embed"
	"fmt"
	"math"
	"sort"
	"time"

	"sigs.k8s.io/yaml"
)

// Model is the shape of a transformer, as its config.json gives it.
type Model struct {
	Name           string  `json:"name"`
	Params         float64 `json:"params"`
	Layers         int     `json:"layers"`
	Hidden         int     `json:"hidden"`
	AttentionHeads int     `json:"attentionHeads"`
	KVHeads        int     `json:"kvHeads"`
	HeadDim        int     `json:"headDim"`
	DtypeBytes     int     `json:"dtypeBytes"`
	MaxModelLen    int     `json:"maxModelLen"`
}

// Accelerator is the hardware one engine runs on; Count devices work in
// tensor parallel.
type Accelerator struct {
	Name         string  `json:"name"`
	Count        int     `json:"count"`
	MemoryBytes  float64 `json:"memoryBytes"`
	PeakFlops    float64 `json:"peakFlops"`
	HBMBandwidth float64 `json:"hbmBandwidth"`
}

// Profile is a model on an accelerator, with the efficiency factors that turn
// a roofline into step times. Profiles are data: see profiles.yaml.
type Profile struct {
	Name                   string      `json:"name"`
	Model                  Model       `json:"model"`
	Accelerator            Accelerator `json:"accelerator"`
	MFU                    float64     `json:"mfu"`
	MBU                    float64     `json:"mbu"`
	GPUMemoryUtilization   float64     `json:"gpuMemoryUtilization"`
	ActivationReserveBytes float64     `json:"activationReserveBytes"`
	StepOverheadSeconds    float64     `json:"stepOverheadSeconds"`
	KVLinkBandwidth        float64     `json:"kvLinkBandwidth"`
	// MaxNumSeqs, when set, is the running-batch bound engines of this
	// profile should run with (vLLM's --max-num-seqs): the step-budget
	// choice sets it along with the budget. 0 leaves vLLM's default.
	MaxNumSeqs int `json:"maxNumSeqs,omitempty"`
	// Shared storage the engine restores offloaded KV from (llm-d.ai/kv-offload):
	// StorageBandwidth in bytes/s (0: no storage; restore unavailable), the
	// latency of one object GET before its first byte, the tokens one
	// object holds (LMCache's chunk, 256), and how many GETs run at once.
	StorageBandwidth            float64 `json:"storageBandwidth,omitempty"`
	StorageObjectLatencySeconds float64 `json:"storageObjectLatencySeconds,omitempty"`
	StorageObjectTokens         int     `json:"storageObjectTokens,omitempty"`
	StorageConcurrency          int     `json:"storageConcurrency,omitempty"`
	// The engine's own tiers below the GPU cache (Config.CPUTierBytes,
	// DiskTierBytes): load bandwidth in bytes/s and latency per load; 0
	// takes DefaultCPUTierBandwidth etc. (see tiers.go for their sources).
	CPUTierBandwidth       float64 `json:"cpuTierBandwidth,omitempty"`
	CPUTierLatencySeconds  float64 `json:"cpuTierLatencySeconds,omitempty"`
	DiskTierBandwidth      float64 `json:"diskTierBandwidth,omitempty"`
	DiskTierLatencySeconds float64 `json:"diskTierLatencySeconds,omitempty"`
}

// HasStorage reports whether the profile models shared KV storage.
func (p *Profile) HasStorage() bool { return p.StorageBandwidth > 0 }

// RestoreTime is how long the KV of tokens takes to come back from shared
// storage: the bytes at the storage bandwidth, plus one object latency per
// round of concurrent GETs. With C streams sharing the bandwidth, each
// round of C objects costs a latency plus its bytes at the full
// bandwidth, so the bytes term is the physical floor and the latency term
// what object granularity adds to it. 0 without storage.
func (p *Profile) RestoreTime(tokens int) time.Duration {
	if tokens <= 0 || !p.HasStorage() {
		return 0
	}
	objects := (tokens + p.StorageObjectTokens - 1) / p.StorageObjectTokens
	rounds := (objects + p.StorageConcurrency - 1) / p.StorageConcurrency
	sec := float64(tokens)*p.KVBytesPerToken()/p.StorageBandwidth + float64(rounds)*p.StorageObjectLatencySeconds
	return time.Duration(sec * float64(time.Second))
}

// KVBytesPerToken is 2 (K and V) x layers x KV heads x head dim x dtype bytes.
func (p *Profile) KVBytesPerToken() float64 {
	m := p.Model
	return float64(2 * m.Layers * m.KVHeads * m.HeadDim * m.DtypeBytes)
}

// WeightBytes is the size of the weights across all devices.
func (p *Profile) WeightBytes() float64 {
	return p.Model.Params * float64(p.Model.DtypeBytes)
}

// KVCapacityTokens is how many tokens of KV cache fit:
// (memory x utilization - weights - activation reserve) / KV bytes per token,
// summed over the tensor-parallel devices.
func (p *Profile) KVCapacityTokens() int {
	n := float64(p.Accelerator.Count)
	free := n*(p.Accelerator.MemoryBytes*p.GPUMemoryUtilization-p.ActivationReserveBytes) - p.WeightBytes()
	if free <= 0 {
		return 0
	}
	return int(free / p.KVBytesPerToken())
}

// Validate reports the first field that makes the profile unusable.
func (p *Profile) Validate() error {
	pos := func(field string, v float64) error {
		if !(v > 0) || math.IsInf(v, 0) {
			return fmt.Errorf("profile %q: %s must be positive, got %v", p.Name, field, v)
		}
		return nil
	}
	frac := func(field string, v float64) error {
		if !(v > 0 && v <= 1) {
			return fmt.Errorf("profile %q: %s must be in (0, 1], got %v", p.Name, field, v)
		}
		return nil
	}
	if p.Name == "" {
		return fmt.Errorf("profile: name is required")
	}
	checks := []error{
		pos("model.params", p.Model.Params),
		pos("model.layers", float64(p.Model.Layers)),
		pos("model.hidden", float64(p.Model.Hidden)),
		pos("model.attentionHeads", float64(p.Model.AttentionHeads)),
		pos("model.kvHeads", float64(p.Model.KVHeads)),
		pos("model.headDim", float64(p.Model.HeadDim)),
		pos("model.dtypeBytes", float64(p.Model.DtypeBytes)),
		pos("model.maxModelLen", float64(p.Model.MaxModelLen)),
		pos("accelerator.count", float64(p.Accelerator.Count)),
		pos("accelerator.memoryBytes", p.Accelerator.MemoryBytes),
		pos("accelerator.peakFlops", p.Accelerator.PeakFlops),
		pos("accelerator.hbmBandwidth", p.Accelerator.HBMBandwidth),
		frac("mfu", p.MFU),
		frac("mbu", p.MBU),
		frac("gpuMemoryUtilization", p.GPUMemoryUtilization),
		pos("kvLinkBandwidth", p.KVLinkBandwidth),
	}
	for _, err := range checks {
		if err != nil {
			return err
		}
	}
	if p.MaxNumSeqs < 0 || p.MaxNumSeqs > 1<<16 {
		return fmt.Errorf("profile %q: maxNumSeqs must be in [0, 65536], got %d", p.Name, p.MaxNumSeqs)
	}
	if p.StorageBandwidth < 0 || math.IsNaN(p.StorageBandwidth) || math.IsInf(p.StorageBandwidth, 0) ||
		p.StorageObjectLatencySeconds < 0 || math.IsNaN(p.StorageObjectLatencySeconds) || p.StorageObjectLatencySeconds > 60 {
		return fmt.Errorf("profile %q: storageBandwidth must be a finite number >= 0 and storageObjectLatencySeconds in [0, 60]", p.Name)
	}
	if p.HasStorage() && (p.StorageObjectTokens < 1 || p.StorageObjectTokens > 1<<20 || p.StorageConcurrency < 1 || p.StorageConcurrency > 1<<10) {
		return fmt.Errorf("profile %q: with storageBandwidth, storageObjectTokens must be in [1, 1048576] and storageConcurrency in [1, 1024]", p.Name)
	}
	for _, v := range []float64{p.CPUTierBandwidth, p.DiskTierBandwidth, p.CPUTierLatencySeconds, p.DiskTierLatencySeconds} {
		if v < 0 || math.IsNaN(v) || math.IsInf(v, 0) {
			return fmt.Errorf("profile %q: cpuTier*/diskTier* bandwidths and latencies must be finite numbers >= 0", p.Name)
		}
	}
	if p.CPUTierLatencySeconds > 60 || p.DiskTierLatencySeconds > 60 {
		return fmt.Errorf("profile %q: cpuTierLatencySeconds and diskTierLatencySeconds must be at most 60", p.Name)
	}
	if p.ActivationReserveBytes < 0 || p.StepOverheadSeconds < 0 {
		return fmt.Errorf("profile %q: activationReserveBytes and stepOverheadSeconds must not be negative", p.Name)
	}
	if p.KVCapacityTokens() <= 0 {
		return fmt.Errorf("profile %q: weights and reserve exceed device memory: no room for KV cache", p.Name)
	}
	return nil
}

// StepInput describes one scheduled sequence in a step: Query new tokens
// computed over a context of Context tokens already in the KV cache.
type StepInput struct {
	Query   int
	Context int
}

// StepTime is the roofline time of one engine step: the larger of compute
// time (2·params per token plus attention FLOPs over the context, at
// peak·MFU) and memory time (weights plus the KV read, at bandwidth·MBU),
// plus the fixed per-step overhead.
func (p *Profile) StepTime(batch []StepInput) time.Duration {
	var tokens, attn, kvRead float64
	m := p.Model
	qDim := float64(m.AttentionHeads * m.HeadDim)
	for _, s := range batch {
		q, c := float64(s.Query), float64(s.Context)
		tokens += q
		// QK^T and AV: 2 matmuls x 2 FLOPs per MAC, each query token attends
		// to the context plus (on average) half the new tokens (causal).
		attn += 4 * float64(m.Layers) * qDim * q * (c + (q+1)/2)
		kvRead += (c + q) * p.KVBytesPerToken()
	}
	return p.roofline(tokens, attn, kvRead)
}

func (p *Profile) roofline(tokens, attnFlops, kvRead float64) time.Duration {
	if tokens == 0 {
		return 0
	}
	n := float64(p.Accelerator.Count)
	compute := (2*p.Model.Params*tokens + attnFlops) / (p.Accelerator.PeakFlops * n * p.MFU)
	memory := (p.WeightBytes() + kvRead) / (p.Accelerator.HBMBandwidth * n * p.MBU)
	return time.Duration((math.Max(compute, memory) + p.StepOverheadSeconds) * float64(time.Second))
}

// TransferTime is how long the KV of tokens takes over the prefill->decode link.
func (p *Profile) TransferTime(tokens int) time.Duration {
	if tokens <= 0 {
		return 0
	}
	return time.Duration(float64(tokens) * p.KVBytesPerToken() / p.KVLinkBandwidth * float64(time.Second))
}

//go:embed profiles.yaml
var builtinYAML []byte

// ProfileFile is the document format of a profile table.
type ProfileFile struct {
	Profiles []Profile `json:"profiles"`
}

// ParseProfiles reads a YAML or JSON profile table, rejecting unknown fields
// and invalid profiles with the offending profile and field named.
func ParseProfiles(data []byte) (map[string]Profile, error) {
	var f ProfileFile
	if err := yaml.UnmarshalStrict(data, &f); err != nil {
		return nil, fmt.Errorf("profiles: %w", err)
	}
	out := make(map[string]Profile, len(f.Profiles))
	for i, p := range f.Profiles {
		if err := p.Validate(); err != nil {
			return nil, fmt.Errorf("profiles[%d]: %w", i, err)
		}
		if _, dup := out[p.Name]; dup {
			return nil, fmt.Errorf("profiles[%d]: duplicate name %q", i, p.Name)
		}
		out[p.Name] = p
	}
	return out, nil
}

var builtins = func() map[string]Profile {
	m, err := ParseProfiles(builtinYAML)
	if err != nil {
		panic("engine: built-in profiles.yaml: " + err.Error())
	}
	return m
}()

// DefaultProfile is the profile used when none is named.
const DefaultProfile = "llama-3.1-8b-h100"

// BuiltinProfile returns a copy of a built-in profile by name.
func BuiltinProfile(name string) (Profile, error) {
	p, ok := builtins[name]
	if !ok {
		return Profile{}, fmt.Errorf("unknown profile %q (built-in: %v)", name, BuiltinProfileNames())
	}
	return p, nil
}

// BuiltinProfileNames lists the built-in profiles, sorted.
func BuiltinProfileNames() []string {
	names := make([]string, 0, len(builtins))
	for n := range builtins {
		names = append(names, n)
	}
	sort.Strings(names)
	return names
}
