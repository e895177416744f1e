package reconciler

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	"knative.dev/serving/pkg/apis/autoscaling/v1alpha1"
	"knative.dev/serving/pkg/apis/serving"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/llmd-kn/llmd-kn/pkg/apis"
)

// The flush before scale to zero (llm-d.ai/kv-offload: on-scale-down or
// write-through). Knative's scale to zero has no hook for it: the
// Deployment goes to zero replicas and the kubelet stops the pods. So,
// when the decider wants a revision with KV offload at zero while it has
// decode replicas, the reconciler first asks each running decode pod to
// flush (POST apis.KVFlushPath on its serving port) and keeps the
// replicas until every pod has answered, or until llm-d.ai/kv-offload-deadline
// has passed since it asked (by its clock, and by the requests' own
// deadline); then it scales to zero as before. The pods still serve while
// they flush, and demand that returns meanwhile cancels the flush and the
// scale to zero: no cold start. A pod without the endpoint (404, 405 or
// 501: a plain vLLM, whose LMCache connector writes KV through while
// serving and finishes its writes when vLLM shuts down on SIGTERM) is not
// waited for: it flushes at shutdown, within its termination grace period
// (Knative sets it to the revision's timeoutSeconds). A pod that fails or
// cannot be reached is not retried: the scale to zero goes on, and the
// failure is an Event and a count.

// Flush outcomes (label of llmd_autoscaler_kv_flushes_total and the
// Events' reasons).
const (
	// ReasonKVFlushed: every decode pod flushed before the scale to zero.
	ReasonKVFlushed = "KVFlushed"
	// ReasonKVFlushAtShutdown: the pods have no flush endpoint; they flush
	// when they stop.
	ReasonKVFlushAtShutdown = "KVFlushAtShutdown"
	// ReasonKVFlushFailed: some pod answered an error or could not be
	// reached.
	ReasonKVFlushFailed = "KVFlushFailed"
	// ReasonKVFlushTimedOut: the deadline passed before every pod answered.
	ReasonKVFlushTimedOut = "KVFlushTimedOut"
)

// kvFlush is one revision's flush in progress.
type kvFlush struct {
	started  time.Time // the reconciler's clock
	deadline time.Duration
	cancel   context.CancelFunc
	done     chan struct{} // closed when res is final
	res      flushResult
	reported bool // its Event was sent
}

// flushResult is what the pods answered.
type flushResult struct {
	pods, flushed, atShutdown, failed int
	bytes                             int64
	firstErr                          string
	took                              time.Duration
}

func (f flushResult) reason() string {
	switch {
	case f.failed > 0:
		return ReasonKVFlushFailed
	case f.flushed == 0 && f.atShutdown > 0:
		return ReasonKVFlushAtShutdown
	}
	return ReasonKVFlushed
}

// flushState is the revision's flush in progress (nil: none).
func (s *revisionScaler) flushState() *kvFlush {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.flush
}

// dropFlush cancels and forgets the revision's flush: demand returned,
// or the revision is at zero.
func (s *revisionScaler) dropFlush() {
	s.mu.Lock()
	f := s.flush
	s.flush = nil
	s.mu.Unlock()
	if f != nil {
		f.cancel()
	}
}

// flushGate decides whether a revision with KV offload that is to go to
// zero keeps its replicas for the flush: hold while the flush runs and its
// deadline has not passed; recheck is when to look again.
func (r *PodAutoscalerReconciler) flushGate(pa *v1alpha1.PodAutoscaler, rs *revisionScaler, kv apis.KVOffloadSpec, now time.Time) (hold bool, recheck time.Duration) {
	rs.mu.Lock()
	f := rs.flush
	if f == nil {
		ctx, cancel := context.WithTimeout(context.Background(), kv.Deadline)
		f = &kvFlush{started: now, deadline: kv.Deadline, cancel: cancel, done: make(chan struct{})}
		rs.flush = f
		rs.mu.Unlock()
		r.log.Info("kv offload: asking the decode pods to flush before scaling to zero", "revision", rs.key.String(), "deadline", kv.Deadline)
		go func() {
			defer cancel()
			f.res = r.flushPods(ctx, pa.Namespace, revisionName(pa))
			close(f.done)
			r.enqueue(rs.key)
		}()
		return true, kv.Deadline + time.Second
	}
	rs.mu.Unlock()

	select {
	case <-f.done:
		r.reportFlush(pa, rs, f, false)
		return false, 0
	default:
	}
	if elapsed := now.Sub(f.started); elapsed < f.deadline {
		return true, f.deadline - elapsed + time.Second
	}
	f.cancel()
	r.reportFlush(pa, rs, f, true)
	return false, 0
}

// reportFlush sends the flush's Event and count once.
func (r *PodAutoscalerReconciler) reportFlush(pa *v1alpha1.PodAutoscaler, rs *revisionScaler, f *kvFlush, timedOut bool) {
	rs.mu.Lock()
	done := f.reported
	f.reported = true
	rs.mu.Unlock()
	if done {
		return
	}
	if timedOut {
		r.flushes.WithLabelValues(ReasonKVFlushTimedOut).Inc()
		r.log.Info("kv offload: flush timed out; scaling to zero", "revision", rs.key.String(), "deadline", f.deadline)
		r.recorder.Eventf(pa, nil, corev1.EventTypeWarning, ReasonKVFlushTimedOut, "ScaleToZero",
			"the decode pods did not finish flushing their KV cache within %v (%s); scaling to zero", f.deadline, apis.KVOffloadDeadlineAnnotation)
		return
	}
	res := f.res
	reason := res.reason()
	r.flushes.WithLabelValues(reason).Inc()
	r.log.Info("kv offload: flushed; scaling to zero", "revision", rs.key.String(), "outcome", reason, "pods", res.pods,
		"flushed", res.flushed, "at_shutdown", res.atShutdown, "failed", res.failed, "bytes", res.bytes, "took", res.took, "first_error", res.firstErr)
	switch reason {
	case ReasonKVFlushFailed:
		r.recorder.Eventf(pa, nil, corev1.EventTypeWarning, reason, "ScaleToZero",
			"the KV cache flush failed (%s; %d failed, %d flushed); scaling to zero", res.firstErr, res.failed, res.flushed)
	case ReasonKVFlushAtShutdown:
		r.recorder.Eventf(pa, nil, corev1.EventTypeNormal, reason, "ScaleToZero",
			"the decode pods have no %s endpoint; they flush their KV cache when they stop; scaling to zero", apis.KVFlushPath)
	default:
		r.recorder.Eventf(pa, nil, corev1.EventTypeNormal, reason, "ScaleToZero",
			"%d decode pods flushed their KV cache (%d bytes) in %v; scaling to zero", res.flushed, res.bytes, res.took.Round(time.Millisecond))
	}
}

// flushPods asks every running decode pod of the revision to flush, in
// parallel, until ctx ends.
func (r *PodAutoscalerReconciler) flushPods(ctx context.Context, namespace, revision string) flushResult {
	start := time.Now()
	var res flushResult
	var pods corev1.PodList
	// Read once, uncached: a watch of every pod in the cluster for a call
	// made at each scale to zero would cost more than it saves.
	if err := r.reader.List(ctx, &pods, client.InNamespace(namespace), client.MatchingLabels{serving.RevisionLabelKey: revision}); err != nil {
		res.failed, res.firstErr = 1, fmt.Sprintf("list pods: %v", err)
		return res
	}
	var (
		mu sync.Mutex
		wg sync.WaitGroup
	)
	for i := range pods.Items {
		p := &pods.Items[i]
		if p.DeletionTimestamp != nil || p.Status.Phase != corev1.PodRunning || p.Status.PodIP == "" || p.Labels[RoleLabel] == RolePrefill {
			continue
		}
		res.pods++
		wg.Add(1)
		go func() {
			defer wg.Done()
			bytes, supported, err := r.flushPod(ctx, p)
			mu.Lock()
			defer mu.Unlock()
			switch {
			case err != nil:
				res.failed++
				if res.firstErr == "" {
					res.firstErr = fmt.Sprintf("pod %s: %v", p.Name, err)
				}
			case !supported:
				res.atShutdown++
			default:
				res.flushed++
				res.bytes += bytes
			}
		}()
	}
	wg.Wait()
	res.took = time.Since(start)
	return res
}

// flushPod calls one pod's flush endpoint. supported is false when the
// pod has none. The pod's answer body is not echoed into errors (it is
// the pod's to say, and Events are widely readable).
func (r *PodAutoscalerReconciler) flushPod(ctx context.Context, p *corev1.Pod) (bytes int64, supported bool, err error) {
	url := "http://" + net.JoinHostPort(p.Status.PodIP, strconv.Itoa(int(servingPort(p)))) + apis.KVFlushPath
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, url, nil)
	if err != nil {
		return 0, false, err
	}
	resp, err := r.flushClient.Do(req)
	if err != nil {
		if cerr := ctx.Err(); cerr != nil {
			return 0, false, cerr
		}
		return 0, false, errors.New("unreachable")
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
	switch resp.StatusCode {
	case http.StatusOK:
		var out struct {
			Bytes int64 `json:"bytes"`
		}
		_ = json.Unmarshal(body, &out) // the count is informative only
		return max(out.Bytes, 0), true, nil
	case http.StatusNotFound, http.StatusMethodNotAllowed, http.StatusNotImplemented:
		return 0, false, nil
	}
	return 0, true, fmt.Errorf("HTTP %d", resp.StatusCode)
}

// servingPort is the port a pod serves its model on: its first
// container's (other than Knative's queue-proxy) first declared port,
// 8080 (Knative's default user port) when it declares none.
func servingPort(p *corev1.Pod) int32 {
	for _, c := range p.Spec.Containers {
		if c.Name == QueueProxyContainer {
			continue
		}
		if len(c.Ports) > 0 && c.Ports[0].ContainerPort > 0 {
			return c.Ports[0].ContainerPort
		}
		break
	}
	return 8080
}

// newFlushClient is the default client of the flush calls: no redirects
// (a pod answers for itself), no overall timeout (each call's context
// carries the flush deadline).
func newFlushClient() *http.Client {
	return &http.Client{CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
}
