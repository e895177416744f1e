package workload

import (
	"strings"
	"sync"
	"testing"
	"time"
)

// smallTrace is a Mooncake trace of five rows at 0, 1, 2, 3 and 4 s.
func smallTrace(t *testing.T) *MooncakeTrace {
	t.Helper()
	var b strings.Builder
	for i := range 5 {
		b.WriteString(`{"timestamp": ` + []string{"0", "1000", "2000", "3000", "4000"}[i] + `, "input_length": 600, "output_length": 3, "hash_ids": [1, ` + string(rune('2'+i)) + `]}` + "\n")
	}
	tr, err := ReadMooncake(strings.NewReader(b.String()))
	if err != nil {
		t.Fatal(err)
	}
	return tr
}

func TestTraceReplay(t *testing.T) {
	tr := smallTrace(t)
	tests := []struct {
		name string
		opts Options
		want []time.Duration
	}{
		{"as recorded", Options{}, []time.Duration{0, time.Second, 2 * time.Second, 3 * time.Second, 4 * time.Second}},
		{"sped up 4 times", Options{Speedup: 4}, []time.Duration{0, 250 * time.Millisecond, 500 * time.Millisecond, 750 * time.Millisecond, time.Second}},
		{"slowed to half", Options{Speedup: 0.5}, []time.Duration{0, 2 * time.Second, 4 * time.Second, 6 * time.Second, 8 * time.Second}},
		{"first 3", Options{MaxRequests: 3}, []time.Duration{0, time.Second, 2 * time.Second}},
		{"before 2.5 s", Options{MaxDuration: 2500 * time.Millisecond}, []time.Duration{0, time.Second, 2 * time.Second}},
		{"before 2 s (exclusive)", Options{MaxDuration: 2 * time.Second}, []time.Duration{0, time.Second}},
		{"sped up, then cut at 0.6 s of replay", Options{Speedup: 4, MaxDuration: 600 * time.Millisecond}, []time.Duration{0, 250 * time.Millisecond, 500 * time.Millisecond}},
		{"more requests than rows", Options{MaxRequests: 50}, []time.Duration{0, time.Second, 2 * time.Second, 3 * time.Second, 4 * time.Second}},
		{"idle 10 s after every 2 s", Options{IdleEvery: 2 * time.Second, IdleGap: 10 * time.Second},
			[]time.Duration{0, time.Second, 12 * time.Second, 13 * time.Second, 24 * time.Second}},
		{"slowed, cut, then idle gaps", Options{Speedup: 0.5, MaxDuration: 5 * time.Second, IdleEvery: 3 * time.Second, IdleGap: time.Minute},
			[]time.Duration{0, 2*time.Second + 0, 4*time.Second + time.Minute}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			w, err := New(tr, Arrival{}, tc.opts)
			if err != nil {
				t.Fatal(err)
			}
			got := collect(t, w.Source())
			if len(got) != len(tc.want) || w.Len() != len(tc.want) {
				t.Fatalf("%d requests (Len %d), want %d", len(got), w.Len(), len(tc.want))
			}
			for i, r := range got {
				if r.At != tc.want[i] || r.Index != i || r.Item != i {
					t.Errorf("request %d: at %s, index %d, item %d; want at %s", i, r.At, r.Index, r.Item, tc.want[i])
				}
			}
			if w.Duration() != tc.want[len(tc.want)-1] {
				t.Errorf("Duration = %s, want %s", w.Duration(), tc.want[len(tc.want)-1])
			}
		})
	}
}

func TestTraceWithSyntheticArrivals(t *testing.T) {
	tr := smallTrace(t)
	w, err := New(tr, Arrival{Kind: ArrivalConstant, Rate: 10}, Options{})
	if err != nil {
		t.Fatal(err)
	}
	got := collect(t, w.Source())
	if len(got) != 5 || got[4].At != 400*time.Millisecond || got[4].PromptLen != 600 {
		t.Errorf("requests = %+v; want the 5 rows at 10/s", got)
	}
}

func TestNewRejects(t *testing.T) {
	tr := smallTrace(t)
	endless := untimed(t)
	tests := []struct {
		name string
		ds   Dataset
		a    Arrival
		opts Options
		msg  string
	}{
		{"rate scale on trace timestamps", tr, Arrival{}, Options{RateScale: 2}, "rateScale: does not apply to trace timestamps"},
		{"trace arrivals without timestamps", endless, Arrival{Kind: ArrivalTrace}, Options{MaxRequests: 1}, "arrival.kind: trace needs a dataset with timestamps"},
		{"no arrival kind without timestamps", endless, Arrival{}, Options{MaxRequests: 1}, "arrival.kind: required"},
		{"endless", endless, Arrival{Kind: ArrivalPoisson, Rate: 1}, Options{}, "the workload never ends"},
		{"negative speed-up", tr, Arrival{}, Options{Speedup: -1}, "speedup: must be in (0, 1e6]"},
		{"zero rate", endless, Arrival{Kind: ArrivalPoisson}, Options{MaxRequests: 1}, "arrival.rate: must be in (0, 1e+07]"},
		{"negative limit", tr, Arrival{}, Options{MaxRequests: -1}, "maxRequests: must not be negative"},
		{"idle gap alone", tr, Arrival{}, Options{IdleGap: time.Minute}, "idleGap: idleEvery and idleGap go together"},
		{"idle every too short", tr, Arrival{}, Options{IdleEvery: time.Millisecond, IdleGap: time.Minute}, "idleEvery: must be at least 1s"},
		{"idle gap too long", tr, Arrival{}, Options{IdleEvery: time.Minute, IdleGap: 25 * time.Hour}, "idleGap: must be at most 24h"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := New(tc.ds, tc.a, tc.opts)
			if err == nil || !strings.Contains(err.Error(), tc.msg) {
				t.Errorf("error = %v, want %q", err, tc.msg)
			}
		})
	}
}

func TestWorkloadIteratesAgainAndConcurrently(t *testing.T) {
	ds := must(t)(NewRandom(RandomConfig{NumPrompts: 300, InputLen: 64, OutputLen: 4, RangeRatio: 0.5}, 1))
	w, err := New(ds, Arrival{Kind: ArrivalPoisson, Rate: 100}, Options{Seed: 2})
	if err != nil {
		t.Fatal(err)
	}
	ref := collect(t, w.Source())
	if len(ref) != 300 {
		t.Fatalf("%d requests, want 300", len(ref))
	}
	var wg sync.WaitGroup
	for range 4 {
		wg.Go(func() {
			got := collect(t, w.Source())
			if w.Len() != len(ref) || len(got) != len(ref) {
				t.Errorf("another pass: %d requests (Len %d), want %d", len(got), w.Len(), len(ref))
				return
			}
			for i := range got {
				g, r := got[i], ref[i]
				if g.At != r.At || g.PromptLen != r.PromptLen || !equalIDs(g.Prompt(), r.Prompt()) {
					t.Errorf("request %d differs between passes", i)
					return
				}
			}
		})
	}
	wg.Wait()
	n := 0
	for range w.All() {
		if n++; n == 10 {
			break
		}
	}
	if n != 10 {
		t.Errorf("All stopped after %d, want to stop at the break", n)
	}
}
