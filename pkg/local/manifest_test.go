package local

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"github.com/llmd-kn/llmd-kn/pkg/apis"
	"github.com/llmd-kn/llmd-kn/pkg/engine"
)

func TestQuickstartSampleIsTheEmbeddedOne(t *testing.T) {
	sample, err := os.ReadFile("../../config/samples/quickstart.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(sample, QuickstartYAML) {
		t.Fatal("config/samples/quickstart.yaml differs from pkg/local/quickstart.yaml; copy the canonical one: cp pkg/local/quickstart.yaml config/samples/")
	}
}

func TestQuickstart(t *testing.T) {
	svcs, err := Quickstart(DefaultVocabulary())
	if err != nil {
		t.Fatal(err)
	}
	if len(svcs) != 1 {
		t.Fatalf("%d services", len(svcs))
	}
	s := svcs[0]
	if s.String() != "Service default/llm" || s.Revision != "llm-00001" {
		t.Fatalf("%s revision %s", s, s.Revision)
	}
	if s.Model != "meta-llama/Llama-3.1-8B-Instruct" || s.ModelPath != s.Model {
		t.Fatalf("model %q path %q", s.Model, s.ModelPath)
	}
	if !s.Spec.Disaggregated() || s.Spec.RoutingProfile != "default" || s.Decode != 2 || s.Prefill != 1 {
		t.Fatalf("spec %+v decode %d prefill %d", s.Spec, s.Decode, s.Prefill)
	}
	if strings.Contains(strings.Split(s.Image, "/")[0], ".") {
		t.Fatalf("image %q names a registry host", s.Image)
	}
	if s.Engine.MaxModelLen != 32768 {
		t.Fatalf("engine args %+v", s.Engine)
	}
	if got := strings.Join(s.Args, " "); got != "--served-model-name meta-llama/Llama-3.1-8B-Instruct --max-model-len 32768 --scheduling-policy priority" {
		t.Fatalf("pod args %q", got)
	}
	if s.Object.Spec.Template.Annotations[apis.ClassAnnotation] != apis.AutoscalerClass {
		t.Fatalf("not defaulted: %v", s.Object.Spec.Template.Annotations)
	}
}

const base = `apiVersion: serving.knative.dev/v1
kind: Service
metadata:
  name: llm
spec:
  template:
    metadata:
      annotations:
        ANNOTATIONS
    spec:
      containers:
      - image: vllm/vllm-openai:v0.11.0
        args: ["--model", "org/m"]
`

func manifest(annotations string) string {
	if annotations == "" {
		annotations = "{}"
		return strings.Replace(base, "      annotations:\n        ANNOTATIONS\n", "      annotations: {}\n", 1)
	}
	return strings.Replace(base, "ANNOTATIONS", annotations, 1)
}

// TestInvalidManifests checks that each problem names the file, the object
// and the field path, in one line.
func TestInvalidManifests(t *testing.T) {
	tests := []struct {
		name, yaml string
		want       string
	}{
		{"bad YAML", "apiVersion: serving.knative.dev/v1\nkind: Service\nmetadata:\n  name: llm\n   bad: indent\n",
			"svc.yaml:5: invalid YAML: "},
		{"bad YAML in a later document", manifest("") + "---\nkind: [\n",
			"svc.yaml:14: invalid YAML: did not find expected node content"},
		{"unknown annotation value", manifest(`llm-d.ai/disaggregation: sometimes`),
			`svc.yaml: Service default/llm: spec.template.metadata.annotations[llm-d.ai/disaggregation]: invalid value "sometimes": must be one of none, prefill-decode`},
		{"unknown llm-d annotation", manifest(`llm-d.ai/routing: default`),
			`svc.yaml: Service default/llm: spec.template.metadata.annotations[llm-d.ai/routing]: unknown llm-d annotation`},
		{"negative scale", manifest(`autoscaling.knative.dev/min-scale: "-2"`),
			`svc.yaml: Service default/llm: spec.template.metadata.annotations[autoscaling.knative.dev/min-scale]: invalid value "-2": must be an integer >= 0`},
		{"negative prefill scale", manifest("llm-d.ai/disaggregation: prefill-decode\n        llm-d.ai/prefill-min-scale: \"-1\""),
			`spec.template.metadata.annotations[llm-d.ai/prefill-min-scale]: invalid value "-1"`},
		{"unknown routing profile", manifest(`llm-d.ai/routing-profile: fastest`),
			`svc.yaml: Service default/llm: spec.template.metadata.annotations[llm-d.ai/routing-profile]: invalid value "fastest": must be one of `},
		{"unknown sim profile", manifest(`llm-d.ai/sim-profile: gpt-9`),
			`spec.template.metadata.annotations[llm-d.ai/sim-profile]: unknown engine profile "gpt-9"`},
		{"wrong apiVersion", strings.Replace(manifest(""), "serving.knative.dev/v1", "v1", 1),
			`svc.yaml: Service default/llm: apiVersion: got "v1": kn-llmd local runs Knative Services`},
		{"wrong kind", strings.Replace(manifest(""), "kind: Service", "kind: Deployment", 1),
			`svc.yaml: Deployment default/llm: kind: got "Deployment"`},
		{"unknown field", strings.Replace(manifest(""), "  template:", "  replicas: 3\n  template:", 1),
			`svc.yaml: Service default/llm: spec.replicas: unknown field`},
		{"unknown field deep inside", strings.Replace(manifest(""), `args: ["--model", "org/m"]`, `argz: ["--model", "org/m"]`, 1),
			`svc.yaml: Service default/llm: spec.template.spec.containers[0].argz: unknown field`},
		{"knative validation", strings.Replace(manifest(""), "      - image: vllm/vllm-openai:v0.11.0\n", "      - image: \"\"\n", 1),
			`svc.yaml: Service default/llm: spec.template.spec.containers[0].image: missing field(s)`},
		{"not a vLLM image", strings.Replace(manifest(""), "vllm/vllm-openai:v0.11.0", "nginx:1.27", 1),
			`svc.yaml: Service default/llm: spec.template.spec.containers[0].image: "nginx:1.27" is not a vLLM image`},
		{"bad vLLM arg", strings.Replace(manifest(""), `["--model", "org/m"]`, `["--model", "org/m", "--max-num-seqs", "0"]`, 1),
			`spec.template.spec.containers[0].args: --max-num-seqs "0": must be an integer >= 1`},
		{"context too long for the profile", strings.Replace(manifest(""), `["--model", "org/m"]`, `["--model", "org/m", "--max-model-len", "1000000"]`, 1),
			`spec.template.spec.containers[0].args: --max-model-len 1000000 exceeds the llama-3.1-8b-h100 profile's maximum`},
		{"traffic to a revision that does not exist", manifest("") + "  traffic:\n  - revisionName: llm-00002\n    percent: 100\n",
			`spec.traffic[0].revisionName: revision "llm-00002" does not exist`},
		{"same Service twice", manifest("") + "---\n" + manifest(""),
			`svc.yaml: Service default/llm: metadata.name: defined twice`},
		{"not an object", "- a\n- b\n", "svc.yaml:1: a document must be an object"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			svcs, err := Parse("svc.yaml", []byte(tc.yaml), DefaultVocabulary())
			if err == nil {
				t.Fatalf("accepted: %+v", svcs[0])
			}
			var me ManifestErrors
			if !errors.As(err, &me) {
				t.Fatalf("error %T, want ManifestErrors", err)
			}
			if !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("error:\n%v\nwant it to contain:\n%s", err, tc.want)
			}
		})
	}
}

func TestAllProblemsReported(t *testing.T) {
	_, err := Parse("svc.yaml", []byte(manifest("llm-d.ai/routing-profile: fastest\n        autoscaling.knative.dev/max-scale: \"-1\"")), DefaultVocabulary())
	var me ManifestErrors
	if !errors.As(err, &me) || len(me) != 2 {
		t.Fatalf("want 2 errors, got %v", err)
	}
}

func TestModelNameAndRevision(t *testing.T) {
	tests := []struct {
		name, annotations, args string
		tmplName                string
		wantModel, wantPath     string
		wantRev                 string
		wantModels              []string
	}{
		{name: "annotation wins", annotations: "llm-d.ai/model: chat", args: `["--model", "org/m", "--served-model-name", "m1"]`,
			wantModel: "chat", wantPath: "org/m", wantRev: "llm-00001", wantModels: []string{"chat", "m1"}},
		{name: "served name", args: `["--model=org/m", "--served-model-name", "m1", "m2", "--port", "9000"]`,
			wantModel: "m1", wantPath: "org/m", wantRev: "llm-00001", wantModels: []string{"m1", "m2"}},
		{name: "model arg", args: `["--model", "org/m", "--max-model-len", "4096"]`,
			wantModel: "org/m", wantPath: "org/m", wantRev: "llm-00001", wantModels: []string{"org/m"}},
		{name: "positional model (vllm serve entrypoint)", args: `["org/p", "--enable-prefix-caching"]`,
			wantModel: "org/p", wantPath: "org/p", wantRev: "llm-00001", wantModels: []string{"org/p"}},
		{name: "service name", args: `[]`, tmplName: "llm-v2",
			wantModel: "llm", wantPath: "llm", wantRev: "llm-v2", wantModels: []string{"llm"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			y := manifest(tc.annotations)
			y = strings.Replace(y, `["--model", "org/m"]`, tc.args, 1)
			if tc.tmplName != "" {
				y = strings.Replace(y, "    metadata:\n", "    metadata:\n      name: "+tc.tmplName+"\n", 1)
			}
			svcs, err := Parse("svc.yaml", []byte(y), DefaultVocabulary())
			if err != nil {
				t.Fatal(err)
			}
			s := svcs[0]
			if s.Model != tc.wantModel || s.ModelPath != tc.wantPath || s.Revision != tc.wantRev || !reflect.DeepEqual(s.Models, tc.wantModels) {
				t.Fatalf("model %q path %q revision %q models %q", s.Model, s.ModelPath, s.Revision, s.Models)
			}
			for _, a := range s.Args {
				if a == "--model" || a == "--port" || a == "9000" || strings.HasPrefix(a, "--model=") || a == "org/p" {
					t.Fatalf("pod args keep %q: %q", a, s.Args)
				}
			}
		})
	}
}

func TestNamespaceTagsAndTraffic(t *testing.T) {
	y := strings.Replace(manifest(""), "  name: llm\n", "  name: llm\n  namespace: team-a\n", 1) +
		"  traffic:\n  - latestRevision: true\n    percent: 100\n  - revisionName: llm-00001\n    tag: critical\n  - latestRevision: true\n    tag: canary\n"
	svcs, err := Parse("svc.yaml", []byte(y), DefaultVocabulary())
	if err != nil {
		t.Fatal(err)
	}
	s := svcs[0]
	if s.Namespace != "team-a" || s.Key().String() != "team-a/llm-00001" {
		t.Fatalf("key %s", s.Key())
	}
	if !reflect.DeepEqual(s.Tags, []string{"canary", "critical"}) {
		t.Fatalf("tags %q", s.Tags)
	}
}

func TestInitialReplicas(t *testing.T) {
	tests := []struct {
		ann             string
		decode, prefill int
	}{
		{"{}", 1, 0},
		{`autoscaling.knative.dev/min-scale: "3"`, 3, 0},
		{`autoscaling.knative.dev/min-scale: "0"`, 0, 0},
		{"autoscaling.knative.dev/min-scale: \"0\"\n        autoscaling.knative.dev/initial-scale: \"2\"", 2, 0},
		{"autoscaling.knative.dev/min-scale: \"4\"\n        autoscaling.knative.dev/max-scale: \"2\"", 0, 0}, // invalid: min > max
		{"autoscaling.knative.dev/max-scale: \"1\"\n        autoscaling.knative.dev/initial-scale: \"3\"", 1, 0},
		{"llm-d.ai/disaggregation: prefill-decode", 1, 1},
		{"llm-d.ai/disaggregation: prefill-decode\n        llm-d.ai/prefill-min-scale: \"0\"", 1, 0},
		{"llm-d.ai/disaggregation: prefill-decode\n        llm-d.ai/prefill-min-scale: \"3\"\n        llm-d.ai/prefill-max-scale: \"2\"", 0, 0}, // invalid
		{"llm-d.ai/disaggregation: prefill-decode\n        llm-d.ai/prefill-min-scale: \"2\"", 1, 2},
	}
	for _, tc := range tests {
		t.Run(tc.ann, func(t *testing.T) {
			svcs, err := Parse("svc.yaml", []byte(manifest(tc.ann)), DefaultVocabulary())
			if tc.decode == 0 && tc.prefill == 0 && strings.Contains(tc.ann, "max-scale") {
				if err == nil {
					t.Fatal("min above max accepted")
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if s := svcs[0]; s.Decode != tc.decode || s.Prefill != tc.prefill {
				t.Fatalf("decode %d prefill %d, want %d %d", s.Decode, s.Prefill, tc.decode, tc.prefill)
			}
		})
	}
}

func TestLoadFilesAndDirectories(t *testing.T) {
	dir := t.TempDir()
	two := strings.Replace(manifest(""), "name: llm", "name: a", 1) + "---\n# just a comment\n---\n" +
		strings.Replace(manifest(""), "name: llm", "name: b", 1)
	if err := os.WriteFile(filepath.Join(dir, "two.yaml"), []byte(two), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "notes.txt"), []byte("not a manifest"), 0o644); err != nil {
		t.Fatal(err)
	}
	one := filepath.Join(t.TempDir(), "one.yml")
	if err := os.WriteFile(one, []byte(strings.Replace(manifest(""), "name: llm", "name: c", 1)), 0o644); err != nil {
		t.Fatal(err)
	}
	svcs, err := LoadFiles([]string{dir, one}, DefaultVocabulary())
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, s := range svcs {
		names = append(names, s.Name)
	}
	if !reflect.DeepEqual(names, []string{"a", "b", "c"}) {
		t.Fatalf("services %q", names)
	}
	// The same Service in two files, a missing file and an empty directory.
	dup := filepath.Join(t.TempDir(), "dup.yaml")
	if err := os.WriteFile(dup, []byte(strings.Replace(manifest(""), "name: llm", "name: c", 1)), 0o644); err != nil {
		t.Fatal(err)
	}
	_, err = LoadFiles([]string{one, dup, "/no/such.yaml", t.TempDir()}, DefaultVocabulary())
	for _, want := range []string{"dup.yaml: Service default/c: metadata.name: defined twice (also in " + one + ")",
		"/no/such.yaml: ", "holds no .yaml"} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Fatalf("error %v lacks %q", err, want)
		}
	}
}

func TestParseVLLMArgs(t *testing.T) {
	f := parseVLLMArgs([]string{"vllm", "serve", "org/m"}, []string{"--max_num_seqs", "8", "--enforce-eager", "--gpu-memory-utilization=0.5", "--host", "0.0.0.0", "--seed", "7"})
	if f.model != "org/m" || f.values["--max-num-seqs"] != "8" || f.values["--gpu-memory-utilization"] != "0.5" {
		t.Fatalf("%+v", f)
	}
	e, err := f.engineArgs()
	if err != nil || e.MaxNumSeqs != 8 || e.GPUMemoryUtilization != 0.5 || e.Seed != 7 {
		t.Fatalf("%+v %v", e, err)
	}
	if got := strings.Join(f.rest, " "); got != "--max_num_seqs 8 --enforce-eager --gpu-memory-utilization=0.5 --seed 7" {
		t.Fatalf("rest %q", got)
	}
}

func TestVLLMImage(t *testing.T) {
	for img, want := range map[string]bool{
		"vllm/vllm-openai:v0.11.0":            true,
		"vllm/vllm-openai@sha256:abc":         true,
		"registry.local:5000/mirror/vllm:1.0": true,
		"ghcr.io/llm-d/llm-d:v0.2.0":          true,
		"nginx:1.27":                          false,
		"registry.vllm.local:5000/app:1":      false, // the host is not the repository
	} {
		if got := vllmImage(img); got != want {
			t.Errorf("vllmImage(%q) = %v", img, got)
		}
	}
}

func TestPriorityScheduling(t *testing.T) {
	for args, want := range map[string][2]bool{ // simulated, process
		`["--model", "org/m"]`:                                   {true, false},
		`["--model", "org/m", "--scheduling-policy", "fcfs"]`:    {false, false},
		`["--model", "org/m", "--scheduling-policy=priority"]`:   {true, true},
		`["--model", "org/m", "--scheduling-policy", "fastest"]`: {false, false}, // rejected
	} {
		svcs, err := Parse("svc.yaml", []byte(strings.Replace(manifest(""), `["--model", "org/m"]`, args, 1)), DefaultVocabulary())
		if strings.Contains(args, "fastest") {
			if err == nil || !strings.Contains(err.Error(), `--scheduling-policy "fastest": must be fcfs or priority`) {
				t.Errorf("%s: %v", args, err)
			}
			continue
		}
		if err != nil {
			t.Fatal(err)
		}
		if got := [2]bool{svcs[0].PriorityScheduling(true), svcs[0].PriorityScheduling(false)}; got != want {
			t.Errorf("%s: priority scheduling (simulated, process) = %v, want %v", args, got, want)
		}
	}
}

// The activator counts a pod's places from the args' --max-num-seqs, else
// for simulated pods from the engine's default; real processes whose args
// say nothing are learned from their metrics (0).
func TestServiceMaxNumSeqs(t *testing.T) {
	s := &Service{}
	if got := s.MaxNumSeqs(true); got != engine.DefaultMaxNumSeqs {
		t.Errorf("simulated, no args: %d, want %d", got, engine.DefaultMaxNumSeqs)
	}
	if got := s.MaxNumSeqs(false); got != 0 {
		t.Errorf("process, no args: %d, want 0", got)
	}
	s.Engine.MaxNumSeqs = 8
	if got, got2 := s.MaxNumSeqs(true), s.MaxNumSeqs(false); got != 8 || got2 != 8 {
		t.Errorf("args 8: %d, %d", got, got2)
	}
}
