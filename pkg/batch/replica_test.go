package batch

import (
	"context"
	"testing"

	"github.com/openai/openai-go/v3"

	"github.com/llmd-kn/llmd-kn/pkg/kvstore"
)

// openShared opens n stores on one directory: replicas sharing storage,
// each with its own handle as separate processes would have.
func openShared(t *testing.T, n int) []*kvstore.Store {
	t.Helper()
	dir := t.TempDir()
	out := make([]*kvstore.Store, n)
	for i := range out {
		st, err := kvstore.Open(context.Background(), dir, kvstore.Options{})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = st.Close() })
		out[i] = st
	}
	return out
}

// TestBatchAcrossReplicas: a file uploaded through one replica makes a
// batch through the other; the replica that does not run it answers GET
// (with the progress the runner stored), list and the output's content.
func TestBatchAcrossReplicas(t *testing.T) {
	eng := startEngine(t)
	eng.gate, eng.entered, eng.holdAfter = make(chan struct{}), make(chan struct{}, 1), 3
	stores := openShared(t, 2)
	_, a := startAPI(t, HTTPBackend{URL: eng.url}, stores[0], APIOptions{Concurrency: 1, FlushEvery: 1})
	_, b := startAPI(t, HTTPBackend{URL: eng.url}, stores[1], APIOptions{})
	created := create(t, a, upload(t, b, inputFile(6, nil)), "24h")
	<-eng.entered
	// Three lines committed by A, seen through B.
	got := poll(t, b, created.ID, func(x *openai.Batch) bool { return x.RequestCounts.Completed == 3 })
	if got.Status != openai.BatchStatusInProgress || got.RequestCounts.Total != 6 || got.Metadata["job"] != "nightly-eval" {
		t.Fatalf("through the other replica: %+v", got)
	}
	eng.mu.Lock()
	close(eng.gate)
	eng.gate = nil
	eng.mu.Unlock()
	got = poll(t, b, created.ID, terminal)
	if got.Status != openai.BatchStatusCompleted || got.RequestCounts.Completed != 6 {
		t.Fatalf("finished, through the other replica: %+v", got)
	}
	if outs := content(t, b, got.OutputFileID); len(outs) != 6 {
		t.Fatalf("%d output lines through the other replica", len(outs))
	}
	// A second batch: both replicas list both, newest first, paginated.
	second := create(t, b, upload(t, a, inputFile(1, nil)), "24h")
	poll(t, a, second.ID, terminal)
	for _, c := range []openai.Client{a, b} {
		page, err := c.Batches.List(context.Background(), openai.BatchListParams{Limit: openai.Int(1)})
		if err != nil || len(page.Data) != 1 || !page.HasMore {
			t.Fatalf("list: %+v %v", page, err)
		}
		rest, err := c.Batches.List(context.Background(), openai.BatchListParams{After: openai.String(page.Data[0].ID)})
		if err != nil || len(rest.Data) != 1 || rest.HasMore {
			t.Fatalf("list after %s: %+v %v", page.Data[0].ID, rest, err)
		}
		ids := map[string]bool{page.Data[0].ID: true, rest.Data[0].ID: true}
		if !ids[created.ID] || !ids[second.ID] {
			t.Fatalf("listed %v, want %s and %s", ids, created.ID, second.ID)
		}
	}
	if _, err := b.Batches.Get(context.Background(), "batch_nosuch"); err == nil {
		t.Fatal("unknown batch found")
	}
}

// TestBatchCancelThroughOtherReplica: a cancel answered by the replica
// that does not run the batch is recorded in storage; the runner cancels
// it at its next commit or flush tick.
func TestBatchCancelThroughOtherReplica(t *testing.T) {
	eng := startEngine(t)
	eng.gate, eng.entered, eng.holdAfter = make(chan struct{}), make(chan struct{}, 1), 2
	stores := openShared(t, 2)
	_, a := startAPI(t, HTTPBackend{URL: eng.url}, stores[0], APIOptions{Concurrency: 1, FlushEvery: 1})
	_, b := startAPI(t, HTTPBackend{URL: eng.url}, stores[1], APIOptions{})
	created := create(t, a, upload(t, a, inputFile(5, nil)), "24h")
	<-eng.entered
	poll(t, b, created.ID, func(x *openai.Batch) bool { return x.RequestCounts.Completed == 2 })
	cb, err := b.Batches.Cancel(context.Background(), created.ID)
	if err != nil || cb.Status != openai.BatchStatusCancelling || cb.CancellingAt == 0 {
		t.Fatalf("cancel through the other replica: %+v %v", cb, err)
	}
	got := poll(t, b, created.ID, terminal)
	if got.Status != openai.BatchStatusCancelled || got.RequestCounts.Completed != 2 || got.RequestCounts.Failed != 3 {
		t.Fatalf("cancelled: %+v", got)
	}
	if errs := content(t, b, got.ErrorFileID); len(errs) != 3 || errs[0]["error"].(map[string]any)["code"] != "batch_cancelled" {
		t.Fatalf("error lines %v", errs)
	}
	if again, err := b.Batches.Cancel(context.Background(), created.ID); err != nil || again.Status != openai.BatchStatusCancelled {
		t.Fatalf("cancelling a cancelled batch: %+v %v", again, err)
	}
}

// FuzzStoredObjects: what other replicas (or anyone with write access to
// the bucket) left in storage is validated, never trusted to be well
// formed: no panic, and what parses round-trips.
func FuzzStoredObjects(f *testing.F) {
	f.Add([]byte(`{"at":1700000000}`), "batch/index/000001700000_batch_abc")
	f.Add([]byte(`{"at":-1}`), "batch/index/x_batch_abc")
	f.Add([]byte(`null`), "batch/index/000001700000_batch_../x")
	f.Add([]byte(`{}`), "batch/index/+00001700000_batch_abc")
	f.Fuzz(func(t *testing.T, raw []byte, key string) {
		if m, err := parseCancelMarker(raw); err == nil && m.At <= 0 {
			t.Fatalf("accepted %+v", m)
		}
		if c, id, ok := parseIndexKey(key); ok {
			if indexKey(c, id) != key || !validID(id, "batch_") {
				t.Fatalf("%q parsed as %d %q", key, c, id)
			}
		}
	})
}
