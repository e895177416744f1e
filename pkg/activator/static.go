package activator

import (
	"fmt"
	"net/url"
	"strings"

	"sigs.k8s.io/yaml"

	"github.com/llmd-kn/llmd-kn/pkg/apis"
	"github.com/llmd-kn/llmd-kn/pkg/engine"
	"github.com/llmd-kn/llmd-kn/pkg/router"
)

// StaticConfig is a fixed set of revisions and pods, for running the
// activator in front of vLLM servers without Kubernetes (cmd/activator
// --config). In a cluster the same information comes from the API server.
type StaticConfig struct {
	Revisions []StaticRevision `json:"revisions"`
	// KVEventsBind is a ZMQ endpoint (tcp://*:5557) the activator binds
	// for KV-event publishers that connect (llm-d's direction), as
	// --kv-events-bind; pods whose publishers bind are dialed at
	// pods[].kvEvents.
	KVEventsBind string `json:"kvEventsBind,omitempty"`
}

// StaticRevision is one revision with its pods; Annotations are the
// revision template's, validated exactly as the webhook does.
type StaticRevision struct {
	Namespace   string            `json:"namespace"`
	Name        string            `json:"name"`
	Service     string            `json:"service"`
	Models      []string          `json:"models"`
	Tags        []string          `json:"tags,omitempty"`
	Annotations map[string]string `json:"annotations,omitempty"`
	// PriorityScheduling: the pods run vLLM with --scheduling-policy priority.
	PriorityScheduling bool `json:"priorityScheduling,omitempty"`
	// MaxNumSeqs: the pods' vLLM --max-num-seqs (0: not known).
	MaxNumSeqs int         `json:"maxNumSeqs,omitempty"`
	Pods       []StaticPod `json:"pods"`
}

// StaticPod is one vLLM server.
type StaticPod struct {
	Name     string `json:"name"`
	URL      string `json:"url"`
	Role     string `json:"role,omitempty"`
	KVEvents string `json:"kvEvents,omitempty"`
}

// ParseStaticConfig reads and validates a static configuration; errors name
// the field path.
func ParseStaticConfig(data []byte, tiers *Tiers, routing *router.Config) ([]RevisionConfig, map[RevisionKey][]PodSpec, error) {
	var c StaticConfig
	if err := yaml.UnmarshalStrict(data, &c); err != nil {
		return nil, nil, fmt.Errorf("static config: %w", err)
	}
	if len(c.Revisions) == 0 {
		return nil, nil, fmt.Errorf("revisions: at least one revision is required")
	}
	vocab := NewVocabulary(tiers, routing)
	var revs []RevisionConfig
	pods := map[RevisionKey][]PodSpec{}
	for i, r := range c.Revisions {
		path := fmt.Sprintf("revisions[%d]", i)
		if r.Namespace == "" {
			r.Namespace = "default"
		}
		switch {
		case r.Name == "":
			return nil, nil, fmt.Errorf("%s.name: required", path)
		case r.Service == "":
			return nil, nil, fmt.Errorf("%s.service: required", path)
		case len(r.Models) == 0:
			return nil, nil, fmt.Errorf("%s.models: at least one model name is required", path)
		}
		key := RevisionKey{Namespace: r.Namespace, Name: r.Name}
		if _, dup := pods[key]; dup {
			return nil, nil, fmt.Errorf("%s: duplicate revision %s", path, key)
		}
		spec, rates, err := ParseRevisionSpec(r.Annotations, path+".annotations", vocab)
		if err != nil {
			return nil, nil, err
		}
		if r.MaxNumSeqs < 0 {
			return nil, nil, fmt.Errorf("%s.maxNumSeqs: %d, want 0 (not known) or more", path, r.MaxNumSeqs)
		}
		rc := RevisionConfig{Key: key, Service: r.Service, Models: r.Models, Tags: r.Tags, Spec: spec, Rates: rates, PriorityScheduling: r.PriorityScheduling, MaxNumSeqs: r.MaxNumSeqs}
		revs = append(revs, rc)
		seen := map[string]bool{}
		list := []PodSpec{}
		for j, p := range r.Pods {
			pp := fmt.Sprintf("%s.pods[%d]", path, j)
			if p.Name == "" || seen[p.Name] {
				return nil, nil, fmt.Errorf("%s.name: required and unique within the revision", pp)
			}
			seen[p.Name] = true
			u, err := url.Parse(p.URL)
			if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" || (u.Path != "" && u.Path != "/") {
				return nil, nil, fmt.Errorf("%s.url: %q must be an http(s) base URL like http://10.0.0.7:8000", pp, p.URL)
			}
			role, err := router.ParseRole(orDefault(p.Role, "both"))
			if err != nil {
				return nil, nil, fmt.Errorf("%s.role: %v", pp, err)
			}
			if p.KVEvents != "" && !strings.HasPrefix(p.KVEvents, "tcp://") {
				return nil, nil, fmt.Errorf("%s.kvEvents: %q must be a ZMQ tcp:// endpoint", pp, p.KVEvents)
			}
			list = append(list, PodSpec{Name: p.Name, URL: strings.TrimSuffix(p.URL, "/"), Role: role, KVEvents: p.KVEvents})
		}
		pods[key] = list
	}
	return revs, pods, nil
}

// NewVocabulary is what annotation values are valid with these tiers and
// this router configuration: the webhook's vocabulary.
func NewVocabulary(tiers *Tiers, routing *router.Config) apis.Vocabulary {
	return apis.Vocabulary{RoutingProfiles: routing.ProfileNames(), Tiers: tiers.Names(), SimProfiles: engine.BuiltinProfileNames()}
}

// ParseRevisionSpec validates a revision's annotations exactly as the
// webhook does (errors name path and the key) and derives the engine rates
// for the ttft-cost scorer from its engine profile (llm-d.ai/sim-profile,
// else the default one). Static configurations and cluster discovery both
// build RevisionConfigs with it.
func ParseRevisionSpec(annotations map[string]string, path string, vocab apis.Vocabulary) (apis.Spec, router.Rates, error) {
	spec, err := apis.Parse(annotations, path, vocab)
	if err != nil {
		return apis.Spec{}, router.Rates{}, err
	}
	var rates router.Rates
	if p, err := engine.BuiltinProfile(orDefault(spec.SimProfile, engine.DefaultProfile)); err == nil {
		rates = router.RatesFromProfile(&p, 0, 1, 0)
	}
	return spec, rates, nil
}

func orDefault(s, d string) string {
	if s == "" {
		return d
	}
	return s
}
