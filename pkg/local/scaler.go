package local

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sort"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/llmd-kn/llmd-kn/pkg/activator"
	"github.com/llmd-kn/llmd-kn/pkg/router"
	"github.com/llmd-kn/llmd-kn/pkg/vllmsim"
)

// Role names one of a revision's sets of pods: its decode pods (all its
// pods when it is not disaggregated) or its prefill pods. In a cluster each
// is a Deployment.
type Role string

const (
	RoleDecode  Role = "decode"
	RolePrefill Role = "prefill"
)

// Scaler is how replica counts are set: the autoscaler decides, a Scaler
// acts. Locally pods start and stop in this process; in a cluster the same
// interface sets a Deployment's replicas. It enforces no min or max scale
// (those are the autoscaler's to honour), so scaling to zero is simply
// Scale(..., 0): the activator then buffers requests and pokes whoever
// scales from zero.
type Scaler interface {
	// Scale sets the desired replica count of one role of a revision and
	// returns at once; pods start and stop in the background (see
	// Replicas).
	Scale(ctx context.Context, rev activator.RevisionKey, role Role, replicas int) error
	// Replicas reports the desired, current and ready replica counts.
	Replicas(rev activator.RevisionKey, role Role) (Replicas, error)
}

// Replicas is a role's scale, as a Deployment's spec and status say it.
type Replicas struct {
	Desired int `json:"desired"`
	// Current counts pods starting or ready (not those terminating).
	Current int `json:"current"`
	// Ready counts pods that passed their health check and are in the
	// activator's endpoints.
	Ready int `json:"ready"`
}

// MaxLocalReplicas bounds one role's pods on one machine.
const MaxLocalReplicas = 64

// ErrUnknownRevision is returned for a revision the scaler does not run.
var ErrUnknownRevision = errors.New("unknown revision")

// podScaler is the local Scaler: every replica is a pod of this runtime,
// an in-process simulator or a process, and the activator's endpoints are
// the ready pods.
type podScaler struct {
	act    *activator.Activator
	log    *slog.Logger
	newPod func(svc *Service, name string, role router.Role) (runner, error)
	grace  time.Duration
	// force is closed to kill the pods still stopping (a forced shutdown).
	force     chan struct{}
	forceOnce sync.Once
	startup   time.Duration
	health    time.Duration
	// backoffBase is the first restart delay after a pod failure; it
	// doubles with each failure in a row, up to 30 s.
	backoffBase time.Duration
	desiredG    *prometheus.GaugeVec
	readyG      *prometheus.GaugeVec
	restarts    *prometheus.CounterVec

	ctx    context.Context
	cancel context.CancelFunc
	loops  sync.WaitGroup
	pods   sync.WaitGroup // pod goroutines

	mu     sync.Mutex
	revs   map[activator.RevisionKey]*revState
	closed bool
}

// revState is one revision's pods, by role.
type revState struct {
	s      *podScaler
	svc    *Service
	groups []*group // decode first, then prefill when disaggregated
	pubMu  sync.Mutex
}

// group is one role's pods: a Deployment's worth.
type group struct {
	rev     *revState
	role    Role
	podRole router.Role
	kick    chan struct{}

	mu       sync.Mutex
	desired  int
	pods     []*pod
	next     int
	failures int
	backoff  time.Time
}

func newPodScaler(act *activator.Activator, reg prometheus.Registerer, log *slog.Logger,
	newPod func(*Service, string, router.Role) (runner, error), grace, startup, health time.Duration) *podScaler {
	s := &podScaler{act: act, log: log, newPod: newPod, grace: grace, startup: startup, health: health,
		revs: map[activator.RevisionKey]*revState{}, force: make(chan struct{}), backoffBase: time.Second}
	s.desiredG = prometheus.NewGaugeVec(prometheus.GaugeOpts{Namespace: "llmd", Subsystem: "local", Name: "desired_replicas",
		Help: "Pods a revision's role should have, as last set through the scaler."}, []string{"revision", "role"})
	s.readyG = prometheus.NewGaugeVec(prometheus.GaugeOpts{Namespace: "llmd", Subsystem: "local", Name: "ready_replicas",
		Help: "Pods of a revision's role that are ready and in the activator's endpoints."}, []string{"revision", "role"})
	s.restarts = prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: "llmd", Subsystem: "local", Name: "pod_failures_total",
		Help: "Pods that failed to start or exited without being asked to."}, []string{"revision", "role"})
	reg.MustRegister(s.desiredG, s.readyG, s.restarts)
	s.ctx, s.cancel = context.WithCancel(context.Background())
	return s
}

// add starts managing a revision at its initial replica counts.
func (s *podScaler) add(svc *Service) {
	rs := &revState{s: s, svc: svc}
	roles := []struct {
		role    Role
		podRole router.Role
		n       int
	}{{RoleDecode, router.RoleBoth, svc.Decode}}
	if svc.Spec.Disaggregated() {
		roles[0].podRole = router.RoleDecode
		roles = append(roles, struct {
			role    Role
			podRole router.Role
			n       int
		}{RolePrefill, router.RolePrefill, svc.Prefill})
	}
	for _, r := range roles {
		g := &group{rev: rs, role: r.role, podRole: r.podRole, desired: r.n, kick: make(chan struct{}, 1)}
		rs.groups = append(rs.groups, g)
	}
	s.mu.Lock()
	s.revs[svc.Key()] = rs
	s.mu.Unlock()
	for _, g := range rs.groups {
		s.desiredG.WithLabelValues(svc.Key().String(), string(g.role)).Set(float64(g.desired))
		s.readyG.WithLabelValues(svc.Key().String(), string(g.role)).Set(0)
		s.loops.Add(1)
		go g.loop()
		g.poke()
	}
}

func (s *podScaler) group(key activator.RevisionKey, role Role) (*group, error) {
	s.mu.Lock()
	rs := s.revs[key]
	s.mu.Unlock()
	if rs == nil {
		return nil, fmt.Errorf("%w %s", ErrUnknownRevision, key)
	}
	for _, g := range rs.groups {
		if g.role == role {
			return g, nil
		}
	}
	if role == RolePrefill {
		return nil, fmt.Errorf("revision %s has no prefill pods: it is not disaggregated", key)
	}
	return nil, fmt.Errorf("unknown role %q (want %s or %s)", role, RoleDecode, RolePrefill)
}

// Scale implements Scaler.
func (s *podScaler) Scale(ctx context.Context, key activator.RevisionKey, role Role, replicas int) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	if replicas < 0 || replicas > MaxLocalReplicas {
		return fmt.Errorf("scale %s %s to %d: must be between 0 and %d", key, role, replicas, MaxLocalReplicas)
	}
	g, err := s.group(key, role)
	if err != nil {
		return err
	}
	s.mu.Lock()
	closed := s.closed
	s.mu.Unlock()
	if closed {
		return errors.New("the runtime is shutting down")
	}
	g.mu.Lock()
	changed := g.desired != replicas
	g.desired = replicas
	g.mu.Unlock()
	if changed {
		s.log.Info("scale", "revision", key.String(), "role", string(role), "replicas", replicas)
		s.desiredG.WithLabelValues(key.String(), string(role)).Set(float64(replicas))
	}
	g.poke()
	return nil
}

// Replicas implements Scaler.
func (s *podScaler) Replicas(key activator.RevisionKey, role Role) (Replicas, error) {
	g, err := s.group(key, role)
	if err != nil {
		return Replicas{}, err
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	r := Replicas{Desired: g.desired}
	for _, p := range g.pods {
		switch p.getPhase() {
		case phaseReady:
			r.Ready++
			r.Current++
		case phaseStarting:
			r.Current++
		}
	}
	return r, nil
}

// kill makes pods that are stopping stop now.
func (s *podScaler) kill() { s.forceOnce.Do(func() { close(s.force) }) }

// close stops reconciling and stops every pod in parallel, each within the
// grace period (see kill).
func (s *podScaler) close() {
	s.mu.Lock()
	s.closed = true
	revs := make([]*revState, 0, len(s.revs))
	for _, rs := range s.revs {
		revs = append(revs, rs)
	}
	s.mu.Unlock()
	s.cancel()
	s.loops.Wait()
	for _, rs := range revs {
		for _, g := range rs.groups {
			g.mu.Lock()
			for _, p := range g.pods {
				p.terminate()
			}
			g.mu.Unlock()
		}
		rs.publish()
	}
	s.pods.Wait()
}

func (g *group) poke() {
	select {
	case g.kick <- struct{}{}:
	default:
	}
}

// loop reconciles the group's pods with its desired count whenever
// something changes, and once a second for restart back-off.
func (g *group) loop() {
	s := g.rev.s
	defer s.loops.Done()
	t := time.NewTicker(time.Second)
	defer t.Stop()
	for {
		select {
		case <-s.ctx.Done():
			return
		case <-g.kick:
		case <-t.C:
		}
		g.reconcile()
	}
}

// reconcile is one pass of the group's controller: forget exited pods,
// start missing ones (unless backing off after failures), stop extra ones
// (those not ready first, newest first).
func (g *group) reconcile() {
	s := g.rev.s
	now := time.Now()
	g.mu.Lock()
	live := g.pods[:0]
	var active []*pod
	for _, p := range g.pods {
		switch p.getPhase() {
		case phaseExited:
			continue
		case phaseStarting, phaseReady:
			active = append(active, p)
		}
		live = append(live, p)
	}
	g.pods = live
	var start []*pod
	var stop []*pod
	if len(active) < g.desired && now.Before(g.backoff) {
		time.AfterFunc(g.backoff.Sub(now), g.poke)
	}
	switch {
	case len(active) < g.desired && !now.Before(g.backoff):
		for range g.desired - len(active) {
			g.next++
			name := podName(g.rev.svc, g.role, g.next)
			start = append(start, &pod{name: name, created: now, stopping: make(chan struct{})})
		}
		g.pods = append(g.pods, start...)
	case len(active) > g.desired:
		sort.SliceStable(active, func(i, j int) bool {
			ri, rj := active[i].getPhase() == phaseReady, active[j].getPhase() == phaseReady
			if ri != rj {
				return !ri
			}
			return active[i].created.After(active[j].created)
		})
		stop = active[:len(active)-g.desired]
	}
	g.mu.Unlock()

	for _, p := range stop {
		p.terminate()
	}
	if len(stop) > 0 {
		g.rev.publish()
	}
	for _, p := range start {
		s.pods.Add(1)
		go g.run(p)
	}
}

func podName(svc *Service, role Role, n int) string {
	if svc.Spec.Disaggregated() {
		return fmt.Sprintf("%s-%s-%d", svc.Revision, role, n)
	}
	return fmt.Sprintf("%s-%d", svc.Revision, n)
}

// run is one pod's life, from start to exit: it owns the pod's runner.
// The pod is in the activator's endpoints from its first good /health until
// it is asked to stop (p.stopping) or exits by itself, when the group
// replaces it after a back-off.
func (g *group) run(p *pod) {
	s := g.rev.s
	defer s.pods.Done()
	defer g.poke()
	log := s.log.With("pod", p.name)
	var r runner
	stop := func() {
		if r != nil {
			r.stop(s.grace, s.force)
		}
		p.setPhase(phaseExited)
		log.Info("pod stopped")
	}
	fail := func(err error) {
		if r != nil {
			r.stop(s.grace, s.force)
		}
		if p.getPhase() == phaseTerminating {
			p.setPhase(phaseExited)
			return // asked to stop meanwhile: not a failure
		}
		p.setPhase(phaseExited)
		s.restarts.WithLabelValues(g.rev.svc.Key().String(), string(g.role)).Inc()
		g.mu.Lock()
		g.failures++
		delay := min(s.backoffBase<<min(g.failures-1, 5), 30*time.Second)
		g.backoff = time.Now().Add(delay)
		g.mu.Unlock()
		log.Error("pod failed; replacing it", "err", err, "backoff", delay)
		g.rev.publish()
	}
	select {
	case <-p.stopping:
		stop()
		return
	default:
	}
	r, err := s.newPod(g.rev.svc, p.name, g.podRole)
	if err != nil {
		r = nil
		fail(err)
		return
	}
	url, kv, err := r.start()
	if err != nil {
		fail(err)
		return
	}
	p.mu.Lock()
	p.url, p.kv = url, kv
	if sr, ok := r.(*simRunner); ok && sr.srv != nil {
		p.stats, p.clock = sr.srv.Stats, sr.srv.ClockLag
	}
	p.mu.Unlock()
	log.Debug("pod started", "url", url, "kv_events", kv)
	ctx, cancel := context.WithTimeout(context.Background(), s.startup)
	go func() {
		select {
		case <-p.stopping:
			cancel()
		case <-ctx.Done():
		}
	}()
	err = waitHealthy(ctx, url, r.exited(), s.health)
	cancel()
	if err != nil {
		select {
		case <-p.stopping:
			stop()
			return
		default:
		}
		if errors.Is(err, errExited) && r.exitErr() != nil {
			err = r.exitErr()
		} else if errors.Is(err, context.DeadlineExceeded) {
			err = fmt.Errorf("not healthy after %v", s.startup)
		}
		fail(err)
		return
	}
	if !p.setPhase(phaseReady) {
		stop() // asked to stop while starting
		return
	}
	g.mu.Lock()
	g.failures = 0
	g.mu.Unlock()
	log.Info("pod ready", "role", g.podRole.String(), "url", url)
	g.rev.publish()
	lctx, lcancel := context.WithCancel(context.Background())
	defer lcancel()
	live := watchLiveness(lctx, url, livenessPeriod, livenessTimeout, livenessFailures)
	select {
	case <-r.exited():
		err := r.exitErr()
		if err == nil {
			err = errors.New("exited")
		}
		fail(err)
	case err := <-live:
		// A frozen pod: replaced as the kubelet's liveness probe would.
		lcancel()
		fail(err)
	case <-p.stopping:
		stop()
	}
}

// publish tells the activator the revision's ready pods and updates the
// scale gauges.
func (rs *revState) publish() {
	rs.pubMu.Lock()
	defer rs.pubMu.Unlock()
	s, key := rs.s, rs.svc.Key()
	var specs []activator.PodSpec
	for _, g := range rs.groups {
		g.mu.Lock()
		ready := 0
		for _, p := range g.pods {
			if p.getPhase() != phaseReady {
				continue
			}
			ready++
			p.mu.Lock()
			specs = append(specs, activator.PodSpec{Name: p.name, URL: p.url, Role: g.podRole, KVEvents: p.kv})
			p.mu.Unlock()
		}
		g.mu.Unlock()
		s.readyG.WithLabelValues(key.String(), string(g.role)).Set(float64(ready))
	}
	if err := s.act.SetPods(key, specs); err != nil {
		s.log.Debug("set pods", "revision", key.String(), "err", err)
	}
}

// clockLag is the largest lateness and dropped time of any in-process
// simulator pod of any revision (Runtime.SimClockLag).
func (s *podScaler) clockLag() vllmsim.ClockLag {
	s.mu.Lock()
	revs := make([]*revState, 0, len(s.revs))
	for _, rs := range s.revs {
		revs = append(revs, rs)
	}
	s.mu.Unlock()
	var out vllmsim.ClockLag
	for _, rs := range revs {
		for _, g := range rs.groups {
			g.mu.Lock()
			for _, p := range g.pods {
				lag := p.clockLag()
				out.Late, out.Dropped = max(out.Late, lag.Late), max(out.Dropped, lag.Dropped)
			}
			g.mu.Unlock()
		}
	}
	return out
}

// podView is a pod as the status page shows it.
type podView struct {
	Name  string
	Phase podPhase
	URL   string
}

// podsOf lists a revision's pods, role by role, oldest first.
func (s *podScaler) podsOf(key activator.RevisionKey) map[Role][]podView {
	s.mu.Lock()
	rs := s.revs[key]
	s.mu.Unlock()
	out := map[Role][]podView{}
	if rs == nil {
		return out
	}
	for _, g := range rs.groups {
		g.mu.Lock()
		for _, p := range g.pods {
			p.mu.Lock()
			out[g.role] = append(out[g.role], podView{Name: p.name, Phase: p.phase, URL: p.url})
			p.mu.Unlock()
		}
		g.mu.Unlock()
	}
	return out
}
