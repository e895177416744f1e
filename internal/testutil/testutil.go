// Package testutil holds small helpers that tests across llmd-kn share. It
// is test support only; it imports nothing of llmd-kn.
package testutil

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"testing"
	"time"
)

// SyncBuffer is a bytes.Buffer that a logger (or a child process's output)
// and a test may use at once.
type SyncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *SyncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

// String returns what has been written so far.
func (s *SyncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// FreeAddr returns a loopback address that was free a moment ago, for a
// server a test starts by address.
func FreeAddr(t testing.TB) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

// HangingS3 starts a storage server on loopback that accepts connections
// and never answers (a wedged gateway, a route black-holed after the
// handshake) and returns an s3:// URL for it, with throwaway credentials
// in the environment (t.Setenv: not for parallel tests). The caller's
// binary must import pkg/kvstore/drivers.
func HangingS3(t testing.TB) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	var conns []net.Conn
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns = append(conns, c)
			mu.Unlock()
			go func() { _, _ = io.Copy(io.Discard, c) }()
		}
	}()
	t.Cleanup(func() {
		ln.Close()
		mu.Lock()
		defer mu.Unlock()
		for _, c := range conns {
			c.Close()
		}
	})
	none := filepath.Join(t.TempDir(), "none")
	t.Setenv("AWS_ACCESS_KEY_ID", "test")
	t.Setenv("AWS_SECRET_ACCESS_KEY", "test-secret")
	t.Setenv("AWS_EC2_METADATA_DISABLED", "true")
	t.Setenv("AWS_CONFIG_FILE", none)
	t.Setenv("AWS_SHARED_CREDENTIALS_FILE", none)
	return "s3://kvtest?endpoint=http://" + ln.Addr().String() + "&region=us-east-1&use_path_style=true"
}

// VersityGW runs a real S3-compatible server (github.com/versity/versitygw,
// built from Go modules by `hack/build-k8s.sh versitygw`, part of `all`,
// into $KUBEBUILDER_ASSETS, default _output/k8s/bin at the module root) on
// a loopback port over a POSIX directory, with one bucket, and returns the
// bucket's s3:// URL and the directory that holds its objects, with the
// credentials in the environment (t.Setenv: not for parallel tests). The
// caller's binary must import pkg/kvstore/drivers. Without the binary the
// test is skipped, unless LLMD_REQUIRE_S3=1.
func VersityGW(t *testing.T) (url, bucketDir string) {
	t.Helper()
	dir := os.Getenv("KUBEBUILDER_ASSETS")
	if dir == "" {
		dir = filepath.Join(moduleRoot(t), "_output", "k8s", "bin")
	}
	bin, _ := filepath.Abs(filepath.Join(dir, "versitygw"))
	if _, err := os.Stat(bin); err != nil {
		if os.Getenv("LLMD_REQUIRE_S3") == "1" {
			t.Fatalf("versitygw binary %s: %v (hack/build-k8s.sh versitygw builds it)", bin, err)
		}
		t.Skipf("no versitygw binary at %s (hack/build-k8s.sh versitygw builds it; LLMD_REQUIRE_S3=1 makes this a failure)", bin)
	}
	root := t.TempDir()
	bucketDir = filepath.Join(root, "kvtest")
	if err := os.Mkdir(bucketDir, 0o755); err != nil {
		t.Fatal(err)
	}
	addr := FreeAddr(t)
	const access, secret = "llmdtestaccess", "llmdtestsecret"
	ctx, cancel := context.WithCancel(context.Background())
	cmd := exec.CommandContext(ctx, bin, "--access", access, "--secret", secret, "--port", addr, "posix", "--nometa", root)
	out := &SyncBuffer{}
	cmd.Stdout, cmd.Stderr = out, out
	if err := cmd.Start(); err != nil {
		cancel()
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cancel()
		_ = cmd.Wait()
		if t.Failed() {
			t.Logf("versitygw output:\n%s", out.String())
		}
	})
	deadline := time.Now().Add(20 * time.Second)
	for {
		resp, err := http.Get("http://" + addr + "/")
		if err == nil {
			_, _ = io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("versitygw did not answer on %s: %v\n%s", addr, err, out.String())
		}
		time.Sleep(50 * time.Millisecond)
	}
	// The s3 driver reads credentials from the SDK's usual environment.
	t.Setenv("AWS_ACCESS_KEY_ID", access)
	t.Setenv("AWS_SECRET_ACCESS_KEY", secret)
	t.Setenv("AWS_EC2_METADATA_DISABLED", "true")
	t.Setenv("AWS_CONFIG_FILE", filepath.Join(root, "none"))
	t.Setenv("AWS_SHARED_CREDENTIALS_FILE", filepath.Join(root, "none"))
	// versitygw sends no response checksums: without
	// response_checksum_validation=when_required the SDK logs that on
	// every read.
	return fmt.Sprintf("s3://kvtest?endpoint=http://%s&region=us-east-1&use_path_style=true&response_checksum_validation=when_required", addr), bucketDir
}

// moduleRoot is the directory of the go.mod above the test's directory.
func moduleRoot(t *testing.T) string {
	t.Helper()
	dir, err := os.Getwd()
	if err != nil {
		t.Fatal(err)
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			return dir
		}
		up := filepath.Dir(dir)
		if up == dir {
			t.Fatal("no go.mod above the test's directory")
		}
		dir = up
	}
}
