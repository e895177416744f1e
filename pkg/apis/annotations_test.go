package apis

import (
	"errors"
	"strings"
	"testing"
	"time"
)

var vocab = Vocabulary{
	RoutingProfiles: []string{"default", "round-robin", "kv-precise"},
	Tiers:           []string{"critical", "standard", "batch"},
	SimProfiles:     []string{"llama-3.1-8b-h100"},
}

const path = "spec.template.metadata.annotations"

func TestParseDefaults(t *testing.T) {
	s, err := Parse(map[string]string{}, path, vocab)
	if err != nil {
		t.Fatal(err)
	}
	if s.Disaggregated() || s.RoutingProfile != "default" || s.DefaultTier != "standard" ||
		s.PDThreshold != DefaultPDThreshold || s.Percentile != 90 || s.AutoscalerMode != AutoscalerAct ||
		!s.AllowsTier("batch") || s.InitialScale != -1 {
		t.Fatalf("defaults: %+v", s)
	}
}

func TestParseFullSpec(t *testing.T) {
	s, err := Parse(map[string]string{
		ModelAnnotation:           "meta-llama/Llama-3.1-8B-Instruct",
		DisaggregationAnnotation:  "prefill-decode",
		RoutingProfileAnnotation:  "kv-precise",
		PDThresholdAnnotation:     "1024",
		SLOTierAnnotation:         "critical",
		SLOTiersAnnotation:        "critical, standard",
		SLOTTFTAnnotation:         "300ms",
		SLOTPOTAnnotation:         "40ms",
		SLOPercentileAnnotation:   "99",
		MinScaleAnnotation:        "2",
		MaxScaleAnnotation:        "8",
		PrefillMinScaleAnnotation: "1",
		PrefillMaxScaleAnnotation: "4",
		AutoscalerModeAnnotation:  "advise",
		SimProfileAnnotation:      "llama-3.1-8b-h100",
		AcceleratorAnnotation:     "H100-SXM-80GB",
		VariantCostAnnotation:     "2.5",
		StepTokenBudgetAnnotation: "2048",
	}, path, vocab)
	if err != nil {
		t.Fatal(err)
	}
	if !s.Disaggregated() || s.PDThreshold != 1024 || s.TTFT != 300*time.Millisecond || s.TPOT != 40*time.Millisecond ||
		s.AllowsTier("batch") || !s.AllowsTier("critical") || s.MinScale != 2 || s.PrefillMaxScale != 4 || s.Percentile != 99 ||
		s.Accelerator != "H100-SXM-80GB" || s.VariantCost != 2.5 || s.StepTokenBudget != 2048 {
		t.Fatalf("spec: %+v", s)
	}
}

func TestParseRejectsWithFieldPaths(t *testing.T) {
	cases := []struct {
		name string
		ann  map[string]string
		want string // the field path that must be named
	}{
		{"typo in key", map[string]string{"llm-d.ai/routing-profil": "x"}, "[llm-d.ai/routing-profil]"},
		{"unknown profile", map[string]string{RoutingProfileAnnotation: "fastest"}, "[llm-d.ai/routing-profile]"},
		{"bad disaggregation", map[string]string{DisaggregationAnnotation: "yes"}, "[llm-d.ai/disaggregation]"},
		{"negative threshold", map[string]string{PDThresholdAnnotation: "-1"}, "[llm-d.ai/pd-threshold-tokens]"},
		{"unknown tier", map[string]string{SLOTierAnnotation: "gold"}, "[llm-d.ai/slo-tier]"},
		{"default tier not allowed", map[string]string{SLOTiersAnnotation: "critical"}, "[llm-d.ai/slo-tier]"},
		{"bad duration", map[string]string{SLOTTFTAnnotation: "fast"}, "[llm-d.ai/slo-ttft]"},
		{"zero duration", map[string]string{SLOTPOTAnnotation: "0s"}, "[llm-d.ai/slo-tpot]"},
		{"percentile 100", map[string]string{SLOPercentileAnnotation: "100"}, "[llm-d.ai/slo-percentile]"},
		{"negative scale", map[string]string{MinScaleAnnotation: "-2"}, "[autoscaling.knative.dev/min-scale]"},
		{"min over max", map[string]string{MinScaleAnnotation: "5", MaxScaleAnnotation: "2"}, "[autoscaling.knative.dev/min-scale]"},
		{"prefill scale without P/D", map[string]string{PrefillMinScaleAnnotation: "1"}, "[llm-d.ai/prefill-min-scale]"},
		{"bad mode", map[string]string{AutoscalerModeAnnotation: "auto"}, "[llm-d.ai/autoscaler-mode]"},
		{"unknown sim profile", map[string]string{SimProfileAnnotation: "gpt-5"}, "[llm-d.ai/sim-profile]"},
		{"batch sink not a URL", map[string]string{BatchSinkAnnotation: "results"}, "[llm-d.ai/batch-sink]"},
		{"negative batch budget", map[string]string{BatchMaxReplicasAnnotation: "-1"}, "[llm-d.ai/batch-max-replicas]"},
		{"batch budget not a number", map[string]string{BatchMaxReplicasAnnotation: "many"}, "[llm-d.ai/batch-max-replicas]"},
		{"batch sink with credentials", map[string]string{BatchSinkAnnotation: "https://user:pw@sink.example.com"}, "[llm-d.ai/batch-sink]"},
		{"empty model", map[string]string{ModelAnnotation: " "}, "[llm-d.ai/model]"},
		{"accelerator with spaces", map[string]string{AcceleratorAnnotation: "H100 80GB"}, "[llm-d.ai/accelerator]"},
		{"zero cost", map[string]string{VariantCostAnnotation: "0"}, "[llm-d.ai/variant-cost]"},
		{"cost not a number", map[string]string{VariantCostAnnotation: "cheap"}, "[llm-d.ai/variant-cost]"},
		{"infinite cost", map[string]string{VariantCostAnnotation: "+Inf"}, "[llm-d.ai/variant-cost]"},
		{"unknown tokenizer", map[string]string{TokenizerAnnotation: "sentencepiece"}, "[llm-d.ai/tokenizer]"},
		{"relative tokenizer dir", map[string]string{TokenizerAnnotation: "native:models/qwen"}, "[llm-d.ai/tokenizer]"},
		{"unclean tokenizer dir", map[string]string{TokenizerAnnotation: "native:/models/../etc"}, "[llm-d.ai/tokenizer]"},
		{"empty tokenizer dir", map[string]string{TokenizerAnnotation: "native:"}, "[llm-d.ai/tokenizer]"},
		{"budget zero", map[string]string{StepTokenBudgetAnnotation: "0"}, "[llm-d.ai/step-token-budget]"},
		{"budget huge", map[string]string{StepTokenBudgetAnnotation: "2097152"}, "[llm-d.ai/step-token-budget]"},
		{"budget word", map[string]string{StepTokenBudgetAnnotation: "Auto"}, "[llm-d.ai/step-token-budget]"},
		{"budget fraction", map[string]string{StepTokenBudgetAnnotation: "1.5k"}, "[llm-d.ai/step-token-budget]"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			_, err := Parse(c.ann, path, vocab)
			if err == nil {
				t.Fatal("accepted")
			}
			if !strings.Contains(err.Error(), path+c.want) {
				t.Fatalf("error %q does not name %s", err, path+c.want)
			}
			var es Errors
			if !errors.As(err, &es) || len(es) == 0 {
				t.Fatalf("not a field error list: %T", err)
			}
		})
	}
}

func TestParseStepTokenBudgetAuto(t *testing.T) {
	for _, v := range []string{"auto", " auto "} {
		s, err := Parse(map[string]string{StepTokenBudgetAnnotation: v}, path, vocab)
		if err != nil || s.StepTokenBudget != 0 {
			t.Fatalf("%q: %v %d", v, err, s.StepTokenBudget)
		}
	}
}

func TestParseReportsEveryProblem(t *testing.T) {
	_, err := Parse(map[string]string{SLOTTFTAnnotation: "x", SLOTPOTAnnotation: "y"}, path, vocab)
	var es Errors
	if !errors.As(err, &es) || len(es) != 2 {
		t.Fatalf("want 2 errors, got %v", err)
	}
}

func TestDefaultIsIdempotentAndRespectsUser(t *testing.T) {
	a := map[string]string{ModelAnnotation: "m"}
	if set := Default(a); len(set) != 2 || a[ClassAnnotation] != AutoscalerClass || a[TargetBurstCapacityAnnotation] != "-1" {
		t.Fatalf("defaulting: %v %v", set, a)
	}
	if set := Default(a); len(set) != 0 {
		t.Fatalf("second defaulting changed %v", set)
	}
	user := map[string]string{ModelAnnotation: "m", ClassAnnotation: "kpa.autoscaling.knative.dev"}
	Default(user)
	if user[ClassAnnotation] != "kpa.autoscaling.knative.dev" {
		t.Fatal("overrode the user's class")
	}
	plain := map[string]string{"foo": "bar"}
	if Default(plain); len(plain) != 1 {
		t.Fatal("defaulted a Service without llm-d annotations")
	}
}

func FuzzParse(f *testing.F) {
	f.Add(SLOTTFTAnnotation, "2s", MinScaleAnnotation, "3")
	f.Add("llm-d.ai/x", "\x00", SLOPercentileAnnotation, "NaN")
	f.Fuzz(func(t *testing.T, k1, v1, k2, v2 string) {
		s, err := Parse(map[string]string{k1: v1, k2: v2}, path, vocab)
		if err != nil {
			return
		}
		if s.MinScale < 0 || s.PDThreshold < 0 || s.StepTokenBudget < 0 || s.StepTokenBudget > MaxStepTokenBudget || s.Percentile <= 0 || s.Percentile >= 100 || (s.MaxScale > 0 && s.MinScale > s.MaxScale) {
			t.Fatalf("accepted an invalid spec: %+v", s)
		}
	})
}

func TestParseTokenizer(t *testing.T) {
	for _, tc := range []struct{ in, mode, dir string }{
		{"auto", TokenizerAuto, ""},
		{"estimate", TokenizerEstimate, ""},
		{"native", TokenizerNative, ""},
		{"native:/models/Qwen3-8B", TokenizerNative, "/models/Qwen3-8B"},
		{"native:s3://models/qwen3-8b?region=eu-west-1", TokenizerNative, "s3://models/qwen3-8b?region=eu-west-1"},
		{"native:gs://models/qwen3", TokenizerNative, "gs://models/qwen3"},
		{"native:azblob://models", TokenizerNative, "azblob://models"},
		{"native:file:///models/Qwen3-8B", TokenizerNative, "file:///models/Qwen3-8B"},
	} {
		mode, dir, err := ParseTokenizer(tc.in)
		if err != nil || mode != tc.mode || dir != tc.dir {
			t.Errorf("ParseTokenizer(%q) = %q, %q, %v; want %q, %q", tc.in, mode, dir, err, tc.mode, tc.dir)
		}
	}
	for in, want := range map[string]string{
		"native:s3:///no-bucket":              "needs a bucket",
		"native:http://models/x":              "unsupported scheme",
		"native:s3://key:secret@b/x":          "credentials",
		"native:file://host/models":           "absolute, clean path",
		"native:file:///models/../x":          "absolute, clean path",
		"native:models/x":                     "absolute, clean path",
		"native:s3://b/x y":                   "not a valid URL",
		"native:" + strings.Repeat("a", 2000): "absolute",
	} {
		if _, _, err := ParseTokenizer(in); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("ParseTokenizer(%q) = %v, want an error with %q", in, err, want)
		}
	}
	s, err := Parse(map[string]string{}, "a", Vocabulary{})
	if err != nil || s.Tokenizer != TokenizerAuto {
		t.Errorf("default tokenizer = %q, %v; want auto", s.Tokenizer, err)
	}
}

func TestParseBatchMaxReplicas(t *testing.T) {
	for _, tc := range []struct {
		ann  map[string]string
		want int
	}{{nil, DefaultBatchMaxReplicas}, {map[string]string{BatchMaxReplicasAnnotation: "0"}, 0}, {map[string]string{BatchMaxReplicasAnnotation: " 4 "}, 4}} {
		s, err := Parse(tc.ann, "annotations", Vocabulary{})
		if err != nil || s.BatchMaxReplicas != tc.want {
			t.Errorf("%v: batch budget %d, %v; want %d", tc.ann, s.BatchMaxReplicas, err, tc.want)
		}
	}
}

func TestParseBatchSink(t *testing.T) {
	s, err := Parse(map[string]string{BatchSinkAnnotation: "http://results.default.svc.cluster.local"}, "annotations", Vocabulary{})
	if err != nil || s.BatchSink != "http://results.default.svc.cluster.local" {
		t.Fatalf("%+v %v", s.BatchSink, err)
	}
}
