package reconciler_test

import (
	"fmt"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"k8s.io/utils/ptr"

	"github.com/llmd-kn/llmd-kn/pkg/apis"
	"github.com/llmd-kn/llmd-kn/pkg/reconciler"
)

// quietActivator reports, as an idle activator does, zero traffic for
// the fixture's revision every half tick until the test ends (or stop is
// called).
func (cl *cluster) quietActivator(t *testing.T, f *revisionFixture) (stop func()) {
	t.Helper()
	body := fmt.Sprintf(`{"activator":"quiet-%s","revisions":[{"revision":"%s/%s"}]}`, f.ns, f.ns, f.name)
	done := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		tk := time.NewTicker(tick / 2)
		defer tk.Stop()
		for {
			if resp, err := http.Post(cl.statsURL+"/v1/stats", "application/json", strings.NewReader(body)); err == nil {
				resp.Body.Close()
			}
			select {
			case <-done:
				return
			case <-tk.C:
			}
		}
	}()
	var once sync.Once
	stop = func() { once.Do(func() { close(done); wg.Wait() }) }
	t.Cleanup(stop)
	return stop
}

// TestNoDataHoldsTheScale: issue 17's failure 11. A revision under load
// whose activators go silent keeps its replicas (and its PA says why)
// however long the silence, where it used to drift to zero after the
// grace period; once an activator reports zero traffic it scales to zero
// as before.
func TestNoDataHoldsTheScale(t *testing.T) {
	cl := clockCluster(t)
	f := newRevision(t, cl, apis.AutoscalerClass, map[string]string{apis.MaxScaleAnnotation: "3"}, 1)
	setReady(t, cl, f.key(f.deploy.Name), 1)
	cl.postLoad(t, f)
	eventually(t, 20*time.Second, "scale-up under load", func() error { return checkReplicas(cl, f, 3) })
	setReady(t, cl, f.key(f.deploy.Name), 3)

	// Silence: the reports age past ActivatorSilence, then an hour passes.
	for i, shift := range []time.Duration{reconciler.ActivatorSilence + time.Second, 10 * time.Minute, time.Hour} {
		cl.clock.Shift(shift)
		nudge(t, cl, f, i)
		eventually(t, 20*time.Second, "no-data condition", func() error {
			pa := f.getPA(t, cl)
			st, reason := condStatus(pa, string(reconciler.ConditionActivatorReports))
			if st != "False" || reason != reconciler.ReasonNoData {
				return fmt.Errorf("%s %s %s, want False %s", reconciler.ConditionActivatorReports, st, reason, reconciler.ReasonNoData)
			}
			return nil
		})
		time.Sleep(5 * tick)
		if err := checkReplicas(cl, f, 3); err != nil {
			t.Fatalf("%v into the silence: %v (no data was taken for no traffic)", shift, err)
		}
		pa := f.getPA(t, cl)
		if !pa.IsReady() || ptr.Deref(pa.Status.DesiredScale, -1) != 3 {
			t.Fatalf("PA while holding: ready %v, desired %d; want ready, 3", pa.IsReady(), ptr.Deref(pa.Status.DesiredScale, -1))
		}
		if rec, _ := cl.recommendation(t, f.ns, f.name); !rec.NoData || rec.Decode != 3 {
			t.Fatalf("recommendation while holding: %+v, want noData and 3 decode", rec)
		}
	}
	pa := f.getPA(t, cl)
	for _, c := range pa.Status.Conditions {
		if c.Type == reconciler.ConditionActivatorReports && !strings.Contains(c.Message, "holding the last recommendation 0P+3D") {
			t.Errorf("condition message %q does not name the held recommendation", c.Message)
		}
	}

	// An activator reports zero traffic: to zero after the usual delays.
	cl.quietActivator(t, f)
	eventually(t, 20*time.Second, "fresh reports", func() error {
		if st, _ := condStatus(f.getPA(t, cl), string(reconciler.ConditionActivatorReports)); st != "True" {
			return fmt.Errorf("%s %s", reconciler.ConditionActivatorReports, st)
		}
		return nil
	})
	// The scale-down rate halves the ready pods at most per step: the
	// Deployment controller's part (ready follows replicas) is played here.
	eventually(t, 30*time.Second, "to zero on reported zero traffic", func() error {
		r, err := replicasOf(cl, f.key(f.deploy.Name))
		if err != nil {
			return err
		}
		setReady(t, cl, f.key(f.deploy.Name), r)
		cl.clock.Shift(time.Minute)
		nudge(t, cl, f, 10+int(r))
		if r != 0 {
			return fmt.Errorf("decode replicas %d, want 0", r)
		}
		return nil
	})
}
