package plan

import (
	"errors"
	"fmt"
	"slices"
	"time"
)

// ClairvoyantBound is the cheapest provisioning that serves every window's
// need (LowerBound.Replicas, the load functions' replicas for the load that
// arrived in the window) when replicas obey the rules a real autoscaler
// obeys: a replica is paid for from the moment it is asked for and serves
// StartupDelay later, and the last replica stays up ScaleToZeroGrace after
// the last window with load before the fleet may reach zero. The policy
// knows every arrival in advance (it asks for replicas exactly StartupDelay
// before they are needed); below one replica it scales down at once.
//
// It is exact, not greedy: with replicas interchangeable, provisioning
// decomposes into levels (the j-th replica is needed where the need is at
// least j), and each level's cheapest plan is independent: over a gap
// between two stretches of need it either stays up (paying the gap) or
// stops and starts again (paying StartupDelay), whichever is shorter; its
// first start pays StartupDelay. Level one's gaps begin with the grace it
// must wait. A gap that level j+1 bridges holds no shorter gap of level j
// unbridged, so the levels' plans stack into one plan, and their sum is
// the minimum. It is a bound under the load-function model: no policy that
// provisions the load functions' replicas in every window, under the same
// cold start and grace, pays less; a policy that serves fewer replicas than
// the load functions ask (and misses more) can.
type ClairvoyantBound struct {
	Window           time.Duration `json:"window"`
	StartupDelay     time.Duration `json:"startupDelay"`
	ScaleToZeroGrace time.Duration `json:"scaleToZeroGrace"`
	// Need is the replicas serving in each window (the lower bound's).
	Need []int `json:"need"`
	// Provisioned is the replica count paid for over time, startups and
	// kept gaps included: steps at the given offsets from time 0 (the
	// first may be negative: replicas asked for before the trace starts).
	Provisioned []Step `json:"provisioned"`
	// ReplicaSeconds is the area under Provisioned from time 0 to the last
	// answer, as the planner counts a run's (what was asked for before 0
	// is ready at 0, as a fixed fleet is; the grace after the last answer
	// is not counted); GPUSeconds multiplies by the accelerators per
	// replica.
	ReplicaSeconds float64 `json:"replicaSeconds"`
	GPUSeconds     float64 `json:"gpuSeconds"`
	Peak           int     `json:"peak"`
	ColdStarts     int     `json:"coldStarts"`
	ScaleEvents    int     `json:"scaleEvents"`
}

// Step is a replica count from At on.
type Step struct {
	At       time.Duration `json:"at"`
	Replicas int           `json:"replicas"`
}

// ComputeClairvoyantBound derives the clairvoyant bound from a lower bound
// (its per-window need) for replicas of gpus accelerators each.
func ComputeClairvoyantBound(lb LowerBound, startup, grace time.Duration, gpus int) (ClairvoyantBound, error) {
	cb := ClairvoyantBound{Window: lb.Window, StartupDelay: startup, ScaleToZeroGrace: grace, Need: lb.Replicas}
	if lb.Window <= 0 {
		return cb, errors.New("clairvoyant bound: window must be positive")
	}
	if startup < 0 || grace < 0 {
		return cb, fmt.Errorf("clairvoyant bound: startup delay %s and grace %s must not be negative", startup, grace)
	}
	n := len(lb.Replicas)
	if n == 0 {
		return cb, nil
	}
	end := lb.End
	if end <= time.Duration(n-1)*lb.Window || end > time.Duration(n)*lb.Window {
		end = time.Duration(n) * lb.Window
	}
	winStart := func(k int) time.Duration { return time.Duration(k) * lb.Window }
	winEnd := func(k int) time.Duration { return min(time.Duration(k+1)*lb.Window, end) }

	// Each level's on-intervals, as +1/-1 events on the time line.
	type event struct {
		at time.Duration
		d  int
	}
	var events []event
	for j := 1; j <= slices.Max(lb.Replicas); j++ {
		// Runs of windows with need >= j.
		type run struct{ from, to time.Duration }
		var runs []run
		for k := 0; k < n; k++ {
			if lb.Replicas[k] < j {
				continue
			}
			if len(runs) > 0 && runs[len(runs)-1].to == winStart(k) {
				runs[len(runs)-1].to = winEnd(k)
			} else {
				runs = append(runs, run{winStart(k), winEnd(k)})
			}
		}
		on := runs[0].from - startup // asked for a startup ahead
		cb.ColdStarts++
		for i, r := range runs {
			stop := r.to
			if j == 1 {
				stop += grace // the last replica waits out the grace
			}
			if i+1 < len(runs) {
				next := runs[i+1].from
				if stop >= next || next-stop <= startup {
					continue // bridge: staying up costs no more than a restart
				}
			}
			events = append(events, event{on, +1}, event{stop, -1})
			if i+1 < len(runs) {
				on = runs[i+1].from - startup
				cb.ColdStarts++
			}
		}
	}
	slices.SortStableFunc(events, func(a, b event) int {
		switch {
		case a.at < b.at:
			return -1
		case a.at > b.at:
			return 1
		}
		return 0
	})
	cur := 0
	for i, e := range events {
		cur += e.d
		if i+1 < len(events) && events[i+1].at == e.at {
			continue
		}
		cb.Provisioned = append(cb.Provisioned, Step{At: e.at, Replicas: cur})
		cb.Peak = max(cb.Peak, cur)
		cb.ScaleEvents++
	}
	// Counted as the planner counts a run's provisioning: from time 0 (a
	// fleet is ready then, as a fixed one is) to the last answer.
	for i, st := range cb.Provisioned {
		to := end
		if i+1 < len(cb.Provisioned) {
			to = min(to, cb.Provisioned[i+1].At)
		}
		if from := max(st.At, 0); to > from {
			cb.ReplicaSeconds += float64(st.Replicas) * (to - from).Seconds()
		}
	}
	cb.GPUSeconds = cb.ReplicaSeconds * float64(max(gpus, 1))
	return cb, nil
}

// At is the count provisioned at time t (0 before the first step).
func (cb *ClairvoyantBound) At(t time.Duration) int {
	i, found := slices.BinarySearchFunc(cb.Provisioned, t, func(s Step, t time.Duration) int {
		switch {
		case s.At < t:
			return -1
		case s.At > t:
			return 1
		}
		return 0
	})
	if !found {
		i--
	}
	if i < 0 {
		return 0
	}
	return cb.Provisioned[i].Replicas
}

// Scaler replays the bound's provisioning in a run ticking every tick, so
// that its attainment is measured: at every tick it asks for the most
// replicas the plan provisions before the next tick (those still starting
// included), so that no start is late by a tick. Run it with the bound's
// StartupDelay as the run's startup delay and Initial replicas ready at
// time 0 (those the plan asked for before the trace).
func (cb *ClairvoyantBound) Scaler(tick time.Duration) Scaler {
	return ScalerFunc(func(obs *Observation) Replicas {
		n := cb.At(obs.Now)
		for _, s := range cb.Provisioned {
			if s.At > obs.Now && s.At < obs.Now+tick {
				n = max(n, s.Replicas)
			}
		}
		return Replicas{Decode: n}
	})
}

// Initial is the replicas the plan asked for before time 0.
func (cb *ClairvoyantBound) Initial() int { return cb.At(0) }

// PolicyOfClairvoyant presents the bound as a policy row; res, when not
// nil, is the run that replayed it (for its attainment).
func PolicyOfClairvoyant(cb ClairvoyantBound, res *PolicyResult) PolicyResult {
	p := PolicyResult{Policy: "clairvoyant",
		Detail: fmt.Sprintf("knows every arrival; per %s window, cold start %s, scale-to-zero grace %s", cb.Window, cb.StartupDelay, cb.ScaleToZeroGrace)}
	if res != nil {
		p = *res
		p.Policy, p.Detail = "clairvoyant", fmt.Sprintf("knows every arrival; per %s window, cold start %s, scale-to-zero grace %s, replayed", cb.Window, cb.StartupDelay, cb.ScaleToZeroGrace)
	}
	p.ReplicaSeconds, p.GPUSeconds, p.Peak, p.ColdStarts, p.ScaleEvents = cb.ReplicaSeconds, cb.GPUSeconds, cb.Peak, cb.ColdStarts, cb.ScaleEvents
	p.Bound, p.Clairvoyant = true, true
	p.Measured = res != nil
	return p
}
