package workload

import (
	"math"
	"testing"
	"time"
)

// untimed is an endless dataset of one-token prompts, for arrival tests.
func untimed(t *testing.T) Dataset {
	return must(t)(NewSharedPrefix(SharedPrefixConfig{Groups: 1, PromptsPerGroup: 1, SystemPromptLen: 1, QuestionLen: 1, OutputLen: 1}, 0))
}

func arrivalTimes(t *testing.T, a Arrival, opts Options) []time.Duration {
	t.Helper()
	w, err := New(untimed(t), a, opts)
	if err != nil {
		t.Fatal(err)
	}
	var out []time.Duration
	for r := range w.All() {
		if len(out) > 0 && r.At < out[len(out)-1] {
			t.Fatalf("request %d at %s, before its predecessor at %s", r.Index, r.At, out[len(out)-1])
		}
		out = append(out, r.At)
	}
	return out
}

func TestPoissonRate(t *testing.T) {
	tests := []struct {
		name string
		rate float64
		opts Options
		want float64 // observed requests per second
	}{
		{"rate 5", 5, Options{Seed: 1, MaxRequests: 100000}, 5},
		{"rate 200", 200, Options{Seed: 2, MaxRequests: 100000}, 200},
		{"rate 20 scaled by 1.5", 20, Options{Seed: 3, MaxRequests: 100000, RateScale: 1.5}, 30},
		{"rate 20 sped up 4 times", 20, Options{Seed: 4, MaxRequests: 100000, Speedup: 4}, 80},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			at := arrivalTimes(t, Arrival{Kind: ArrivalPoisson, Rate: tc.rate}, tc.opts)
			n := float64(len(at))
			rate := n / at[len(at)-1].Seconds()
			// 100,000 exponential gaps: the mean is within 1.5% (4.7 standard
			// deviations) for all but a few seeds in a million.
			if math.Abs(rate-tc.want) > 0.015*tc.want {
				t.Errorf("observed rate %.3f/s, want %.3f/s", rate, tc.want)
			}
			// Exponential gaps: standard deviation equals the mean.
			var sum, sum2 float64
			prev := 0.0
			for _, a := range at {
				g := a.Seconds() - prev
				prev = a.Seconds()
				sum += g
				sum2 += g * g
			}
			mean := sum / n
			cv := math.Sqrt(sum2/n-mean*mean) / mean
			if math.Abs(cv-1) > 0.05 {
				t.Errorf("coefficient of variation of gaps = %.3f, want 1 (Poisson)", cv)
			}
		})
	}
}

func TestConstantRate(t *testing.T) {
	at := arrivalTimes(t, Arrival{Kind: ArrivalConstant, Rate: 4}, Options{MaxDuration: 10 * time.Second})
	if len(at) != 40 {
		t.Fatalf("%d requests in 10 s at 4/s, want 40", len(at))
	}
	for i, a := range at {
		if want := time.Duration(i) * 250 * time.Millisecond; a != want {
			t.Fatalf("request %d at %s, want %s", i, a, want)
		}
	}
}

func TestLadderSteps(t *testing.T) {
	steps := []Step{
		{Rate: 50, Duration: Duration{20 * time.Second}},
		{Rate: 0, Duration: Duration{5 * time.Second}}, // a pause
		{Rate: 200, Duration: Duration{10 * time.Second}},
		{Rate: 10, Duration: Duration{30 * time.Second}},
	}
	at := arrivalTimes(t, Arrival{Kind: ArrivalLadder, Steps: steps}, Options{Seed: 8})
	start := time.Duration(0)
	for i, s := range steps {
		end := start + s.Duration.Duration
		n := 0
		for _, a := range at {
			if a >= start && a < end {
				n++
			}
		}
		want := s.Rate * s.Duration.Seconds()
		// Within five standard deviations of a Poisson count.
		if math.Abs(float64(n)-want) > 5*math.Sqrt(want)+0.5 {
			t.Errorf("step %d [%s, %s): %d requests, want about %.0f", i, start, end, n, want)
		}
		start = end
	}
	if last := at[len(at)-1]; last >= start {
		t.Errorf("a request at %s, after the ladder ended at %s", last, start)
	}
}

func TestLLMDLadder(t *testing.T) {
	steps := LLMDLadder()
	var total time.Duration
	var want float64
	for _, s := range steps {
		total += s.Duration.Duration
		want += s.Rate * s.Duration.Seconds()
	}
	if len(steps) != 17 || total != 502*time.Second || want != 17084 {
		t.Fatalf("ladder: %d steps, %s, %.0f expected requests; want 17 steps, 502s, 17,084", len(steps), total, want)
	}
	if steps[0].Rate != 15 || steps[0].Duration.Duration != 50*time.Second || steps[16].Rate != 60 || steps[16].Duration.Duration != 25*time.Second {
		t.Errorf("warm-up or last step wrong: %+v, %+v", steps[0], steps[16])
	}
	w, err := New(untimed(t), Arrival{Kind: ArrivalLadder, Preset: LadderPresetLLMD}, Options{Seed: 1})
	if err != nil {
		t.Fatal(err)
	}
	if n := float64(w.Len()); math.Abs(n-want) > 5*math.Sqrt(want) {
		t.Errorf("%.0f requests, want about %.0f", n, want)
	}
	if d := w.Duration(); d > 502*time.Second || d < 501*time.Second {
		t.Errorf("last request at %s, want just before 502s", d)
	}
}

func TestArrivalsDeterministic(t *testing.T) {
	for _, a := range []Arrival{
		{Kind: ArrivalPoisson, Rate: 10},
		{Kind: ArrivalLadder, Steps: []Step{{Rate: 5, Duration: Duration{10 * time.Second}}, {Rate: 20, Duration: Duration{10 * time.Second}}}},
	} {
		t.Run(a.Kind, func(t *testing.T) {
			opts := Options{Seed: 5, MaxRequests: 200}
			x, y := arrivalTimes(t, a, opts), arrivalTimes(t, a, opts)
			opts.Seed = 6
			z := arrivalTimes(t, a, opts)
			same, other := len(x) == len(y), len(x) == len(z)
			for i := range min(len(x), len(y), len(z)) {
				same = same && x[i] == y[i]
				other = other && x[i] == z[i]
			}
			if !same {
				t.Error("one seed gives two arrival sequences")
			}
			if other {
				t.Error("seeds 5 and 6 give the same arrivals")
			}
		})
	}
}
