package reconciler

import (
	"encoding/json"
	"math"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"
)

// FuzzStatsReport: any body POSTed to /v1/stats is accepted (202) or
// refused with a 4xx, never a panic or a 5xx; what is accepted can be read
// back as load, twice (two reports a second apart), with no NaN or
// infinity in the rates the decider uses.
func FuzzStatsReport(f *testing.F) {
	f.Add(`{"activator":"act-a","revisions":[{"revision":"default/chat-00001","requestsByTier":{"standard":3},"errors":1,
		"promptTokens":300,"completionTokens":40,"arrivedByTier":{"standard":4},"arrivedPromptTokens":400,"queuedByTier":{"batch":2},
		"roles":{"decode":{"ready":2,"running":7,"waiting":1,"kvUsage":0.5}},"batch":{"promptTokens":10,"inFlight":1}}]}`)
	f.Add(`{"activator":"act-a","revisions":[]}`)
	f.Add(`{"activator":"","revisions":[{"revision":"x"}]}`)
	f.Add(`{"activator":"a","revisions":[{"revision":"a/b","requestsByTier":{"s":-5},"promptTokens":-9223372036854775808}]}`)
	f.Add(`{"activator":"a"} {"activator":"b"}`)
	f.Add(`[]`)
	now := time.Unix(1_000_000, 0)
	api := &StatsAPI{
		Stats:           NewStats(),
		Now:             func() time.Time { return now },
		Poke:            func(string, string) error { return nil },
		Recommendations: func() []RevisionRecommendation { return nil },
		Limits:          Limits{PerCaller: 1e12, Burst: 1 << 30, PerAddress: 1e12, Concurrent: 16},
	}
	h := api.Handler()
	f.Fuzz(func(t *testing.T, body string) {
		for range 2 {
			now = now.Add(time.Second)
			req := httptest.NewRequest(http.MethodPost, "/v1/stats", strings.NewReader(body))
			req.RemoteAddr = "127.0.0.1:1234"
			rec := httptest.NewRecorder()
			h.ServeHTTP(rec, req)
			if rec.Code != http.StatusAccepted && (rec.Code < 400 || rec.Code > 499) {
				t.Fatalf("status %d (%s) for %q", rec.Code, rec.Body, body)
			}
			if rec.Code != http.StatusAccepted {
				return
			}
			var rep StatsReport
			if err := json.Unmarshal([]byte(body), &rep); err != nil {
				t.Fatalf("accepted a body that does not decode: %v", err)
			}
			for _, s := range rep.Revisions {
				l, ok := api.Stats.Load(now, s.Revision)
				if !ok {
					t.Fatalf("accepted revision %q not found", s.Revision)
				}
				for _, v := range []float64{l.Requests(), l.Arrivals(), l.PromptTokensPerSecond, l.OutputTokensPerSecond,
					l.ArrivedPromptTokensPerSecond, l.MeanPromptTokens, l.MeanOutputTokens} {
					if math.IsNaN(v) || math.IsInf(v, 0) {
						t.Fatalf("load %+v of %q has a NaN or an infinity", l, body)
					}
				}
			}
		}
	})
}
