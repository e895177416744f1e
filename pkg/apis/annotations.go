// Package apis declares llmd-kn's annotations once: their keys, types,
// defaults, parsing and validation. The cluster webhook and the local runtime
// both validate and default Knative Services through this package, so a
// manifest means the same thing in both places.
//
// It depends on no Kubernetes client or HTTP code: callers pass the
// annotation map and a field path prefix.
package apis

import (
	"errors"
	"fmt"
	"math"
	"net/url"
	pathpkg "path"
	"slices"
	"sort"
	"strconv"
	"strings"
	"time"
)

// Annotation keys.
const (
	Group = "llm-d.ai/"

	ModelAnnotation           = Group + "model"
	DisaggregationAnnotation  = Group + "disaggregation"
	RoutingProfileAnnotation  = Group + "routing-profile"
	PDThresholdAnnotation     = Group + "pd-threshold-tokens"
	SLOTierAnnotation         = Group + "slo-tier"
	SLOTiersAnnotation        = Group + "slo-tiers"
	SLOTTFTAnnotation         = Group + "slo-ttft"
	SLOTPOTAnnotation         = Group + "slo-tpot"
	SLOPercentileAnnotation   = Group + "slo-percentile"
	PrefillMinScaleAnnotation = Group + "prefill-min-scale"
	PrefillMaxScaleAnnotation = Group + "prefill-max-scale"
	AutoscalerModeAnnotation  = Group + "autoscaler-mode"
	SimProfileAnnotation      = Group + "sim-profile"
	AcceleratorAnnotation     = Group + "accelerator"
	VariantCostAnnotation     = Group + "variant-cost"
	TokenizerAnnotation       = Group + "tokenizer"
	BatchSinkAnnotation       = Group + "batch-sink"
	// BatchMaxReplicasAnnotation: the most replicas batch-tier work alone
	// may keep or wake (default 1; 0: never).
	BatchMaxReplicasAnnotation = Group + "batch-max-replicas"
	StepTokenBudgetAnnotation  = Group + "step-token-budget"

	// KV offload to shared storage and the engine's own KV tiers (issue 12).
	KVOffloadAnnotation         = Group + "kv-offload"
	KVOffloadURIAnnotation      = Group + "kv-offload-uri"
	KVOffloadMaxBytesAnnotation = Group + "kv-offload-max-bytes"
	KVOffloadDeadlineAnnotation = Group + "kv-offload-deadline"
	KVPrefetchBytesAnnotation   = Group + "kv-prefetch-bytes"
	KVOffloadSecretAnnotation   = Group + "kv-offload-secret"
	KVCPUTierBytesAnnotation    = Group + "kv-cpu-tier-bytes"
	KVDiskTierBytesAnnotation   = Group + "kv-disk-tier-bytes"

	// StepTokenBudgetChoiceAnnotation records on a revision template the
	// per-step token budget the webhook chose and why (it is not an input:
	// its prefix is not llm-d.ai/). Its value is the decode (or only)
	// budget, the prefill budget for a prefill-decode revision, and the
	// reason: "2048 prefill=8192: TPOT 100ms: ...".
	StepTokenBudgetChoiceAnnotation = "status.llm-d.ai/step-token-budget"

	KnativeAutoscalingGroup        = "autoscaling.knative.dev/"
	ClassAnnotation                = KnativeAutoscalingGroup + "class"
	MinScaleAnnotation             = KnativeAutoscalingGroup + "min-scale"
	MaxScaleAnnotation             = KnativeAutoscalingGroup + "max-scale"
	InitialScaleAnnotation         = KnativeAutoscalingGroup + "initial-scale"
	TargetBurstCapacityAnnotation  = KnativeAutoscalingGroup + "target-burst-capacity"
	ScaleToZeroRetentionAnnotation = KnativeAutoscalingGroup + "scale-to-zero-pod-retention-period"

	// AutoscalerClass is llmd-kn's PodAutoscaler class.
	AutoscalerClass = "slo.autoscaling.llm-d.ai"
)

// Disaggregation modes.
const (
	DisaggregationNone          = "none"
	DisaggregationPrefillDecode = "prefill-decode"
)

// Autoscaler modes.
const (
	AutoscalerAct    = "act"
	AutoscalerAdvise = "advise"
)

// Tokenizer modes (llm-d.ai/tokenizer).
const (
	// TokenizerAuto: the model's tokenizer files when the activator has
	// them (its tokenizer folder holds the llm-d.ai/model's files), else
	// the estimate.
	TokenizerAuto = "auto"
	// TokenizerEstimate: the built-in approximation, whatever files exist.
	TokenizerEstimate = "estimate"
	// TokenizerNative: the model's files from the activator's tokenizer
	// folder, found by llm-d.ai/model; "native:/path" names a folder
	// (tokenizer.json and tokenizer_config.json, or a Hugging Face cache
	// folder models--org--name) on a volume mounted into the activator.
	TokenizerNative = "native"
	// TokenizerEngine: the pod's own tokenizer, asked over HTTP (vLLM's
	// /v1/chat/completions/render, /v1/completions/render, else /tokenize);
	// the estimate while no pod is ready or when the pod cannot answer.
	TokenizerEngine = "engine"
)

// Spec is a revision's llm-d configuration, parsed from its annotations
// with defaults applied.
type Spec struct {
	Model           string
	Disaggregation  string
	RoutingProfile  string
	PDThreshold     int
	DefaultTier     string
	AllowedTiers    []string
	TTFT, TPOT      time.Duration // 0: the tier's targets apply
	Percentile      float64
	MinScale        int
	MaxScale        int // 0: unbounded
	InitialScale    int // -1: unset
	PrefillMinScale int
	PrefillMaxScale int // 0: unbounded
	AutoscalerMode  string
	SimProfile      string
	// Accelerator names the hardware a variant runs on (free text, e.g.
	// H100-SXM-80GB); VariantCost is its cost per replica-hour in any unit
	// common to the model's variants (0: unset). Revisions serving the same
	// llm-d.ai/model are variants the autoscaler chooses among.
	Accelerator string
	VariantCost float64
	// Tokenizer is the tokenizer mode (TokenizerAuto, TokenizerEstimate,
	// TokenizerEngine or TokenizerNative); TokenizerDir the folder "native:DIR" names ("" for
	// the activator's own folder).
	Tokenizer    string
	TokenizerDir string
	// StepTokenBudget is llm-d.ai/step-token-budget: vLLM's per-step token
	// budget (--max-num-batched-tokens) for the revision's pods; 0 (auto,
	// the default) chooses it from the TPOT target and the engine profile.
	StepTokenBudget int
	// KVOffload is what the revision does with its KV cache beyond the
	// GPU (see KVOffloadSpec); the zero value (Mode "off", no tiers) keeps
	// today's behaviour exactly.
	KVOffload KVOffloadSpec
	// BatchSink is where results of CloudEvents sent to this Service go
	// (llm-d.ai/batch-sink, an http(s) URL); "" means the HTTP reply, or
	// the activator's K_SINK.
	BatchSink string
	// BatchMaxReplicas is llm-d.ai/batch-max-replicas: the most replicas
	// batch-tier work alone may keep or wake (DefaultBatchMaxReplicas; 0:
	// batch work never scales the revision, not even from zero).
	BatchMaxReplicas int
}

// DefaultBatchMaxReplicas is llm-d.ai/batch-max-replicas' default.
const DefaultBatchMaxReplicas = 1

// KV offload modes (llm-d.ai/kv-offload).
const (
	// KVOffloadOff: nothing is written to shared storage (the default).
	KVOffloadOff = "off"
	// KVOffloadOnScaleDown: a replica that is going away flushes its most
	// valuable blocks to shared storage before it exits.
	KVOffloadOnScaleDown = "on-scale-down"
	// KVOffloadWriteThrough: hot prefixes are also written while serving.
	KVOffloadWriteThrough = "write-through"
)

// Defaults of the KV-offload annotations.
const (
	// DefaultKVOffloadDeadline bounds the flush of a replica going away:
	// 10 GiB at 1 GB/s with room for per-object latency; longer holds the
	// last GPU for little gain.
	DefaultKVOffloadDeadline = 30 * time.Second
)

// KVFlushPath is the pod endpoint the autoscaler calls before it scales a
// revision with KV offload to zero: POST asks the replica to flush its most
// valuable KV blocks to shared storage now, while it still serves, and
// answers once they are committed (200, a JSON summary); 404, 405 or 501
// means the engine has no such endpoint (a plain vLLM: it flushes on
// shutdown instead). The llmd-kn simulator implements it.
const KVFlushPath = "/internal/kv/flush"

// KVOffloadSpec is a revision's KV offload and tier configuration.
type KVOffloadSpec struct {
	Mode string // KVOffloadOff, KVOffloadOnScaleDown or KVOffloadWriteThrough
	// URI is the storage URL ("" : the local runtime's default directory;
	// a cluster needs one). It never carries credentials.
	URI string
	// MaxBytes bounds the stored bytes per model (0: unbounded).
	MaxBytes int64
	// Deadline bounds a replica's flush before it exits.
	Deadline time.Duration
	// PrefetchBytes is how much of the hottest stored KV a new replica
	// loads while it cold-starts (0: restore on demand only).
	PrefetchBytes int64
	// Secret names the Secret holding the storage credentials; only its
	// name is ever read or written by llmd-kn.
	Secret string
	// CPUTierBytes and DiskTierBytes size the engine's own tiers below its
	// GPU cache (0: no such tier).
	CPUTierBytes, DiskTierBytes int64
}

// Enabled reports whether the revision offloads to shared storage.
func (k KVOffloadSpec) Enabled() bool {
	return k.Mode == KVOffloadOnScaleDown || k.Mode == KVOffloadWriteThrough
}

// Disaggregated reports whether the revision runs separate prefill pods.
func (s Spec) Disaggregated() bool { return s.Disaggregation == DisaggregationPrefillDecode }

// AllowsTier reports whether requests of tier may use this revision.
func (s Spec) AllowsTier(tier string) bool { return slices.Contains(s.AllowedTiers, tier) }

// Vocabulary is what values are valid where the set is not fixed here:
// routing profiles, tiers and engine profiles come from other packages and
// from configuration.
type Vocabulary struct {
	RoutingProfiles []string
	Tiers           []string
	SimProfiles     []string
}

// Defaults for keys that are absent.
const (
	DefaultRoutingProfile = "default"
	DefaultPDThreshold    = 512
	DefaultTier           = "standard"
	DefaultPercentile     = 90
)

// FieldError is a validation failure at a field path, worded for a kn user.
type FieldError struct {
	Path    string
	Message string
}

func (e *FieldError) Error() string { return e.Path + ": " + e.Message }

// Errors is a list of field errors.
type Errors []*FieldError

func (es Errors) Error() string {
	parts := make([]string, len(es))
	for i, e := range es {
		parts[i] = e.Error()
	}
	return strings.Join(parts, "; ")
}

// OrNil returns nil for an empty list.
func (es Errors) OrNil() error {
	if len(es) == 0 {
		return nil
	}
	return es
}

// Known reports whether key is an annotation this package declares.
func Known(key string) bool {
	_, ok := known[key]
	return ok
}

var known = map[string]string{
	BatchSinkAnnotation:        "http(s) URL",
	BatchMaxReplicasAnnotation: "integer >= 0",
	ModelAnnotation:            "string",
	DisaggregationAnnotation:   "none | prefill-decode",
	RoutingProfileAnnotation:   "routing profile name",
	PDThresholdAnnotation:      "integer >= 0",
	SLOTierAnnotation:          "tier name",
	SLOTiersAnnotation:         "comma-separated tier names",
	SLOTTFTAnnotation:          "duration",
	SLOTPOTAnnotation:          "duration",
	SLOPercentileAnnotation:    "number in (0, 100)",
	PrefillMinScaleAnnotation:  "integer >= 0",
	PrefillMaxScaleAnnotation:  "integer >= 0",
	AutoscalerModeAnnotation:   "act | advise",
	SimProfileAnnotation:       "engine profile name",
	AcceleratorAnnotation:      "accelerator name",
	VariantCostAnnotation:      "number > 0",
	TokenizerAnnotation:        "auto | estimate | engine | native | native:/absolute/path",
	StepTokenBudgetAnnotation:  "auto | integer in [1, 1048576]",

	KVOffloadAnnotation:         "off | on-scale-down | write-through",
	KVOffloadURIAnnotation:      "storage URL: file:///abs/path | s3://bucket/prefix | gs://bucket/prefix | azblob://container/prefix",
	KVOffloadMaxBytesAnnotation: "byte size > 0, like 200Gi",
	KVOffloadDeadlineAnnotation: "duration up to 1h",
	KVPrefetchBytesAnnotation:   "byte size >= 0, like 8Gi",
	KVOffloadSecretAnnotation:   "Secret name (DNS-1123 subdomain)",
	KVCPUTierBytesAnnotation:    "byte size >= 0, like 64Gi",
	KVDiskTierBytesAnnotation:   "byte size >= 0, like 500Gi",
}

// StepTokenBudgetAuto is the llm-d.ai/step-token-budget value that chooses
// the budget from the TPOT target (also what an absent annotation means).
const StepTokenBudgetAuto = "auto"

// MaxStepTokenBudget bounds llm-d.ai/step-token-budget.
const MaxStepTokenBudget = 1 << 20

// Parse reads and validates the annotations of one object; path is the
// field path of the annotation map (e.g. "spec.template.metadata.annotations")
// and is used in error messages. Every problem is reported, not just the
// first.
func Parse(annotations map[string]string, path string, vocab Vocabulary) (Spec, error) {
	s := Spec{
		Disaggregation:   DisaggregationNone,
		RoutingProfile:   DefaultRoutingProfile,
		PDThreshold:      DefaultPDThreshold,
		DefaultTier:      DefaultTier,
		AllowedTiers:     vocab.Tiers,
		Percentile:       DefaultPercentile,
		InitialScale:     -1,
		BatchMaxReplicas: DefaultBatchMaxReplicas,
		AutoscalerMode:   AutoscalerAct,
		Model:            annotations[ModelAnnotation],
		SimProfile:       annotations[SimProfileAnnotation],
		PrefillMinScale:  0,
		Tokenizer:        TokenizerAuto,
		KVOffload:        KVOffloadSpec{Mode: KVOffloadOff, Deadline: DefaultKVOffloadDeadline},
	}
	var errs Errors
	fail := func(key, format string, args ...any) {
		errs = append(errs, &FieldError{Path: fmt.Sprintf("%s[%s]", path, key), Message: fmt.Sprintf(format, args...)})
	}
	keys := make([]string, 0, len(annotations))
	for k := range annotations {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		if strings.HasPrefix(k, Group) && !Known(k) {
			fail(k, "unknown llm-d annotation (known: %s)", strings.Join(knownKeys(), ", "))
		}
	}
	oneOf := func(key string, dst *string, allowed []string) {
		v, ok := annotations[key]
		if !ok {
			return
		}
		if !slices.Contains(allowed, v) {
			fail(key, "invalid value %q: must be one of %s", v, strings.Join(allowed, ", "))
			return
		}
		*dst = v
	}
	intVal := func(key string, dst *int, minimum int) {
		v, ok := annotations[key]
		if !ok {
			return
		}
		n, err := strconv.Atoi(strings.TrimSpace(v))
		if err != nil || n < minimum {
			fail(key, "invalid value %q: must be an integer >= %d", v, minimum)
			return
		}
		*dst = n
	}
	dur := func(key string, dst *time.Duration) {
		v, ok := annotations[key]
		if !ok {
			return
		}
		d, err := time.ParseDuration(v)
		if err != nil || d <= 0 || d > time.Hour {
			fail(key, "invalid value %q: must be a positive duration up to 1h, like 500ms or 2s", v)
			return
		}
		*dst = d
	}

	if v, ok := annotations[ModelAnnotation]; ok && (strings.TrimSpace(v) == "" || len(v) > 256 || strings.HasPrefix(v, "-")) {
		fail(ModelAnnotation, "must be a model name of 1 to 256 characters, not starting with '-'")
	}
	oneOf(DisaggregationAnnotation, &s.Disaggregation, []string{DisaggregationNone, DisaggregationPrefillDecode})
	if len(vocab.RoutingProfiles) > 0 {
		oneOf(RoutingProfileAnnotation, &s.RoutingProfile, vocab.RoutingProfiles)
	}
	intVal(PDThresholdAnnotation, &s.PDThreshold, 0)
	if v, ok := annotations[SLOTiersAnnotation]; ok {
		s.AllowedTiers = nil
		for _, t := range strings.Split(v, ",") {
			t = strings.TrimSpace(t)
			if len(vocab.Tiers) > 0 && !slices.Contains(vocab.Tiers, t) {
				fail(SLOTiersAnnotation, "unknown tier %q: must be among %s", t, strings.Join(vocab.Tiers, ", "))
				continue
			}
			s.AllowedTiers = append(s.AllowedTiers, t)
		}
	}
	if v, ok := annotations[SLOTierAnnotation]; ok {
		s.DefaultTier = v
	}
	if len(vocab.Tiers) > 0 && !slices.Contains(vocab.Tiers, s.DefaultTier) {
		fail(SLOTierAnnotation, "unknown tier %q: must be one of %s", s.DefaultTier, strings.Join(vocab.Tiers, ", "))
	} else if len(s.AllowedTiers) > 0 && !slices.Contains(s.AllowedTiers, s.DefaultTier) {
		fail(SLOTierAnnotation, "default tier %q is not among the allowed tiers %s", s.DefaultTier, strings.Join(s.AllowedTiers, ","))
	}
	dur(SLOTTFTAnnotation, &s.TTFT)
	dur(SLOTPOTAnnotation, &s.TPOT)
	if v, ok := annotations[SLOPercentileAnnotation]; ok {
		p, err := strconv.ParseFloat(v, 64)
		if err != nil || math.IsNaN(p) || p <= 0 || p >= 100 {
			fail(SLOPercentileAnnotation, "invalid value %q: must be a number between 0 and 100, like 90 or 99.9", v)
		} else {
			s.Percentile = p
		}
	}
	intVal(MinScaleAnnotation, &s.MinScale, 0)
	intVal(MaxScaleAnnotation, &s.MaxScale, 0)
	intVal(InitialScaleAnnotation, &s.InitialScale, 0)
	if s.MaxScale > 0 && s.MinScale > s.MaxScale {
		fail(MinScaleAnnotation, "min-scale %d is larger than max-scale %d", s.MinScale, s.MaxScale)
	}
	intVal(PrefillMinScaleAnnotation, &s.PrefillMinScale, 0)
	intVal(PrefillMaxScaleAnnotation, &s.PrefillMaxScale, 0)
	if s.PrefillMaxScale > 0 && s.PrefillMinScale > s.PrefillMaxScale {
		fail(PrefillMinScaleAnnotation, "prefill-min-scale %d is larger than prefill-max-scale %d", s.PrefillMinScale, s.PrefillMaxScale)
	}
	if !s.Disaggregated() {
		for _, k := range []string{PrefillMinScaleAnnotation, PrefillMaxScaleAnnotation} {
			if _, ok := annotations[k]; ok {
				fail(k, "only meaningful with %s: %s", DisaggregationAnnotation, DisaggregationPrefillDecode)
			}
		}
	}
	if v, ok := annotations[AcceleratorAnnotation]; ok {
		if strings.TrimSpace(v) == "" || len(v) > 63 || strings.ContainsAny(v, " \t\n,") {
			fail(AcceleratorAnnotation, "invalid value %q: must be an accelerator name of 1 to 63 characters without spaces or commas, like H100-SXM-80GB", v)
		} else {
			s.Accelerator = v
		}
	}
	if v, ok := annotations[VariantCostAnnotation]; ok {
		c, err := strconv.ParseFloat(strings.TrimSpace(v), 64)
		if err != nil || math.IsNaN(c) || math.IsInf(c, 0) || c <= 0 {
			fail(VariantCostAnnotation, "invalid value %q: must be a positive number (cost per replica-hour), like 2.5", v)
		} else {
			s.VariantCost = c
		}
	}
	if v, ok := annotations[BatchSinkAnnotation]; ok {
		u, err := url.Parse(v)
		if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" || u.User != nil {
			fail(BatchSinkAnnotation, "invalid value %q: must be an http or https URL without credentials, like http://results.default.svc.cluster.local", v)
		} else {
			s.BatchSink = v
		}
	}
	intVal(BatchMaxReplicasAnnotation, &s.BatchMaxReplicas, 0)
	if v, ok := annotations[TokenizerAnnotation]; ok {
		mode, dir, err := ParseTokenizer(v)
		if err != nil {
			fail(TokenizerAnnotation, "%v", err)
		} else {
			s.Tokenizer, s.TokenizerDir = mode, dir
		}
	}
	if v, ok := annotations[StepTokenBudgetAnnotation]; ok && strings.TrimSpace(v) != StepTokenBudgetAuto {
		n, err := strconv.Atoi(strings.TrimSpace(v))
		if err != nil || n < 1 || n > MaxStepTokenBudget {
			fail(StepTokenBudgetAnnotation, "invalid value %q: must be %s or a token count from 1 to %d, like 2048", v, StepTokenBudgetAuto, MaxStepTokenBudget)
		} else {
			s.StepTokenBudget = n
		}
	}
	parseKVOffload(annotations, &s.KVOffload, fail)
	oneOf(AutoscalerModeAnnotation, &s.AutoscalerMode, []string{AutoscalerAct, AutoscalerAdvise})
	if v, ok := annotations[SimProfileAnnotation]; ok && len(vocab.SimProfiles) > 0 && !slices.Contains(vocab.SimProfiles, v) {
		fail(SimProfileAnnotation, "unknown engine profile %q: must be one of %s", v, strings.Join(vocab.SimProfiles, ", "))
	}
	if c, ok := annotations[ClassAnnotation]; ok && c != AutoscalerClass && hasLLMD(annotations) &&
		annotations[AutoscalerModeAnnotation] == AutoscalerAdvise {
		fail(AutoscalerModeAnnotation, "advise mode needs the %s autoscaler class, the revision uses %q", AutoscalerClass, c)
	}
	return s, errs.OrNil()
}

// ParseTokenizer reads an llm-d.ai/tokenizer value: auto, estimate, engine,
// native or native:/absolute/path.
func ParseTokenizer(v string) (mode, dir string, err error) {
	switch v {
	case TokenizerAuto, TokenizerEstimate, TokenizerNative, TokenizerEngine:
		return v, "", nil
	}
	if d, ok := strings.CutPrefix(v, TokenizerNative+":"); ok {
		if strings.Contains(d, "://") {
			if err := checkTokenizerURL(d); err != nil {
				return "", "", fmt.Errorf("invalid value %q: %v", v, err)
			}
			return TokenizerNative, d, nil
		}
		if !pathpkg.IsAbs(d) || pathpkg.Clean(d) != d || len(d) > 1024 || strings.ContainsAny(d, "\x00\n") {
			return "", "", fmt.Errorf("invalid value %q: native:DIR needs an absolute, clean path (a volume mounted into the activator), like native:/models/Qwen3-8B", v)
		}
		return TokenizerNative, d, nil
	}
	return "", "", fmt.Errorf("invalid value %q: must be auto, estimate, engine, native, native:/absolute/path or native:s3://bucket/prefix (gs://, azblob://, file:///)", v)
}

// checkTokenizerURL validates an object-storage folder of tokenizer files:
// s3://, gs:// or azblob:// with a bucket, or file:///absolute/dir; no
// credentials in the URL (the activator's own identity reads it).
func checkTokenizerURL(s string) error {
	if len(s) > 1024 || strings.ContainsAny(s, "\x00\n ") {
		return errors.New("not a valid URL")
	}
	u, err := url.Parse(s)
	if err != nil {
		return errors.New("not a valid URL")
	}
	if u.User != nil {
		return errors.New("credentials do not belong in the URL")
	}
	switch u.Scheme {
	case "s3", "gs", "azblob":
		if u.Host == "" {
			return fmt.Errorf("%s:// needs a bucket: %s://bucket/prefix", u.Scheme, u.Scheme)
		}
	case "file":
		if u.Host != "" || !pathpkg.IsAbs(u.Path) || pathpkg.Clean(u.Path) != u.Path {
			return errors.New("file:// needs an absolute, clean path: file:///models/Qwen3-8B")
		}
	default:
		return fmt.Errorf("unsupported scheme %q (s3, gs, azblob or file)", u.Scheme)
	}
	return nil
}

// Default adds what an LLM revision needs in Knative and returns the keys
// it set: llmd-kn's autoscaler class when llm-d annotations are present and
// no class is chosen, and target-burst-capacity -1 so that the activator
// stays in the request path. Defaulting is idempotent and never overrides
// a value the user set.
func Default(annotations map[string]string) []string {
	if !hasLLMD(annotations) {
		return nil
	}
	var set []string
	if _, ok := annotations[ClassAnnotation]; !ok {
		annotations[ClassAnnotation] = AutoscalerClass
		set = append(set, ClassAnnotation)
	}
	if _, ok := annotations[TargetBurstCapacityAnnotation]; !ok {
		annotations[TargetBurstCapacityAnnotation] = "-1"
		set = append(set, TargetBurstCapacityAnnotation)
	}
	return set
}

func hasLLMD(annotations map[string]string) bool {
	for k := range annotations {
		if strings.HasPrefix(k, Group) {
			return true
		}
	}
	return false
}

func knownKeys() []string {
	ks := make([]string, 0, len(known))
	for k := range known {
		ks = append(ks, k)
	}
	sort.Strings(ks)
	return ks
}

// Reference lists every annotation with its type, for documentation.
func Reference() [][2]string {
	out := make([][2]string, 0, len(known))
	for _, k := range knownKeys() {
		out = append(out, [2]string{k, known[k]})
	}
	return out
}
