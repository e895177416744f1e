package workload

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"path/filepath"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"time"

	"sigs.k8s.io/yaml"
)

// Dataset kinds of a Spec.
const (
	KindMooncake         = "mooncake"
	KindAzure            = "azure"
	KindSharedPrefix     = "shared-prefix"
	KindPrefixRepetition = "prefix-repetition"
	KindRandom           = "random"
)

// Spec describes a workload in YAML or JSON, for example
//
//	kind: mooncake
//	path: ../shared/data/mooncake/synthetic_trace.jsonl
//	speedup: 2
//	maxDuration: 5m
//
// or llm-d's published shared-prefix benchmark
//
//	kind: shared-prefix
//	sharedPrefix: {groups: 150, promptsPerGroup: 5, systemPromptLen: 6000, questionLen: 1200, outputLen: 1000}
//	arrival: {kind: ladder, preset: llm-d}
//
// Unknown fields, wrong types and fields that do not apply to the kind are
// errors named by their path (see FieldError).
type Spec struct {
	// Kind is the dataset: mooncake, azure, shared-prefix,
	// prefix-repetition or random.
	Kind string `json:"kind"`
	// Path is the trace file (mooncake, azure), relative to the base
	// directory given to Open unless absolute.
	Path string `json:"path,omitempty"`
	// Seed fixes every random choice: generated prompts, lengths, orders and
	// arrival times. Mooncake blocks depend on their hash ids alone.
	Seed int64 `json:"seed,omitempty"`

	Azure            *AzureConfig            `json:"azure,omitempty"`
	SharedPrefix     *SharedPrefixConfig     `json:"sharedPrefix,omitempty"`
	PrefixRepetition *PrefixRepetitionConfig `json:"prefixRepetition,omitempty"`
	Random           *RandomConfig           `json:"random,omitempty"`

	// Arrival is the arrival process; for traces it defaults to the trace's
	// timestamps.
	Arrival Arrival `json:"arrival,omitzero"`
	// Speedup, RateScale, MaxRequests, MaxDuration, IdleEvery and IdleGap
	// are as in Options.
	Speedup     float64  `json:"speedup,omitempty"`
	RateScale   float64  `json:"rateScale,omitempty"`
	MaxRequests int      `json:"maxRequests,omitempty"`
	MaxDuration Duration `json:"maxDuration,omitzero"`
	IdleEvery   Duration `json:"idleEvery,omitzero"`
	IdleGap     Duration `json:"idleGap,omitzero"`
}

// AzureConfig configures the Azure trace's generated prompts.
type AzureConfig struct {
	// SystemPromptLen is the length of a system prompt shared by every
	// request (see AzureTrace.Dataset); 0 means none.
	SystemPromptLen int `json:"systemPromptLen,omitempty"`
}

// ParseSpec reads a Spec from YAML (or JSON, which is YAML) and validates it.
// All problems are reported together, each as a *FieldError.
func ParseSpec(data []byte) (Spec, error) {
	j, err := yaml.YAMLToJSONStrict(data)
	if err != nil {
		return Spec{}, fmt.Errorf("workload spec: %w", err)
	}
	var generic any
	dec := json.NewDecoder(bytes.NewReader(j))
	dec.UseNumber()
	if err := dec.Decode(&generic); err != nil {
		return Spec{}, fmt.Errorf("workload spec: %w", err)
	}
	if generic == nil {
		return Spec{}, errors.New("workload spec: empty document, want an object with a kind")
	}
	var v validator
	checkJSON(&v, generic, reflect.TypeFor[Spec](), "")
	if err := v.err(); err != nil {
		return Spec{}, err
	}
	var s Spec
	dec = json.NewDecoder(bytes.NewReader(j))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&s); err != nil {
		return Spec{}, fmt.Errorf("workload spec: %w", err)
	}
	return s, s.Validate()
}

var durationType = reflect.TypeFor[Duration]()

// checkJSON checks a decoded JSON value against the Go type it will be
// decoded into, so that every unknown field and wrong type is reported with
// its path; encoding/json stops at the first and names no nested path for
// unknown fields. Field names must match exactly (encoding/json would also
// take them in another case).
func checkJSON(v *validator, val any, t reflect.Type, path string) {
	if t.Kind() == reflect.Pointer {
		if val == nil {
			return
		}
		t = t.Elem()
	}
	if val == nil {
		v.add(path, "must not be null")
		return
	}
	if t == durationType {
		s, ok := val.(string)
		if _, err := time.ParseDuration(s); !ok || err != nil {
			v.add(path, "want a duration such as \"90s\" or \"1h30m\", got %s", jsonText(val))
		}
		return
	}
	switch t.Kind() {
	case reflect.Struct:
		m, ok := val.(map[string]any)
		if !ok {
			v.add(path, "want an object, got %s", jsonText(val))
			return
		}
		keys := make([]string, 0, len(m))
		for k := range m {
			keys = append(keys, k)
		}
		slices.Sort(keys)
		for _, k := range keys {
			p := k
			if path != "" {
				p = path + "." + k
			}
			f, ok := jsonField(t, k)
			if !ok {
				v.add(p, "unknown field")
				continue
			}
			checkJSON(v, m[k], f.Type, p)
		}
	case reflect.Slice:
		a, ok := val.([]any)
		if !ok {
			v.add(path, "want a list, got %s", jsonText(val))
			return
		}
		for i, e := range a {
			checkJSON(v, e, t.Elem(), fmt.Sprintf("%s[%d]", path, i))
		}
	case reflect.Int, reflect.Int64:
		n, ok := val.(json.Number)
		if _, err := strconv.ParseInt(string(n), 10, 64); !ok || err != nil {
			v.add(path, "want an integer, got %s", jsonText(val))
		}
	case reflect.Float64:
		n, ok := val.(json.Number)
		if _, err := strconv.ParseFloat(string(n), 64); !ok || err != nil {
			v.add(path, "want a number, got %s", jsonText(val))
		}
	case reflect.String:
		if _, ok := val.(string); !ok {
			v.add(path, "want a string, got %s", jsonText(val))
		}
	default:
		v.add(path, "unsupported type %s", t) // a Spec field type this walker does not know
	}
}

func jsonField(t reflect.Type, name string) (reflect.StructField, bool) {
	for i := range t.NumField() {
		f := t.Field(i)
		tag, _, _ := strings.Cut(f.Tag.Get("json"), ",")
		if f.IsExported() && tag == name {
			return f, true
		}
	}
	return reflect.StructField{}, false
}

func jsonText(val any) string {
	b, err := json.Marshal(val)
	if err != nil {
		return fmt.Sprint(val)
	}
	return truncate(string(b), 60)
}

func (s *Spec) timed() bool { return s.Kind == KindMooncake || s.Kind == KindAzure }

// Validate checks the spec without reading any file. Every problem is a
// *FieldError; they are joined with errors.Join.
func (s *Spec) Validate() error {
	var v validator
	kinds := []string{KindMooncake, KindAzure, KindSharedPrefix, KindPrefixRepetition, KindRandom}
	if !slices.Contains(kinds, s.Kind) {
		if s.Kind == "" {
			v.add("kind", "required: one of %s", strings.Join(kinds, ", "))
		} else {
			v.add("kind", "must be one of %s, got %q", strings.Join(kinds, ", "), s.Kind)
		}
		return v.err()
	}
	if s.timed() {
		v.check(s.Path != "", "path", "required for kind %s", s.Kind)
	} else {
		v.check(s.Path == "", "path", "only for kinds mooncake and azure")
	}
	only := func(set bool, field, kind string) {
		v.check(!set || s.Kind == kind, field, "only for kind %s", kind)
	}
	only(s.Azure != nil, "azure", KindAzure)
	only(s.SharedPrefix != nil, "sharedPrefix", KindSharedPrefix)
	only(s.PrefixRepetition != nil, "prefixRepetition", KindPrefixRepetition)
	only(s.Random != nil, "random", KindRandom)
	switch s.Kind {
	case KindAzure:
		if s.Azure != nil {
			n := s.Azure.SystemPromptLen
			v.check(n >= 0 && n <= maxLength, "azure.systemPromptLen", "must be in [0, %d], got %d", maxLength, n)
		}
	case KindSharedPrefix:
		deref(s.SharedPrefix).validate(&v, "sharedPrefix.")
	case KindPrefixRepetition:
		deref(s.PrefixRepetition).validate(&v, "prefixRepetition.")
	case KindRandom:
		deref(s.Random).validate(&v, "random.")
	}
	s.Arrival.validate(&v, "arrival.", s.timed())
	kind := s.Arrival.Kind
	if kind == "" {
		kind = ArrivalTrace
	}
	opts := s.options()
	opts.validate(&v, kind)
	if s.Kind == KindSharedPrefix && kind != ArrivalLadder && opts.MaxRequests == 0 && opts.MaxDuration == 0 {
		v.add("", "the workload never ends: shared-prefix is endless and %s arrivals are too; set maxRequests or maxDuration", kind)
	}
	return v.err()
}

func deref[T any](p *T) T {
	if p == nil {
		var zero T
		return zero
	}
	return *p
}

func (s *Spec) options() Options {
	return Options{
		Seed:        uint64(s.Seed),
		Speedup:     s.Speedup,
		RateScale:   s.RateScale,
		MaxRequests: s.MaxRequests,
		MaxDuration: s.MaxDuration.Duration,
		IdleEvery:   s.IdleEvery.Duration,
		IdleGap:     s.IdleGap.Duration,
	}
}

// Open validates spec, reads its trace file if it has one (a relative Path
// is taken from baseDir) and returns the workload.
func Open(spec Spec, baseDir string) (*Workload, error) {
	if err := spec.Validate(); err != nil {
		return nil, err
	}
	seed := uint64(spec.Seed)
	path := spec.Path
	if path != "" && !filepath.IsAbs(path) {
		path = filepath.Join(baseDir, path)
	}
	var ds Dataset
	var err error
	switch spec.Kind {
	case KindMooncake:
		ds, err = LoadMooncake(path)
	case KindAzure:
		var t *AzureTrace
		if t, err = LoadAzure(path); err == nil {
			ds, err = t.Dataset(deref(spec.Azure).SystemPromptLen, seed)
		}
	case KindSharedPrefix:
		ds, err = NewSharedPrefix(deref(spec.SharedPrefix), seed)
	case KindPrefixRepetition:
		ds, err = NewPrefixRepetition(deref(spec.PrefixRepetition), seed)
	case KindRandom:
		ds, err = NewRandom(deref(spec.Random), seed)
	default:
		err = errors.New("unreachable: kind validated")
	}
	if err != nil {
		return nil, fmt.Errorf("workload %s: %w", spec.Kind, err)
	}
	return New(ds, spec.Arrival, spec.options())
}
