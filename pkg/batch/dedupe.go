package batch

import (
	"container/list"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/cloudevents/sdk-go/v2/event"

	"github.com/llmd-kn/llmd-kn/pkg/kvstore"
)

// dedupe remembers each event's result by id+source for a retention
// window, bounded in memory (oldest first out) and, with a store, kept
// in object storage so a restarted activator still knows it. An event in
// flight is shared: a duplicate waits for the first delivery's result,
// in this process or, through a claim in shared storage, in another
// replica (claim.go).
type dedupe struct {
	mu        sync.Mutex
	byKey     map[string]*list.Element
	order     *list.List // of *entry, oldest first
	max       int
	retention time.Duration
	store     *kvstore.Store
	now       func() time.Time
	puts      int

	// Claims across replicas that share the store (claim.go).
	id                           string
	renew, ttl, pollMin, pollMax time.Duration
	log                          *slog.Logger
	crashed                      atomic.Bool  // tests: stop as a crash would (no beats, releases or results)
	waits                        atomic.Int64 // deliveries that waited for another replica's result
}

type entry struct {
	key    string
	at     time.Time
	done   chan struct{}
	result *event.Event // nil: still in flight, or abandoned (transient)
	remote bool         // result computed by a replica that held the event's claim
	// The claim this replica holds in storage for the event (epoch 0:
	// none) and its heartbeat.
	epoch       int64
	stopBeat    chan struct{}
	beatStopped chan struct{}
}

func newDedupe(max int, retention time.Duration, store *kvstore.Store, now func() time.Time) *dedupe {
	return &dedupe{byKey: map[string]*list.Element{}, order: list.New(), max: max, retention: retention, store: store, now: now,
		id: newID("replica-"), renew: DefaultClaimRenew, ttl: DefaultClaimTTL, pollMin: DefaultClaimPollMin, pollMax: DefaultClaimPollMax,
		log: slog.New(slog.DiscardHandler)}
}

// role is what begin makes of a delivery.
type role int

const (
	roleOwner  role = iota // infer, then finish or abandon
	roleWait               // wait on entry.done (this process has, or will have, the result)
	roleRemote             // another replica holds the event's claim: await its result
)

// record is what storage keeps per event.
type record struct {
	At      time.Time       `json:"at"`
	Pending bool            `json:"pending,omitempty"`
	Request json.RawMessage `json:"request,omitempty"` // the request event, while pending
	Origin  Origin          `json:"origin,omitempty"`
	Sink    string          `json:"sink,omitempty"`
	Result  json.RawMessage `json:"result,omitempty"` // the result event
}

func storeKey(key string) string {
	h := sha256.Sum256([]byte(key))
	return "batch/events/" + hex.EncodeToString(h[:16])
}

// begin returns the entry for key and what the caller is to do with it.
// A result found in storage is loaded as a finished entry (roleWait). With
// a store, an event no replica has answered is claimed there first, so
// only one replica infers it (claim.go).
func (d *dedupe) begin(ctx context.Context, key string) (*entry, role) {
	now := d.now()
	d.mu.Lock()
	if el, ok := d.byKey[key]; ok {
		e := el.Value.(*entry)
		if e.result == nil || now.Sub(e.at) < d.retention {
			d.mu.Unlock()
			return e, roleWait
		}
		d.order.Remove(el)
		delete(d.byKey, key)
	}
	e := &entry{key: key, at: now, done: make(chan struct{})}
	d.byKey[key] = d.order.PushBack(e)
	d.evictLocked()
	d.mu.Unlock()
	if d.store == nil {
		return e, roleOwner
	}
	if d.adopt(ctx, e, false) {
		return e, roleWait
	}
	return e, d.claimFor(ctx, e)
}

func (d *dedupe) evictLocked() {
	// Oldest finished entries go first; entries in flight stay.
	for el := d.order.Front(); el != nil && d.order.Len() > d.max; {
		next := el.Next()
		if e := el.Value.(*entry); e.result != nil {
			d.order.Remove(el)
			delete(d.byKey, e.key)
		}
		el = next
	}
}

// finish records the result of an owned entry and wakes its waiters.
func (d *dedupe) finish(ctx context.Context, e *entry, result event.Event) error {
	d.mu.Lock()
	e.result = &result
	e.at = d.now()
	close(e.done)
	d.mu.Unlock()
	if d.store == nil {
		return nil
	}
	raw, err := json.Marshal(result)
	if err != nil {
		return err
	}
	if d.crashed.Load() {
		return nil
	}
	if err := d.save(ctx, e.key, record{At: e.at, Result: raw}); err != nil {
		d.release(e)
		return err
	}
	d.release(e) // after the result: a replica that sees the release finds it
	d.maybeSweep(ctx)
	return nil
}

// abandon forgets an owned entry whose outcome was transient: a later
// delivery computes it again. Waiters wake and find no result.
func (d *dedupe) abandon(e *entry) {
	d.mu.Lock()
	if el, ok := d.byKey[e.key]; ok && el.Value.(*entry) == e {
		d.order.Remove(el)
		delete(d.byKey, e.key)
	}
	close(e.done)
	d.mu.Unlock()
	if d.store != nil {
		d.release(e)
	}
}

// savePending stores accepted work before it is answered, so a restart
// resumes it. It never overwrites a live record: another delivery's
// pending record is the same work, and a result another replica stored
// meanwhile must stay (it is created only if absent; only an expired or
// invalid record is replaced).
func (d *dedupe) savePending(ctx context.Context, key string, rec record) error {
	if d.store == nil {
		return nil
	}
	rec.Pending = true
	rec.At = d.now()
	raw, err := json.Marshal(rec)
	if err != nil {
		return err
	}
	err = d.store.PutIfAbsent(ctx, storeKey(key), raw)
	if !errors.Is(err, kvstore.ErrExists) {
		return err
	}
	if old, err := d.store.Get(ctx, storeKey(key)); err == nil {
		if o, perr := parseRecord(old); perr == nil && (o.Pending || o.Result != nil && d.now().Sub(o.At) < d.retention) {
			return nil // the same work, pending or done
		}
	}
	return d.store.Put(ctx, storeKey(key), raw)
}

func (d *dedupe) save(ctx context.Context, key string, rec record) error {
	raw, err := json.Marshal(rec)
	if err != nil {
		return err
	}
	return d.store.Put(ctx, storeKey(key), raw)
}

// pending lists the stored records still waiting for a result (work
// accepted before a restart).
func (d *dedupe) pending(ctx context.Context) ([]record, error) {
	if d.store == nil {
		return nil, nil
	}
	objs, err := d.store.List(ctx, "batch/events/", 0)
	if err != nil {
		return nil, err
	}
	var out []record
	for _, o := range objs {
		raw, err := d.store.Get(ctx, o.Key)
		if err != nil {
			if errors.Is(err, kvstore.ErrCorrupt) {
				_ = d.store.Delete(ctx, o.Key)
			}
			continue
		}
		var rec record
		if json.Unmarshal(raw, &rec) == nil && rec.Pending {
			out = append(out, rec)
		}
	}
	return out, nil
}

// sweepEvery is how many stored results pass between sweeps of expired
// records.
const sweepEvery = 1024

func (d *dedupe) maybeSweep(ctx context.Context) {
	d.mu.Lock()
	d.puts++
	due := d.puts%sweepEvery == 0
	d.mu.Unlock()
	if due {
		_ = d.sweep(ctx)
	}
}

// sweep deletes stored records older than the retention window (pending
// ones are kept: their work is not done).
func (d *dedupe) sweep(ctx context.Context) error {
	objs, err := d.store.List(ctx, "batch/events/", 0)
	if err != nil {
		return err
	}
	now := d.now()
	for _, o := range objs {
		if now.Sub(o.ModTime) < d.retention {
			continue
		}
		raw, err := d.store.Get(ctx, o.Key)
		var rec record
		if err == nil && json.Unmarshal(raw, &rec) == nil && rec.Pending {
			continue
		}
		_ = d.store.Delete(ctx, o.Key)
	}
	// Claims: renewed while their work runs, so an old one is finished.
	claims, err := d.store.List(ctx, "batch/claims/", 0)
	if err != nil {
		return err
	}
	for _, o := range claims {
		if now.Sub(o.ModTime) >= d.retention {
			_ = d.store.Delete(ctx, o.Key)
		}
	}
	return nil
}
