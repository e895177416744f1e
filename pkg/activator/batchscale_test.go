package activator_test

import (
	"context"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/llmd-kn/llmd-kn/internal/simtest"
	"github.com/llmd-kn/llmd-kn/pkg/activator"
	"github.com/llmd-kn/llmd-kn/pkg/autoscaler"
	"github.com/llmd-kn/llmd-kn/pkg/engine"
	"github.com/llmd-kn/llmd-kn/pkg/reconciler"
	"github.com/llmd-kn/llmd-kn/pkg/router"
)

// batchScaleFixture is an activator reporting to the autoscaler's real
// stats API (reconciler.StatsAPI over loopback), which records pokes.
type batchScaleFixture struct {
	act   *activator.Activator
	stats *reconciler.Stats
	key   activator.RevisionKey
	mu    sync.Mutex
	pokes int
}

func newBatchScaleFixture(t *testing.T, promoteBefore time.Duration) *batchScaleFixture {
	f := &batchScaleFixture{stats: reconciler.NewStats(), key: activator.RevisionKey{Namespace: "team-a", Name: "llm-00001"}}
	api := &reconciler.StatsAPI{Stats: f.stats,
		Poke: func(ns, name string) error {
			f.mu.Lock()
			f.pokes++
			f.mu.Unlock()
			return nil
		},
		Recommendations: func() []reconciler.RevisionRecommendation { return nil }}
	srv := httptest.NewServer(api.Handler())
	t.Cleanup(srv.Close)
	rep, err := activator.NewReporter(activator.ReporterOptions{URL: srv.URL, Activator: "act-0", Interval: 50 * time.Millisecond, PokeWindow: time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	f.act, err = activator.New(activator.Options{Poke: rep.Poke, ScrapeInterval: 20 * time.Millisecond, BatchPromoteBefore: promoteBefore})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(f.act.Close)
	if err := f.act.UpsertRevision(activator.RevisionConfig{Key: f.key, Service: "llm", Models: []string{"demo"}, Spec: defaultSpec()}); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { rep.Run(ctx, f.act.Stats); close(done) }()
	t.Cleanup(func() { cancel(); <-done })
	return f
}

func (f *batchScaleFixture) pokeCount() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.pokes
}

// send serves one completion through the activator's handler in-process,
// as the batch ways in do, with the tier header and ctx (its deadline is
// the batch work's).
func (f *batchScaleFixture) send(ctx context.Context, tier string) *httptest.ResponseRecorder {
	r := httptest.NewRequest(http.MethodPost, "/v1/completions", strings.NewReader(`{"model":"demo","prompt":"Knative is","max_tokens":4}`)).WithContext(ctx)
	r.Host = "llm.team-a.example.com"
	r.Header.Set("Content-Type", "application/json")
	r.Header.Set(activator.RevisionHeader, f.key.Name)
	r.Header.Set(activator.NamespaceHeader, f.key.Namespace)
	r.Header.Set(activator.TierHeader, tier)
	w := httptest.NewRecorder()
	f.act.Handler().ServeHTTP(w, r)
	return w
}

// TestBatchOnlyLoadAtZeroWithinBudget is the batch budget through the real
// path: batch requests waiting at zero do not poke; the activator's report
// reaches the autoscaler's stats API, whose load carries the batch share
// apart, and the decider wakes the revision with llm-d.ai/batch-max-replicas
// 1 and leaves it at zero with 0. A standard request pokes at once.
func TestBatchOnlyLoadAtZeroWithinBudget(t *testing.T) {
	f := newBatchScaleFixture(t, -1)
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	for range 3 {
		wg.Add(1)
		go func() { defer wg.Done(); f.send(ctx, "batch") }()
	}
	t.Cleanup(func() { cancel(); wg.Wait() })

	var load autoscaler.Load
	waitFor(t, func() bool {
		l, ok := f.stats.Load(time.Now(), f.key.String())
		load = l
		return ok && l.Batch.Queued == 3
	})
	if load.Queued != 3 || load.Batch.Queued != 3 {
		t.Fatalf("load %+v", load)
	}
	if n := f.pokeCount(); n != 0 {
		t.Fatalf("batch work poked %d times", n)
	}
	prof, err := engine.BuiltinProfile(engine.DefaultProfile)
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct{ budget, want int }{{0, 0}, {1, 1}, {2, 1}} {
		c := autoscaler.DefaultConfig()
		c.BatchMaxReplicas = tc.budget
		d, err := autoscaler.New(c, prof)
		if err != nil {
			t.Fatal(err)
		}
		rec := d.Scale(time.Now(), autoscaler.Input{Load: load})
		if rec.Decode != tc.want {
			t.Errorf("budget %d: decode %d, want %d (%+v)", tc.budget, rec.Decode, tc.want, rec.DecodeRole)
		}
	}

	// An interactive request at zero pokes at once.
	go func() { f.send(ctx, "standard") }()
	waitFor(t, func() bool { return f.pokeCount() >= 1 })
}

// TestBatchDeadlinePromotes: a batch request whose deadline is within
// BatchPromoteBefore runs as standard work (counted in the standard tier,
// promoted in the batch counters); one without a deadline stays batch; and
// one waiting at zero moves up when its promotion time comes, which pokes
// the autoscaler as standard work does.
func TestBatchDeadlinePromotes(t *testing.T) {
	f := newBatchScaleFixture(t, time.Minute)

	// Waiting at zero: promoted 300 ms from now.
	ctx, cancel := context.WithDeadline(context.Background(), time.Now().Add(time.Minute+300*time.Millisecond))
	defer cancel()
	done := make(chan int, 1)
	go func() { done <- f.send(ctx, "batch").Code }()
	waitFor(t, func() bool { return f.pokeCount() >= 1 })
	if s := revStats(t, f); s.Batch == nil || s.Batch.Promoted != 1 || s.QueuedByTier["standard"] != 1 {
		t.Fatalf("after promotion: %+v (batch %+v)", s.QueuedByTier, s.Batch)
	}

	_, simAddr := simtest.Start(t, "demo")
	if err := f.act.SetPods(f.key, []activator.PodSpec{{Name: "pod-0", URL: "http://" + simAddr, Role: router.RoleBoth}}); err != nil {
		t.Fatal(err)
	}
	if code := <-done; code != http.StatusOK {
		t.Fatalf("promoted waiting request: %d", code)
	}
	// Due on arrival.
	due, cancel2 := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel2()
	if w := f.send(due, "batch"); w.Code != http.StatusOK {
		t.Fatalf("due request: %d %s", w.Code, w.Body)
	}
	// No deadline: batch.
	if w := f.send(context.Background(), "batch"); w.Code != http.StatusOK {
		t.Fatalf("batch request: %d %s", w.Code, w.Body)
	}
	s := revStats(t, f)
	if s.RequestsByTier["standard"] != 2 || s.RequestsByTier["batch"] != 1 || s.Batch.Promoted != 2 {
		t.Fatalf("requests by tier %v, batch %+v", s.RequestsByTier, s.Batch)
	}
	if s.Batch.CompletionTokens != 4 || s.CompletionTokens != 12 || s.Batch.InFlight != 0 {
		t.Fatalf("batch counters %+v of %d completion tokens", s.Batch, s.CompletionTokens)
	}
}

func revStats(t *testing.T, f *batchScaleFixture) activator.RevisionStats {
	t.Helper()
	for _, s := range f.act.Stats() {
		if s.Revision == f.key.String() {
			return s
		}
	}
	t.Fatalf("no stats for %s", f.key)
	return activator.RevisionStats{}
}
