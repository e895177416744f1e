package activator

import (
	"crypto/sha256"
	"crypto/subtle"
	"fmt"
	"net/http"
	"os"
	"slices"
	"strings"

	"sigs.k8s.io/yaml"
)

// Tiers are authorized, not claimed (issue 17, failure 2): with anyone's
// x-llm-d-slo-tier: critical taken at its word, every user of an
// overloaded Service claimed critical and the honest critical TTFT p90
// went from 534 ms to 55 s. A request's baseline tier is what the
// operator's routes give it: a tier-named traffic tag in its Host
// (critical-chat.<namespace>.<domain>, a route ingress policies can
// protect), else the Service's default tier. The tier header may lower it
// freely; raising it takes a credential the operator configured
// (TierGrants): a tier token in TierTokenHeader, or an identity that the
// ingress authenticated and set in a header.

// TierTokenHeader carries a tier token (TierGrants.Tokens). The activator
// reads and removes it; pods never see it.
const TierTokenHeader = "X-Llm-D-Tier-Token"

// TierGrants are the credentials that raise a request's tier above its
// baseline, each good for its tier and every lower one. The file form
// (a Secret mounted into the activator, --tier-grants):
//
//	tokens:                       # sent as X-Llm-D-Tier-Token
//	  critical: [REPLACE-WITH-A-LONG-RANDOM-TOKEN]
//	identityHeader: X-Auth-Request-Email   # set by the ingress after authentication
//	identities:
//	  critical: [oncall@example.com]
//	  standard: [team-a@example.com]
type TierGrants struct {
	Tokens map[string][]string `json:"tokens,omitempty"`
	// IdentityHeader names a header that the ingress sets from an
	// authenticated identity (and strips from clients); Identities grant
	// tiers to its values. Never name a header clients can set.
	IdentityHeader string              `json:"identityHeader,omitempty"`
	Identities     map[string][]string `json:"identities,omitempty"`

	tokens     [][32]byte // sha256 of each token, parallel to tokenTiers
	tokenTiers []string
}

// ParseTierGrants reads and validates a grants file against the tier
// table.
func ParseTierGrants(data []byte, tiers *Tiers) (*TierGrants, error) {
	g := &TierGrants{}
	if err := yaml.UnmarshalStrict(data, g); err != nil {
		return nil, fmt.Errorf("tier grants: %w", err)
	}
	for _, m := range []struct {
		field string
		by    map[string][]string
	}{{"tokens", g.Tokens}, {"identities", g.Identities}} {
		for tier, list := range m.by {
			if _, ok := tiers.Get(tier); !ok {
				return nil, fmt.Errorf("tier grants: %s.%s: unknown tier (tiers: %s)", m.field, tier, strings.Join(tiers.Names(), ", "))
			}
			for i, v := range list {
				if strings.TrimSpace(v) == "" {
					return nil, fmt.Errorf("tier grants: %s.%s[%d]: empty", m.field, tier, i)
				}
				if m.field == "tokens" && len(v) < 16 {
					return nil, fmt.Errorf("tier grants: tokens.%s[%d]: shorter than 16 characters (guessable)", tier, i)
				}
			}
		}
	}
	if len(g.Identities) > 0 && g.IdentityHeader == "" {
		return nil, fmt.Errorf("tier grants: identities need identityHeader (the header the ingress sets)")
	}
	if h := strings.ToLower(g.IdentityHeader); h == strings.ToLower(TierHeader) || h == strings.ToLower(TierTokenHeader) {
		return nil, fmt.Errorf("tier grants: identityHeader %q is a header clients set", g.IdentityHeader)
	}
	for tier, list := range g.Tokens {
		for _, tok := range list {
			g.tokens = append(g.tokens, sha256.Sum256([]byte(tok)))
			g.tokenTiers = append(g.tokenTiers, tier)
		}
	}
	return g, nil
}

// LoadTierGrants reads a grants file; an empty path grants nothing.
func LoadTierGrants(path string, tiers *Tiers) (*TierGrants, error) {
	if path == "" {
		return nil, nil
	}
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	g, err := ParseTierGrants(data, tiers)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return g, nil
}

// granted is the highest tier priority the request's credentials grant;
// ok is false when they grant none.
func (g *TierGrants) granted(h http.Header, tiers *Tiers) (prio int, ok bool) {
	if g == nil {
		return 0, false
	}
	grant := func(tier string) {
		if t, found := tiers.Get(tier); found && (!ok || t.Priority > prio) {
			prio, ok = t.Priority, true
		}
	}
	if tok := h.Get(TierTokenHeader); tok != "" {
		sum := sha256.Sum256([]byte(tok))
		for i, want := range g.tokens {
			if subtle.ConstantTimeCompare(sum[:], want[:]) == 1 {
				grant(g.tokenTiers[i])
			}
		}
	}
	if g.IdentityHeader != "" {
		if id := h.Get(g.IdentityHeader); id != "" {
			for tier, ids := range g.Identities {
				if slices.Contains(ids, id) {
					grant(tier)
				}
			}
		}
	}
	return prio, ok
}

// authorizeTier decides whether a request whose baseline tier is base may
// run in the tier it asked for: lower or equal always, higher with a
// grant of at least that tier.
func (a *Activator) authorizeTier(h http.Header, base, asked Tier) error {
	if asked.Priority <= base.Priority {
		return nil
	}
	if prio, ok := a.opts.TierGrants.granted(h, a.opts.Tiers); ok && prio >= asked.Priority {
		return nil
	}
	return &BadRequestError{Status: http.StatusForbidden, Msg: fmt.Sprintf(
		"the %s tier is above this route's %s tier: a client may lower its tier, not raise it without a credential (%s, or the tier's traffic-tag host)",
		asked.Name, base.Name, TierTokenHeader)}
}
