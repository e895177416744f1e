package batch

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/cloudevents/sdk-go/v2/event"
	"github.com/openai/openai-go/v3"

	"github.com/llmd-kn/llmd-kn/internal/testutil"
	"github.com/llmd-kn/llmd-kn/pkg/kvstore"
	_ "github.com/llmd-kn/llmd-kn/pkg/kvstore/drivers" // s3:// for TestBatchReplicasOnS3
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
	f.Add([]byte(`{"owner":"replica-1","beat":3,"released":true}`), "")
	f.Add([]byte(`{"owner":"","beat":-1}`), "")
	f.Add([]byte(`{"at":-1}`), "batch/index/x_batch_abc")
	f.Add([]byte(`null`), "batch/index/000001700000_batch_../x")
	f.Add([]byte(`{}`), "batch/index/+00001700000_batch_abc")
	f.Add([]byte(`{"at":"2026-01-01T00:00:00Z","result":{"specversion":"1.0","id":"x","source":"/s","type":"t"}}`), "")
	f.Add([]byte(`{"at":"2026-01-01T00:00:00Z","result":{"specversion":"1.0"}}`), "")
	f.Add([]byte(`{"pending":true}`), "")
	f.Fuzz(func(t *testing.T, raw []byte, key string) {
		if rec, err := parseRecord(raw); err == nil {
			if rec.Pending && rec.Request == nil {
				t.Fatalf("accepted a pending record without a request")
			}
			if rec.Result != nil {
				var ev event.Event
				if json.Unmarshal(rec.Result, &ev) != nil || ev.Validate() != nil {
					t.Fatalf("accepted result %s", rec.Result)
				}
			}
		}
		if m, err := parseCancelMarker(raw); err == nil && m.At <= 0 {
			t.Fatalf("accepted %+v", m)
		}
		if l, err := parseLease(raw); err == nil && (l.Owner == "" || len(l.Owner) > 128) {
			t.Fatalf("accepted lease %+v", l)
		}
		if c, id, ok := parseIndexKey(key); ok {
			if indexKey(c, id) != key || !validID(id, "batch_") {
				t.Fatalf("%q parsed as %d %q", key, c, id)
			}
		}
	})
}

// Short leases for the takeover tests: outcomes are asserted, never how
// long anything took (poll's deadline is only a hang guard).
const testRenew, testTTL = 10 * time.Millisecond, 50 * time.Millisecond

// crash stops an API as a crash would: runners and renewals stop, nothing
// is committed, finalized or released.
func crash(a *API) {
	a.crashed.Store(true)
	a.Close()
}

func releaseGate(e *engine) {
	e.mu.Lock()
	close(e.gate)
	e.gate = nil
	e.mu.Unlock()
}

// checkOutput: every line of an n-line batch exactly once, in order.
func checkOutput(t *testing.T, c openai.Client, b *openai.Batch, n int) {
	t.Helper()
	if b.Status != openai.BatchStatusCompleted || b.RequestCounts.Completed != int64(n) || b.RequestCounts.Failed != 0 {
		t.Fatalf("finished %+v", b)
	}
	outs := content(t, c, b.OutputFileID)
	if len(outs) != n {
		t.Fatalf("%d output lines, want %d", len(outs), n)
	}
	for i, o := range outs {
		if o["custom_id"] != fmt.Sprintf("req-%d", i) {
			t.Fatalf("output line %d is %v", i, o["custom_id"])
		}
	}
}

// TestBatchTakeoverAfterCrash: the replica that runs a batch dies mid-way
// (no release); another takes it over once it has seen the lease
// unrenewed for the TTL, and finishes it without resending what the dead
// one committed.
func TestBatchTakeoverAfterCrash(t *testing.T) {
	eng := startEngine(t)
	eng.gate, eng.entered, eng.holdAfter = make(chan struct{}), make(chan struct{}, 1), 3
	stores := openShared(t, 3)
	lease, optsA := leaseOpts(testTTL)
	apiA, a := startAPI(t, HTTPBackend{URL: eng.url}, stores[0], optsA)
	apiB, b := startAPI(t, HTTPBackend{URL: eng.url}, stores[1], lease)
	apiC, _ := startAPI(t, HTTPBackend{URL: eng.url}, stores[2], lease)
	created := create(t, a, upload(t, a, inputFile(10, nil)), "24h")
	<-eng.entered
	poll(t, b, created.ID, func(x *openai.Batch) bool { return x.RequestCounts.Completed == 3 })
	crash(apiA)
	releaseGate(eng)
	// Two replicas watch the dead one's lease; one of them takes over.
	for _, api := range []*API{apiB, apiC} {
		if n := api.Resume(); n != 0 {
			t.Fatalf("took over %d batches at once: the dead replica's lease has not expired yet", n)
		}
	}
	got := poll(t, b, created.ID, terminal)
	checkOutput(t, b, got, 10)
	// What A committed is never sent again; the rest at least once (the
	// replica that took over is itself taken over if its renewals stall
	// for the short test TTL: its uncommitted lines are then sent again,
	// and still in the output once).
	for i := 0; i < 10; i++ {
		if n := eng.sent(i); i < 3 && n != 1 || n < 1 {
			t.Errorf("line %d sent %d times", i, n)
		}
	}
}

// TestBatchStalledOwnerIsFenced: the owner's renewals stall while its
// runner lives; another replica takes the batch over and finishes it; the
// stalled runner, at its next commit, finds the higher epoch and stops
// without writing a chunk, a state or a result.
func TestBatchStalledOwnerIsFenced(t *testing.T) {
	engA, engB := startEngine(t), startEngine(t)
	engA.gate, engA.entered, engA.holdAfter = make(chan struct{}), make(chan struct{}, 1), 3
	stores := openShared(t, 2)
	lease, optsA := leaseOpts(testTTL)
	apiA, a := startAPI(t, HTTPBackend{URL: engA.url}, stores[0], optsA)
	apiB, b := startAPI(t, HTTPBackend{URL: engB.url}, stores[1], lease)
	created := create(t, a, upload(t, a, inputFile(10, nil)), "24h")
	<-engA.entered
	poll(t, b, created.ID, func(x *openai.Batch) bool { return x.RequestCounts.Completed == 3 })
	apiA.pauseRenew.Store(true)
	apiB.Resume()
	done := poll(t, b, created.ID, terminal)
	checkOutput(t, b, done, 10)
	chunks := func() int {
		objs, err := stores[1].List(context.Background(), batchKey(created.ID, "chunks/"), 0)
		if err != nil {
			t.Fatal(err)
		}
		return len(objs)
	}
	before := chunks()
	// A's held line finishes now: its commit is fenced.
	releaseGate(engA)
	apiA.Wait(created.ID)
	after, err := b.Batches.Get(context.Background(), created.ID)
	if err != nil || after.OutputFileID != done.OutputFileID || after.Status != openai.BatchStatusCompleted {
		t.Fatalf("after the stalled runner woke: %+v %v", after, err)
	}
	if n := chunks(); n != before {
		t.Fatalf("%d chunks after the stalled runner woke, %d before", n, before)
	}
	// B sent every line A had not committed, once; never one A had. (A
	// may have sent one more line before its commit was fenced.)
	for i := 0; i < 10; i++ {
		want := 0
		if i >= 3 {
			want = 1
		}
		if n := engB.sent(i); n != want {
			t.Errorf("line %d sent %d times by the replica that took over, want %d", i, n, want)
		}
		if i < 3 && engA.sent(i) != 1 {
			t.Errorf("line %d sent %d times by the stalled replica", i, engA.sent(i))
		}
	}
}

// TestBatchOneRunnerWhenReplicasStartTogether: a batch left by a replica
// that stopped gracefully (lease released); two replicas start on it at
// once; exactly one runs it.
func TestBatchOneRunnerWhenReplicasStartTogether(t *testing.T) {
	eng := startEngine(t)
	eng.gate, eng.entered, eng.holdAfter = make(chan struct{}), make(chan struct{}, 1), 2
	stores := openShared(t, 3)
	lease, optsA := leaseOpts(time.Hour)
	apiA, a := startAPI(t, HTTPBackend{URL: eng.url}, stores[0], optsA)
	created := create(t, a, upload(t, a, inputFile(8, nil)), "24h")
	<-eng.entered
	poll(t, a, created.ID, func(x *openai.Batch) bool { return x.RequestCounts.Completed == 2 })
	apiA.Close()
	releaseGate(eng)
	apiB, b := startAPI(t, HTTPBackend{URL: eng.url}, stores[1], lease)
	apiC, _ := startAPI(t, HTTPBackend{URL: eng.url}, stores[2], lease)
	var nB, nC int
	var wg sync.WaitGroup
	wg.Add(2)
	go func() { defer wg.Done(); nB = apiB.Resume() }()
	go func() { defer wg.Done(); nC = apiC.Resume() }()
	wg.Wait()
	if nB+nC != 1 {
		t.Fatalf("replicas took over %d and %d batches, want one in all", nB, nC)
	}
	checkOutput(t, b, poll(t, b, created.ID, terminal), 8)
	for i := 0; i < 8; i++ {
		if n := eng.sent(i); i != 2 && n != 1 || i == 2 && n != 2 {
			t.Errorf("line %d sent %d times", i, n)
		}
	}
}

// TestBatchReplicasOnS3: the same through a real S3 server (versitygw):
// create through A, read through B, A dies, B takes over and finishes;
// create-if-absent (leases, chunks, the final state) is S3's
// If-None-Match there.
func TestBatchReplicasOnS3(t *testing.T) {
	url, _ := testutil.VersityGW(t)
	eng := startEngine(t)
	eng.gate, eng.entered, eng.holdAfter = make(chan struct{}), make(chan struct{}, 1), 2
	var stores []*kvstore.Store
	for range 2 {
		st, err := kvstore.Open(context.Background(), url, kvstore.Options{})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = st.Close() })
		stores = append(stores, st)
	}
	lease, optsA := leaseOpts(testTTL)
	apiA, a := startAPI(t, HTTPBackend{URL: eng.url}, stores[0], optsA)
	apiB, b := startAPI(t, HTTPBackend{URL: eng.url}, stores[1], lease)
	created := create(t, a, upload(t, b, inputFile(6, nil)), "24h")
	<-eng.entered
	got := poll(t, b, created.ID, func(x *openai.Batch) bool { return x.RequestCounts.Completed == 2 })
	if got.Status != openai.BatchStatusInProgress {
		t.Fatalf("through the other replica: %+v", got)
	}
	crash(apiA)
	releaseGate(eng)
	apiB.Resume()
	checkOutput(t, b, poll(t, b, created.ID, terminal), 6)
	for i := 0; i < 2; i++ {
		if n := eng.sent(i); n != 1 {
			t.Errorf("committed line %d sent %d times", i, n)
		}
	}
}

// TestBatchFinalWrittenOnce: a runner that passed its last fence check
// (still at the winner's epoch) after another finalized the batch loses at
// the final state, created only once: the result shown is the first, and
// the loser's files are deleted.
func TestBatchFinalWrittenOnce(t *testing.T) {
	eng := startEngine(t)
	stores := openShared(t, 2)
	_, a := startAPI(t, HTTPBackend{URL: eng.url}, stores[0], APIOptions{})
	apiB, b := startAPI(t, HTTPBackend{URL: eng.url}, stores[1], APIOptions{})
	created := create(t, a, upload(t, a, inputFile(2, nil)), "24h")
	done := poll(t, a, created.ID, terminal)
	ctx := context.Background()
	files := func() int {
		objs, err := stores[1].List(ctx, "batch/files/", 0)
		if err != nil {
			t.Fatal(err)
		}
		return len(objs)
	}
	before := files()
	st, err := apiB.load(ctx, created.ID)
	if err != nil {
		t.Fatal(err)
	}
	st.Batch.Status = StatusInProgress
	late := &run{id: created.ID, st: st, epoch: 1}
	results := []*lineResult{{Index: 0, Line: json.RawMessage(`{"late":0}`), OK: true}, {Index: 1, Line: json.RawMessage(`{"late":1}`), OK: true}}
	if err := apiB.finalize(late, [][]byte{[]byte(`{}`), []byte(`{}`)}, results, StatusCompleted); !errors.Is(err, errSuperseded) {
		t.Fatalf("late finalize: %v, want errSuperseded", err)
	}
	after, err := b.Batches.Get(ctx, created.ID)
	if err != nil || after.OutputFileID != done.OutputFileID || after.Status != openai.BatchStatusCompleted {
		t.Fatalf("after a late finalize: %+v %v", after, err)
	}
	if n := files(); n != before {
		t.Fatalf("%d file objects after the late finalize, %d before", n, before)
	}
}

// TestBatchCancelWhileNobodyRunsIt: a cancel recorded after its runner
// died is carried out by the replica that takes the batch over.
func TestBatchCancelWhileNobodyRunsIt(t *testing.T) {
	eng := startEngine(t)
	eng.gate, eng.entered, eng.holdAfter = make(chan struct{}), make(chan struct{}, 1), 2
	stores := openShared(t, 2)
	lease, optsA := leaseOpts(testTTL)
	apiA, a := startAPI(t, HTTPBackend{URL: eng.url}, stores[0], optsA)
	apiB, b := startAPI(t, HTTPBackend{URL: eng.url}, stores[1], lease)
	created := create(t, a, upload(t, a, inputFile(5, nil)), "24h")
	<-eng.entered
	poll(t, b, created.ID, func(x *openai.Batch) bool { return x.RequestCounts.Completed == 2 })
	crash(apiA)
	releaseGate(eng)
	cb, err := b.Batches.Cancel(context.Background(), created.ID)
	if err != nil || cb.Status != openai.BatchStatusCancelling {
		t.Fatalf("cancel: %+v %v", cb, err)
	}
	apiB.Resume()
	got := poll(t, b, created.ID, terminal)
	if got.Status != openai.BatchStatusCancelled || got.RequestCounts.Completed != 2 || got.RequestCounts.Failed != 3 {
		t.Fatalf("cancelled after takeover: %+v", got)
	}
	if outs := content(t, b, got.OutputFileID); len(outs) != 2 {
		t.Fatalf("%d output lines, want the 2 committed", len(outs))
	}
	for i := 3; i < 5; i++ {
		if n := eng.sent(i); n != 0 {
			t.Errorf("line %d of a cancelled batch sent %d times", i, n)
		}
	}
}

// leaseOpts are the replicas' options with short lease intervals (ttl for
// the TTL), and the same for the replica whose progress a test follows line
// by line: one line in flight, each committed at once.
func leaseOpts(ttl time.Duration) (lease, oneByOne APIOptions) {
	lease = APIOptions{LeaseRenew: testRenew, LeaseTTL: ttl}
	oneByOne = lease
	oneByOne.Concurrency, oneByOne.FlushEvery = 1, 1
	return lease, oneByOne
}
