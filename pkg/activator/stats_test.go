package activator

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/llmd-kn/llmd-kn/pkg/apis"
	"github.com/llmd-kn/llmd-kn/pkg/autoscaler"
)

// TestArrivalsAreCountedBeforeTheAnswer: a request buffered at zero pods
// counts in arrivedByTier and arrivedPromptTokens at once, while the
// per-finished-request counters stay at zero until it ends; the autoscaler's
// Snapshot decodes the new fields from the stats JSON.
func TestArrivalsAreCountedBeforeTheAnswer(t *testing.T) {
	f := newFixture(t, apis.Spec{})
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan struct{})
	go func() {
		defer close(done)
		body := fmt.Sprintf(`{"model":%q,"prompt":%s,"max_tokens":4}`, testModel, mustJSON(longPrompt(300, 7)))
		req, _ := http.NewRequestWithContext(ctx, http.MethodPost, f.url+"/v1/completions", strings.NewReader(body))
		req.Header.Set(TierHeader, "batch")
		if resp, err := http.DefaultClient.Do(req); err == nil {
			_, _ = io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
		}
	}()
	var st RevisionStats
	for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		st = f.act.Stats()[0]
		if st.ArrivedByTier["batch"] == 1 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the buffered request was never counted as arrived: %+v", st)
		}
	}
	if st.ArrivedPromptTokens != 300 || st.RequestsByTier["batch"] != 0 || st.PromptTokens != 0 {
		t.Fatalf("arrived prompt tokens %d (want 300), finished requests %d and prompt tokens %d (want 0 before the answer)",
			st.ArrivedPromptTokens, st.RequestsByTier["batch"], st.PromptTokens)
	}
	raw, err := json.Marshal(st)
	if err != nil {
		t.Fatal(err)
	}
	var snap autoscaler.Snapshot
	if err := json.Unmarshal(raw, &snap); err != nil {
		t.Fatal(err)
	}
	if snap.ArrivedByTier["batch"] != 1 || snap.ArrivedPromptTokens != 300 {
		t.Fatalf("snapshot from %s: %+v", raw, snap)
	}
	cancel()
	<-done
	// The client went away: it ends counted as a failed request; it
	// arrived once.
	for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		st = f.act.Stats()[0]
		if st.RequestsByTier["batch"] == 1 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the cancelled request was never recorded: %+v", st)
		}
	}
	if st.ArrivedByTier["batch"] != 1 || st.Errors != 1 {
		t.Fatalf("after the end: arrived %d, errors %d (want 1 and 1)", st.ArrivedByTier["batch"], st.Errors)
	}
}

// TestShedOnArrivalCountsApart: a request that flow control refuses on
// arrival (here the queue is full, at zero pods: 503) never reaches a pod
// nor waits for one: it counts in shedByTier, not in arrivedByTier nor
// requestsByTier, so the autoscaler does not scale for it (issue 17); the
// request that waits counts as arrived.
func TestShedOnArrivalCountsApart(t *testing.T) {
	f := newFixtureOpts(t, func(o *Options) { o.Flow = FlowLimits{MaxQueued: 1} }, apis.Spec{})
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	body := fmt.Sprintf(`{"model":%q,"prompt":%s,"max_tokens":4}`, testModel, mustJSON(longPrompt(300, 7)))
	post := func(ctx context.Context) int {
		req, _ := http.NewRequestWithContext(ctx, http.MethodPost, f.url+"/v1/completions", strings.NewReader(body))
		req.Header.Set(TierHeader, "batch")
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			return 0
		}
		defer resp.Body.Close()
		_, _ = io.Copy(io.Discard, resp.Body)
		return resp.StatusCode
	}
	done := make(chan struct{})
	go func() { defer close(done); post(ctx) }()
	var st RevisionStats
	for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		st = f.act.Stats()[0]
		if st.QueuedByTier["batch"] == 1 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the first request never queued: %+v", st)
		}
	}
	if code := post(context.Background()); code != http.StatusTooManyRequests {
		t.Fatalf("second (sheddable) request with the queue full at zero pods: %d, want 429", code)
	}
	st = f.act.Stats()[0]
	if st.ArrivedByTier["batch"] != 1 || st.ArrivedPromptTokens != 300 || st.ShedByTier["batch"] != 1 ||
		st.ShedPromptTokens != 300 || st.RequestsByTier["batch"] != 0 || st.Errors != 0 || st.Batch.ArrivedPromptTokens != 300 {
		t.Fatalf("arrived %v (%d prompt tokens), shed %v (%d), requests %v, errors %d: want 1 arrived, 1 shed, none finished",
			st.ArrivedByTier, st.ArrivedPromptTokens, st.ShedByTier, st.ShedPromptTokens, st.RequestsByTier, st.Errors)
	}
	raw, err := json.Marshal(st)
	if err != nil {
		t.Fatal(err)
	}
	var snap autoscaler.Snapshot
	if err := json.Unmarshal(raw, &snap); err != nil {
		t.Fatal(err)
	}
	if l := autoscaler.Rates(autoscaler.Snapshot{}, snap, time.Second); l.ArrivalsPerSecond["batch"] != 1 || l.Requests() != 0 {
		t.Errorf("the autoscaler reads arrivals %v and %v requests/s, want the one that waits only", l.ArrivalsPerSecond, l.Requests())
	}
	cancel()
	<-done
}
