package workload

import (
	"iter"
	"slices"
	"sync"
	"time"
)

// Options shape a workload's timing and length.
type Options struct {
	// Seed drives the arrival process.
	Seed uint64
	// Speedup divides every arrival time: 2 replays an hour of trace in 30
	// minutes at twice the rate. 0 means 1.
	Speedup float64
	// RateScale multiplies the rates of poisson, constant and ladder
	// arrivals, keeping ladder step durations. It cannot apply to trace
	// timestamps (use Speedup). 0 means 1.
	RateScale float64
	// MaxRequests keeps only the first MaxRequests requests; 0 means all.
	MaxRequests int
	// MaxDuration keeps only requests that arrive before it (after Speedup);
	// 0 means no limit.
	MaxDuration time.Duration
	// IdleEvery and IdleGap insert idle gaps: after every IdleEvery of
	// arrival time (after Speedup and MaxDuration), IdleGap passes with no
	// arrival, so that a replay sees scale to zero and cold starts (a
	// request at t arrives at t + floor(t/IdleEvery)*IdleGap). Both 0: no
	// gaps.
	IdleEvery, IdleGap time.Duration
}

// Workload is a dataset with an arrival process and limits: a finite,
// deterministic sequence of timed requests. It is immutable and safe for
// concurrent use; each Source (or All) iterates it from the start.
type Workload struct {
	ds      Dataset
	arrival Arrival
	opts    Options

	countOnce sync.Once
	n         int
	last      time.Duration
}

// New returns the workload of ds with arrival process a. The Arrival's Kind
// may be empty for a dataset with timestamps (then it is ArrivalTrace). A
// workload must be bounded: an endless dataset needs a ladder, MaxRequests
// or MaxDuration. Errors are FieldErrors named as in a Spec.
func New(ds Dataset, a Arrival, opts Options) (*Workload, error) {
	var v validator
	timed := ds.Timed()
	a.validate(&v, "arrival.", timed)
	if a.Kind == "" {
		a.Kind = ArrivalTrace
	}
	opts.validate(&v, a.Kind)
	if ds.Len() < 0 && a.Kind != ArrivalLadder && opts.MaxRequests == 0 && opts.MaxDuration == 0 {
		v.add("", "the workload never ends: the dataset is endless and %s arrivals are too; set maxRequests or maxDuration", a.Kind)
	}
	if err := v.err(); err != nil {
		return nil, err
	}
	a.Steps = slices.Clone(a.Steps) // the caller may reuse its slice
	if opts.Speedup == 0 {
		opts.Speedup = 1
	}
	if opts.RateScale == 0 {
		opts.RateScale = 1
	}
	return &Workload{ds: ds, arrival: a, opts: opts}, nil
}

func (o Options) validate(v *validator, kind string) {
	v.check(o.Speedup == 0 || (o.Speedup > 0 && o.Speedup <= 1e6), "speedup", "must be in (0, 1e6], got %g", o.Speedup)
	v.check(o.RateScale == 0 || (o.RateScale > 0 && o.RateScale <= 1e6), "rateScale", "must be in (0, 1e6], got %g", o.RateScale)
	v.check(o.RateScale == 0 || o.RateScale == 1 || kind != ArrivalTrace, "rateScale", "does not apply to trace timestamps; use speedup")
	v.check(o.MaxRequests >= 0, "maxRequests", "must not be negative, got %d", o.MaxRequests)
	v.check(o.MaxDuration >= 0, "maxDuration", "must not be negative, got %s", o.MaxDuration)
	v.check(o.IdleEvery >= 0 && o.IdleGap >= 0, "idleGap", "idleEvery and idleGap must not be negative")
	v.check((o.IdleEvery == 0) == (o.IdleGap == 0), "idleGap", "idleEvery and idleGap go together")
	v.check(o.IdleEvery == 0 || o.IdleEvery >= time.Second, "idleEvery", "must be at least 1s, got %s", o.IdleEvery)
	v.check(o.IdleGap <= 24*time.Hour, "idleGap", "must be at most 24h, got %s", o.IdleGap)
}

// Dataset returns the workload's dataset.
func (w *Workload) Dataset() Dataset { return w.ds }

// Arrival returns the workload's arrival process.
func (w *Workload) Arrival() Arrival {
	a := w.arrival
	a.Steps = slices.Clone(a.Steps)
	return a
}

// Options returns the workload's options, with defaults filled in.
func (w *Workload) Options() Options { return w.opts }

// Source returns an iterator over the workload from its first request.
func (w *Workload) Source() Source {
	return &iterator{w: w, clock: newClock(w.arrival, w.opts.RateScale, w.opts.Seed)}
}

// All iterates over the workload's requests.
func (w *Workload) All() iter.Seq[Request] {
	return func(yield func(Request) bool) {
		it := w.Source()
		for {
			r, ok := it.Next()
			if !ok || !yield(r) {
				return
			}
		}
	}
}

// Len returns the number of requests. The first call of Len or Duration
// runs the arrival process through once, without making prompts; later
// calls are free.
func (w *Workload) Len() int {
	w.count()
	return w.n
}

// Duration returns the arrival time of the last request, or 0 for an empty
// workload.
func (w *Workload) Duration() time.Duration {
	w.count()
	return w.last
}

func (w *Workload) count() {
	w.countOnce.Do(func() {
		it := &iterator{w: w, clock: newClock(w.arrival, w.opts.RateScale, w.opts.Seed)}
		for _, ok := it.advance(false); ok; _, ok = it.advance(false) {
		}
		w.n, w.last = it.i, it.at
	})
}

type iterator struct {
	w     *Workload
	clock clock
	i     int           // requests yielded so far
	at    time.Duration // arrival time of the last one
	done  bool
}

func (it *iterator) Next() (Request, bool) { return it.advance(true) }

func (it *iterator) Len() int { return it.w.Len() }

// advance moves to the next request and returns it, made only when build is
// set, or reports the end.
func (it *iterator) advance(build bool) (Request, bool) {
	w := it.w
	if it.done || (w.opts.MaxRequests > 0 && it.i >= w.opts.MaxRequests) || (w.ds.Len() >= 0 && it.i >= w.ds.Len()) {
		it.done = true
		return Request{}, false
	}
	var r Request
	var at time.Duration
	if w.arrival.Kind == ArrivalTrace {
		r = w.ds.Request(it.i)
		at = r.At
		if w.opts.Speedup != 1 {
			at = nanos(float64(at) / w.opts.Speedup)
		}
	} else {
		t, ok := it.clock.next()
		if !ok {
			it.done = true
			return Request{}, false
		}
		at = nanos(t / w.opts.Speedup * 1e9)
		if build {
			r = w.ds.Request(it.i)
		}
	}
	if w.opts.MaxDuration > 0 && at >= w.opts.MaxDuration {
		it.done = true
		return Request{}, false
	}
	if w.opts.IdleEvery > 0 {
		at += (at / w.opts.IdleEvery) * w.opts.IdleGap
	}
	it.at = max(at, it.at) // rounding must not reorder
	r.Index, r.At = it.i, it.at
	it.i++
	return r, true
}
