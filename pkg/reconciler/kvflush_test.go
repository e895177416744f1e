package reconciler_test

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"strconv"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	eventsv1 "k8s.io/api/events/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"knative.dev/serving/pkg/apis/serving"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/llmd-kn/llmd-kn/pkg/apis"
	"github.com/llmd-kn/llmd-kn/pkg/reconciler"
)

// flushPod is a decode pod of the fixture's revision, running and ready,
// whose serving port is a loopback server answering the KV flush endpoint
// with answer (called once per request; it may block until its context
// ends). calls receives each request's context.
func flushPod(t *testing.T, cl *cluster, f *revisionFixture, answer func(w http.ResponseWriter, r *http.Request)) (calls chan context.Context) {
	t.Helper()
	calls = make(chan context.Context, 16)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != apis.KVFlushPath || r.Method != http.MethodPost {
			http.NotFound(w, r)
			return
		}
		calls <- r.Context()
		answer(w, r)
	}))
	t.Cleanup(srv.Close)
	_, port, _ := net.SplitHostPort(srv.Listener.Addr().String())
	p, _ := strconv.Atoi(port)
	no := false
	pod := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: f.name + "-deployment-a", Namespace: f.ns, Labels: map[string]string{serving.RevisionLabelKey: f.name}},
		Spec: corev1.PodSpec{AutomountServiceAccountToken: &no, Containers: []corev1.Container{
			{Name: "user-container", Image: "vllm", Ports: []corev1.ContainerPort{{Name: "user-port", ContainerPort: int32(p)}}},
			{Name: reconciler.QueueProxyContainer, Image: "queue", Ports: []corev1.ContainerPort{{ContainerPort: 8012}}},
		}},
	}
	ctx := context.Background()
	must(t, cl.c.Create(ctx, pod))
	pod.Status = corev1.PodStatus{Phase: corev1.PodRunning, PodIP: "127.0.0.1", PodIPs: []corev1.PodIP{{IP: "127.0.0.1"}},
		Conditions: []corev1.PodCondition{{Type: corev1.PodReady, Status: corev1.ConditionTrue, LastTransitionTime: metav1.Now()}}}
	must(t, cl.c.Status().Update(ctx, pod))
	return calls
}

// untilFlushCall lets the reconciler's clock run a minute per step (the
// scale-to-zero grace period and windows pass) until the pod is asked to
// flush; it returns the request's context.
func untilFlushCall(t *testing.T, cl *cluster, f *revisionFixture, calls chan context.Context) context.Context {
	t.Helper()
	for i := 0; i < 60; i++ {
		cl.clock.Shift(time.Minute)
		nudge(t, cl, f, 100+i)
		select {
		case ctx := <-calls:
			return ctx
		case <-time.After(500 * time.Millisecond):
		}
		if r, err := replicasOf(cl, f.key(f.deploy.Name)); err == nil && r == 0 {
			t.Fatal("scaled to zero without asking the pod to flush")
		}
	}
	t.Fatal("the pod was never asked to flush")
	return nil
}

func flushEvent(t *testing.T, cl *cluster, f *revisionFixture, reason string) error {
	t.Helper()
	var evs eventsv1.EventList
	must(t, cl.c.List(context.Background(), &evs, client.InNamespace(f.ns)))
	for _, e := range evs.Items {
		if e.Regarding.Name == f.name && e.Reason == reason {
			return nil
		}
	}
	return fmt.Errorf("no %s event", reason)
}

func flushCount(cl *cluster, outcome string) float64 {
	mfs, _ := cl.registry.Gather()
	for _, mf := range mfs {
		if mf.GetName() != "llmd_autoscaler_kv_flushes_total" {
			continue
		}
		for _, m := range mf.GetMetric() {
			for _, l := range m.GetLabel() {
				if l.GetName() == "outcome" && l.GetValue() == outcome {
					return m.GetCounter().GetValue()
				}
			}
		}
	}
	return 0
}

// stillAt checks, over several reconciles, that the decode Deployment
// keeps want replicas (the flush holds them: nothing else in the test can
// release them).
func stillAt(t *testing.T, cl *cluster, f *revisionFixture, want int32, base int) {
	t.Helper()
	for i := 0; i < 5; i++ {
		nudge(t, cl, f, base+i)
		time.Sleep(2 * tick)
		if err := checkReplicas(cl, f, want); err != nil {
			t.Fatalf("while the pod flushes: %v", err)
		}
	}
}

// TestScaleToZeroWaitsForTheKVFlush: issue 12's reconciler part. A
// revision with KV offload that is to go to zero keeps its last replica
// while the reconciler asks its pod to flush (POST apis.KVFlushPath), and
// scales to zero once the pod answered; at llm-d.ai/kv-offload-deadline it
// gives up (the pod's request is cancelled) and scales to zero anyway; a
// pod without the endpoint (a plain vLLM, which flushes at shutdown) is not
// waited for; demand that returns during the flush cancels it and keeps
// the replica.
func TestScaleToZeroWaitsForTheKVFlush(t *testing.T) {
	cl := clockCluster(t)
	offload := func(deadline string) map[string]string {
		return map[string]string{apis.KVOffloadAnnotation: apis.KVOffloadOnScaleDown,
			apis.KVOffloadURIAnnotation: "s3://llmd-kv/chat", apis.KVOffloadDeadlineAnnotation: deadline}
	}
	start := func(t *testing.T, deadline string, answer func(http.ResponseWriter, *http.Request)) (*revisionFixture, chan context.Context) {
		f := newRevision(t, cl, apis.AutoscalerClass, offload(deadline), 1)
		setReady(t, cl, f.key(f.deploy.Name), 1)
		calls := flushPod(t, cl, f, answer)
		cl.quietActivator(t, f)
		return f, calls
	}

	t.Run("waits for the flush", func(t *testing.T) {
		release := make(chan struct{})
		f, calls := start(t, "10m", func(w http.ResponseWriter, r *http.Request) {
			select {
			case <-release:
				w.Header().Set("Content-Type", "application/json")
				fmt.Fprint(w, `{"written":3,"committed":3,"bytes":6291456}`)
			case <-r.Context().Done():
			}
		})
		before := flushCount(cl, reconciler.ReasonKVFlushed)
		untilFlushCall(t, cl, f, calls)
		stillAt(t, cl, f, 1, 200)
		close(release)
		eventually(t, 20*time.Second, "to zero after the flush", func() error {
			nudge(t, cl, f, 300)
			return checkReplicas(cl, f, 0)
		})
		eventually(t, 10*time.Second, "event", func() error { return flushEvent(t, cl, f, reconciler.ReasonKVFlushed) })
		if got := flushCount(cl, reconciler.ReasonKVFlushed) - before; got != 1 {
			t.Errorf("%s flushes counted: %v, want 1", reconciler.ReasonKVFlushed, got)
		}
	})

	t.Run("gives up at the deadline", func(t *testing.T) {
		f, calls := start(t, "30s", func(w http.ResponseWriter, r *http.Request) { <-r.Context().Done() })
		before := flushCount(cl, reconciler.ReasonKVFlushTimedOut)
		call := untilFlushCall(t, cl, f, calls)
		cl.clock.Shift(31 * time.Second)
		eventually(t, 20*time.Second, "to zero at the deadline", func() error {
			nudge(t, cl, f, 300)
			return checkReplicas(cl, f, 0)
		})
		select {
		case <-call.Done(): // the reconciler stopped waiting for the pod
		case <-time.After(20 * time.Second):
			t.Fatal("the flush request was not cancelled at the deadline")
		}
		eventually(t, 10*time.Second, "event", func() error { return flushEvent(t, cl, f, reconciler.ReasonKVFlushTimedOut) })
		if got := flushCount(cl, reconciler.ReasonKVFlushTimedOut) - before; got != 1 {
			t.Errorf("%s flushes counted: %v, want 1", reconciler.ReasonKVFlushTimedOut, got)
		}
	})

	t.Run("a pod without the endpoint flushes at shutdown", func(t *testing.T) {
		f, calls := start(t, "10m", func(w http.ResponseWriter, r *http.Request) { http.NotFound(w, r) })
		untilFlushCall(t, cl, f, calls)
		eventually(t, 20*time.Second, "to zero at once", func() error {
			nudge(t, cl, f, 300)
			return checkReplicas(cl, f, 0)
		})
		eventually(t, 10*time.Second, "event", func() error { return flushEvent(t, cl, f, reconciler.ReasonKVFlushAtShutdown) })
	})

	t.Run("demand during the flush keeps the replica", func(t *testing.T) {
		f, calls := start(t, "10m", func(w http.ResponseWriter, r *http.Request) { <-r.Context().Done() })
		call := untilFlushCall(t, cl, f, calls)
		cl.postLoad(t, f)
		select {
		case <-call.Done(): // the flush was dropped
		case <-time.After(20 * time.Second):
			t.Fatal("the flush was not cancelled when demand returned")
		}
		r, err := replicasOf(cl, f.key(f.deploy.Name))
		if err != nil || r < 1 {
			t.Fatalf("decode replicas %d (%v) after demand returned, want at least 1", r, err)
		}
	})
}
