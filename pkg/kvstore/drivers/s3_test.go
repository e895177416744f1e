package drivers_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/llmd-kn/llmd-kn/pkg/kvstore"
	_ "github.com/llmd-kn/llmd-kn/pkg/kvstore/drivers"
	"github.com/llmd-kn/llmd-kn/pkg/vllmsim"
)

// versitygw runs a real S3-compatible server (github.com/versity/versitygw,
// built from Go modules by `hack/build-k8s.sh versitygw`, part of `all`,
// into $KUBEBUILDER_ASSETS, default _output/k8s/bin) on a loopback port over a POSIX directory, with
// one bucket, and returns the bucket's URL for kvstore and the directory
// that holds its objects. Without the binary the test is skipped, unless
// LLMD_REQUIRE_S3=1.
func versitygw(t *testing.T) (url, bucketDir string) {
	t.Helper()
	dir := os.Getenv("KUBEBUILDER_ASSETS")
	if dir == "" {
		dir = "../../../_output/k8s/bin"
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
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	const access, secret = "llmdtestaccess", "llmdtestsecret"
	ctx, cancel := context.WithCancel(context.Background())
	cmd := exec.CommandContext(ctx, bin, "--access", access, "--secret", secret, "--port", addr, "posix", "--nometa", root)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
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
			io.Copy(io.Discard, resp.Body)
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

// TestS3RoundTrip: framed objects and the KV layout through a real S3
// server; an object altered on the server's disk is detected, never served.
func TestS3RoundTrip(t *testing.T) {
	url, dir := versitygw(t)
	ctx := context.Background()
	st, err := kvstore.Open(ctx, url, kvstore.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	payload := bytes.Repeat([]byte("kv block "), 4096)
	if err := st.Put(ctx, "a/b", payload); err != nil {
		t.Fatal(err)
	}
	if got, err := st.Get(ctx, "a/b"); err != nil || !bytes.Equal(got, payload) {
		t.Fatalf("got %d bytes, %v", len(got), err)
	}
	if _, err := st.Get(ctx, "a/missing"); !errors.Is(err, kvstore.ErrNotFound) {
		t.Fatalf("missing object: %v", err)
	}
	sp := kvstore.Space{Model: "demo"}
	m := &kvstore.Manifest{Blocks: map[string]kvstore.BlockEntry{}}
	parent := ""
	for i, k := range []uint64{0x1111, 0x2222, 0x3333} {
		if err := st.PutBlock(ctx, sp, k, []byte(fmt.Sprint(k))); err != nil {
			t.Fatal(err)
		}
		m.Blocks[kvstore.BlockID(k)] = kvstore.BlockEntry{Parent: parent, Depth: i + 1, Bytes: 10, Hits: 1}
		parent = kvstore.BlockID(k)
	}
	if err := st.CommitManifest(ctx, sp, m); err != nil {
		t.Fatal(err)
	}
	back, err := st.LoadManifest(ctx, sp)
	if err != nil || len(back.Blocks) != 3 {
		t.Fatalf("manifest %+v, %v", back, err)
	}
	// Alter the object where the server keeps it.
	path := filepath.Join(dir, "a", "b")
	raw, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("the server's object file: %v", err)
	}
	raw[len(raw)-1] ^= 1
	if err := os.WriteFile(path, raw, 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := st.Get(ctx, "a/b"); !errors.Is(err, kvstore.ErrCorrupt) {
		t.Fatalf("altered object: %v, want ErrCorrupt", err)
	}
}

// TestS3OffloadRestore: a simulated replica flushes its KV into the S3
// server and a fresh one restores it on demand.
func TestS3OffloadRestore(t *testing.T) {
	url, _ := versitygw(t)
	kc := vllmsim.KVOffloadConfig{Mode: "on-scale-down", URI: url, PayloadScale: 1.0 / 1024, Deadline: 20 * time.Second}
	start := func() (*vllmsim.Server, string) {
		s, err := vllmsim.New(vllmsim.Config{KVOffload: kc, TimeScale: 0.02, Logger: slog.New(slog.DiscardHandler)})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { s.Close() })
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithCancel(context.Background())
		t.Cleanup(cancel)
		go s.Serve(ctx, ln)
		return s, "http://" + ln.Addr().String()
	}
	prompt := strings.Repeat("a long shared system prompt for every conversation ", 60)
	send := func(base string) int {
		resp, err := http.Post(base+"/v1/completions", "application/json",
			strings.NewReader(fmt.Sprintf(`{"model":"demo","prompt":%q,"max_tokens":1}`, prompt)))
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		var r struct {
			Usage struct {
				PromptTokensDetails struct {
					CachedTokens int `json:"cached_tokens"`
				} `json:"prompt_tokens_details"`
			}
		}
		if resp.StatusCode != 200 {
			b, _ := io.ReadAll(resp.Body)
			t.Fatalf("%s: %s", resp.Status, b)
		}
		if err := json.NewDecoder(resp.Body).Decode(&r); err != nil {
			t.Fatal(err)
		}
		return r.Usage.PromptTokensDetails.CachedTokens
	}
	a, aURL := start()
	send(aURL)
	res, err := a.Flush(context.Background())
	if err != nil || res.Written == 0 || res.Committed != res.Written {
		t.Fatalf("flush %+v, %v", res, err)
	}
	_, bURL := start()
	if cached := send(bURL); cached != res.Written*16 {
		t.Fatalf("restored %d tokens, want the %d flushed blocks", cached, res.Written)
	}
}
