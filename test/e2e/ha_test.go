package e2e_test

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/llmd-kn/llmd-kn/pkg/activator"
	"github.com/llmd-kn/llmd-kn/pkg/apis"
)

// waiting keeps one request waiting for a revision in one activator, as a
// client behind a round-robin would: kwok's pods never serve, so it waits
// in the activator's queue. An answer at its tier's queue deadline (503)
// or a shed (429) is counted and the request sent again; a transport
// error (the activator died with it) is counted lost and ends the loop.
type waiting struct {
	lost, answered atomic.Int64
	cancel         context.CancelFunc
	done           chan struct{}
}

func holdRequest(url, svc, rev string) *waiting {
	ctx, cancel := context.WithCancel(context.Background())
	w := &waiting{cancel: cancel, done: make(chan struct{})}
	go func() {
		defer close(w.done)
		for ctx.Err() == nil {
			body := `{"model": "meta-llama/Llama-3.1-8B-Instruct", "prompt": "Say hello.", "max_tokens": 8}`
			req, err := http.NewRequestWithContext(ctx, http.MethodPost, url+"/v1/completions", strings.NewReader(body))
			if err != nil {
				panic(err) // a constant URL and body
			}
			req.Host = svc + "." + testNamespace + ".example.com"
			req.Header.Set("Content-Type", "application/json")
			req.Header.Set(activator.RevisionHeader, rev)
			req.Header.Set(activator.NamespaceHeader, testNamespace)
			resp, err := (&http.Client{}).Do(req)
			switch {
			case ctx.Err() != nil:
				return
			case err != nil:
				w.lost.Add(1)
				return
			}
			_, _ = io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			w.answered.Add(1)
			select {
			case <-ctx.Done():
			case <-time.After(time.Second): // Retry-After of a shed
			}
		}
	}()
	return w
}

func (w *waiting) stop() { w.cancel(); <-w.done }

// TestTwoActivators: issue 17's activator high availability. A second
// activator process (its own name, ports and stats reports; the same
// ServiceAccount) serves the same revision beside the shared one, clients
// round-robin between them, each holding one request waiting at zero:
//   - the autoscaler sums the two activators' reports: 2 queued, not 1
//     (one report replacing the other) nor 4 (counted twice);
//   - one activator killed under load (SIGKILL) loses exactly the request
//     it held; after ActivatorSilence its reports stop counting (1
//     queued), and the revision keeps its replica all along;
//   - restarted under the same name (its counters from zero), it counts
//     again (2 queued);
//   - the autoscaler restarted under load (SIGTERM, as a rolling update)
//     holds the scale until reports arrive, then sees both again; no
//     request is lost to it (the data path does not go through it).
//
// kwok's pods serve nothing, so the load is waiting requests; the figures
// asserted are the counts the code keeps, not times.
func TestTwoActivators(t *testing.T) {
	c := controlPlane(t)
	ctx := context.Background()
	const svc = "ha"
	rev := svc + "-00001"
	key := testNamespace + "/" + rev
	// The shared activator (started by the control plane).
	a := &activatorProc{name: activatorName, url: c.activatorURL, adminURL: c.activatorAdminURL}
	ports, err := freePorts(2)
	if err != nil {
		t.Fatal(err)
	}
	bName := activatorName + "-b"
	b, err := c.startActivator(ctx, "llmd-kn-activator-b", bName, itoa(ports[0]), itoa(ports[1]))
	if err != nil {
		t.Fatal(err)
	}
	defer func() { b.stop(10 * time.Second) }()

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

	// seen waits until the autoscaler counts exactly these activators'
	// reports and queued requests for the revision.
	seen := func(t *testing.T, limit time.Duration, queued int, names ...string) {
		t.Helper()
		slices.Sort(names)
		waitFor(t, fmt.Sprintf("the autoscaler counts %d queued from %v", queued, names), limit, func() (bool, string) {
			rec, err := c.recommendation(testNamespace, rev)
			if err != nil {
				return false, err.Error()
			}
			return slices.Equal(rec.Activators, names) && rec.Queued == queued && !rec.NoData,
				fmt.Sprintf("activators %v, queued %d, noData %v, decode %d", rec.Activators, rec.Queued, rec.NoData, rec.Decode)
		})
	}
	queuedIn := func(adminURL string) (int, error) {
		s, err := activatorStatsAt(adminURL, key)
		n := 0
		for _, q := range s.QueuedByTier {
			n += q
		}
		return n, err
	}
	waitQueued := func(t *testing.T, adminURL string) {
		t.Helper()
		waitFor(t, "a request waits in "+adminURL, 30*time.Second, func() (bool, string) {
			n, err := queuedIn(adminURL)
			if err != nil {
				return false, err.Error()
			}
			return n == 1, fmt.Sprintf("queued %d", n)
		})
	}

	var wa, wb *waiting
	defer func() {
		for _, w := range []*waiting{wa, wb} {
			if w != nil {
				w.stop()
			}
		}
	}()
	// minDecode is the fewest decode replicas seen while requests wait
	// (watched every 100 ms from the first scale-up to the end).
	var minDecode atomic.Int32
	minDecode.Store(1 << 30)
	stopWatch := make(chan struct{})
	var watch sync.WaitGroup
	defer func() { close(stopWatch); watch.Wait() }()

	if !step(t, "two activators, each with a waiting request: the autoscaler sums them", func(t *testing.T) {
		for _, x := range []*activatorProc{a, b} {
			waitFor(t, x.name+" serves "+key, 30*time.Second, func() (bool, string) {
				_, err := activatorStatsAt(x.adminURL, key)
				return err == nil, fmt.Sprint(err)
			})
		}
		wa, wb = holdRequest(a.url, svc, rev), holdRequest(b.url, svc, rev)
		waitQueued(t, a.adminURL)
		waitQueued(t, b.adminURL)
		seen(t, 30*time.Second, 2, a.name, b.name)
		waitFor(t, "decode Deployment scaled up", 30*time.Second, func() (bool, string) {
			d, err := c.deployment(rev + "-deployment")
			if err != nil {
				return false, err.Error()
			}
			return replicas(d) >= 1, fmt.Sprintf("replicas %d", replicas(d))
		})
		watch.Add(1)
		go func() {
			defer watch.Done()
			for {
				if d, err := c.deployment(rev + "-deployment"); err == nil && replicas(d) < minDecode.Load() {
					minDecode.Store(replicas(d))
				}
				select {
				case <-stopWatch:
					return
				case <-time.After(100 * time.Millisecond):
				}
			}
		}()
	}) {
		return
	}

	if !step(t, "an activator killed under load: its request lost, its reports dropped, the scale kept", func(t *testing.T) {
		killed := time.Now()
		_ = syscall.Kill(-b.cmd.Process.Pid, syscall.SIGKILL)
		<-b.done
		waitFor(t, "the killed activator's client sees its request fail", 30*time.Second, func() (bool, string) {
			return wb.lost.Load() == 1, fmt.Sprintf("lost %d", wb.lost.Load())
		})
		wb.stop()
		seen(t, 30*time.Second, 1, a.name)
		t.Logf("the autoscaler dropped the killed activator's reports %.1fs after the kill (ActivatorSilence 10s)", time.Since(killed).Seconds())
		if n := wa.lost.Load(); n != 0 {
			t.Errorf("the surviving activator's client lost %d requests", n)
		}
		if m := minDecode.Load(); m < 1 {
			t.Errorf("the decode Deployment went to %d replicas while requests waited", m)
		}
	}) {
		return
	}

	if !step(t, "the activator restarted under the same name counts again", func(t *testing.T) {
		var err error
		b, err = c.startActivator(ctx, "llmd-kn-activator-b-restarted", bName, itoa(ports[0]), itoa(ports[1]))
		if err != nil {
			t.Fatal(err)
		}
		wb = holdRequest(b.url, svc, rev)
		waitQueued(t, b.adminURL)
		seen(t, 30*time.Second, 2, a.name, b.name)
	}) {
		return
	}

	step(t, "an autoscaler restarted under load holds the scale and converges", func(t *testing.T) {
		failures0 := activatorMetricAt(t, a.adminURL, "llmd_activator_autoscaler_report_failures_total", map[string]string{"kind": "stats"})
		stopped := time.Now()
		if err := c.restartAutoscaler(ctx, "llmd-kn-autoscaler-restarted"); err != nil {
			t.Fatal(err)
		}
		seen(t, 30*time.Second, 2, a.name, b.name)
		failed := activatorMetricAt(t, a.adminURL, "llmd_activator_autoscaler_report_failures_total", map[string]string{"kind": "stats"}) - failures0
		t.Logf("reports of %s refused or lost while the autoscaler restarted: %v (one a second; %.1fs from SIGTERM to both counted again)",
			a.name, failed, time.Since(stopped).Seconds())
		if m := minDecode.Load(); m < 1 {
			t.Errorf("the decode Deployment went to %d replicas while requests waited", m)
		}
		for name, w := range map[string]*waiting{a.name: wa, b.name: wb} {
			if n := w.lost.Load(); n != 0 {
				t.Errorf("%s's client lost %d requests across the autoscaler's restart", name, n)
			}
		}
	})
}
