package kvstore

import (
	"context"
	"errors"
	"slices"
	"testing"
)

// SpaceKeys finds every stored space (not its blocks), and LoadManifestOf
// reads one by key: how a reader that knows only the model finds its
// spaces, whose salts are never stored.
func TestSpaceKeys(t *testing.T) {
	ctx := context.Background()
	s, _ := openDir(t, Options{})
	spaces := []Space{{Model: "m"}, {Model: "m", LoRA: "a"}, {Model: "m", Salt: "tenant"}}
	for _, sp := range spaces {
		if err := s.PutBlock(ctx, sp, 7, []byte("kv")); err != nil {
			t.Fatal(err)
		}
		m := &Manifest{Blocks: map[string]BlockEntry{BlockID(7): {Depth: 1, Bytes: 2, Tokens: []uint32{1, 2}}}}
		if err := s.CommitManifest(ctx, sp, m); err != nil {
			t.Fatal(err)
		}
	}
	// A space with blocks and no manifest yet.
	if err := s.PutBlock(ctx, Space{Model: "other"}, 1, []byte("kv")); err != nil {
		t.Fatal(err)
	}
	keys, err := s.SpaceKeys(ctx, 0)
	if err != nil {
		t.Fatal(err)
	}
	for _, sp := range append(spaces, Space{Model: "other"}) {
		if !slices.Contains(keys, sp.Key()) {
			t.Errorf("space %+v (%s) not listed: %v", sp, sp.Key(), keys)
		}
	}
	if len(keys) != 4 {
		t.Errorf("listed %d spaces, want 4: %v", len(keys), keys)
	}
	if got, _ := s.SpaceKeys(ctx, 2); len(got) != 2 {
		t.Errorf("limit 2 listed %d", len(got))
	}
	for _, sp := range spaces {
		m, err := s.LoadManifestOf(ctx, sp.Key())
		if err != nil || m.Model != "m" || m.LoRA != sp.LoRA || len(m.Blocks[BlockID(7)].Tokens) != 2 {
			t.Errorf("manifest of %+v: %+v, %v", sp, m, err)
		}
	}
	if _, err := s.LoadManifestOf(ctx, Space{Model: "other"}.Key()); !errors.Is(err, ErrNotFound) {
		t.Errorf("a space without a manifest: %v, want ErrNotFound", err)
	}
	if err := s.Put(ctx, "kv/"+spaces[0].Key()+"/manifest", []byte("{")); err != nil {
		t.Fatal(err)
	}
	if _, err := s.LoadManifestOf(ctx, spaces[0].Key()); !errors.Is(err, ErrCorrupt) {
		t.Errorf("a manifest that does not parse: %v, want ErrCorrupt", err)
	}
}
