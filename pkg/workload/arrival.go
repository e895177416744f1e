package workload

import (
	"encoding/json"
	"fmt"
	"math"
	"time"
)

// Arrival kinds.
const (
	// ArrivalTrace replays the dataset's own timestamps (traces only).
	ArrivalTrace = "trace"
	// ArrivalPoisson is a Poisson process of Rate requests per second.
	ArrivalPoisson = "poisson"
	// ArrivalConstant sends a request every 1/Rate seconds, the first at 0.
	ArrivalConstant = "constant"
	// ArrivalLadder runs Steps one after another, each a Poisson process of
	// its Rate for its Duration; the workload ends with the last step.
	ArrivalLadder = "ladder"
)

// LadderPresetLLMD names the ladder of LLMDLadder in an Arrival's Preset.
const LadderPresetLLMD = "llm-d"

// Arrival is an arrival process: when a workload's requests arrive.
type Arrival struct {
	// Kind is one of ArrivalTrace, ArrivalPoisson, ArrivalConstant and
	// ArrivalLadder. Empty means ArrivalTrace for trace datasets.
	Kind string `json:"kind,omitempty"`
	// Rate is requests per second, for poisson and constant.
	Rate float64 `json:"rate,omitempty"`
	// Steps is the ladder, for kind ladder (or Preset).
	Steps []Step `json:"steps,omitempty"`
	// Preset names a published ladder instead of Steps: "llm-d".
	Preset string `json:"preset,omitempty"`
}

// Step is one rung of a rate ladder. A zero Rate is a pause.
type Step struct {
	Rate     float64  `json:"rate"`
	Duration Duration `json:"duration"`
}

// Duration is a time.Duration written in YAML and JSON as a Go duration
// string, such as "50s" or "1h30m".
type Duration struct{ time.Duration }

// MarshalJSON writes the duration as a string.
func (d Duration) MarshalJSON() ([]byte, error) { return json.Marshal(d.String()) }

// UnmarshalJSON reads a duration string.
func (d *Duration) UnmarshalJSON(b []byte) error {
	var s string
	if err := json.Unmarshal(b, &s); err != nil {
		return fmt.Errorf("want a duration string such as \"90s\", got %s", b)
	}
	v, err := time.ParseDuration(s)
	if err != nil {
		return fmt.Errorf("want a duration string such as \"90s\", got %q", s)
	}
	d.Duration = v
	return nil
}

// LLMDLadder returns the QPS ladder of llm-d's shared-prefix benchmark
// ("KV-cache wins you can see"): a warm-up of 15 QPS for 50 s, then 3, 10,
// 15, 20, 22, 25, 30, 35, 40, 43, 46, 49, 52, 55, 57 and 60 QPS for 20, 20,
// 20, 38, 34, 30, 25, 21, 38, 36, 33, 30, 29, 27, 26 and 25 s: 502 s and
// about 17,100 requests in all.
func LLMDLadder() []Step {
	rates := []float64{15, 3, 10, 15, 20, 22, 25, 30, 35, 40, 43, 46, 49, 52, 55, 57, 60}
	secs := []int{50, 20, 20, 20, 38, 34, 30, 25, 21, 38, 36, 33, 30, 29, 27, 26, 25}
	steps := make([]Step, len(rates))
	for i := range steps {
		steps[i] = Step{Rate: rates[i], Duration: Duration{time.Duration(secs[i]) * time.Second}}
	}
	return steps
}

// maxRate bounds rates (requests per second) so that gaps stay well above a
// nanosecond.
const maxRate = 1e7

func validRate(r float64) bool { return r > 0 && r <= maxRate }

// validate checks a with the dataset's timing in mind; path prefixes the
// field names ("arrival.").
func (a Arrival) validate(v *validator, path string, timed bool) {
	switch a.Kind {
	case "":
		v.check(timed, path+"kind", "required: the dataset has no timestamps (poisson, constant or ladder)")
	case ArrivalTrace:
		v.check(timed, path+"kind", "trace needs a dataset with timestamps (mooncake or azure)")
	case ArrivalPoisson, ArrivalConstant, ArrivalLadder:
	default:
		v.add(path+"kind", "must be trace, poisson, constant or ladder, got %q", a.Kind)
		return
	}
	if a.Kind == ArrivalPoisson || a.Kind == ArrivalConstant {
		v.check(validRate(a.Rate), path+"rate", "must be in (0, %g] requests per second, got %g", float64(maxRate), a.Rate)
	} else {
		v.check(a.Rate == 0, path+"rate", "only for poisson and constant arrivals")
	}
	if a.Kind != ArrivalLadder {
		v.check(len(a.Steps) == 0, path+"steps", "only for ladder arrivals")
		v.check(a.Preset == "", path+"preset", "only for ladder arrivals")
		return
	}
	switch {
	case a.Preset != "" && len(a.Steps) > 0:
		v.add(path+"steps", "give steps or preset, not both")
	case a.Preset != "":
		v.check(a.Preset == LadderPresetLLMD, path+"preset", "unknown ladder %q (known: %s)", a.Preset, LadderPresetLLMD)
	case len(a.Steps) == 0:
		v.add(path+"steps", "required for ladder arrivals (or a preset)")
	}
	for i, s := range a.Steps {
		p := fmt.Sprintf("%ssteps[%d].", path, i)
		v.check(s.Rate == 0 || validRate(s.Rate), p+"rate", "must be in [0, %g] requests per second, got %g", float64(maxRate), s.Rate)
		v.check(s.Duration.Duration > 0, p+"duration", "must be positive, got %s", s.Duration)
	}
}

// steps returns the ladder's steps, the preset's if named.
func (a Arrival) steps() []Step {
	if a.Preset == LadderPresetLLMD {
		return LLMDLadder()
	}
	return a.Steps
}

// arrivalDomain separates arrival randomness from dataset randomness.
const arrivalDomain = 0x617272697661 // "arriva"

// clock produces the arrival times of a synthetic process in seconds. It is
// a value: copying it forks the sequence.
type clock struct {
	kind  string
	rate  float64 // poisson and constant, scaled
	steps []Step  // ladder, unscaled
	scale float64 // rate scale for ladder steps
	rng   rng
	n     int     // arrivals so far (constant)
	t     float64 // time of the last arrival, or the ladder's position
	step  int     // ladder: current step
	end   float64 // ladder: end of the current step
}

func newClock(a Arrival, rateScale float64, seed uint64) clock {
	c := clock{kind: a.Kind, rate: a.Rate * rateScale, steps: a.steps(), scale: rateScale}
	c.rng = rng{s: derive(seed, arrivalDomain, 0)}
	if len(c.steps) > 0 {
		c.end = c.steps[0].Duration.Seconds()
	}
	return c
}

// next returns the next arrival time in seconds, or false when the process
// has ended (after a ladder's last step).
func (c *clock) next() (float64, bool) {
	switch c.kind {
	case ArrivalConstant:
		t := float64(c.n) / c.rate
		c.n++
		return t, true
	case ArrivalPoisson:
		c.t += c.rng.exp() / c.rate
		return c.t, true
	}
	// A piecewise-constant-rate Poisson process: a gap that crosses the end
	// of a step is dropped and drawn afresh at the next step's rate, which is
	// exact because exponential gaps are memoryless.
	for c.step < len(c.steps) {
		rate := c.steps[c.step].Rate * c.scale
		if rate > 0 {
			t := c.t + c.rng.exp()/rate
			if t < c.end {
				c.t = t
				return t, true
			}
		}
		c.t = c.end
		c.step++
		if c.step < len(c.steps) {
			c.end += c.steps[c.step].Duration.Seconds()
		}
	}
	return 0, false
}

// nanos rounds a number of nanoseconds to a Duration, saturating instead of
// overflowing.
func nanos(ns float64) time.Duration {
	ns = math.Round(ns)
	if ns >= math.MaxInt64 {
		return math.MaxInt64
	}
	return time.Duration(ns)
}
