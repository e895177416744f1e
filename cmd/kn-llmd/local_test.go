package main

import (
	"bytes"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/llmd-kn/llmd-kn/pkg/activator"
)

func TestLocalHelpDocumentsEveryFlag(t *testing.T) {
	cmd := newRootCommand()
	var out bytes.Buffer
	cmd.SetOut(&out)
	cmd.SetArgs([]string{"local", "--help"})
	if err := cmd.Execute(); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"--addr", "--metrics-addr", "-f, --filename", "--sim-time-scale", "--sim-startup-delay",
		"--pod-command", "--grace-period", "--drain-timeout", "--startup-timeout", "--debug-routing", "--log-level", "--cold-start",
		"{model}", "{port}", "{args}", "{role}", "{name}", "{kv_events_port}", "kn llmd local", ".localhost", "/status.json",
		"--batch-max-saturation", "--batch-max-per-pod", "--batch-max-prefill-per-pod", "--batch-yield"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("kn-llmd local --help lacks %q", want)
		}
	}
}

func TestLocalRejectsBadInput(t *testing.T) {
	dir := t.TempDir()
	bad := filepath.Join(dir, "bad.yaml")
	if err := os.WriteFile(bad, []byte(`apiVersion: serving.knative.dev/v1
kind: Service
metadata:
  name: llm
spec:
  template:
    metadata:
      annotations:
        autoscaling.knative.dev/min-scale: "-1"
        llm-d.ai/routing-profile: fastest
    spec:
      containers:
      - image: vllm/vllm-openai:v0.11.0
`), 0o644); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		args []string
		want []string
	}{
		{[]string{"--log-level", "loud"}, []string{"--log-level"}},
		{[]string{"--sim-time-scale", "0"}, []string{"--sim-time-scale"}},
		{[]string{"--grace-period", "-1s"}, []string{"--grace-period"}},
		{[]string{"--autoscale-tick", "0s"}, []string{"--autoscale-tick"}},
		{[]string{"--stable-window", "1s"}, []string{"--stable-window", "--autoscale-tick"}},
		{[]string{"--scale-to-zero-grace-period", "-1s"}, []string{"--scale-to-zero-grace-period"}},
		{[]string{"--cold-start", "-10s"}, []string{"--cold-start must not be negative"}},
		{[]string{"--cold-start", "soon"}, []string{"cold-start"}},
		{[]string{"--pod-command", "vllm serve {model}"}, []string{"--pod-command", "{port}"}},
		{[]string{"--pod-command", "x --port {port} {modle}"}, []string{"unknown placeholder {modle}"}},
		{[]string{"-f", filepath.Join(dir, "missing.yaml")}, []string{"missing.yaml"}},
		{[]string{"-f", bad}, []string{
			"2 problems in the manifests:",
			bad + `: Service default/llm: spec.template.metadata.annotations[autoscaling.knative.dev/min-scale]: invalid value "-1"`,
			bad + `: Service default/llm: spec.template.metadata.annotations[llm-d.ai/routing-profile]: invalid value "fastest"`,
		}},
		{[]string{"extra"}, []string{"unknown command"}},
		{[]string{"--batch-max-per-pod", "-1"}, []string{"--batch-max-per-pod must not be negative"}},
		{[]string{"--batch-max-prefill-per-pod", "-1"}, []string{"--batch-max-prefill-per-pod must not be negative"}},
		{[]string{"--batch-max-saturation", "-0.5"}, []string{"--batch-max-saturation must not be negative"}},
		{[]string{"--batch-max-saturation", "NaN"}, []string{"--batch-max-saturation must not be negative"}},
		{[]string{"--batch-yield=maybe"}, []string{"batch-yield"}},
	}
	for _, tc := range tests {
		t.Run(strings.Join(tc.args, " "), func(t *testing.T) {
			cmd := newRootCommand()
			cmd.SetOut(io.Discard)
			cmd.SetErr(io.Discard)
			cmd.SetArgs(append([]string{"local", "--addr", "127.0.0.1:0", "--metrics-addr", "off"}, tc.args...))
			err := cmd.Execute()
			if err == nil {
				t.Fatal("accepted")
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q lacks %q", err, w)
				}
			}
		})
	}
}

// TestLocalBatchFlagsSetTheBatchTier: kn-llmd local's --batch-* flags
// default to the built-in batch tier, and set only its admission rules:
// the same rules, under the same names, as kn-llmd plan's flags.
func TestLocalBatchFlagsSetTheBatchTier(t *testing.T) {
	def := activator.DefaultTiers()
	want, _ := def.Get(activator.BatchTier)
	f := &localFlags{batchMaxSaturation: want.MaxSaturation, batchMaxPerPod: want.MaxPerPod,
		batchMaxPrefillPerPod: want.MaxPrefillPerPod, batchYield: want.YieldToInteractive}
	cmd := newLocalCmd()
	for name, v := range map[string]string{"batch-max-saturation": "0.8", "batch-max-per-pod": "32", "batch-max-prefill-per-pod": "0", "batch-yield": "false"} {
		if got := cmd.Flags().Lookup(name).DefValue; got != v {
			t.Errorf("--%s defaults to %s, want the built-in batch tier's %s", name, got, v)
		}
	}
	if got, err := f.tiers(); err != nil {
		t.Fatal(err)
	} else if b, _ := got.Get(activator.BatchTier); b != want {
		t.Fatalf("defaults give the batch tier %+v, want %+v", b, want)
	}
	f.batchMaxPerPod, f.batchMaxPrefillPerPod, f.batchYield = 64, 1, true
	got, err := f.tiers()
	if err != nil {
		t.Fatal(err)
	}
	b, _ := got.Get(activator.BatchTier)
	want.MaxPerPod, want.MaxPrefillPerPod, want.YieldToInteractive = 64, 1, true
	if b != want {
		t.Fatalf("batch tier %+v, want %+v", b, want)
	}
	for _, name := range def.Names() {
		if name == activator.BatchTier {
			continue
		}
		if g, _ := got.Get(name); g != func() activator.Tier { w, _ := def.Get(name); return w }() {
			t.Errorf("tier %s changed: %+v", name, g)
		}
	}
	if !slices.Equal(got.Names(), def.Names()) {
		t.Fatalf("tiers %v, built in %v", got.Names(), def.Names())
	}
}
