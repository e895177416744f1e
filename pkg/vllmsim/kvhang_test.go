package vllmsim_test

import (
	"context"
	"testing"
	"time"

	"github.com/llmd-kn/llmd-kn/internal/testutil"
	_ "github.com/llmd-kn/llmd-kn/pkg/kvstore/drivers" // s3://
	"github.com/llmd-kn/llmd-kn/pkg/vllmsim"
)

// TestKVOffloadStorageHangs: with a storage server that accepts and never
// answers, a request's restore gives up at its bound and the prompt is
// computed without an error to the client, and a flush returns within its
// deadline (so the replica exits within it), the failure counted as a
// deadline.
func TestKVOffloadStorageHangs(t *testing.T) {
	uri := testutil.HangingS3(t)
	const deadline = 2 * time.Second
	s := offloadSim(t, uri, func(c *vllmsim.KVOffloadConfig) { c.Deadline = deadline })

	if _, cached := completeCached(t, s, offloadPrompt); cached != 0 {
		t.Fatalf("cached %d with storage hanging", cached)
	}
	if got := valueOr0(t, s, "llmd_kv_offload_errors_total", "op", "restore", "kind", "deadline"); got != 1 {
		t.Fatalf("restore deadline errors %v, want 1", got)
	}
	// The next request skips storage for a while (no second wait).
	if _, cached := completeCached(t, s, offloadPrompt); cached == 0 {
		t.Fatal("the repeated prompt missed the GPU cache")
	}

	done := make(chan error, 1)
	go func() {
		_, err := s.Flush(context.Background())
		done <- err
	}()
	// The bound is the deadline plus slack for a stalled machine: a hang
	// detector, not a timing claim.
	select {
	case err := <-done:
		if err == nil {
			t.Fatal("flush to a hanging server succeeded")
		}
	case <-time.After(deadline + 30*time.Second):
		t.Fatalf("flush still running %v after its %v deadline", 30*time.Second, deadline)
	}
	if got := valueOr0(t, s, "llmd_kv_offload_errors_total", "op", "flush", "kind", "deadline"); got < 1 {
		t.Fatalf("flush deadline errors %v, want at least 1", got)
	}
}
