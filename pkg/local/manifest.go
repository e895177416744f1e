package local

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"regexp"
	"slices"
	"sort"
	"strconv"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	servingv1 "knative.dev/serving/pkg/apis/serving/v1"
	"sigs.k8s.io/yaml"

	"github.com/llmd-kn/llmd-kn/pkg/activator"
	"github.com/llmd-kn/llmd-kn/pkg/admission"
	"github.com/llmd-kn/llmd-kn/pkg/apis"
	"github.com/llmd-kn/llmd-kn/pkg/autoscaler"
	"github.com/llmd-kn/llmd-kn/pkg/engine"
	"github.com/llmd-kn/llmd-kn/pkg/router"
)

// DefaultNamespace is the namespace of Services that name none, as kubectl's.
const DefaultNamespace = "default"

// Service is one Knative Service as the local runtime runs it: validated and
// defaulted exactly as the cluster webhook would, with what the runtime needs
// read out of it.
type Service struct {
	// File is the manifest the Service came from.
	File            string
	Namespace, Name string
	// Revision is the one revision the runtime runs: the template's name
	// when the manifest sets one, else {name}-00001 as Knative names a
	// Service's first revision.
	Revision string
	// Model is the name clients put in `model`: llm-d.ai/model, else the
	// first --served-model-name, else --model, else the Service name.
	// Models lists every name the pods answer to, Model first.
	Model  string
	Models []string
	// ModelPath is what vLLM loads (--model), Model when the args name none.
	ModelPath string
	// Spec is the revision's parsed llm-d configuration.
	Spec apis.Spec
	// Image and Env are the serving container's; Args are its vLLM
	// arguments without the model (positional or --model), --host and
	// --port, which a pod command supplies itself ({args} in
	// --pod-command).
	Image string
	Args  []string
	Env   []corev1.EnvVar
	// Engine holds the vLLM engine flags the simulator honours.
	Engine EngineArgs
	// StepBudget is the per-step token budget chosen for the pods (as the
	// webhook does: autoscaler.ChooseStepBudgets) when the args set none;
	// nil when they do. Engine carries it, and pods started from
	// --pod-command get it as flags.
	StepBudget *autoscaler.StepBudgets
	// Tags are the traffic tags: {tag}-{name}.{namespace}.localhost reaches
	// the Service too, and a tag named like an SLO tier selects that tier.
	Tags []string
	// Decode and Prefill are the initial replica counts (see
	// InitialReplicas).
	Decode, Prefill int
	// Object is the defaulted Knative Service.
	Object *servingv1.Service
}

// Key is the revision's key in the activator.
func (s *Service) Key() activator.RevisionKey {
	return activator.RevisionKey{Namespace: s.Namespace, Name: s.Revision}
}

// String names the Service as kubectl does: Service namespace/name.
func (s *Service) String() string { return "Service " + s.Namespace + "/" + s.Name }

// EngineArgs are the vLLM flags of the container that change what a
// simulated pod does; zero means vLLM's default.
type EngineArgs struct {
	MaxModelLen         int
	MaxNumSeqs          int
	MaxNumBatchedTokens int
	// PrefillMaxNumBatchedTokens is the prefill pods' budget when it
	// differs (a chosen budget: prefill pods keep vLLM's default).
	PrefillMaxNumBatchedTokens int
	BlockSize                  int
	NumGPUBlocksOverride       int
	GPUMemoryUtilization       float64
	Seed                       uint64
	// SchedulingPolicy is --scheduling-policy: "", fcfs or priority.
	SchedulingPolicy string
}

// PriorityScheduling reports whether the pods order their waiting queues
// by the priority the activator sends with each request (its SLO tier).
// Simulated pods do unless the args choose fcfs; real processes only when
// the args ask for vLLM's --scheduling-policy priority.
func (s *Service) PriorityScheduling(simulated bool) bool {
	if simulated {
		return s.Engine.SchedulingPolicy != "fcfs"
	}
	return s.Engine.SchedulingPolicy == "priority"
}

// MaxNumSeqs is the pods' --max-num-seqs as the activator's admission
// should count it: the args' (or the step budget's), else for simulated
// pods the engine's default; 0 (learned from the pods' metrics) for real
// processes whose args say nothing.
func (s *Service) MaxNumSeqs(simulated bool) int {
	if s.Engine.MaxNumSeqs > 0 || !simulated {
		return s.Engine.MaxNumSeqs
	}
	return engine.DefaultMaxNumSeqs
}

// ManifestError is one problem in a manifest: where (file, and line for
// syntax errors), which object, which field, and what is wrong.
type ManifestError struct {
	File    string
	Line    int    // 0 when unknown
	Object  string // "Service default/llm"; empty before the object is known
	Path    string // field path; empty for whole-document problems
	Message string
}

func (e *ManifestError) Error() string {
	var b strings.Builder
	b.WriteString(e.File)
	if e.Line > 0 {
		fmt.Fprintf(&b, ":%d", e.Line)
	}
	b.WriteString(": ")
	if e.Object != "" {
		b.WriteString(e.Object + ": ")
	}
	if e.Path != "" {
		b.WriteString(e.Path + ": ")
	}
	b.WriteString(e.Message)
	return b.String()
}

// ManifestErrors lists every problem found, one per line.
type ManifestErrors []*ManifestError

func (es ManifestErrors) Error() string {
	lines := make([]string, len(es))
	for i, e := range es {
		lines[i] = e.Error()
	}
	return strings.Join(lines, "\n")
}

// DefaultVocabulary is what annotation values the local runtime accepts:
// the built-in routing profiles, SLO tiers and engine profiles.
func DefaultVocabulary() apis.Vocabulary {
	return apis.Vocabulary{
		RoutingProfiles: router.DefaultConfig().ProfileNames(),
		Tiers:           activator.DefaultTiers().Names(),
		SimProfiles:     engine.BuiltinProfileNames(),
	}
}

// LoadFiles reads Services from files and directories (every .yaml, .yml
// and .json directly inside, as kubectl -f does), each possibly holding
// several YAML documents. Every problem in every file is reported; the
// error is ManifestErrors.
func LoadFiles(paths []string, vocab apis.Vocabulary) ([]*Service, error) {
	var files []string
	var errs ManifestErrors
	for _, p := range paths {
		st, err := os.Stat(p)
		if err != nil {
			errs = append(errs, &ManifestError{File: p, Message: err.Error()})
			continue
		}
		if !st.IsDir() {
			files = append(files, p)
			continue
		}
		ents, err := os.ReadDir(p)
		if err != nil {
			errs = append(errs, &ManifestError{File: p, Message: err.Error()})
			continue
		}
		n := 0
		for _, e := range ents {
			switch strings.ToLower(filepath.Ext(e.Name())) {
			case ".yaml", ".yml", ".json":
				if !e.IsDir() {
					files = append(files, filepath.Join(p, e.Name()))
					n++
				}
			}
		}
		if n == 0 {
			errs = append(errs, &ManifestError{File: p, Message: "directory holds no .yaml, .yml or .json file"})
		}
	}
	var svcs []*Service
	for _, f := range files {
		data, err := os.ReadFile(f)
		if err != nil {
			errs = append(errs, &ManifestError{File: f, Message: err.Error()})
			continue
		}
		got, err := Parse(f, data, vocab)
		var me ManifestErrors
		if errors.As(err, &me) {
			errs = append(errs, me...)
		} else if err != nil {
			errs = append(errs, &ManifestError{File: f, Message: err.Error()})
		}
		svcs = append(svcs, got...)
	}
	errs = append(errs, checkSet(svcs)...)
	if len(errs) > 0 {
		return nil, errs
	}
	if len(svcs) == 0 {
		return nil, ManifestErrors{{File: strings.Join(paths, ", "), Message: "no Service found"}}
	}
	return svcs, nil
}

// checkSet finds conflicts between Services: the same name twice.
func checkSet(svcs []*Service) ManifestErrors {
	var errs ManifestErrors
	seen := map[string]*Service{}
	for _, s := range svcs {
		k := s.Namespace + "/" + s.Name
		if prev, ok := seen[k]; ok {
			errs = append(errs, &ManifestError{File: s.File, Object: s.String(), Path: "metadata.name",
				Message: "defined twice (also in " + prev.File + ")"})
			continue
		}
		seen[k] = s
	}
	return errs
}

// Parse reads the Services of one file's content; name is used in errors.
func Parse(name string, data []byte, vocab apis.Vocabulary) ([]*Service, error) {
	var svcs []*Service
	var errs ManifestErrors
	for _, d := range splitDocuments(data) {
		s, err := parseDocument(name, d, vocab)
		var me ManifestErrors
		switch {
		case errors.As(err, &me):
			errs = append(errs, me...)
		case err != nil:
			errs = append(errs, &ManifestError{File: name, Line: d.line, Message: err.Error()})
		case s != nil:
			svcs = append(svcs, s)
		}
	}
	errs = append(errs, checkSet(svcs)...)
	if len(errs) > 0 {
		return nil, errs
	}
	return svcs, nil
}

type document struct {
	data []byte
	line int // of the document's first line in the file, from 1
}

// splitDocuments cuts a YAML stream at its "---" separators.
func splitDocuments(data []byte) []document {
	var docs []document
	start, line := 1, 1
	var cur bytes.Buffer
	for len(data) > 0 {
		l, rest, _ := bytes.Cut(data, []byte("\n"))
		data = rest
		t := bytes.TrimRight(l, " \t\r")
		if bytes.Equal(t, []byte("---")) || bytes.HasPrefix(t, []byte("--- ")) || bytes.Equal(t, []byte("...")) {
			docs = append(docs, document{data: bytes.Clone(cur.Bytes()), line: start})
			cur.Reset()
			start = line + 1
		} else {
			cur.Write(l)
			cur.WriteByte('\n')
		}
		line++
	}
	return append(docs, document{data: cur.Bytes(), line: start})
}

var yamlLine = regexp.MustCompile(`line (\d+)`)

// syntaxError turns a YAML error into one pointing at the file's line.
func syntaxError(file string, d document, err error) *ManifestError {
	msg := strings.TrimPrefix(err.Error(), "error converting YAML to JSON: ")
	line := d.line
	if m := yamlLine.FindStringSubmatchIndex(msg); m != nil {
		n, _ := strconv.Atoi(msg[m[2]:m[3]])
		line = d.line + n - 1
		msg = strings.TrimSpace(strings.Replace(msg, msg[m[0]:m[1]]+":", "", 1))
		msg = strings.TrimSpace(strings.TrimPrefix(msg, "yaml:"))
	}
	return &ManifestError{File: file, Line: line, Message: "invalid YAML: " + msg}
}

func parseDocument(file string, d document, vocab apis.Vocabulary) (*Service, error) {
	var head struct {
		APIVersion string `json:"apiVersion"`
		Kind       string `json:"kind"`
		Metadata   struct {
			Name      string `json:"name"`
			Namespace string `json:"namespace"`
		} `json:"metadata"`
	}
	var probe any
	if err := yaml.Unmarshal(d.data, &probe); err != nil {
		return nil, ManifestErrors{syntaxError(file, d, err)}
	}
	if probe == nil {
		return nil, nil // an empty document, or only comments
	}
	if _, ok := probe.(map[string]any); !ok {
		return nil, ManifestErrors{{File: file, Line: d.line, Message: fmt.Sprintf("a document must be an object, got %T", probe)}}
	}
	if err := yaml.Unmarshal(d.data, &head); err != nil {
		return nil, ManifestErrors{{File: file, Line: d.line, Message: "invalid object: " + err.Error()}}
	}
	ns := head.Metadata.Namespace
	if ns == "" {
		ns = DefaultNamespace
	}
	obj := head.Kind
	if obj == "" {
		obj = "object"
	}
	if head.Metadata.Name != "" {
		obj += " " + ns + "/" + head.Metadata.Name
	}
	fail := func(path, format string, args ...any) error {
		return ManifestErrors{{File: file, Object: obj, Path: path, Message: fmt.Sprintf(format, args...)}}
	}
	switch {
	case head.APIVersion != servingv1.SchemeGroupVersion.String():
		return nil, fail("apiVersion", "got %q: kn-llmd local runs Knative Services (apiVersion %s, kind Service)",
			head.APIVersion, servingv1.SchemeGroupVersion)
	case head.Kind != "Service":
		return nil, fail("kind", "got %q: kn-llmd local runs Knative Services (apiVersion %s, kind Service)",
			head.Kind, servingv1.SchemeGroupVersion)
	}
	ksvc := &servingv1.Service{}
	if err := yaml.UnmarshalStrict(d.data, ksvc); err != nil {
		if paths := unknownFields(probe, reflect.TypeFor[servingv1.Service](), ""); len(paths) > 0 {
			var errs ManifestErrors
			for _, p := range paths {
				errs = append(errs, &ManifestError{File: file, Object: obj, Path: p, Message: "unknown field"})
			}
			return nil, errs
		}
		msg := strings.TrimPrefix(err.Error(), "error unmarshaling JSON: while decoding JSON: ")
		return nil, fail("", "%s", msg)
	}
	ksvc.Namespace = ns
	ctx := context.Background()
	admission.Default(ctx, ksvc)
	spec, warnings, err := admission.Validate(ctx, ksvc, vocab)
	_ = warnings // Knative's warnings concern cluster features; locally they do not apply.
	var errs ManifestErrors
	if err != nil {
		var fes apis.Errors
		if !errors.As(err, &fes) {
			return nil, fail("", "%v", err)
		}
		for _, fe := range fes {
			errs = append(errs, &ManifestError{File: file, Object: obj, Path: fe.Path, Message: fe.Message})
		}
		return nil, errs
	}
	s, fes := fromKnative(ksvc, spec)
	for _, fe := range fes {
		errs = append(errs, &ManifestError{File: file, Object: obj, Path: fe.Path, Message: fe.Message})
	}
	if len(errs) > 0 {
		return nil, errs
	}
	s.File = file
	return s, nil
}

// fromKnative reads what the runtime needs from a valid, defaulted Service,
// and checks what only the local runtime requires.
func fromKnative(ksvc *servingv1.Service, spec apis.Spec) (*Service, apis.Errors) {
	var errs apis.Errors
	fail := func(path, format string, args ...any) {
		errs = append(errs, &apis.FieldError{Path: path, Message: fmt.Sprintf(format, args...)})
	}
	s := &Service{Namespace: ksvc.Namespace, Name: ksvc.Name, Spec: spec, Object: ksvc}
	s.Revision = ksvc.Spec.Template.Name
	if s.Revision == "" {
		s.Revision = ksvc.Name + "-00001"
	}
	ci := servingContainer(ksvc.Spec.Template.Spec.Containers)
	cpath := fmt.Sprintf("spec.template.spec.containers[%d]", ci)
	c := ksvc.Spec.Template.Spec.Containers[ci]
	s.Image, s.Env = c.Image, c.Env
	fl := parseVLLMArgs(c.Command, c.Args)
	s.Args = fl.rest
	s.ModelPath = fl.model
	served := fl.served
	switch {
	case spec.Model != "":
		s.Model = spec.Model
	case len(served) > 0:
		s.Model = served[0]
	case s.ModelPath != "":
		s.Model = s.ModelPath
	default:
		s.Model = ksvc.Name
	}
	if s.ModelPath == "" {
		s.ModelPath = s.Model
	}
	s.Models = []string{s.Model}
	if len(served) == 0 {
		served = []string{s.ModelPath}
	}
	for _, n := range served {
		if !slices.Contains(s.Models, n) {
			s.Models = append(s.Models, n)
		}
	}
	var err error
	if s.Engine, err = fl.engineArgs(); err != nil {
		fail(cpath+".args", "%v", err)
	} else if s.Engine.MaxNumBatchedTokens == 0 {
		var tierTPOT time.Duration
		if tier, ok := activator.DefaultTiers().Get(orDefault(spec.DefaultTier, apis.DefaultTier)); ok {
			tierTPOT = time.Duration(tier.TPOT)
		}
		if b, err := autoscaler.ChooseStepBudgets(spec, tierTPOT, s.Engine.MaxNumSeqs); err == nil {
			if s.Engine.MaxNumSeqs > 0 {
				// The args' own: nothing to add.
				b.Decode.MaxNumSeqs, b.Prefill.MaxNumSeqs = 0, 0
			}
			s.StepBudget = &b
			s.Engine.MaxNumBatchedTokens = b.Decode.MaxNumBatchedTokens
			s.Engine.PrefillMaxNumBatchedTokens = b.Prefill.MaxNumBatchedTokens
			if b.Decode.MaxNumSeqs > 0 {
				s.Engine.MaxNumSeqs = b.Decode.MaxNumSeqs
			}
		}
	}
	if s.Engine.MaxModelLen > 0 {
		name := spec.SimProfile
		if name == "" {
			name = engine.DefaultProfile
		}
		if p, err := engine.BuiltinProfile(name); err == nil && s.Engine.MaxModelLen > p.Model.MaxModelLen {
			fail(cpath+".args", "--max-model-len %d exceeds the %s profile's maximum of %d", s.Engine.MaxModelLen, name, p.Model.MaxModelLen)
		}
	}
	if !vllmImage(s.Image) {
		fail(cpath+".image", "%q is not a vLLM image: kn-llmd local simulates vLLM (images named like vllm/vllm-openai or llm-d); run other servers with --pod-command", s.Image)
	}
	for i, t := range ksvc.Spec.Traffic {
		if t.RevisionName != "" && t.RevisionName != s.Revision {
			fail(fmt.Sprintf("spec.traffic[%d].revisionName", i),
				"revision %q does not exist: kn-llmd local runs one revision per Service, %s", t.RevisionName, s.Revision)
		}
		if t.Tag != "" && !slices.Contains(s.Tags, t.Tag) {
			s.Tags = append(s.Tags, t.Tag)
		}
	}
	sort.Strings(s.Tags)
	s.Decode, s.Prefill = InitialReplicas(ksvc.Spec.Template.Annotations, spec)
	return s, errs
}

// InitialReplicas is where a revision starts without an autoscaler: decode
// (or single-role) pods from autoscaling.knative.dev/min-scale and
// initial-scale, prefill pods from llm-d.ai/prefill-min-scale. Knative's
// default min-scale is 0 (scale to zero), but a revision starts with
// initial-scale pods (default 1); locally there is nothing yet to scale it
// back down, so an unset min-scale starts one pod and stays there, and only
// an explicit min-scale "0" (with no initial-scale) starts at zero, the first
// request then waking it. Prefill follows the same rule with
// prefill-min-scale. max-scale and prefill-max-scale cap both. A revision
// of the slo.autoscaling.llm-d.ai class starts here too, and its decider
// (see AutoscaleOptions) then scales it, to zero after the grace period when
// min-scale is 0, set or not.
func InitialReplicas(ann map[string]string, spec apis.Spec) (decode, prefill int) {
	start := func(key string, minScale, maxScale, initial int) int {
		n := max(minScale, 1)
		if v, ok := ann[key]; ok && strings.TrimSpace(v) == "0" {
			n = 0
		}
		if initial >= 0 {
			n = max(initial, minScale)
		}
		if maxScale > 0 {
			n = min(n, maxScale)
		}
		return n
	}
	decode = start(apis.MinScaleAnnotation, spec.MinScale, spec.MaxScale, spec.InitialScale)
	if spec.Disaggregated() {
		prefill = start(apis.PrefillMinScaleAnnotation, spec.PrefillMinScale, spec.PrefillMaxScale, -1)
	}
	return decode, prefill
}

// servingContainer is the container that receives traffic: the one that
// declares a port (Knative allows one), else the first.
func servingContainer(cs []corev1.Container) int {
	for i, c := range cs {
		if len(c.Ports) > 0 {
			return i
		}
	}
	return 0
}

// vllmImage reports whether an image runs vLLM: its repository names vllm
// or llm-d (vllm/vllm-openai, ghcr.io/llm-d/llm-d, a private mirror).
func vllmImage(image string) bool {
	repo := strings.ToLower(image)
	if i := strings.IndexByte(repo, '@'); i >= 0 {
		repo = repo[:i]
	}
	if i := strings.LastIndexByte(repo, ':'); i > strings.LastIndexByte(repo, '/') {
		repo = repo[:i]
	}
	if host, rest, ok := strings.Cut(repo, "/"); ok && (strings.ContainsAny(host, ".:") || host == "localhost") {
		repo = rest // a registry host is not the repository
	}
	return strings.Contains(repo, "vllm") || strings.Contains(repo, "llm-d")
}

// vllmFlags are the flags of a vLLM command line the runtime reads.
type vllmFlags struct {
	model  string
	served []string
	values map[string]string
	// rest is the command line without --model, the positional model,
	// --host and --port, which a pod command template supplies itself.
	rest []string
}

// parseVLLMArgs reads `vllm serve [MODEL] --flag value --flag=value ...`
// (or the api_server module's flags). Flags vLLM has but the runtime does
// not read are kept in rest untouched.
func parseVLLMArgs(command, args []string) vllmFlags {
	f := vllmFlags{values: map[string]string{}}
	all := args
	if len(command) == 0 && len(args) > 0 && !strings.HasPrefix(args[0], "-") && args[0] != "serve" {
		f.model = args[0] // the image's entrypoint is `vllm serve`: args start with the model
		all = args[1:]
	} else if len(args) > 0 && args[0] == "serve" {
		all = args[1:]
		if len(all) > 0 && !strings.HasPrefix(all[0], "-") {
			f.model, all = all[0], all[1:]
		}
	}
	if len(command) > 0 {
		// command: [vllm, serve, MODEL?] or [python3, -m, ...]; a model
		// positional in command is taken too.
		for i := 0; i+1 < len(command); i++ {
			if command[i] == "serve" && !strings.HasPrefix(command[i+1], "-") {
				f.model = command[i+1]
			}
		}
	}
	for i := 0; i < len(all); i++ {
		a := all[i]
		if !strings.HasPrefix(a, "--") {
			f.rest = append(f.rest, a)
			continue
		}
		name, inline, hasInline := strings.Cut(a, "=")
		norm := "--" + strings.ReplaceAll(strings.TrimPrefix(name, "--"), "_", "-")
		var vals []string
		next := i + 1
		if hasInline {
			vals = []string{inline}
		} else {
			// One value, or several for --served-model-name (nargs="+").
			for next < len(all) && !strings.HasPrefix(all[next], "--") &&
				(len(vals) == 0 || norm == "--served-model-name") {
				vals = append(vals, all[next])
				next++
			}
		}
		switch norm {
		case "--model", "--host", "--port":
			if norm == "--model" && len(vals) > 0 {
				f.model = vals[0]
			}
			i = next - 1
			continue
		case "--served-model-name":
			for _, v := range vals {
				f.served = append(f.served, strings.FieldsFunc(v, func(r rune) bool { return r == ',' })...)
			}
		default:
			f.values[norm] = strings.Join(vals, " ")
		}
		f.rest = append(f.rest, all[i:next]...)
		i = next - 1
	}
	return f
}

func (f vllmFlags) engineArgs() (EngineArgs, error) {
	var e EngineArgs
	var errs []string
	ints := []struct {
		flag string
		dst  *int
		min  int
	}{
		{"--max-model-len", &e.MaxModelLen, 2},
		{"--max-num-seqs", &e.MaxNumSeqs, 1},
		{"--max-num-batched-tokens", &e.MaxNumBatchedTokens, 1},
		{"--block-size", &e.BlockSize, 1},
		{"--num-gpu-blocks-override", &e.NumGPUBlocksOverride, 1},
	}
	for _, c := range ints {
		v, ok := f.values[c.flag]
		if !ok {
			continue
		}
		n, err := strconv.Atoi(v)
		if err != nil || n < c.min {
			errs = append(errs, fmt.Sprintf("%s %q: must be an integer >= %d", c.flag, v, c.min))
			continue
		}
		*c.dst = n
	}
	if v, ok := f.values["--gpu-memory-utilization"]; ok {
		x, err := strconv.ParseFloat(v, 64)
		if err != nil || !(x > 0 && x <= 1) {
			errs = append(errs, fmt.Sprintf("--gpu-memory-utilization %q: must be in (0, 1]", v))
		} else {
			e.GPUMemoryUtilization = x
		}
	}
	if v, ok := f.values["--scheduling-policy"]; ok {
		if _, err := engine.ParsePolicy(v); err != nil {
			errs = append(errs, fmt.Sprintf("--scheduling-policy %q: must be fcfs or priority", v))
		} else {
			e.SchedulingPolicy = v
		}
	}
	if v, ok := f.values["--seed"]; ok {
		n, err := strconv.ParseUint(v, 10, 64)
		if err != nil {
			errs = append(errs, fmt.Sprintf("--seed %q: must be a non-negative integer", v))
		} else {
			e.Seed = n
		}
	}
	if len(errs) > 0 {
		return e, errors.New(strings.Join(errs, "; "))
	}
	return e, nil
}

var jsonUnmarshaler = reflect.TypeFor[json.Unmarshaler]()

// unknownFields finds the paths of keys in a decoded document that the Go
// type t has no field for (what a strict decoder rejects, with the path it
// does not give).
func unknownFields(v any, t reflect.Type, path string) []string {
	for t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	if reflect.PointerTo(t).Implements(jsonUnmarshaler) {
		return nil // its own format (quantities, int-or-string, times)
	}
	join := func(k string) string {
		if path == "" {
			return k
		}
		return path + "." + k
	}
	var out []string
	switch t.Kind() {
	case reflect.Struct:
		m, ok := v.(map[string]any)
		if !ok {
			return nil
		}
		fields := map[string]reflect.Type{}
		jsonFields(t, fields)
		keys := make([]string, 0, len(m))
		for k := range m {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		for _, k := range keys {
			ft, ok := fields[k]
			if !ok {
				out = append(out, join(k))
				continue
			}
			out = append(out, unknownFields(m[k], ft, join(k))...)
		}
	case reflect.Map:
		m, ok := v.(map[string]any)
		if !ok {
			return nil
		}
		for k, x := range m {
			out = append(out, unknownFields(x, t.Elem(), path+"["+k+"]")...)
		}
		sort.Strings(out)
	case reflect.Slice, reflect.Array:
		xs, ok := v.([]any)
		if !ok {
			return nil
		}
		for i, x := range xs {
			out = append(out, unknownFields(x, t.Elem(), fmt.Sprintf("%s[%d]", path, i))...)
		}
	}
	return out
}

// jsonFields maps a struct's JSON names to field types, inlining embedded
// structs as encoding/json does.
func jsonFields(t reflect.Type, dst map[string]reflect.Type) {
	for i := range t.NumField() {
		f := t.Field(i)
		tag := f.Tag.Get("json")
		name, opts, _ := strings.Cut(tag, ",")
		if name == "-" && opts == "" {
			continue
		}
		ft := f.Type
		for ft.Kind() == reflect.Pointer {
			ft = ft.Elem()
		}
		if (f.Anonymous && name == "") || strings.Contains(opts, "inline") {
			if ft.Kind() == reflect.Struct {
				jsonFields(ft, dst)
				continue
			}
		}
		if !f.IsExported() {
			continue
		}
		if name == "" {
			name = f.Name
		}
		dst[name] = f.Type
	}
}
