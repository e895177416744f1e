package activator

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"time"

	"github.com/llmd-kn/llmd-kn/pkg/kvstore"
	"github.com/llmd-kn/llmd-kn/pkg/router"
)

// The router's view of shared KV storage. For a revision that offloads KV
// (llm-d.ai/kv-offload), the activator reads the manifests of the
// revision's model in its storage at a bounded interval and feeds the
// differences into the revision's router as KV events of the storage
// pseudo-endpoint (router.ApplyStorage): every pod can restore those
// blocks, at storage cost. A manifest names each block's parent and keeps
// its token ids, from which the router computes its own keys, as it does
// for the pods' KV events.

// Bounds on what one poll reads: manifests are outside input.
const (
	// DefaultKVStoragePoll is how often a revision's manifests are read.
	DefaultKVStoragePoll = 10 * time.Second
	// MaxStorageBlocks bounds the blocks the router learns from storage per
	// revision (all its spaces together); a poll over it is refused.
	MaxStorageBlocks = 1 << 20
	// maxStorageSpaces bounds the spaces listed per poll.
	maxStorageSpaces = 256
	// maxBlockTokens bounds a stored block's token ids.
	maxBlockTokens = 4096
	// storagePollTimeout bounds one poll (a storage server that does not
	// answer holds the feed no longer), or three intervals when shorter
	// (at least a second).
	storagePollTimeout = 30 * time.Second
)

// ErrManifest: a manifest the feed cannot use.
var ErrManifest = errors.New("activator: KV storage manifest")

// storedBlock is what the feed keeps of one block it fed.
type storedBlock struct{}

// ManifestEvents returns the router events that change what the router
// holds for storage (held, by engine block key) into what the manifests
// name, and the new holdings. Blocks without token ids cannot be indexed
// and are left out (with their descendants, which the router then cannot
// place). It validates the manifests as outside input: block ids and
// parents must parse, depths be in [1, MaxStorageBlocks], token ids be
// one length per manifest and at most maxBlockTokens, and the blocks with
// tokens number at most maxBlocks; otherwise it returns an error and no
// events.
func ManifestEvents(held map[uint64]storedBlock, ms []*kvstore.Manifest, maxBlocks int) ([]router.KVEvent, map[uint64]storedBlock, error) {
	type add struct {
		key, parent uint64
		hasParent   bool
		depth       int
		tokens      []uint32
		lora        string
	}
	next := make(map[uint64]storedBlock, len(held))
	var adds []add
	for _, m := range ms {
		bs := 0
		for id, e := range m.Blocks {
			k, err := kvstore.ParseBlockID(id)
			if err != nil {
				return nil, nil, fmt.Errorf("%w of %s: %v", ErrManifest, m.Model, err)
			}
			if e.Depth < 1 || e.Depth > MaxStorageBlocks {
				return nil, nil, fmt.Errorf("%w of %s: block %s has depth %d, want [1, %d]", ErrManifest, m.Model, id, e.Depth, MaxStorageBlocks)
			}
			a := add{key: k, depth: e.Depth, tokens: e.Tokens, lora: m.LoRA}
			if e.Parent != "" {
				if a.parent, err = kvstore.ParseBlockID(e.Parent); err != nil {
					return nil, nil, fmt.Errorf("%w of %s: block %s's parent: %v", ErrManifest, m.Model, id, err)
				}
				a.hasParent = true
			}
			if len(e.Tokens) == 0 {
				continue
			}
			if bs == 0 {
				bs = len(e.Tokens)
			}
			if len(e.Tokens) != bs || bs > maxBlockTokens {
				return nil, nil, fmt.Errorf("%w of %s: block %s has %d token ids, want %d (at most %d)", ErrManifest, m.Model, id, len(e.Tokens), bs, maxBlockTokens)
			}
			if _, dup := next[k]; dup {
				continue
			}
			if len(next) >= maxBlocks {
				return nil, nil, fmt.Errorf("%w: over %d blocks with token ids", ErrManifest, maxBlocks)
			}
			next[k] = storedBlock{}
			if _, ok := held[k]; !ok {
				adds = append(adds, a)
			}
		}
	}
	var evs []router.KVEvent
	var gone []uint64
	for k := range held {
		if _, ok := next[k]; !ok {
			gone = append(gone, k)
		}
	}
	if len(gone) > 0 {
		slices.Sort(gone)
		evs = append(evs, router.KVEvent{Kind: router.BlockRemoved, Hashes: gone})
	}
	// Parents before children.
	slices.SortFunc(adds, func(a, b add) int { return cmp.Or(cmp.Compare(a.depth, b.depth), cmp.Compare(a.key, b.key)) })
	for _, a := range adds {
		evs = append(evs, router.KVEvent{Kind: router.BlockStored, Hashes: []uint64{a.key}, Parent: a.parent, HasParent: a.hasParent,
			TokenIDs: a.tokens, BlockSize: len(a.tokens), LoraName: a.lora})
	}
	return evs, next, nil
}

// storageRun is a revision's feed goroutine, started once the revision
// offloads (newRevision or reconfigure) and stopped by its close.
type storageRun struct {
	once sync.Once
	ctx  context.Context
	stop context.CancelFunc
	mu   sync.Mutex
	feed *storageFeed
}

func (rev *revision) startStorageFeed() {
	if rev.storage.ctx == nil || rev.storageURI() == "" {
		return
	}
	rev.storage.once.Do(func() { go rev.feedStorage(rev.storage.ctx) })
}

// storageStatus reports the feed's polls, failed polls and blocks fed.
func (rev *revision) storageStatus() (polls, failures int64, blocks int) {
	rev.storage.mu.Lock()
	defer rev.storage.mu.Unlock()
	if f := rev.storage.feed; f != nil {
		return f.polls, f.failures, len(f.held)
	}
	return 0, 0, 0
}

// storageFeed follows one revision's storage.
type storageFeed struct {
	uri   string
	store *kvstore.Store
	held  map[uint64]storedBlock
	// Counters for tests, written under the revision's storage.mu.
	polls, failures int64
	lastErr         error
}

// feedStorage runs the revision's storage feed until ctx ends.
func (rev *revision) feedStorage(ctx context.Context) {
	every := rev.a.opts.KVStoragePoll
	if every == 0 {
		every = DefaultKVStoragePoll
	}
	f := &storageFeed{}
	rev.storage.mu.Lock()
	rev.storage.feed = f
	rev.storage.mu.Unlock()
	defer func() {
		if f.store != nil {
			_ = f.store.Close()
		}
	}()
	for {
		rev.pollStorage(ctx, f)
		if !sleepCtx(ctx, every) {
			return
		}
	}
}

// storageURI is where the revision's KV is offloaded, "" when it is not.
func (rev *revision) storageURI() string {
	k := rev.config().Spec.KVOffload
	if !k.Enabled() {
		return ""
	}
	return cmp.Or(k.URI, rev.a.opts.KVStorageDefaultURI)
}

// pollStorage reads the revision's manifests once and feeds the router
// the differences; a failed read keeps what the router knew.
func (rev *revision) pollStorage(ctx context.Context, f *storageFeed) {
	log := rev.a.opts.Logger
	if uri := rev.storageURI(); uri != f.uri {
		if f.store != nil {
			_ = f.store.Close()
			f.store = nil
		}
		if len(f.held) > 0 {
			rev.rt.Forget(router.StorageEndpoint)
			rev.storage.mu.Lock()
			f.held = nil
			rev.storage.mu.Unlock()
		}
		f.uri = uri
		if uri != "" {
			st, err := kvstore.Open(ctx, uri, kvstore.Options{})
			if err != nil {
				if f.lastErr == nil || f.lastErr.Error() != err.Error() {
					log.Warn("KV storage: cannot open; routing ignores it", "revision", rev.name, "err", err)
				}
				f.lastErr = err
				f.uri = "" // retried at the next poll
				return
			}
			f.store = st
		}
	}
	if f.store == nil {
		return
	}
	every := rev.a.opts.KVStoragePoll
	if every == 0 {
		every = DefaultKVStoragePoll
	}
	pctx, cancel := context.WithTimeout(ctx, min(storagePollTimeout, max(3*every, time.Second)))
	defer cancel()
	rev.storage.mu.Lock()
	f.polls++
	rev.storage.mu.Unlock()
	ms, err := rev.loadManifests(pctx, f.store)
	var evs []router.KVEvent
	var next map[uint64]storedBlock
	if err == nil {
		evs, next, err = ManifestEvents(f.held, ms, MaxStorageBlocks)
	}
	if err != nil {
		rev.storage.mu.Lock()
		f.failures++
		rev.storage.mu.Unlock()
		if f.lastErr == nil || f.lastErr.Error() != err.Error() {
			log.Warn("KV storage: manifests not read; routing keeps what it knew", "revision", rev.name, "err", err)
		}
		f.lastErr = err
		return
	}
	f.lastErr = nil
	if err := rev.rt.ApplyStorage(evs...); err != nil {
		log.Debug("KV storage: events rejected by the index", "revision", rev.name, "err", err)
	}
	rev.storage.mu.Lock()
	f.held = next
	rev.storage.mu.Unlock()
}

// loadManifests reads the manifests of the revision's models (every
// space whose manifest names one: the spaces' salts are not stored).
func (rev *revision) loadManifests(ctx context.Context, st *kvstore.Store) ([]*kvstore.Manifest, error) {
	keys, err := st.SpaceKeys(ctx, maxStorageSpaces)
	if err != nil {
		return nil, err
	}
	models := rev.config().Models
	var out []*kvstore.Manifest
	for _, k := range keys {
		m, err := st.LoadManifestOf(ctx, k)
		if errors.Is(err, kvstore.ErrNotFound) {
			continue
		}
		if err != nil {
			return nil, err
		}
		if len(models) == 0 || slices.Contains(models, m.Model) {
			out = append(out, m)
		}
	}
	return out, nil
}
