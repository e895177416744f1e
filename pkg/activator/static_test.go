package activator

import (
	"strings"
	"testing"

	"github.com/llmd-kn/llmd-kn/pkg/router"
)

func TestParseStaticConfig(t *testing.T) {
	doc := `revisions:
- name: llm-00001
  service: llm
  models: [demo]
  annotations:
    llm-d.ai/routing-profile: kv-precise
    llm-d.ai/disaggregation: prefill-decode
  pods:
  - {name: p0, url: "http://127.0.0.1:8001", role: prefill}
  - {name: d0, url: "http://127.0.0.1:8002/", role: decode, kvEvents: "tcp://127.0.0.1:5557"}
`
	revs, pods, err := ParseStaticConfig([]byte(doc), DefaultTiers(), router.DefaultConfig())
	if err != nil {
		t.Fatal(err)
	}
	key := RevisionKey{Namespace: "default", Name: "llm-00001"}
	if len(revs) != 1 || revs[0].Key != key || revs[0].Spec.RoutingProfile != "kv-precise" || !revs[0].Spec.Disaggregated() {
		t.Fatalf("revisions %+v", revs)
	}
	if p := pods[key]; len(p) != 2 || p[1].URL != "http://127.0.0.1:8002" || p[0].Role != router.RolePrefill {
		t.Fatalf("pods %+v", p)
	}
}

func TestParseStaticConfigRejects(t *testing.T) {
	base := "revisions:\n- name: r\n  service: s\n  models: [m]\n"
	cases := map[string]struct{ doc, want string }{
		"empty":         {"revisions: []", "revisions"},
		"no name":       {"revisions:\n- service: s\n  models: [m]\n", "revisions[0].name"},
		"no models":     {"revisions:\n- name: r\n  service: s\n", "revisions[0].models"},
		"bad profile":   {base + "  annotations: {llm-d.ai/routing-profile: fastest}\n", "revisions[0].annotations[llm-d.ai/routing-profile]"},
		"bad url":       {base + "  pods: [{name: a, url: 'ftp://x'}]\n", "revisions[0].pods[0].url"},
		"bad role":      {base + "  pods: [{name: a, url: 'http://x:1', role: leader}]\n", "revisions[0].pods[0].role"},
		"dup pod":       {base + "  pods: [{name: a, url: 'http://x:1'}, {name: a, url: 'http://x:2'}]\n", "revisions[0].pods[1].name"},
		"unknown field": {base + "  replicas: 3\n", "replicas"},
		"bad kv":        {base + "  pods: [{name: a, url: 'http://x:1', kvEvents: 'udp://x'}]\n", "kvEvents"},
	}
	for name, c := range cases {
		t.Run(name, func(t *testing.T) {
			_, _, err := ParseStaticConfig([]byte(c.doc), DefaultTiers(), router.DefaultConfig())
			if err == nil || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("got %v, want an error naming %q", err, c.want)
			}
		})
	}
}

func TestHostRoutingHonoursTrafficTags(t *testing.T) {
	act, err := New(Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer act.Close()
	key := RevisionKey{Namespace: "default", Name: "llm-00001"}
	if err := act.UpsertRevision(RevisionConfig{Key: key, Service: "llm", Models: []string{"m"}, Tags: []string{"critical", "canary"}}); err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		host, tier string
		found      bool
	}{
		{"llm.default.localhost:8080", "", true},
		{"critical-llm.default.localhost", "critical", true},
		{"canary-llm.default.svc.cluster.local", "", true},
		{"gold-llm.default.localhost", "", false},
		{"llm.other.localhost", "", false},
	}
	for _, c := range cases {
		rev, tag := act.byHost(c.host)
		if (rev != nil) != c.found {
			t.Errorf("%s: found=%v", c.host, rev != nil)
			continue
		}
		if _, isTier := act.opts.Tiers.Get(tag); c.tier != "" && (!isTier || tag != c.tier) {
			t.Errorf("%s: tag %q, want tier %q", c.host, tag, c.tier)
		}
	}
}
