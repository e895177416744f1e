package kvstore

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"sort"
	"strconv"
	"strings"
	"time"

	"gocloud.dev/blob"
)

// The KV layout, per model space (model, LoRA adapter, cache salt):
//
//	kv/<space>/blocks/<block key, 16 hex digits>   one KV block's bytes
//	kv/<space>/manifest                            the committed index
//
// Blocks are content-addressed by the chained block key (the key of a
// block determines its tokens and those of its whole prefix), so two pods
// writing the same prefix write the same objects and neither can spoil the
// other's. A block becomes visible to readers only when a manifest that
// names it is committed, and a manifest is committed only after every block
// it names is stored.

// ManifestVersion is the manifest format this package writes and reads.
const ManifestVersion = 1

// Space names one model's KV namespace. The salt is hashed into the
// space's key and never stored.
type Space struct {
	Model string
	LoRA  string
	Salt  string
}

// Key is the space's directory name: a hash, so a model name with any
// characters (or a secret salt) makes a safe, opaque key.
func (sp Space) Key() string {
	h := sha256.Sum256([]byte(sp.Model + "\x00" + sp.LoRA + "\x00" + sp.Salt))
	return hex.EncodeToString(h[:12])
}

func (sp Space) blockKey(k uint64) string {
	return "kv/" + sp.Key() + "/blocks/" + fmt.Sprintf("%016x", k)
}

func (sp Space) manifestKey() string { return "kv/" + sp.Key() + "/manifest" }

// Manifest is the committed index of a space's stored blocks.
type Manifest struct {
	Version int                   `json:"version"`
	Model   string                `json:"model"`
	LoRA    string                `json:"lora,omitempty"`
	Blocks  map[string]BlockEntry `json:"blocks"` // by block key in hex
}

// BlockEntry describes one stored block.
type BlockEntry struct {
	Parent  string    `json:"parent,omitempty"` // the previous block's key in the chain, "" at the root
	Depth   int       `json:"depth"`            // position in its chain, from 1
	Bytes   int64     `json:"bytes"`
	LastUse time.Time `json:"lastUse"`
	Hits    int64     `json:"hits"`
	// Tokens are the block's token ids, when the writer kept them: a
	// replica that prefetches the block announces it with them in its KV
	// events (a router indexes blocks by their tokens). Like the KV itself,
	// they are the prompts' content: storage holds both.
	Tokens []uint32 `json:"tokens,omitempty"`
}

// BlockID formats a block key as the manifest does.
func BlockID(k uint64) string { return fmt.Sprintf("%016x", k) }

// ParseBlockID reads a manifest block key.
func ParseBlockID(s string) (uint64, error) {
	if len(s) != 16 {
		return 0, fmt.Errorf("kvstore: block id %q: want 16 hex digits", s)
	}
	return strconv.ParseUint(s, 16, 64)
}

// PutBlock stores one block's bytes (not yet visible: commit a manifest).
func (s *Store) PutBlock(ctx context.Context, sp Space, key uint64, data []byte) error {
	return s.Put(ctx, sp.blockKey(key), data)
}

// GetBlock reads one block, verified.
func (s *Store) GetBlock(ctx context.Context, sp Space, key uint64) ([]byte, error) {
	return s.Get(ctx, sp.blockKey(key))
}

// LoadManifest reads a space's manifest; a space with none yet has an
// empty one.
func (s *Store) LoadManifest(ctx context.Context, sp Space) (*Manifest, error) {
	raw, err := s.Get(ctx, sp.manifestKey())
	if errors.Is(err, ErrNotFound) {
		return &Manifest{Version: ManifestVersion, Model: sp.Model, LoRA: sp.LoRA, Blocks: map[string]BlockEntry{}}, nil
	}
	if err != nil {
		return nil, err
	}
	return parseManifest(raw, sp.Model)
}

func parseManifest(raw []byte, name string) (*Manifest, error) {
	var m Manifest
	if err := json.Unmarshal(raw, &m); err != nil {
		return nil, fmt.Errorf("%w: manifest of %s: %v", ErrCorrupt, name, err)
	}
	if m.Version != ManifestVersion {
		return nil, fmt.Errorf("kvstore: manifest of %s has version %d, this build reads %d", name, m.Version, ManifestVersion)
	}
	if m.Blocks == nil {
		m.Blocks = map[string]BlockEntry{}
	}
	return &m, nil
}

// SpaceKeys lists the keys (Space.Key) of the spaces stored, sorted, at
// most limit of them (0: no limit). A reader that knows a model but not
// the rest of its spaces' names (the salt is never stored) finds them so,
// and tells them apart by their manifests' Model and LoRA.
func (s *Store) SpaceKeys(ctx context.Context, limit int) ([]string, error) {
	it := s.b.List(&blob.ListOptions{Prefix: "kv/", Delimiter: "/"})
	var out []string
	for {
		o, err := it.Next(ctx)
		if err == io.EOF {
			return out, nil
		}
		if err != nil {
			return out, fmt.Errorf("kvstore: list spaces: %w", err)
		}
		if !o.IsDir {
			continue
		}
		k := strings.TrimSuffix(strings.TrimPrefix(o.Key, "kv/"), "/")
		if k == "" || CheckKey("kv/"+k+"/manifest") != nil {
			continue
		}
		out = append(out, k)
		if limit > 0 && len(out) >= limit {
			return out, nil
		}
	}
}

// LoadManifestOf reads the manifest of the space with key spaceKey;
// ErrNotFound when it has none.
func (s *Store) LoadManifestOf(ctx context.Context, spaceKey string) (*Manifest, error) {
	raw, err := s.Get(ctx, "kv/"+spaceKey+"/manifest")
	if err != nil {
		return nil, err
	}
	return parseManifest(raw, "space "+spaceKey)
}

// CommitManifest publishes a manifest after checking that every block it
// names is stored (objects first, commit last). Concurrent committers
// should load, Merge and commit: the last commit wins, and since blocks are
// content-addressed a lost entry only costs a recomputation.
func (s *Store) CommitManifest(ctx context.Context, sp Space, m *Manifest) error {
	ids := make([]string, 0, len(m.Blocks))
	for id := range m.Blocks {
		ids = append(ids, id)
	}
	sort.Strings(ids)
	for _, id := range ids {
		k, err := ParseBlockID(id)
		if err != nil {
			return err
		}
		ok, err := s.Exists(ctx, sp.blockKey(k))
		if err != nil {
			return err
		}
		if !ok {
			return fmt.Errorf("kvstore: manifest of %s names block %s, which is not stored", sp.Model, id)
		}
	}
	m.Version, m.Model, m.LoRA = ManifestVersion, sp.Model, sp.LoRA
	raw, err := json.Marshal(m)
	if err != nil {
		return fmt.Errorf("kvstore: manifest of %s: %w", sp.Model, err)
	}
	return s.Put(ctx, sp.manifestKey(), raw)
}

// Merge folds other's entries into m: hits add up, the later use wins.
func (m *Manifest) Merge(other *Manifest) {
	if m.Blocks == nil {
		m.Blocks = map[string]BlockEntry{}
	}
	for id, e := range other.Blocks {
		cur, ok := m.Blocks[id]
		if !ok {
			m.Blocks[id] = e
			continue
		}
		cur.Hits += e.Hits
		if e.LastUse.After(cur.LastUse) {
			cur.LastUse = e.LastUse
		}
		if len(cur.Tokens) == 0 {
			cur.Tokens = e.Tokens
		}
		m.Blocks[id] = cur
	}
}

// Bytes is the total size of the blocks a manifest names.
func (m *Manifest) Bytes() int64 {
	var n int64
	for _, e := range m.Blocks {
		n += e.Bytes
	}
	return n
}
