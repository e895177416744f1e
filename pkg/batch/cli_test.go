package batch

import (
	"bytes"
	"context"
	"encoding/json"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/openai/openai-go/v3"

	"github.com/llmd-kn/llmd-kn/internal/testutil"
	"github.com/llmd-kn/llmd-kn/pkg/kvstore"
)

func TestClientSubmitResumes(t *testing.T) {
	eng := startEngine(t)
	store, _ := kvstore.Open(context.Background(), t.TempDir(), kvstore.Options{})
	api, err := NewAPI(context.Background(), APIOptions{Backend: HTTPBackend{URL: eng.url}, Store: store, FlushEvery: 1})
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(api)
	t.Cleanup(func() { srv.Close(); api.Close() })

	dir := t.TempDir()
	input := filepath.Join(dir, "requests.jsonl")
	if err := os.WriteFile(input, inputFile(5, map[int]string{2: "not json"}), 0o644); err != nil {
		t.Fatal(err)
	}
	var progress testutil.SyncBuffer
	c, err := NewClient(ClientOptions{URL: srv.URL, Progress: &progress, Poll: 5 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	// An interrupted run: submitted, then stopped before the end.
	b, err := c.Submit(context.Background(), SubmitOptions{Input: input, Detach: true})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(StatePath(input)); err != nil {
		t.Fatalf("no state kept for resuming: %v", err)
	}
	// The rerun follows the same batch: no second upload or batch.
	done, err := c.Submit(context.Background(), SubmitOptions{Input: input})
	if err != nil {
		t.Fatal(err)
	}
	if done.ID != b.ID || done.Status != openai.BatchStatusCompleted {
		t.Fatalf("rerun got %s %s, want %s completed", done.ID, done.Status, b.ID)
	}
	rec := httptest.NewRecorder()
	api.ServeHTTP(rec, httptest.NewRequest("GET", "/v1/batches", nil))
	var list struct{ Data []json.RawMessage }
	_ = json.Unmarshal(rec.Body.Bytes(), &list)
	if len(list.Data) != 1 {
		t.Fatalf("%d batches after a resumed submit", len(list.Data))
	}
	out, err := os.ReadFile(DefaultOutput(input))
	if err != nil || bytes.Count(out, []byte("\n")) != 4 {
		t.Fatalf("output: %d lines, %v", bytes.Count(out, []byte("\n")), err)
	}
	errs, err := os.ReadFile(filepath.Join(dir, "requests.output.errors.jsonl"))
	if err != nil || bytes.Count(errs, []byte("\n")) != 1 {
		t.Fatalf("errors: %q, %v", errs, err)
	}
	if _, err := os.Stat(StatePath(input)); !os.IsNotExist(err) {
		t.Fatal("state kept after the batch finished")
	}
	// Plain lines, not a redrawn bar, when not a terminal.
	p := progress.String()
	if strings.Contains(p, "\r") || !strings.Contains(p, "resuming batch "+b.ID) || !strings.Contains(p, "completed: 5/5 done, 1 failed") {
		t.Fatalf("progress:\n%s", p)
	}
}

func TestProgressLine(t *testing.T) {
	b := &openai.Batch{ID: "batch_1", Status: "in_progress", RequestCounts: openai.BatchRequestCounts{Total: 10, Completed: 4, Failed: 1}}
	if got := Progress(b, false); got != "batch_1 in_progress: 5/10 done, 1 failed" {
		t.Fatal(got)
	}
	if got := Progress(b, true); !strings.HasPrefix(got, "[###############...............] ") {
		t.Fatal(got)
	}
}
