package bench

import (
	"encoding/json"
	"fmt"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/llmd-kn/llmd-kn/pkg/workload"
)

// LadderSteps returns w's rate ladder in run time (rates times RateScale and
// Speedup, durations divided by Speedup, cut at MaxDuration), or nil when w
// does not arrive by a ladder. Pass it as SummaryOptions.Ladder.
func LadderSteps(w *workload.Workload) []LoadStep {
	a := w.Arrival()
	if a.Kind != workload.ArrivalLadder {
		return nil
	}
	steps := a.Steps
	if a.Preset == workload.LadderPresetLLMD {
		steps = workload.LLMDLadder()
	}
	o := w.Options()
	speed, scale := o.Speedup, o.RateScale
	if speed == 0 {
		speed = 1
	}
	if scale == 0 {
		scale = 1
	}
	out := make([]LoadStep, 0, len(steps))
	var t time.Duration
	for _, s := range steps {
		d := time.Duration(float64(s.Duration.Duration) / speed)
		if o.MaxDuration > 0 {
			if t >= o.MaxDuration {
				break
			}
			d = min(d, o.MaxDuration-t)
		}
		out = append(out, LoadStep{Rate: s.Rate * scale * speed, Duration: d})
		t += d
	}
	return out
}

// DescribeWorkload returns the WorkloadInfo of w, opened from spec: a one-line
// description and the spec itself.
func DescribeWorkload(spec workload.Spec, w *workload.Workload) WorkloadInfo {
	var parts []string
	head := spec.Kind
	if spec.Path != "" {
		head += " " + filepath.Base(spec.Path)
	}
	parts = append(parts, head)
	a := w.Arrival()
	switch a.Kind {
	case workload.ArrivalPoisson, workload.ArrivalConstant:
		parts = append(parts, fmt.Sprintf("%s arrivals at %s req/s", a.Kind, strconv.FormatFloat(a.Rate, 'g', 4, 64)))
	case workload.ArrivalLadder:
		if a.Preset != "" {
			parts = append(parts, "ladder "+a.Preset)
		} else {
			parts = append(parts, fmt.Sprintf("ladder of %d steps", len(a.Steps)))
		}
	default:
		parts = append(parts, "trace arrivals")
	}
	o := w.Options()
	if o.Speedup != 0 && o.Speedup != 1 {
		parts = append(parts, "speedup "+strconv.FormatFloat(o.Speedup, 'g', 4, 64))
	}
	if o.RateScale != 0 && o.RateScale != 1 {
		parts = append(parts, "rate ×"+strconv.FormatFloat(o.RateScale, 'g', 4, 64))
	}
	if o.MaxRequests > 0 {
		parts = append(parts, fmt.Sprintf("first %d requests", o.MaxRequests))
	}
	if o.MaxDuration > 0 {
		parts = append(parts, "first "+o.MaxDuration.String())
	}
	desc := strings.Join(parts, ", ") + fmt.Sprintf(": %d requests over %s", w.Len(), w.Duration().Round(time.Millisecond))
	info := WorkloadInfo{Description: desc}
	if js, err := json.Marshal(spec); err == nil {
		info.Spec = js
	}
	return info
}
