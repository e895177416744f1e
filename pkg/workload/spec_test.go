package workload

import (
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"sigs.k8s.io/yaml"
)

func TestParseSpec(t *testing.T) {
	tests := []struct {
		name string
		yaml string
		want Spec
	}{
		{
			name: "mooncake replay",
			yaml: "kind: mooncake\npath: trace.jsonl\nspeedup: 2\nmaxDuration: 90s\nmaxRequests: 100\n",
			want: Spec{Kind: KindMooncake, Path: "trace.jsonl", Speedup: 2, MaxDuration: Duration{90 * time.Second}, MaxRequests: 100},
		},
		{
			name: "azure with a system prompt at a Poisson rate",
			yaml: "kind: azure\npath: a.csv\nseed: -3\nazure: {systemPromptLen: 500}\narrival: {kind: poisson, rate: 2.5}\n",
			want: Spec{Kind: KindAzure, Path: "a.csv", Seed: -3, Azure: &AzureConfig{SystemPromptLen: 500}, Arrival: Arrival{Kind: ArrivalPoisson, Rate: 2.5}},
		},
		{
			name: "ladder steps",
			yaml: "kind: random\nrandom: {numPrompts: 10, rangeRatio: 0.25}\narrival:\n  kind: ladder\n  steps:\n  - {rate: 1, duration: 1m}\n  - {rate: 0, duration: 500ms}\n",
			want: Spec{Kind: KindRandom, Random: &RandomConfig{NumPrompts: 10, RangeRatio: 0.25}, Arrival: Arrival{Kind: ArrivalLadder, Steps: []Step{
				{Rate: 1, Duration: Duration{time.Minute}}, {Rate: 0, Duration: Duration{500 * time.Millisecond}},
			}}},
		},
		{
			name: "JSON is YAML",
			yaml: `{"kind": "prefix-repetition", "prefixRepetition": {"numPrefixes": 2}, "arrival": {"kind": "constant", "rate": 1}}`,
			want: Spec{Kind: KindPrefixRepetition, PrefixRepetition: &PrefixRepetitionConfig{NumPrefixes: 2}, Arrival: Arrival{Kind: ArrivalConstant, Rate: 1}},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := ParseSpec([]byte(tc.yaml))
			if err != nil {
				t.Fatalf("ParseSpec: %v", err)
			}
			if !reflect.DeepEqual(got, tc.want) {
				t.Errorf("spec = %+v, want %+v", got, tc.want)
			}
		})
	}
}

func TestSpecRoundTrip(t *testing.T) {
	specs := []Spec{
		{Kind: KindMooncake, Path: "m.jsonl", Speedup: 2, MaxDuration: Duration{5 * time.Minute}},
		{Kind: KindSharedPrefix, Seed: 4, SharedPrefix: &SharedPrefixConfig{Groups: 3, Order: "random"}, Arrival: Arrival{Kind: ArrivalLadder, Steps: LLMDLadder()}},
		{Kind: KindAzure, Path: "a.csv", Azure: &AzureConfig{SystemPromptLen: 100}, Arrival: Arrival{Kind: ArrivalPoisson, Rate: 3}, RateScale: 2},
	}
	for _, s := range specs {
		y, err := yaml.Marshal(s)
		if err != nil {
			t.Fatal(err)
		}
		got, err := ParseSpec(y)
		if err != nil || !reflect.DeepEqual(got, s) {
			t.Errorf("spec %+v written as\n%s\nreads back as %+v, %v", s, y, got, err)
		}
	}
}

func TestSpecErrorsNameTheField(t *testing.T) {
	tests := []struct {
		name string
		yaml string
		want []string // every FieldError, as "path: message" prefixes
	}{
		{"no kind", "path: x", []string{"kind: required"}},
		{"unknown kind", "kind: sharegpt", []string{`kind: must be one of mooncake, azure, shared-prefix, prefix-repetition, random, got "sharegpt"`}},
		{"unknown top-level field", "kind: mooncake\npath: x\nspeed: 2", []string{"speed: unknown field"}},
		{"unknown nested field", "kind: shared-prefix\nsharedPrefix: {groups: 2, group_size: 3}\narrival: {kind: ladder, preset: llm-d}", []string{"sharedPrefix.group_size: unknown field"}},
		{"unknown field in a list", "kind: random\narrival: {kind: ladder, steps: [{rate: 1, duration: 1s}, {rate: 2, time: 1s}]}",
			[]string{"arrival.steps[1].time: unknown field"}},
		{"field in another case", "kind: mooncake\nPath: x", []string{"Path: unknown field"}},
		{"bad duration", "kind: random\narrival: {kind: ladder, steps: [{rate: 1, duration: 10}]}", []string{`arrival.steps[0].duration: want a duration such as "90s"`}},
		{"wrong types", "kind: random\nmaxRequests: 1.5\nspeedup: fast\nrandom: {inputLen: [1]}\narrival: {kind: poisson, rate: 1}",
			[]string{"maxRequests: want an integer, got 1.5", `random.inputLen: want an integer, got [1]`, `speedup: want a number, got "fast"`}},
		{"null field", "kind: random\narrival: {kind: poisson, rate: }", []string{"arrival.rate: must not be null"}},
		{"duplicate key", "kind: random\nkind: azure", []string{`key "kind" already set`}},
		{"trace without path", "kind: azure", []string{"path: required for kind azure"}},
		{"generator with path", "kind: random\npath: x\narrival: {kind: poisson, rate: 1}", []string{"path: only for kinds mooncake and azure"}},
		{"block of another kind", "kind: mooncake\npath: x\nsharedPrefix: {groups: 1}", []string{"sharedPrefix: only for kind shared-prefix"}},
		{"generator values", "kind: shared-prefix\nsharedPrefix: {groups: -1, order: sorted}\narrival: {kind: ladder, preset: llm-d}",
			[]string{"sharedPrefix.groups: must be positive", `sharedPrefix.order: must be "shuffle" or "random"`}},
		{"prefix repetition too few prompts", "kind: prefix-repetition\nprefixRepetition: {numPrompts: 5, numPrefixes: 10}\narrival: {kind: poisson, rate: 1}",
			[]string{"prefixRepetition.numPrompts: must be at least numPrefixes (10), got 5"}},
		{"random could be empty", "kind: random\nrandom: {inputLen: 1, rangeRatio: 0.5}\narrival: {kind: poisson, rate: 1}", []string{"random.inputLen: with rangeRatio 0.5"}},
		{"generator needs an arrival", "kind: random", []string{"arrival.kind: required"}},
		{"trace arrival for a generator", "kind: random\narrival: {kind: trace}", []string{"arrival.kind: trace needs a dataset with timestamps"}},
		{"rate on a ladder", "kind: random\narrival: {kind: ladder, rate: 3, preset: llm-d}", []string{"arrival.rate: only for poisson and constant"}},
		{"steps and preset", "kind: random\narrival: {kind: ladder, preset: llm-d, steps: [{rate: 1, duration: 1s}]}", []string{"arrival.steps: give steps or preset, not both"}},
		{"unknown preset", "kind: random\narrival: {kind: ladder, preset: vllm}", []string{`arrival.preset: unknown ladder "vllm"`}},
		{"bad steps", "kind: random\narrival: {kind: ladder, steps: [{rate: -1, duration: 1s}, {rate: 1, duration: 0s}]}",
			[]string{"arrival.steps[0].rate: must be in [0, 1e+07]", "arrival.steps[1].duration: must be positive"}},
		{"steps on poisson", "kind: random\narrival: {kind: poisson, rate: 1, steps: [{rate: 1, duration: 1s}]}", []string{"arrival.steps: only for ladder arrivals"}},
		{"rate scale on a trace", "kind: mooncake\npath: x\nrateScale: 2", []string{"rateScale: does not apply to trace timestamps"}},
		{"negative limits", "kind: mooncake\npath: x\nmaxRequests: -1\nmaxDuration: -1s\nspeedup: -2", []string{
			"maxDuration: must not be negative", "maxRequests: must not be negative", "speedup: must be in (0, 1e6]"}},
		{"endless shared prefix", "kind: shared-prefix\narrival: {kind: poisson, rate: 3}", []string{"the workload never ends"}},
		{"not an object", "- kind: random", []string{"want an object"}},
		{"empty document", "", []string{"empty document"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := ParseSpec([]byte(tc.yaml))
			if err == nil {
				t.Fatal("ParseSpec accepted it")
			}
			lines := strings.Split(err.Error(), "\n")
			for _, w := range tc.want {
				if !slices.ContainsFunc(lines, func(l string) bool { return strings.Contains(l, w) }) {
					t.Errorf("error %q lacks %q", err, w)
				}
			}
			if tc.name != "duplicate key" && len(lines) != len(tc.want) {
				t.Errorf("%d errors, want %d:\n%s", len(lines), len(tc.want), err)
			}
			var fe *FieldError
			if !strings.HasPrefix(err.Error(), "workload spec:") && !errors.As(err, &fe) {
				t.Errorf("error %v is not a *FieldError", err)
			}
		})
	}
}

func TestOpenSpecFiles(t *testing.T) {
	t.Run("llm-d shared prefix", func(t *testing.T) {
		w := openFile(t, "testdata/llm-d-shared-prefix.yaml")
		if n := w.Len(); n < 16500 || n > 17700 {
			t.Errorf("%d requests, want about 17,084", n)
		}
		var first Request
		groups := map[int]bool{}
		for r := range w.All() {
			if r.Index == 0 {
				first = r
			}
			groups[r.Group] = true
		}
		if first.PromptLen != 7200 || first.MaxTokens != 1000 || len(groups) != 150 {
			t.Errorf("first request %+v, %d groups; want 7,200 → 1,000 tokens, 150 groups", first, len(groups))
		}
	})
	t.Run("mooncake replay", func(t *testing.T) {
		needFile(t, mooncakePath)
		w := openFile(t, "testdata/mooncake-replay.yaml")
		if d := w.Duration(); d >= 5*time.Minute || d < 4*time.Minute {
			t.Errorf("last request at %s, want just under 5m", d)
		}
		full, err := Open(Spec{Kind: KindMooncake, Path: mooncakePath}, ".")
		if err != nil {
			t.Fatal(err)
		}
		// Twice the speed: the first 5 minutes hold the trace's first 10.
		want := 0
		for r := range full.All() {
			if r.At < 10*time.Minute {
				want++
			}
		}
		if w.Len() != want {
			t.Errorf("%d requests, want the %d of the trace's first 10 minutes", w.Len(), want)
		}
	})
	t.Run("missing trace file", func(t *testing.T) {
		_, err := Open(Spec{Kind: KindAzure, Path: "no-such.csv"}, "testdata")
		if err == nil || !strings.Contains(err.Error(), filepath.Join("testdata", "no-such.csv")) {
			t.Errorf("error = %v, want it to name testdata/no-such.csv", err)
		}
	})
	t.Run("bad row in the trace", func(t *testing.T) {
		_, err := Open(Spec{Kind: KindMooncake, Path: "bad-mooncake.jsonl"}, "testdata")
		wantRowError(t, err, 3, `unknown field "session"`)
	})
}

func openFile(t *testing.T, path string) *Workload {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	spec, err := ParseSpec(data)
	if err != nil {
		t.Fatalf("ParseSpec(%s): %v", path, err)
	}
	w, err := Open(spec, filepath.Dir(path))
	if err != nil {
		t.Fatalf("Open(%s): %v", path, err)
	}
	return w
}
