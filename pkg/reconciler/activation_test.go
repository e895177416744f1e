package reconciler

import (
	"strings"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"
	knativeapis "knative.dev/pkg/apis"
	"knative.dev/serving/pkg/apis/autoscaling/v1alpha1"

	"github.com/llmd-kn/llmd-kn/pkg/autoscaler"
)

// TestDecideActivation: Knative's activation timeout on a fake clock. A
// target activating since t0 with a 630 s timeout (the default 600 s
// progress deadline plus the 30 s buffer).
func TestDecideActivation(t *testing.T) {
	t0 := time.Date(2026, 1, 1, 12, 0, 0, 0, time.UTC)
	const timeout = DefaultProgressDeadline + ActivationTimeoutBuffer
	status := func(active string, reason string, initialized bool) *v1alpha1.PodAutoscalerStatus {
		st := &v1alpha1.PodAutoscalerStatus{}
		st.InitializeConditions()
		switch active {
		case "Unknown":
			st.MarkActivating(reason, "")
		case "True":
			st.MarkActive()
		case "False":
			st.MarkInactive(reason, "")
		}
		if initialized {
			st.MarkScaleTargetInitialized()
		}
		for i := range st.Conditions {
			st.Conditions[i].LastTransitionTime = knativeapis.VolatileTime{Inner: metav1.NewTime(t0)}
		}
		return st
	}
	scaleToZero := autoscaler.DefaultConfig()
	minOne := scaleToZero
	minOne.EnableScaleToZero, minOne.Decode.MinScale = false, 1
	advise := scaleToZero
	advise.Advisory = true

	cases := []struct {
		name     string
		st       *v1alpha1.PodAutoscalerStatus
		cfg      autoscaler.Config
		rec      int
		hasRec   bool
		after    time.Duration
		want     activation
		wantWait time.Duration
	}{
		{name: "activating, no demand, before the timeout: hold", st: status("Unknown", ReasonQueued, false), cfg: scaleToZero,
			hasRec: true, after: timeout - 10*time.Second, want: activation{hold: true}, wantWait: 11 * time.Second},
		{name: "activating, no demand, at the timeout: still hold", st: status("Unknown", ReasonQueued, false), cfg: scaleToZero,
			hasRec: true, after: timeout, want: activation{hold: true}, wantWait: time.Second},
		{name: "activating, no demand, past the timeout: timed out, initial scale given up", st: status("Unknown", ReasonQueued, false),
			cfg: scaleToZero, hasRec: true, after: timeout + time.Second, want: activation{timedOut: true, gaveUp: true}},
		{name: "scale from zero timed out after initialization: timed out, nothing given up", st: status("Unknown", ReasonQueued, true),
			cfg: scaleToZero, hasRec: true, after: time.Hour, want: activation{timedOut: true}},
		{name: "demand keeps the activation going", st: status("Unknown", ReasonQueued, false), cfg: scaleToZero,
			rec: 1, hasRec: true, after: time.Hour},
		{name: "no recommendation yet (a restarted autoscaler)", st: status("Unknown", ReasonQueued, false), cfg: scaleToZero, after: time.Hour},
		{name: "min-scale 1: never to zero", st: status("Unknown", ReasonQueued, false), cfg: minOne, hasRec: true, after: time.Hour},
		{name: "advise mode scales nothing", st: status("Unknown", ReasonQueued, false), cfg: advise, hasRec: true, after: time.Hour},
		{name: "active", st: status("True", "", true), cfg: scaleToZero, hasRec: true, after: time.Hour},
		{name: "inactive, no traffic", st: status("False", ReasonNoTraffic, true), cfg: scaleToZero, hasRec: true, after: time.Hour},
		{name: "timed out before, never initialized: still given up", st: status("False", ReasonTimedOut, false), cfg: scaleToZero,
			hasRec: true, after: time.Hour, want: activation{gaveUp: true}},
		{name: "timed out before, then initialized", st: status("False", ReasonTimedOut, true), cfg: scaleToZero, hasRec: true, after: time.Hour},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			got := decideActivation(c.st, c.cfg, c.rec, c.hasRec, t0.Add(c.after), timeout)
			wait := got.wait
			got.wait = 0
			if got != c.want || wait != c.wantWait {
				t.Errorf("got %+v, wait %v; want %+v, wait %v", got, wait, c.want, c.wantWait)
			}
		})
	}
}

// TestProgressDeadline: the PA's annotation, else the Deployment's
// progressDeadlineSeconds, else Knative's default; a bad annotation is an
// error naming it.
func TestProgressDeadline(t *testing.T) {
	pa := func(v string) *v1alpha1.PodAutoscaler {
		p := &v1alpha1.PodAutoscaler{}
		if v != "" {
			p.Annotations = map[string]string{"serving.knative.dev/progress-deadline": v}
		}
		return p
	}
	deploy := &appsv1.Deployment{Spec: appsv1.DeploymentSpec{ProgressDeadlineSeconds: ptr.To[int32](120)}}
	for _, c := range []struct {
		name   string
		pa     *v1alpha1.PodAutoscaler
		decode *appsv1.Deployment
		want   time.Duration
		err    bool
	}{
		{name: "default", pa: pa(""), want: 10 * time.Minute},
		{name: "deployment", pa: pa(""), decode: deploy, want: 2 * time.Minute},
		{name: "annotation over deployment", pa: pa("45s"), decode: deploy, want: 45 * time.Second},
		{name: "not a duration", pa: pa("soon"), err: true},
		{name: "zero", pa: pa("0s"), err: true},
	} {
		t.Run(c.name, func(t *testing.T) {
			got, err := ProgressDeadline(c.pa, c.decode)
			switch {
			case c.err && (err == nil || !strings.Contains(err.Error(), "serving.knative.dev/progress-deadline")):
				t.Errorf("error %v, want one naming the annotation", err)
			case !c.err && (err != nil || got != c.want):
				t.Errorf("got %v, %v; want %v", got, err, c.want)
			}
		})
	}
}
