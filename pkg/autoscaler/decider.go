package autoscaler

import (
	"fmt"
	"math"
	"time"

	"github.com/llmd-kn/llmd-kn/pkg/engine"
)

// RoleDecision explains one role's recommendation.
type RoleDecision struct {
	// Desired is the recommended replica count.
	Desired int `json:"desired"`
	// Ready is the ready replicas the decision was based on.
	Ready int `json:"ready"`
	// Required is this tick's load in replicas (fractional) from finished
	// requests, Arrived the same from arrivals; Stable and Panic are the
	// larger of their averages over the stable and panic windows.
	Required float64 `json:"required"`
	Arrived  float64 `json:"arrived,omitempty"`
	Stable   float64 `json:"stable"`
	Panic    float64 `json:"panic"`
	// Backlog is the replicas that drain the queued prompts within the
	// TTFT target, added to this tick's decision only.
	Backlog float64 `json:"backlog"`
	// Interference is, for a replica that is not disaggregated, the
	// replicas its TPOT target needs given how its prefill chunks slow its
	// decodes (ColocatedNeed), the larger of the completion and arrival
	// estimates; Required and Arrived are at least their own.
	Interference float64 `json:"interference,omitempty"`
	// InPanic reports panic mode (no scale-down).
	InPanic bool `json:"inPanic"`
	// Correction is the role's fitted step-time correction factor.
	Correction float64 `json:"correction"`
}

// Recommendation is the decider's output at one tick.
type Recommendation struct {
	At time.Time `json:"at"`
	// Prefill and Decode are the desired replicas; a revision that is not
	// disaggregated gets its one count in Decode and Prefill 0.
	Prefill int `json:"prefill"`
	Decode  int `json:"decode"`
	// Advisory marks a recommendation the caller must not act on.
	Advisory bool `json:"advisory"`
	// Poked is set on Poke's answer.
	Poked bool `json:"poked"`
	// DecodeOnly is set when the prefill role is held at zero and decode
	// carries the prefill load (Config.DecodeOnlyLoad).
	DecodeOnly      bool            `json:"decodeOnly"`
	PrefillRole     RoleDecision    `json:"prefillRole"`
	DecodeRole      RoleDecision    `json:"decodeRole"`
	PrefillCapacity PrefillCapacity `json:"prefillCapacity"`
	DecodeCapacity  DecodeCapacity  `json:"decodeCapacity"`
	// BatchShare is the fraction of the batch tier's load counted this
	// tick (Decider.BatchShare; 1 without batch work).
	BatchShare float64 `json:"batchShare"`
}

func (r Recommendation) String() string {
	s := fmt.Sprintf("%dP+%dD", r.Prefill, r.Decode)
	if r.Advisory {
		s += " (advisory)"
	}
	return s
}

type sample struct {
	at time.Time
	v  float64
}

const (
	rolePrefill = 0
	roleDecode  = 1
	// maxRequired bounds a role's load in replicas so that counts stay
	// representable whatever the inputs.
	maxRequired = 1e6
)

// roleState is one role's Knative-like scaling state.
type roleState struct {
	window       []sample // required replicas, within the stable window
	arrivals     []sample // the same from arrival rates
	delay        []sample // desired counts, within the scale-down delay
	panicTime    time.Time
	maxPanicPods int
	lastActive   time.Time
	last         int
	correction   float64
}

// Decider recommends replica counts for one revision. Create it with New;
// call Scale every tick and Poke when a request is buffered at zero.
type Decider struct {
	cfg   Config
	prof  engine.Profile
	roles [2]roleState
	// Last known mean request shape; ctx 0 means prompt + output/2.
	prompt, cached, output, ctx float64
	// fc is the arrival forecast's state (Config.Forecast).
	fc forecaster
}

// New returns a decider for a revision served with profile prof.
func New(cfg Config, prof engine.Profile) (*Decider, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if err := prof.Validate(); err != nil {
		return nil, err
	}
	d := &Decider{cfg: cfg, prof: prof,
		prompt: float64(cfg.AssumedPromptTokens), output: float64(cfg.AssumedOutputTokens)}
	for i := range d.roles {
		d.roles[i].correction = 1
	}
	return d, nil
}

// Config returns the decider's configuration.
func (d *Decider) Config() Config { return d.cfg }

// Corrections returns the fitted prefill and decode correction factors
// (observed over predicted step time).
func (d *Decider) Corrections() (prefill, decode float64) {
	return d.roles[rolePrefill].correction, d.roles[roleDecode].correction
}

// Capacity returns the current load functions' values for the last known
// request shape, with the fitted corrections.
func (d *Decider) Capacity() (PrefillCapacity, DecodeCapacity) {
	return PrefillLoadFunction(&d.prof, &d.cfg, d.prompt, d.cached, d.roles[rolePrefill].correction),
		DecodeLoadFunction(&d.prof, &d.cfg, d.context(), d.roles[roleDecode].correction)
}

func (d *Decider) context() float64 {
	if d.ctx > 0 {
		return d.ctx
	}
	return d.prompt + d.output/2
}

// Scale computes the recommendation at now from this tick's input. Calls
// must come with non-decreasing now.
func (d *Decider) Scale(now time.Time, in Input) Recommendation {
	l := &in.Load
	if l.MeanPromptTokens > 0 {
		d.prompt, d.cached = l.MeanPromptTokens, min(l.MeanCachedTokens, l.MeanPromptTokens)
	} else if a := l.Arrivals(); a > 0 && l.ArrivedPromptTokensPerSecond > 0 {
		// Nothing finished yet (a burst, or the first requests from zero):
		// the arrivals' mean prompt, with the last known cached share.
		prompt := l.ArrivedPromptTokensPerSecond / a
		d.cached *= prompt / d.prompt
		d.prompt = prompt
	}
	if l.MeanOutputTokens > 0 {
		d.output = l.MeanOutputTokens
	}
	if l.MeanContextTokens > 0 {
		d.ctx = l.MeanContextTokens
	}
	prefillPods, decodePods := in.Pods.Prefill, in.Pods.Decode
	if !d.cfg.Disaggregated {
		prefillPods = decodePods
	}
	d.fitCorrections(prefillPods, decodePods)
	batchShare := d.BatchShare(l) // batch work counts up to llm-d.ai/batch-max-replicas (batch.go)
	inter := l.withBatchShare(0)
	batchOnly := batchShare < 1 && !inter.active()
	*l = l.withBatchShare(batchShare)
	pc, dc := d.Capacity()

	// This tick's load in replicas of each role. Prefill: the uncached
	// prefill rate. Decode: the output token rate, and at least the
	// concurrent sequences (in flight and queued) over the sequences one
	// replica holds.
	//
	// The queued prompts are a backlog, not a rate: draining them within
	// the TTFT target needs prefillBacklog replicas now, on top of the
	// windowed load, and no more once they are served. It is not averaged
	// into the windows (where a backlog that lasts k ticks would count k
	// times and linger for the whole window) and does not start panic
	// mode (whose hold would keep the replicas it asked for a stable
	// window after the backlog drained). A backlog builds while replicas
	// start: counted as a rate it made every cold start a panic.
	//
	// Rates come from finished requests (their token counts are known) and
	// from arrivals (known a service time earlier: their output at the
	// mean output length, their cached share the last known one). Each
	// gives a load in replicas, averaged over the windows apart, and the
	// larger average counts: a burst scales up when it arrives, while the
	// tick-to-tick noise of two estimates does not add up as it would in
	// an average of their maximum. Without arrival counters (an older
	// activator) the arrival load is zero and completions decide alone.
	uncachedPerReq := max(d.prompt-d.cached, 1)
	prefillBacklog := float64(l.Queued) * uncachedPerReq / d.cfg.SLO.TTFT.Seconds() / pc.TokensPerSecond
	concurrency := float64(l.InFlight+l.Queued) / (d.cfg.TargetUtilization * float64(dc.Sequences))
	shape := Shape{Prompt: d.prompt, Cached: d.cached, Output: d.output, Context: d.ctx}
	type need struct{ prefill, decode, interference float64 }
	needOf := func(prefillRate, outputRate float64) need {
		n := need{prefill: prefillRate / pc.TokensPerSecond, decode: max(outputRate/dc.TokensPerSecond, concurrency)}
		if !d.cfg.Disaggregated {
			n.interference = ColocatedNeed(&d.prof, &d.cfg, shape, prefillRate, outputRate, d.roles[roleDecode].correction)
		}
		return n
	}
	done := needOf(l.UncachedPrefillTokensPerSecond, l.OutputTokensPerSecond)
	arrived := need{}
	if a := l.Arrivals(); a > 0 || l.ArrivedPromptTokensPerSecond > 0 {
		arrived = needOf(l.ArrivedPromptTokensPerSecond*uncachedPerReq/max(d.prompt, 1), a*d.output)
	}

	// With a forecast, the arrivals expected when a replica asked for now
	// could serve, where more than now's (forecast.go).
	if d.cfg.Forecast.Enabled() {
		rate := max(l.Arrivals(), l.Requests())
		prompt := l.ArrivedPromptTokensPerSecond
		if prompt <= 0 {
			prompt = rate * d.prompt
		}
		r, p := d.fc.ahead(now, rate, prompt, d.cfg.Forecast, d.cfg.forecastHorizon())
		f := needOf(p*uncachedPerReq/max(d.prompt, 1), r*d.output)
		arrived = need{prefill: max(arrived.prefill, f.prefill), decode: max(arrived.decode, f.decode),
			interference: max(arrived.interference, f.interference)}
	}

	// At the SLO percentile, the load that may arrive while a replica
	// cold-starts (BurstHeadroom; 1 without ColdStart).
	if h := BurstHeadroom(max(l.Arrivals(), l.Requests()), d.cfg.ColdStart, d.cfg.SLO.Percentile); h > 1 {
		for _, n := range []*need{&done, &arrived} {
			n.prefill *= h
			n.decode *= h
			n.interference *= h
		}
	}

	rec := Recommendation{At: now, Advisory: d.cfg.Advisory, PrefillCapacity: pc, DecodeCapacity: dc, BatchShare: batchShare}
	active := l.active()
	if !d.cfg.Disaggregated {
		// One replica time-shares prefill and decode: the fractions add,
		// and its prefill chunks slow its decodes (ColocatedNeed: enough
		// replicas that TPOT meets the target at the percentile).
		colocated := func(n need) float64 { return max(n.prefill+n.decode, n.interference) }
		rec.Decode = d.scaleRole(roleDecode, now, colocated(done), colocated(arrived), prefillBacklog, active, decodePods.Ready, d.cfg.Decode, &rec.DecodeRole)
		rec.DecodeRole.Interference = max(done.interference, arrived.interference)
		d.roles[rolePrefill].last = 0
		return d.capBatchOnly(rec, batchOnly, prefillPods.Ready, decodePods.Ready)
	}
	if d.cfg.DecodeOnlyLoad > 0 && max(done.prefill, arrived.prefill) < d.cfg.DecodeOnlyLoad {
		rec.DecodeOnly = true
		done.decode += done.prefill + prefillBacklog
		arrived.decode += arrived.prefill + prefillBacklog
		done.prefill, arrived.prefill, prefillBacklog = 0, 0, 0
	}
	rec.Prefill = d.scaleRole(rolePrefill, now, done.prefill, arrived.prefill, prefillBacklog, active && !rec.DecodeOnly, prefillPods.Ready, d.cfg.Prefill, &rec.PrefillRole)
	rec.Decode = d.scaleRole(roleDecode, now, done.decode, arrived.decode, 0, active, decodePods.Ready, d.cfg.Decode, &rec.DecodeRole)
	return d.capBatchOnly(rec, batchOnly, prefillPods.Ready, decodePods.Ready)
}

// scaleRole applies Knative's KPA rules to one role's windowed load (the
// larger of the completion-based required and the arrival-based arrived,
// each averaged over the windows), and adds the replicas that drain the
// backlog now.
func (d *Decider) scaleRole(role int, now time.Time, required, arrived, backlog float64, active bool, ready int, b Bounds, out *RoleDecision) int {
	cfg := &d.cfg
	rs := &d.roles[role]
	if math.IsNaN(required) || required < 0 {
		required = 0
	}
	if math.IsNaN(arrived) || arrived < 0 {
		arrived = 0
	}
	arrived = math.Min(arrived, maxRequired)
	if math.IsNaN(backlog) || backlog < 0 {
		backlog = 0
	}
	required = math.Min(required, maxRequired)
	backlog = math.Min(backlog, maxRequired)
	if active {
		rs.lastActive = now
	}
	rs.window = append(trim(rs.window, now.Add(-cfg.StableWindow)), sample{now, required})
	rs.arrivals = append(trim(rs.arrivals, now.Add(-cfg.StableWindow)), sample{now, arrived})
	stable := math.Max(average(rs.window, now.Add(-cfg.StableWindow)), average(rs.arrivals, now.Add(-cfg.StableWindow)))
	panicAvg := math.Max(average(rs.window, now.Add(-cfg.panicWindow())), average(rs.arrivals, now.Add(-cfg.panicWindow())))

	readyF := math.Max(1, float64(ready))
	maxUp := math.Ceil(cfg.MaxScaleUpRate * readyF)
	maxDown := math.Floor(readyF / cfg.MaxScaleDownRate)
	dspc, dppc := ceil(stable), ceil(panicAvg)
	desiredStable := int(math.Min(math.Max(dspc, maxDown), maxUp))
	desiredPanic := int(math.Min(math.Max(dppc, maxDown), maxUp))

	over := dppc/readyF >= cfg.PanicThresholdPercentage/100
	switch {
	case over:
		rs.panicTime = now
	case !rs.panicTime.IsZero() && rs.panicTime.Add(cfg.StableWindow).Before(now):
		rs.panicTime, rs.maxPanicPods = time.Time{}, 0
	}
	desired := desiredStable
	if !rs.panicTime.IsZero() {
		desired = max(desired, desiredPanic, rs.maxPanicPods)
		rs.maxPanicPods = desired
	}
	if backlog > 0 {
		withBacklog := stable
		if !rs.panicTime.IsZero() {
			withBacklog = math.Max(stable, panicAvg)
		}
		desired = max(desired, int(math.Min(ceil(withBacklog+backlog), maxUp)))
	}

	// Scale to zero: after the grace period with no traffic the role may go
	// to zero (still at the scale-down rate); before it, a role that is up
	// keeps at least one replica.
	idle := rs.lastActive.IsZero() || now.Sub(rs.lastActive) >= cfg.ScaleToZeroGracePeriod
	switch {
	case cfg.EnableScaleToZero && idle && rs.panicTime.IsZero():
		desired = int(maxDown)
		rs.window, rs.arrivals = rs.window[:0], rs.arrivals[:0]
	case desired == 0 && (!cfg.EnableScaleToZero || rs.last > 0 || ready > 0):
		desired = 1
	}

	if cfg.ScaleDownDelay > 0 {
		rs.delay = append(trim(rs.delay, now.Add(-cfg.ScaleDownDelay)), sample{now, float64(desired)})
		for _, s := range rs.delay {
			desired = max(desired, int(s.v))
		}
	}
	desired = clampBounds(desired, b)
	rs.last = desired
	*out = RoleDecision{Desired: desired, Ready: ready, Required: required, Arrived: arrived, Backlog: backlog, Stable: stable, Panic: panicAvg,
		InPanic: !rs.panicTime.IsZero(), Correction: rs.correction}
	return desired
}

// Poke is the activator's signal that a request is buffered for this
// revision: a role at zero is asked for one replica now rather than at the
// next tick. With DecodeOnlyLoad set only decode wakes. Poke also counts as
// traffic for the grace period.
func (d *Decider) Poke(now time.Time) Recommendation {
	rec := Recommendation{At: now, Advisory: d.cfg.Advisory, Poked: true}
	wake := func(role int, b Bounds) int {
		rs := &d.roles[role]
		rs.lastActive = now
		rs.last = clampBounds(max(rs.last, 1), b)
		if d.cfg.ScaleDownDelay > 0 {
			rs.delay = append(trim(rs.delay, now.Add(-d.cfg.ScaleDownDelay)), sample{now, float64(rs.last)})
		}
		return rs.last
	}
	rec.Decode = wake(roleDecode, d.cfg.Decode)
	rec.DecodeRole = RoleDecision{Desired: rec.Decode, Correction: d.roles[roleDecode].correction}
	if d.cfg.Disaggregated {
		if d.cfg.DecodeOnlyLoad > 0 {
			rec.DecodeOnly = true
			rec.Prefill = d.roles[rolePrefill].last
		} else {
			rec.Prefill = wake(rolePrefill, d.cfg.Prefill)
		}
		rec.PrefillRole = RoleDecision{Desired: rec.Prefill, Correction: d.roles[rolePrefill].correction}
	}
	return rec
}

// fitCorrections folds this tick's observed/predicted step-time ratios into
// the per-role EWMA correction factors, each ratio and factor clamped to
// [CorrectionMin, CorrectionMax]. Predictions use the uncorrected profile,
// so a consistently wrong profile converges geometrically.
func (d *Decider) fitCorrections(prefill, decode Telemetry) {
	clamp := func(v float64) float64 { return math.Min(math.Max(v, d.cfg.CorrectionMin), d.cfg.CorrectionMax) }
	fold := func(rs *roleState, ratio float64) {
		if ratio > 0 && !math.IsInf(ratio, 0) && !math.IsNaN(ratio) {
			a := d.cfg.CorrectionSmoothing
			rs.correction = clamp((1-a)*rs.correction + a*clamp(ratio))
		}
	}
	if prefill.Ready > 0 && prefill.PrefillTokensPerSecond > 0 {
		raw := PrefillLoadFunction(&d.prof, &d.cfg, d.prompt, d.cached, 1)
		fold(&d.roles[rolePrefill], raw.Throughput/prefill.PrefillTokensPerSecond)
	}
	if decode.Ready > 0 && decode.DecodeStepTime > 0 {
		batch := decode.DecodeBatch
		if batch <= 0 {
			batch = float64(decode.Running)
		}
		if n := int(math.Round(batch)); n > 0 {
			ctx := d.context()
			in := make([]engine.StepInput, n)
			for i := range in {
				in[i] = engine.StepInput{Query: 1, Context: int(math.Round(ctx))}
			}
			if pred := d.prof.StepTime(in); pred > 0 {
				fold(&d.roles[roleDecode], decode.DecodeStepTime.Seconds()/pred.Seconds())
			}
		}
	}
}

func clampBounds(n int, b Bounds) int {
	n = max(n, b.MinScale)
	if b.MaxScale > 0 {
		n = min(n, b.MaxScale)
	}
	return n
}

// ceil rounds up, forgiving float noise just above an integer.
func ceil(v float64) float64 { return math.Ceil(v - 1e-9) }

// trim drops samples at or before since.
func trim(s []sample, since time.Time) []sample {
	i := 0
	for i < len(s) && !s[i].at.After(since) {
		i++
	}
	return append(s[:0], s[i:]...)
}

// average is the mean of the samples after since (0 when none).
func average(s []sample, since time.Time) float64 {
	var sum float64
	var n int
	for _, x := range s {
		if x.at.After(since) {
			sum += x.v
			n++
		}
	}
	if n == 0 {
		return 0
	}
	return sum / float64(n)
}
