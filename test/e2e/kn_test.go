package e2e_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	autoscalingv1alpha1 "knative.dev/serving/pkg/apis/autoscaling/v1alpha1"
	servingv1 "knative.dev/serving/pkg/apis/serving/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/llmd-kn/llmd-kn/pkg/activator"
	"github.com/llmd-kn/llmd-kn/pkg/apis"
)

// kn runs the kn binary against the cluster, in the test namespace, with
// no user configuration; it returns kn's combined output.
func (c *cluster) kn(ctx context.Context, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	args = append(args, "--kubeconfig", c.kubeconfig, "--namespace", testNamespace)
	cmd := exec.CommandContext(ctx, filepath.Join(c.bin, "kn"), args...)
	cmd.Env = append(os.Environ(), "HOME="+c.dir)
	out, err := cmd.CombinedOutput()
	return string(out), err
}

// waitFor polls cond every 100 ms for up to limit, failing the test with
// what cond last said.
func waitFor(t *testing.T, what string, limit time.Duration, cond func() (bool, string)) {
	t.Helper()
	deadline := time.Now().Add(limit)
	for {
		ok, state := cond()
		if ok {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within %v; last: %s%s", what, limit, state, shared.dead())
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// pods lists the pods in the test namespace with the given labels.
func (c *cluster) pods(t *testing.T, labels client.MatchingLabels) []corev1.Pod {
	t.Helper()
	var l corev1.PodList
	if err := c.client.List(context.Background(), &l, client.InNamespace(testNamespace), labels); err != nil {
		t.Fatal(err)
	}
	return l.Items
}

// runningOnFakeNode counts the pods that run on the kwok node, and says
// where the others are.
func runningOnFakeNode(pods []corev1.Pod) (int, string) {
	n := 0
	var others []string
	for _, p := range pods {
		if p.Status.Phase == corev1.PodRunning && p.Spec.NodeName == nodeName && p.DeletionTimestamp == nil {
			n++
			continue
		}
		others = append(others, fmt.Sprintf("%s: phase %s node %q", p.Name, p.Status.Phase, p.Spec.NodeName))
	}
	return n, fmt.Sprintf("%d running on %s; others %v", n, nodeName, others)
}

// decodePods are the revision's pods that are not prefill pods.
func decodePods(pods []corev1.Pod) []corev1.Pod {
	return slices.DeleteFunc(pods, func(p corev1.Pod) bool { return p.Labels["llm-d.ai/role"] == "prefill" })
}

func (c *cluster) deployment(name string) (*appsv1.Deployment, error) {
	var d appsv1.Deployment
	err := c.client.Get(context.Background(), types.NamespacedName{Namespace: testNamespace, Name: name}, &d)
	return &d, err
}

func replicas(d *appsv1.Deployment) int32 {
	if d.Spec.Replicas == nil {
		return 1
	}
	return *d.Spec.Replicas
}

// TestKnServiceLifecycle drives the cluster with kn: an llm-d Service with
// prefill/decode disaggregation is created, defaulted by llmd-kn's webhook,
// turned into a Revision by Knative, scaled by llmd-kn's autoscaler from
// activator statistics, and deleted with everything it owns; a Service
// with an invalid llm-d annotation is refused with llmd-kn's message.
func TestKnServiceLifecycle(t *testing.T) {
	c := controlPlane(t)
	ctx := context.Background()
	const svc = "llama"
	rev := svc + "-00001"
	revPods := client.MatchingLabels{"serving.knative.dev/revision": rev}

	if !step(t, "kn service create", func(t *testing.T) {
		// kn's --annotation writes each key on the Service and on the
		// revision template; llmd-kn reads the template's. min-scale 1:
		// the steps below count replicas, which the harness's short
		// scale-to-zero grace period would otherwise take to zero between
		// them (TestScaleFromZero covers min-scale 0).
		out, err := c.kn(ctx, "service", "create", svc, "--image", testImage,
			"--annotation", apis.MinScaleAnnotation+"=1",
			"--annotation", apis.ModelAnnotation+"=meta-llama/Llama-3.1-8B-Instruct",
			"--annotation", apis.DisaggregationAnnotation+"="+apis.DisaggregationPrefillDecode,
			"--annotation", apis.SimProfileAnnotation+"=llama-3.1-8b-h100",
			"--no-wait")
		if err != nil {
			t.Fatalf("kn service create: %v\n%s", err, out)
		}
		t.Logf("kn: %s", strings.TrimSpace(out))
	}) {
		return
	}

	// Each step needs the ones before it: the first failure ends the
	// chain, and the Service is still deleted below.
	func() {
		if !step(t, "revision has llmd-kn's autoscaler class", func(t *testing.T) {
			var r servingv1.Revision
			waitFor(t, "revision "+rev, 30*time.Second, func() (bool, string) {
				err := c.client.Get(ctx, types.NamespacedName{Namespace: testNamespace, Name: rev}, &r)
				return err == nil, fmt.Sprint(err)
			})
			if got := r.Annotations[apis.ClassAnnotation]; got != apis.AutoscalerClass {
				t.Errorf("revision %s: %s = %q, want %q (llmd-kn's defaulting)", rev, apis.ClassAnnotation, got, apis.AutoscalerClass)
			}
			if got := r.Annotations[apis.DisaggregationAnnotation]; got != apis.DisaggregationPrefillDecode {
				t.Errorf("revision %s: %s = %q, want %q", rev, apis.DisaggregationAnnotation, got, apis.DisaggregationPrefillDecode)
			}
		}) {
			return
		}

		var pa autoscalingv1alpha1.PodAutoscaler
		if !step(t, "podautoscaler of llmd-kn's class", func(t *testing.T) {
			waitFor(t, "podautoscaler "+rev, 30*time.Second, func() (bool, string) {
				err := c.client.Get(ctx, types.NamespacedName{Namespace: testNamespace, Name: rev}, &pa)
				return err == nil, fmt.Sprint(err)
			})
			if got := pa.Class(); got != apis.AutoscalerClass {
				t.Errorf("podautoscaler %s has class %q, want %q", rev, got, apis.AutoscalerClass)
			}
		}) {
			return
		}

		if !step(t, "decode pods run on the fake GPU node", func(t *testing.T) {
			waitFor(t, "decode pods of "+rev+" running", 60*time.Second, func() (bool, string) {
				n, state := runningOnFakeNode(decodePods(c.pods(t, revPods)))
				return n >= 1, state
			})
		}) {
			return
		}

		// The steps below are llmd-kn's autoscaler's (cmd/autoscaler): the
		// PodAutoscaler class, the P/D reconciler and the SLO decider.
		if !step(t, "llmd-kn reconciles the podautoscaler", func(t *testing.T) {
			waitFor(t, "podautoscaler status", 30*time.Second, func() (bool, string) {
				if err := c.client.Get(ctx, types.NamespacedName{Namespace: testNamespace, Name: rev}, &pa); err != nil {
					return false, err.Error()
				}
				return pa.Status.ServiceName == rev && pa.Status.MetricsServiceName == rev,
					fmt.Sprintf("serviceName %q metricsServiceName %q", pa.Status.ServiceName, pa.Status.MetricsServiceName)
			})
			// The revision's traffic goes to llmd-kn's activator.
			waitFor(t, "revision Service endpoints", 30*time.Second, func() (bool, string) {
				var s corev1.Service
				if err := c.client.Get(ctx, types.NamespacedName{Namespace: testNamespace, Name: rev}, &s); err != nil {
					return false, err.Error()
				}
				if o := metav1.GetControllerOf(&s); o == nil || o.Kind != "PodAutoscaler" || o.Name != rev {
					return false, fmt.Sprintf("Service %s controller %+v, want PodAutoscaler %s", rev, o, rev)
				}
				// Knative's ingress sends HTTP/1 to port 80 and h2c to 81.
				var ports []string
				for _, p := range s.Spec.Ports {
					ports = append(ports, fmt.Sprintf("%s:%d->%s", p.Name, p.Port, p.TargetPort.String()))
				}
				if want := []string{"http:80->8080", "http2:81->8080"}; !slices.Equal(ports, want) {
					return false, fmt.Sprintf("Service %s ports %v, want %v", rev, ports, want)
				}
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
				return slices.Contains(addrs, c.hostIP), fmt.Sprintf("endpoints %v, want the activator's %s", addrs, c.hostIP)
			})
		}) {
			return
		}

		if !step(t, "prefill deployment and pods", func(t *testing.T) {
			var d *appsv1.Deployment
			waitFor(t, "deployment "+rev+"-prefill", 30*time.Second, func() (bool, string) {
				var err error
				d, err = c.deployment(rev + "-prefill")
				return err == nil, fmt.Sprint(err)
			})
			labels := d.Spec.Template.Labels
			for k, v := range map[string]string{
				"serving.knative.dev/revision": rev, "serving.knative.dev/service": svc,
				"llm-d.ai/role": "prefill", "app.kubernetes.io/managed-by": "llmd-kn",
			} {
				if labels[k] != v {
					t.Errorf("prefill pod label %s = %q, want %q", k, labels[k], v)
				}
			}
			if _, ok := labels["serving.knative.dev/revisionUID"]; ok {
				t.Error("prefill pods carry serving.knative.dev/revisionUID: Knative's Deployment would count them")
			}
			if o := metav1.GetControllerOf(d); o == nil || o.Kind != "PodAutoscaler" || o.Name != rev {
				t.Errorf("prefill Deployment controller %+v, want PodAutoscaler %s", o, rev)
			}
			for _, ct := range d.Spec.Template.Spec.Containers {
				if ct.Name == "queue-proxy" {
					t.Error("prefill pods have Knative's queue-proxy container")
				}
			}
			waitFor(t, "prefill pods running", 60*time.Second, func() (bool, string) {
				n, state := runningOnFakeNode(c.pods(t, client.MatchingLabels{"serving.knative.dev/revision": rev, "llm-d.ai/role": "prefill"}))
				return n >= 1 && n == int(replicas(d)), state
			})
		}) {
			return
		}

		if !step(t, "replicas follow the autoscaler under load", func(t *testing.T) {
			decode, err := c.deployment(rev + "-deployment")
			if err != nil {
				t.Fatal(err)
			}
			prefill, err := c.deployment(rev + "-prefill")
			if err != nil {
				t.Fatal(err)
			}
			d0, p0 := replicas(decode), replicas(prefill)
			stop := c.reportLoad(t, testNamespace+"/"+rev)
			defer stop()
			// The autoscaler scales up, and the Deployments carry exactly
			// what it recommends.
			waitFor(t, "decode and prefill scale up to the recommendation", 90*time.Second, func() (bool, string) {
				rec, err := c.recommendation(testNamespace, rev)
				if err != nil {
					return false, err.Error()
				}
				dd, err1 := c.deployment(rev + "-deployment")
				pd, err2 := c.deployment(rev + "-prefill")
				if err1 != nil || err2 != nil {
					return false, fmt.Sprint(err1, err2)
				}
				state := fmt.Sprintf("recommended %dP+%dD; Deployments decode %d (was %d), prefill %d (was %d)",
					rec.Prefill, rec.Decode, replicas(dd), d0, replicas(pd), p0)
				if replicas(dd) > d0 && replicas(pd) > p0 && int(replicas(dd)) == rec.Decode && int(replicas(pd)) == rec.Prefill {
					t.Logf("scaled up: %s", state)
					return true, state
				}
				return false, state
			})
			// The pods follow the replica counts onto the fake node.
			waitFor(t, "scaled pods running", 60*time.Second, func() (bool, string) {
				dd, err := c.deployment(rev + "-deployment")
				if err != nil {
					return false, err.Error()
				}
				pd, err := c.deployment(rev + "-prefill")
				if err != nil {
					return false, err.Error()
				}
				all := c.pods(t, revPods)
				nd, ds := runningOnFakeNode(decodePods(slices.Clone(all)))
				np, ps := runningOnFakeNode(slices.DeleteFunc(all, func(p corev1.Pod) bool { return p.Labels["llm-d.ai/role"] != "prefill" }))
				return nd == int(replicas(dd)) && np == int(replicas(pd)),
					fmt.Sprintf("want %d decode pods: %s; want %d prefill pods: %s", replicas(dd), ds, replicas(pd), ps)
			})
		}) {
			return
		}
	}()

	step(t, "kn refuses an invalid llm-d annotation", func(t *testing.T) {
		out, err := c.kn(ctx, "service", "create", "bad", "--image", testImage,
			"--annotation", apis.DisaggregationAnnotation+"=sideways", "--no-wait")
		if err == nil {
			t.Fatalf("kn service create with %s=sideways succeeded:\n%s", apis.DisaggregationAnnotation, out)
		}
		for _, want := range []string{
			"must be one of none, prefill-decode",
			"spec.template.metadata.annotations[" + apis.DisaggregationAnnotation + "]",
		} {
			if !strings.Contains(out, want) {
				t.Errorf("kn's output lacks %q:\n%s", want, out)
			}
		}
		var s servingv1.Service
		if err := c.client.Get(ctx, types.NamespacedName{Namespace: testNamespace, Name: "bad"}, &s); !apierrors.IsNotFound(err) {
			t.Errorf("Service bad: %v, want NotFound", err)
		}
	})

	step(t, "kn service delete cleans up", func(t *testing.T) {
		n, _ := runningOnFakeNode(c.pods(t, revPods))
		t.Logf("before: %d pods of %s running (decode and prefill)", n, rev)
		out, err := c.kn(ctx, "service", "delete", svc)
		if err != nil {
			t.Fatalf("kn service delete: %v\n%s", err, out)
		}
		t.Logf("kn: %s", strings.TrimSpace(out))
		waitFor(t, "everything of "+svc+" gone", 60*time.Second, func() (bool, string) {
			var left []string
			var revs servingv1.RevisionList
			var pas autoscalingv1alpha1.PodAutoscalerList
			var deps appsv1.DeploymentList
			var svcs corev1.ServiceList
			var eps discoveryv1.EndpointSliceList
			for _, l := range []client.ObjectList{&revs, &pas, &deps, &svcs, &eps} {
				if err := c.client.List(ctx, l, client.InNamespace(testNamespace)); err != nil {
					return false, err.Error()
				}
			}
			for _, r := range revs.Items {
				left = append(left, "Revision "+r.Name)
			}
			for _, p := range pas.Items {
				left = append(left, "PodAutoscaler "+p.Name)
			}
			for _, d := range deps.Items {
				left = append(left, "Deployment "+d.Name)
			}
			for _, s := range svcs.Items {
				left = append(left, "Service "+s.Name)
			}
			for _, es := range eps.Items {
				left = append(left, "EndpointSlice "+es.Name)
			}
			for _, p := range c.pods(t, revPods) {
				left = append(left, "Pod "+p.Name)
			}
			return len(left) == 0, fmt.Sprint("left: ", left)
		})
	})
}

// reportLoad posts heavy-load activator statistics for revision to the
// autoscaler every second, as an activator would, until the returned
// function is called. The autoscaler adds them to the real activator's
// reports, which show no load: no request reaches it in this test, and it
// could not serve one from kwok's pods.
func (c *cluster) reportLoad(t *testing.T, revision string) func() {
	t.Helper()
	done := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	post := func(n int64) error {
		report := struct {
			Activator string                    `json:"activator"`
			Revisions []activator.RevisionStats `json:"revisions"`
		}{Activator: "e2e-activator", Revisions: []activator.RevisionStats{{
			Revision: revision,
			// 50 requests/s of 4,000 prompt tokens, nothing cached, a deep
			// queue and a TTFT far above any SLO.
			RequestsByTier:        map[string]int64{"standard": 50 * n},
			PromptTokens:          200_000 * n,
			CompletionTokens:      10_000 * n,
			UncachedPrefillTokens: 200_000 * n,
			Disaggregated:         50 * n,
			QueuedByTier:          map[string]int{"standard": 200},
			InFlight:              300,
			ReadyPods:             1,
			Pods:                  1,
			Window:                "30s",
			Samples:               1000,
			TTFTP50:               8, TTFTP90: 15,
			TPOTP50: 0.2, TPOTP90: 0.4,
		}}}
		body, err := json.Marshal(report)
		if err != nil {
			return err
		}
		req, err := http.NewRequest(http.MethodPost, c.autoscalerURL+"/v1/stats", bytes.NewReader(body))
		if err != nil {
			return err
		}
		req.Header.Set("Content-Type", "application/json")
		req.Header.Set("Authorization", "Bearer "+c.statsToken)
		resp, err := c.statsClient.Do(req)
		if err != nil {
			return err
		}
		msg, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 202 {
			return fmt.Errorf("POST /v1/stats: %s %s", resp.Status, msg)
		}
		return nil
	}
	if err := post(1); err != nil {
		t.Fatal(err)
	}
	go func() {
		defer wg.Done()
		tick := time.NewTicker(time.Second)
		defer tick.Stop()
		for n := int64(2); ; n++ {
			select {
			case <-done:
				return
			case <-tick.C:
				if err := post(n); err != nil {
					t.Errorf("reporting load: %v", err)
					return
				}
			}
		}
	}()
	return func() {
		close(done)
		wg.Wait()
	}
}

// recommendation is an entry of the autoscaler's GET /v1/recommendations
// (contracts point 2), as an operator reads it.
type recommendation struct {
	Namespace string `json:"namespace"`
	Name      string `json:"name"`
	Prefill   int    `json:"prefill"`
	Decode    int    `json:"decode"`
	// NoData: no activator reported it lately (the scale holds);
	// Activators are those whose reports count, Queued the requests
	// waiting in them, summed.
	NoData     bool     `json:"noData"`
	Activators []string `json:"activators"`
	Queued     int      `json:"queued"`
	// Recommendation is the decider's last decision, with the load it
	// saw (pkg/autoscaler.Recommendation; the fields the tests read).
	Recommendation struct {
		DecodeRole struct {
			// Backlog is the replicas the queued requests need now: the
			// activators' reports of queued requests.
			Backlog float64 `json:"backlog"`
		} `json:"decodeRole"`
	} `json:"recommendation"`
}

// recommendation returns the autoscaler's current recommendation for a
// revision.
func (c *cluster) recommendation(ns, name string) (recommendation, error) {
	resp, err := c.statsClient.Get(c.autoscalerURL + "/v1/recommendations")
	if err != nil {
		return recommendation{}, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return recommendation{}, err
	}
	if resp.StatusCode != 200 {
		return recommendation{}, fmt.Errorf("GET /v1/recommendations: %s %s", resp.Status, body)
	}
	var list []recommendation
	if err := json.Unmarshal(body, &list); err != nil {
		return recommendation{}, fmt.Errorf("GET /v1/recommendations: %w: %s", err, body)
	}
	for _, r := range list {
		if r.Namespace == ns && r.Name == name {
			return r, nil
		}
	}
	return recommendation{}, fmt.Errorf("GET /v1/recommendations has no %s/%s: %s", ns, name, body)
}
