package activator

import (
	"fmt"
	"strings"
	"testing"

	"github.com/llmd-kn/llmd-kn/pkg/apis"
	"github.com/llmd-kn/llmd-kn/pkg/engine"
)

// TestReconfigureKeepsThePrefixIndex: a revision's configuration changes
// while it serves (in a cluster, a Route gains a traffic tag); what the
// router learnt of where prompts are cached must survive it.
func TestReconfigureKeepsThePrefixIndex(t *testing.T) {
	var sims []*sim
	for i := range 4 {
		sims = append(sims, startSim(t, fmt.Sprintf("pod-%d", i), engine.RoleBoth, 0.02, nil))
	}
	spec := apis.Spec{RoutingProfile: "prefix-approx", PDThreshold: 1 << 30}
	f := newFixture(t, spec, sims...)
	shared := longPrompt(3000, 21)
	first := f.complete(t, shared, 4, nil)
	home := routedTo(first.route)
	if first.status != 200 || home == "" {
		t.Fatalf("first request: %d %q %s", first.status, first.route, first.body)
	}
	for i := range 3 {
		spec.AllowedTiers = nil
		if err := f.act.UpsertRevision(RevisionConfig{Key: f.key, Service: "llm", Models: []string{testModel}, Spec: spec,
			Tags: []string{fmt.Sprintf("tag-%d", i)}}); err != nil {
			t.Fatal(err)
		}
		// prefix-approx: the router recorded the prefix when it routed; a
		// scrape from during the last request would show its pod busy.
		f.waitSettled(t, 0)
		p := append(append([]uint32{}, shared...), longPrompt(100, uint32(30+i))...)
		c := f.complete(t, p, 4, nil)
		// The router must still know the prefix is there (not merely
		// land there by a tie-break).
		var hit, total int
		for _, w := range strings.Fields(c.route) {
			if v, ok := strings.CutPrefix(w, "cached="); ok {
				fmt.Sscanf(strings.TrimSuffix(v, ";"), "%d/%d", &hit, &total)
			}
		}
		if c.status != 200 || routedTo(c.route) != home || hit < 2900 {
			t.Fatalf("after reconfiguration %d: routed to %s, the prefix is on %s; predicted cached %d (%s)", i, routedTo(c.route), home, hit, c.route)
		}
	}
}
