package local

import (
	"context"
	"fmt"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/llmd-kn/llmd-kn/pkg/activator"
	"github.com/llmd-kn/llmd-kn/pkg/apis"
	"github.com/llmd-kn/llmd-kn/pkg/autoscaler"
	"github.com/llmd-kn/llmd-kn/pkg/engine"
)

// Defaults of AutoscaleOptions.
const (
	DefaultAutoscaleTick          = 2 * time.Second
	DefaultScaleToZeroGracePeriod = 30 * time.Second
	DefaultStableWindow           = 60 * time.Second
)

// AutoscaleOptions configure the deciders of the slo.autoscaling.llm-d.ai
// autoscaler class (pkg/autoscaler) that drive the Scaler. Zero fields take
// the defaults above. Durations are wall time.
type AutoscaleOptions struct {
	// Disabled turns the deciders off: replicas stay where the manifests
	// (and Scale calls, POST /scale) put them, and a revision at zero is
	// woken by a request to its min-scale (at least one).
	Disabled bool
	// Tick is how often each revision's decider runs.
	Tick time.Duration
	// ScaleToZeroGracePeriod is how long a revision whose min-scale is 0
	// goes without traffic before it scales to zero.
	ScaleToZeroGracePeriod time.Duration
	// StableWindow is the decider's averaging window (its panic window is
	// 10% of it); ScaleDownDelay holds a recommendation that long before
	// scaling down (default 0).
	StableWindow   time.Duration
	ScaleDownDelay time.Duration
	// ColdStart is how long a new pod takes to become ready, in the
	// profile's time (as Options.SimStartupDelay; wall time for
	// --pod-command pods): the decider provisions for the arrivals over
	// it at the SLO percentile (autoscaler.Config.ColdStart). 0 takes
	// SimStartupDelay for simulated pods, and plans for the mean (no
	// headroom) for --pod-command pods.
	ColdStart time.Duration
}

func (o *AutoscaleOptions) defaults() error {
	if o.Tick == 0 {
		o.Tick = DefaultAutoscaleTick
	}
	if o.ScaleToZeroGracePeriod == 0 {
		o.ScaleToZeroGracePeriod = DefaultScaleToZeroGracePeriod
	}
	if o.StableWindow == 0 {
		o.StableWindow = max(DefaultStableWindow, o.Tick)
	}
	if o.Tick < 0 || o.ScaleToZeroGracePeriod < 0 || o.StableWindow < 0 || o.ScaleDownDelay < 0 || o.ColdStart < 0 {
		return fmt.Errorf("local: autoscale durations must not be negative")
	}
	if o.StableWindow < o.Tick {
		return fmt.Errorf("local: autoscale stable window %v must be at least the tick %v", o.StableWindow, o.Tick)
	}
	return nil
}

// Autoscaled reports whether a Service's revision uses the
// slo.autoscaling.llm-d.ai class (pkg/admission sets it by default when
// llm-d annotations are present).
func Autoscaled(svc *Service) bool {
	if svc.Object == nil {
		return false
	}
	return svc.Object.Spec.Template.Annotations[apis.ClassAnnotation] == apis.AutoscalerClass
}

// AutoscalerConfig maps a Service's annotations onto the decider's
// configuration: min/max scale per role (max-scale 0 is MaxLocalReplicas
// here), scale to zero when min-scale is 0, the SLO targets from
// llm-d.ai/slo-ttft and llm-d.ai/slo-tpot or else the default tier's targets
// (activator.DefaultTiers), llm-d.ai/slo-percentile, the engine's batch
// limits, and advisory mode from llm-d.ai/autoscaler-mode: advise.
func AutoscalerConfig(svc *Service, o AutoscaleOptions) (autoscaler.Config, error) {
	if err := o.defaults(); err != nil {
		return autoscaler.Config{}, err
	}
	spec := svc.Spec
	c := autoscaler.DefaultConfig()
	c.TickInterval = o.Tick
	c.StableWindow = o.StableWindow
	c.ScaleToZeroGracePeriod = o.ScaleToZeroGracePeriod
	c.ScaleDownDelay = o.ScaleDownDelay
	c.ColdStart = o.ColdStart
	var tierTTFT, tierTPOT time.Duration
	if tier, ok := activator.DefaultTiers().Get(orDefault(spec.DefaultTier, apis.DefaultTier)); ok {
		tierTTFT, tierTPOT = time.Duration(tier.TTFT), time.Duration(tier.TPOT)
	}
	autoscaler.ApplySpec(&c, spec, tierTTFT, tierTPOT)
	// Max-scale 0 (unbounded) is MaxLocalReplicas here.
	bound := func(b autoscaler.Bounds) autoscaler.Bounds {
		if b.MaxScale <= 0 || b.MaxScale > MaxLocalReplicas {
			b.MaxScale = MaxLocalReplicas
		}
		return autoscaler.Bounds{MinScale: min(b.MinScale, b.MaxScale), MaxScale: b.MaxScale}
	}
	c.Decode = bound(c.Decode)
	if c.Disaggregated {
		c.Prefill = bound(c.Prefill)
	}
	if svc.Engine.MaxNumSeqs > 0 {
		c.MaxNumSeqs = svc.Engine.MaxNumSeqs
	}
	if svc.Engine.MaxNumBatchedTokens > 0 {
		c.MaxNumBatchedTokens = svc.Engine.MaxNumBatchedTokens
	}
	c.PrefillMaxNumBatchedTokens = svc.Engine.PrefillMaxNumBatchedTokens
	return c, c.Validate()
}

// revAutoscaler runs one revision's decider: every tick it reads the
// activator's statistics and the pods' telemetry, and applies (or, in
// advise mode, only reports) the recommendation through the Scaler.
type revAutoscaler struct {
	r   *Runtime
	svc *Service
	key activator.RevisionKey
	cfg autoscaler.Config
	// timeScale converts wall time to the profile's time: simulated pods
	// run 1/timeScale times faster than the profile.
	timeScale float64

	mu      sync.Mutex // serializes the decider (ticks and pokes)
	dec     *autoscaler.Decider
	prev    autoscaler.Snapshot
	prevAt  time.Time
	last    autoscaler.Recommendation
	hasLast bool
}

func (r *Runtime) newAutoscalers() error {
	if r.opts.Autoscale.Disabled {
		return nil
	}
	r.recommendedG = prometheus.NewGaugeVec(prometheus.GaugeOpts{Namespace: "llmd", Subsystem: "local", Name: "recommended_replicas",
		Help: "Replicas the slo.autoscaling.llm-d.ai decider recommends for a revision's role (applied unless in advise mode)."},
		[]string{"revision", "role"})
	r.reg.MustRegister(r.recommendedG)
	r.autoscalers = map[activator.RevisionKey]*revAutoscaler{}
	o := r.opts.Autoscale
	if o.ColdStart == 0 && r.opts.PodCommand == "" {
		o.ColdStart = r.opts.SimStartupDelay
	}
	for _, svc := range r.opts.Services {
		if !Autoscaled(svc) {
			continue
		}
		cfg, err := AutoscalerConfig(svc, o)
		if err != nil {
			return fmt.Errorf("local: %s: autoscaler: %w", svc, err)
		}
		prof, err := engine.BuiltinProfile(orDefault(svc.Spec.SimProfile, engine.DefaultProfile))
		if err != nil {
			return fmt.Errorf("local: %s: autoscaler: %w", svc, err)
		}
		dec, err := autoscaler.New(cfg, prof)
		if err != nil {
			return fmt.Errorf("local: %s: autoscaler: %w", svc, err)
		}
		scale := 1.0
		if r.opts.PodCommand == "" {
			scale = r.opts.SimTimeScale
		}
		r.autoscalers[svc.Key()] = &revAutoscaler{r: r, svc: svc, key: svc.Key(), cfg: cfg, dec: dec, timeScale: scale}
	}
	return nil
}

// startAutoscalers starts one ticker per autoscaled revision. A revision
// that starts with pods keeps them for the grace period at least, as a new
// Knative revision does.
func (r *Runtime) startAutoscalers() {
	if len(r.autoscalers) == 0 {
		return
	}
	ctx, cancel := context.WithCancel(context.Background())
	r.stopAutoscale = cancel
	for _, a := range r.autoscalers {
		a.mu.Lock()
		now := time.Now()
		if a.svc.Decode > 0 {
			a.dec.Poke(now)
		}
		a.prev, a.prevAt = snapshotOf(r.act, a.key), now
		a.mu.Unlock()
		mode := apis.AutoscalerAct
		if a.cfg.Advisory {
			mode = apis.AutoscalerAdvise
		}
		r.log.Info("autoscaler", "revision", a.key.String(), "class", apis.AutoscalerClass, "mode", mode,
			"tick", a.cfg.TickInterval, "ttft", a.cfg.SLO.TTFT, "tpot", a.cfg.SLO.TPOT, "percentile", a.cfg.SLO.Percentile,
			"decode", a.cfg.Decode, "prefill", a.cfg.Prefill, "scale_to_zero", a.cfg.EnableScaleToZero)
		r.autoscaleLoops.Add(1)
		go a.loop(ctx)
	}
}

// stopAutoscalers stops the tickers and waits for them.
func (r *Runtime) stopAutoscalers() {
	if r.stopAutoscale != nil {
		r.stopAutoscale()
	}
	r.autoscaleLoops.Wait()
}

func (a *revAutoscaler) loop(ctx context.Context) {
	defer a.r.autoscaleLoops.Done()
	t := time.NewTicker(a.cfg.TickInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			a.tick(ctx)
		}
	}
}

// snapshotOf is the activator's statistics of a revision as the decider
// reads them.
func snapshotOf(act *activator.Activator, key activator.RevisionKey) autoscaler.Snapshot {
	for _, s := range act.Stats() {
		if s.Revision != key.String() {
			continue
		}
		return autoscaler.Snapshot{
			Revision: s.Revision, RequestsByTier: s.RequestsByTier, Errors: s.Errors,
			PromptTokens: s.PromptTokens, CompletionTokens: s.CompletionTokens, CachedTokens: s.CachedTokens,
			UncachedPrefillTokens: s.UncachedPrefillTokens, QueuedByTier: s.QueuedByTier, InFlight: s.InFlight,
			TTFTP50: s.TTFTP50, TTFTP90: s.TTFTP90, TPOTP50: s.TPOTP50, TPOTP90: s.TPOTP90,
			ArrivedByTier: s.ArrivedByTier, ArrivedPromptTokens: s.ArrivedPromptTokens,
			Batch: (*autoscaler.BatchCounters)(s.Batch),
		}
	}
	return autoscaler.Snapshot{Revision: key.String()}
}

// input is this tick's decider input: the load since the last tick and the
// pods' telemetry, in the profile's time.
func (a *revAutoscaler) input(now time.Time) autoscaler.Input {
	cur := snapshotOf(a.r.act, a.key)
	k := a.timeScale
	// Rates per profile second: a wall second is 1/k profile seconds.
	load := autoscaler.Rates(a.prev, cur, time.Duration(float64(now.Sub(a.prevAt))/k))
	a.prev, a.prevAt = cur, now
	toProfile := func(d time.Duration) time.Duration { return time.Duration(float64(d) / k) }
	load.TTFT = autoscaler.Latency{P50: toProfile(load.TTFT.P50), P90: toProfile(load.TTFT.P90)}
	load.TPOT = autoscaler.Latency{P50: toProfile(load.TPOT.P50), P90: toProfile(load.TPOT.P90)}
	in := autoscaler.Input{Load: load}
	in.Pods.Decode = a.r.scaler.telemetry(a.key, RoleDecode)
	if a.cfg.Disaggregated {
		in.Pods.Prefill = a.r.scaler.telemetry(a.key, RolePrefill)
	}
	return in
}

func (a *revAutoscaler) tick(ctx context.Context) {
	a.mu.Lock()
	defer a.mu.Unlock()
	now := time.Now()
	rec := a.dec.Scale(now, a.input(now))
	a.record(rec)
	if !a.cfg.Advisory {
		a.apply(ctx, rec, false)
	}
}

// poke is the activator's signal that a request waits at zero: the decider
// answers at once rather than at the next tick. Poke only scales up.
func (a *revAutoscaler) poke() {
	a.mu.Lock()
	defer a.mu.Unlock()
	rec := a.dec.Poke(time.Now())
	a.record(rec)
	a.apply(context.Background(), rec, true)
}

// record keeps the recommendation for the status page, sets the gauge and
// logs changes.
func (a *revAutoscaler) record(rec autoscaler.Recommendation) {
	changed := !a.hasLast || rec.Decode != a.last.Decode || rec.Prefill != a.last.Prefill
	a.last, a.hasLast = rec, true
	rev := a.key.String()
	a.r.recommendedG.WithLabelValues(rev, string(RoleDecode)).Set(float64(rec.Decode))
	if a.cfg.Disaggregated {
		a.r.recommendedG.WithLabelValues(rev, string(RolePrefill)).Set(float64(rec.Prefill))
	}
	if changed {
		a.r.log.Info("autoscaler recommendation", "revision", rev, "recommendation", rec.String(), "poked", rec.Poked,
			"decode_required", rec.DecodeRole.Required, "prefill_required", rec.PrefillRole.Required,
			"panic", rec.DecodeRole.InPanic || rec.PrefillRole.InPanic)
	}
}

// apply sets the recommended replicas through the Scaler.
func (a *revAutoscaler) apply(ctx context.Context, rec autoscaler.Recommendation, upOnly bool) {
	roles := []struct {
		role Role
		n    int
	}{{RoleDecode, rec.Decode}}
	if a.cfg.Disaggregated {
		roles = append(roles, struct {
			role Role
			n    int
		}{RolePrefill, rec.Prefill})
	}
	for _, r := range roles {
		n := min(max(r.n, 0), MaxLocalReplicas)
		if upOnly {
			if rep, err := a.r.scaler.Replicas(a.key, r.role); err != nil || n <= rep.Desired {
				continue
			}
		}
		if err := a.r.scaler.Scale(ctx, a.key, r.role, n); err != nil && ctx.Err() == nil {
			a.r.log.Debug("autoscaler: scale", "revision", a.key.String(), "role", string(r.role), "err", err)
		}
	}
}

// recommendation is the last recommendation, if any.
func (a *revAutoscaler) recommendation() (autoscaler.Recommendation, bool) {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.last, a.hasLast
}

// telemetry aggregates a role's pods' engine statistics: ready pods from
// the scaler, running and waiting sequences (sums) and KV usage (mean) from
// the in-process simulators. Process pods report only readiness.
func (s *podScaler) telemetry(key activator.RevisionKey, role Role) autoscaler.Telemetry {
	var t autoscaler.Telemetry
	rep, err := s.Replicas(key, role)
	if err != nil {
		return t
	}
	t.Ready = rep.Ready
	g, err := s.group(key, role)
	if err != nil {
		return t
	}
	g.mu.Lock()
	pods := append([]*pod(nil), g.pods...)
	g.mu.Unlock()
	n := 0
	for _, p := range pods {
		if p.getPhase() != phaseReady {
			continue
		}
		st, ok := p.engineStats()
		if !ok {
			continue
		}
		t.Running += st.Running
		t.Waiting += st.Waiting
		t.KVUsage += st.KVUsage
		n++
	}
	if n > 0 {
		t.KVUsage /= float64(n)
	}
	return t
}
