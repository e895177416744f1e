package reconciler

import (
	"io"
	"log/slog"
	"testing"
	"time"

	"k8s.io/apimachinery/pkg/types"

	"github.com/llmd-kn/llmd-kn/pkg/autoscaler"
	"github.com/llmd-kn/llmd-kn/pkg/engine"
)

// TestInitialScaleHoldsUntilInitialized: a new revision keeps its initial
// scale however long its pods take to become ready (unless its activation
// timed out: TestDecideActivation, TestActivationTimeout), and for the
// grace period after; then the decider's recommendation (no traffic: zero)
// rules.
func TestInitialScaleHoldsUntilInitialized(t *testing.T) {
	r := &PodAutoscalerReconciler{revs: map[types.NamespacedName]*revisionScaler{}, log: slog.New(slog.NewTextHandler(io.Discard, nil))}
	cfg := autoscaler.DefaultConfig()
	cfg.ScaleToZeroGracePeriod = time.Second
	cfg.Decode = autoscaler.Bounds{MaxScale: 4}
	key := types.NamespacedName{Namespace: "ns", Name: "rev"}
	s, err := r.scalerFor(key, cfg, engine.DefaultProfile, 3, "rev-deployment")
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	if d, _, _ := s.want(now.Add(time.Hour)); d != 3 {
		t.Errorf("an hour before the pods are ready: decode %d, want the initial 3", d)
	}
	s.setGaveUp(true)
	if d, _, _ := s.want(now.Add(time.Hour)); d != 0 {
		t.Errorf("after the activation timed out: decode %d, want the recommendation 0", d)
	}
	s.setGaveUp(false)
	s.initialized(now)
	if d, _, _ := s.want(now.Add(500 * time.Millisecond)); d != 3 {
		t.Errorf("within the grace period after initialization: decode %d, want 3", d)
	}
	s.mu.Lock()
	s.rec, s.hasRec = s.dec.Scale(now.Add(2*time.Second), autoscaler.Input{}), true
	s.mu.Unlock()
	if d, _, _ := s.want(now.Add(2 * time.Second)); d != 0 {
		t.Errorf("after the grace period with no traffic: decode %d, want 0", d)
	}
	// Same configuration: same scaler; a new one keeps the initialization.
	if s2, _ := r.scalerFor(key, cfg, engine.DefaultProfile, 3, "rev-deployment"); s2 != s {
		t.Error("the scaler was recreated with an unchanged configuration")
	}
	cfg.Decode.MaxScale = 2
	s3, err := r.scalerFor(key, cfg, engine.DefaultProfile, 3, "rev-deployment")
	if err != nil || s3 == s {
		t.Fatalf("changed configuration: %v, same scaler %v", err, s3 == s)
	}
	if d, _, _ := s3.want(now.Add(2 * time.Second)); d != 0 {
		t.Errorf("recreated scaler after initialization: decode %d, want 0", d)
	}
	if d, _, _ := s3.want(now.Add(100 * time.Millisecond)); d != 2 {
		t.Errorf("recreated scaler within the grace period: decode %d, want the initial 3 capped at max-scale 2", d)
	}
	if _, err := r.scalerFor(key, cfg, "no-such-profile", 3, "rev-deployment"); err == nil {
		t.Error("unknown engine profile: no error")
	}
}

// TestHoldEndAsksForAReconcile: the end of the initial-scale hold changes
// the replicas to set with time alone. A revision whose pod became ready
// after the decider's grace period (so its recommendation was already
// zero, unchanged from tick to tick) must still ask for a reconcile when
// the hold ends, or it stays at its initial scale until some unrelated
// event (the e2e tier's TestScaleFromZero failed so, at random: "decode
// Deployment at 0 replicas: not within 30s").
func TestHoldEndAsksForAReconcile(t *testing.T) {
	start := time.Unix(1_000_000, 0)
	now := start
	r := &PodAutoscalerReconciler{revs: map[types.NamespacedName]*revisionScaler{}, log: slog.New(slog.NewTextHandler(io.Discard, nil)),
		opts: Options{Now: func() time.Time { return now }}}
	cfg := autoscaler.DefaultConfig()
	cfg.ScaleToZeroGracePeriod = 2 * time.Second
	cfg.TickInterval = time.Second
	key := types.NamespacedName{Namespace: "ns", Name: "rev"}
	s, err := r.scalerFor(key, cfg, engine.DefaultProfile, 1, "rev-deployment")
	if err != nil {
		t.Fatal(err)
	}
	readyAt := start.Add(5 * time.Second) // the pod took 5 s to become ready
	var zeroAt time.Time
	for i := 1; i <= 20; i++ {
		now = start.Add(time.Duration(i) * cfg.TickInterval)
		if !now.Before(readyAt) {
			s.initialized(readyAt) // the reconcile that saw it ready
		}
		_, changed, _ := s.scale(now, autoscaler.Input{}, true) // activators report no traffic
		d, _, rec := s.want(now)
		if now.After(start.Add(cfg.ScaleToZeroGracePeriod)) && rec.Decode != 0 {
			t.Fatalf("%v after creation without traffic: recommendation %s, want 0", now.Sub(start), rec)
		}
		if d == 0 {
			if !changed {
				t.Fatalf("tick at +%v: the replicas to set went to 0 (hold over) without asking for a reconcile", now.Sub(start))
			}
			zeroAt = now
			break
		}
	}
	if want := readyAt.Add(cfg.ScaleToZeroGracePeriod); zeroAt.Before(want) || zeroAt.After(want.Add(cfg.TickInterval)) {
		t.Errorf("replicas to set reached 0 at +%v, want within a tick of the hold's end at +%v", zeroAt.Sub(start), want.Sub(start))
	}
}

// TestAutoscalerNoDataNoAutoscale mirrors Knative's test of the same name:
// ticks without a fresh activator report give no recommendation, and the
// last one holds however long the silence lasts; activators that report
// zero traffic still take the revision to zero.
func TestAutoscalerNoDataNoAutoscale(t *testing.T) {
	r := &PodAutoscalerReconciler{revs: map[types.NamespacedName]*revisionScaler{}, log: slog.New(slog.NewTextHandler(io.Discard, nil))}
	cfg := autoscaler.DefaultConfig()
	cfg.Decode = autoscaler.Bounds{MaxScale: 4}
	key := types.NamespacedName{Namespace: "ns", Name: "rev"}
	s, err := r.scalerFor(key, cfg, engine.DefaultProfile, 1, "rev-deployment")
	if err != nil {
		t.Fatal(err)
	}
	start := time.Unix(1_000_000, 0)
	s.initialized(start)
	heavy := autoscaler.Input{Load: autoscaler.Load{
		RequestsPerSecond: map[string]float64{"standard": 1000}, PromptTokensPerSecond: 1e6, UncachedPrefillTokensPerSecond: 1e6,
		OutputTokensPerSecond: 1e5, MeanPromptTokens: 1000, MeanOutputTokens: 100, InFlight: 500,
	}}
	if _, changed, decided := s.scale(start, heavy, true); !changed || !decided {
		t.Fatalf("first tick with data: changed %v, decided %v", changed, decided)
	}
	busy, _ := s.recommendation()
	if busy.Decode != 4 {
		t.Fatalf("under heavy load: %s, want 4 decode replicas (max-scale)", busy)
	}
	if _, ok := s.holding(); ok {
		t.Fatal("holding after a tick with data")
	}

	// The activators go silent: an hour of ticks, far past the stable
	// window, the scale-down delay and the grace period.
	now := start
	for i := range 3600 {
		now = now.Add(time.Second)
		_, changed, decided := s.scale(now, autoscaler.Input{}, false)
		if decided || changed != (i == 0) {
			t.Fatalf("tick %d without data: decided %v, changed %v (want no decision; changed once, at the start of the hold)", i, decided, changed)
		}
	}
	if d, _, rec := s.want(now); d != 4 || rec != busy {
		t.Errorf("after an hour without data: decode %d, recommendation %s; want the last one, 4", d, rec)
	}
	if since, ok := s.holding(); !ok || !since.Equal(start.Add(time.Second)) {
		t.Errorf("holding %v since %v, want since the first silent tick", ok, since)
	}

	// Activators report zero traffic: the revision goes to zero as before.
	var zeroAt time.Time
	for range 600 {
		now = now.Add(time.Second)
		if _, _, decided := s.scale(now, autoscaler.Input{}, true); !decided {
			t.Fatal("a tick with data made no decision")
		}
		if d, _, _ := s.want(now); d == 0 {
			zeroAt = now
			break
		}
	}
	if zeroAt.IsZero() {
		t.Fatal("reported zero traffic for 10 minutes did not scale to zero")
	}
	if _, ok := s.holding(); ok {
		t.Error("still holding after reports resumed")
	}
	t.Logf("to zero %v after reports of zero traffic resumed", zeroAt.Sub(start.Add(3600*time.Second)))
}

// TestStatsLoadNoData: Load's ok is false when no activator reported the
// revision within ActivatorSilence, true for a report of zero traffic.
func TestStatsLoadNoData(t *testing.T) {
	s := NewStats()
	t0 := time.Unix(1_000_000, 0)
	if _, ok := s.Load(t0, "default/chat-00001"); ok {
		t.Error("no report ever: ok")
	}
	s.Report(t0, StatsReport{Activator: "a", Revisions: []autoscaler.Snapshot{{Revision: "default/chat-00001"}}})
	if l, ok := s.Load(t0.Add(ActivatorSilence), "default/chat-00001"); !ok || l.Requests() != 0 {
		t.Errorf("a report of zero traffic: ok %v, %v requests/s", ok, l.Requests())
	}
	if _, ok := s.Load(t0.Add(ActivatorSilence), "default/other"); ok {
		t.Error("a revision the activator does not report: ok")
	}
	if _, ok := s.Load(t0.Add(ActivatorSilence+time.Millisecond), "default/chat-00001"); ok {
		t.Error("after the activator's silence: ok")
	}
}
