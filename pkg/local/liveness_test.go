package local

import (
	"context"
	"net/http"
	"net/http/httptest"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/goleak"
)

// A ready pod that stops answering /health (frozen: SIGSTOP, a hung
// engine) is reported after the configured failures in a row, so that the
// runtime replaces it (issue 17, failure 5: the local runtime never did);
// failures that are not in a row are not.
func TestLivenessReportsAFrozenPod(t *testing.T) {
	defer goleak.VerifyNone(t, goleak.IgnoreCurrent())
	release := make(chan struct{})
	// script: true answers 200, false fails (a 503, or when stall, no
	// answer at all).
	serve := func(stall bool, script func(n int64) bool) (*httptest.Server, *atomic.Int64) {
		var n atomic.Int64
		srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if script(n.Add(1)) {
				return
			}
			if !stall {
				w.WriteHeader(http.StatusServiceUnavailable)
				return
			}
			select {
			case <-release:
			case <-r.Context().Done():
			}
		}))
		return srv, &n
	}
	frozen, _ := serve(true, func(int64) bool { return false })
	defer frozen.Close()
	// Two failures, a success, two failures, then healthy: never three in a row.
	flaky, probes := serve(false, func(n int64) bool { return n == 3 || n > 5 })
	defer flaky.Close()
	defer close(release)

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	select {
	case err := <-watchLiveness(ctx, frozen.URL, 5*time.Millisecond, 20*time.Millisecond, 3):
		if err == nil {
			t.Fatal("the frozen pod's watch ended without an error")
		}
	case <-time.After(30 * time.Second): // a hang guard, not a threshold
		t.Fatal("a frozen pod was never reported")
	}

	fctx, fcancel := context.WithCancel(context.Background())
	ch := watchLiveness(fctx, flaky.URL, 5*time.Millisecond, 30*time.Second, 3)
	for deadline := time.Now().Add(30 * time.Second); probes.Load() < 8; time.Sleep(5 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("the flaky pod was not probed 8 times")
		}
	}
	fcancel()
	if err := <-ch; err != nil {
		t.Fatalf("failures not in a row reported: %v", err)
	}
}
