package reconciler

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/llmd-kn/llmd-kn/pkg/autoscaler"
)

// Limits of the stats API (contracts with the activator).
const (
	// MaxStatsBody bounds a request body of the stats API.
	MaxStatsBody = 4 << 20
	// ActivatorSilence is how long an activator may go without a report
	// before its statistics are dropped.
	ActivatorSilence = 10 * time.Second
)

// StatsReport is the body of POST /v1/stats: one activator's statistics of
// every revision it serves. Each entry is the activator's RevisionStats JSON
// decoded into the decider's Snapshot (same names; other fields ignored).
type StatsReport struct {
	Activator string                `json:"activator"`
	Revisions []autoscaler.Snapshot `json:"revisions"`
}

// PokeRequest is the body of POST /v1/poke.
type PokeRequest struct {
	Namespace string `json:"namespace"`
	Name      string `json:"name"`
}

// RevisionRecommendation is one entry of GET /v1/recommendations.
type RevisionRecommendation struct {
	Namespace string `json:"namespace"`
	Name      string `json:"name"`
	// Mode is act or advise.
	Mode string `json:"mode"`
	// Prefill and Decode are the replicas the reconciler wants now (the
	// recommendation with the initial scale held during the grace period).
	Prefill        int                       `json:"prefill"`
	Decode         int                       `json:"decode"`
	Recommendation autoscaler.Recommendation `json:"recommendation"`
	// NoData: no activator has reported the revision within
	// ActivatorSilence; the last recommendation holds.
	NoData bool `json:"noData,omitempty"`
	// Activators are the activators whose reports of the revision count
	// now (heard within ActivatorSilence), and Queued and InFlight the
	// requests waiting and running in them, summed: what the decider
	// sees, for operators and the two-activator end-to-end test.
	Activators []string `json:"activators,omitempty"`
	Queued     int      `json:"queued"`
	InFlight   int      `json:"inFlight"`
}

// ErrUnknownRevision is a poke for a revision this autoscaler does not
// scale.
var ErrUnknownRevision = errors.New("unknown revision")

// Stats keeps the last two reports of each activator per revision and
// turns them into the decider's Load. It is safe for concurrent use.
type Stats struct {
	mu         sync.Mutex
	activators map[string]*activatorStats
}

type activatorStats struct {
	at   time.Time
	revs map[string]*revisionStats // by "namespace/name"
}

type revisionStats struct {
	prev, cur     autoscaler.Snapshot
	prevAt, curAt time.Time
	hasPrev       bool
}

// NewStats returns an empty store.
func NewStats() *Stats { return &Stats{activators: map[string]*activatorStats{}} }

// Report records one activator's report received at now. A revision the
// activator no longer reports is forgotten for that activator.
func (s *Stats) Report(now time.Time, r StatsReport) {
	s.mu.Lock()
	defer s.mu.Unlock()
	a := s.activators[r.Activator]
	if a == nil {
		a = &activatorStats{revs: map[string]*revisionStats{}}
		s.activators[r.Activator] = a
	}
	a.at = now
	seen := make(map[string]bool, len(r.Revisions))
	for _, snap := range r.Revisions {
		seen[snap.Revision] = true
		rs := a.revs[snap.Revision]
		if rs == nil {
			a.revs[snap.Revision] = &revisionStats{cur: snap, curAt: now}
			continue
		}
		rs.prev, rs.prevAt, rs.hasPrev = rs.cur, rs.curAt, true
		rs.cur, rs.curAt = snap, now
	}
	for k := range a.revs {
		if !seen[k] {
			delete(a.revs, k)
		}
	}
}

// Load is a revision's offered load at now: per activator, the rates
// between its last two reports (autoscaler.Rates), summed over the
// activators heard from within ActivatorSilence. ok is false when no
// activator reports the revision. Activators silent for longer are dropped.
func (s *Stats) Load(now time.Time, revision string) (load autoscaler.Load, ok bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	var sum loadSum
	for name, a := range s.activators {
		if now.Sub(a.at) > ActivatorSilence {
			delete(s.activators, name)
			continue
		}
		rs := a.revs[revision]
		if rs == nil {
			continue
		}
		ok = true
		if rs.hasPrev {
			sum.add(autoscaler.Rates(rs.prev, rs.cur, rs.curAt.Sub(rs.prevAt)))
		} else {
			sum.add(autoscaler.Rates(rs.cur, rs.cur, 0))
		}
	}
	return sum.load(), ok
}

// Activators lists, sorted, the activators whose reports of revision
// count at now (those Load sums).
func (s *Stats) Activators(now time.Time, revision string) []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []string
	for name, a := range s.activators {
		if now.Sub(a.at) <= ActivatorSilence && a.revs[revision] != nil {
			out = append(out, name)
		}
	}
	sort.Strings(out)
	return out
}

// Pods is a revision's pod telemetry by role from the most recent report
// of any activator (every activator scrapes the same pods, so reports are
// not summed); ok is false when none reports it.
func (s *Stats) Pods(now time.Time, revision string) (pods autoscaler.Pods, ok bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	var at time.Time
	for _, a := range s.activators {
		rs := a.revs[revision]
		if rs == nil || now.Sub(rs.curAt) > ActivatorSilence || !rs.curAt.After(at) {
			continue
		}
		at, ok = rs.curAt, true
		pods = autoscaler.Pods{Prefill: rs.cur.Roles["prefill"], Decode: rs.cur.Roles["decode"]}
	}
	return pods, ok
}

// loadSum adds loads of several activators; the per-request means are
// weighted by each activator's request rate.
type loadSum struct {
	l                              autoscaler.Load
	weight, prompt, cached, output float64
}

func (s *loadSum) add(l autoscaler.Load) {
	for tier, r := range l.RequestsPerSecond {
		if s.l.RequestsPerSecond == nil {
			s.l.RequestsPerSecond = map[string]float64{}
		}
		s.l.RequestsPerSecond[tier] += r
	}
	for tier, r := range l.ArrivalsPerSecond {
		if s.l.ArrivalsPerSecond == nil {
			s.l.ArrivalsPerSecond = map[string]float64{}
		}
		s.l.ArrivalsPerSecond[tier] += r
	}
	s.l.ArrivedPromptTokensPerSecond += l.ArrivedPromptTokensPerSecond
	s.l.PromptTokensPerSecond += l.PromptTokensPerSecond
	s.l.UncachedPrefillTokensPerSecond += l.UncachedPrefillTokensPerSecond
	s.l.OutputTokensPerSecond += l.OutputTokensPerSecond
	s.l.Queued += l.Queued
	s.l.InFlight += l.InFlight
	b := &s.l.Batch
	b.PromptTokensPerSecond += l.Batch.PromptTokensPerSecond
	b.UncachedPrefillTokensPerSecond += l.Batch.UncachedPrefillTokensPerSecond
	b.OutputTokensPerSecond += l.Batch.OutputTokensPerSecond
	b.ArrivedPromptTokensPerSecond += l.Batch.ArrivedPromptTokensPerSecond
	b.Queued += l.Batch.Queued
	b.InFlight += l.Batch.InFlight
	s.l.QueueTime = max(s.l.QueueTime, l.QueueTime)
	s.l.TTFT = autoscaler.Latency{P50: max(s.l.TTFT.P50, l.TTFT.P50), P90: max(s.l.TTFT.P90, l.TTFT.P90)}
	s.l.TPOT = autoscaler.Latency{P50: max(s.l.TPOT.P50, l.TPOT.P50), P90: max(s.l.TPOT.P90, l.TPOT.P90)}
	if l.MeanPromptTokens > 0 || l.MeanOutputTokens > 0 {
		w := max(l.Requests(), 1e-9)
		s.weight += w
		s.prompt += w * l.MeanPromptTokens
		s.cached += w * l.MeanCachedTokens
		s.output += w * l.MeanOutputTokens
	}
}

func (s *loadSum) load() autoscaler.Load {
	l := s.l
	if s.weight > 0 {
		l.MeanPromptTokens = s.prompt / s.weight
		l.MeanCachedTokens = s.cached / s.weight
		l.MeanOutputTokens = s.output / s.weight
	}
	return l
}

// StatsAPI is the autoscaler's HTTP API for activators and operators:
// POST /v1/stats, POST /v1/poke and GET /v1/recommendations.
type StatsAPI struct {
	Stats *Stats
	// Poke wakes a revision at zero; it returns ErrUnknownRevision for a
	// revision this autoscaler does not scale.
	Poke func(namespace, name string) error
	// Recommendations lists the current recommendation per revision.
	Recommendations func() []RevisionRecommendation
	// Now is the clock (time.Now when nil).
	Now func() time.Time
	// Auth authenticates the callers of POST /v1/stats and /v1/poke; nil
	// accepts every caller (tests, and an autoscaler run with
	// --stats-auth=none).
	Auth Authenticator
	// Limits bound the callers (rate, concurrency).
	Limits Limits
}

// Handler returns the API's routes.
func (a *StatsAPI) Handler() http.Handler {
	g := newGuard(a.Auth, a.Limits, a.now)
	guarded := func(h func(http.ResponseWriter, *http.Request, Caller)) http.HandlerFunc {
		return func(w http.ResponseWriter, r *http.Request) {
			c, release, ok := g.admit(w, r)
			if !ok {
				return
			}
			defer release()
			h(w, r, c)
		}
	}
	mux := http.NewServeMux()
	mux.HandleFunc("POST /v1/stats", guarded(a.postStats))
	mux.HandleFunc("POST /v1/poke", guarded(a.postPoke))
	mux.HandleFunc("GET /v1/recommendations", a.getRecommendations)
	return mux
}

func (a *StatsAPI) now() time.Time {
	if a.Now != nil {
		return a.Now()
	}
	return time.Now()
}

// decodeBody decodes a JSON body of at most MaxStatsBody bytes.
func decodeBody(w http.ResponseWriter, r *http.Request, dst any) error {
	r.Body = http.MaxBytesReader(w, r.Body, MaxStatsBody)
	dec := json.NewDecoder(r.Body)
	if err := dec.Decode(dst); err != nil {
		var te *json.UnmarshalTypeError
		var mbe *http.MaxBytesError
		switch {
		case errors.As(err, &mbe):
			return fmt.Errorf("body larger than %d bytes", MaxStatsBody)
		case errors.As(err, &te) && te.Field != "":
			return fmt.Errorf("field %s: cannot use a JSON %s as %s", te.Field, te.Value, te.Type)
		}
		return fmt.Errorf("invalid JSON: %v", err)
	}
	// Only white space may follow: dec.More is false before a stray '}'
	// or ']' too (FuzzStatsReport found `{...} }` accepted).
	if _, err := dec.Token(); !errors.Is(err, io.EOF) {
		return errors.New("invalid JSON: more than one value in the body")
	}
	return nil
}

func (a *StatsAPI) postStats(w http.ResponseWriter, r *http.Request, c Caller) {
	var rep StatsReport
	if err := decodeBody(w, r, &rep); err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	if strings.TrimSpace(rep.Activator) == "" {
		http.Error(w, "field activator: required (the activator's pod name)", http.StatusBadRequest)
		return
	}
	if c.Pod != "" && rep.Activator != c.Pod {
		// One activator may not speak for another (or for a made-up one).
		http.Error(w, fmt.Sprintf("field activator: %q, but the token is bound to pod %q", rep.Activator, c.Pod), http.StatusForbidden)
		return
	}
	for i, s := range rep.Revisions {
		if ns, name, ok := strings.Cut(s.Revision, "/"); !ok || ns == "" || name == "" || strings.Contains(name, "/") {
			http.Error(w, fmt.Sprintf("field revisions[%d].revision: %q is not namespace/name", i, s.Revision), http.StatusBadRequest)
			return
		}
	}
	a.Stats.Report(a.now(), rep)
	w.WriteHeader(http.StatusAccepted)
}

func (a *StatsAPI) postPoke(w http.ResponseWriter, r *http.Request, _ Caller) {
	var p PokeRequest
	if err := decodeBody(w, r, &p); err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	switch {
	case p.Namespace == "":
		http.Error(w, "field namespace: required", http.StatusBadRequest)
		return
	case p.Name == "":
		http.Error(w, "field name: required", http.StatusBadRequest)
		return
	}
	if err := a.Poke(p.Namespace, p.Name); err != nil {
		if errors.Is(err, ErrUnknownRevision) {
			http.Error(w, fmt.Sprintf("revision %s/%s: %v", p.Namespace, p.Name, err), http.StatusNotFound)
			return
		}
		http.Error(w, err.Error(), http.StatusInternalServerError)
		return
	}
	w.WriteHeader(http.StatusAccepted)
}

func (a *StatsAPI) getRecommendations(w http.ResponseWriter, _ *http.Request) {
	recs := a.Recommendations()
	if recs == nil {
		recs = []RevisionRecommendation{}
	}
	sort.Slice(recs, func(i, j int) bool {
		if recs[i].Namespace != recs[j].Namespace {
			return recs[i].Namespace < recs[j].Namespace
		}
		return recs[i].Name < recs[j].Name
	})
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(recs)
}
