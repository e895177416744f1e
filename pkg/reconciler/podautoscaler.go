package reconciler

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	appsv1 "k8s.io/api/apps/v1"
	autoscalingv1 "k8s.io/api/autoscaling/v1"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	"k8s.io/apimachinery/pkg/api/equality"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/tools/events"
	"k8s.io/utils/ptr"
	knativeapis "knative.dev/pkg/apis"
	"knative.dev/serving/pkg/apis/autoscaling/v1alpha1"
	"knative.dev/serving/pkg/apis/serving"
	servingv1 "knative.dev/serving/pkg/apis/serving/v1"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/builder"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/event"
	"sigs.k8s.io/controller-runtime/pkg/handler"
	"sigs.k8s.io/controller-runtime/pkg/manager"
	crmetrics "sigs.k8s.io/controller-runtime/pkg/metrics"
	"sigs.k8s.io/controller-runtime/pkg/predicate"
	"sigs.k8s.io/controller-runtime/pkg/reconcile"
	"sigs.k8s.io/controller-runtime/pkg/source"

	"github.com/llmd-kn/llmd-kn/pkg/apis"
	"github.com/llmd-kn/llmd-kn/pkg/autoscaler"
	"github.com/llmd-kn/llmd-kn/pkg/engine"
)

// conflictRetry is how soon a status write that lost a race is retried.
const conflictRetry = 50 * time.Millisecond

// Condition reasons, as Knative's KPA words them.
const (
	ReasonNoTraffic = "NoTraffic"
	ReasonQueued    = "Queued"
	// ReasonTimedOut: the target did not become ready within its
	// activation timeout and was scaled to zero.
	ReasonTimedOut = "TimedOut"
)

const (
	// DefaultProgressDeadline is Knative's default progress deadline
	// (config-deployment progress-deadline, Kubernetes' 600 s), used when
	// neither the PA's serving.knative.dev/progress-deadline nor its
	// Deployment's progressDeadlineSeconds says otherwise.
	DefaultProgressDeadline = 600 * time.Second
	// ActivationTimeoutBuffer is added to the progress deadline, as
	// Knative's KPA does, so that Knative's revision reconciler sees the
	// Deployment's ProgressDeadlineExceeded and reports the pods' failure
	// before the target goes to zero.
	ActivationTimeoutBuffer = 30 * time.Second
)

// Options configure the PodAutoscaler reconciler.
type Options struct {
	// Namespace is llmd-kn's own namespace, where the activator's Service
	// lives.
	Namespace string
	// ActivatorService is the activator's Service name; its EndpointSlices
	// are mirrored into every revision's EndpointSlice.
	ActivatorService string
	// Config is the base decider configuration (config-llmd-autoscaler);
	// each revision's annotations are applied on top. Zero: the defaults.
	Config autoscaler.Config
	// TierSLO returns a tier's TTFT and TPOT targets (zero: none); nil
	// means none.
	TierSLO func(tier string) (ttft, tpot time.Duration)
	// Logger logs (slog.Default when nil).
	Logger *slog.Logger
	// Registerer takes the recommendation gauge (controller-runtime's
	// metrics registry when nil).
	Registerer prometheus.Registerer
	// Now is the clock of the deciders, the stats API, the activation
	// timeout, the KV flush deadline and the PA's condition transitions
	// (time.Now when nil).
	Now func() time.Time
	// FlushClient calls the decode pods' KV flush endpoint before a scale
	// to zero (nil: a client that follows no redirects).
	FlushClient *http.Client
}

// PodAutoscalerReconciler is the slo.autoscaling.llm-d.ai PodAutoscaler
// class. Create it with New, then SetupWithManager.
type PodAutoscalerReconciler struct {
	client   client.Client
	reader   client.Reader // uncached: the pods of a revision to flush
	recorder events.EventRecorder
	opts     Options
	log      *slog.Logger
	stats    *Stats

	mu   sync.Mutex
	revs map[types.NamespacedName]*revisionScaler

	// kick asks for a reconcile of a PodAutoscaler when its
	// recommendation changed between watch events.
	kick        chan event.GenericEvent
	recommended *prometheus.GaugeVec
	flushes     *prometheus.CounterVec
	flushClient *http.Client
}

// New returns the reconciler, with its client and event recorder from mgr.
func New(mgr manager.Manager, opts Options) (*PodAutoscalerReconciler, error) {
	if opts.Namespace == "" {
		return nil, errors.New("reconciler: Options.Namespace is required")
	}
	if opts.ActivatorService == "" {
		return nil, errors.New("reconciler: Options.ActivatorService is required")
	}
	if opts.Config == (autoscaler.Config{}) {
		opts.Config = autoscaler.DefaultConfig()
	}
	if err := opts.Config.Validate(); err != nil {
		return nil, fmt.Errorf("reconciler: config: %w", err)
	}
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	if opts.Registerer == nil {
		opts.Registerer = crmetrics.Registry
	}
	g := prometheus.NewGaugeVec(prometheus.GaugeOpts{Namespace: "llmd", Subsystem: "autoscaler", Name: "recommended_replicas",
		Help: "Replicas the slo.autoscaling.llm-d.ai decider recommends for a revision's role (applied unless in advise mode)."},
		[]string{"namespace", "revision", "role"})
	if err := opts.Registerer.Register(g); err != nil {
		var are prometheus.AlreadyRegisteredError
		if !errors.As(err, &are) {
			return nil, fmt.Errorf("reconciler: metrics: %w", err)
		}
		g = are.ExistingCollector.(*prometheus.GaugeVec)
	}
	fl := prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: "llmd", Subsystem: "autoscaler", Name: "kv_flushes_total",
		Help: "KV cache flushes the autoscaler asked for before scaling a revision with KV offload to zero, by outcome."},
		[]string{"outcome"})
	if err := opts.Registerer.Register(fl); err != nil {
		var are prometheus.AlreadyRegisteredError
		if !errors.As(err, &are) {
			return nil, fmt.Errorf("reconciler: metrics: %w", err)
		}
		fl = are.ExistingCollector.(*prometheus.CounterVec)
	}
	if opts.FlushClient == nil {
		opts.FlushClient = newFlushClient()
	}
	return &PodAutoscalerReconciler{
		client:      mgr.GetClient(),
		reader:      mgr.GetAPIReader(),
		flushes:     fl,
		flushClient: opts.FlushClient,
		recorder:    mgr.GetEventRecorder("llmd-autoscaler"),
		opts:        opts,
		log:         opts.Logger,
		stats:       NewStats(),
		revs:        map[types.NamespacedName]*revisionScaler{},
		kick:        make(chan event.GenericEvent, 1024),
		recommended: g,
	}, nil
}

// API is the stats API (activator reports, pokes, recommendations) served
// by this reconciler; auth authenticates its writers (nil: anyone).
func (r *PodAutoscalerReconciler) API(auth Authenticator, lim Limits) *StatsAPI {
	return &StatsAPI{Stats: r.stats, Poke: r.Poke, Recommendations: r.Recommendations, Now: r.now, Auth: auth, Limits: lim}
}

func (r *PodAutoscalerReconciler) now() time.Time {
	if r.opts.Now != nil {
		return r.opts.Now()
	}
	return time.Now()
}

// ourClass selects PodAutoscalers of the slo.autoscaling.llm-d.ai class.
func ourClass(o client.Object) bool {
	return o.GetAnnotations()[apis.ClassAnnotation] == apis.AutoscalerClass
}

// SetupWithManager registers the controller and the decider's ticker
// (which runs only on the leader, with the controller).
func (r *PodAutoscalerReconciler) SetupWithManager(mgr manager.Manager) error {
	err := ctrl.NewControllerManagedBy(mgr).
		Named("podautoscaler-slo").
		For(&v1alpha1.PodAutoscaler{}, builder.WithPredicates(predicate.NewPredicateFuncs(ourClass))).
		Owns(&corev1.Service{}).
		Owns(&discoveryv1.EndpointSlice{}).
		// Decode (Knative's) and prefill Deployments carry the revision
		// label; the PodAutoscaler is named like the revision.
		Watches(&appsv1.Deployment{}, handler.EnqueueRequestsFromMapFunc(r.mapRevisionObject)).
		Watches(&discoveryv1.EndpointSlice{}, handler.EnqueueRequestsFromMapFunc(r.mapActivatorSlice)).
		WatchesRawSource(source.Channel(r.kick, &handler.EnqueueRequestForObject{})).
		Complete(r)
	if err != nil {
		return err
	}
	return mgr.Add(manager.RunnableFunc(r.runTicker))
}

func (r *PodAutoscalerReconciler) mapRevisionObject(_ context.Context, o client.Object) []reconcile.Request {
	rev := o.GetLabels()[serving.RevisionLabelKey]
	if rev == "" {
		return nil
	}
	return []reconcile.Request{{NamespacedName: types.NamespacedName{Namespace: o.GetNamespace(), Name: rev}}}
}

// mapActivatorSlice requeues every PodAutoscaler of the class when the
// activator's endpoints change.
func (r *PodAutoscalerReconciler) mapActivatorSlice(ctx context.Context, o client.Object) []reconcile.Request {
	if o.GetNamespace() != r.opts.Namespace || o.GetLabels()[discoveryv1.LabelServiceName] != r.opts.ActivatorService {
		return nil
	}
	var pas v1alpha1.PodAutoscalerList
	if err := r.client.List(ctx, &pas); err != nil {
		r.log.Error("list podautoscalers", "err", err)
		return nil
	}
	var reqs []reconcile.Request
	for i := range pas.Items {
		if ourClass(&pas.Items[i]) {
			reqs = append(reqs, reconcile.Request{NamespacedName: client.ObjectKeyFromObject(&pas.Items[i])})
		}
	}
	return reqs
}

// Reconcile brings one PodAutoscaler's children and status to the desired
// state; it writes only what differs.
func (r *PodAutoscalerReconciler) Reconcile(ctx context.Context, req reconcile.Request) (reconcile.Result, error) {
	pa := &v1alpha1.PodAutoscaler{}
	if err := r.client.Get(ctx, req.NamespacedName, pa); err != nil {
		if apierrors.IsNotFound(err) {
			r.forget(req.NamespacedName)
			return reconcile.Result{}, nil
		}
		return reconcile.Result{}, err
	}
	if !ourClass(pa) || !pa.DeletionTimestamp.IsZero() {
		r.forget(req.NamespacedName)
		return reconcile.Result{}, nil
	}
	orig := pa.DeepCopy()
	pa.Status.InitializeConditions()
	requeue, err := r.reconcile(ctx, pa)
	stampTransitions(&orig.Status, &pa.Status, r.now())
	pa.Status.ObservedGeneration = pa.Generation
	if !equality.Semantic.DeepEqual(orig.Status, pa.Status) {
		switch uerr := r.client.Status().Update(ctx, pa); {
		case apierrors.IsConflict(uerr) && err == nil:
			// The cache was behind a write: try again on the newer object.
			return reconcile.Result{RequeueAfter: conflictRetry}, nil
		case uerr != nil:
			err = errors.Join(err, fmt.Errorf("update status: %w", uerr))
		}
	}
	if err != nil {
		return reconcile.Result{}, err
	}
	return reconcile.Result{RequeueAfter: requeue}, nil
}

// stampTransitions dates the conditions that changed in this reconcile with
// the reconciler's clock: Knative's condition set dates them with
// time.Now, and the activation timeout measures from them.
func stampTransitions(before, after *v1alpha1.PodAutoscalerStatus, now time.Time) {
	for i := range after.Conditions {
		c := &after.Conditions[i]
		if old := before.GetCondition(c.Type); old == nil || !old.LastTransitionTime.Inner.Equal(&c.LastTransitionTime.Inner) {
			c.LastTransitionTime = knativeapis.VolatileTime{Inner: metav1.NewTime(now)}
		}
	}
}

// revisionRetry is how soon a PodAutoscaler whose Revision is not found
// is looked at again.
const revisionRetry = time.Second

// reconcile computes and applies one PodAutoscaler's state; requeue is when
// to look again without an event (a stalled activation's timeout).
func (r *PodAutoscalerReconciler) reconcile(ctx context.Context, pa *v1alpha1.PodAutoscaler) (requeue time.Duration, err error) {
	key := client.ObjectKeyFromObject(pa)
	rev := &servingv1.Revision{}
	if err := r.client.Get(ctx, types.NamespacedName{Namespace: pa.Namespace, Name: revisionName(pa)}, rev); err != nil {
		if apierrors.IsNotFound(err) {
			// Deleted (garbage collection removes the PA next) or not in
			// the cache yet (just created): look again shortly, quietly.
			return revisionRetry, nil
		}
		return 0, fmt.Errorf("get revision: %w", err)
	}
	spec, err := apis.Parse(rev.Annotations, "metadata.annotations", apis.Vocabulary{})
	if err != nil {
		r.recorder.Eventf(pa, rev, corev1.EventTypeWarning, "InvalidAnnotations", "Parse", "revision %s: %v", rev.Name, err)
		return 0, reconcile.TerminalError(fmt.Errorf("revision %s: %w", rev.Name, err))
	}

	var decode *appsv1.Deployment
	if name := pa.Spec.ScaleTargetRef.Name; name != "" {
		decode = &appsv1.Deployment{}
		if err := r.client.Get(ctx, types.NamespacedName{Namespace: pa.Namespace, Name: name}, decode); err != nil {
			if !apierrors.IsNotFound(err) {
				return 0, fmt.Errorf("get deployment %s: %w", name, err)
			}
			decode = nil
		}
	}
	cfg, profile, err := r.configFor(pa, spec, decode)
	if err != nil {
		r.recorder.Eventf(pa, rev, corev1.EventTypeWarning, "InvalidConfiguration", "Configure", "%v", err)
		return 0, reconcile.TerminalError(err)
	}
	deadline, err := ProgressDeadline(pa, decode)
	if err != nil {
		r.recorder.Eventf(pa, rev, corev1.EventTypeWarning, "InvalidConfiguration", "Configure", "%v", err)
		return 0, reconcile.TerminalError(err)
	}
	rs, err := r.scalerFor(key, cfg, profile, spec.InitialScale, pa.Spec.ScaleTargetRef.Name)
	if err != nil {
		r.recorder.Eventf(pa, rev, corev1.EventTypeWarning, "InvalidConfiguration", "Configure", "%v", err)
		return 0, reconcile.TerminalError(err)
	}

	// The traffic path: the revision Service's endpoints are the activator.
	pa.Status.ServiceName = pa.Name
	pa.Status.MetricsServiceName = pa.Name
	sksReady, sksMsg, err := r.reconcileTrafficPath(ctx, pa)
	if err != nil {
		return 0, err
	}
	if sksReady {
		pa.Status.MarkSKSReady()
	} else {
		pa.Status.MarkSKSNotReady(sksMsg)
	}

	now := r.now()
	raw, hasRec := rs.recommendation()
	act := decideActivation(&pa.Status, cfg, raw.Decode, hasRec, now, deadline+ActivationTimeoutBuffer)
	rs.setGaveUp(act.gaveUp)
	wantDecode, wantPrefill, rec := rs.want(now)
	noDataSince, noData := rs.holding()
	if noData || hasRec { // unknown before the first tick
		markActivatorReports(&pa.Status, noDataSince, noData, rec, hasRec)
	}
	if cfg.Advisory {
		r.announce(pa, rs, rec)
	}

	// DesiredScale is what this class sets; in advise mode, what the
	// Deployment has.
	ready, desired := int32(0), int32(wantDecode)
	if decode != nil {
		ready = decode.Status.ReadyReplicas
		current := ptr.Deref(decode.Spec.Replicas, 1)
		switch {
		case cfg.Advisory:
			desired = current
		case act.timedOut:
			desired, wantPrefill = 0, 0
		case act.hold && desired == 0:
			// Knative's rule: a target still activating is not scaled
			// to zero before its activation timeout.
			desired = current
		case noData && !hasRec:
			// No report and no recommendation yet: the scale stays
			// (Knative's "metrics are not yet being collected").
			desired = max(desired, current)
		}
		if act.timedOut && current > 0 {
			r.log.Info("activation timed out", "revision", key.String(), "after", deadline+ActivationTimeoutBuffer)
			r.recorder.Eventf(pa, nil, corev1.EventTypeWarning, ReasonTimedOut, "ScaleToZero",
				"decode pods of %s were not ready within the progress deadline %v (+%v); scaling to zero", pa.Name, deadline, ActivationTimeoutBuffer)
		}
		if !cfg.Advisory && !act.timedOut && spec.KVOffload.Enabled() && current > 0 && desired == 0 {
			// The last replicas flush their KV cache first (kvflush.go).
			if hold, recheck := r.flushGate(pa, rs, spec.KVOffload, now); hold {
				desired = current
				if act.wait == 0 || recheck < act.wait {
					act.wait = recheck
				}
			}
		} else {
			rs.dropFlush()
		}
		if !cfg.Advisory && current != desired {
			if err := r.scale(ctx, decode, desired); err != nil {
				return 0, err
			}
		}
		if cfg.Disaggregated {
			if err := r.reconcilePrefill(ctx, pa, decode, int32(wantPrefill), cfg.Advisory, act.hold || (noData && !hasRec)); err != nil {
				return 0, err
			}
		}
	}
	pa.Status.DesiredScale = ptr.To(desired)
	pa.Status.ActualScale = ptr.To(ready)
	computeActiveCondition(pa, cfg, spec.InitialScale, int(ready), int(desired), act.timedOut || act.gaveUp)
	if pa.Status.IsScaleTargetInitialized() {
		rs.initialized(now)
	}
	return act.wait, nil
}

// ConditionActivatorReports is the PodAutoscaler condition (severity Info:
// it does not make the PA unready) that says whether the activators'
// reports of the revision are fresh. False (ReasonNoData): none within
// ActivatorSilence, and the last recommendation holds instead of the
// silence being taken for zero load.
const (
	ConditionActivatorReports knativeapis.ConditionType = "ActivatorReports"
	ReasonNoData                                        = "NoData"
)

// infoConditions manages conditions outside Knative's PA condition set.
var infoConditions = knativeapis.NewLivingConditionSet()

// markActivatorReports sets ConditionActivatorReports; its message
// changes only with the hold's start and the held recommendation, so an
// idle revision's status is not rewritten.
func markActivatorReports(st *v1alpha1.PodAutoscalerStatus, since time.Time, noData bool, rec autoscaler.Recommendation, hasRec bool) {
	c := knativeapis.Condition{Type: ConditionActivatorReports, Status: corev1.ConditionTrue, Severity: knativeapis.ConditionSeverityInfo}
	if noData {
		held := "no recommendation yet: the scale stays"
		if hasRec {
			held = "holding the last recommendation " + rec.String()
		}
		c.Status, c.Reason = corev1.ConditionFalse, ReasonNoData
		c.Message = fmt.Sprintf("No activator has reported this revision since %s (silence over %v); %s.",
			since.UTC().Format(time.RFC3339), ActivatorSilence, held)
	}
	infoConditions.Manage(st).SetCondition(c)
}

// ProgressDeadline is how long a PodAutoscaler's target may take to become
// ready, as Knative's KPA reads it: the PA's serving.knative.dev/progress-deadline
// annotation (Knative copies the revision's), else the decode Deployment's
// progressDeadlineSeconds (Knative's revision reconciler sets it from
// config-deployment's progress-deadline), else DefaultProgressDeadline.
func ProgressDeadline(pa *v1alpha1.PodAutoscaler, decode *appsv1.Deployment) (time.Duration, error) {
	if k, v, ok := serving.ProgressDeadlineAnnotation.Get(pa.Annotations); ok {
		d, err := time.ParseDuration(v)
		if err != nil || d <= 0 {
			return 0, fmt.Errorf("annotation %s: %q is not a positive duration (such as 10m)", k, v)
		}
		return d, nil
	}
	if decode != nil && decode.Spec.ProgressDeadlineSeconds != nil && *decode.Spec.ProgressDeadlineSeconds > 0 {
		return time.Duration(*decode.Spec.ProgressDeadlineSeconds) * time.Second, nil
	}
	return DefaultProgressDeadline, nil
}

// activation is what a PA's activation state means for its scale.
type activation struct {
	// hold: the target is activating and the decider wants zero; keep
	// the current replicas until the timeout.
	hold bool
	// timedOut: the activation timed out now; scale to zero.
	timedOut bool
	// gaveUp: timed out now or before, with the target never
	// initialized; the initial scale no longer holds.
	gaveUp bool
	// wait is when the hold's timeout falls (zero: no hold).
	wait time.Duration
}

// decideActivation applies Knative's activation timeout
// (pkg/reconciler/autoscaling/kpa, handleScaleToZero) to a PA's status:
// a target that is activating (Active=Unknown) while the decider
// recommends zero decode replicas keeps its replicas until it has been
// activating for longer than timeout (the progress deadline plus
// ActivationTimeoutBuffer), then goes to zero. Only where scale to zero is
// allowed (min-scale 0) and the class scales (not in advise mode); never
// before the decider's first recommendation. Demand (a positive
// recommendation) keeps the activation going however long it takes, as in
// Knative.
func decideActivation(st *v1alpha1.PodAutoscalerStatus, cfg autoscaler.Config, recDecode int, hasRec bool, now time.Time, timeout time.Duration) activation {
	var a activation
	active := st.GetCondition(v1alpha1.PodAutoscalerConditionActive)
	if active != nil && active.IsFalse() && active.Reason == ReasonTimedOut && !st.IsScaleTargetInitialized() {
		a.gaveUp = true
	}
	if !cfg.EnableScaleToZero || cfg.Advisory || !hasRec || recDecode > 0 || !st.IsActivating() {
		return a
	}
	if st.CanFailActivation(now, timeout) {
		a.timedOut, a.gaveUp = true, !st.IsScaleTargetInitialized()
		return a
	}
	a.hold = true
	// CanFailActivation's measure: how long Active has been Unknown.
	a.wait = max(timeout-now.Sub(active.LastTransitionTime.Inner.Time), 0) + time.Second
	return a
}

// knativeOverrides applies Knative's per-revision autoscaling annotations,
// read with Knative's own PodAutoscaler accessors (the PA carries the
// revision's annotations): autoscaling.knative.dev/window (the stable
// window), panic-window-percentage, panic-threshold-percentage,
// scale-down-delay, target-utilization-percentage, and
// scale-to-zero-pod-retention-period, which keeps a revision that went
// idle for at least that long before zero (the grace period becomes the
// larger of the two). Knative's webhook has validated the values.
func knativeOverrides(c *autoscaler.Config, pa *v1alpha1.PodAutoscaler) {
	if w, ok := pa.Window(); ok && w > 0 {
		c.StableWindow = w
	}
	if p, ok := pa.PanicWindowPercentage(); ok && p > 0 {
		c.PanicWindowPercentage = p
	}
	if p, ok := pa.PanicThresholdPercentage(); ok && p > 0 {
		c.PanicThresholdPercentage = p
	}
	if d, ok := pa.ScaleDownDelay(); ok && d >= 0 {
		c.ScaleDownDelay = d
	}
	if u, ok := pa.TargetUtilization(); ok && u > 0 && u <= 1 { // a fraction
		c.TargetUtilization = u
	}
	if d, ok := pa.ScaleToZeroPodRetention(); ok && d > c.ScaleToZeroGracePeriod {
		c.ScaleToZeroGracePeriod = d
	}
}

// revisionName is the PodAutoscaler's Revision: its controller owner, else
// the same name (Knative names them alike).
func revisionName(pa *v1alpha1.PodAutoscaler) string {
	if ref := metav1.GetControllerOf(pa); ref != nil && ref.Kind == "Revision" {
		return ref.Name
	}
	return pa.Name
}

// configFor is a revision's decider configuration and engine profile name.
func (r *PodAutoscalerReconciler) configFor(pa *v1alpha1.PodAutoscaler, spec apis.Spec, decode *appsv1.Deployment) (autoscaler.Config, string, error) {
	c := r.opts.Config
	var ttft, tpot time.Duration
	if r.opts.TierSLO != nil {
		ttft, tpot = r.opts.TierSLO(spec.DefaultTier)
	}
	autoscaler.ApplySpec(&c, spec, ttft, tpot)
	knativeOverrides(&c, pa)
	if pa.Spec.Reachability == v1alpha1.ReachabilityUnreachable {
		// As Knative's ScaleBounds: no route, no minimum.
		c.Decode.MinScale, c.Prefill.MinScale = 0, 0
		c.EnableScaleToZero = true
	}
	if decode != nil {
		for _, ctr := range decode.Spec.Template.Spec.Containers {
			if ctr.Name == QueueProxyContainer {
				continue
			}
			args := append(append([]string(nil), ctr.Command...), ctr.Args...)
			if n, ok := intFlag(args, "--max-num-seqs"); ok {
				c.MaxNumSeqs = n
			}
			if n, ok := intFlag(args, "--max-num-batched-tokens"); ok {
				c.MaxNumBatchedTokens = n
				// The prefill pods' budget, where the webhook chose one
				// for them (MakePrefillDeployment puts it in their args).
				if d, p, ok := autoscaler.ParseStepBudgetChoice(decode.Spec.Template.Annotations[apis.StepTokenBudgetChoiceAnnotation]); ok && d == n && c.Disaggregated {
					c.PrefillMaxNumBatchedTokens = p
				}
			}
			break
		}
	}
	profile := spec.SimProfile
	if profile == "" {
		profile = engine.DefaultProfile
	}
	if err := c.Validate(); err != nil {
		return c, "", fmt.Errorf("autoscaler config: %w", err)
	}
	return c, profile, nil
}

// intFlag finds a positive integer flag's value in a command line
// (--flag N or --flag=N).
func intFlag(args []string, flag string) (int, bool) {
	for i, a := range args {
		var v string
		switch {
		case a == flag && i+1 < len(args):
			v = args[i+1]
		case strings.HasPrefix(a, flag+"="):
			v = strings.TrimPrefix(a, flag+"=")
		default:
			continue
		}
		if n, err := strconv.Atoi(v); err == nil && n > 0 {
			return n, true
		}
	}
	return 0, false
}

// computeActiveCondition sets Active and ScaleTargetInitialized as Knative's
// KPA does (pkg/reconciler/autoscaling/kpa): the target is initialized once
// it had the initial scale ready, active while it has ready replicas and
// inactive when it is to be at zero: TimedOut when its activation timed out
// (and, unlike the KPA, for as long as the target then stays uninitialized
// at zero: the reason is the persisted record that the initial scale was
// given up), else NoTraffic.
func computeActiveCondition(pa *v1alpha1.PodAutoscaler, cfg autoscaler.Config, initialScale, ready, want int, timedOut bool) {
	minReady := max(cfg.Decode.MinScale, 1)
	if !pa.Status.IsScaleTargetInitialized() {
		if initialScale < 0 {
			initialScale = 1
		}
		minReady = max(cfg.Decode.MinScale, initialScale)
	}
	if ready >= minReady && pa.Status.ServiceName != "" {
		pa.Status.MarkScaleTargetInitialized()
	}
	const noTraffic = "The target is not receiving traffic."
	switch {
	case want == 0 && timedOut && minReady > 0:
		pa.Status.MarkInactive(ReasonTimedOut, "The target could not be activated.")
	case want == 0 || minReady == 0:
		pa.Status.MarkInactive(ReasonNoTraffic, noTraffic)
	case ready < minReady:
		if want > 0 || !pa.Status.IsInactive() {
			pa.Status.MarkActivating(ReasonQueued, "Requests to the target are being buffered as resources are provisioned.")
		} else {
			pa.Status.MarkInactive(ReasonNoTraffic, noTraffic)
		}
	default:
		if want > 0 || !pa.Status.IsInactive() {
			pa.Status.MarkActive()
		}
	}
}

// reconcileTrafficPath creates or updates the revision Service and its
// EndpointSlice; ready means the slice has at least one activator address.
func (r *PodAutoscalerReconciler) reconcileTrafficPath(ctx context.Context, pa *v1alpha1.PodAutoscaler) (ready bool, msg string, err error) {
	want := MakeService(pa)
	svc := &corev1.Service{}
	switch err := r.client.Get(ctx, client.ObjectKeyFromObject(want), svc); {
	case apierrors.IsNotFound(err):
		if err := r.client.Create(ctx, want); err != nil {
			pa.Status.MarkResourceFailedCreation("Service", want.Name)
			return false, "", fmt.Errorf("create service %s: %w", want.Name, err)
		}
	case err != nil:
		return false, "", fmt.Errorf("get service %s: %w", want.Name, err)
	case !metav1.IsControlledBy(svc, pa):
		pa.Status.MarkResourceNotOwned("Service", want.Name)
		return false, "", fmt.Errorf("podautoscaler %s does not own service %s", pa.Name, want.Name)
	case !equality.Semantic.DeepEqual(svc.Spec.Ports, want.Spec.Ports) || len(svc.Spec.Selector) > 0 || !hasLabels(svc.Labels, want.Labels):
		svc.Spec.Ports, svc.Spec.Selector = want.Spec.Ports, nil
		svc.Labels = mergeLabels(svc.Labels, want.Labels)
		if err := r.client.Update(ctx, svc); err != nil {
			return false, "", fmt.Errorf("update service %s: %w", want.Name, err)
		}
	}

	var act discoveryv1.EndpointSliceList
	if err := r.client.List(ctx, &act, client.InNamespace(r.opts.Namespace),
		client.MatchingLabels{discoveryv1.LabelServiceName: r.opts.ActivatorService}); err != nil {
		return false, "", fmt.Errorf("list activator endpointslices: %w", err)
	}
	addrs := ActivatorAddresses(act.Items)
	wantES := MakeEndpointSlice(pa, addrs)
	es := &discoveryv1.EndpointSlice{}
	switch err := r.client.Get(ctx, client.ObjectKeyFromObject(wantES), es); {
	case apierrors.IsNotFound(err):
		if err := r.client.Create(ctx, wantES); err != nil {
			pa.Status.MarkResourceFailedCreation("EndpointSlice", wantES.Name)
			return false, "", fmt.Errorf("create endpointslice %s: %w", wantES.Name, err)
		}
	case err != nil:
		return false, "", fmt.Errorf("get endpointslice %s: %w", wantES.Name, err)
	case !metav1.IsControlledBy(es, pa):
		pa.Status.MarkResourceNotOwned("EndpointSlice", wantES.Name)
		return false, "", fmt.Errorf("podautoscaler %s does not own endpointslice %s", pa.Name, wantES.Name)
	case !equality.Semantic.DeepEqual(es.Endpoints, wantES.Endpoints) || !equality.Semantic.DeepEqual(es.Ports, wantES.Ports) ||
		!hasLabels(es.Labels, wantES.Labels):
		es.Endpoints, es.Ports = wantES.Endpoints, wantES.Ports
		es.Labels = mergeLabels(es.Labels, wantES.Labels)
		if err := r.client.Update(ctx, es); err != nil {
			return false, "", fmt.Errorf("update endpointslice %s: %w", wantES.Name, err)
		}
	}
	if len(addrs) == 0 {
		return false, fmt.Sprintf("no ready endpoints of service %s/%s (the llmd-kn activator)", r.opts.Namespace, r.opts.ActivatorService), nil
	}
	return true, "", nil
}

func hasLabels(have, want map[string]string) bool {
	for k, v := range want {
		if have[k] != v {
			return false
		}
	}
	return true
}

func mergeLabels(have, want map[string]string) map[string]string {
	out := make(map[string]string, len(have)+len(want))
	for k, v := range have {
		out[k] = v
	}
	for k, v := range want {
		out[k] = v
	}
	return out
}

// scale sets a Deployment's replicas through its scale subresource.
func (r *PodAutoscalerReconciler) scale(ctx context.Context, d *appsv1.Deployment, n int32) error {
	patch := client.RawPatch(types.MergePatchType, fmt.Appendf(nil, `{"spec":{"replicas":%d}}`, n))
	if err := r.client.SubResource("scale").Patch(ctx, d, patch, client.WithSubResourceBody(&autoscalingv1.Scale{})); err != nil {
		return fmt.Errorf("scale deployment %s to %d: %w", d.Name, n, err)
	}
	r.log.Info("scaled", "deployment", d.Namespace+"/"+d.Name, "from", ptr.Deref(d.Spec.Replicas, 1), "to", n)
	return nil
}

// reconcilePrefill creates the prefill Deployment, updates it when the
// revision's pod template changed, and scales it (not in advise mode; not
// down while hold, the revision's activation hold, lasts).
func (r *PodAutoscalerReconciler) reconcilePrefill(ctx context.Context, pa *v1alpha1.PodAutoscaler, decode *appsv1.Deployment, want int32, advisory, hold bool) error {
	desired := MakePrefillDeployment(pa, decode, want)
	have := &appsv1.Deployment{}
	switch err := r.client.Get(ctx, client.ObjectKeyFromObject(desired), have); {
	case apierrors.IsNotFound(err):
		if err := r.client.Create(ctx, desired); err != nil {
			pa.Status.MarkResourceFailedCreation("Deployment", desired.Name)
			return fmt.Errorf("create deployment %s: %w", desired.Name, err)
		}
		r.log.Info("created prefill deployment", "deployment", desired.Namespace+"/"+desired.Name, "replicas", want)
		return nil
	case err != nil:
		return fmt.Errorf("get deployment %s: %w", desired.Name, err)
	case !metav1.IsControlledBy(have, pa):
		pa.Status.MarkResourceNotOwned("Deployment", desired.Name)
		return fmt.Errorf("podautoscaler %s does not own deployment %s", pa.Name, desired.Name)
	}
	if have.Annotations[TemplateHashAnnotation] != desired.Annotations[TemplateHashAnnotation] || !hasLabels(have.Labels, desired.Labels) {
		have.Spec.Template = desired.Spec.Template
		have.Labels = mergeLabels(have.Labels, desired.Labels)
		have.Annotations = mergeLabels(have.Annotations, desired.Annotations)
		if err := r.client.Update(ctx, have); err != nil {
			return fmt.Errorf("update deployment %s: %w", desired.Name, err)
		}
	}
	if hold {
		want = max(want, ptr.Deref(have.Spec.Replicas, 1))
	}
	if !advisory && ptr.Deref(have.Spec.Replicas, 1) != want {
		return r.scale(ctx, have, want)
	}
	return nil
}

// announce reports an advisory recommendation once per change, as an
// Event on the PodAutoscaler.
func (r *PodAutoscalerReconciler) announce(pa *v1alpha1.PodAutoscaler, rs *revisionScaler, rec autoscaler.Recommendation) {
	s := rec.String()
	rs.mu.Lock()
	changed := rs.hasRec && rs.announced != s
	if changed {
		rs.announced = s
	}
	rs.mu.Unlock()
	if changed {
		// The recommendation is in the action too: events.k8s.io folds
		// events with the same action and reason into one series and keeps
		// the first note.
		r.recorder.Eventf(pa, nil, corev1.EventTypeNormal, "Recommendation", "Recommend "+s,
			"%s recommends %s; not applied (%s: %s)", apis.AutoscalerClass, s, apis.AutoscalerModeAnnotation, apis.AutoscalerAdvise)
	}
}
