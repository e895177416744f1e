package e2e_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	"k8s.io/apimachinery/pkg/types"
	autoscalingv1alpha1 "knative.dev/serving/pkg/apis/autoscaling/v1alpha1"
	servingv1 "knative.dev/serving/pkg/apis/serving/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/llmd-kn/llmd-kn/pkg/activator"
	"github.com/llmd-kn/llmd-kn/pkg/apis"
)

// TestScaleFromZero puts llmd-kn's activator in the request path of a
// revision at zero, as Knative's ingress would: a Service with min-scale 0,
// created with kn, comes up at its initial scale and goes to zero after the
// autoscaler's grace period; a request sent to the activator with Knative's
// revision headers waits there, the activator pokes the autoscaler, the
// decode Deployment goes from 0 to 1 replica and its pod runs on the kwok
// node; the activator's statistics about the waiting request reach the
// autoscaler.
func TestScaleFromZero(t *testing.T) {
	c := controlPlane(t)
	ctx := context.Background()
	const svc = "zero"
	rev := svc + "-00001"
	key := testNamespace + "/" + rev
	revPods := client.MatchingLabels{"serving.knative.dev/revision": rev}
	created := time.Now()

	if !step(t, "kn service create with min-scale 0", func(t *testing.T) {
		out, err := c.kn(ctx, "service", "create", svc, "--image", testImage,
			"--annotation", apis.MinScaleAnnotation+"=0",
			"--annotation", apis.ModelAnnotation+"=meta-llama/Llama-3.1-8B-Instruct",
			"--annotation", apis.SimProfileAnnotation+"=llama-3.1-8b-h100",
			"--no-wait")
		if err != nil {
			t.Fatalf("kn service create: %v\n%s", err, out)
		}
	}) {
		return
	}
	defer step(t, "kn service delete", func(t *testing.T) {
		if out, err := c.kn(ctx, "service", "delete", svc); err != nil {
			t.Fatalf("kn service delete: %v\n%s", err, out)
		}
	})

	if !step(t, "revision comes up, then scales to zero", func(t *testing.T) {
		var readyAt time.Time
		waitFor(t, "decode pod of "+rev+" running", 60*time.Second, func() (bool, string) {
			pods := c.pods(t, revPods)
			n, state := runningOnFakeNode(pods)
			if n == 0 {
				return false, state
			}
			readyAt = time.Now()
			for _, p := range pods {
				for _, cond := range p.Status.Conditions {
					if cond.Type == corev1.PodReady && cond.Status == corev1.ConditionTrue && !cond.LastTransitionTime.IsZero() {
						// kwok's clock, in whole seconds: never later
						// than the pod became ready.
						readyAt = cond.LastTransitionTime.Time
					}
				}
			}
			return true, state
		})
		t.Logf("decode pod running, seen %.1fs after kn service create", time.Since(created).Seconds())
		waitFor(t, "revision "+rev+" Ready", 30*time.Second, func() (bool, string) {
			var r servingv1.Revision
			if err := c.client.Get(ctx, types.NamespacedName{Namespace: testNamespace, Name: rev}, &r); err != nil {
				return false, err.Error()
			}
			cond := r.Status.GetCondition(servingv1.RevisionConditionReady)
			return cond != nil && cond.IsTrue(), fmt.Sprintf("Ready condition %+v", cond)
		})
		var zeroAt time.Time
		waitFor(t, "decode Deployment at 0 replicas", 30*time.Second, func() (bool, string) {
			d, err := c.deployment(rev + "-deployment")
			if err != nil {
				return false, err.Error()
			}
			zeroAt = time.Now()
			return replicas(d) == 0, fmt.Sprintf("replicas %d", replicas(d))
		})
		t.Logf("scaled to zero %.1fs after its pod became ready (grace period %v, tick %v)",
			zeroAt.Sub(readyAt).Seconds(), scaleToZeroGrace, tickInterval)
		if idle := zeroAt.Sub(readyAt); idle < scaleToZeroGrace {
			t.Errorf("scaled to zero %v after its pod became ready, within the grace period of %v", idle, scaleToZeroGrace)
		}
		waitFor(t, "pods of "+rev+" gone", 30*time.Second, func() (bool, string) {
			pods := c.pods(t, revPods)
			return len(pods) == 0, fmt.Sprintf("%d pods left", len(pods))
		})
		// What Knative's revision reconciler reads.
		waitFor(t, "podautoscaler desired scale 0", 30*time.Second, func() (bool, string) {
			var pa autoscalingv1alpha1.PodAutoscaler
			if err := c.client.Get(ctx, types.NamespacedName{Namespace: testNamespace, Name: rev}, &pa); err != nil {
				return false, err.Error()
			}
			return pa.Status.DesiredScale != nil && *pa.Status.DesiredScale == 0 && pa.Status.ActualScale != nil && *pa.Status.ActualScale == 0,
				fmt.Sprintf("desired %v actual %v", deref(pa.Status.DesiredScale), deref(pa.Status.ActualScale))
		})
	}) {
		return
	}

	if !step(t, "the revision's traffic reaches llmd-kn's activator", func(t *testing.T) {
		// Knative's ingress sends the revision's traffic to the endpoints
		// of the Service named like it: the activator's address. Their
		// port is the activator's container port (8080), where a pod
		// listens; this host process listens on a free port, the one of
		// the llmd-activator Service's EndpointSlice, and the request
		// below goes there.
		u, err := url.Parse(c.activatorURL)
		if err != nil {
			t.Fatal(err)
		}
		waitFor(t, "endpoints of Service "+rev, 30*time.Second, func() (bool, string) {
			var l discoveryv1.EndpointSliceList
			if err := c.client.List(ctx, &l, client.InNamespace(testNamespace), client.MatchingLabels{discoveryv1.LabelServiceName: rev}); err != nil {
				return false, err.Error()
			}
			var addrs []string
			for _, es := range l.Items {
				for _, e := range es.Endpoints {
					addrs = append(addrs, e.Addresses...)
				}
			}
			return slices.Contains(addrs, u.Hostname()), fmt.Sprintf("endpoints %v, want the activator's %s", addrs, u.Hostname())
		})
		// The activator found the revision (its informers) and no pod.
		waitFor(t, "the activator serves "+key, 30*time.Second, func() (bool, string) {
			s, err := c.activatorStats(key)
			if err != nil {
				return false, err.Error()
			}
			return s.Pods == 0, fmt.Sprintf("pods %d", s.Pods)
		})
	}) {
		return
	}

	step(t, "a request at zero wakes the revision through the activator", func(t *testing.T) {
		labels := map[string]string{"revision": key}
		pokes0 := c.activatorMetric(t, "llmd_activator_autoscaler_pokes_total", map[string]string{"outcome": "sent"})
		// Another test may have restarted the autoscaler (reports failed
		// then): this step's own failures count.
		failures0 := c.activatorMetric(t, "llmd_activator_autoscaler_report_failures_total", nil)

		// The request as Knative's ingress forwards it: the revision's
		// headers, the Service's host. It cannot complete: kwok's pods
		// have addresses where no vLLM listens, so the activator's scrape
		// of the pod's /metrics never succeeds, the pod never counts as
		// ready, and the request would wait in the activator's queue for
		// its tier's maxQueueTime (60 s for the standard tier) before a
		// 503. The test cancels it once everything it checks has happened.
		reqCtx, cancel := context.WithCancel(ctx)
		defer cancel()
		type answer struct {
			status int
			body   string
			err    error
		}
		answered := make(chan answer, 1)
		sent := time.Now()
		go func() {
			body := `{"model": "meta-llama/Llama-3.1-8B-Instruct", "prompt": "Say hello.", "max_tokens": 8}`
			req, err := http.NewRequestWithContext(reqCtx, http.MethodPost, c.activatorURL+"/v1/completions", strings.NewReader(body))
			if err != nil {
				answered <- answer{err: err}
				return
			}
			req.Host = svc + "." + testNamespace + ".example.com"
			req.Header.Set("Content-Type", "application/json")
			req.Header.Set(activator.RevisionHeader, rev)
			req.Header.Set(activator.NamespaceHeader, testNamespace)
			// No client timeout: the context ends it.
			resp, err := (&http.Client{}).Do(req)
			if err != nil {
				answered <- answer{err: err}
				return
			}
			b, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			answered <- answer{status: resp.StatusCode, body: string(b)}
		}()
		// Times are when the test saw each event (it polls every 100 ms).
		since := func(what string) { t.Logf("%-44s seen %5.2fs after the request", what, time.Since(sent).Seconds()) }
		notAnswered := func() {
			select {
			case a := <-answered:
				t.Fatalf("the request was answered while no pod could serve it: %d %s %v", a.status, a.body, a.err)
			default:
			}
		}

		waitFor(t, "the request queued in the activator", 30*time.Second, func() (bool, string) {
			notAnswered()
			n := c.activatorMetric(t, "llmd_activator_queued_requests", labels)
			return n == 1, fmt.Sprintf("queued %v", n)
		})
		since("queued in the activator")
		waitFor(t, "the activator poked the autoscaler", 30*time.Second, func() (bool, string) {
			n := c.activatorMetric(t, "llmd_activator_autoscaler_pokes_total", map[string]string{"outcome": "sent"})
			return n > pokes0, fmt.Sprintf("pokes sent %v (before the request: %v)", n, pokes0)
		})
		since("poke sent")
		waitFor(t, "decode Deployment scaled from 0", 30*time.Second, func() (bool, string) {
			d, err := c.deployment(rev + "-deployment")
			if err != nil {
				return false, err.Error()
			}
			return replicas(d) > 0, fmt.Sprintf("replicas %d", replicas(d))
		})
		since("decode Deployment scaled up")
		if d, err := c.deployment(rev + "-deployment"); err != nil {
			t.Fatal(err)
		} else if replicas(d) != 1 {
			t.Errorf("decode Deployment has %d replicas for one waiting request, want 1", replicas(d))
		}
		waitFor(t, "decode pod running", 60*time.Second, func() (bool, string) {
			n, state := runningOnFakeNode(c.pods(t, revPods))
			return n == 1, state
		})
		since("decode pod running on " + nodeName)
		// The activator's informers see the pod; no vLLM answers there.
		waitFor(t, "the activator knows the new pod", 30*time.Second, func() (bool, string) {
			s, err := c.activatorStats(key)
			if err != nil {
				return false, err.Error()
			}
			return s.Pods == 1 && s.ReadyPods == 0, fmt.Sprintf("pods %d, ready %d", s.Pods, s.ReadyPods)
		})
		since("the activator knows the pod")
		// The activator's stats reports carry the waiting request: the
		// autoscaler's decision counts it as a backlog.
		waitFor(t, "the autoscaler sees the activator's queued request", 30*time.Second, func() (bool, string) {
			rec, err := c.recommendation(testNamespace, rev)
			if err != nil {
				return false, err.Error()
			}
			return rec.Recommendation.DecodeRole.Backlog > 0 && rec.Decode == 1,
				fmt.Sprintf("decode %d, backlog %v", rec.Decode, rec.Recommendation.DecodeRole.Backlog)
		})
		since("the autoscaler counts the queued request")
		notAnswered()

		cancel()
		select {
		case a := <-answered:
			if !errors.Is(a.err, context.Canceled) {
				t.Errorf("cancelled request: status %d %s, err %v; want context.Canceled", a.status, a.body, a.err)
			}
		case <-time.After(30 * time.Second):
			t.Fatal("the cancelled request did not return")
		}
		// The activator saw the client go away while the request waited.
		waitFor(t, "the activator counts the cancelled request", 30*time.Second, func() (bool, string) {
			done := c.activatorMetric(t, "llmd_activator_requests_total", map[string]string{"revision": key, "code": "499"})
			queued := c.activatorMetric(t, "llmd_activator_queued_requests", labels)
			return done == 1 && queued == 0, fmt.Sprintf("requests with code 499: %v, queued %v", done, queued)
		})
		if n := c.activatorMetric(t, "llmd_activator_autoscaler_report_failures_total", nil) - failures0; n != 0 {
			t.Errorf("the autoscaler refused %v of the activator's stats reports and pokes", n)
		}
	})
}

func deref[T any](p *T) any {
	if p == nil {
		return nil
	}
	return *p
}

// activatorStats is the activator's view of one revision (its admin
// /stats, the statistics it reports to the autoscaler).
func (c *cluster) activatorStats(key string) (activator.RevisionStats, error) {
	return activatorStatsAt(c.activatorAdminURL, key)
}

// activatorStatsAt is activatorStats of the activator whose admin server
// is adminURL.
func activatorStatsAt(adminURL, key string) (activator.RevisionStats, error) {
	resp, err := httpClient.Get(adminURL + "/stats")
	if err != nil {
		return activator.RevisionStats{}, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return activator.RevisionStats{}, err
	}
	if resp.StatusCode != http.StatusOK {
		return activator.RevisionStats{}, fmt.Errorf("GET /stats: %s %s", resp.Status, body)
	}
	var list []activator.RevisionStats
	if err := json.Unmarshal(body, &list); err != nil {
		return activator.RevisionStats{}, fmt.Errorf("GET /stats: %w: %s", err, body)
	}
	for _, s := range list {
		if s.Revision == key {
			return s, nil
		}
	}
	return activator.RevisionStats{}, fmt.Errorf("the activator's /stats has no %s: %s", key, body)
}

// activatorMetric sums the samples of a counter or gauge on the activator's
// /metrics whose labels include want (0 when there are none).
func (c *cluster) activatorMetric(t *testing.T, name string, want map[string]string) float64 {
	t.Helper()
	return activatorMetricAt(t, c.activatorAdminURL, name, want)
}

// activatorMetricAt is activatorMetric of the activator whose admin
// server is adminURL.
func activatorMetricAt(t *testing.T, adminURL, name string, want map[string]string) float64 {
	t.Helper()
	resp, err := httpClient.Get(adminURL + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET /metrics: %s", resp.Status)
	}
	parser := expfmt.NewTextParser(model.LegacyValidation)
	fams, err := parser.TextToMetricFamilies(resp.Body)
	if err != nil {
		t.Fatalf("GET /metrics: %v", err)
	}
	sum := 0.0
	for _, m := range fams[name].GetMetric() {
		have := map[string]string{}
		for _, l := range m.GetLabel() {
			have[l.GetName()] = l.GetValue()
		}
		match := true
		for k, v := range want {
			match = match && have[k] == v
		}
		if match {
			sum += m.GetCounter().GetValue() + m.GetGauge().GetValue()
		}
	}
	return sum
}
