package reconciler_test

import (
	"context"
	"fmt"
	"net/http"
	"slices"
	"strings"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	eventsv1 "k8s.io/api/events/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/utils/ptr"
	"knative.dev/serving/pkg/apis/serving"
	servingv1 "knative.dev/serving/pkg/apis/serving/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/llmd-kn/llmd-kn/pkg/apis"
	"github.com/llmd-kn/llmd-kn/pkg/reconciler"
)

// TestActivationTimeout: Knative's progress-deadline rule. A revision whose
// decode pods never become ready keeps its initial scale for its progress
// deadline plus 30 s, then the PA is marked Inactive (TimedOut), its
// Deployment goes to zero and Knative's revision reconciler reads
// ProgressDeadlineExceeded from it. The reconciler's clock jumps ahead
// (shiftedClock) instead of the test waiting for minutes.
func TestActivationTimeout(t *testing.T) {
	cl := clockCluster(t)
	ctx := context.Background()
	type step struct {
		shift    time.Duration
		timedOut bool
	}
	cases := []struct {
		name string
		ann  map[string]string
		// deadlineSeconds is the decode Deployment's
		// progressDeadlineSeconds, as Knative's revision reconciler sets
		// it from config-deployment (0: the API server's default, 600).
		deadlineSeconds int32
		// fromZero: the revision becomes ready, scales to zero without
		// traffic, and a request wakes it; the steps are that activation.
		fromZero bool
		steps    []step
		wake     bool
	}{
		{name: "default deadline 10m", steps: []step{{10 * time.Minute, false}, {40 * time.Second, true}}, wake: true},
		{name: "annotation 2m", ann: map[string]string{serving.ProgressDeadlineAnnotationKey: "2m"},
			steps: []step{{2*time.Minute + 20*time.Second, false}, {20 * time.Second, true}}},
		{name: "deployment deadline 120s", deadlineSeconds: 120,
			steps: []step{{2*time.Minute + 20*time.Second, false}, {20 * time.Second, true}}},
		{name: "prefill-decode both roles held then to zero",
			ann:   map[string]string{apis.DisaggregationAnnotation: apis.DisaggregationPrefillDecode},
			steps: []step{{10 * time.Minute, false}, {40 * time.Second, true}}},
		{name: "prefill-decode from zero both roles held then to zero",
			ann:      map[string]string{apis.DisaggregationAnnotation: apis.DisaggregationPrefillDecode},
			fromZero: true, steps: []step{{time.Minute, false}, {10 * time.Minute, true}}},
		{name: "min-scale 1 never gives up", ann: map[string]string{apis.MinScaleAnnotation: "1"},
			steps: []step{{time.Hour, false}}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			f := newRevision(t, cl, apis.AutoscalerClass, c.ann, 1)
			// An idle activator reports the revision: zero traffic, not
			// no data (TestNoDataHoldsTheScale).
			cl.quietActivator(t, f)
			f.prefill = c.ann[apis.DisaggregationAnnotation] == apis.DisaggregationPrefillDecode
			if c.deadlineSeconds > 0 {
				d := &appsv1.Deployment{}
				must(t, cl.c.Get(ctx, f.key(f.deploy.Name), d))
				d.Spec.ProgressDeadlineSeconds = ptr.To(c.deadlineSeconds)
				must(t, cl.c.Update(ctx, d))
			}
			eventually(t, 30*time.Second, "activating at the initial scale", func() error {
				if err := checkQueued(t, cl, f); err != nil {
					return err
				}
				if _, ok := cl.recommendation(t, f.ns, f.name); !ok {
					return fmt.Errorf("no recommendation yet")
				}
				return nil
			})
			if c.fromZero {
				setReady(t, cl, f.key(f.deploy.Name), 1)
				eventually(t, 30*time.Second, "ready", func() error {
					if pa := f.getPA(t, cl); !pa.IsReady() {
						return fmt.Errorf("status %+v", pa.Status)
					}
					return nil
				})
				cl.clock.Shift(time.Minute)
				nudge(t, cl, f, 100)
				eventually(t, 30*time.Second, "at zero without traffic", func() error {
					if act, _ := condStatus(f.getPA(t, cl), "Active"); act != "False" {
						return fmt.Errorf("active %s", act)
					}
					return checkReplicas(cl, f, 0)
				})
				setReady(t, cl, f.key(f.deploy.Name), 0)
				if code := cl.post(t, "/v1/poke", fmt.Sprintf(`{"namespace":%q,"name":%q}`, f.ns, f.name)); code != http.StatusAccepted {
					t.Fatalf("poke: %d", code)
				}
				eventually(t, 30*time.Second, "activating from zero", func() error { return checkQueued(t, cl, f) })
			}
			for i, s := range c.steps {
				cl.clock.Shift(s.shift)
				shifted := cl.clock.Now()
				// A tick on the new time, then an event for the PA: in a
				// cluster the reconciler's own requeue comes back at the
				// deadline; here the clock jumped past it.
				eventually(t, 30*time.Second, "a tick after the shift", func() error {
					if rec, _ := cl.recommendation(t, f.ns, f.name); !rec.Recommendation.At.After(shifted) {
						return fmt.Errorf("last recommendation at %v", rec.Recommendation.At)
					}
					return nil
				})
				nudge(t, cl, f, i)
				if !s.timedOut {
					time.Sleep(5 * tick)
					if err := checkQueued(t, cl, f); err != nil {
						t.Fatalf("step %d (+%v): %v", i, s.shift, err)
					}
					continue
				}
				eventually(t, 30*time.Second, "timed out", func() error { return checkTimedOut(t, cl, f, c.fromZero) })
				// It stays so: the initial scale is not applied again.
				time.Sleep(5 * tick)
				if err := checkTimedOut(t, cl, f, c.fromZero); err != nil {
					t.Fatalf("after the timeout: %v", err)
				}
				if !hasEvent(t, cl, f, corev1.EventTypeWarning, reconciler.ReasonTimedOut) {
					t.Errorf("no Warning event %s", reconciler.ReasonTimedOut)
				}
				if c.fromZero {
					continue
				}
				pa := f.getPA(t, cl)
				var rs servingv1.RevisionStatus
				rs.InitializeConditions()
				rs.PropagateAutoscalerStatus(&pa.Status)
				if cond := rs.GetCondition(servingv1.RevisionConditionResourcesAvailable); !cond.IsFalse() ||
					cond.Reason != servingv1.ReasonProgressDeadlineExceeded {
					t.Errorf("revision ResourcesAvailable from the PA: %+v, want False %s", cond, servingv1.ReasonProgressDeadlineExceeded)
				}
			}
			if !c.wake {
				return
			}
			// A request after the timeout: a new activation, and the
			// revision becomes ready once a pod is.
			if code := cl.post(t, "/v1/poke", fmt.Sprintf(`{"namespace":%q,"name":%q}`, f.ns, f.name)); code != http.StatusAccepted {
				t.Fatalf("poke: %d", code)
			}
			eventually(t, 30*time.Second, "activating again", func() error { return checkQueued(t, cl, f) })
			setReady(t, cl, f.key(f.deploy.Name), 1)
			eventually(t, 30*time.Second, "ready", func() error {
				if pa := f.getPA(t, cl); !pa.IsReady() || !pa.Status.IsScaleTargetInitialized() {
					return fmt.Errorf("status %+v", pa.Status)
				}
				return nil
			})
		})
	}
}

// checkQueued: activating (Queued) with the decode Deployment at 1.
func checkQueued(t *testing.T, cl *cluster, f *revisionFixture) error {
	t.Helper()
	pa := f.getPA(t, cl)
	act, reason := condStatus(pa, "Active")
	r, err := replicasOf(cl, f.key(f.deploy.Name))
	if err != nil {
		return err
	}
	if act != "Unknown" || reason != reconciler.ReasonQueued || ptr.Deref(pa.Status.DesiredScale, -1) != 1 || r != 1 {
		return fmt.Errorf("Active %s %s, desired %d, replicas %d; want Unknown %s, 1, 1", act, reason, ptr.Deref(pa.Status.DesiredScale, -1), r, reconciler.ReasonQueued)
	}
	return checkPrefill(cl, f, 1)
}

// checkPrefill: a disaggregated revision's prefill Deployment has want
// replicas.
func checkPrefill(cl *cluster, f *revisionFixture, want int32) error {
	if !f.prefill {
		return nil
	}
	if r, err := replicasOf(cl, f.key(reconciler.PrefillName(f.name))); err != nil || r != want {
		return fmt.Errorf("prefill replicas %d (%v), want %d", r, err, want)
	}
	return nil
}

// checkTimedOut: Inactive (TimedOut), never initialized, at zero; for a
// target that was initialized before (initialized), Inactive at zero, the
// reason being TimedOut or, on later reconciles, NoTraffic, as in Knative.
func checkTimedOut(t *testing.T, cl *cluster, f *revisionFixture, initialized bool) error {
	t.Helper()
	pa := f.getPA(t, cl)
	act, reason := condStatus(pa, "Active")
	init, _ := condStatus(pa, "ScaleTargetInitialized")
	wantInit, reasons := "Unknown", []string{reconciler.ReasonTimedOut}
	if initialized {
		wantInit, reasons = "True", []string{reconciler.ReasonTimedOut, reconciler.ReasonNoTraffic}
	}
	if act != "False" || !slices.Contains(reasons, reason) || init != wantInit || ptr.Deref(pa.Status.DesiredScale, -1) != 0 {
		return fmt.Errorf("Active %s %s, initialized %s, desired %d; want False %v, %s, 0",
			act, reason, init, ptr.Deref(pa.Status.DesiredScale, -1), reasons, wantInit)
	}
	return checkReplicas(cl, f, 0)
}

// checkReplicas: the decode Deployment, and a disaggregated revision's
// prefill Deployment, have want replicas.
func checkReplicas(cl *cluster, f *revisionFixture, want int32) error {
	if r, err := replicasOf(cl, f.key(f.deploy.Name)); err != nil || r != want {
		return fmt.Errorf("decode replicas %d (%v), want %d", r, err, want)
	}
	return checkPrefill(cl, f, want)
}

// nudge changes a label of the PA, which any watch event would do.
func nudge(t *testing.T, cl *cluster, f *revisionFixture, i int) {
	t.Helper()
	patch := client.RawPatch(types.MergePatchType, fmt.Appendf(nil, `{"metadata":{"labels":{"test.llm-d.ai/nudge":"%d"}}}`, i))
	must(t, cl.c.Patch(context.Background(), f.getPA(t, cl), patch))
}

func hasEvent(t *testing.T, cl *cluster, f *revisionFixture, typ, reason string) bool {
	t.Helper()
	var evs eventsv1.EventList
	must(t, cl.c.List(context.Background(), &evs, client.InNamespace(f.ns)))
	for _, e := range evs.Items {
		if e.Regarding.Name == f.name && e.Type == typ && e.Reason == reason && strings.Contains(e.Note, "progress deadline") {
			return true
		}
	}
	return false
}
