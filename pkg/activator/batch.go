package activator

import (
	"context"
	"fmt"
	"log/slog"
	"net/http"
	"time"

	"github.com/llmd-kn/llmd-kn/pkg/batch"
	"github.com/llmd-kn/llmd-kn/pkg/kvstore"
)

// BatchConfig configures the batch ways in (pkg/batch).
type BatchConfig struct {
	// Storage is the object storage URL or directory for batch files,
	// state and event dedupe; "" keeps them in memory (lost on restart).
	Storage string
	// Sink receives CloudEvents results ("" : the HTTP reply);
	// DeadLetterSink what the sink refuses ("" : kept in storage).
	Sink, DeadLetterSink string
	// Concurrency is how many lines of one Batch API batch are in flight
	// at once (batch.DefaultBatchConcurrency).
	Concurrency int
	// LeaseRenew and LeaseTTL: how often the replica that runs a batch
	// renews its ownership in the shared storage, and how long others wait
	// on an unrenewed one before taking the batch over (batch.APIOptions;
	// zero: the defaults). ReplicaID names this replica in its leases.
	LeaseRenew, LeaseTTL time.Duration
	ReplicaID            string
	Logger               *slog.Logger
}

// BatchFront puts batch work in front of the activator's API: CloudEvents
// at "/" and the OpenAI Batch API. Every request it makes goes through the
// activator's own chain, in the lowest tier (batch), so batch work waits
// for the capacity interactive tiers leave. The returned function stops it.
func (a *Activator) BatchFront(ctx context.Context, cfg BatchConfig) (http.Handler, func(), error) {
	log := cfg.Logger
	if log == nil {
		log = a.opts.Logger
	}
	url := cfg.Storage
	if url == "" {
		url = "mem://"
	}
	store, err := kvstore.Open(ctx, url, kvstore.Options{})
	if err != nil {
		return nil, nil, fmt.Errorf("batch storage: %w", err)
	}
	inner := a.Handler()
	backend := batch.HandlerBackend{Handler: inner}
	tiers := a.opts.Tiers
	names := tiers.Names()
	policy := batch.TierPolicy{Default: "batch", Rank: func(name string) (int, bool) {
		t, ok := tiers.Get(name)
		return t.Priority, ok
	}}
	if _, ok := tiers.Get("batch"); !ok && len(names) > 0 {
		policy.Default = names[len(names)-1] // the lowest tier
	}
	// Event claims renew and expire as batch leases do, under the same
	// replica name (a pod restarted under its name resumes its own).
	events, err := batch.NewIngress(batch.IngressOptions{Backend: backend, Store: store, Tiers: policy,
		Sink:           a.batchSink(cfg.Sink),
		DeadLetterSink: cfg.DeadLetterSink, ReplicaID: cfg.ReplicaID, ClaimRenew: cfg.LeaseRenew, ClaimTTL: cfg.LeaseTTL,
		Logger: log})
	if err != nil {
		_ = store.Close()
		return nil, nil, err
	}
	api, err := batch.NewAPI(ctx, batch.APIOptions{Backend: backend, Store: store, Tiers: policy, Concurrency: cfg.Concurrency,
		LeaseRenew: cfg.LeaseRenew, LeaseTTL: cfg.LeaseTTL, ReplicaID: cfg.ReplicaID, Logger: log})
	if err != nil {
		events.Close()
		_ = store.Close()
		return nil, nil, err
	}
	if n, err := events.Resume(ctx); err != nil || n > 0 {
		log.Info("batch: resumed accepted events", "count", n, "err", err)
	}
	// Takes over what no replica holds now, then (every LeaseRenew)
	// batches whose runner's lease expired.
	if n := api.Resume(); n > 0 {
		log.Info("batch: resumed batches", "count", n)
	}
	return batch.Front(inner, events, api), func() { api.Close(); events.Close(); _ = store.Close() }, nil
}

// batchSink returns where a request's CloudEvents results go: its
// Service's llm-d.ai/batch-sink, else the activator's default.
func (a *Activator) batchSink(def string) func(*http.Request) string {
	return func(r *http.Request) string {
		if rev, _, err := a.resolve(r, ""); err == nil {
			if s := rev.config().Spec.BatchSink; s != "" {
				return s
			}
		}
		return def
	}
}
