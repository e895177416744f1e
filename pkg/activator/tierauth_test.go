package activator_test

import (
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/llmd-kn/llmd-kn/internal/simtest"
	"github.com/llmd-kn/llmd-kn/pkg/activator"
	"github.com/llmd-kn/llmd-kn/pkg/router"
)

const criticalToken = "0123456789abcdef-critical"

// TestTierEscalationRefused: issue 17's failure 2. On a Service whose
// default tier is standard, a client may ask for batch but not for
// critical; critical comes from the tier's traffic-tag host or from a
// credential the operator configured (a tier token, or an identity the
// ingress set), and a credential for standard does not reach critical.
func TestTierEscalationRefused(t *testing.T) {
	_, simAddr := simtest.Start(t, "demo")
	tiers := activator.DefaultTiers()
	grants, err := activator.ParseTierGrants([]byte(`tokens:
  critical: [`+criticalToken+`]
  standard: [0123456789abcdef-standard]
identityHeader: X-Auth-Request-Email
identities:
  critical: [oncall@example.com]
`), tiers)
	if err != nil {
		t.Fatal(err)
	}
	act, err := activator.New(activator.Options{ScrapeInterval: 20 * time.Millisecond, TierGrants: grants})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(act.Close)
	spec := defaultSpec()
	spec.DefaultTier = "standard"
	key := activator.RevisionKey{Namespace: "team-a", Name: "llm-00001"}
	if err := act.UpsertRevision(activator.RevisionConfig{Key: key, Service: "llm", Models: []string{"demo"}, Tags: []string{"critical"}, Spec: spec}); err != nil {
		t.Fatal(err)
	}
	if err := act.SetPods(key, []activator.PodSpec{{Name: "pod-0", URL: "http://" + simAddr, Role: router.RoleBoth}}); err != nil {
		t.Fatal(err)
	}
	front := httptest.NewServer(act.Handler())
	t.Cleanup(front.Close)

	for _, c := range []struct {
		name, host string
		hdr        map[string]string
		code       int
		tier       string
	}{
		{"default", "llm.team-a.localhost", nil, 200, "standard"},
		{"lowered by the header", "llm.team-a.localhost", map[string]string{activator.TierHeader: "batch"}, 200, "batch"},
		{"raised by the header alone", "llm.team-a.localhost", map[string]string{activator.TierHeader: "critical"}, 403, ""},
		{"raised with a wrong token", "llm.team-a.localhost", map[string]string{activator.TierHeader: "critical", activator.TierTokenHeader: "guess-guess-guess"}, 403, ""},
		{"raised with a standard token", "llm.team-a.localhost", map[string]string{activator.TierHeader: "critical", activator.TierTokenHeader: "0123456789abcdef-standard"}, 403, ""},
		{"raised with a critical token", "llm.team-a.localhost", map[string]string{activator.TierHeader: "critical", activator.TierTokenHeader: criticalToken}, 200, "critical"},
		{"raised by an ingress identity", "llm.team-a.localhost", map[string]string{activator.TierHeader: "critical", "X-Auth-Request-Email": "oncall@example.com"}, 200, "critical"},
		{"another identity", "llm.team-a.localhost", map[string]string{activator.TierHeader: "critical", "X-Auth-Request-Email": "intern@example.com"}, 403, ""},
		{"the tier's tag host", "critical-llm.team-a.localhost", nil, 200, "critical"},
		{"the tag host, lowered", "critical-llm.team-a.localhost", map[string]string{activator.TierHeader: "standard"}, 200, "standard"},
	} {
		t.Run(c.name, func(t *testing.T) {
			before := stats(t, act, key)
			req, _ := http.NewRequest(http.MethodPost, front.URL+"/v1/completions", strings.NewReader(`{"model":"demo","prompt":"hi","max_tokens":2}`))
			req.Host = c.host
			for k, v := range c.hdr {
				req.Header.Set(k, v)
			}
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			b, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode != c.code {
				t.Fatalf("%d %s, want %d", resp.StatusCode, b, c.code)
			}
			if c.code == 403 && !strings.Contains(string(b), "not raise it without a credential") {
				t.Errorf("refusal %s does not say why", b)
			}
			after := stats(t, act, key)
			for tier, n := range after.ArrivedByTier {
				if d := n - before.ArrivedByTier[tier]; (tier == c.tier && d != 1) || (tier != c.tier && d != 0) {
					t.Errorf("arrivals by tier %v -> %v, want one more %q", before.ArrivedByTier, after.ArrivedByTier, c.tier)
				}
			}
		})
	}
}

func stats(t *testing.T, act *activator.Activator, key activator.RevisionKey) activator.RevisionStats {
	t.Helper()
	for _, s := range act.Stats() {
		if s.Revision == key.String() {
			return s
		}
	}
	t.Fatalf("no stats of %s", key)
	return activator.RevisionStats{}
}

func TestParseTierGrantsRejects(t *testing.T) {
	tiers := activator.DefaultTiers()
	for _, c := range []struct{ name, doc, want string }{
		{"unknown tier", "tokens: {gold: [0123456789abcdef-x]}", "tokens.gold: unknown tier"},
		{"short token", "tokens: {critical: [short]}", "shorter than 16"},
		{"identities without header", "identities: {critical: [a@b]}", "identityHeader"},
		{"client header as identity", "identityHeader: X-Llm-D-Slo-Tier\nidentities: {critical: [a]}", "clients set"},
		{"unknown field", "tokenz: {}", "tokenz"},
	} {
		if _, err := activator.ParseTierGrants([]byte(c.doc), tiers); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: %v, want an error containing %q", c.name, err, c.want)
		}
	}
}

func FuzzParseTierGrants(f *testing.F) {
	f.Add([]byte("tokens: {critical: [0123456789abcdef-x]}\nidentityHeader: X-A\nidentities: {standard: [a]}"))
	tiers := activator.DefaultTiers()
	f.Fuzz(func(t *testing.T, data []byte) {
		_, _ = activator.ParseTierGrants(data, tiers)
	})
}
