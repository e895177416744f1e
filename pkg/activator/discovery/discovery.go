// Package discovery tells the activator, in a cluster, which revisions and
// pods exist: it watches Knative Revisions of the slo.autoscaling.llm-d.ai
// class, the Routes of their Services (for traffic tags) and the pods
// labelled serving.knative.dev/revision (decode pods from Knative's
// revision Deployment, prefill pods from the reconciler's, told apart by
// llm-d.ai/role), and keeps an activator.Activator in step.
//
// It is the activator's only Kubernetes adapter: pkg/activator itself knows
// nothing of Kubernetes, as the local runtime drives it too. It reads from
// informer caches and never writes to the API server (RBAC: get, list and
// watch on revisions, routes and pods).
package discovery

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"reflect"
	"slices"
	"sort"
	"sync/atomic"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/selection"
	"k8s.io/apimachinery/pkg/types"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"
	"k8s.io/client-go/rest"
	toolscache "k8s.io/client-go/tools/cache"
	"k8s.io/client-go/util/workqueue"
	"knative.dev/serving/pkg/apis/serving"
	servingv1 "knative.dev/serving/pkg/apis/serving/v1"
	"sigs.k8s.io/controller-runtime/pkg/cache"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/llmd-kn/llmd-kn/pkg/activator"
	"github.com/llmd-kn/llmd-kn/pkg/apis"
	"github.com/llmd-kn/llmd-kn/pkg/router"
)

// Target is what discovery keeps in step: *activator.Activator.
type Target interface {
	UpsertRevision(activator.RevisionConfig) error
	RemoveRevision(activator.RevisionKey)
	SetPods(activator.RevisionKey, []activator.PodSpec) error
}

// Options configure a Discovery. Zero fields take the documented defaults.
type Options struct {
	// Tiers and RouterConfig are the activator's; annotations are
	// validated against them (activator.DefaultTiers, router.DefaultConfig).
	Tiers        *activator.Tiers
	RouterConfig *router.Config
	// Debounce is how long an event waits for others about the same
	// revision before the revision is synced once for all (50 ms).
	Debounce time.Duration
	Logger   *slog.Logger
}

// Discovery watches the API server and updates a Target.
//
// It uses controller-runtime's cache rather than Knative's generated
// clientset and informer factory: the typed servingv1 objects come from
// knative.dev/serving's API package either way, the cache gives a
// label-selected pod informer and indexed reads in one place, and the
// other llmd-kn controllers already use controller-runtime, so one client
// stack serves every binary.
type Discovery struct {
	opts   Options
	target Target
	vocab  apis.Vocabulary
	cache  cache.Cache
	queue  workqueue.TypedDelayingInterface[activator.RevisionKey]
	ready  atomic.Bool

	// applied is what the target was last given, per revision; only the
	// sync loop touches it.
	applied map[activator.RevisionKey]*applied
}

type applied struct {
	cfg  activator.RevisionConfig
	pods []activator.PodSpec
}

// Scheme holds the kinds discovery reads.
func Scheme() (*runtime.Scheme, error) {
	s := runtime.NewScheme()
	if err := clientgoscheme.AddToScheme(s); err != nil {
		return nil, err
	}
	if err := servingv1.AddToScheme(s); err != nil {
		return nil, err
	}
	return s, nil
}

// New builds a Discovery on the API server of cfg; Run starts it.
func New(cfg *rest.Config, target Target, opts Options) (*Discovery, error) {
	if opts.Tiers == nil {
		opts.Tiers = activator.DefaultTiers()
	}
	if opts.RouterConfig == nil {
		opts.RouterConfig = router.DefaultConfig()
	}
	if opts.Debounce <= 0 {
		opts.Debounce = 50 * time.Millisecond
	}
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	scheme, err := Scheme()
	if err != nil {
		return nil, err
	}
	// Only revision pods are cached, not every pod of the cluster.
	hasRevision, err := labels.NewRequirement(serving.RevisionLabelKey, selection.Exists, nil)
	if err != nil {
		return nil, err
	}
	c, err := cache.New(cfg, cache.Options{
		Scheme:           scheme,
		DefaultTransform: cache.TransformStripManagedFields(),
		ByObject: map[client.Object]cache.ByObject{
			&corev1.Pod{}: {Label: labels.NewSelector().Add(*hasRevision)},
		},
	})
	if err != nil {
		return nil, fmt.Errorf("informer cache: %w", err)
	}
	return &Discovery{
		opts: opts, target: target, cache: c,
		vocab:   activator.NewVocabulary(opts.Tiers, opts.RouterConfig),
		queue:   workqueue.NewTypedDelayingQueueWithConfig(workqueue.TypedDelayingQueueConfig[activator.RevisionKey]{}),
		applied: map[activator.RevisionKey]*applied{},
	}, nil
}

// Ready reports whether the informers have synced and every revision known
// then has been given to the target: from then on the activator answers
// for every revision of the cluster.
func (d *Discovery) Ready() bool { return d.ready.Load() }

// Run watches until ctx ends. It returns an error when the informers
// cannot start (for example, Knative Serving's CRDs are not installed).
func (d *Discovery) Run(ctx context.Context) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	handlers := []struct {
		obj client.Object
		fn  func(client.Object)
	}{
		{&servingv1.Revision{}, func(o client.Object) {
			d.queue.AddAfter(activator.RevisionKey{Namespace: o.GetNamespace(), Name: o.GetName()}, d.opts.Debounce)
		}},
		{&corev1.Pod{}, func(o client.Object) {
			if rev := o.GetLabels()[serving.RevisionLabelKey]; rev != "" {
				d.queue.AddAfter(activator.RevisionKey{Namespace: o.GetNamespace(), Name: rev}, d.opts.Debounce)
			}
		}},
		{&servingv1.Route{}, func(o client.Object) { d.routeChanged(ctx, o) }},
	}
	for _, h := range handlers {
		inf, err := d.cache.GetInformer(ctx, h.obj)
		if err != nil {
			return fmt.Errorf("watch %T: %w (are Knative Serving's CRDs installed?)", h.obj, err)
		}
		if _, err := inf.AddEventHandler(eventHandler(h.fn)); err != nil {
			return fmt.Errorf("watch %T: %w", h.obj, err)
		}
	}
	errc := make(chan error, 1)
	go func() { errc <- d.cache.Start(ctx) }()
	go func() {
		<-ctx.Done()
		d.queue.ShutDown()
	}()
	if !d.cache.WaitForCacheSync(ctx) {
		cancel()
		if err := <-errc; err != nil {
			return fmt.Errorf("informers: %w", err)
		}
		return ctx.Err()
	}
	// Every revision once, before declaring readiness; the informers'
	// initial adds are queued too and find nothing left to change.
	var revs servingv1.RevisionList
	if err := d.cache.List(ctx, &revs); err != nil {
		return fmt.Errorf("list revisions: %w", err)
	}
	for i := range revs.Items {
		d.sync(ctx, activator.RevisionKey{Namespace: revs.Items[i].Namespace, Name: revs.Items[i].Name})
	}
	d.ready.Store(true)
	d.opts.Logger.Info("discovery synced", "revisions", len(d.applied))
	for {
		key, shutdown := d.queue.Get()
		if shutdown {
			break
		}
		d.sync(ctx, key)
		d.queue.Done(key)
	}
	cancel()
	if err := <-errc; err != nil && !errors.Is(err, context.Canceled) {
		return fmt.Errorf("informers: %w", err)
	}
	return nil
}

// eventHandler calls fn with the object of every add, update and delete,
// unwrapping the tombstones of deletes the watch missed.
func eventHandler(fn func(client.Object)) toolscache.ResourceEventHandler {
	obj := func(o any) {
		if t, ok := o.(toolscache.DeletedFinalStateUnknown); ok {
			o = t.Obj
		}
		if co, ok := o.(client.Object); ok {
			fn(co)
		}
	}
	return toolscache.ResourceEventHandlerFuncs{
		AddFunc:    func(o any) { obj(o) },
		UpdateFunc: func(_, o any) { obj(o) },
		DeleteFunc: func(o any) { obj(o) },
	}
}

// routeChanged queues the revisions of the Route's Service: their tags may
// have changed.
func (d *Discovery) routeChanged(ctx context.Context, route client.Object) {
	var revs servingv1.RevisionList
	if err := d.cache.List(ctx, &revs, client.InNamespace(route.GetNamespace()),
		client.MatchingLabels{serving.ServiceLabelKey: route.GetName()}); err != nil {
		d.opts.Logger.Warn("list revisions of a route", "route", route.GetNamespace()+"/"+route.GetName(), "err", err)
		return
	}
	d.opts.Logger.Debug("route changed", "route", route.GetNamespace()+"/"+route.GetName(), "revisions", len(revs.Items))
	for i := range revs.Items {
		d.queue.AddAfter(activator.RevisionKey{Namespace: revs.Items[i].Namespace, Name: revs.Items[i].Name}, d.opts.Debounce)
	}
}

// sync brings one revision's configuration and pods in the target in line
// with the cache.
func (d *Discovery) sync(ctx context.Context, key activator.RevisionKey) {
	log := d.opts.Logger.With("revision", key.String())
	var rev servingv1.Revision
	err := d.cache.Get(ctx, types.NamespacedName{Namespace: key.Namespace, Name: key.Name}, &rev)
	switch {
	case apierrors.IsNotFound(err) || (err == nil && (!OurClass(&rev) || rev.DeletionTimestamp != nil)):
		if _, ok := d.applied[key]; ok {
			d.target.RemoveRevision(key)
			delete(d.applied, key)
			log.Info("revision removed")
		}
		return
	case err != nil:
		log.Warn("read revision from the cache; retrying", "err", err)
		d.queue.AddAfter(key, time.Second)
		return
	}
	var route *servingv1.Route
	if svc := ServiceName(&rev); svc != "" {
		var r servingv1.Route
		if err := d.cache.Get(ctx, types.NamespacedName{Namespace: key.Namespace, Name: svc}, &r); err == nil {
			route = &r
		} else if !apierrors.IsNotFound(err) {
			log.Warn("read route from the cache", "route", svc, "err", err)
		}
	}
	cur := d.applied[key]
	cfg, err := RevisionConfig(&rev, route, d.vocab)
	switch {
	case err != nil && cur == nil:
		log.Error("revision skipped: invalid configuration", "err", err)
		return
	case err != nil:
		log.Error("revision's configuration became invalid: keeping the previous one", "err", err)
	case cur == nil || !reflect.DeepEqual(cur.cfg, cfg):
		if err := d.target.UpsertRevision(cfg); err != nil {
			log.Error("revision skipped: the activator refused its configuration", "err", err)
			return
		}
		if cur == nil {
			cur = &applied{}
			d.applied[key] = cur
			log.Info("revision added", "service", cfg.Service, "models", cfg.Models, "tags", cfg.Tags)
		} else {
			log.Info("revision updated", "service", cfg.Service, "models", cfg.Models, "tags", cfg.Tags)
		}
		cur.cfg = cfg
	}
	pods, err := d.pods(ctx, key, cur.cfg.Spec.Disaggregated(), log)
	if err != nil {
		log.Warn("list pods from the cache; retrying", "err", err)
		d.queue.AddAfter(key, time.Second)
		return
	}
	if slices.Equal(pods, cur.pods) && cur.pods != nil {
		return
	}
	if err := d.target.SetPods(key, pods); err != nil {
		log.Error("set pods", "err", err)
		return
	}
	cur.pods = pods
	log.Debug("pods", "routable", len(pods))
}

// pods lists a revision's routable pods, sorted by name.
func (d *Discovery) pods(ctx context.Context, key activator.RevisionKey, disaggregated bool, log *slog.Logger) ([]activator.PodSpec, error) {
	var list corev1.PodList
	if err := d.cache.List(ctx, &list, client.InNamespace(key.Namespace),
		client.MatchingLabels{serving.RevisionLabelKey: key.Name}); err != nil {
		return nil, err
	}
	out := []activator.PodSpec{}
	for i := range list.Items {
		p := &list.Items[i]
		if !Routable(p) {
			continue
		}
		spec, err := PodSpec(p, disaggregated)
		if err != nil {
			log.Warn("pod skipped", "pod", p.Name, "err", err)
			continue
		}
		out = append(out, spec)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out, nil
}
