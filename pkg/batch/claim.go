package batch

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/cloudevents/sdk-go/v2/event"

	"github.com/llmd-kn/llmd-kn/pkg/kvstore"
)

// One inference per event across replicas that share storage.
//
// The first delivery of an event that no replica has answered claims it:
// it creates batch/claims/{hash}/{epoch} (epoch 1 first) only if absent
// (kvstore.PutIfAbsent), so of two replicas that race for an event one
// wins. The owner rewrites its claim every ClaimRenew with a counter one
// higher (the heartbeat, the same record as a Batch API lease), and marks
// it released once the result is stored (or when it gives the event up).
// A delivery that finds a live claim by another replica does not infer:
// it polls storage (ClaimPollMin doubling to ClaimPollMax) until the
// result appears, and answers that. A claim whose object it has seen
// unchanged for ClaimTTL by its own clock (no clock is compared across
// nodes), or that is released without a result, it takes over by
// creating the next epoch, again only if absent: one waiter wins and
// infers, the others go on waiting for its result.

// Claim defaults (IngressOptions).
const (
	DefaultClaimRenew   = 10 * time.Second
	DefaultClaimTTL     = 30 * time.Second
	DefaultClaimPollMin = 200 * time.Millisecond
	DefaultClaimPollMax = time.Second
)

func claimKey(key string, epoch int64) string {
	return fmt.Sprintf("batch/claims/%s/%010d", storeKey(key)[len("batch/events/"):], epoch)
}

// claimState is what a replica reads of an event's current claim.
type claimState struct {
	epoch int64  // 0: nobody claimed it
	raw   []byte // the object as read (compared between polls)
	rec   leaseRecord
	bad   bool // the object did not validate: it can only expire
}

// current finds the highest claim epoch by probing upward from 1 (no
// reliance on list consistency).
func (d *dedupe) current(ctx context.Context, key string) (claimState, error) {
	var st claimState
	for e := int64(1); ; e++ {
		raw, err := d.store.Get(ctx, claimKey(key, e))
		if errors.Is(err, kvstore.ErrNotFound) {
			return st, nil
		}
		st = claimState{epoch: e}
		if err != nil {
			if !errors.Is(err, kvstore.ErrCorrupt) {
				return st, err
			}
			st.bad, st.raw = true, []byte("corrupt")
			d.log.Warn("batch: a corrupt event claim (treated as expiring)", "key", claimKey(key, e), "err", err)
			continue
		}
		st.raw = raw
		rec, perr := parseLease(raw)
		if perr != nil {
			st.bad = true
			d.log.Warn("batch: an invalid event claim (treated as expiring)", "key", claimKey(key, e), "err", perr)
			continue
		}
		st.rec = rec
	}
}

// tryClaim creates epoch e of key's claim for this replica: false if
// another replica created it first.
func (d *dedupe) tryClaim(ctx context.Context, key string, e int64) (bool, error) {
	raw, _ := json.Marshal(leaseRecord{Owner: d.id})
	err := d.store.PutIfAbsent(context.WithoutCancel(ctx), claimKey(key, e), raw)
	if errors.Is(err, kvstore.ErrExists) {
		return false, nil
	}
	return err == nil, err
}

// storedResult is the event's result in storage, if any (within the
// retention window and valid).
func (d *dedupe) storedResult(ctx context.Context, key string) (*event.Event, time.Time, bool) {
	raw, err := d.store.Get(ctx, storeKey(key))
	if err != nil {
		if !errors.Is(err, kvstore.ErrNotFound) {
			d.log.Warn("batch: reading a dedupe record (treated as absent)", "key", storeKey(key), "err", err)
		}
		return nil, time.Time{}, false
	}
	rec, err := parseRecord(raw)
	if err != nil {
		d.log.Warn("batch: an invalid dedupe record (treated as absent)", "key", storeKey(key), "err", err)
		return nil, time.Time{}, false
	}
	if rec.Result == nil || d.now().Sub(rec.At) >= d.retention {
		return nil, time.Time{}, false
	}
	var ev event.Event
	if err := json.Unmarshal(rec.Result, &ev); err != nil {
		return nil, time.Time{}, false
	}
	return &ev, rec.At, true
}

// parseRecord validates a stored dedupe record: outside input.
func parseRecord(raw []byte) (record, error) {
	var rec record
	if err := json.Unmarshal(raw, &rec); err != nil {
		return rec, fmt.Errorf("dedupe record: %w", err)
	}
	if rec.Result != nil {
		var ev event.Event
		if err := json.Unmarshal(rec.Result, &ev); err != nil {
			return rec, fmt.Errorf("dedupe record: result: %w", err)
		}
		if err := ev.Validate(); err != nil {
			return rec, fmt.Errorf("dedupe record: result: %w", err)
		}
	}
	if rec.Pending && rec.Request == nil {
		return rec, errors.New("dedupe record: pending without a request")
	}
	return rec, nil
}

// claimFor decides, after a local miss, whether this replica infers the
// event (roleOwner, holding a claim from now on) or another replica does
// (roleRemote); roleWait when a result stored meanwhile finished e.
// Storage errors leave the event to this replica without a claim, as
// without shared storage.
func (d *dedupe) claimFor(ctx context.Context, e *entry) role {
	st, err := d.current(ctx, e.key)
	if err == nil {
		if st.epoch > 0 && (st.bad || !st.rec.Released && st.rec.Owner != d.id) {
			return roleRemote // a live claim by another replica, as far as we know (or one to expire)
		}
		// Nobody's, released, or ours from before a restart (the same
		// replica id): take the next epoch.
		if st.epoch > 0 && d.adopt(ctx, e, false) {
			return roleWait
		}
		won, cerr := d.tryClaim(ctx, e.key, st.epoch+1)
		if cerr == nil {
			if won {
				d.hold(e, st.epoch+1)
				return roleOwner
			}
			return roleRemote
		}
		err = cerr
	}
	d.log.Warn("batch: claiming an event in storage (inferring without a claim)", "err", err)
	return roleOwner
}

// adopt finishes e with a result another replica stored, if there is one;
// remote: while that replica still held the event (it delivers the result
// to a sink, so the deliveries that waited for it here do not).
func (d *dedupe) adopt(ctx context.Context, e *entry, remote bool) bool {
	ev, at, ok := d.storedResult(ctx, e.key)
	if !ok {
		return false
	}
	d.mu.Lock()
	e.result, e.at, e.remote = ev, at, remote
	close(e.done)
	d.mu.Unlock()
	return true
}

// await waits for another replica's result for e, taking the event over
// when its claim expires (dead owner) or is released without a result.
// It returns done (e finished with the other's result) or owner (this
// replica now holds the claim and must infer); neither when ctx ended.
func (d *dedupe) await(ctx context.Context, e *entry) (done, owner bool) {
	d.waits.Add(1)
	interval := d.pollMin
	var seen claimState
	var since time.Time
	for {
		if d.adopt(ctx, e, true) {
			return true, false
		}
		st, err := d.current(ctx, e.key)
		if err == nil {
			now := d.now()
			take := st.epoch == 0 || !st.bad && st.rec.Released
			switch {
			case take:
			case st.epoch != seen.epoch || !bytes.Equal(st.raw, seen.raw):
				seen, since = st, now
			case now.Sub(since) >= d.ttl:
				d.log.Warn("batch: taking over an event whose claim was not renewed", "key", claimKey(e.key, st.epoch), "owner", st.rec.Owner)
				take = true
			}
			if take {
				if st.epoch > 0 && d.adopt(ctx, e, true) {
					return true, false
				}
				won, cerr := d.tryClaim(ctx, e.key, st.epoch+1)
				if cerr == nil && won {
					d.hold(e, st.epoch+1)
					return false, true
				}
				err = cerr
			}
		}
		if err != nil {
			d.log.Warn("batch: waiting for another replica's result", "err", err)
		}
		t := time.NewTimer(interval)
		select {
		case <-ctx.Done():
			t.Stop()
			return false, false
		case <-t.C:
		}
		interval = min(2*interval, d.pollMax)
	}
}

// hold records that e's claim epoch is this replica's and starts its
// heartbeat; release stops it.
func (d *dedupe) hold(e *entry, epoch int64) {
	stop, stopped := make(chan struct{}), make(chan struct{})
	d.mu.Lock()
	e.epoch, e.stopBeat, e.beatStopped = epoch, stop, stopped
	d.mu.Unlock()
	go func() {
		defer close(stopped)
		tick := time.NewTicker(d.renew)
		defer tick.Stop()
		var beat uint64
		for {
			select {
			case <-stop:
				return
			case <-tick.C:
			}
			if d.crashed.Load() {
				return
			}
			beat++
			raw, _ := json.Marshal(leaseRecord{Owner: d.id, Beat: beat})
			if err := d.store.Put(context.Background(), claimKey(e.key, epoch), raw); err != nil {
				d.log.Warn("batch: renewing an event claim", "err", err)
			}
		}
	}()
}

// release stops e's heartbeat (waiting for a beat in flight, so none
// lands after) and marks its claim released.
func (d *dedupe) release(e *entry) {
	d.mu.Lock()
	epoch, stop, stopped := e.epoch, e.stopBeat, e.beatStopped
	e.stopBeat = nil
	d.mu.Unlock()
	if stop == nil {
		return
	}
	close(stop)
	<-stopped
	if d.crashed.Load() {
		return
	}
	raw, _ := json.Marshal(leaseRecord{Owner: d.id, Beat: 1 << 62, Released: true})
	if err := d.store.Put(context.Background(), claimKey(e.key, epoch), raw); err != nil {
		d.log.Warn("batch: releasing an event claim", "err", err)
	}
}
