package router

import (
	"encoding/json"
	"fmt"
	"math"
	"slices"
	"sync/atomic"

	"github.com/llmd-kn/llmd-kn/pkg/engine"
)

// PluginKind is the role a plugin plays in a profile.
type PluginKind uint8

const (
	// KindFilter drops endpoints.
	KindFilter PluginKind = iota + 1
	// KindScorer scores endpoints in [0, 1]; a profile sums weight·score.
	KindScorer
	// KindPicker chooses one endpoint from the scored ones.
	KindPicker
	// KindDecider decides prefill/decode disaggregation.
	KindDecider
)

func (k PluginKind) String() string {
	switch k {
	case KindFilter:
		return "filter"
	case KindScorer:
		return "scorer"
	case KindPicker:
		return "picker"
	case KindDecider:
		return "decider"
	}
	return "unknown"
}

// PluginInfo describes a registered plugin.
type PluginInfo struct {
	Name string
	Kind PluginKind
	Help string
}

type pluginDef struct {
	kind PluginKind
	help string
	// parse decodes and validates the plugin's parameters (nil when
	// absent) and returns the plugin.
	parse func(params json.RawMessage) (any, error)
}

// registry is the immutable table of built-in plugins.
var registry = map[string]pluginDef{
	"ready": {KindFilter, "keeps endpoints that are ready", noParams(readyFilter{})},
	"role":  {KindFilter, "keeps endpoints whose role is listed (roles, default [decode, both])", parseRole},
	"fresh": {KindFilter, "keeps endpoints whose metrics are fresh, or all of them when none is", noParams(freshFilter{})},
	"not-saturated": {KindFilter, "keeps endpoints below llm-d's saturation (max(waiting/queueThreshold, kv/kvThreshold) < 1; stale counts as saturated), or all when none is",
		parseNotSaturated},

	"prefix-approx":        {KindScorer, "llm-d's estimated prefix score: blocks of the prompt the router sent to the endpoint / prompt blocks", noParams(approxScorer{})},
	"prefix-precise":       {KindScorer, "llm-d's precise prefix score: longest prefix of the prompt's blocks the endpoint's KV events say it holds / prompt blocks; blocks it can load from its CPU/disk tiers or shared storage count by the share of prefill they save (profile, cpuBandwidth, diskBandwidth, or weights)", parsePrecise},
	"kv-cache-utilization": {KindScorer, "1 - KV-cache usage", noParams(kvUtilScorer{})},
	"queue":                {KindScorer, "(maxQ - q)/(maxQ - minQ) over the candidates, q = waiting requests; all equal: 1", noParams(queueScorer{})},
	"load-aware":           {KindScorer, "llm-d's load-aware score: q = 0: 0.5; q >= queueThreshold: 0; else 0.5(1 - q/queueThreshold)", parseLoadAware},
	"least-request":        {KindScorer, "(maxF - f)/(maxF - minF) over the candidates, f = requests in flight from this router; all equal: 1", noParams(leastRequestScorer{})},
	"ttft-cost":            {KindScorer, "min predicted TTFT / this endpoint's predicted TTFT (queue + uncached prefill + transfer)", parseTTFTCost},

	"max-score":   {KindPicker, "highest weighted score, ties broken at random", noParams(maxScorePicker{})},
	"random":      {KindPicker, "uniformly random", noParams(randomPicker{})},
	"p2c":         {KindPicker, "power of two choices: two random candidates, the higher score wins", noParams(p2cPicker{})},
	"round-robin": {KindPicker, "candidates in turn", noParams(roundRobinSpec{})},

	"pd-decider": {KindDecider, "disaggregate when the uncached prompt tokens on the decode endpoint reach threshold; pick the prefill endpoint with prefillProfile", parsePD},
}

// Plugins lists the registered plugins, sorted by name.
func Plugins() []PluginInfo {
	out := make([]PluginInfo, 0, len(registry))
	for name, d := range registry {
		out = append(out, PluginInfo{name, d.kind, d.help})
	}
	slices.SortFunc(out, func(a, b PluginInfo) int {
		if a.Name < b.Name {
			return -1
		}
		return 1
	})
	return out
}

// PluginNames lists the registered plugin names, sorted.
func PluginNames() []string {
	var names []string
	for _, p := range Plugins() {
		names = append(names, p.Name)
	}
	return names
}

func noParams(p any) func(json.RawMessage) (any, error) {
	return func(raw json.RawMessage) (any, error) {
		var none struct{}
		if err := decodeStrict(raw, &none); err != nil {
			return nil, err
		}
		return p, nil
	}
}

type filter interface {
	// filter returns the kept candidates, reusing cands' storage.
	filter(c *cycle, cands []int) []int
}

type scorer interface {
	// score writes a score in [0, 1] for each candidate.
	score(c *cycle, cands []int, out []float64)
}

type picker interface {
	// pick returns a position in cands.
	pick(c *cycle, cands []int, totals []float64) int
}

// pickerSpec makes a Router's own picker, for pickers with state.
type pickerSpec interface {
	newPicker() picker
}

// prefixUser is a plugin that reads the prefix indexes.
type prefixUser interface {
	usesPrefix() (approx, precise bool)
}

type named[T any] struct {
	name string
	impl T
}

type weighted struct {
	name   string
	weight float64
	impl   scorer
}

// profileSpec is a validated profile, shared by every Router built from the
// Config.
type profileSpec struct {
	name    string
	filters []named[filter]
	scorers []weighted
	picker  named[pickerSpec]
	pd      *pdDecider
	pdPath  string
	// What the profile reads: decides what a decision hashes and looks up.
	approx, precise bool
}

func (s *profileSpec) finish() {
	var plugins []any
	for _, f := range s.filters {
		plugins = append(plugins, f.impl)
	}
	for _, w := range s.scorers {
		plugins = append(plugins, w.impl)
	}
	for _, p := range plugins {
		if u, ok := p.(prefixUser); ok {
			a, pr := u.usesPrefix()
			s.approx = s.approx || a
			s.precise = s.precise || pr
		}
	}
	if s.pd != nil && !s.approx && !s.precise {
		// The decider compares the uncached prompt on the decode endpoint
		// with its threshold: it needs some prediction.
		s.approx, s.precise = true, true
	}
}

// Filters.

type readyFilter struct{}

func (readyFilter) filter(c *cycle, cands []int) []int {
	return keep(cands, func(i int) bool { return c.eps[i].Ready })
}

type roleFilter struct{ allow [3]bool }

func parseRole(raw json.RawMessage) (any, error) {
	p := struct {
		Roles []string `json:"roles"`
	}{Roles: []string{"decode", "both"}}
	if err := decodeStrict(raw, &p); err != nil {
		return nil, err
	}
	if len(p.Roles) == 0 {
		return nil, cfgErr("roles", "must list at least one of prefill, decode, both")
	}
	var f roleFilter
	for i, s := range p.Roles {
		r, err := ParseRole(s)
		if err != nil {
			return nil, cfgErr(fmt.Sprintf("roles[%d]", i), "%v", err)
		}
		f.allow[r] = true
	}
	return f, nil
}

func (f roleFilter) filter(c *cycle, cands []int) []int {
	return keep(cands, func(i int) bool { return f.allow[c.eps[i].Role] })
}

type freshFilter struct{}

func (freshFilter) filter(c *cycle, cands []int) []int {
	return keepOrAll(cands, func(i int) bool { return !c.eps[i].Stale })
}

type notSaturatedFilter struct{ cfg SaturationConfig }

func parseNotSaturated(raw json.RawMessage) (any, error) {
	var p SaturationConfig
	if err := decodeStrict(raw, &p); err != nil {
		return nil, err
	}
	if err := p.validate(); err != nil {
		return nil, err
	}
	return notSaturatedFilter{p}, nil
}

func (f notSaturatedFilter) filter(c *cycle, cands []int) []int {
	return keepOrAll(cands, func(i int) bool { return EndpointSaturation(&c.eps[i], f.cfg) < 1 })
}

// keep filters cands in place.
func keep(cands []int, ok func(int) bool) []int {
	n := 0
	for _, i := range cands {
		if ok(i) {
			cands[n] = i
			n++
		}
	}
	return cands[:n]
}

// keepOrAll filters cands in place unless nothing would remain: a filter of
// preferences, not of requirements.
func keepOrAll(cands []int, ok func(int) bool) []int {
	for _, i := range cands {
		if ok(i) {
			return keep(cands, ok)
		}
	}
	return cands
}

// Scorers.

type kvUtilScorer struct{}

func (kvUtilScorer) score(c *cycle, cands []int, out []float64) {
	for k, i := range cands {
		e := &c.eps[i]
		if e.Stale {
			out[k] = 0 // unknown is not idle
			continue
		}
		out[k] = clamp01(1 - e.KVUsage)
	}
}

// minMaxScore scores (max - x)/(max - min) over the candidates that count,
// 1 when all are equal, 0 for the others.
func minMaxScore(c *cycle, cands []int, out []float64, x func(*Endpoint) (int, bool)) {
	lo, hi := math.MaxInt, math.MinInt
	for _, i := range cands {
		if v, ok := x(&c.eps[i]); ok {
			lo, hi = min(lo, v), max(hi, v)
		}
	}
	for k, i := range cands {
		v, ok := x(&c.eps[i])
		switch {
		case !ok:
			out[k] = 0
		case hi == lo:
			out[k] = 1
		default:
			out[k] = float64(hi-v) / float64(hi-lo)
		}
	}
}

type queueScorer struct{}

// score uses the scraped waiting queue, as llm-d does; endpoints with stale
// metrics score 0 and stay out of the range, as llm-d's endpoints without
// metrics do.
func (queueScorer) score(c *cycle, cands []int, out []float64) {
	minMaxScore(c, cands, out, func(e *Endpoint) (int, bool) { return e.Waiting, !e.Stale })
}

type leastRequestScorer struct{}

// score uses the router's own in-flight count, which is never stale.
func (leastRequestScorer) score(c *cycle, cands []int, out []float64) {
	minMaxScore(c, cands, out, func(e *Endpoint) (int, bool) { return e.InFlight, true })
}

type loadAwareScorer struct{ threshold float64 }

func parseLoadAware(raw json.RawMessage) (any, error) {
	p := struct {
		QueueThreshold int `json:"queueThreshold"`
	}{128}
	if err := decodeStrict(raw, &p); err != nil {
		return nil, err
	}
	if p.QueueThreshold < 1 {
		return nil, cfgErr("queueThreshold", "must be >= 1, got %d", p.QueueThreshold)
	}
	return loadAwareScorer{float64(p.QueueThreshold)}, nil
}

func (s loadAwareScorer) score(c *cycle, cands []int, out []float64) {
	for k, i := range cands {
		e := &c.eps[i]
		q := float64(e.Waiting)
		switch {
		case e.Stale:
			out[k] = 0
		case q == 0:
			out[k] = 0.5
		default:
			out[k] = 0.5 * (1 - min(q, s.threshold)/s.threshold)
		}
	}
}

type approxScorer struct{}

func (approxScorer) usesPrefix() (bool, bool) { return true, false }

func (approxScorer) score(c *cycle, cands []int, out []float64) {
	c.lookupApprox()
	for k, i := range cands {
		out[k] = ratio(c.apxLen[i], len(c.d.approxKeys))
	}
}

type preciseScorer struct {
	// weights of a block by medium (GPU: 1).
	weights [numMedia]float64
}

func (*preciseScorer) usesPrefix() (bool, bool) { return false, true }

func (s *preciseScorer) score(c *cycle, cands []int, out []float64) {
	c.lookupPrecise()
	for k, i := range cands {
		out[k] = ratio(c.preLen[i], len(c.preHashes))
		if c.tiered && len(c.preHashes) > 0 {
			var w float64
			for m, n := range c.tiers[i] {
				w += s.weights[m] * float64(n)
			}
			out[k] += w / float64(len(c.preHashes))
		}
	}
}

// prefix-precise parameters: the tier costs' (tiers.go), or explicit
// weights per medium in [0, 1].
func parsePrecise(raw json.RawMessage) (any, error) {
	p := struct {
		tierParams
		Weights *struct {
			CPU     *float64 `json:"cpu"`
			Disk    *float64 `json:"disk"`
			Other   *float64 `json:"other"`
			Storage *float64 `json:"storage"`
		} `json:"weights"`
	}{}
	if err := decodeStrict(raw, &p); err != nil {
		return nil, err
	}
	tc, err := p.costs()
	if err != nil {
		return nil, err
	}
	s := &preciseScorer{weights: tc.Weights()}
	s.weights[mediumGPU] = 1
	if w := p.Weights; w != nil {
		for _, f := range []struct {
			name string
			v    *float64
			m    medium
		}{{"weights.cpu", w.CPU, mediumCPU}, {"weights.disk", w.Disk, mediumDisk}, {"weights.other", w.Other, mediumOther}, {"weights.storage", w.Storage, mediumStorage}} {
			if f.v == nil {
				continue
			}
			if !(*f.v >= 0 && *f.v <= 1) {
				return nil, cfgErr(f.name, "must be in [0, 1], got %v", *f.v)
			}
			s.weights[f.m] = *f.v
		}
	}
	return s, nil
}

func ratio(n int32, total int) float64 {
	if total == 0 {
		return 0
	}
	return float64(n) / float64(total)
}

func clamp01(x float64) float64 {
	switch {
	case x > 1:
		return 1
	case x >= 0:
		return x
	}
	return 0 // and NaN
}

// Pickers.

type maxScorePicker struct{}

func (p maxScorePicker) newPicker() picker { return p }

func (maxScorePicker) pick(c *cycle, cands []int, totals []float64) int {
	best := math.Inf(-1)
	for _, i := range cands {
		best = max(best, totals[i])
	}
	// Totals are sums of a few products; equal inputs give equal sums, so
	// a small relative tolerance only absorbs rounding.
	tol := 1e-9 * max(1, math.Abs(best))
	ties := 0
	for _, i := range cands {
		if totals[i] >= best-tol {
			ties++
		}
	}
	nth := int(c.rand() % uint64(ties))
	for k, i := range cands {
		if totals[i] >= best-tol {
			if nth == 0 {
				return k
			}
			nth--
		}
	}
	return 0
}

type randomPicker struct{}

func (p randomPicker) newPicker() picker { return p }

func (randomPicker) pick(c *cycle, cands []int, _ []float64) int {
	return int(c.rand() % uint64(len(cands)))
}

type p2cPicker struct{}

func (p p2cPicker) newPicker() picker { return p }

func (p2cPicker) pick(c *cycle, cands []int, totals []float64) int {
	n := uint64(len(cands))
	if n == 1 {
		return 0
	}
	r := c.rand()
	a := int(r % n)
	b := int((r >> 32) % (n - 1))
	if b >= a {
		b++
	}
	switch ta, tb := totals[cands[a]], totals[cands[b]]; {
	case ta > tb:
		return a
	case tb > ta:
		return b
	case c.rand()&1 == 0:
		return a
	}
	return b
}

type roundRobinSpec struct{}

func (roundRobinSpec) newPicker() picker { return &roundRobinPicker{} }

// roundRobinPicker belongs to one Router; its counter is its only state.
type roundRobinPicker struct{ next atomic.Uint64 }

func (p *roundRobinPicker) pick(_ *cycle, cands []int, _ []float64) int {
	return int((p.next.Add(1) - 1) % uint64(len(cands)))
}

// The P/D decider.

type pdDecider struct {
	threshold      int
	prefillProfile string
}

func parsePD(raw json.RawMessage) (any, error) {
	p := struct {
		Threshold      *int   `json:"threshold"`
		PrefillProfile string `json:"prefillProfile"`
	}{PrefillProfile: "prefill"}
	if err := decodeStrict(raw, &p); err != nil {
		return nil, err
	}
	d := &pdDecider{threshold: DefaultPDThreshold, prefillProfile: p.PrefillProfile}
	if p.Threshold != nil {
		if *p.Threshold < 0 {
			return nil, cfgErr("threshold", "must be >= 0, got %d", *p.Threshold)
		}
		d.threshold = *p.Threshold
	}
	return d, nil
}

// DefaultPDThreshold is the uncached prompt length from which a request is
// disaggregated: llm-d's example value, until measurement picks ours.
const DefaultPDThreshold = 512

// ttft-cost parameters.

func parseTTFTCost(raw json.RawMessage) (any, error) {
	p := struct {
		tierParams
		WaitingRequestTokens *int `json:"waitingRequestTokens"`
	}{tierParams: tierParams{Profile: engine.DefaultProfile}}
	if err := decodeStrict(raw, &p); err != nil {
		return nil, err
	}
	prof, err := engine.BuiltinProfile(p.Profile)
	if err != nil {
		return nil, cfgErr("profile", "%v", err)
	}
	tc, err := p.costs()
	if err != nil {
		return nil, err
	}
	s := &ttftCost{fallback: RatesFromProfile(&prof, 0, 0, 0), waitingTokens: 512, tiers: tc}
	if w := p.WaitingRequestTokens; w != nil {
		if *w < 0 {
			return nil, cfgErr("waitingRequestTokens", "must be >= 0, got %d", *w)
		}
		s.waitingTokens = *w
	}
	return s, nil
}
