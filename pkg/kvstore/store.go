// Package kvstore keeps llmd-kn's objects in object storage through
// gocloud.dev/blob: a directory locally (file://, the default), S3 and
// S3-compatible servers (s3://), GCS (gs://) and Azure Blob (azblob://) in
// a cluster (import pkg/kvstore/drivers in the binary for those).
//
// Every object is framed with its length and a SHA-256 of its payload, so a
// torn, truncated or corrupt object is detected on read and never served
// (ErrCorrupt). Writes are atomic per object (each driver makes an object
// visible only when its writer closes); multi-object updates write their
// parts first and commit them with one small object last (see Manifest), so
// a reader sees the old state or the new, never half of one.
//
// Two users share it: KV blocks and their manifests (offload and restore;
// see layout.go), and batch state and files (pkg/batch). It knows nothing of
// either beyond the key layout and imports no HTTP server or Kubernetes code.
package kvstore

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"time"

	"gocloud.dev/blob"
	_ "gocloud.dev/blob/fileblob" // file://, the local default
	_ "gocloud.dev/blob/memblob"  // mem://, for tests and throwaway runs
	"gocloud.dev/gcerrors"
)

// Errors callers tell apart.
var (
	ErrNotFound = errors.New("kvstore: object not found")
	ErrCorrupt  = errors.New("kvstore: object corrupt")
	ErrTooLarge = errors.New("kvstore: object over the size limit")
	ErrExists   = errors.New("kvstore: object already exists")
)

// DefaultMaxObjectBytes bounds one object's payload unless Options say
// otherwise (256 MiB: a KV block of a large model is tens of MiB).
const DefaultMaxObjectBytes = 256 << 20

// Options configure a Store.
type Options struct {
	// MaxObjectBytes bounds one object's payload on write and read
	// (DefaultMaxObjectBytes).
	MaxObjectBytes int64
}

// Store is a bucket of framed, checksummed objects.
type Store struct {
	b   *blob.Bucket
	max int64
}

// Open opens a bucket URL (file:///dir, s3://bucket?region=..., gs://,
// azblob://, mem://) or, without a scheme, a local directory (created if
// missing).
func Open(ctx context.Context, urlOrDir string, opts Options) (*Store, error) {
	if urlOrDir == "" {
		return nil, errors.New("kvstore: empty storage URL")
	}
	u := urlOrDir
	if !strings.Contains(urlOrDir, "://") {
		dir, err := filepath.Abs(urlOrDir)
		if err != nil {
			return nil, fmt.Errorf("kvstore: %s: %w", urlOrDir, err)
		}
		if err := os.MkdirAll(dir, 0o755); err != nil {
			return nil, fmt.Errorf("kvstore: %w", err)
		}
		u = (&url.URL{Scheme: "file", Path: filepath.ToSlash(dir)}).String()
	}
	if strings.HasPrefix(u, "file://") && !strings.Contains(u, "metadata=") {
		// No sidecar attribute files: the frame carries what we need, and a
		// sidecar read while another writer rewrites it fails spuriously.
		if strings.Contains(u, "?") {
			u += "&metadata=skip"
		} else {
			u += "?metadata=skip"
		}
	}
	b, err := blob.OpenBucket(ctx, u)
	if err != nil {
		// The driver's message quotes the URL, whose query may hold secrets.
		return nil, fmt.Errorf("kvstore: open %s: %s", redact(u), strings.ReplaceAll(err.Error(), u, redact(u)))
	}
	return NewStore(b, opts), nil
}

// NewStore wraps an open bucket; the Store owns it from then on.
func NewStore(b *blob.Bucket, opts Options) *Store {
	if opts.MaxObjectBytes <= 0 {
		opts.MaxObjectBytes = DefaultMaxObjectBytes
	}
	return &Store{b: b, max: opts.MaxObjectBytes}
}

// redact drops a URL's query and user info, where credentials could hide.
func redact(s string) string {
	u, err := url.Parse(s)
	if err != nil {
		return "(unparsable URL)"
	}
	u.User, u.RawQuery = nil, ""
	return u.String()
}

// Close releases the bucket.
func (s *Store) Close() error { return s.b.Close() }

// MaxObjectBytes is the payload limit of one object.
func (s *Store) MaxObjectBytes() int64 { return s.max }

// CheckKey validates an object key: non-empty, slash-separated segments
// without empty, "." or ".." parts, printable ASCII.
func CheckKey(key string) error {
	if key == "" || len(key) > 1024 {
		return fmt.Errorf("kvstore: key %q: empty or over 1024 bytes", key)
	}
	for _, seg := range strings.Split(key, "/") {
		if seg == "" || seg == "." || seg == ".." {
			return fmt.Errorf("kvstore: key %q: empty, . or .. segment", key)
		}
	}
	for i := 0; i < len(key); i++ {
		if c := key[i]; c < 0x21 || c > 0x7e || c == '\\' {
			return fmt.Errorf("kvstore: key %q: byte %#x not allowed", key, c)
		}
	}
	return nil
}

// Put writes an object atomically, replacing any earlier one.
func (s *Store) Put(ctx context.Context, key string, payload []byte) error {
	return s.put(ctx, key, payload, false)
}

// PutIfAbsent writes an object only if the key is free (ErrExists
// otherwise). Drivers without conditional writes (S3 before its
// conditional-write support in the driver) return an error, not a silent
// overwrite: callers that need it should treat that as a failure.
func (s *Store) PutIfAbsent(ctx context.Context, key string, payload []byte) error {
	return s.put(ctx, key, payload, true)
}

func (s *Store) put(ctx context.Context, key string, payload []byte, ifNotExist bool) error {
	if err := CheckKey(key); err != nil {
		return err
	}
	if int64(len(payload)) > s.max {
		return fmt.Errorf("%w: %s is %d bytes, limit %d", ErrTooLarge, key, len(payload), s.max)
	}
	err := s.b.WriteAll(ctx, key, Frame(payload), &blob.WriterOptions{
		ContentType: "application/octet-stream",
		IfNotExist:  ifNotExist,
	})
	if err != nil {
		if gcerrors.Code(err) == gcerrors.FailedPrecondition {
			return fmt.Errorf("%w: %s", ErrExists, key)
		}
		return fmt.Errorf("kvstore: put %s: %w", key, err)
	}
	return nil
}

// Get reads and verifies an object: ErrNotFound if absent, ErrCorrupt if
// torn, truncated or altered, ErrTooLarge if over the limit.
func (s *Store) Get(ctx context.Context, key string) ([]byte, error) {
	if err := CheckKey(key); err != nil {
		return nil, err
	}
	r, err := s.b.NewReader(ctx, key, nil)
	if err != nil {
		if gcerrors.Code(err) == gcerrors.NotFound {
			return nil, fmt.Errorf("%w: %s", ErrNotFound, key)
		}
		return nil, fmt.Errorf("kvstore: get %s: %w", key, err)
	}
	defer r.Close()
	limit := s.max + headerLen
	if r.Size() > limit {
		return nil, fmt.Errorf("%w: %s is %d bytes, limit %d", ErrTooLarge, key, r.Size()-headerLen, s.max)
	}
	raw, err := io.ReadAll(io.LimitReader(r, limit+1))
	if err != nil {
		return nil, fmt.Errorf("kvstore: get %s: %w", key, err)
	}
	if int64(len(raw)) > limit {
		return nil, fmt.Errorf("%w: %s", ErrTooLarge, key)
	}
	payload, err := Unframe(raw)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", key, err)
	}
	return payload, nil
}

// GetRaw reads an object that was not written through a Store (so has no
// frame), such as files a person uploaded: ErrNotFound if absent,
// ErrTooLarge if over the limit. Nothing checks its integrity.
func (s *Store) GetRaw(ctx context.Context, key string) ([]byte, error) {
	if err := CheckKey(key); err != nil {
		return nil, err
	}
	r, err := s.b.NewReader(ctx, key, nil)
	if err != nil {
		if gcerrors.Code(err) == gcerrors.NotFound {
			return nil, fmt.Errorf("%w: %s", ErrNotFound, key)
		}
		return nil, fmt.Errorf("kvstore: get %s: %w", key, err)
	}
	defer r.Close()
	if r.Size() > s.max {
		return nil, fmt.Errorf("%w: %s is %d bytes, limit %d", ErrTooLarge, key, r.Size(), s.max)
	}
	raw, err := io.ReadAll(io.LimitReader(r, s.max+1))
	if err != nil {
		return nil, fmt.Errorf("kvstore: get %s: %w", key, err)
	}
	if int64(len(raw)) > s.max {
		return nil, fmt.Errorf("%w: %s", ErrTooLarge, key)
	}
	return raw, nil
}

// Exists reports whether an object is present (not whether it is intact).
func (s *Store) Exists(ctx context.Context, key string) (bool, error) {
	if err := CheckKey(key); err != nil {
		return false, err
	}
	ok, err := s.b.Exists(ctx, key)
	if err != nil {
		return false, fmt.Errorf("kvstore: exists %s: %w", key, err)
	}
	return ok, nil
}

// Delete removes an object; a missing one is not an error.
func (s *Store) Delete(ctx context.Context, key string) error {
	if err := CheckKey(key); err != nil {
		return err
	}
	if err := s.b.Delete(ctx, key); err != nil && gcerrors.Code(err) != gcerrors.NotFound {
		return fmt.Errorf("kvstore: delete %s: %w", key, err)
	}
	return nil
}

// Object is one listed object.
type Object struct {
	Key     string
	Size    int64 // payload bytes (the stored size less the frame)
	ModTime time.Time
}

// List returns the objects under a prefix (flat, sorted by key), at most
// limit of them (0: no limit).
func (s *Store) List(ctx context.Context, prefix string, limit int) ([]Object, error) {
	it := s.b.List(&blob.ListOptions{Prefix: prefix})
	var out []Object
	for {
		o, err := it.Next(ctx)
		if err == io.EOF {
			return out, nil
		}
		if err != nil {
			return out, fmt.Errorf("kvstore: list %s: %w", prefix, err)
		}
		if o.IsDir {
			continue
		}
		out = append(out, Object{Key: o.Key, Size: max(o.Size-headerLen, 0), ModTime: o.ModTime})
		if limit > 0 && len(out) >= limit {
			return out, nil
		}
	}
}

// The frame: magic, payload length (big endian), SHA-256 of the payload,
// payload.
var magic = [8]byte{'L', 'L', 'M', 'D', 'O', 'B', 'J', '1'}

const headerLen = 8 + 8 + sha256.Size

// Frame returns payload framed with its length and checksum.
func Frame(payload []byte) []byte {
	out := make([]byte, headerLen+len(payload))
	copy(out, magic[:])
	binary.BigEndian.PutUint64(out[8:], uint64(len(payload)))
	sum := sha256.Sum256(payload)
	copy(out[16:], sum[:])
	copy(out[headerLen:], payload)
	return out
}

// Unframe verifies a framed object and returns its payload (which aliases
// raw). Any mismatch is ErrCorrupt.
func Unframe(raw []byte) ([]byte, error) {
	if len(raw) < headerLen {
		return nil, fmt.Errorf("%w: %d bytes, shorter than the %d-byte header", ErrCorrupt, len(raw), headerLen)
	}
	if !bytes.Equal(raw[:8], magic[:]) {
		return nil, fmt.Errorf("%w: bad magic", ErrCorrupt)
	}
	n := binary.BigEndian.Uint64(raw[8:16])
	if n != uint64(len(raw)-headerLen) {
		return nil, fmt.Errorf("%w: header says %d payload bytes, found %d (truncated or torn)", ErrCorrupt, n, len(raw)-headerLen)
	}
	payload := raw[headerLen:]
	sum := sha256.Sum256(payload)
	if !bytes.Equal(sum[:], raw[16:headerLen]) {
		return nil, fmt.Errorf("%w: checksum mismatch", ErrCorrupt)
	}
	return payload, nil
}
