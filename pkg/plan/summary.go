package plan

import (
	"context"
	"encoding/csv"
	"fmt"
	"io"
	"strconv"
	"strings"
	"time"

	"github.com/llmd-kn/llmd-kn/pkg/bench"
	"github.com/llmd-kn/llmd-kn/pkg/workload"
)

// SummaryOptions describe a run for Summarize beyond its Result.
type SummaryOptions struct {
	// Name is the run's name in the report; "" means the routing profile.
	Name     string
	Workload bench.WorkloadInfo
	SLO      bench.SLO
	// Ladder is the workload's rate ladder (bench.LadderSteps), if any.
	Ladder []bench.LoadStep
	// Bucket is the time-series interval (0: one second).
	Bucket time.Duration
}

// Summarize turns a run into the report's RunSummary with bench.Summarize,
// in virtual-time mode, with the deployment in Target and Settings.
func Summarize(res *Result, o SummaryOptions) bench.RunSummary {
	c := &res.Config
	name := o.Name
	if name == "" {
		name = c.routingName()
	}
	return bench.Summarize(name, res.Records, bench.SummaryOptions{
		Mode:     bench.ModeVirtualTime,
		Target:   c.Describe(),
		Model:    c.modelName(),
		Workload: o.Workload,
		Settings: settings(res),
		SLO:      o.SLO,
		Bucket:   o.Bucket,
		Ladder:   o.Ladder,
	})
}

// RunWorkload runs w through cfg and summarizes it.
func RunWorkload(ctx context.Context, cfg Config, w *workload.Workload, o SummaryOptions) (bench.RunSummary, *Result, error) {
	res, err := Run(ctx, cfg, w.Source())
	if err != nil {
		return bench.RunSummary{}, nil, err
	}
	return Summarize(res, o), res, nil
}

// Describe names the modelled deployment in one line, e.g.
// "plan: 8 × qwen3-32b-2xh100 (default)" or "plan: 2 prefill + 6 decode × ...".
func (c *Config) Describe() string {
	fleet := strconv.Itoa(c.Engines)
	if c.pd() {
		fleet = fmt.Sprintf("%d prefill + %d decode", c.PrefillEngines, c.Engines)
	}
	if sc, ok := c.Scaler.(*SLOScaler); ok {
		a := sc.d.Config()
		fleet = fmt.Sprintf("slo-autoscaled %d..%s", a.Decode.MinScale, maxScale(a.Decode.MaxScale))
		if a.Disaggregated {
			fleet = fmt.Sprintf("slo-autoscaled %d..%s prefill + %d..%s decode", a.Prefill.MinScale, maxScale(a.Prefill.MaxScale),
				a.Decode.MinScale, maxScale(a.Decode.MaxScale))
		}
	}
	if sc, ok := c.Scaler.(*KPAScaler); ok {
		fleet = fmt.Sprintf("kpa-autoscaled %d..%s", sc.cfg.MinScale, maxScale(sc.cfg.MaxScale))
	}
	return fmt.Sprintf("plan: %s × %s, routing %s", fleet, c.Profile.Name, c.routingName())
}

func (c *Config) routingName() string {
	if c.Routing != "" {
		return c.Routing
	}
	return c.routerConfig().DefaultProfile
}

func (c *Config) modelName() string {
	if c.Model != "" {
		return c.Model
	}
	return c.Profile.Model.Name
}

// settings are the run's facts for the report: the deployment's knobs and
// what the model counted. All are deterministic for a seed.
func settings(res *Result) map[string]string {
	c, st := &res.Config, &res.Stats
	d := func(v time.Duration) string { return v.String() }
	flow := "off"
	if c.Flow.Enabled {
		flow = fmt.Sprintf("maxSaturation %g, maxQueueTime %s, maxQueued %d", c.Flow.MaxSaturation, c.Flow.MaxQueueTime, c.Flow.MaxQueued)
	}
	kv := "off (profile does not read the precise index)"
	if st.KVEvents {
		kv = "on, delay " + d(c.KVEventDelay)
	}
	blocks := c.Engine.NumBlocks
	if blocks == 0 {
		blocks = c.Profile.KVCapacityTokens() / c.blockSize()
	}
	orDefault := func(v, def int) string {
		if v == 0 {
			v = def
		}
		return strconv.Itoa(v)
	}
	timeout := "none"
	if c.RequestTimeout > 0 {
		timeout = d(c.RequestTimeout)
	}
	m := map[string]string{
		"routing":               c.routingName(),
		"engineProfile":         c.Profile.Name,
		"engines":               strconv.Itoa(c.Engines),
		"prefillEngines":        strconv.Itoa(c.PrefillEngines),
		"blockSize":             strconv.Itoa(c.blockSize()),
		"kvBlocksPerEngine":     strconv.Itoa(blocks),
		"maxNumSeqs":            orDefault(c.Engine.MaxNumSeqs, 256),
		"maxNumBatchedTokens":   orDefault(c.Engine.MaxNumBatchedTokens, 8192),
		"pdThreshold":           strconv.Itoa(c.PDThreshold),
		"scrapeInterval":        d(c.ScrapeInterval),
		"kvEvents":              kv,
		"overhead":              d(c.Overhead),
		"flowControl":           flow,
		"requestTimeout":        timeout,
		"ignoreEOS":             strconv.FormatBool(c.IgnoreEOS),
		"seed":                  strconv.FormatUint(c.Seed, 10),
		"decisions":             strconv.Itoa(st.Decisions),
		"disaggregated":         strconv.Itoa(st.Disaggregated),
		"preemptions":           strconv.FormatInt(st.Preemptions, 10),
		"engineBusy":            fmt.Sprintf("%.1f%%", 100*safeDiv(st.BusySeconds, st.EngineSeconds)),
		"predictedCachedTokens": strconv.FormatInt(st.PredictedCachedTokens, 10),
	}
	m["replicaSeconds"] = fmt.Sprintf("%.1f", st.ReplicaSeconds)
	m["gpuSeconds"] = fmt.Sprintf("%.1f", st.GPUSeconds)
	if c.Scaler != nil {
		m["scaler"] = fmt.Sprintf("%s, peak %s", scalerName(c.Scaler), st.PeakReplicas)
		m["startupDelay"] = d(c.StartupDelay)
		m["coldStarts"] = strconv.Itoa(st.ColdStarts)
		m["scaleEvents"] = strconv.Itoa(st.ScaleEvents)
		m["scaleFromZeroPokes"] = strconv.Itoa(st.Pokes)
		m["replicasOverTime"] = replicaSeries(res.Replicas)
	}
	if st.Rejected > 0 {
		m["flowRejected"] = strconv.Itoa(st.Rejected)
	}
	if k := c.KVOffload; k.Enabled {
		o := &st.KVOffload
		m["kvOffload"] = fmt.Sprintf("on-scale-down, maxBytes %d, deadline %s, prefetchBytes %d", k.MaxBytes, d(max(k.Deadline, 0)), k.PrefetchBytes)
		m["kvOffloadFlushed"] = fmt.Sprintf("%d blocks (%d bytes) in %d flushes, %.1fs", o.Flushed, o.FlushedBytes, o.Flushes, o.FlushSeconds)
		m["kvOffloadRestored"] = fmt.Sprintf("%d tokens (%d bytes) in %d requests", o.RestoredTokens, o.RestoredBytes, o.Restores)
		m["kvOffloadPrefetched"] = fmt.Sprintf("%d blocks in %d engines", o.Prefetched, o.Prefetches)
	}
	return m
}

func safeDiv(a, b float64) float64 {
	if b == 0 {
		return 0
	}
	return a / b
}

func scalerName(sc Scaler) string {
	switch v := sc.(type) {
	case *SLOScaler:
		return "slo (" + autoscalerClass + ")"
	case *KPAScaler:
		return fmt.Sprintf("kpa (Knative's decider, concurrency target %g, utilization %.3g)", v.cfg.Target, v.spec.TargetValue/v.cfg.Target)
	case Fixed:
		return "fixed " + Replicas(v).String()
	}
	return fmt.Sprintf("%T", sc)
}

// autoscalerClass is the SLO autoscaler's Knative class.
const autoscalerClass = "slo.autoscaling.llm-d.ai"

// maxSeriesPoints bounds the replicas-over-time setting; ReplicaCSV has
// every point.
const maxSeriesPoints = 64

// replicaSeries is the provisioned replicas over time in one line,
// "0s:1 12s:3 ...", at their changes, cut to maxSeriesPoints points.
func replicaSeries(pts []ReplicaPoint) string {
	var b strings.Builder
	n := 0
	for i, p := range pts {
		if i > 0 && p.Provisioned == pts[i-1].Provisioned {
			continue // only readiness changed
		}
		if n == maxSeriesPoints {
			b.WriteString(" ... (see Result.Replicas)")
			break
		}
		if n > 0 {
			b.WriteByte(' ')
		}
		n++
		fmt.Fprintf(&b, "%s:%s", p.At.Round(time.Millisecond), p.Provisioned)
	}
	return b.String()
}

// WriteReplicaCSV writes a run's replica counts over time as CSV: one row
// per point, with the run's name, so that several runs share a file.
func WriteReplicaCSV(w io.Writer, header bool, run string, pts []ReplicaPoint) error {
	cw := csv.NewWriter(w)
	if header {
		if err := cw.Write([]string{"run", "seconds", "ready_prefill", "ready_decode", "provisioned_prefill", "provisioned_decode"}); err != nil {
			return err
		}
	}
	for _, p := range pts {
		if err := cw.Write([]string{run, strconv.FormatFloat(p.At.Seconds(), 'f', 3, 64),
			strconv.Itoa(p.Ready.Prefill), strconv.Itoa(p.Ready.Decode),
			strconv.Itoa(p.Provisioned.Prefill), strconv.Itoa(p.Provisioned.Decode)}); err != nil {
			return err
		}
	}
	cw.Flush()
	return cw.Error()
}

func maxScale(n int) string {
	if n == 0 {
		return "∞"
	}
	return strconv.Itoa(n)
}
