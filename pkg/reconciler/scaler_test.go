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
