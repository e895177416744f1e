package webhook

import (
	"context"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"knative.dev/serving/pkg/apis/config"
	servingv1 "knative.dev/serving/pkg/apis/serving/v1"

	"github.com/llmd-kn/llmd-kn/pkg/apis"
)

// knativeConfig is Knative's built-in configuration with overrides, as a
// cluster's ConfigMaps would give it.
func knativeConfig(t testing.TB, defaults, features map[string]string) *config.Config {
	t.Helper()
	cfg := config.FromContextOrDefaults(context.Background())
	var err error
	if defaults != nil {
		if cfg.Defaults, err = config.NewDefaultsConfigFromMap(defaults); err != nil {
			t.Fatal(err)
		}
	}
	if features != nil {
		if cfg.Features, err = config.NewFeaturesConfigFromMap(features); err != nil {
			t.Fatal(err)
		}
	}
	return cfg
}

var fieldRefOn = map[string]string{"kubernetes.podspec-fieldref": "enabled"}

func template(ann map[string]string, c corev1.Container) *servingv1.RevisionTemplateSpec {
	return &servingv1.RevisionTemplateSpec{
		ObjectMeta: metav1.ObjectMeta{Annotations: ann},
		Spec:       servingv1.RevisionSpec{PodSpec: corev1.PodSpec{Containers: []corev1.Container{c}}},
	}
}

func vllm() corev1.Container {
	return corev1.Container{
		Image: "vllm/vllm-openai:v0.11.0",
		Args:  []string{"meta-llama/Llama-3.1-8B-Instruct", "--port", "8000"},
		Ports: []corev1.ContainerPort{{ContainerPort: 8000}},
	}
}

func TestDefaultTemplateAddsWhatVLLMNeeds(t *testing.T) {
	tmpl := template(map[string]string{apis.DisaggregationAnnotation: apis.DisaggregationPrefillDecode}, vllm())
	warnings := DefaultTemplate(tmpl, knativeConfig(t, map[string]string{"max-revision-timeout-seconds": "7200"}, fieldRefOn))
	if len(warnings) != 0 {
		t.Errorf("warnings: %v", warnings)
	}
	wantAnn := map[string]string{
		apis.DisaggregationAnnotation:           apis.DisaggregationPrefillDecode,
		apis.ClassAnnotation:                    apis.AutoscalerClass,
		apis.TargetBurstCapacityAnnotation:      "-1",
		"serving.knative.dev/progress-deadline": "1800s",
		// The decider's default TPOT (50ms) on the default profile; the
		// prefill pods keep vLLM's default.
		apis.StepTokenBudgetChoiceAnnotation: "1024 prefill=8192: TPOT 50ms: a full 1024-token step takes 36ms on llama-3.1-8b-h100, within 75% of the target (vLLM's default of 8192 takes 373ms)",
	}
	if d := cmp.Diff(wantAnn, tmpl.Annotations); d != "" {
		t.Errorf("annotations (-want +got):\n%s", d)
	}
	if *tmpl.Spec.TimeoutSeconds != 3600 || *tmpl.Spec.ResponseStartTimeoutSeconds != 600 {
		t.Errorf("timeouts %d/%d, want 3600/600", *tmpl.Spec.TimeoutSeconds, *tmpl.Spec.ResponseStartTimeoutSeconds)
	}
	c := tmpl.Spec.Containers[0]
	wantArgs := []string{"meta-llama/Llama-3.1-8B-Instruct", "--port", "8000",
		"--enable-prefix-caching",
		"--scheduling-policy", "priority",
		"--kv-events-config", `{"enable_kv_cache_events":true,"publisher":"zmq","endpoint":"tcp://*:5557","topic":"kv@$(POD_IP)@meta-llama/Llama-3.1-8B-Instruct"}`,
		"--kv-transfer-config", `{"kv_connector":"NixlConnector","kv_role":"kv_both"}`,
		"--max-num-batched-tokens=1024",
	}
	if d := cmp.Diff(wantArgs, c.Args); d != "" {
		t.Errorf("args (-want +got):\n%s", d)
	}
	wantEnv := []corev1.EnvVar{{Name: "POD_IP", ValueFrom: &corev1.EnvVarSource{
		FieldRef: &corev1.ObjectFieldSelector{APIVersion: "v1", FieldPath: "status.podIP"}}}}
	if d := cmp.Diff(wantEnv, c.Env); d != "" {
		t.Errorf("env (-want +got):\n%s", d)
	}
	wantProbe := &corev1.Probe{ProbeHandler: corev1.ProbeHandler{HTTPGet: &corev1.HTTPGetAction{Path: "/health", Port: intstr.FromInt32(8000)}}}
	if d := cmp.Diff(wantProbe, c.ReadinessProbe); d != "" {
		t.Errorf("probe (-want +got):\n%s", d)
	}
}

func TestDefaultTemplateIsIdempotent(t *testing.T) {
	cfgs := map[string]*config.Config{
		"built-in":  knativeConfig(t, nil, nil),
		"fieldref":  knativeConfig(t, nil, fieldRefOn),
		"long-max":  knativeConfig(t, map[string]string{"max-revision-timeout-seconds": "7200"}, fieldRefOn),
		"short-max": knativeConfig(t, map[string]string{"max-revision-timeout-seconds": "120", "revision-timeout-seconds": "60"}, nil),
	}
	shell := vllm()
	shell.Command, shell.Args = []string{"/bin/sh", "-c"}, []string{"exec vllm serve m"}
	two := template(map[string]string{apis.ModelAnnotation: "m"}, vllm())
	two.Spec.Containers = append(two.Spec.Containers, corev1.Container{Name: "sidecar", Image: "busybox"})
	two.Spec.Containers[0], two.Spec.Containers[1] = two.Spec.Containers[1], two.Spec.Containers[0]
	templates := map[string]*servingv1.RevisionTemplateSpec{
		"single":       template(map[string]string{apis.RoutingProfileAnnotation: "kv-precise"}, vllm()),
		"p/d":          template(map[string]string{apis.DisaggregationAnnotation: "prefill-decode"}, vllm()),
		"shell":        template(map[string]string{apis.ModelAnnotation: "m"}, shell),
		"sidecar":      two,
		"no model":     template(map[string]string{apis.SLOTierAnnotation: "batch"}, corev1.Container{Image: "x/y", Command: []string{"serve-it"}}),
		"user values":  template(map[string]string{apis.ModelAnnotation: "m", apis.ClassAnnotation: "kpa.autoscaling.knative.dev"}, corev1.Container{Image: "x/y", Args: []string{"--kv_events_config={}", "--no-enable-prefix-caching"}}),
		"no llm-d key": template(map[string]string{"autoscaling.knative.dev/min-scale": "1"}, vllm()),
	}
	for cn, cfg := range cfgs {
		for tn, tmpl := range templates {
			t.Run(cn+"/"+tn, func(t *testing.T) {
				once := tmpl.DeepCopy()
				DefaultTemplate(once, cfg)
				twice := once.DeepCopy()
				DefaultTemplate(twice, cfg)
				if d := cmp.Diff(once, twice); d != "" {
					t.Errorf("second application changed (-once +twice):\n%s", d)
				}
			})
		}
	}
}

func TestDefaultTemplateRespectsUser(t *testing.T) {
	c := vllm()
	c.Args = append(c.Args, "--scheduling_policy=fcfs", "--no-enable-prefix-caching", "--served-model-name", "m", "--max_num_batched_tokens", "4096",
		"--kv-events-config", `{"enable_kv_cache_events":true,"publisher":"zmq","endpoint":"tcp://*:7777","topic":"mine"}`)
	c.ReadinessProbe = &corev1.Probe{ProbeHandler: corev1.ProbeHandler{TCPSocket: &corev1.TCPSocketAction{}}}
	tmpl := template(map[string]string{
		apis.ModelAnnotation:                    "m",
		apis.ClassAnnotation:                    "kpa.autoscaling.knative.dev",
		apis.TargetBurstCapacityAnnotation:      "200",
		"serving.knative.dev/progress-deadline": "300s",
		apis.SLOTPOTAnnotation:                  "100ms",
	}, c)
	tmpl.Spec.TimeoutSeconds = ptr(int64(120))
	want := tmpl.DeepCopy()
	DefaultTemplate(tmpl, knativeConfig(t, nil, fieldRefOn))
	if d := cmp.Diff(want, tmpl); d != "" {
		t.Errorf("user values changed (-want +got):\n%s", d)
	}
}

func TestDefaultTemplateTimeoutsWithinKnativeMax(t *testing.T) {
	for _, tc := range []struct {
		name        string
		defaults    map[string]string
		timeout     *int64
		wantTimeout int64
		wantStart   *int64
	}{
		{name: "stock Knative caps at 600", wantTimeout: 600},
		{name: "raised max", defaults: map[string]string{"max-revision-timeout-seconds": "3600"}, wantTimeout: 3600, wantStart: ptr(int64(600))},
		{name: "user timeout shorter than 600", timeout: ptr(int64(300)), wantTimeout: 300},
		{name: "cluster default longer", defaults: map[string]string{"max-revision-timeout-seconds": "9000", "revision-timeout-seconds": "7200"}, wantTimeout: 7200, wantStart: ptr(int64(600))},
		{name: "user timeout kept", defaults: map[string]string{"max-revision-timeout-seconds": "3600"}, timeout: ptr(int64(1200)), wantTimeout: 1200, wantStart: ptr(int64(600))},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tmpl := template(map[string]string{apis.ModelAnnotation: "m"}, vllm())
			tmpl.Spec.TimeoutSeconds = tc.timeout
			DefaultTemplate(tmpl, knativeConfig(t, tc.defaults, nil))
			if *tmpl.Spec.TimeoutSeconds != tc.wantTimeout {
				t.Errorf("timeoutSeconds %d, want %d", *tmpl.Spec.TimeoutSeconds, tc.wantTimeout)
			}
			if d := cmp.Diff(tc.wantStart, tmpl.Spec.ResponseStartTimeoutSeconds); d != "" {
				t.Errorf("responseStartTimeoutSeconds (-want +got):\n%s", d)
			}
		})
	}
}

func TestDefaultTemplateWarnings(t *testing.T) {
	shell := vllm()
	shell.Command, shell.Args = []string{"bash", "-lc"}, []string{"vllm serve m"}
	for _, tc := range []struct {
		name     string
		tmpl     *servingv1.RevisionTemplateSpec
		features map[string]string
		want     string
		argsKept bool
	}{
		{name: "downward API disabled", tmpl: template(map[string]string{apis.ModelAnnotation: "m"}, vllm()),
			want: "kubernetes.podspec-fieldref"},
		{name: "no model", tmpl: template(map[string]string{apis.SLOTierAnnotation: "batch"}, corev1.Container{Image: "x/y", Command: []string{"run"}}),
			features: fieldRefOn, want: "set llm-d.ai/model"},
		{name: "shell script", tmpl: template(map[string]string{apis.ModelAnnotation: "m"}, shell),
			features: fieldRefOn, want: `runs a shell script: vLLM flags not added; add them yourself: --enable-prefix-caching`, argsKept: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			before := slices.Clone(tc.tmpl.Spec.Containers[0].Args)
			w := DefaultTemplate(tc.tmpl, knativeConfig(t, nil, tc.features))
			if !strings.Contains(strings.Join(w, "\n"), tc.want) {
				t.Errorf("warnings %q, want one containing %q", w, tc.want)
			}
			c := tc.tmpl.Spec.Containers[0]
			if tc.argsKept && !slices.Equal(before, c.Args) {
				t.Errorf("args changed: %q", c.Args)
			}
			if hasFlag(&c, flagKVEvents) || hasEnv(&c, PodIPEnv) {
				t.Errorf("KV events configured anyway: args %q env %v", c.Args, c.Env)
			}
		})
	}
}

func TestKVEventsTopicFollowsModel(t *testing.T) {
	cfg := knativeConfig(t, nil, fieldRefOn)
	tmpl := template(map[string]string{apis.ModelAnnotation: "old"}, vllm())
	DefaultTemplate(tmpl, cfg)
	tmpl.Annotations[apis.ModelAnnotation] = "new"
	DefaultTemplate(tmpl, cfg)
	v, _ := flagValue(tmpl.Spec.Containers[0].Args, flagKVEvents)
	if v != kvEventsConfig("new") {
		t.Errorf("kv-events-config %s, want topic for the new model", v)
	}
	if n := strings.Count(strings.Join(tmpl.Spec.Containers[0].Args, " "), flagKVEvents); n != 1 {
		t.Errorf("%d --kv-events-config flags", n)
	}
}

func TestServedModel(t *testing.T) {
	for _, tc := range []struct {
		name string
		c    corev1.Container
		ann  map[string]string
		want string
	}{
		{"annotation wins", corev1.Container{Args: []string{"--model", "a"}}, map[string]string{apis.ModelAnnotation: "x"}, "x"},
		{"served name", corev1.Container{Args: []string{"--model", "a", "--served-model-name", "b"}}, nil, "b"},
		{"served name inline", corev1.Container{Args: []string{"--served_model_name=b"}}, nil, "b"},
		{"--model", corev1.Container{Args: []string{"--model=a"}}, nil, "a"},
		{"vllm serve", corev1.Container{Command: []string{"vllm", "serve", "a", "--port", "8000"}}, nil, "a"},
		{"image entrypoint", corev1.Container{Args: []string{"a", "--port", "8000"}}, nil, "a"},
		{"none", corev1.Container{Command: []string{"python", "server.py"}}, nil, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := servedModel(&tc.c, tc.ann); got != tc.want {
				t.Errorf("servedModel = %q, want %q", got, tc.want)
			}
		})
	}
}

func ptr[T any](v T) *T { return &v }

func TestDefaultTemplateServesTheAnnotatedModelName(t *testing.T) {
	tmpl := template(map[string]string{apis.ModelAnnotation: "llama"}, vllm())
	DefaultTemplate(tmpl, knativeConfig(t, nil, fieldRefOn))
	words := tmpl.Spec.Containers[0].Args
	if v, ok := flagValue(words, flagServedModelName); !ok || v != "llama" {
		t.Fatalf("args %q: vLLM would not answer to the name clients use", words)
	}
	before := append([]string(nil), words...)
	DefaultTemplate(tmpl, knativeConfig(t, nil, fieldRefOn))
	if d := cmp.Diff(before, tmpl.Spec.Containers[0].Args); d != "" {
		t.Fatalf("second defaulting changed args:\n%s", d)
	}
	c := vllm()
	c.Args = append(c.Args, "--served-model-name", "other")
	other := template(map[string]string{apis.ModelAnnotation: "llama"}, c)
	if w := DefaultTemplate(other, knativeConfig(t, nil, fieldRefOn)); len(w) == 0 || !strings.Contains(strings.Join(w, " "), "404") {
		t.Fatalf("no warning for a served name that differs from llm-d.ai/model: %v", w)
	}
}

func TestDefaultTemplateStepTokenBudget(t *testing.T) {
	ms := func(n int) time.Duration { return time.Duration(n) * time.Millisecond }
	tiers := DefaultOptions{TierTPOT: func(tier string) time.Duration {
		return map[string]time.Duration{"critical": ms(50), "standard": ms(100)}[tier]
	}}
	for _, tc := range []struct {
		name     string
		ann      map[string]string
		args     []string
		opts     DefaultOptions
		want     []string // the budget flags in the args
		choice   string   // the status annotation's head ("" none)
		noChoice bool
	}{
		{"default tier's TPOT", map[string]string{apis.ModelAnnotation: "m"}, nil, tiers,
			[]string{"--max-num-batched-tokens=2048"}, "2048", false},
		{"critical tier", map[string]string{apis.SLOTierAnnotation: "critical"}, nil, tiers,
			[]string{"--max-num-batched-tokens=1024"}, "1024", false},
		{"slo-tpot beats the tier", map[string]string{apis.SLOTPOTAnnotation: "200ms"}, nil, tiers,
			[]string{"--max-num-batched-tokens=3840"}, "3840", false},
		{"no tiers: decider default", map[string]string{apis.SLOTPOTAnnotation: "50ms", apis.SimProfileAnnotation: "qwen3-32b-2xh100"}, nil, DefaultOptions{},
			[]string{"--max-num-batched-tokens=512"}, "512", false},
		{"A100 profile", map[string]string{apis.SimProfileAnnotation: "llama-3.1-8b-a100"}, nil, tiers,
			[]string{"--max-num-batched-tokens=512"}, "512", false},
		{"70B", map[string]string{apis.SimProfileAnnotation: "llama-3.1-70b-4xh100", apis.SLOTPOTAnnotation: "200ms"}, nil, tiers,
			[]string{"--max-num-batched-tokens=1792"}, "1792", false},
		{"prefill-decode", map[string]string{apis.DisaggregationAnnotation: apis.DisaggregationPrefillDecode}, nil, tiers,
			[]string{"--max-num-batched-tokens=2048"}, "2048 prefill=8192", false},
		{"annotation N", map[string]string{apis.StepTokenBudgetAnnotation: "4096"}, nil, tiers,
			[]string{"--max-num-batched-tokens=4096"}, "4096", false},
		{"annotation auto", map[string]string{apis.StepTokenBudgetAnnotation: "auto"}, nil, tiers,
			[]string{"--max-num-batched-tokens=2048"}, "2048", false},
		{"user flag wins over auto", map[string]string{apis.ModelAnnotation: "m"}, []string{"--max-num-batched-tokens", "16384"}, tiers,
			[]string{"--max-num-batched-tokens", "16384"}, "", true},
		{"user flag wins over N", map[string]string{apis.StepTokenBudgetAnnotation: "1024"}, []string{"--max_num_batched_tokens=512"}, tiers,
			[]string{"--max_num_batched_tokens=512"}, "", true},
		{"invalid annotation: left to validation", map[string]string{apis.StepTokenBudgetAnnotation: "0"}, nil, tiers,
			nil, "", true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := vllm()
			c.Args = append(c.Args, tc.args...)
			tmpl := template(tc.ann, c)
			cfg := knativeConfig(t, nil, fieldRefOn)
			DefaultTemplateWith(tmpl, cfg, tc.opts)
			var got []string
			args := tmpl.Spec.Containers[0].Args
			for i, a := range args {
				if strings.Contains(strings.ReplaceAll(a, "_", "-"), "--max-num-batched-tokens") {
					got = append(got, a)
					if !strings.Contains(a, "=") {
						got = append(got, args[i+1])
					}
				}
			}
			if d := cmp.Diff(tc.want, got); d != "" {
				t.Errorf("budget flags (-want +got):\n%s", d)
			}
			choice, ok := tmpl.Annotations[apis.StepTokenBudgetChoiceAnnotation]
			if tc.noChoice != !ok || (ok && !strings.HasPrefix(choice, tc.choice+": ")) {
				t.Errorf("choice %q (present %v), want head %q", choice, ok, tc.choice)
			}
			// Idempotent, and following a new target when the webhook
			// owns the flag.
			again := tmpl.DeepCopy()
			DefaultTemplateWith(again, cfg, tc.opts)
			if d := cmp.Diff(tmpl, again); d != "" {
				t.Errorf("second defaulting changed (-first +second):\n%s", d)
			}
		})
	}
}

func TestDefaultTemplateStepTokenBudgetFollowsTarget(t *testing.T) {
	cfg := knativeConfig(t, nil, fieldRefOn)
	tmpl := template(map[string]string{apis.SLOTPOTAnnotation: "100ms"}, vllm())
	DefaultTemplate(tmpl, cfg)
	tmpl.Annotations[apis.SLOTPOTAnnotation] = "50ms" // kn service update
	DefaultTemplate(tmpl, cfg)
	args := tmpl.Spec.Containers[0].Args
	if !slices.Contains(args, "--max-num-batched-tokens=1024") || slices.Contains(args, "--max-num-batched-tokens=2048") {
		t.Fatalf("args %v: the webhook's own budget did not follow the new TPOT", args)
	}
	if !strings.HasPrefix(tmpl.Annotations[apis.StepTokenBudgetChoiceAnnotation], "1024: ") {
		t.Fatalf("choice %q", tmpl.Annotations[apis.StepTokenBudgetChoiceAnnotation])
	}
	// The user edits the flag: theirs from then on, and no choice shown.
	for i, a := range tmpl.Spec.Containers[0].Args {
		if a == "--max-num-batched-tokens=1024" {
			tmpl.Spec.Containers[0].Args[i] = "--max-num-batched-tokens=3000"
		}
	}
	DefaultTemplate(tmpl, cfg)
	if !slices.Contains(tmpl.Spec.Containers[0].Args, "--max-num-batched-tokens=3000") {
		t.Fatalf("user's value changed: %v", tmpl.Spec.Containers[0].Args)
	}
	if v, ok := tmpl.Annotations[apis.StepTokenBudgetChoiceAnnotation]; ok {
		t.Fatalf("choice %q kept for a user's flag", v)
	}
}
