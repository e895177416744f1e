package activator

import (
	"context"
	"time"
)

// BatchTier is the tier batch work runs in (pkg/batch sends it; the
// autoscaler counts its load separately, up to llm-d.ai/batch-max-replicas).
const BatchTier = "batch"

// DefaultBatchPromoteBefore is Options.BatchPromoteBefore's default.
const DefaultBatchPromoteBefore = 2 * time.Minute

// promoteAt is when a batch request must move up a tier so that its
// deadline is not missed: BatchPromoteBefore ahead of the deadline of the
// request's context. Only the batch ways in (BatchFront, in-process) give a
// request a deadline: the CloudEvent's llmddeadline, the Batch API's
// completion_window. ok is false for a request that is not batch or has no
// deadline, or when the activator does not promote (BatchPromoteBefore < 0).
func (a *Activator) promoteAt(ctx context.Context, t Tier) (at time.Time, ok bool) {
	if t.Name != BatchTier || a.opts.BatchPromoteBefore < 0 {
		return time.Time{}, false
	}
	dl, ok := ctx.Deadline()
	if !ok {
		return time.Time{}, false
	}
	return dl.Add(-a.opts.BatchPromoteBefore), true
}

// promoted is the tier a due batch request moves to: the lowest tier above
// it (standard in the default table), so that it is dispatched without the
// batch tier's saturation gate, ahead of waiting batch work, and counted as
// that tier's load by the autoscaler. ok is false when no tier is above.
func (a *Activator) promoted(t Tier) (Tier, bool) {
	names := a.opts.Tiers.Names() // highest priority first
	for i, n := range names {
		if n == t.Name && i > 0 {
			return a.opts.Tiers.Get(names[i-1])
		}
	}
	return Tier{}, false
}

// acquirePromoting is flow control for a batch request with a deadline: it
// waits in the batch tier until its promotion time, then, still waiting,
// moves to the tier above (a request already due on arrival goes there at
// once). It returns the tier the request was admitted in. enter is called
// once, when the request is first dispatched or queued (FlowController's
// acquire).
func (a *Activator) acquirePromoting(ctx context.Context, rev *revision, t Tier, size int64, enter func()) (g *grant, tier Tier, err error) {
	at, ok := a.promoteAt(ctx, t)
	up, hasUp := a.promoted(t)
	if !ok || !hasUp {
		g, err = rev.flow.acquire(ctx, t, size, enter)
		return g, t, err
	}
	entered := false
	once := func() {
		if !entered {
			entered = true
			enter()
		}
	}
	if a.opts.Now().Before(at) {
		wctx, cancel := context.WithDeadline(ctx, at)
		g, err = rev.flow.acquire(wctx, t, size, once)
		cancel()
		if err == nil || ctx.Err() != nil || wctx.Err() == nil {
			return g, t, err
		}
	}
	rev.stats.batchPromoted()
	g, err = rev.flow.acquire(ctx, up, size, once)
	return g, up, err
}
