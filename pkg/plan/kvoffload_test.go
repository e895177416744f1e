package plan

import (
	"strings"
	"testing"
	"time"

	"github.com/llmd-kn/llmd-kn/pkg/workload"
)

// TestKVOffloadAcrossScaleToZero: issue 12 in virtual time, as
// pkg/local's TestKVOffloadAcrossScaleToZero does it in real time. An
// engine serves an 8,000-token prompt, the deployment scales to zero and
// back (the request arriving while it cold-starts waits for it); with KV
// offload the leaving engine flushed the prompt's blocks, the new engine
// restores them (reported as cached tokens) and the request's TTFT, less
// its wait for the cold start, is below the recomputation's.
func TestKVOffloadAcrossScaleToZero(t *testing.T) {
	const promptLen, bs = 8000, 16
	src := func() workload.Source {
		p := tokens(promptLen, 7)
		return workload.Requests([]workload.Request{
			workload.NewRequest(0, 0, p, 10),
			workload.NewRequest(1, 60*time.Second, p, 10),
		})
	}
	cfg := DefaultConfig()
	cfg.StartupDelay = 10 * time.Second
	cfg.Scaler = ScalerFunc(func(o *Observation) Replicas {
		if o.Now >= 20*time.Second && o.Now < 58*time.Second {
			return Replicas{}
		}
		return Replicas{Decode: 1}
	})
	off := run(t, cfg, src())
	on := cfg
	on.KVOffload = KVOffloadConfig{Enabled: true}
	res := run(t, on, src())

	r0, r1 := off.Records[1], res.Records[1]
	if !r0.OK() || !r1.OK() {
		t.Fatalf("records %+v, %+v", r0, r1)
	}
	if r0.CachedTokens != 0 {
		t.Errorf("without offload the request after the cold start had %d cached tokens, want 0", r0.CachedTokens)
	}
	// Whole blocks, leaving at least one token to compute.
	if want := (promptLen - 1) / bs * bs; r1.CachedTokens != want {
		t.Errorf("with offload: %d cached tokens after the cold start, want the %d restored", r1.CachedTokens, want)
	}
	st := res.Stats.KVOffload
	if st.Flushes != 1 || st.Flushed != promptLen/bs || st.Restores != 1 || st.Restored != (promptLen-1)/bs {
		t.Errorf("offload stats %+v: want 1 flush of %d blocks and 1 restore of %d", st, promptLen/bs, (promptLen-1)/bs)
	}
	if want := int64(promptLen/bs) * int64(bs*float64(cfg.Profile.KVBytesPerToken())); st.FlushedBytes != want || st.StoredBytes != want {
		t.Errorf("flushed %d bytes, stored %d; want the model's %d", st.FlushedBytes, st.StoredBytes, want)
	}
	if st.FlushSeconds <= 0 || st.FlushSeconds > DefaultKVOffloadDeadline.Seconds() {
		t.Errorf("modelled flush %.3fs, want within (0, %s]", st.FlushSeconds, DefaultKVOffloadDeadline)
	}
	// Both requests waited for the same cold start; the restore is cheaper
	// than the recomputation.
	if r0.Queue != r1.Queue || r1.Queue <= 0 {
		t.Errorf("queue %v and %v: both should wait for the cold start", r0.Queue, r1.Queue)
	}
	if !(r1.TTFT < r0.TTFT) {
		t.Errorf("TTFT after the cold start: %v with restore, %v recomputing; want restore below", r1.TTFT, r0.TTFT)
	}
	rest := cfg.Profile.RestoreTime((promptLen - 1) / bs * bs)
	if got := r1.TTFT - r1.Queue; got < rest {
		t.Errorf("served TTFT %v with restore, below the modelled restore time %v", got, rest)
	}
	for _, c := range []struct {
		name string
		res  *Result
		rec  time.Duration
	}{{"off", off, r0.TTFT}, {"on", res, r1.TTFT}} {
		ttft, served := ColdStartTTFTs(c.res, time.Minute)
		if len(ttft) != 1 || ttft[0] != c.rec || served[0] != c.rec-c.res.Records[1].Queue {
			t.Errorf("%s: cold-start TTFTs %v (served %v), want the second request's %v", c.name, ttft, served, c.rec)
		}
	}
	var out strings.Builder
	WriteKVOffloadLines(&out, "on", res)
	for _, want := range []string{"kv offload: flushed 500 blocks", "restored 7984 tokens", "first 1m0s after each scale from zero: 1 requests"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("report lines %q lack %q", out.String(), want)
		}
	}
}

// TestKVOffloadPrefetch: with a prefetch budget the engine started from
// zero preloads the stored prefix while it cold-starts, so the request
// waiting for it finds the prefix in its GPU cache (no restore on demand)
// and its TTFT, less the wait, is below the on-demand restore's; a budget
// smaller than the prefix preloads a leading part, the rest is restored.
func TestKVOffloadPrefetch(t *testing.T) {
	const promptLen, bs = 8000, 16
	p := tokens(promptLen, 7)
	src := func() workload.Source {
		return workload.Requests([]workload.Request{
			workload.NewRequest(0, 0, p, 10),
			workload.NewRequest(1, 60*time.Second, p, 10),
		})
	}
	cfg := DefaultConfig()
	cfg.StartupDelay = 10 * time.Second
	cfg.Scaler = ScalerFunc(func(o *Observation) Replicas {
		if o.Now >= 20*time.Second && o.Now < 58*time.Second {
			return Replicas{}
		}
		return Replicas{Decode: 1}
	})
	block := int64(bs * cfg.Profile.KVBytesPerToken())
	run3 := func(prefetch int64) prefetchRun {
		c := cfg
		c.KVOffload = KVOffloadConfig{Enabled: true, PrefetchBytes: prefetch}
		res := run(t, c, src())
		return prefetchRun{res.Records[1].TTFT - res.Records[1].Queue, res.Records[1].CachedTokens, res.Stats.KVOffload}
	}
	onDemand, all, part := run3(0), run3(1<<40), run3(100*block)
	want := (promptLen - 1) / bs * bs
	for name, r := range map[string]prefetchRun{"on demand": onDemand, "all": all, "part": part} {
		if r.cached != want {
			t.Errorf("%s: %d cached tokens, want %d", name, r.cached, want)
		}
	}
	if all.st.Prefetched != promptLen/bs || all.st.Prefetches != 1 || all.st.Restores != 0 {
		t.Errorf("prefetch all: %+v, want %d blocks prefetched and no restore on demand", all.st, promptLen/bs)
	}
	if part.st.Prefetched != 100 || part.st.Restored != (promptLen-1)/bs-100 {
		t.Errorf("prefetch 100 blocks: %+v, want 100 prefetched and the rest restored", part.st)
	}
	if !(all.served < part.served && part.served < onDemand.served) {
		t.Errorf("served TTFT: prefetch all %v, part %v, on demand %v: want increasing", all.served, part.served, onDemand.served)
	}
}

// prefetchRun is what TestKVOffloadPrefetch compares.
type prefetchRun struct {
	served time.Duration
	cached int
	st     KVOffloadStats
}

// TestKVOffloadBudget: a byte budget keeps the stored KV within it.
func TestKVOffloadBudget(t *testing.T) {
	cfg := DefaultConfig()
	block := int64(16 * cfg.Profile.KVBytesPerToken())
	cfg.KVOffload = KVOffloadConfig{Enabled: true, MaxBytes: 100 * block}
	cfg.Scaler = ScalerFunc(func(o *Observation) Replicas {
		if o.Now >= 20*time.Second && o.Now < 28*time.Second {
			return Replicas{}
		}
		return Replicas{Decode: 1}
	})
	// The second request keeps the run going past the scale to zero.
	res := run(t, cfg, workload.Requests([]workload.Request{
		workload.NewRequest(0, 0, tokens(8000, 3), 10),
		workload.NewRequest(1, 30*time.Second, tokens(8, 4), 10),
	}))
	if st := res.Stats.KVOffload; st.Flushed != 100 || st.StoredBytes != 100*block {
		t.Errorf("flushed %d blocks, stored %d bytes; want 100 blocks within the budget", st.Flushed, st.StoredBytes)
	}
}

func TestKVOffloadConfigErrors(t *testing.T) {
	pd := DefaultConfig()
	pd.PrefillEngines = 1
	pd.KVOffload.Enabled = true
	bad := DefaultConfig()
	bad.KVOffload = KVOffloadConfig{MaxBytes: 10}
	neg := DefaultConfig()
	neg.KVOffload = KVOffloadConfig{Enabled: true, MaxBytes: -1}
	for name, c := range map[string]Config{"P/D": pd, "max bytes without offload": bad, "negative max bytes": neg} {
		if err := c.Validate(); err == nil || !strings.Contains(err.Error(), "KV offload") {
			t.Errorf("%s: %v, want a KV offload error", name, err)
		}
	}
	for _, c := range []struct {
		o    Options
		want string
	}{
		{Options{KVOffload: "write-through", KVOffloadDeadline: time.Second}, "not modelled"},
		{Options{KVOffload: "off,off", KVOffloadDeadline: time.Second}, "twice"},
		{Options{KVOffload: "sometimes", KVOffloadDeadline: time.Second}, "unknown mode"},
		{Options{KVOffload: "on-scale-down", KVOffloadMaxBytes: "lots", KVOffloadDeadline: time.Second}, "byte size"},
		{Options{KVOffload: "on-scale-down", KVOffloadDeadline: 2 * time.Hour}, "deadline"},
		{Options{KVOffload: "on-scale-down", KVOffloadMaxBytes: "1Gi", KVPrefetchBytes: "2Gi", KVOffloadDeadline: time.Second}, "at most --kv-offload-max-bytes"},
	} {
		if _, err := parseOffload(c.o); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%+v: %v, want %q", c.o, err, c.want)
		}
	}
	got, err := parseOffload(Options{KVOffload: "off,on-scale-down", KVOffloadMaxBytes: "20Gi", KVOffloadDeadline: time.Minute})
	if err != nil || len(got) != 2 || got[0].Enabled || !got[1].Enabled || got[1].MaxBytes != 20<<30 || got[1].Deadline != time.Minute {
		t.Errorf("off,on-scale-down: %+v, %v", got, err)
	}
}
