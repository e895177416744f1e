package vllmsim

import (
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"
)

// TestClockLagCountsAStalledLoop: a loop kept from its next step (here by
// holding the engine's lock, as a starved CPU would keep it from running)
// reports the stall as lateness and as dropped modelled time, and a loop
// that was never held reports nothing dropped.
func TestClockLagCountsAStalledLoop(t *testing.T) {
	s, err := New(Config{TimeScale: 1, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if lag := s.ClockLag(); lag != (ClockLag{}) {
		t.Fatalf("idle server: %+v", lag)
	}
	srv := httptest.NewServer(s.Handler())
	defer srv.Close()
	// A stream long enough (4,000 decode steps of several ms) to still be
	// running after the stall.
	resp, err := http.Post(srv.URL+"/v1/completions", "application/json",
		strings.NewReader(`{"prompt":"count","max_tokens":4000,"ignore_eos":true,"stream":true}`))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	buf := make([]byte, 4096)
	if _, err := resp.Body.Read(buf); err != nil { // the first chunk: the engine is stepping
		t.Fatal(err)
	}
	const stall = 150 * time.Millisecond
	s.mu.Lock()
	time.Sleep(stall)
	s.mu.Unlock()
	deadline := time.Now().Add(30 * time.Second)
	for s.ClockLag().Dropped == 0 && time.Now().Before(deadline) {
		if _, err := resp.Body.Read(buf); err != nil && err != io.EOF {
			t.Fatal(err)
		}
	}
	lag := s.ClockLag()
	// The step after the stall started at least the stall late (less the
	// part of a step's sleep it overlapped, a few ms) and the engine clock
	// skipped about that much modelled time (time scale 1).
	if lag.Late < stall/2 || lag.Dropped < stall/2 {
		t.Fatalf("after a %s stall: %+v", stall, lag)
	}
}
