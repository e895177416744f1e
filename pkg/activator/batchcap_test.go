package activator

import (
	"context"
	"fmt"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/llmd-kn/llmd-kn/pkg/apis"
	"github.com/llmd-kn/llmd-kn/pkg/engine"
)

// TestBatchCapPerPodOnTheRealPath: with the batch tier's maxPerPod at 2 and
// two simulated pods slow enough that nothing ends during the test, batch
// requests sent one after another spread two to a pod, the fifth and sixth
// wait in the activator (not on a pod, not shed), a standard request still
// goes to a pod (retried after its Retry-After if admission refused it
// before the pods' start rate was known), and a batch request that ends (its client went
// away) lets the next waiting one in. Counts only: the pods' speed does
// not change them.
func TestBatchCapPerPodOnTheRealPath(t *testing.T) {
	tiers, err := ParseTiers([]byte(strings.Replace(DefaultTiersYAML, "maxPerPod: 32", "maxPerPod: 2", 1)))
	if err != nil {
		t.Fatal(err)
	}
	a := startSim(t, "pod-a", engine.RoleBoth, 200, nil)
	b := startSim(t, "pod-b", engine.RoleBoth, 200, nil)
	f := newFixtureOpts(t, func(o *Options) { o.Tiers = tiers }, apis.Spec{}, a, b)
	f.act.mu.Lock()
	rev := f.act.revs[f.key]
	f.act.mu.Unlock()
	bi, si := tiers.index("batch"), tiers.index("standard")
	active := func(tier int) (per map[string]int64, total int64) {
		per = map[string]int64{}
		rev.mu.RLock()
		defer rev.mu.RUnlock()
		for name, p := range rev.pods {
			per[name] = p.active[tier].Load()
			total += per[name]
		}
		return per, total
	}
	// What each request got, logged when the test fails (after every
	// client has returned).
	var (
		omu      sync.Mutex
		outcomes []string
	)
	t.Cleanup(func() {
		if t.Failed() {
			omu.Lock()
			defer omu.Unlock()
			t.Logf("answers: %q", outcomes)
		}
	})
	var wg sync.WaitGroup
	t.Cleanup(wg.Wait)
	cancels := make([]context.CancelFunc, 0, 6)
	send := func(tier string) {
		ctx, cancel := context.WithCancel(context.Background())
		cancels = append(cancels, cancel)
		t.Cleanup(cancel)
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				o := sendStreamCtx(ctx, f.url, tier, []uint32{1, 2, 3, 4, 5, 6, 7, 8}, 4000)
				omu.Lock()
				outcomes = append(outcomes, fmt.Sprintf("%s: %d %s", tier, o.status, o.reason))
				omu.Unlock()
				// The standard request is the one the cap must let
				// through. Admission may refuse it on arrival while the
				// pods' start rate is not yet known (the batch requests'
				// first bytes, slow at this time scale on a busy machine):
				// a client retries after the Retry-After, as it should;
				// what must hold is that batch at its cap does not keep
				// it out.
				if tier != "standard" || o.status != http.StatusTooManyRequests {
					return
				}
				select {
				case <-ctx.Done():
					return
				case <-time.After(min(time.Duration(o.retryAfter)*time.Second, 2*time.Second)):
				}
			}
		}()
	}
	for i := int64(1); i <= 4; i++ {
		send("batch")
		until(t, func() bool { _, n := active(bi); return n == i })
	}
	if per, _ := active(bi); per["pod-a"] != 2 || per["pod-b"] != 2 {
		t.Fatalf("batch in flight per pod %v, want 2 and 2", per)
	}
	send("batch")
	send("batch")
	until(t, func() bool { return rev.flow.Stats().Queued["batch"] == 2 })
	send("standard")
	until(t, func() bool { _, n := active(si); return n == 1 })
	if per, n := active(bi); n != 4 || per["pod-a"] != 2 || per["pod-b"] != 2 {
		t.Fatalf("batch in flight per pod %v, want 2 and 2", per)
	}
	cancels[0]() // the first batch request's client goes away
	until(t, func() bool {
		per, n := active(bi)
		return rev.flow.Stats().Queued["batch"] == 1 && n == 4 && per["pod-a"] == 2 && per["pod-b"] == 2
	})
	for _, c := range cancels {
		c()
	}
}

// until polls cond (bounded: 30 s, then the test fails).
func until(t *testing.T, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(30 * time.Second); time.Now().Before(deadline); time.Sleep(5 * time.Millisecond) {
		if cond() {
			return
		}
	}
	t.Fatal("condition not reached within 30 s")
}
