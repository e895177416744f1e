package plan

import (
	"errors"
	"fmt"
	"math"
	"strconv"
	"time"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/metric/noop"
	"go.uber.org/zap"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"knative.dev/serving/pkg/apis/autoscaling"
	autoscalingv1alpha1 "knative.dev/serving/pkg/apis/autoscaling/v1alpha1"
	"knative.dev/serving/pkg/autoscaler/aggregation"
	asconfig "knative.dev/serving/pkg/autoscaler/config"
	"knative.dev/serving/pkg/autoscaler/scaling"
	kparesources "knative.dev/serving/pkg/reconciler/autoscaling/kpa/resources"
)

// KPAConfig configures the Knative KPA baseline: Knative's own decider
// (knative.dev/serving/pkg/autoscaler/scaling) with the concurrency metric
// and the config-autoscaler defaults, except for what is set here.
type KPAConfig struct {
	// Target is autoscaling.knative.dev/target: the soft concurrency
	// target per replica (requests queued or in flight).
	Target float64
	// TargetUtilization is autoscaling.knative.dev/target-utilization-percentage
	// as a fraction; 0 keeps Knative's default (70%).
	TargetUtilization float64
	// MinScale and MaxScale bound the replicas (MaxScale 0: unbounded).
	MinScale, MaxScale int
	// ScaleToZeroGrace is how long the decider must want zero before the
	// replicas go to zero (Knative's scale-to-zero-grace-period, counted
	// from the revision turning inactive).
	ScaleToZeroGrace time.Duration
	// PanicThresholdPercentage (autoscaling.knative.dev/panic-threshold-percentage)
	// and ScaleDownDelay (autoscaling.knative.dev/scale-down-delay); zero
	// keeps Knative's defaults (200%, none).
	PanicThresholdPercentage float64
	ScaleDownDelay           time.Duration
}

// KPAScaler is Knative's KPA as a Scaler: every tick it records the
// revision's concurrency as Knative's metric collector would from the
// activator's per-second reports (target-burst-capacity -1 keeps the
// activator in the path, so it counts every request it holds, queued or
// proxied) into Knative's own time-bucketed windows, and asks Knative's
// decider for the desired count at the tick's virtual time. Scale to zero
// follows the KPA reconciler: once the decider wants zero (no traffic over
// the stable window) the count holds at one for ScaleToZeroGrace, then goes
// to zero. A request arriving at zero pokes it: the activator reports one
// request at once and the decider asks for one replica.
//
// Deployments without P/D only. A KPAScaler holds the decider's state: use
// a new one for every run.
type KPAScaler struct {
	cfg  KPAConfig
	spec scaling.DeciderSpec
	uni  scaling.UniScaler
	mc   *kpaMetrics
	log  *zap.SugaredLogger
	base time.Time

	ready     int
	last      int
	zeroSince time.Duration // when the decider started wanting 0; -1 none
}

// NewKPAScaler returns Knative's decider for one revision, configured as
// Knative's reconciler configures it (MakeDecider) from a PodAutoscaler
// with the target annotations and config-autoscaler's defaults.
func NewKPAScaler(c KPAConfig) (*KPAScaler, error) {
	if !(c.Target > 0) || math.IsInf(c.Target, 0) {
		return nil, fmt.Errorf("kpa: target must be a positive number, got %v", c.Target)
	}
	if c.TargetUtilization < 0 || c.TargetUtilization > 1 || math.IsNaN(c.TargetUtilization) {
		return nil, fmt.Errorf("kpa: target utilization must be in (0, 1] (0 for the default), got %v", c.TargetUtilization)
	}
	if c.MinScale < 0 || c.MaxScale < 0 || (c.MaxScale > 0 && c.MinScale > c.MaxScale) {
		return nil, fmt.Errorf("kpa: bad bounds min %d max %d", c.MinScale, c.MaxScale)
	}
	if c.ScaleToZeroGrace < 0 {
		return nil, errors.New("kpa: scale-to-zero grace must not be negative")
	}
	if c.PanicThresholdPercentage != 0 && !(c.PanicThresholdPercentage >= 110 && c.PanicThresholdPercentage <= 1000) {
		return nil, fmt.Errorf("kpa: panic threshold must be in [110, 1000] percent, got %v", c.PanicThresholdPercentage)
	}
	if c.ScaleDownDelay < 0 || c.ScaleDownDelay > time.Hour {
		return nil, fmt.Errorf("kpa: scale-down delay must be in [0, 1h], got %s", c.ScaleDownDelay)
	}
	acfg, err := asconfig.NewConfigFromMap(map[string]string{})
	if err != nil {
		return nil, fmt.Errorf("kpa: config-autoscaler defaults: %w", err)
	}
	ann := map[string]string{
		autoscaling.ClassAnnotationKey:  autoscaling.KPA,
		autoscaling.MetricAnnotationKey: autoscaling.Concurrency,
		autoscaling.TargetAnnotationKey: strconv.FormatFloat(c.Target, 'g', -1, 64),
		// The activator stays in the path (PEERS.md): it is what queues.
		autoscaling.TargetBurstCapacityKey: "-1",
	}
	if c.PanicThresholdPercentage > 0 {
		ann[autoscaling.PanicThresholdPercentageAnnotationKey] = strconv.FormatFloat(c.PanicThresholdPercentage, 'g', -1, 64)
	}
	if c.ScaleDownDelay > 0 {
		ann[autoscaling.ScaleDownDelayAnnotationKey] = c.ScaleDownDelay.String()
	}
	if c.TargetUtilization > 0 {
		ann[autoscaling.TargetUtilizationPercentageKey] = strconv.FormatFloat(100*c.TargetUtilization, 'g', -1, 64)
	}
	pa := &autoscalingv1alpha1.PodAutoscaler{
		ObjectMeta: metav1.ObjectMeta{Namespace: "plan", Name: "revision", Annotations: ann},
		Spec: autoscalingv1alpha1.PodAutoscalerSpec{
			ProtocolType: "http1",
			Reachability: autoscalingv1alpha1.ReachabilityReachable,
		},
	}
	d := kparesources.MakeDecider(pa, acfg)
	s := &KPAScaler{cfg: c, spec: d.Spec, base: time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC), zeroSince: -1,
		log: zap.NewNop().Sugar()}
	s.mc = &kpaMetrics{
		stable: aggregation.NewTimedFloat64Buckets(d.Spec.StableWindow, asconfig.BucketSize),
		panic:  aggregation.NewTimedFloat64Buckets(time.Duration(float64(d.Spec.StableWindow)*acfg.PanicWindowPercentage/100), asconfig.BucketSize),
		bucket: asconfig.BucketSize,
	}
	s.uni = scaling.New(attribute.NewSet(), noop.NewMeterProvider(), pa.Namespace, pa.Name, s.mc, kpaPods{s}, &s.spec)
	return s, nil
}

// Spec returns the decider's specification (targets, windows, rates).
func (s *KPAScaler) Spec() scaling.DeciderSpec { return s.spec }

// Scale records the concurrency since the last call and runs Knative's
// decider.
func (s *KPAScaler) Scale(obs *Observation) Replicas {
	s.ready = obs.Ready.Decode
	s.mc.observe(s.base, obs)
	want := s.last
	if r := s.uni.Scale(s.log, s.base.Add(obs.Now)); r.ScaleValid {
		want = int(r.DesiredPodCount)
	}
	if want == 0 {
		if s.zeroSince < 0 {
			s.zeroSince = obs.Now
		}
		if obs.Now-s.zeroSince < s.cfg.ScaleToZeroGrace && s.last > 0 {
			want = 1
		}
	} else {
		s.zeroSince = -1
	}
	return s.answer(want)
}

// Poke is the activator's report of a request at zero: one replica.
func (s *KPAScaler) Poke(obs *Observation) Replicas {
	s.zeroSince = -1
	return s.answer(max(s.last, 1))
}

func (s *KPAScaler) answer(want int) Replicas {
	want = max(want, s.cfg.MinScale)
	if s.cfg.MaxScale > 0 {
		want = min(want, s.cfg.MaxScale)
	}
	s.last = want
	return Replicas{Decode: want}
}

// kpaPods is the decider's ready pod counter.
type kpaPods struct{ s *KPAScaler }

func (p kpaPods) ReadyCount() (int, error)    { return p.s.ready, nil }
func (p kpaPods) NotReadyCount() (int, error) { return 0, nil }

// kpaMetrics is Knative's metric client for one revision: the stable and
// panic windows of concurrency, in Knative's buckets, fed one report per
// bucket (second) with the mean concurrency over it.
type kpaMetrics struct {
	stable, panic *aggregation.TimedFloat64Buckets
	bucket        time.Duration
	at            time.Duration // virtual time recorded up to
	integral      float64       // Observation.ConcurrencySeconds at at
}

// observe records one report per bucket boundary passed since the last
// call, each with the mean concurrency since the last call.
func (m *kpaMetrics) observe(base time.Time, obs *Observation) {
	dt := obs.Now - m.at
	if dt <= 0 {
		return
	}
	mean := (obs.ConcurrencySeconds - m.integral) / dt.Seconds()
	for t := m.at.Truncate(m.bucket) + m.bucket; t <= obs.Now; t += m.bucket {
		m.stable.Record(base.Add(t), mean)
		m.panic.Record(base.Add(t), mean)
	}
	m.at, m.integral = obs.Now, obs.ConcurrencySeconds
}

func (m *kpaMetrics) StableAndPanicConcurrency(_ types.NamespacedName, now time.Time) (float64, float64, error) {
	return m.stable.WindowAverage(now), m.panic.WindowAverage(now), nil
}

func (m *kpaMetrics) StableAndPanicRPS(types.NamespacedName, time.Time) (float64, float64, error) {
	return 0, 0, errors.New("kpa: the plan feeds concurrency only")
}
