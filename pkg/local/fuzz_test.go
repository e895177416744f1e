package local

import (
	"strings"
	"testing"
)

// FuzzParse: no manifest, however broken, panics the loader; a manifest it
// accepts yields a runnable Service.
func FuzzParse(f *testing.F) {
	f.Add(string(QuickstartYAML))
	f.Add(manifest(`llm-d.ai/routing-profile: fastest`))
	f.Add(manifest("") + "---\n" + strings.Replace(manifest(""), "name: llm", "name: b", 1))
	f.Add("apiVersion: serving.knative.dev/v1\nkind: Service\nmetadata: {name: x}\nspec: {template: {spec: {containers: [{image: vllm/vllm-openai, args: [serve]}]}}}\n")
	f.Add("- [\n")
	vocab := DefaultVocabulary()
	f.Fuzz(func(t *testing.T, yaml string) {
		svcs, err := Parse("f.yaml", []byte(yaml), vocab)
		if err != nil {
			if err.Error() == "" {
				t.Fatal("empty error")
			}
			return
		}
		for _, s := range svcs {
			if s.Name == "" || s.Namespace == "" || s.Revision == "" || s.Model == "" || len(s.Models) == 0 ||
				s.Decode < 0 || s.Prefill < 0 || (!s.Spec.Disaggregated() && s.Prefill != 0) {
				t.Fatalf("accepted an unrunnable Service: %+v", s)
			}
		}
	})
}
