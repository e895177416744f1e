package discovery

import (
	"fmt"
	"net"
	"slices"
	"strconv"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	"knative.dev/serving/pkg/apis/serving"
	servingv1 "knative.dev/serving/pkg/apis/serving/v1"

	"github.com/llmd-kn/llmd-kn/pkg/activator"
	"github.com/llmd-kn/llmd-kn/pkg/apis"
	"github.com/llmd-kn/llmd-kn/pkg/engine"
	"github.com/llmd-kn/llmd-kn/pkg/router"
)

// Labels and names discovery reads.
const (
	// RoleLabel marks a pod's part in a prefill-decode revision: prefill
	// or decode (absent: decode). The PA-class reconciler sets it on the
	// prefill Deployment's pods.
	RoleLabel = apis.Group + "role"
	// QueueProxy is the name of Knative's sidecar; the activator sends to
	// the vLLM container directly, past it.
	QueueProxy = "queue-proxy"
	// DefaultPort is Knative's default serving port.
	DefaultPort = 8080
	// KVEventsPort is where the webhook makes vLLM publish KV events.
	KVEventsPort = 5557
)

// vLLM flags discovery reads from the serving container.
const (
	flagServedModelName  = "--served-model-name"
	flagModel            = "--model"
	flagSchedulingPolicy = "--scheduling-policy"
	flagKVEvents         = "--kv-events-config"
	flagMaxModelLen      = "--max-model-len"
	flagMaxNumSeqs       = "--max-num-seqs"
)

// OurClass reports whether a revision is scaled by llmd-kn's autoscaler
// class, the revisions this activator serves.
func OurClass(rev *servingv1.Revision) bool {
	return rev.Annotations[apis.ClassAnnotation] == apis.AutoscalerClass
}

// ServiceName is the Knative Service a revision belongs to: its
// serving.knative.dev/service label, else (a revision of a stand-alone
// Configuration) its Configuration.
func ServiceName(rev *servingv1.Revision) string {
	if s := rev.Labels[serving.ServiceLabelKey]; s != "" {
		return s
	}
	return rev.Labels[serving.ConfigurationLabelKey]
}

// RevisionConfig builds what the activator needs of a revision from the
// Revision and the Route of its Service (nil when it has none yet).
// Invalid llm-d annotations are an error naming
// metadata.annotations[key].
func RevisionConfig(rev *servingv1.Revision, route *servingv1.Route, vocab apis.Vocabulary) (activator.RevisionConfig, error) {
	spec, rates, err := activator.ParseRevisionSpec(rev.Annotations, "metadata.annotations", vocab)
	if err != nil {
		return activator.RevisionConfig{}, err
	}
	svc := ServiceName(rev)
	if svc == "" {
		return activator.RevisionConfig{}, fmt.Errorf("metadata.labels[%s]: required (the revision's Service or Configuration)", serving.ServiceLabelKey)
	}
	c := servingContainer(rev.Spec.Containers)
	policy := flagValues(containerWords(c), flagSchedulingPolicy)
	maxLen := 0
	if v := flagValues(containerWords(c), flagMaxModelLen); len(v) > 0 {
		// vLLM also takes 32k-style values; those are left to the pods'
		// /v1/models.
		if n, err := strconv.Atoi(v[0]); err == nil && n > 0 {
			maxLen = n
		}
	}
	// Without the flag, vLLM's default: 256, or more on large GPUs (the
	// activator counts a pod's running requests as places too).
	maxSeqs := engine.DefaultMaxNumSeqs
	if v := flagValues(containerWords(c), flagMaxNumSeqs); len(v) > 0 {
		// Anything else (a typo vLLM would refuse) leaves it unknown.
		maxSeqs = 0
		if n, err := strconv.Atoi(v[0]); err == nil && n > 0 {
			maxSeqs = n
		}
	}
	return activator.RevisionConfig{
		Key:                activator.RevisionKey{Namespace: rev.Namespace, Name: rev.Name},
		Service:            svc,
		Models:             models(spec, c, svc),
		Tags:               Tags(route, rev.Name),
		Spec:               spec,
		Rates:              rates,
		PriorityScheduling: len(policy) > 0 && policy[0] == "priority",
		MaxModelLen:        maxLen,
		MaxNumSeqs:         maxSeqs,
		Timeouts: activator.Timeouts{Total: seconds(rev.Spec.TimeoutSeconds),
			ResponseStart: seconds(rev.Spec.ResponseStartTimeoutSeconds), Idle: seconds(rev.Spec.IdleTimeoutSeconds)},
	}, nil
}

// seconds is a revision's timeout field as a duration (0: unset).
func seconds(s *int64) time.Duration {
	if s == nil || *s <= 0 {
		return 0
	}
	return time.Duration(*s) * time.Second
}

// Tags are the traffic tags of route's status that route to revision, sorted.
func Tags(route *servingv1.Route, revision string) []string {
	if route == nil {
		return nil
	}
	var tags []string
	for _, t := range route.Status.Traffic {
		if t.Tag != "" && t.RevisionName == revision && !slices.Contains(tags, t.Tag) {
			tags = append(tags, t.Tag)
		}
	}
	slices.Sort(tags)
	return tags
}

// models are the names clients may ask for: llm-d.ai/model, else what
// vLLM serves under (--served-model-name, which takes several names, else
// --model or the model of `vllm serve MODEL`), else the Service's name.
func models(spec apis.Spec, c *corev1.Container, svc string) []string {
	words := containerWords(c)
	if m := strings.TrimSpace(spec.Model); m != "" {
		return []string{m}
	}
	if names := flagValues(words, flagServedModelName); len(names) > 0 {
		return names
	}
	if m := flagValues(words, flagModel); len(m) > 0 {
		return m[:1]
	}
	for i, w := range words {
		if w == "serve" && i+1 < len(words) && !strings.HasPrefix(words[i+1], "-") {
			return []string{words[i+1]}
		}
	}
	// The vllm/vllm-openai image's entrypoint is `vllm serve`: with no
	// command, the first argument is the model.
	if c != nil && len(c.Command) == 0 && len(c.Args) > 0 && !strings.HasPrefix(c.Args[0], "-") {
		return []string{c.Args[0]}
	}
	return []string{svc}
}

// servingContainer is the container that receives traffic: the only
// one, or the one that declares a port; nil when none does.
func servingContainer(cs []corev1.Container) *corev1.Container {
	for i := range cs {
		if len(cs) == 1 || len(cs[i].Ports) > 0 {
			return &cs[i]
		}
	}
	return nil
}

// containerWords are a container's command and arguments.
func containerWords(c *corev1.Container) []string {
	if c == nil {
		return nil
	}
	return append(append([]string{}, c.Command...), c.Args...)
}

// flagValues returns the values of a flag in vLLM's syntax
// (--flag=value, or --flag followed by one or more values; underscores
// and dashes are the same in names), or nil when it is absent.
func flagValues(words []string, flag string) []string {
	for i, w := range words {
		name, value, inline := splitFlag(w)
		if name != flag {
			continue
		}
		if inline {
			return []string{value}
		}
		var vals []string
		for _, v := range words[i+1:] {
			if strings.HasPrefix(v, "-") {
				break
			}
			vals = append(vals, v)
		}
		return vals
	}
	return nil
}

func hasFlag(words []string, flag string) bool {
	for _, w := range words {
		if name, _, _ := splitFlag(w); name == flag {
			return true
		}
	}
	return false
}

func splitFlag(w string) (name, value string, inline bool) {
	if !strings.HasPrefix(w, "--") {
		return "", "", false
	}
	name, value, inline = strings.Cut(w, "=")
	return "--" + strings.ReplaceAll(name[2:], "_", "-"), value, inline
}

// Routable reports whether a pod may receive requests: running, Ready,
// with an IP, and not terminating.
func Routable(p *corev1.Pod) bool {
	if p.DeletionTimestamp != nil || p.Status.Phase != corev1.PodRunning || p.Status.PodIP == "" {
		return false
	}
	for _, c := range p.Status.Conditions {
		if c.Type == corev1.PodReady {
			return c.Status == corev1.ConditionTrue
		}
	}
	return false
}

// PodSpec is the activator's view of a routable pod: its vLLM container
// directly (the first container that is not queue-proxy, at its first
// containerPort, 8080 when it declares none), its KV events on port 5557
// when vLLM was told to publish them, and its role from the
// llm-d.ai/role label (absent: decode in a prefill-decode revision, both
// otherwise, as an ordinary vLLM does both).
func PodSpec(p *corev1.Pod, disaggregated bool) (activator.PodSpec, error) {
	var c *corev1.Container
	for i := range p.Spec.Containers {
		if p.Spec.Containers[i].Name != QueueProxy {
			c = &p.Spec.Containers[i]
			break
		}
	}
	if c == nil {
		return activator.PodSpec{}, fmt.Errorf("spec.containers: no container other than %s", QueueProxy)
	}
	port := int32(DefaultPort)
	if len(c.Ports) > 0 && c.Ports[0].ContainerPort > 0 {
		port = c.Ports[0].ContainerPort
	}
	role := router.RoleBoth
	if disaggregated {
		role = router.RoleDecode
	}
	if v, ok := p.Labels[RoleLabel]; ok {
		switch v {
		case "prefill":
			role = router.RolePrefill
		case "decode":
			role = router.RoleDecode
		default:
			return activator.PodSpec{}, fmt.Errorf("metadata.labels[%s]: %q is not a role (prefill or decode)", RoleLabel, v)
		}
	}
	spec := activator.PodSpec{
		Name: p.Name,
		URL:  "http://" + net.JoinHostPort(p.Status.PodIP, strconv.Itoa(int(port))),
		Role: role,
	}
	if hasFlag(containerWords(c), flagKVEvents) {
		spec.KVEvents = "tcp://" + net.JoinHostPort(p.Status.PodIP, strconv.Itoa(KVEventsPort))
	}
	return spec, nil
}
