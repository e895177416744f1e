package kvstore

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

func openDir(t *testing.T, opts Options) (*Store, string) {
	t.Helper()
	dir := t.TempDir()
	s, err := Open(context.Background(), dir, opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = s.Close() })
	return s, dir
}

func TestRoundTrip(t *testing.T) {
	ctx := context.Background()
	for _, url := range []string{"", "mem://"} {
		name := url
		if name == "" {
			name = "dir"
		}
		t.Run(name, func(t *testing.T) {
			var s *Store
			if url == "" {
				s, _ = openDir(t, Options{})
			} else {
				var err error
				if s, err = Open(ctx, url, Options{}); err != nil {
					t.Fatal(err)
				}
			}
			for _, p := range [][]byte{{}, []byte("x"), bytes.Repeat([]byte("kv"), 1<<15)} {
				if err := s.Put(ctx, "a/b/c", p); err != nil {
					t.Fatal(err)
				}
				got, err := s.Get(ctx, "a/b/c")
				if err != nil || !bytes.Equal(got, p) {
					t.Fatalf("got %d bytes, %v; want %d", len(got), err, len(p))
				}
			}
			if _, err := s.Get(ctx, "a/missing"); !errors.Is(err, ErrNotFound) {
				t.Fatalf("missing: %v", err)
			}
			if err := s.PutIfAbsent(ctx, "a/b/c", []byte("y")); !errors.Is(err, ErrExists) {
				t.Fatalf("PutIfAbsent on a taken key: %v", err)
			}
			if err := s.Put(ctx, "a/d", []byte("12345")); err != nil {
				t.Fatal(err)
			}
			objs, err := s.List(ctx, "a/", 0)
			if err != nil || len(objs) != 2 || objs[0].Key != "a/b/c" || objs[1].Size != 5 {
				t.Fatalf("list: %+v %v", objs, err)
			}
			if err := s.Delete(ctx, "a/d"); err != nil {
				t.Fatal(err)
			}
			if err := s.Delete(ctx, "a/d"); err != nil {
				t.Fatalf("deleting a missing object: %v", err)
			}
		})
	}
}

// TestCorruptionNeverServed alters stored files in every way a torn write,
// a truncation or bit rot would, and checks each is refused.
func TestCorruptionNeverServed(t *testing.T) {
	ctx := context.Background()
	payload := bytes.Repeat([]byte("block"), 1000)
	cases := map[string]func([]byte) []byte{
		"truncated payload": func(b []byte) []byte { return b[:len(b)-7] },
		"truncated header":  func(b []byte) []byte { return b[:20] },
		"empty":             func([]byte) []byte { return nil },
		"flipped bit":       func(b []byte) []byte { b[len(b)/2] ^= 1; return b },
		"flipped checksum":  func(b []byte) []byte { b[20] ^= 0x80; return b },
		"appended garbage":  func(b []byte) []byte { return append(b, "tail"...) },
		"not framed":        func([]byte) []byte { return payload },
	}
	for name, mutate := range cases {
		t.Run(name, func(t *testing.T) {
			s, dir := openDir(t, Options{})
			if err := s.Put(ctx, "obj", payload); err != nil {
				t.Fatal(err)
			}
			path := filepath.Join(dir, "obj")
			raw, err := os.ReadFile(path)
			if err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(path, mutate(raw), 0o644); err != nil {
				t.Fatal(err)
			}
			got, err := s.Get(ctx, "obj")
			if !errors.Is(err, ErrCorrupt) || got != nil {
				t.Fatalf("got %d bytes, err %v; want ErrCorrupt", len(got), err)
			}
		})
	}
}

func TestSizeLimit(t *testing.T) {
	ctx := context.Background()
	s, dir := openDir(t, Options{MaxObjectBytes: 100})
	if err := s.Put(ctx, "big", make([]byte, 101)); !errors.Is(err, ErrTooLarge) {
		t.Fatalf("put: %v", err)
	}
	if err := s.Put(ctx, "ok", make([]byte, 100)); err != nil {
		t.Fatal(err)
	}
	// An object written by a store with a larger limit is refused, not read.
	if err := os.WriteFile(filepath.Join(dir, "huge"), Frame(make([]byte, 1000)), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Get(ctx, "huge"); !errors.Is(err, ErrTooLarge) {
		t.Fatalf("get: %v", err)
	}
}

func TestKeys(t *testing.T) {
	s, _ := openDir(t, Options{})
	for _, k := range []string{"", "/a", "a//b", "a/../b", "a/./b", "a b", "a\\b", "é", strings.Repeat("k", 1025)} {
		if err := s.Put(context.Background(), k, nil); err == nil {
			t.Errorf("key %q accepted", k)
		}
	}
}

func TestOpenErrors(t *testing.T) {
	ctx := context.Background()
	if _, err := Open(ctx, "", Options{}); err == nil {
		t.Fatal("empty URL accepted")
	}
	_, err := Open(ctx, "nosuch://bucket?secret=hunter2", Options{})
	if err == nil || strings.Contains(err.Error(), "hunter2") {
		t.Fatalf("unknown scheme: %v (the query must not be echoed)", err)
	}
}

func TestManifestCommit(t *testing.T) {
	ctx := context.Background()
	s, _ := openDir(t, Options{})
	sp := Space{Model: "meta-llama/Llama-3.1-8B-Instruct", Salt: "tenant-a"}
	m, err := s.LoadManifest(ctx, sp)
	if err != nil || len(m.Blocks) != 0 {
		t.Fatalf("empty space: %+v %v", m, err)
	}
	now := time.Date(2026, 12, 6, 12, 0, 0, 0, time.UTC)
	m.Blocks[BlockID(1)] = BlockEntry{Depth: 1, Bytes: 3, LastUse: now, Hits: 2}
	m.Blocks[BlockID(2)] = BlockEntry{Parent: BlockID(1), Depth: 2, Bytes: 3, LastUse: now, Hits: 1}
	// Objects first: a manifest naming a block that is not stored is refused.
	if err := s.PutBlock(ctx, sp, 1, []byte("one")); err != nil {
		t.Fatal(err)
	}
	if err := s.CommitManifest(ctx, sp, m); err == nil || !strings.Contains(err.Error(), BlockID(2)) {
		t.Fatalf("commit before block 2 was stored: %v", err)
	}
	if got, _ := s.LoadManifest(ctx, sp); len(got.Blocks) != 0 {
		t.Fatalf("a refused commit became visible: %+v", got)
	}
	if err := s.PutBlock(ctx, sp, 2, []byte("two")); err != nil {
		t.Fatal(err)
	}
	if err := s.CommitManifest(ctx, sp, m); err != nil {
		t.Fatal(err)
	}
	got, err := s.LoadManifest(ctx, sp)
	if err != nil || len(got.Blocks) != 2 || got.Bytes() != 6 || got.Model != sp.Model {
		t.Fatalf("loaded %+v %v", got, err)
	}
	if b, err := s.GetBlock(ctx, sp, 2); err != nil || string(b) != "two" {
		t.Fatalf("block 2: %q %v", b, err)
	}
	// Another salt is another space.
	if other, _ := s.LoadManifest(ctx, Space{Model: sp.Model, Salt: "tenant-b"}); len(other.Blocks) != 0 {
		t.Fatal("spaces with different salts share a manifest")
	}
	// The salt is never stored.
	objs, _ := s.List(ctx, "", 0)
	for _, o := range objs {
		raw, _ := s.Get(ctx, o.Key)
		if strings.Contains(o.Key+string(raw), "tenant-a") {
			t.Fatalf("salt stored in %s", o.Key)
		}
	}
}

// TestConcurrentWriters: several pods offload the same prefix at once;
// every reader sees an intact block and a committed manifest.
func TestConcurrentWriters(t *testing.T) {
	ctx := context.Background()
	s, _ := openDir(t, Options{})
	sp := Space{Model: "m"}
	data := bytes.Repeat([]byte{7}, 4096)
	var wg sync.WaitGroup
	errs := make(chan error, 8)
	for w := 0; w < 4; w++ {
		wg.Add(1)
		go func(w int) {
			defer wg.Done()
			for k := uint64(1); k <= 4; k++ {
				if err := s.PutBlock(ctx, sp, k, data); err != nil {
					errs <- err
					return
				}
			}
			m := &Manifest{Blocks: map[string]BlockEntry{}}
			for k := uint64(1); k <= 4; k++ {
				m.Blocks[BlockID(k)] = BlockEntry{Depth: int(k), Bytes: 4096, Hits: int64(w)}
			}
			errs <- s.CommitManifest(ctx, sp, m)
		}(w)
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	m, err := s.LoadManifest(ctx, sp)
	if err != nil || len(m.Blocks) != 4 {
		t.Fatalf("%+v %v", m, err)
	}
	for k := uint64(1); k <= 4; k++ {
		if b, err := s.GetBlock(ctx, sp, k); err != nil || !bytes.Equal(b, data) {
			t.Fatalf("block %d: %v", k, err)
		}
	}
}

func TestMerge(t *testing.T) {
	t0 := time.Unix(100, 0)
	a := &Manifest{Blocks: map[string]BlockEntry{"a": {Hits: 1, LastUse: t0}}}
	b := &Manifest{Blocks: map[string]BlockEntry{"a": {Hits: 2, LastUse: t0.Add(time.Second)}, "b": {Hits: 5}}}
	a.Merge(b)
	if a.Blocks["a"].Hits != 3 || !a.Blocks["a"].LastUse.Equal(t0.Add(time.Second)) || a.Blocks["b"].Hits != 5 {
		t.Fatalf("%+v", a.Blocks)
	}
}

func FuzzUnframe(f *testing.F) {
	f.Add(Frame([]byte("hello")))
	f.Add([]byte("LLMDOBJ1"))
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, raw []byte) {
		p, err := Unframe(raw)
		if err != nil {
			return
		}
		if !bytes.Equal(Frame(p), raw) {
			t.Fatalf("accepted a frame that does not re-encode to itself")
		}
	})
}

// TestGetRaw: files written by others (no frame) are read as they are,
// within the size limit.
func TestGetRaw(t *testing.T) {
	ctx := context.Background()
	s, dir := openDir(t, Options{MaxObjectBytes: 100})
	if err := os.MkdirAll(filepath.Join(dir, "models", "q"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "models", "q", "tokenizer.json"), []byte(`{"model":{}}`), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "big"), make([]byte, 101), 0o644); err != nil {
		t.Fatal(err)
	}
	if b, err := s.GetRaw(ctx, "models/q/tokenizer.json"); err != nil || string(b) != `{"model":{}}` {
		t.Fatalf("GetRaw = %q, %v", b, err)
	}
	if _, err := s.GetRaw(ctx, "big"); !errors.Is(err, ErrTooLarge) {
		t.Fatalf("over the limit: %v", err)
	}
	if _, err := s.GetRaw(ctx, "models/q/absent"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("absent: %v", err)
	}
	if _, err := s.GetRaw(ctx, "../etc/passwd"); err == nil {
		t.Fatal("a key out of the bucket: want an error")
	}
}
