package batch

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/llmd-kn/llmd-kn/pkg/kvstore"
)

// Ownership of a batch across replicas that share storage.
//
// Exactly one replica runs a batch: the one that created its current
// epoch, batch/batches/{id}/lease/{epoch}. An epoch object is created
// only if absent (kvstore.PutIfAbsent), so of the replicas that race for
// epoch N+1 one wins. The owner rewrites its epoch object every
// LeaseRenew with a counter one higher (the heartbeat). Any replica that
// has seen the current epoch's object unchanged for LeaseTTL by its own
// clock (no clock is compared across nodes) takes the batch over by
// creating epoch N+1; a replica that stops gracefully marks its epoch
// released, and the batch is taken over at once.
//
// Fencing: before each chunk commit, each state write and before it
// finalizes, a runner checks that epoch N+1 does not exist, and stops if
// it does. Chunks are created only if absent, so a runner superseded
// between its check and its write cannot overwrite a chunk the new owner
// wrote (it learns of the conflict and stops; the new owner merges a
// chunk it finds taken); the terminal state is created once
// (batch/batches/{id}/final), so of two runners that finalize only one
// result is ever shown. Nothing here relies on more than read-after-write
// of one object and create-if-absent, which S3, GCS, Azure Blob and
// fileblob guarantee.

// DefaultLeaseRenew and DefaultLeaseTTL are APIOptions' lease defaults.
const (
	DefaultLeaseRenew = 10 * time.Second
	DefaultLeaseTTL   = 30 * time.Second
)

// errSuperseded stops a runner whose batch another replica took over.
var errSuperseded = errors.New("batch: another replica took this batch over")

// leaseRecord is the content of an epoch object.
type leaseRecord struct {
	Owner    string `json:"owner"`
	Beat     uint64 `json:"beat"`
	Released bool   `json:"released,omitempty"`
}

// parseLease validates an epoch object: outside input (another replica,
// or anyone with write access to the bucket, wrote it).
func parseLease(raw []byte) (leaseRecord, error) {
	var l leaseRecord
	if err := json.Unmarshal(raw, &l); err != nil {
		return l, fmt.Errorf("lease: %w", err)
	}
	if l.Owner == "" || len(l.Owner) > 128 {
		return l, fmt.Errorf("lease: owner %q: empty or over 128 bytes", l.Owner)
	}
	return l, nil
}

func leaseKey(id string, epoch int64) string {
	return batchKey(id, fmt.Sprintf("lease/%010d", epoch))
}

// claim creates epoch e of a batch's lease for this replica; false if
// another replica created it first.
func (a *API) claim(ctx context.Context, id string, e int64) (bool, error) {
	raw, _ := json.Marshal(leaseRecord{Owner: a.opts.ReplicaID})
	err := a.opts.Store.PutIfAbsent(context.WithoutCancel(ctx), leaseKey(id, e), raw)
	if errors.Is(err, kvstore.ErrExists) {
		return false, nil
	}
	return err == nil, err
}

// superseded reports whether a higher epoch than the runner's exists.
func (a *API) superseded(ctx context.Context, rn *run) (bool, error) {
	rn.mu.Lock()
	e, gone := rn.epoch, rn.superseded
	rn.mu.Unlock()
	if gone {
		return true, nil
	}
	ok, err := a.opts.Store.Exists(context.WithoutCancel(ctx), leaseKey(rn.id, e+1))
	if err != nil {
		return false, fmt.Errorf("batch %s: checking its lease: %w", rn.id, err)
	}
	if ok {
		rn.supersede()
		a.opts.Logger.Info("batch: taken over by another replica; stopping here", "batch", rn.id, "epoch", e)
	}
	return ok, nil
}

// fence returns errSuperseded when the runner may no longer write.
func (a *API) fence(rn *run) error {
	if a.crashed.Load() {
		return errSuperseded
	}
	gone, err := a.superseded(a.ctx, rn)
	if err != nil {
		return err
	}
	if gone {
		return errSuperseded
	}
	return nil
}

// supersede marks a runner superseded and stops its work.
func (r *run) supersede() {
	r.mu.Lock()
	r.superseded = true
	cancel := r.cancel
	r.mu.Unlock()
	if cancel != nil {
		cancel()
	}
}

// beat rewrites the runner's epoch object (released: the last one).
func (a *API) beat(rn *run, released bool) error {
	rn.mu.Lock()
	rn.beats++
	rec := leaseRecord{Owner: a.opts.ReplicaID, Beat: rn.beats, Released: released}
	e := rn.epoch
	rn.mu.Unlock()
	raw, _ := json.Marshal(rec)
	return a.opts.Store.Put(context.WithoutCancel(a.ctx), leaseKey(rn.id, e), raw)
}

// renew keeps a running batch's lease until ctx ends: every LeaseRenew it
// checks for a higher epoch (stopping the runner if there is one), beats,
// and reads a cancel request another replica recorded.
func (a *API) renew(ctx context.Context, rn *run) {
	tick := time.NewTicker(a.opts.LeaseRenew)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		if a.pauseRenew.Load() {
			continue // tests: a replica that stalls
		}
		gone, err := a.superseded(ctx, rn)
		if err == nil && !gone {
			err = a.beat(rn, false)
		}
		if err == nil && !gone {
			err = a.noticeCancel(a.ctx, rn)
		}
		if err != nil && ctx.Err() == nil {
			a.opts.Logger.Warn("batch: renewing its lease", "batch", rn.id, "err", err)
		}
	}
}

// observation is what a replica last saw of a batch's lease, and since
// when by its own clock.
type observation struct {
	epoch    int64
	beat     uint64
	bad      bool
	since    time.Time
	terminal bool
}

// currentLease finds a batch's highest epoch, probing upward from one it
// knew (epochs are never deleted): 0 when it has none.
func (a *API) currentLease(ctx context.Context, id string, from int64) (int64, leaseRecord, bool, error) {
	from = max(from, 1)
	var epoch int64
	var raw []byte
	corrupt := false
	for e := from; ; e++ {
		r, err := a.opts.Store.Get(ctx, leaseKey(id, e))
		if errors.Is(err, kvstore.ErrNotFound) {
			break
		}
		if err != nil && !errors.Is(err, kvstore.ErrCorrupt) {
			return 0, leaseRecord{}, false, err
		}
		epoch, raw, corrupt = e, r, err != nil
	}
	if epoch == 0 {
		if from > 1 {
			return a.currentLease(ctx, id, 1)
		}
		return 0, leaseRecord{}, false, nil
	}
	rec, err := parseLease(raw)
	if corrupt || err != nil {
		a.opts.Logger.Warn("batch: unreadable lease, treated as expiring", "batch", id, "epoch", epoch, "err", err)
		return epoch, leaseRecord{}, true, nil
	}
	return epoch, rec, false, nil
}

// scan looks at every unfinished batch this process does not run and
// takes over those whose lease was released, is missing, or has not
// changed for LeaseTTL; it returns how many it started.
func (a *API) scan(ctx context.Context) int {
	objs, err := a.opts.Store.List(ctx, indexPrefix, 0)
	if err != nil {
		a.opts.Logger.Warn("batch: listing batches to take over", "err", err)
		return 0
	}
	n := 0
	for _, o := range objs {
		_, id, ok := parseIndexKey(o.Key)
		if !ok || ctx.Err() != nil {
			continue
		}
		a.mu.Lock()
		rn, obs := a.batches[id], a.seen[id]
		a.mu.Unlock()
		if obs.terminal || rn != nil && rn.running() {
			continue
		}
		started, err := a.consider(ctx, id, obs)
		if err != nil {
			a.opts.Logger.Warn("batch: checking a batch to take over", "batch", id, "err", err)
		}
		if started {
			n++
		}
	}
	return n
}

// consider takes one batch over if its lease allows.
func (a *API) consider(ctx context.Context, id string, prev observation) (bool, error) {
	st, err := a.load(ctx, id)
	if errors.Is(err, kvstore.ErrNotFound) {
		return false, nil // indexed, state not yet written
	}
	if err != nil {
		return false, err
	}
	if Terminal(st.Batch.Status) {
		a.mu.Lock()
		a.seen[id] = observation{terminal: true}
		a.mu.Unlock()
		return false, nil
	}
	epoch, rec, bad, err := a.currentLease(ctx, id, prev.epoch)
	if err != nil {
		return false, err
	}
	now := a.opts.Now()
	cur := observation{epoch: epoch, beat: rec.Beat, bad: bad, since: now}
	// No lease (a batch stored before leases), a released one, or one
	// under this replica's own name that this process does not run (an
	// earlier life of this pod, restarted): taken over at once.
	expired := epoch == 0 || !bad && (rec.Released || rec.Owner == a.opts.ReplicaID)
	if !expired {
		if prev.since.IsZero() || prev.epoch != cur.epoch || prev.beat != cur.beat || prev.bad != cur.bad {
			a.mu.Lock()
			a.seen[id] = cur
			a.mu.Unlock()
			return false, nil
		}
		if now.Sub(prev.since) < a.opts.LeaseTTL {
			return false, nil
		}
	}
	won, err := a.claim(ctx, id, epoch+1)
	if err != nil || !won {
		return false, err
	}
	a.opts.Logger.Info("batch: taking over", "batch", id, "epoch", epoch+1, "released", rec.Released, "bad", bad)
	rn := &run{id: id, st: st, epoch: epoch + 1}
	a.mu.Lock()
	defer a.mu.Unlock()
	if old := a.batches[id]; old != nil && old.running() {
		return false, nil // cannot happen: this process claimed a batch it runs
	}
	delete(a.seen, id)
	a.batches[id] = rn
	a.start(rn)
	return true, nil
}
