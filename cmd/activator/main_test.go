package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/llmd-kn/llmd-kn/internal/simtest"
	"github.com/llmd-kn/llmd-kn/internal/testutil"
)

// TestActivatorInFrontOfASimulator runs the command as a user would, with a
// static config naming one simulated vLLM pod, and checks an answer, the
// metrics and the autoscaler's stats feed.
func TestActivatorInFrontOfASimulator(t *testing.T) {
	_, simAddr := simtest.Start(t, "demo")

	cfg := filepath.Join(t.TempDir(), "revisions.yaml")
	doc := fmt.Sprintf("revisions:\n- name: llm-00001\n  service: llm\n  models: [demo]\n  pods:\n  - {name: pod-0, url: \"http://%s\"}\n", simAddr)
	if err := os.WriteFile(cfg, []byte(doc), 0o600); err != nil {
		t.Fatal(err)
	}
	addr, admin := testutil.FreeAddr(t), testutil.FreeAddr(t)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	var logs bytes.Buffer
	go func() { done <- run(ctx, []string{"--config", cfg, "--addr", addr, "--admin-addr", admin}, &logs) }()

	var resp *http.Response
	var err error
	for deadline := time.Now().Add(30 * time.Second); time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
		resp, err = http.Post("http://"+addr+"/v1/completions", "application/json",
			strings.NewReader(`{"model":"demo","prompt":"Knative is","max_tokens":5}`))
		if err == nil && resp.StatusCode == 200 {
			break
		}
		if resp != nil {
			resp.Body.Close()
		}
	}
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("no answer through the activator: %v\n%s", err, logs.String())
	}
	var out struct {
		Usage struct {
			CompletionTokens int `json:"completion_tokens"`
		} `json:"usage"`
	}
	_ = json.NewDecoder(resp.Body).Decode(&out)
	resp.Body.Close()
	if out.Usage.CompletionTokens != 5 {
		t.Fatalf("usage %+v", out.Usage)
	}
	get := func(path string) string {
		r, err := http.Get("http://" + admin + path)
		if err != nil {
			t.Fatal(err)
		}
		defer r.Body.Close()
		b, _ := io.ReadAll(r.Body)
		return string(b)
	}
	// The activator counts a request when its handler returns, which may be
	// just after the client has read the last byte: wait for the counts.
	eventually := func(path, want string) {
		t.Helper()
		var got string
		for deadline := time.Now().Add(30 * time.Second); time.Now().Before(deadline); time.Sleep(10 * time.Millisecond) {
			if got = get(path); strings.Contains(got, want) {
				return
			}
		}
		t.Fatalf("%s lacks %s:\n%s", path, want, got)
	}
	eventually("/metrics", `llmd_activator_requests_total{code="200",revision="default/llm-00001",tier="standard"} 1`)
	eventually("/stats", `"completionTokens":5`)
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("activator did not shut down")
	}
}

func TestBadConfigIsRefused(t *testing.T) {
	cfg := filepath.Join(t.TempDir(), "bad.yaml")
	_ = os.WriteFile(cfg, []byte("revisions:\n- name: r\n  service: s\n  models: [m]\n  annotations: {llm-d.ai/slo-ttft: soon}\n"), 0o600)
	err := run(context.Background(), []string{"--config", cfg}, io.Discard)
	if err == nil || !strings.Contains(err.Error(), "revisions[0].annotations[llm-d.ai/slo-ttft]") {
		t.Fatalf("got %v", err)
	}
}
