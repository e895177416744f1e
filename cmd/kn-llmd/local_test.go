package main

import (
	"bytes"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
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
		"{model}", "{port}", "{args}", "{role}", "{name}", "{kv_events_port}", "kn llmd local", ".localhost", "/status.json"} {
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
