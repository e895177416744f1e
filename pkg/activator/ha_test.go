package activator

import (
	"testing"
	"time"

	"github.com/llmd-kn/llmd-kn/pkg/apis"
	"github.com/llmd-kn/llmd-kn/pkg/engine"
)

// TestTwoActivatorsEachFollowTheKVEvents: issue 17's activator high
// availability, on the KV-cache side. Two activators serve the same two
// pods, each with its own subscription to the pods' KV events (ZMQ PUB
// accepts any number of subscribers). A long prompt sent through one is
// learnt by both indexes; the same prefix sent through the other, which
// never saw the request, goes to the pod that holds it and is served from
// its cache. Each activator counts only the requests that entered it: the
// autoscaler's sum (TestStatsLoadSumsActivators) counts each once.
func TestTwoActivatorsEachFollowTheKVEvents(t *testing.T) {
	sims := []*sim{startSim(t, "pod-0", engine.RoleBoth, 0.02, nil), startSim(t, "pod-1", engine.RoleBoth, 0.02, nil)}
	spec := apis.Spec{RoutingProfile: "kv-precise", PDThreshold: 1 << 30}
	a, b := newFixture(t, spec, sims...), newFixture(t, spec, sims...)
	holdings := func(f *fixture) int {
		f.act.mu.Lock()
		rev := f.act.revs[f.key]
		f.act.mu.Unlock()
		return rev.rt.Stats().Precise.Holdings
	}
	waitHoldings := func(f *fixture, what string, atLeast int) {
		t.Helper()
		for deadline := time.Now().Add(30 * time.Second); holdings(f) < atLeast; time.Sleep(10 * time.Millisecond) {
			if time.Now().After(deadline) {
				t.Fatalf("%s: its index holds %d blocks, want at least %d", what, holdings(f), atLeast)
			}
		}
	}

	// A subscription joins a publisher a moment after it is dialled and
	// misses what was published before: small requests through a until b
	// has heard of a block one of them stored.
	warm := 0
	for holdings(b) == 0 {
		if warm == 100 {
			t.Fatal("b never learnt of a block stored by a request through a")
		}
		if c := a.complete(t, longPrompt(64, uint32(1000+warm)), 1, nil); c.status != 200 {
			t.Fatalf("warm-up through a: %d %s", c.status, c.body)
		}
		warm++
		time.Sleep(20 * time.Millisecond)
	}

	shared := longPrompt(3000, 1)
	beforeA, beforeB := holdings(a), holdings(b)
	first := a.complete(t, shared, 4, nil)
	if first.status != 200 {
		t.Fatalf("through a: %d %s", first.status, first.body)
	}
	home := routedTo(first.route)
	if home == "" {
		t.Fatalf("no route explanation: %q", first.route)
	}
	waitHoldings(a, "a", beforeA+3000/16)
	waitHoldings(b, "b (the request went through a)", beforeB+3000/16)

	b.waitSettled(t, beforeB+3000/16)
	c := b.complete(t, append(append([]uint32{}, shared...), longPrompt(200, 7)...), 4, nil)
	if c.status != 200 {
		t.Fatalf("through b: %d %s", c.status, c.body)
	}
	if got := routedTo(c.route); got != home {
		t.Errorf("b sent the prefix to %s; it is on %s (%s)", got, home, c.route)
	}
	if c.usage == nil || c.usage.CachedTokens() < 2900 {
		t.Errorf("through b: usage %+v, want about 3000 cached tokens", c.usage)
	}

	// Each counts what entered it, once.
	count := func(f *fixture) int64 {
		var n int64
		for _, s := range f.act.Stats() {
			for _, r := range s.RequestsByTier {
				n += r
			}
		}
		return n
	}
	// (counted as each request ends, a moment after its last byte)
	for _, w := range []struct {
		name string
		f    *fixture
		want int64
	}{{"a", a, int64(warm) + 1}, {"b", b, 1}} {
		deadline := time.Now().Add(30 * time.Second)
		for count(w.f) != w.want && time.Now().Before(deadline) {
			time.Sleep(10 * time.Millisecond)
		}
		if n := count(w.f); n != w.want {
			t.Errorf("%s counts %d requests, want the %d sent through it", w.name, n, w.want)
		}
	}
}
