package main

import (
	"context"
	"fmt"
	"log/slog"
	"net/http"

	"github.com/llmd-kn/llmd-kn/pkg/activator"
	"github.com/llmd-kn/llmd-kn/pkg/batch"
	"github.com/llmd-kn/llmd-kn/pkg/kvstore"
	_ "github.com/llmd-kn/llmd-kn/pkg/kvstore/drivers" // s3://, gs://, azblob://
)

type batchConfig struct {
	storage, sink, deadLetter string
}

// batchFront mounts batch work (CloudEvents at "/", the Batch API) in
// front of the activator's API; every request it makes goes through the
// activator's own chain, in the batch tier.
func batchFront(ctx context.Context, act *activator.Activator, tiers *activator.Tiers, cfg batchConfig, log *slog.Logger) (http.Handler, func(), error) {
	url := cfg.storage
	if url == "" {
		url = "mem://"
		log.Info("batch state in memory: set --batch-storage to keep it across restarts")
	}
	store, err := kvstore.Open(ctx, url, kvstore.Options{})
	if err != nil {
		return nil, nil, fmt.Errorf("--batch-storage: %w", err)
	}
	inner := act.Handler()
	backend := batch.HandlerBackend{Handler: inner}
	policy := batch.TierPolicy{Default: "batch", Rank: func(name string) (int, bool) {
		t, ok := tiers.Get(name)
		return t.Priority, ok
	}}
	if _, ok := tiers.Get("batch"); !ok {
		policy.Default = tiers.Names()[len(tiers.Names())-1] // the lowest tier
	}
	events, err := batch.NewIngress(batch.IngressOptions{Backend: backend, Store: store, Tiers: policy,
		Sink:           func(*http.Request) string { return cfg.sink },
		DeadLetterSink: cfg.deadLetter, Logger: log})
	if err != nil {
		return nil, nil, err
	}
	api, err := batch.NewAPI(ctx, batch.APIOptions{Backend: backend, Store: store, Tiers: policy, Logger: log})
	if err != nil {
		events.Close()
		return nil, nil, err
	}
	if n, err := events.Resume(ctx); err != nil || n > 0 {
		log.Info("resumed accepted events", "count", n, "err", err)
	}
	if n := api.Resume(); n > 0 {
		log.Info("resumed batches", "count", n)
	}
	return batch.Front(inner, events, api), func() { api.Close(); events.Close(); _ = store.Close() }, nil
}
