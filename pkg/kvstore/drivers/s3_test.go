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
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/llmd-kn/llmd-kn/internal/testutil"
	"github.com/llmd-kn/llmd-kn/pkg/kvstore"
	_ "github.com/llmd-kn/llmd-kn/pkg/kvstore/drivers"
	"github.com/llmd-kn/llmd-kn/pkg/vllmsim"
)

// TestS3RoundTrip: framed objects and the KV layout through a real S3
// server; an object altered on the server's disk is detected, never served.
func TestS3RoundTrip(t *testing.T) {
	url, dir := testutil.VersityGW(t)
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
	url, _ := testutil.VersityGW(t)
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
