package webhook

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"path"
	"slices"
	"strconv"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"knative.dev/serving/pkg/apis/config"
	"knative.dev/serving/pkg/apis/serving"
	servingv1 "knative.dev/serving/pkg/apis/serving/v1"

	"github.com/llmd-kn/llmd-kn/pkg/apis"
	"github.com/llmd-kn/llmd-kn/pkg/autoscaler"
)

// What an LLM revision gets when its template leaves it unset.
const (
	// TimeoutSeconds is the request timeout wanted for generation: long
	// completions stream for many minutes. Knative refuses more than its
	// config-defaults max-revision-timeout-seconds (600 unless an admin
	// raises it), so the value set is the smaller of the two.
	TimeoutSeconds = 3600
	// ResponseStartTimeoutSeconds bounds the wait for the first byte, which
	// includes queueing in the engine and the prefill of a long prompt.
	ResponseStartTimeoutSeconds = 600
	// ProgressDeadline is how long a revision may take to become ready: a
	// GPU cold start pulls a multi-gigabyte image and loads the weights,
	// far beyond Knative's default of 600s.
	ProgressDeadline = "1800s"
	// HealthPath is vLLM's readiness endpoint.
	HealthPath = "/health"
	// PodIPEnv names the environment variable the KV-events topic refers
	// to; Kubernetes expands $(POD_IP) in args.
	PodIPEnv = "POD_IP"
	// KVEventsEndpoint is where vLLM publishes KV events; the activator
	// subscribes to <pod ip>:5557.
	KVEventsEndpoint = "tcp://*:5557"
	// KVTransferConfig is vLLM's KV-transfer configuration for a pod of a
	// prefill-decode revision: NIXL, either role.
	KVTransferConfig = `{"kv_connector":"NixlConnector","kv_role":"kv_both"}`
)

// vLLM flags the webhook adds.
const (
	flagPrefixCaching    = "--enable-prefix-caching"
	flagNoPrefixCaching  = "--no-enable-prefix-caching"
	flagSchedulingPolicy = "--scheduling-policy"
	flagKVEvents         = "--kv-events-config"
	flagKVTransfer       = "--kv-transfer-config"
	flagServedModelName  = "--served-model-name"
	flagModel            = "--model"
	flagMaxBatched       = "--max-num-batched-tokens"
	flagMaxNumSeqs       = "--max-num-seqs"
)

// DefaultOptions are what defaulting needs from llmd-kn's own configuration.
type DefaultOptions struct {
	// TierTPOT is a tier's TPOT target (config-llmd-tiers), for revisions
	// without llm-d.ai/slo-tpot; nil or 0 means the SLO decider's default.
	TierTPOT func(tier string) time.Duration
}

// HasLLMD reports whether any annotation is an llm-d one: only such
// objects are defaulted or validated.
func HasLLMD(annotations map[string]string) bool {
	for k := range annotations {
		if strings.HasPrefix(k, apis.Group) {
			return true
		}
	}
	return false
}

// DefaultService applies llmd-kn's defaults to a Service's revision
// template and returns warnings for the user. See DefaultTemplate.
func DefaultService(svc *servingv1.Service, cfg *config.Config) []string {
	return DefaultTemplate(&svc.Spec.Template, cfg)
}

// DefaultConfiguration applies llmd-kn's defaults to a Configuration's
// revision template and returns warnings for the user.
func DefaultConfiguration(c *servingv1.Configuration, cfg *config.Config) []string {
	return DefaultTemplate(&c.Spec.Template, cfg)
}

// DefaultTemplate adds what a vLLM revision needs in Knative to a revision
// template that carries llm-d annotations, and leaves any other template
// alone. It never overrides what the user set, and applying it twice
// changes nothing the second time. It sets:
//   - the annotations of pkg/apis.Default (autoscaler class, target burst
//     capacity -1) and Knative's progress deadline;
//   - timeoutSeconds and responseStartTimeoutSeconds, within the cluster's
//     max-revision-timeout-seconds and never below its default;
//   - on the serving container: a readiness probe on vLLM's /health, and
//     the vLLM flags the features need (prefix caching, priority
//     scheduling for SLO tiers, KV events to the activator, and for
//     prefill-decode the NIXL KV transfer), with POD_IP from the downward
//     API for the KV-events topic.
//
// Knative's own defaults (container name, default timeouts, traffic) are
// left to Knative's webhook, which reads the same cluster configuration.
// cfg is that configuration; nil means Knative's built-in defaults.
func DefaultTemplate(tmpl *servingv1.RevisionTemplateSpec, cfg *config.Config) []string {
	return DefaultTemplateWith(tmpl, cfg, DefaultOptions{})
}

// DefaultTemplateWith is DefaultTemplate with llmd-kn's configuration:
// besides the above, vLLM's per-step token budget (--max-num-batched-tokens,
// and --max-num-seqs where the engine profile names one) from the
// revision's TPOT target and profile, or llm-d.ai/step-token-budget, unless
// the container's args set it; the choice and its reason are recorded in
// the template's status.llm-d.ai/step-token-budget annotation; and the KV
// tiers and offload of llm-d.ai/kv-* (see defaultKVOffload).
func DefaultTemplateWith(tmpl *servingv1.RevisionTemplateSpec, cfg *config.Config, opts DefaultOptions) []string {
	if !HasLLMD(tmpl.Annotations) {
		return nil
	}
	if cfg == nil {
		cfg = config.FromContextOrDefaults(context.Background())
	}
	defaultAnnotations(&tmpl.ObjectMeta)
	defaultTimeouts(&tmpl.Spec, cfg.Defaults)
	i, ok := servingContainer(tmpl.Spec.Containers)
	if !ok {
		return []string{"no serving container found (one container, or the one with ports): vLLM probe and flags not added"}
	}
	c := &tmpl.Spec.Containers[i]
	defaultReadinessProbe(c)
	warnings := defaultVLLM(c, tmpl.Annotations, cfg.Features, opts)
	return append(warnings, defaultKVOffload(tmpl, c, cfg.Features)...)
}

func defaultAnnotations(meta *metav1.ObjectMeta) {
	apis.Default(meta.Annotations)
	if _, _, ok := serving.ProgressDeadlineAnnotation.Get(meta.Annotations); !ok {
		meta.Annotations[serving.ProgressDeadlineAnnotationKey] = ProgressDeadline
	}
}

func defaultTimeouts(spec *servingv1.RevisionSpec, d *config.Defaults) {
	if spec.TimeoutSeconds == nil || *spec.TimeoutSeconds == 0 {
		// Never shorter than what the cluster gives every revision.
		t := max(min(int64(TimeoutSeconds), d.MaxRevisionTimeoutSeconds), d.RevisionTimeoutSeconds)
		spec.TimeoutSeconds = &t
	}
	// As Knative does: a response-start timeout as long as the request
	// timeout adds nothing, so it is only set when shorter.
	if spec.ResponseStartTimeoutSeconds == nil {
		if r := int64(ResponseStartTimeoutSeconds); r < *spec.TimeoutSeconds {
			spec.ResponseStartTimeoutSeconds = &r
		}
	}
}

// servingContainer finds the container that receives traffic: the only
// one, or the one that declares a port (Knative allows exactly one).
func servingContainer(cs []corev1.Container) (int, bool) {
	if len(cs) == 1 {
		return 0, true
	}
	for i := range cs {
		if len(cs[i].Ports) > 0 {
			return i, true
		}
	}
	return 0, false
}

func defaultReadinessProbe(c *corev1.Container) {
	if c.ReadinessProbe != nil {
		return
	}
	// Port 0 lets Knative probe the serving port, whatever it is.
	var port intstr.IntOrString
	if len(c.Ports) > 0 && c.Ports[0].ContainerPort != 0 {
		port = intstr.FromInt32(c.Ports[0].ContainerPort)
	}
	c.ReadinessProbe = &corev1.Probe{ProbeHandler: corev1.ProbeHandler{
		HTTPGet: &corev1.HTTPGetAction{Path: HealthPath, Port: port},
	}}
}

func defaultVLLM(c *corev1.Container, ann map[string]string, features *config.Features, opts DefaultOptions) []string {
	var add []string
	if !hasFlag(c, flagPrefixCaching) && !hasFlag(c, flagNoPrefixCaching) {
		add = append(add, flagPrefixCaching)
	}
	// Priority scheduling lets the activator pass each request's SLO tier
	// to the engine as vLLM's priority; requests without one are served
	// first come, first served, as before.
	if !hasFlag(c, flagSchedulingPolicy) {
		add = append(add, flagSchedulingPolicy, "priority")
	}
	var warnings []string
	// Clients name the model llm-d.ai/model says and the activator forwards
	// that name: vLLM must answer to it.
	if m := strings.TrimSpace(ann[apis.ModelAnnotation]); m != "" {
		words := append(append([]string{}, c.Command...), c.Args...)
		if served, ok := flagValue(words, flagServedModelName); !ok {
			// One word, so that no name can be mistaken for a flag.
			add = append(add, flagServedModelName+"="+m)
		} else if served != m {
			warnings = append(warnings, fmt.Sprintf("%s is %q but the container serves %q: requests naming %q will get 404 from vLLM",
				apis.ModelAnnotation, m, served, m))
		}
	}
	model := servedModel(c, ann)
	switch {
	case model == "":
		warnings = append(warnings, fmt.Sprintf("KV events not configured: set %s to the served model name", apis.ModelAnnotation))
	case hasFlag(c, flagKVEvents):
		retopic(c, model)
	case !hasEnv(c, PodIPEnv) && features.PodSpecFieldRef == config.Disabled:
		warnings = append(warnings, "KV events not configured: their topic needs the pod IP from the downward API; "+
			"enable kubernetes.podspec-fieldref in Knative's config-features (knative-serving namespace), "+
			"then update the Service")
	default:
		add = append(add, flagKVEvents, kvEventsConfig(model))
	}
	if ann[apis.DisaggregationAnnotation] == apis.DisaggregationPrefillDecode && !hasFlag(c, flagKVTransfer) {
		add = append(add, flagKVTransfer, KVTransferConfig)
	}
	budget, choice := stepBudget(c, ann, opts)
	add = append(add, budget...)
	if len(add) == 0 {
		if choice != "" {
			ann[apis.StepTokenBudgetChoiceAnnotation] = choice
		}
		return warnings
	}
	if runsShell(c) {
		// Arguments after `sh -c SCRIPT` become the script's $0, $1...:
		// appending would change nothing the engine sees.
		name := "the serving container"
		if c.Name != "" {
			name = fmt.Sprintf("container %q", c.Name)
		}
		return append(warnings, fmt.Sprintf("%s runs a shell script: vLLM flags not added; add them yourself: %s",
			name, strings.Join(add, " ")))
	}
	c.Args = append(c.Args, add...)
	if choice != "" {
		ann[apis.StepTokenBudgetChoiceAnnotation] = choice
	}
	// Only reached with the flag added when POD_IP is defined or the
	// downward API is allowed (see the switch above).
	if slices.Contains(add, flagKVEvents) && !hasEnv(c, PodIPEnv) {
		c.Env = append(c.Env, corev1.EnvVar{Name: PodIPEnv, ValueFrom: &corev1.EnvVarSource{
			FieldRef: &corev1.ObjectFieldSelector{APIVersion: "v1", FieldPath: "status.podIP"},
		}})
	}
	return warnings
}

// stepBudget chooses the revision's per-step token budget
// (autoscaler.ChooseStepBudgets) and returns the flags to add and the
// status annotation's value. A --max-num-batched-tokens the user wrote is
// never changed, and the annotation then removed (nothing was chosen); one
// this webhook wrote (its value is the annotation's) follows a new choice,
// as when the TPOT target changed. Annotations that do not parse are left
// to validation.
func stepBudget(c *corev1.Container, ann map[string]string, opts DefaultOptions) ([]string, string) {
	spec, err := apis.Parse(ann, "", apis.Vocabulary{})
	if err != nil {
		return nil, ""
	}
	var tierTPOT time.Duration
	if opts.TierTPOT != nil {
		tierTPOT = opts.TierTPOT(spec.DefaultTier)
	}
	words := append(append([]string{}, c.Command...), c.Args...)
	seqs := 0
	if v, ok := flagValue(words, flagMaxNumSeqs); ok {
		seqs, _ = strconv.Atoi(v)
	}
	b, err := autoscaler.ChooseStepBudgets(spec, tierTPOT, seqs)
	if err != nil {
		return nil, ""
	}
	want := strconv.Itoa(b.Decode.MaxNumBatchedTokens)
	if have, ok := flagValue(words, flagMaxBatched); ok || hasFlag(c, flagMaxBatched) {
		prev, _, own := autoscaler.ParseStepBudgetChoice(ann[apis.StepTokenBudgetChoiceAnnotation])
		if !own || strconv.Itoa(prev) != have {
			delete(ann, apis.StepTokenBudgetChoiceAnnotation)
			return nil, ""
		}
		setFlagValue(c, flagMaxBatched, want)
		return nil, b.String()
	}
	add := []string{flagMaxBatched + "=" + want}
	if n := b.Decode.MaxNumSeqs; n > 0 && !hasFlag(c, flagMaxNumSeqs) {
		add = append(add, flagMaxNumSeqs+"="+strconv.Itoa(n))
	}
	return add, b.String()
}

// setFlagValue replaces the value of flag in c.Args (--flag=V or --flag V).
func setFlagValue(c *corev1.Container, flag, value string) {
	for i := 0; i < len(c.Args); i++ {
		name, _, inline := splitFlag(c.Args[i])
		if name != flag {
			continue
		}
		if inline {
			c.Args[i] = flag + "=" + value
		} else if i+1 < len(c.Args) {
			c.Args[i+1] = value
		}
		return
	}
}

// kvEventsConfig is the --kv-events-config value llm-d's routers expect:
// ZMQ on port 5557, topic kv@<pod ip>@<model>.
func kvEventsConfig(model string) string {
	var b bytes.Buffer
	enc := json.NewEncoder(&b)
	enc.SetEscapeHTML(false)
	// Struct order is the output order, so the value is deterministic.
	_ = enc.Encode(struct {
		Enable    bool   `json:"enable_kv_cache_events"`
		Publisher string `json:"publisher"`
		Endpoint  string `json:"endpoint"`
		Topic     string `json:"topic"`
	}{true, "zmq", KVEventsEndpoint, kvTopicPrefix + model})
	return strings.TrimSuffix(b.String(), "\n")
}

const kvTopicPrefix = "kv@$(" + PodIPEnv + ")@"

// retopic updates the model in a --kv-events-config this webhook wrote
// (when llm-d.ai/model changed); a configuration the user wrote is left
// as it is.
func retopic(c *corev1.Container, model string) {
	for i := 0; i < len(c.Args); i++ {
		name, value, inline := splitFlag(c.Args[i])
		if name != flagKVEvents {
			continue
		}
		if !inline {
			if i+1 >= len(c.Args) {
				return
			}
			i++
			value = c.Args[i]
		}
		if !ownKVEventsConfig(value) || value == kvEventsConfig(model) {
			return
		}
		if inline {
			c.Args[i] = flagKVEvents + "=" + kvEventsConfig(model)
		} else {
			c.Args[i] = kvEventsConfig(model)
		}
		return
	}
}

func ownKVEventsConfig(v string) bool {
	var m map[string]any
	if json.Unmarshal([]byte(v), &m) != nil || len(m) != 4 {
		return false
	}
	topic, _ := m["topic"].(string)
	return m["enable_kv_cache_events"] == true && m["publisher"] == "zmq" &&
		m["endpoint"] == KVEventsEndpoint && strings.HasPrefix(topic, kvTopicPrefix)
}

// servedModel is the model name clients use: llm-d.ai/model, else what
// vLLM would serve under (--served-model-name, --model, or the positional
// model of `vllm serve MODEL`; the vllm/vllm-openai image's entrypoint is
// `vllm serve`, so there the model is the first argument).
func servedModel(c *corev1.Container, ann map[string]string) string {
	if m := strings.TrimSpace(ann[apis.ModelAnnotation]); m != "" {
		return m
	}
	words := append(append([]string{}, c.Command...), c.Args...)
	for _, flag := range []string{flagServedModelName, flagModel} {
		if v, ok := flagValue(words, flag); ok {
			return v
		}
	}
	for i, w := range words {
		if w == "serve" && i+1 < len(words) && !strings.HasPrefix(words[i+1], "-") {
			return words[i+1]
		}
	}
	if len(c.Command) == 0 && len(c.Args) > 0 && !strings.HasPrefix(c.Args[0], "-") {
		return c.Args[0]
	}
	return ""
}

// splitFlag splits "--flag=value" and normalises the name as vLLM's
// argument parser does (underscores and dashes are the same).
func splitFlag(w string) (name, value string, inline bool) {
	if !strings.HasPrefix(w, "--") {
		return "", "", false
	}
	name, value, inline = strings.Cut(w, "=")
	return "--" + strings.ReplaceAll(name[2:], "_", "-"), value, inline
}

func hasFlag(c *corev1.Container, flag string) bool {
	for _, list := range [][]string{c.Command, c.Args} {
		for _, w := range list {
			if name, _, _ := splitFlag(w); name == flag {
				return true
			}
		}
	}
	return false
}

func flagValue(words []string, flag string) (string, bool) {
	for i, w := range words {
		name, value, inline := splitFlag(w)
		if name != flag {
			continue
		}
		if inline {
			return value, value != ""
		}
		if i+1 < len(words) && !strings.HasPrefix(words[i+1], "-") {
			return words[i+1], true
		}
	}
	return "", false
}

func hasEnv(c *corev1.Container, name string) bool {
	for _, e := range c.Env {
		if e.Name == name {
			return true
		}
	}
	return false
}

func runsShell(c *corev1.Container) bool {
	if len(c.Command) == 0 {
		return false
	}
	switch path.Base(c.Command[0]) {
	case "sh", "bash", "ash", "dash", "zsh":
	default:
		return false
	}
	for _, w := range append(append([]string{}, c.Command[1:]...), c.Args...) {
		if w == "-c" || (strings.HasPrefix(w, "-") && !strings.HasPrefix(w, "--") && strings.Contains(w, "c")) {
			return true
		}
	}
	return false
}
