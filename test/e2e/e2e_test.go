// Package e2e_test is llmd-kn's end-to-end tier: a Knative control plane in
// a box, driven with kn as a user would.
//
// One TestMain starts, as host processes with free ports and a temp folder,
// etcd and kube-apiserver (envtest), kube-controller-manager (garbage
// collection, Deployments, ReplicaSets; no node lifecycle), kube-scheduler,
// kwok with a fake node that has nvidia.com/gpu allocatable, Knative
// Serving's controller and webhook, llmd-kn's webhook (reached through a
// selector-less Service whose EndpointSlice names this host, with the
// webhook configurations of config/webhook), llmd-kn's autoscaler (with a
// short scale-to-zero grace period) and llmd-kn's activator in cluster mode
// (its own identity with config/activator's RBAC; the llmd-activator
// Service's EndpointSlice names this host, so every revision Service the
// autoscaler makes points at it). Every process is stopped by PID at the
// end (SIGTERM, then SIGKILL after a grace period; components first, then
// kube-apiserver and etcd), also when a test fails or panics; a small
// reaper process kills their process groups if this binary itself dies (a
// -timeout alarm, a signal).
//
// The binaries come from `hack/build-k8s.sh all`; llmd-kn's own are built
// from this checkout. It runs only with LLMD_E2E=1 (make e2e, part of make
// test), since it needs several minutes of CPU on a cold machine:
//
//	hack/build-k8s.sh all
//	LLMD_E2E=1 go test -count=1 -v ./test/e2e
//
// LLMD_E2E_KEEP=1 keeps the components' logs (their folder is printed).
package e2e_test

import (
	"context"
	"net/http"
	"os"
	"runtime/debug"
	"testing"
	"time"
)

// testImage names a vLLM image without a registry host; nothing pulls it
// (kwok runs the pods) and Knative is told not to resolve its tag.
const testImage = "vllm/vllm-openai:v0.11.0"

var (
	shared     *cluster
	startErr   error
	httpClient = &http.Client{Timeout: 10 * time.Second}
)

func TestMain(m *testing.M) {
	os.Exit(run(m))
}

func run(m *testing.M) (code int) {
	if os.Getenv("LLMD_E2E") != "1" {
		// The tests skip with the reason.
		return m.Run()
	}
	start := time.Now()
	shared = &cluster{}
	failed := true
	// Stop every process even when a test panics: m.Run does not return
	// then, but deferred calls of this goroutine still run.
	defer func() {
		keep := failed || os.Getenv("LLMD_E2E_KEEP") == "1"
		shared.stop(keep)
		logf("%-48s %6.1fs", "whole run", time.Since(start).Seconds())
	}()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	startErr = startCluster(ctx, shared)
	cancel()
	if startErr == nil {
		logf("%-48s %6.1fs", "control plane up", time.Since(start).Seconds())
	}
	code = m.Run()
	failed = code != 0
	return code
}

// controlPlane returns the shared cluster, or skips when the tier is not
// enabled (`make unit` runs every package, this one included, without
// LLMD_E2E; `make e2e` sets it, and then nothing skips: a missing binary is
// a failure).
func controlPlane(t *testing.T) *cluster {
	t.Helper()
	if shared == nil {
		t.Skip("end-to-end tier: set LLMD_E2E=1 (make e2e) to run it")
	}
	if startErr != nil {
		t.Fatalf("control plane: %v", startErr)
	}
	return shared
}

// step runs one named step of a scenario as a subtest and logs its time.
func step(t *testing.T, name string, f func(t *testing.T)) bool {
	t.Helper()
	start := time.Now()
	ok := t.Run(name, func(t *testing.T) {
		// A panic becomes a failure, so that TestMain still stops every
		// process (a panic would end the binary from this goroutine).
		defer func() {
			if r := recover(); r != nil {
				t.Fatalf("panic: %v\n%s", r, debug.Stack())
			}
		}()
		f(t)
	})
	t.Logf("step %-40s %6.1fs", name, time.Since(start).Seconds())
	return ok
}
