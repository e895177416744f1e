package batch

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/openai/openai-go/v3"
	"github.com/openai/openai-go/v3/option"

	"github.com/llmd-kn/llmd-kn/pkg/kvstore"
)

func startAPI(t *testing.T, be Backend, store *kvstore.Store, opts APIOptions) (*API, openai.Client) {
	t.Helper()
	opts.Backend, opts.Store = be, store
	if opts.FlushEvery == 0 {
		opts.FlushEvery = 2
	}
	if opts.Retry.Base == 0 {
		opts.Retry.Base = time.Millisecond
	}
	api, err := NewAPI(context.Background(), opts)
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(api)
	t.Cleanup(func() { srv.Close(); api.Close() })
	return api, openai.NewClient(option.WithBaseURL(srv.URL+"/v1/"), option.WithAPIKey("unused"), option.WithMaxRetries(0))
}

func inputFile(n int, bad map[int]string) []byte {
	var b bytes.Buffer
	for i := 0; i < n; i++ {
		if s, ok := bad[i]; ok {
			b.WriteString(s + "\n")
			continue
		}
		body := map[string]any{"messages": []map[string]string{{"role": "user", "content": fmt.Sprintf("question %d", i)}}, "max_tokens": 3}
		if i%2 == 0 {
			body["model"] = testModel // odd lines leave it to the Service
		}
		line, _ := json.Marshal(map[string]any{"custom_id": fmt.Sprintf("req-%d", i), "method": "POST", "url": "/v1/chat/completions", "body": body})
		b.Write(line)
		b.WriteString("\n\n"[:1+i%2]) // blank lines are skipped
	}
	return b.Bytes()
}

func upload(t *testing.T, c openai.Client, data []byte) string {
	t.Helper()
	f, err := c.Files.New(context.Background(), openai.FileNewParams{
		File: openai.File(bytes.NewReader(data), "input.jsonl", "application/jsonl"), Purpose: openai.FilePurposeBatch})
	if err != nil {
		t.Fatal(err)
	}
	if f.Bytes != int64(len(data)) || f.Purpose != "batch" || !strings.HasPrefix(f.ID, "file-") {
		t.Fatalf("file %+v", f)
	}
	return f.ID
}

func create(t *testing.T, c openai.Client, fileID string, window string) *openai.Batch {
	t.Helper()
	b, err := c.Batches.New(context.Background(), openai.BatchNewParams{
		CompletionWindow: openai.BatchNewParamsCompletionWindow(window),
		Endpoint:         openai.BatchNewParamsEndpointV1ChatCompletions,
		InputFileID:      fileID,
		Metadata:         map[string]string{"job": "nightly-eval"},
	})
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func poll(t *testing.T, c openai.Client, id string, until func(*openai.Batch) bool) *openai.Batch {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		b, err := c.Batches.Get(context.Background(), id)
		if err != nil {
			t.Fatal(err)
		}
		if until(b) {
			return b
		}
		if time.Now().After(deadline) {
			t.Fatalf("batch stuck: %+v", b)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func terminal(b *openai.Batch) bool { return Terminal(string(b.Status)) }

func content(t *testing.T, c openai.Client, id string) []map[string]any {
	t.Helper()
	if id == "" {
		return nil
	}
	resp, err := c.Files.Content(context.Background(), id)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var out []map[string]any
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(nil, 1<<20)
	for sc.Scan() {
		var m map[string]any
		if err := json.Unmarshal(sc.Bytes(), &m); err != nil {
			t.Fatalf("output line %q: %v", sc.Text(), err)
		}
		out = append(out, m)
	}
	return out
}

func TestBatchAPIWithOpenAISDK(t *testing.T) {
	eng := startEngine(t)
	store, _ := kvstore.Open(context.Background(), t.TempDir(), kvstore.Options{})
	_, c := startAPI(t, HTTPBackend{URL: eng.url}, store, APIOptions{})
	bad := map[int]string{3: `{"custom_id": "req-3", "method": "POST", "url": "/v1/chat/completions", "body": {"messages": [`, 5: `{"custom_id": "req-5", "method": "GET", "url": "/v1/chat/completions", "body": {}}`}
	id := upload(t, c, inputFile(8, bad))
	b := create(t, c, id, "24h")
	if b.Status != openai.BatchStatusValidating && b.Status != openai.BatchStatusInProgress || b.Endpoint != "/v1/chat/completions" || b.Metadata["job"] != "nightly-eval" {
		t.Fatalf("created %+v", b)
	}
	b = poll(t, c, b.ID, terminal)
	if b.Status != openai.BatchStatusCompleted || b.RequestCounts.Total != 8 || b.RequestCounts.Completed != 6 || b.RequestCounts.Failed != 2 ||
		b.CompletedAt == 0 || b.InProgressAt == 0 || b.FinalizingAt == 0 || b.Usage.OutputTokens == 0 {
		t.Fatalf("finished %+v", b)
	}
	outs := content(t, c, b.OutputFileID)
	if len(outs) != 6 {
		t.Fatalf("%d output lines", len(outs))
	}
	for _, o := range outs {
		resp := o["response"].(map[string]any)
		body := resp["body"].(map[string]any)
		if resp["status_code"].(float64) != 200 || body["model"] != testModel || o["error"] != nil {
			t.Fatalf("output line %v", o)
		}
	}
	errs := content(t, c, b.ErrorFileID)
	if len(errs) != 2 || errs[0]["custom_id"] != nil || errs[1]["custom_id"] != "req-5" ||
		!strings.Contains(errs[1]["error"].(map[string]any)["message"].(string), "method") {
		t.Fatalf("error lines %v", errs)
	}
	// The list shows it, newest first.
	page, err := c.Batches.List(context.Background(), openai.BatchListParams{})
	if err != nil || len(page.Data) != 1 || page.Data[0].ID != b.ID {
		t.Fatalf("list %+v %v", page, err)
	}
	if eng.calls.Load() != 6 {
		t.Fatalf("%d inferences for 6 good lines", eng.calls.Load())
	}
}

func TestBatchCancel(t *testing.T) {
	eng := startEngine(t)
	eng.gate, eng.entered = make(chan struct{}), make(chan struct{}, 1)
	store, _ := kvstore.Open(context.Background(), t.TempDir(), kvstore.Options{})
	_, c := startAPI(t, HTTPBackend{URL: eng.url}, store, APIOptions{Concurrency: 1})
	b := create(t, c, upload(t, c, inputFile(4, nil)), "24h")
	<-eng.entered
	cb, err := c.Batches.Cancel(context.Background(), b.ID)
	if err != nil || cb.Status != openai.BatchStatusCancelling {
		t.Fatalf("cancel: %+v %v", cb, err)
	}
	b = poll(t, c, b.ID, terminal)
	if b.Status != openai.BatchStatusCancelled || b.CancelledAt == 0 || b.RequestCounts.Failed != 4 {
		t.Fatalf("cancelled %+v", b)
	}
	errs := content(t, c, b.ErrorFileID)
	if len(errs) != 4 || errs[0]["error"].(map[string]any)["code"] != "batch_cancelled" {
		t.Fatalf("error lines %v", errs)
	}
	if _, err := c.Batches.Cancel(context.Background(), b.ID); err != nil {
		t.Fatalf("cancelling a cancelled batch: %v", err)
	}
}

func TestBatchExpires(t *testing.T) {
	eng := startEngine(t)
	eng.gate, eng.entered = make(chan struct{}), make(chan struct{}, 1)
	store, _ := kvstore.Open(context.Background(), t.TempDir(), kvstore.Options{})
	_, c := startAPI(t, HTTPBackend{URL: eng.url}, store, APIOptions{})
	b := create(t, c, upload(t, c, inputFile(3, nil)), "1s")
	b = poll(t, c, b.ID, terminal)
	if b.Status != openai.BatchStatusExpired || b.ExpiredAt == 0 || b.RequestCounts.Failed != 3 {
		t.Fatalf("expired %+v", b)
	}
	if errs := content(t, c, b.ErrorFileID); len(errs) != 3 || errs[0]["error"].(map[string]any)["code"] != "batch_expired" {
		t.Fatalf("error lines %v", errs)
	}
}

// TestBatchResumesAfterRestart stops the API mid-batch and starts another
// on the same storage: finished lines are not sent again.
func TestBatchResumesAfterRestart(t *testing.T) {
	eng := startEngine(t)
	// Three lines go through, the fourth is held: then stop. (Installing
	// the gate after three lines had finished raced with the engine, which
	// could finish all ten first and leave the test waiting.)
	eng.gate, eng.entered, eng.holdAfter = make(chan struct{}), make(chan struct{}, 1), 3
	store, _ := kvstore.Open(context.Background(), t.TempDir(), kvstore.Options{})
	api1, c1 := startAPI(t, HTTPBackend{URL: eng.url}, store, APIOptions{Concurrency: 1, FlushEvery: 1})
	fileID := upload(t, c1, inputFile(10, nil))
	b := create(t, c1, fileID, "24h")
	<-eng.entered
	poll(t, c1, b.ID, func(b *openai.Batch) bool { return b.RequestCounts.Completed >= 3 })
	api1.Close()
	eng.mu.Lock()
	close(eng.gate)
	eng.gate = nil
	eng.mu.Unlock()
	before, _ := c1.Batches.Get(context.Background(), b.ID)
	done := before.RequestCounts.Completed
	sent := eng.calls.Load()

	api2, c2 := startAPI(t, HTTPBackend{URL: eng.url}, store, APIOptions{})
	if n := api2.Resume(); n != 1 {
		t.Fatalf("resumed %d batches", n)
	}
	b2 := poll(t, c2, b.ID, terminal)
	if b2.Status != openai.BatchStatusCompleted || b2.RequestCounts.Completed != 10 {
		t.Fatalf("after restart %+v", b2)
	}
	// Lines committed before the stop are not redone; the one in flight is.
	if redo := eng.calls.Load() - sent; redo != int64(10-done) {
		t.Fatalf("%d lines sent after the restart, want %d (%d were done)", redo, 10-done, done)
	}
	outs := content(t, c2, b2.OutputFileID)
	seen := map[string]bool{}
	for i, o := range outs {
		id := o["custom_id"].(string)
		if id != fmt.Sprintf("req-%d", i) || seen[id] {
			t.Fatalf("output out of order or duplicated at %d: %s", i, id)
		}
		seen[id] = true
	}
}

func TestBatchAPIErrors(t *testing.T) {
	eng := startEngine(t)
	store, _ := kvstore.Open(context.Background(), t.TempDir(), kvstore.Options{})
	_, c := startAPI(t, HTTPBackend{URL: eng.url}, store, APIOptions{MaxFileBytes: 1 << 10, MaxLines: 5})
	ctx := context.Background()
	if _, err := c.Files.New(ctx, openai.FileNewParams{File: openai.File(strings.NewReader("x"), "a.jsonl", "application/jsonl"), Purpose: openai.FilePurposeFineTune}); err == nil || !strings.Contains(apiMessage(err), "purpose") {
		t.Fatalf("fine-tune purpose: %v", err)
	}
	if _, err := c.Files.New(ctx, openai.FileNewParams{File: openai.File(bytes.NewReader(make([]byte, 2000)), "a.jsonl", "application/jsonl"), Purpose: openai.FilePurposeBatch}); err == nil || !strings.Contains(apiMessage(err), "limit") {
		t.Fatalf("oversized file: %v", err)
	}
	if _, err := c.Batches.New(ctx, openai.BatchNewParams{CompletionWindow: "24h", Endpoint: openai.BatchNewParamsEndpointV1ChatCompletions, InputFileID: "file-nosuch"}); err == nil || !strings.Contains(apiMessage(err), "file-nosuch") {
		t.Fatalf("missing file: %v", err)
	}
	id := upload(t, c, inputFile(1, nil))
	if _, err := c.Batches.New(ctx, openai.BatchNewParams{CompletionWindow: "soon", Endpoint: openai.BatchNewParamsEndpointV1ChatCompletions, InputFileID: id}); err == nil || !strings.Contains(apiMessage(err), "completion_window") {
		t.Fatalf("bad window: %v", err)
	}
	if _, err := c.Batches.New(ctx, openai.BatchNewParams{CompletionWindow: "24h", Endpoint: openai.BatchNewParamsEndpointV1Embeddings, InputFileID: id}); err == nil || !strings.Contains(apiMessage(err), "endpoint") {
		t.Fatalf("embeddings: %v", err)
	}
	if _, err := c.Batches.Get(ctx, "batch_nosuch"); err == nil {
		t.Fatal("unknown batch found")
	}
	if _, err := c.Files.Content(ctx, "../../etc/passwd"); err == nil {
		t.Fatal("path in a file id")
	}
	// Too many lines: the batch fails validation, with the reason.
	b := create(t, c, upload(t, c, []byte(strings.Repeat("{}\n", 6))), "24h")
	b = poll(t, c, b.ID, terminal)
	if b.Status != openai.BatchStatusFailed || len(b.Errors.Data) != 1 || b.Errors.Data[0].Code != "too_many_lines" {
		t.Fatalf("failed %+v", b)
	}
}

// apiMessage is the message of an OpenAI SDK error (its Error() shows
// only the status).
func apiMessage(err error) string {
	var e *openai.Error
	if errors.As(err, &e) {
		return e.Message
	}
	return err.Error()
}
