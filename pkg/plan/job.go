package plan

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/llmd-kn/llmd-kn/pkg/apis"
	"github.com/llmd-kn/llmd-kn/pkg/autoscaler"
	"github.com/llmd-kn/llmd-kn/pkg/bench"
	"github.com/llmd-kn/llmd-kn/pkg/engine"
	"github.com/llmd-kn/llmd-kn/pkg/router"
	"github.com/llmd-kn/llmd-kn/pkg/workload"
)

// Options are kn-llmd plan's settings as its flags give them, the
// workload's aside (the command opens the workload as kn-llmd bench does
// and hands it to Job.SetWorkload). NewJob validates them; its errors name
// the flags.
type Options struct {
	Engines, PrefillEngines int
	Profile                 string
	Routing                 string
	RouterConfig            string
	PDThreshold             int
	BlockSize               int
	MaxNumSeqs              int
	// MaxNumBatchedTokens is a token count or "auto" (ChooseStepBudget).
	MaxNumBatchedTokens    string
	NumBlocks, MaxModelLen int
	Model                  string
	NoIgnoreEOS            bool
	Seed                   uint64

	ScrapeInterval, StaleAfter time.Duration
	KVEventDelay, Overhead     time.Duration
	Timeout                    time.Duration
	FlowControl                bool
	MaxSaturation              float64
	MaxQueueTime               time.Duration
	MaxQueued                  int

	Out              string
	SLOTTFT, SLOTPOT time.Duration
	Bucket           time.Duration
	SaveRecords      bool
	Include          []string

	SweepReplicas, SweepPrefill string
	FindCapacity                bool
	TargetAttainment            float64
	MaxReplicas                 int

	Autoscaler       string
	MinEngines       int
	StartupDelay     time.Duration
	ScaleToZeroGrace time.Duration
	SLOPercentile    float64
	KPATarget        string
	KPAUtilization   float64
	LowerBoundWindow time.Duration
	PanicThreshold   float64
	ScaleDownDelay   time.Duration

	// KVOffload lists the KV offload modes to run, comma-separated: off,
	// on-scale-down, or both (one run each per routing profile; the
	// offloading run is named <routing>-kv-offload). KVOffloadMaxBytes
	// (a byte size, "" for unbounded) and KVOffloadDeadline shape it.
	KVOffload         string
	KVOffloadMaxBytes string
	KVOffloadDeadline time.Duration
	// KVPrefetchBytes (a byte size, "" for none) is what a new engine
	// prefetches while it starts.
	KVPrefetchBytes string
	// KVTiers lists the engine tier settings to run, comma-separated: on
	// (the sizes below, the default), off, or both (one run each per
	// routing profile; the tiered run is named <routing>-kv-tiers).
	// KVCPUTierBytes and KVDiskTierBytes (byte sizes, "" for none) size
	// the tiers.
	KVTiers                         string
	KVCPUTierBytes, KVDiskTierBytes string

	// BatchSoak is the batch backlog of a batch soak (0: none); the
	// Batch* fields shape its requests, SoakLoad and CriticalShare the
	// interactive traffic, SoakCritical and SoakStandard are the tiers'
	// targets (the activator's default tier table).
	BatchSoak                     int
	BatchInputLen, BatchOutputLen int
	BatchConcurrency              int
	BatchMaxSaturation            float64
	BatchMaxPerPod                int
	BatchMaxPrefillPerPod         int
	BatchYield                    bool
	SoakLoad, CriticalShare       float64
	SoakCritical, SoakStandard    bench.SLO

	// Command is the invocation, for an autoscaling comparison's or a
	// batch soak's report.
	Command string
	// Changed reports whether the flag of that name was given (its
	// default then counts as a choice); nil: none was.
	Changed func(flag string) bool
}

// DefaultOptions are kn-llmd plan's flag defaults.
func DefaultOptions() Options {
	a, b := autoscaler.DefaultConfig(), DefaultBatch(0)
	return Options{
		Engines: 8, Profile: engine.DefaultProfile, Routing: "round-robin,least-request,prefix-approx,kv-precise,ttft-cost,default",
		PDThreshold: DefaultPDThreshold, BlockSize: 16, MaxNumSeqs: 256, MaxNumBatchedTokens: "auto",
		ScrapeInterval: DefaultScrapeInterval, StaleAfter: DefaultStaleAfter, KVEventDelay: DefaultKVEventDelay, Timeout: DefaultRequestTimeout,
		FlowControl: true, MaxSaturation: 1, MaxQueueTime: time.Minute, MaxQueued: 10000,
		Bucket: time.Second, TargetAttainment: 0.99, MaxReplicas: 64,
		Autoscaler: PolicyFixed, ScaleToZeroGrace: a.ScaleToZeroGracePeriod, SLOPercentile: a.SLO.Percentile, KPATarget: "16",
		LowerBoundWindow: 10 * time.Second, PanicThreshold: a.PanicThresholdPercentage,
		KVOffload: apis.KVOffloadOff, KVOffloadDeadline: DefaultKVOffloadDeadline,
		BatchInputLen: b.InputLen, BatchOutputLen: b.OutputLen, BatchConcurrency: b.Concurrency, BatchMaxSaturation: b.MaxSaturation, BatchMaxPerPod: b.MaxPerPod,
		BatchMaxPrefillPerPod: b.MaxPrefillPerPod, BatchYield: b.YieldToInteractive,
		SoakLoad: 0.6, CriticalShare: 0.5,
	}
}

func (o *Options) changed(flag string) bool { return o.Changed != nil && o.Changed(flag) }

// Job is a validated kn-llmd plan invocation: routing runs, a capacity
// sweep or search, or an autoscaling comparison.
type Job struct {
	cfg      Config
	routings []string
	w        *workload.Workload
	so       SummaryOptions
	out      string
	records  bool
	include  []bench.RunSummary

	// newScaler makes each run's scaler (nil: the fixed counts).
	newScaler func() (Scaler, error)
	// compare is an autoscaling comparison (nil: none).
	compare *Comparison
	// soak is a batch soak (nil: none), over the workload spec.
	soak     *SoakOptions
	spec     workload.Spec
	specBase string

	// offload lists the KV offload settings to run (one run each per
	// routing profile).
	offload []KVOffloadConfig
	// tiers lists the engine tier settings to run (false: off).
	tiers []bool

	capacity bool // a sweep or a search
	decode   []int
	prefill  []int
	search   bool
	target   float64
	maxRep   int
}

// NewJob validates o and builds the job; Run needs its workload
// (SetWorkload) first.
func NewJob(o Options) (*Job, error) {
	changed := o.changed
	if o.Out == "" {
		return nil, errors.New("--out is required: the directory to write the report to")
	}
	j := &Job{out: o.Out, records: o.SaveRecords}

	// Deployment.
	prof, err := engine.BuiltinProfile(o.Profile)
	if err != nil {
		return nil, fmt.Errorf("--profile: %w", err)
	}
	for name, v := range map[string]int{"engines": o.Engines, "block-size": o.BlockSize, "max-num-seqs": o.MaxNumSeqs} {
		if v < 1 {
			return nil, fmt.Errorf("--%s must be positive, got %d", name, v)
		}
	}
	for name, v := range map[string]int{"prefill-engines": o.PrefillEngines, "pd-threshold": o.PDThreshold, "num-blocks": o.NumBlocks, "max-model-len": o.MaxModelLen} {
		if v < 0 {
			return nil, fmt.Errorf("--%s must not be negative, got %d", name, v)
		}
	}
	if o.BlockSize > 1024 {
		return nil, fmt.Errorf("--block-size must be at most 1024, got %d", o.BlockSize)
	}
	for name, d := range map[string]time.Duration{"kv-event-delay": o.KVEventDelay, "overhead": o.Overhead, "timeout": o.Timeout,
		"slo-ttft": o.SLOTTFT, "slo-tpot": o.SLOTPOT} {
		if d < 0 {
			return nil, fmt.Errorf("--%s must not be negative, got %s", name, d)
		}
	}
	for name, d := range map[string]time.Duration{"scrape-interval": o.ScrapeInterval, "stale-after": o.StaleAfter, "flow-max-queue-time": o.MaxQueueTime} {
		if d <= 0 {
			return nil, fmt.Errorf("--%s must be positive, got %s", name, d)
		}
	}
	if o.Bucket < time.Millisecond {
		return nil, fmt.Errorf("--bucket must be at least 1ms, got %s", o.Bucket)
	}
	if o.MaxSaturation < 0 {
		return nil, fmt.Errorf("--flow-max-saturation must not be negative, got %v", o.MaxSaturation)
	}
	if o.MaxQueued < 1 {
		return nil, fmt.Errorf("--flow-max-queued must be positive, got %d", o.MaxQueued)
	}
	if !o.FlowControl {
		for _, n := range []string{"flow-max-saturation", "flow-max-queue-time", "flow-max-queued"} {
			if changed(n) {
				return nil, fmt.Errorf("--%s needs --flow-control", n)
			}
		}
	}
	var rc *router.Config
	if o.RouterConfig != "" {
		data, err := os.ReadFile(o.RouterConfig)
		if err != nil {
			return nil, fmt.Errorf("--router-config: %w", err)
		}
		if rc, err = router.ParseConfig(data); err != nil {
			return nil, fmt.Errorf("--router-config %s: %w", o.RouterConfig, err)
		}
	} else if rc, err = RouterConfigFor(o.BlockSize, 0); err != nil {
		return nil, err
	}
	cfg := DefaultConfig()
	cfg.Profile = prof
	cfg.Engines, cfg.PrefillEngines = o.Engines, o.PrefillEngines
	budget, prefillBudget, _, err := ChooseStepBudget(o.MaxNumBatchedTokens, &prof, o.SLOTPOT, o.PrefillEngines > 0 || changed("sweep-prefill"))
	if err != nil {
		return nil, fmt.Errorf("--max-num-batched-tokens: %w", err)
	}
	cfg.Engine = EngineConfig{BlockSize: o.BlockSize, MaxNumSeqs: o.MaxNumSeqs, MaxNumBatchedTokens: budget, PrefillMaxNumBatchedTokens: prefillBudget,
		NumBlocks: o.NumBlocks, MaxModelLen: o.MaxModelLen}
	cfg.RouterConfig = rc
	cfg.PDThreshold = o.PDThreshold
	cfg.Model = o.Model
	cfg.IgnoreEOS = !o.NoIgnoreEOS
	cfg.ScrapeInterval, cfg.StaleAfter = o.ScrapeInterval, o.StaleAfter
	cfg.KVEventDelay, cfg.Overhead, cfg.RequestTimeout = o.KVEventDelay, o.Overhead, o.Timeout
	cfg.Flow = FlowConfig{Enabled: o.FlowControl, MaxSaturation: o.MaxSaturation, MaxQueueTime: o.MaxQueueTime, MaxQueued: o.MaxQueued}
	cfg.Seed = uint64(o.Seed)

	// Routing profiles.
	for _, name := range strings.Split(o.Routing, ",") {
		name = strings.TrimSpace(name)
		if name == "" {
			return nil, fmt.Errorf("--routing %q: empty profile name", o.Routing)
		}
		if !slices.Contains(rc.ProfileNames(), name) {
			return nil, fmt.Errorf("--routing: unknown profile %q (have %s)", name, strings.Join(rc.ProfileNames(), ", "))
		}
		if slices.Contains(j.routings, name) {
			return nil, fmt.Errorf("--routing: %q given twice", name)
		}
		j.routings = append(j.routings, name)
	}

	// Capacity.
	if changed("sweep-replicas") {
		if changed("engines") {
			return nil, errors.New("--sweep-replicas replaces --engines: give one")
		}
		if j.decode, err = parseCounts(o.SweepReplicas, 1); err != nil {
			return nil, fmt.Errorf("--sweep-replicas: %w", err)
		}
	}
	if changed("sweep-prefill") {
		if changed("prefill-engines") {
			return nil, errors.New("--sweep-prefill replaces --prefill-engines: give one")
		}
		if !changed("sweep-replicas") && !o.FindCapacity {
			return nil, errors.New("--sweep-prefill needs --sweep-replicas or --find-capacity")
		}
		if j.prefill, err = parseCounts(o.SweepPrefill, 0); err != nil {
			return nil, fmt.Errorf("--sweep-prefill: %w", err)
		}
		if slices.Contains(j.prefill, 0) && slices.ContainsFunc(j.prefill, func(p int) bool { return p > 0 }) {
			// 0 prefill engines in a P/D deployment is still P/D (decode
			// role); say so rather than mix two topologies silently.
			cfg.Disaggregated = true
		}
	} else {
		j.prefill = []int{o.PrefillEngines}
	}
	if slices.ContainsFunc(j.prefill, func(p int) bool { return p > 0 }) {
		cfg.Disaggregated = true
	}
	if o.FindCapacity && changed("sweep-replicas") {
		return nil, errors.New("--find-capacity searches, --sweep-replicas sweeps: give one")
	}
	j.search = o.FindCapacity
	j.capacity = o.FindCapacity || changed("sweep-replicas")
	if changed("target-attainment") && !j.capacity && !strings.Contains(o.Autoscaler, "static-peak") {
		return nil, errors.New("--target-attainment needs --sweep-replicas, --find-capacity or --autoscaler static-peak")
	}
	if changed("max-replicas") && !o.FindCapacity {
		return nil, errors.New("--max-replicas needs --find-capacity")
	}
	if j.capacity {
		if o.SLOTTFT == 0 && o.SLOTPOT == 0 {
			return nil, errors.New("capacity questions need an SLO: give --slo-ttft and/or --slo-tpot")
		}
		if !(o.TargetAttainment > 0 && o.TargetAttainment <= 1) {
			return nil, fmt.Errorf("--target-attainment must be in (0, 1], got %v", o.TargetAttainment)
		}
		if o.MaxReplicas < 1 {
			return nil, fmt.Errorf("--max-replicas must be positive, got %d", o.MaxReplicas)
		}
		j.target, j.maxRep = o.TargetAttainment, o.MaxReplicas
	}
	policies, err := parsePolicies(o.Autoscaler)
	if err != nil {
		return nil, err
	}
	compare := len(policies) > 1 || (policies[0] != "fixed" && policies[0] != "slo")
	autoscaled := slices.Contains(policies, "slo") || slices.Contains(policies, "slo-forecast") || slices.Contains(policies, "kpa")
	if !autoscaled {
		for _, n := range []string{"min-engines", "startup-delay", "scale-to-zero-grace", "panic-threshold", "scale-down-delay"} {
			if changed(n) {
				return nil, fmt.Errorf("--%s needs --autoscaler slo or kpa", n)
			}
		}
	}
	if !slices.Contains(policies, "kpa") {
		for _, n := range []string{"kpa-target", "kpa-utilization"} {
			if changed(n) {
				return nil, fmt.Errorf("--%s needs --autoscaler kpa", n)
			}
		}
	}
	if !compare {
		for _, n := range []string{"lower-bound-window", "slo-percentile"} {
			if changed(n) {
				return nil, fmt.Errorf("--%s needs an autoscaling comparison (--autoscaler with kpa, static-peak, instant-bound, clairvoyant or several policies)", n)
			}
		}
	}
	if autoscaled || compare {
		if j.capacity {
			return nil, errors.New("--autoscaler " + o.Autoscaler + " answers no capacity question: drop --sweep-replicas/--find-capacity")
		}
		if !o.FlowControl {
			return nil, fmt.Errorf("--autoscaler %s needs --flow-control: requests arriving with no engine ready wait in its queue (and poke the autoscaler)", o.Autoscaler)
		}
		if o.MinEngines < 0 || o.MinEngines > o.Engines {
			return nil, fmt.Errorf("--min-engines must be in [0, --engines (%d)], got %d", o.Engines, o.MinEngines)
		}
		if o.StartupDelay < 0 || o.ScaleToZeroGrace < 0 {
			return nil, errors.New("--startup-delay and --scale-to-zero-grace must not be negative")
		}
	}
	a := cfg.AutoscalerConfig(Replicas{Decode: o.MinEngines}, Replicas{Prefill: o.PrefillEngines, Decode: o.Engines})
	a.ScaleToZeroGracePeriod = o.ScaleToZeroGrace
	a.PanicThresholdPercentage, a.ScaleDownDelay = o.PanicThreshold, o.ScaleDownDelay
	// The decider keeps headroom at the SLO percentile for the load that
	// arrives while a replica cold-starts.
	a.ColdStart = o.StartupDelay
	if o.SLOTTFT > 0 {
		a.SLO.TTFT = o.SLOTTFT
	}
	if o.SLOTPOT > 0 {
		a.SLO.TPOT = o.SLOTPOT
	}
	if !(o.SLOPercentile > 0 && o.SLOPercentile < 100) {
		return nil, fmt.Errorf("--slo-percentile must be in (0, 100), got %v", o.SLOPercentile)
	}
	a.SLO.Percentile = o.SLOPercentile
	if err := a.Validate(); err != nil {
		return nil, fmt.Errorf("--autoscaler %s: %w", o.Autoscaler, err)
	}
	switch {
	case compare:
		if len(j.routings) != 1 {
			return nil, errors.New("an autoscaling comparison runs one routing profile: give one with --routing")
		}
		if cfg.Disaggregated {
			return nil, errors.New("an autoscaling comparison is for deployments without P/D: drop --prefill-engines")
		}
		if !(o.TargetAttainment > 0 && o.TargetAttainment <= 1) {
			return nil, fmt.Errorf("--target-attainment must be in (0, 1], got %v", o.TargetAttainment)
		}
		if o.LowerBoundWindow <= 0 {
			return nil, fmt.Errorf("--lower-bound-window must be positive, got %s", o.LowerBoundWindow)
		}
		c := &Comparison{Command: o.Command, Policies: policies, SLO: a, Fixed: o.Engines, Target: o.TargetAttainment,
			Window: o.LowerBoundWindow, Startup: o.StartupDelay, MinEngines: o.MinEngines,
			KPA: KPAConfig{TargetUtilization: o.KPAUtilization, MinScale: o.MinEngines, MaxScale: o.Engines, ScaleToZeroGrace: o.ScaleToZeroGrace,
				PanicThresholdPercentage: o.PanicThreshold, ScaleDownDelay: o.ScaleDownDelay}}
		if slices.Contains(policies, "kpa") {
			if c.KPATargets, err = parseTargets(o.KPATarget); err != nil {
				return nil, fmt.Errorf("--kpa-target: %w", err)
			}
			for _, t := range c.KPATargets {
				k := c.KPA
				k.Target = t
				if _, err := NewKPAScaler(k); err != nil {
					return nil, fmt.Errorf("--kpa-target %g: %w", t, err)
				}
			}
		}
		j.compare = c
	case policies[0] == "slo":
		j.newScaler = func() (Scaler, error) { return NewSLOScaler(a, prof) }
		if cfg.Scaler, err = j.newScaler(); err != nil {
			return nil, fmt.Errorf("--autoscaler slo: %w", err)
		}
		cfg.Engines, cfg.PrefillEngines = o.MinEngines, 0
		cfg.StartupDelay = o.StartupDelay
	}
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	j.cfg = cfg
	j.so = SummaryOptions{SLO: bench.SLO{TTFT: o.SLOTTFT, TPOT: o.SLOTPOT}, Bucket: o.Bucket}
	if o.BatchSoak > 0 {
		if j.capacity || j.compare != nil || j.newScaler != nil {
			return nil, errors.New("--batch-soak runs fixed engines: it does not combine with --autoscaler, --sweep-replicas or --find-capacity")
		}
		if !(o.SoakLoad > 0 && o.SoakLoad < 1) {
			return nil, fmt.Errorf("--soak-load must be in (0, 1), got %v", o.SoakLoad)
		}
		if !(o.CriticalShare >= 0 && o.CriticalShare <= 1) {
			return nil, fmt.Errorf("--critical-share must be in [0, 1], got %v", o.CriticalShare)
		}
		b := DefaultBatch(o.BatchSoak)
		b.InputLen, b.OutputLen, b.Concurrency, b.MaxSaturation = o.BatchInputLen, o.BatchOutputLen, o.BatchConcurrency, o.BatchMaxSaturation
		b.MaxPerPod, b.MaxPrefillPerPod, b.YieldToInteractive = o.BatchMaxPerPod, o.BatchMaxPrefillPerPod, o.BatchYield
		c := j.cfg
		c.Batch = b
		if err := c.Validate(); err != nil {
			return nil, fmt.Errorf("--batch-*: %w", err)
		}
		j.soak = &SoakOptions{Load: o.SoakLoad, Batch: b, CriticalShare: o.CriticalShare, Critical: o.SoakCritical, Standard: o.SoakStandard,
			Command: o.Command}
	} else {
		for _, n := range []string{"batch-input-len", "batch-output-len", "batch-concurrency", "batch-max-saturation", "soak-load", "critical-share"} {
			if changed(n) {
				return nil, fmt.Errorf("--%s needs --batch-soak", n)
			}
		}
	}

	if j.offload, err = parseOffload(o); err != nil {
		return nil, err
	}
	if j.tiers, err = parseTiers(o, &j.cfg.Engine); err != nil {
		return nil, err
	}
	if len(j.tiers) > 1 && (j.capacity || j.compare != nil || j.soak != nil) {
		return nil, errors.New("--kv-tiers off,on runs routing profiles: it does not combine with capacity questions, autoscaling comparisons or --batch-soak")
	}
	if len(j.offload) > 1 || j.offload[0].Enabled {
		if j.capacity || j.compare != nil || j.soak != nil {
			return nil, errors.New("--kv-offload runs routing profiles, fixed or with --autoscaler slo: it does not combine with capacity questions, autoscaling comparisons or --batch-soak")
		}
		for _, k := range j.offload {
			c := j.cfg
			c.KVOffload = k
			if err := c.Validate(); err != nil {
				return nil, fmt.Errorf("--kv-offload: %w", err)
			}
		}
	}

	for _, p := range o.Include {
		sum, err := bench.ReadSummary(p)
		if err != nil {
			return nil, fmt.Errorf("--include: %w", err)
		}
		j.include = append(j.include, sum.Runs...)
	}
	names := map[string]bool{}
	for _, r := range j.include {
		names[r.Name] = true
	}
	for _, r := range j.routings {
		if names[r] {
			return nil, fmt.Errorf("--include: a run named %q is also a routing profile of this plan", r)
		}
	}
	return j, nil
}

// SetWorkload gives the job the workload it replays: w, opened from spec
// with paths relative to base (a batch soak reopens it rate-scaled).
func (j *Job) SetWorkload(spec workload.Spec, base string, w *workload.Workload) error {
	if w == nil || w.Len() == 0 {
		return errors.New("workload: no requests (check --duration and --max-requests)")
	}
	j.w, j.spec, j.specBase = w, spec, base
	j.so.Workload = bench.DescribeWorkload(spec, w)
	j.so.Ladder = bench.LadderSteps(w)
	return nil
}

// parseCounts reads "A..B", "A..B:STEP" or "A,B,C" into ascending counts
// of at least lo.
func parseCounts(s string, lo int) ([]int, error) {
	var out []int
	atoi := func(v string) (int, error) {
		n, err := strconv.Atoi(strings.TrimSpace(v))
		if err != nil {
			return 0, fmt.Errorf("%q is not an integer", v)
		}
		if n < lo {
			return 0, fmt.Errorf("%d is below %d", n, lo)
		}
		return n, nil
	}
	if a, b, ok := strings.Cut(s, ".."); ok {
		step := 1
		if bb, st, ok := strings.Cut(b, ":"); ok {
			b = bb
			n, err := strconv.Atoi(strings.TrimSpace(st))
			if err != nil || n < 1 {
				return nil, fmt.Errorf("step %q must be a positive integer", st)
			}
			step = n
		}
		from, err := atoi(a)
		if err != nil {
			return nil, err
		}
		to, err := atoi(b)
		if err != nil {
			return nil, err
		}
		if to < from {
			return nil, fmt.Errorf("range %s is empty", s)
		}
		for n := from; n <= to; n += step {
			out = append(out, n)
		}
	} else {
		for _, v := range strings.Split(s, ",") {
			n, err := atoi(v)
			if err != nil {
				return nil, err
			}
			out = append(out, n)
		}
		slices.Sort(out)
		out = slices.Compact(out)
	}
	if len(out) > 256 {
		return nil, fmt.Errorf("%d counts: at most 256", len(out))
	}
	return out, nil
}

// Run runs the job and writes its report; progress lines go to out.
func (j *Job) Run(ctx context.Context, out io.Writer) error {
	if j.w == nil {
		return errors.New("plan: no workload (SetWorkload)")
	}
	if j.soak != nil {
		cfg := j.cfg
		cfg.Routing = j.routings[0]
		start := time.Now()
		r, err := Soak(ctx, cfg, j.spec, j.specBase, *j.soak)
		if err != nil {
			return err
		}
		if err := WriteSoak(j.out, r); err != nil {
			return err
		}
		WriteSoakTable(out, r)
		fmt.Fprintf(out, "\n(%s wall) report: %s\n", time.Since(start).Round(time.Millisecond), filepath.Join(j.out, SoakMD))
		return nil
	}
	if j.capacity {
		return j.runCapacity(ctx, out)
	}
	if j.compare != nil {
		base := j.cfg
		base.Routing = j.routings[0]
		c := *j.compare
		c.Out, c.Records, c.Include = j.out, j.records, j.include
		return c.Run(ctx, base, j.w, j.so, out)
	}
	var runs []bench.RunSummary
	var csv bytes.Buffer
	type run struct {
		routing string
		kv      KVOffloadConfig
		tiers   bool
	}
	var todo []run
	for _, name := range j.routings {
		for _, k := range j.offload {
			for _, t := range j.tiers {
				todo = append(todo, run{name, k, t})
			}
		}
	}
	for _, r := range todo {
		name := r.routing
		cfg := j.cfg
		cfg.Routing, cfg.KVOffload = name, r.kv
		if !r.tiers {
			cfg.Engine.CPUTierBytes, cfg.Engine.DiskTierBytes = 0, 0
		}
		so := j.so
		if r.kv.Enabled {
			so.Name = name + "-kv-offload"
		}
		if r.tiers && len(j.tiers) > 1 {
			if so.Name == "" {
				so.Name = name
			}
			so.Name += "-kv-tiers"
		}
		if j.newScaler != nil {
			sc, err := j.newScaler()
			if err != nil {
				return err
			}
			cfg.Scaler = sc
		}
		start := time.Now()
		sum, res, err := RunWorkload(ctx, cfg, j.w, so)
		if err != nil {
			return fmt.Errorf("routing %s: %w", name, err)
		}
		fmt.Fprintf(out, "%s (virtual %s in %s wall, %d events)\n", bench.OneLine(&sum),
			res.Stats.End.Round(time.Millisecond), time.Since(start).Round(time.Millisecond), res.Stats.Events)
		st := &res.Stats
		fmt.Fprintf(out, "  %s: %.1f replica-seconds (%.1f GPU-seconds), peak %s, %d cold starts, %d replica changes\n",
			sum.Name, st.ReplicaSeconds, st.GPUSeconds, st.PeakReplicas, st.ColdStarts, max(len(res.Replicas)-1, 0))
		WriteKVOffloadLines(out, sum.Name, res)
		if st.CPUTierHitTokens+st.DiskTierHitTokens > 0 || j.cfg.Engine.CPUTierBytes+j.cfg.Engine.DiskTierBytes > 0 {
			var prompt, cached int64
			for _, r := range res.Records {
				prompt += int64(r.PromptTokens)
				cached += int64(min(r.CachedTokens, r.PromptTokens))
			}
			fmt.Fprintf(out, "  %s: KV tiers: %d prompt tokens loaded from CPU, %d from disk; cached %d of %d prompt tokens (%.1f%%)\n",
				sum.Name, st.CPUTierHitTokens, st.DiskTierHitTokens, cached, prompt, 100*float64(cached)/float64(max(prompt, 1)))
		}
		if err := WriteReplicaCSV(&csv, len(runs) == 0, sum.Name, res.Replicas); err != nil {
			return err
		}
		if j.records {
			if err := bench.WriteRecords(filepath.Join(j.out, bench.RecordsFile(sum.Name)), res.Records); err != nil {
				return err
			}
		}
		runs = append(runs, sum)
	}
	if err := bench.WriteReport(j.out, append(runs, j.include...)); err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(j.out, ReplicasCSV), csv.Bytes(), 0o644); err != nil {
		return err
	}
	fmt.Fprintf(out, "report: %s\n", filepath.Join(j.out, bench.ReportFile))
	return nil
}

func (j *Job) runCapacity(ctx context.Context, out io.Writer) error {
	rep := CapacityReport{
		Workload: j.so.Workload,
		SLO:      bench.SLOTargets{TTFTSeconds: j.so.SLO.TTFT.Seconds(), TPOTSeconds: j.so.SLO.TPOT.Seconds()},
		Target:   j.target,
	}
	var runs []bench.RunSummary
	for _, name := range j.routings {
		cfg := j.cfg
		cfg.Routing = name
		if rep.Deployment == "" {
			rep.Deployment = fmt.Sprintf("kn-llmd plan, %s engines", cfg.Profile.Name)
			if cfg.Disaggregated {
				rep.Deployment += " with prefill/decode disaggregation"
			}
		}
		kept := map[Replicas]bench.RunSummary{}
		visit := func(p Point, s *bench.RunSummary) {
			fmt.Fprintf(out, "%s\n", bench.OneLine(s))
			kept[p.Replicas] = *s
		}
		eval := Evaluate(cfg, j.w, j.so)
		var c Capacity
		if j.search {
			res, err := FindCapacity(ctx, eval, name, j.target,
				Range{Min: j.prefill[0], Max: j.prefill[len(j.prefill)-1]}, Range{Min: 1, Max: j.maxRep}, visit)
			if err != nil {
				return fmt.Errorf("routing %s: %w", name, err)
			}
			c = res
		} else {
			var counts []Replicas
			for _, p := range j.prefill {
				for _, d := range j.decode {
					counts = append(counts, Replicas{Prefill: p, Decode: d})
				}
			}
			pts, err := Sweep(ctx, eval, name, counts, visit)
			if err != nil {
				return fmt.Errorf("routing %s: %w", name, err)
			}
			c = CapacityFromPoints(name, j.target, pts)
		}
		rep.Results = append(rep.Results, c)
		pick := c.Replicas
		if !c.Found && len(c.Points) > 0 {
			pick = c.Points[len(c.Points)-1].Replicas
		}
		if s, ok := kept[pick]; ok {
			runs = append(runs, s)
		}
		ans := "none in the range tried"
		if c.Found {
			ans = c.Replicas.String()
		}
		fmt.Fprintf(out, "capacity %s: %s\n", name, ans)
	}
	if err := WriteCapacity(j.out, rep); err != nil {
		return err
	}
	if len(runs) > 0 {
		if err := bench.WriteReport(j.out, append(runs, j.include...)); err != nil {
			return err
		}
	}
	fmt.Fprintf(out, "capacity: %s\n", filepath.Join(j.out, CapacityMD))
	return nil
}

// parsePolicies reads --autoscaler: one policy or a comma-separated list.
func parsePolicies(s string) ([]string, error) {
	var out []string
	for _, p := range strings.Split(s, ",") {
		p = strings.TrimSpace(p)
		c := CanonicalPolicy(p)
		if c == "" {
			return nil, fmt.Errorf("--autoscaler: unknown policy %q (have %s)", p, strings.Join(ComparePolicies, ", "))
		}
		p = c
		if slices.Contains(out, p) {
			return nil, fmt.Errorf("--autoscaler: %q given twice", p)
		}
		out = append(out, p)
	}
	if !slices.ContainsFunc(out, func(p string) bool { return !IsBound(p) }) {
		return nil, fmt.Errorf("--autoscaler %s needs another policy: a bound is computed from a run's token counts", strings.Join(out, ","))
	}
	return out, nil
}

// parseTargets reads a comma-separated list of positive numbers.
func parseTargets(s string) ([]float64, error) {
	var out []float64
	for _, v := range strings.Split(s, ",") {
		t, err := strconv.ParseFloat(strings.TrimSpace(v), 64)
		if err != nil || !(t > 0) || t > 1e6 {
			return nil, fmt.Errorf("%q is not a positive number up to 1e6", v)
		}
		if slices.Contains(out, t) {
			return nil, fmt.Errorf("%g given twice", t)
		}
		out = append(out, t)
	}
	return out, nil
}
