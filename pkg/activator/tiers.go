package activator

import (
	"fmt"
	"maps"
	"math"
	"os"
	"slices"
	"sort"
	"strings"
	"time"

	"sigs.k8s.io/yaml"
)

// TierHeader carries a request's SLO tier; it is the only x-llm-d-* header a
// client may send.
const TierHeader = "X-Llm-D-Slo-Tier"

// Tier is an SLO class: its latency targets, its priority in flow control,
// and how long its requests may wait in the activator.
type Tier struct {
	Name string `json:"name"`
	// Priority orders tiers: higher is admitted first.
	Priority int `json:"priority"`
	// TTFT and TPOT are the latency targets (0: none).
	TTFT Duration `json:"ttft,omitempty"`
	TPOT Duration `json:"tpot,omitempty"`
	// Sheddable requests may be refused with 429 when the revision is
	// saturated and its queue is full, in favour of higher tiers.
	Sheddable bool `json:"sheddable,omitempty"`
	// MaxQueueTime bounds the time a request waits in the activator.
	MaxQueueTime Duration `json:"maxQueueTime"`
	// MaxSaturation is the pool saturation (llm-d's detector: 1 means
	// saturated) up to which requests of this tier are dispatched; above it
	// they wait. 0 means no limit.
	MaxSaturation float64 `json:"maxSaturation,omitempty"`
	// MaxPerPod caps the tier's requests in flight per ready decode pod:
	// the flow controller admits one only while fewer than MaxPerPod times
	// the pods are admitted, and the router sends it to a pod with fewer
	// than MaxPerPod of them. Each running sequence lengthens every step
	// of the pod's running batch, so this is what bounds the step time a
	// lower tier's work costs the tiers above it (the engines' priority
	// scheduling orders their waiting queues, not their running batches).
	// 0 means no cap.
	MaxPerPod int `json:"maxPerPod,omitempty"`
	// MaxPrefillPerPod is the tier's prefill gate: the flow controller
	// admits one of its requests only while fewer than MaxPrefillPerPod
	// times the ready decode pods are admitted without their first
	// response byte, and the router sends it to a pod with fewer than
	// MaxPrefillPerPod of them (sent there, no first byte yet): at most
	// that many of the tier's prefills share a pod's steps. A streamed
	// answer's first byte is its first token; a non-streamed answer's
	// first byte is its end (the activator cannot see its first token), so
	// for non-streamed requests (the batch ways in never stream) the gate
	// holds for the whole request, as a per-pod cap of MaxPrefillPerPod.
	// kn-llmd plan's --batch-max-prefill-per-pod is the same rule. 0 means
	// no gate.
	MaxPrefillPerPod int `json:"maxPrefillPerPod,omitempty"`
	// YieldToInteractive holds the tier's requests off a decode pod while
	// a request of a higher tier sent there has no first response byte
	// yet (waiting in its queue or in prefill; a non-streamed one until its
	// end): the router leaves such pods out, and the flow controller
	// admits one only while some ready decode pod has none. kn-llmd plan's
	// --batch-yield is the same rule.
	YieldToInteractive bool `json:"yieldToInteractive,omitempty"`
	// Timeout, ResponseStartTimeout and IdleTimeout are the upstream
	// timeouts of the tier's requests where the revision sets none
	// (timeoutSeconds, responseStartTimeoutSeconds, idleTimeoutSeconds);
	// 0: none.
	Timeout              Duration `json:"timeout,omitempty"`
	ResponseStartTimeout Duration `json:"responseStartTimeout,omitempty"`
	IdleTimeout          Duration `json:"idleTimeout,omitempty"`
}

// Timeouts are the tier's default upstream timeouts.
func (t Tier) Timeouts() Timeouts {
	return Timeouts{Total: time.Duration(t.Timeout), ResponseStart: time.Duration(t.ResponseStartTimeout), Idle: time.Duration(t.IdleTimeout)}
}

// Duration is a time.Duration that reads and writes as "1.5s" in YAML/JSON.
type Duration time.Duration

// UnmarshalJSON parses a Go duration string.
func (d *Duration) UnmarshalJSON(b []byte) error {
	s := strings.Trim(string(b), `"`)
	v, err := time.ParseDuration(s)
	if err != nil {
		return fmt.Errorf("invalid duration %s: %w", b, err)
	}
	if v < 0 {
		return fmt.Errorf("invalid duration %s: negative", b)
	}
	*d = Duration(v)
	return nil
}

// MarshalJSON writes a Go duration string.
func (d Duration) MarshalJSON() ([]byte, error) {
	return []byte(`"` + time.Duration(d).String() + `"`), nil
}

// Tiers is the tier table (ConfigMap config-llmd-tiers in a cluster).
type Tiers struct {
	byName map[string]Tier
	order  []string // by priority, highest first
	// prefill is set when a tier has a prefill gate or yields
	// (MaxPrefillPerPod, YieldToInteractive): the activator then counts
	// each pod's requests without their first byte, by tier.
	prefill bool
}

// DefaultTiersYAML is the built-in tier table. Only batch work waits for a
// saturated pool (llm-d's detector, at 0.8): holding interactive requests
// in the activator as well measured worse in the planner (a KV-bound
// workload is "saturated" most of the time, and the held requests missed
// their targets anyway), so critical and standard requests wait in the
// engines' own queues, where priority scheduling orders them. At most 32
// batch requests run on a pod at once (maxPerPod): priority scheduling
// orders the engines' waiting queues, not their running batches, so batch
// sequences once running lengthen every step the interactive ones share
// (docs/cloudevents.md, Scheduling; the numbers in
// docs/benchmarks/batch-soak.md). The batch tier's prefill gate
// (maxPrefillPerPod) and yielding (yieldToInteractive) are off: measured
// in plan (docs/benchmarks/batch-soak.md, "Admission rules beyond the
// cap"), they are there to be set.
//
// The upstream timeouts apply where the revision sets none: an hour in all
// (Knative's timeoutSeconds default here), the first byte (a non-streamed
// answer's headers come with its end) within 10 minutes, and no silence
// longer than 30 s (critical), 1 min or 2 min inside an answer: a pod that
// stops answering cuts its streams instead of holding them.
const DefaultTiersYAML = `tiers:
- name: critical
  priority: 100
  ttft: 500ms
  tpot: 50ms
  maxQueueTime: 30s
  timeout: 1h
  responseStartTimeout: 10m
  idleTimeout: 30s
- name: standard
  priority: 50
  ttft: 2s
  tpot: 100ms
  maxQueueTime: 60s
  timeout: 1h
  responseStartTimeout: 10m
  idleTimeout: 1m
- name: batch
  priority: 0
  sheddable: true
  maxQueueTime: 10m
  maxSaturation: 0.8
  maxPerPod: 32
  timeout: 1h
  responseStartTimeout: 10m
  idleTimeout: 2m
`

// ParseTiers reads a tier table, rejecting bad entries with the field named.
func ParseTiers(data []byte) (*Tiers, error) {
	var doc struct {
		Tiers []Tier `json:"tiers"`
	}
	if err := yaml.UnmarshalStrict(data, &doc); err != nil {
		return nil, fmt.Errorf("tiers: %w", err)
	}
	if len(doc.Tiers) == 0 {
		return nil, fmt.Errorf("tiers: at least one tier is required")
	}
	t := &Tiers{byName: map[string]Tier{}}
	for i, tier := range doc.Tiers {
		path := fmt.Sprintf("tiers[%d]", i)
		if t.has(tier.Name) {
			return nil, fmt.Errorf("%s.name: duplicate tier %q", path, tier.Name)
		}
		if err := checkTier(path, tier); err != nil {
			return nil, err
		}
		t.byName[tier.Name] = tier
		t.order = append(t.order, tier.Name)
	}
	t.arrange()
	return t, nil
}

// checkTier validates one tier; errors name the field under path.
func checkTier(path string, tier Tier) error {
	switch {
	case !validTierName(tier.Name):
		return fmt.Errorf("%s.name: %q must be a lowercase DNS label", path, tier.Name)
	case tier.MaxQueueTime <= 0:
		return fmt.Errorf("%s.maxQueueTime: must be positive (nothing waits forever)", path)
	case tier.MaxSaturation < 0 || math.IsNaN(tier.MaxSaturation):
		return fmt.Errorf("%s.maxSaturation: must not be negative", path)
	case tier.MaxPerPod < 0:
		return fmt.Errorf("%s.maxPerPod: must not be negative", path)
	case tier.MaxPrefillPerPod < 0:
		return fmt.Errorf("%s.maxPrefillPerPod: must not be negative (0: no prefill gate)", path)
	}
	return nil
}

// arrange orders the tiers by priority and notes whether any counts
// requests without their first byte.
func (t *Tiers) arrange() {
	t.prefill = false
	for _, tier := range t.byName {
		t.prefill = t.prefill || tier.MaxPrefillPerPod > 0 || tier.YieldToInteractive
	}
	sort.SliceStable(t.order, func(i, j int) bool {
		return t.byName[t.order[i]].Priority > t.byName[t.order[j]].Priority
	})
}

// With returns a copy of the table with the tier of tier.Name replaced by
// tier (validated as ParseTiers does); t is not changed. An unknown name
// is an error: the table's tiers are what requests and Services name.
func (t *Tiers) With(tier Tier) (*Tiers, error) {
	i := slices.Index(t.order, tier.Name)
	if i < 0 {
		return nil, fmt.Errorf("tiers: no tier %q", tier.Name)
	}
	if err := checkTier(fmt.Sprintf("tiers[%s]", tier.Name), tier); err != nil {
		return nil, err
	}
	c := &Tiers{byName: maps.Clone(t.byName), order: slices.Clone(t.order)}
	c.byName[tier.Name] = tier
	c.arrange()
	return c, nil
}

// DefaultTiers returns the built-in table.
func DefaultTiers() *Tiers {
	t, err := ParseTiers([]byte(DefaultTiersYAML))
	if err != nil {
		panic(err)
	}
	return t
}

func (t *Tiers) has(name string) bool { _, ok := t.byName[name]; return ok }

// Get returns a tier by name.
func (t *Tiers) Get(name string) (Tier, bool) {
	tier, ok := t.byName[name]
	return tier, ok
}

// above reports whether the tier at index i (Names' order) has a higher
// priority than tier t.
func (t *Tiers) above(i int, of Tier) bool {
	return i >= 0 && i < len(t.order) && t.byName[t.order[i]].Priority > of.Priority
}

// Names lists the tiers, highest priority first.
func (t *Tiers) Names() []string { return append([]string(nil), t.order...) }

func validTierName(s string) bool {
	if s == "" || len(s) > 63 {
		return false
	}
	for i, c := range s {
		switch {
		case c >= 'a' && c <= 'z', c >= '0' && c <= '9':
		case c == '-' && i > 0 && i < len(s)-1:
		default:
			return false
		}
	}
	return true
}

// VLLMPriority maps a tier to vLLM's priority field, where lower values are
// scheduled first: the highest tier gets 0.
func (t *Tiers) VLLMPriority(tier Tier) int {
	top := t.byName[t.order[0]].Priority
	return top - tier.Priority
}

// LoadTiers reads the tier table at path (the config-llmd-tiers data as
// mounted); an empty path is the built-in table. Errors name the file.
func LoadTiers(path string) (*Tiers, error) {
	if path == "" {
		return DefaultTiers(), nil
	}
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	t, err := ParseTiers(data)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return t, nil
}
