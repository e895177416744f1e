package reconciler

import (
	"context"
	"fmt"
	"sync"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	"k8s.io/apimachinery/pkg/types"
	"knative.dev/serving/pkg/apis/autoscaling/v1alpha1"
	"sigs.k8s.io/controller-runtime/pkg/event"

	"github.com/llmd-kn/llmd-kn/pkg/apis"
	"github.com/llmd-kn/llmd-kn/pkg/autoscaler"
	"github.com/llmd-kn/llmd-kn/pkg/engine"
)

// revisionScaler is one revision's decider and its last recommendation.
// Its mutex serializes the decider (ticks and pokes).
type revisionScaler struct {
	key          types.NamespacedName
	cfg          autoscaler.Config
	profile      string
	initialScale int // -1: unset (1)
	decodeTarget string

	mu  sync.Mutex
	dec *autoscaler.Decider
	// initializedAt is when the PA was first seen ScaleTargetInitialized
	// (zero: not yet); the initial scale holds until then and for the
	// grace period after, as Knative's KPA keeps it until reached.
	initializedAt time.Time
	// gaveUp: the PA's activation timed out before the target was ever
	// initialized (Active=False, TimedOut); the initial scale no longer
	// holds, the recommendation alone rules. Set by each reconcile from
	// the PA status, where it persists.
	gaveUp    bool
	rec       autoscaler.Recommendation
	hasRec    bool
	announced string // last advisory recommendation sent as an Event
	// noDataSince is when the decider last ran without a fresh report of
	// the revision from any activator (zero: the last tick had data, or
	// no tick yet). While it is set the last recommendation holds:
	// no data is not zero load (Knative's decider returns no
	// recommendation on ErrNoData and the KPA keeps the scale).
	noDataSince time.Time
	// lastTick is when scale last ran (zero: never). The replicas to set
	// at lastTick, compared with those at now, tell a tick whether they
	// changed: besides the recommendation, the initial-scale hold ends
	// with time alone (initializedAt plus the grace period), and a
	// recommendation of zero that arrived while the hold was in force is
	// applied only when a reconcile follows the hold's end.
	lastTick time.Time
	// flush is the KV flush in progress before a scale to zero (nil:
	// none); see kvflush.go.
	flush *kvFlush
}

// initial is a role's initial scale within its bounds: Knative's
// initial-scale (default 1), which a new revision keeps for the scale-to-zero
// grace period.
func (s *revisionScaler) initial(b autoscaler.Bounds) int {
	n := s.initialScale
	if n < 0 {
		n = 1
	}
	n = max(n, b.MinScale)
	if b.MaxScale > 0 {
		n = min(n, b.MaxScale)
	}
	return n
}

// want is the replicas the reconciler should set now: the recommendation,
// held at least at the initial scale until the scale target is initialized
// and for the scale-to-zero grace period after, unless the activation
// timed out before that (gaveUp).
func (s *revisionScaler) want(now time.Time) (decode, prefill int, rec autoscaler.Recommendation) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.wantLocked(now)
}

func (s *revisionScaler) wantLocked(now time.Time) (decode, prefill int, rec autoscaler.Recommendation) {
	if s.hasRec {
		decode, prefill = s.rec.Decode, s.rec.Prefill
	}
	if (s.initializedAt.IsZero() && !s.gaveUp) || (!s.initializedAt.IsZero() && now.Sub(s.initializedAt) < s.cfg.ScaleToZeroGracePeriod) {
		decode = max(decode, s.initial(s.cfg.Decode))
		if s.cfg.Disaggregated {
			prefill = max(prefill, s.initial(s.cfg.Prefill))
		}
	}
	if !s.cfg.Disaggregated {
		prefill = 0
	}
	return decode, prefill, s.rec
}

// scalerFor returns the revision's scaler, made anew when its
// configuration changed.
func (r *PodAutoscalerReconciler) scalerFor(key types.NamespacedName, cfg autoscaler.Config, profile string, initialScale int, decodeTarget string) (*revisionScaler, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if s := r.revs[key]; s != nil && s.cfg == cfg && s.profile == profile && s.initialScale == initialScale && s.decodeTarget == decodeTarget {
		return s, nil
	}
	prof, err := engine.BuiltinProfile(profile)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", apis.SimProfileAnnotation, err)
	}
	dec, err := autoscaler.New(cfg, prof)
	if err != nil {
		return nil, fmt.Errorf("autoscaler: %w", err)
	}
	now := r.now()
	// Until an activator reports the revision there is no data: the
	// first status says so at once, not at the first tick.
	s := &revisionScaler{key: key, cfg: cfg, profile: profile, initialScale: initialScale, decodeTarget: decodeTarget, dec: dec,
		noDataSince: now}
	if old := r.revs[key]; old != nil {
		// A new configuration keeps the revision's progress: the initial
		// scale applies once per revision.
		old.mu.Lock()
		s.initializedAt, s.gaveUp = old.initializedAt, old.gaveUp
		if !old.noDataSince.IsZero() {
			s.noDataSince = old.noDataSince
		}
		old.mu.Unlock()
	}
	if s.initial(cfg.Decode) > 0 {
		// A revision that starts with pods counts as having traffic now,
		// so that the decider keeps them for the grace period.
		s.dec.Poke(now)
	}
	mode := apis.AutoscalerAct
	if cfg.Advisory {
		mode = apis.AutoscalerAdvise
	}
	r.log.Info("autoscaler", "revision", key.String(), "class", apis.AutoscalerClass, "mode", mode, "profile", profile,
		"tick", cfg.TickInterval, "ttft", cfg.SLO.TTFT, "tpot", cfg.SLO.TPOT, "percentile", cfg.SLO.Percentile,
		"decode", cfg.Decode, "prefill", cfg.Prefill, "disaggregated", cfg.Disaggregated, "scale_to_zero", cfg.EnableScaleToZero)
	r.revs[key] = s
	return s, nil
}

// recommendation is the decider's last recommendation, without the
// initial-scale hold; ok is false before the first.
func (s *revisionScaler) recommendation() (rec autoscaler.Recommendation, ok bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.rec, s.hasRec
}

// setGaveUp records whether the PA's activation timed out before its
// target was initialized.
func (s *revisionScaler) setGaveUp(v bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.gaveUp = v
}

// initialized records that the PA's scale target reached its initial scale.
func (s *revisionScaler) initialized(now time.Time) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.initializedAt.IsZero() {
		s.initializedAt = now
	}
}

// forget drops a revision's decider and its gauges.
func (r *PodAutoscalerReconciler) forget(key types.NamespacedName) {
	r.mu.Lock()
	_, ok := r.revs[key]
	delete(r.revs, key)
	r.mu.Unlock()
	if ok {
		r.recommended.DeletePartialMatch(map[string]string{"namespace": key.Namespace, "revision": key.Name})
		r.log.Info("autoscaler stopped", "revision", key.String())
	}
}

func (r *PodAutoscalerReconciler) scalers() []*revisionScaler {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := make([]*revisionScaler, 0, len(r.revs))
	for _, s := range r.revs {
		out = append(out, s)
	}
	return out
}

// Poke wakes a revision at zero at once: the decider's Poke, applied only
// upwards, and a reconcile.
func (r *PodAutoscalerReconciler) Poke(namespace, name string) error {
	key := types.NamespacedName{Namespace: namespace, Name: name}
	r.mu.Lock()
	s := r.revs[key]
	r.mu.Unlock()
	if s == nil {
		return ErrUnknownRevision
	}
	s.mu.Lock()
	rec := s.dec.Poke(r.now())
	if s.hasRec {
		rec.Decode = max(rec.Decode, s.rec.Decode)
		rec.Prefill = max(rec.Prefill, s.rec.Prefill)
	}
	s.rec, s.hasRec = rec, true
	s.mu.Unlock()
	r.record(s, rec)
	r.enqueue(key)
	return nil
}

// Recommendations lists every revision's current recommendation.
func (r *PodAutoscalerReconciler) Recommendations() []RevisionRecommendation {
	now := r.now()
	var out []RevisionRecommendation
	for _, s := range r.scalers() {
		d, p, rec := s.want(now)
		mode := apis.AutoscalerAct
		if s.cfg.Advisory {
			mode = apis.AutoscalerAdvise
		}
		_, holding := s.holding()
		key := s.key.String()
		load, _ := r.stats.Load(now, key)
		out = append(out, RevisionRecommendation{Namespace: s.key.Namespace, Name: s.key.Name, Mode: mode,
			Decode: d, Prefill: p, Recommendation: rec, NoData: holding,
			Activators: r.stats.Activators(now, key), Queued: load.Queued, InFlight: load.InFlight})
	}
	return out
}

func (r *PodAutoscalerReconciler) enqueue(key types.NamespacedName) {
	pa := &v1alpha1.PodAutoscaler{}
	pa.Namespace, pa.Name = key.Namespace, key.Name
	select {
	case r.kick <- event.GenericEvent{Object: pa}:
	default: // full: the next tick asks again
	}
}

// runTicker runs every revision's decider each tick until ctx ends.
func (r *PodAutoscalerReconciler) runTicker(ctx context.Context) error {
	t := time.NewTicker(r.opts.Config.TickInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
			for _, s := range r.scalers() {
				r.tick(ctx, s)
			}
		}
	}
}

// tick runs one revision's decider on the load the activators reported and
// the ready replicas of its Deployments, and asks for a reconcile when the
// replicas to set changed.
func (r *PodAutoscalerReconciler) tick(ctx context.Context, s *revisionScaler) {
	now := r.now()
	load, fresh := r.stats.Load(now, s.key.String())
	if _, was := s.holding(); was == fresh {
		if fresh {
			r.log.Info("activator reports fresh", "revision", s.key.String())
		} else {
			r.log.Info("no activator reports the revision; holding the last recommendation", "revision", s.key.String(), "silence", ActivatorSilence)
		}
	}
	in := autoscaler.Input{Load: load}
	// The pods' telemetry (running, waiting, KV usage) as the activators
	// scraped it; ready counts from the Deployments, which the activators
	// may not have seen yet.
	in.Pods, _ = r.stats.Pods(now, s.key.String())
	in.Pods.Decode.Ready = r.readyReplicas(ctx, s.key.Namespace, s.decodeTarget)
	if s.cfg.Disaggregated {
		in.Pods.Prefill.Ready = r.readyReplicas(ctx, s.key.Namespace, PrefillName(s.key.Name))
	}
	rec, changed, decided := s.scale(now, in, fresh)
	if decided {
		r.record(s, rec)
	}
	if changed {
		r.enqueue(s.key)
	}
}

// scale runs the decider on in when fresh (some activator reported the
// revision within ActivatorSilence) and records its recommendation;
// without fresh data it leaves the last recommendation and the decider's
// windows as they are and marks the revision as holding. changed: the
// replicas to set, the recommendation or the holding state changed (the
// reconciler should look again); decided: the decider ran.
func (s *revisionScaler) scale(now time.Time, in autoscaler.Input, fresh bool) (rec autoscaler.Recommendation, changed, decided bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	prevAt := s.lastTick
	if prevAt.IsZero() || prevAt.After(now) {
		prevAt = now
	}
	s.lastTick = now
	// What the last tick asked the reconciler to set.
	d0, p0, prev := s.wantLocked(prevAt)
	if !fresh {
		if s.noDataSince.IsZero() {
			s.noDataSince = now
			return s.rec, true, false
		}
		d1, p1, _ := s.wantLocked(now)
		return s.rec, d0 != d1 || p0 != p1, false
	}
	wasHolding := !s.noDataSince.IsZero()
	s.noDataSince = time.Time{}
	rec = s.dec.Scale(now, in)
	s.rec, s.hasRec = rec, true
	d1, p1, _ := s.wantLocked(now)
	// A recommendation that changed while the initial scale holds changes
	// no replicas, but the reconciler decides on it whether a stalled
	// activation has timed out.
	changed = wasHolding || d0 != d1 || p0 != p1 || prev.Decode != rec.Decode || prev.Prefill != rec.Prefill ||
		(s.cfg.Advisory && prev.String() != rec.String())
	return rec, changed, true
}

// holding reports since when the revision has had no fresh activator
// report (ok false: it has).
func (s *revisionScaler) holding() (since time.Time, ok bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.noDataSince, !s.noDataSince.IsZero()
}

func (r *PodAutoscalerReconciler) readyReplicas(ctx context.Context, namespace, name string) int {
	if name == "" {
		return 0
	}
	d := &appsv1.Deployment{}
	if err := r.client.Get(ctx, types.NamespacedName{Namespace: namespace, Name: name}, d); err != nil {
		return 0
	}
	return int(d.Status.ReadyReplicas)
}

// record sets the recommendation gauges.
func (r *PodAutoscalerReconciler) record(s *revisionScaler, rec autoscaler.Recommendation) {
	r.recommended.WithLabelValues(s.key.Namespace, s.key.Name, "decode").Set(float64(rec.Decode))
	if s.cfg.Disaggregated {
		r.recommended.WithLabelValues(s.key.Namespace, s.key.Name, RolePrefill).Set(float64(rec.Prefill))
	}
}
