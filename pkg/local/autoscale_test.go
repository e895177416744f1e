package local

import (
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/llmd-kn/llmd-kn/pkg/apis"
)

func TestAutoscalerConfigFromAnnotations(t *testing.T) {
	parse := func(ann string) *Service {
		t.Helper()
		svcs, err := Parse("t.yaml", []byte(svcYAML("llm", ann)), DefaultVocabulary())
		if err != nil {
			t.Fatal(err)
		}
		return svcs[0]
	}
	o := AutoscaleOptions{Tick: 100 * time.Millisecond, ScaleToZeroGracePeriod: time.Second, StableWindow: time.Second}

	// Tier targets, unbounded max (the local cap), scale to zero allowed.
	svc := parse(`llm-d.ai/routing-profile: default`)
	if !Autoscaled(svc) {
		t.Fatal("llm-d annotations should default the slo.autoscaling.llm-d.ai class")
	}
	c, err := AutoscalerConfig(svc, o)
	if err != nil {
		t.Fatal(err)
	}
	if c.TickInterval != o.Tick || c.StableWindow != o.StableWindow || c.ScaleToZeroGracePeriod != o.ScaleToZeroGracePeriod {
		t.Errorf("timing %v %v %v", c.TickInterval, c.StableWindow, c.ScaleToZeroGracePeriod)
	}
	if c.SLO.TTFT <= 0 || c.SLO.TPOT <= 0 || c.SLO.Percentile != apis.DefaultPercentile {
		t.Errorf("SLO %+v", c.SLO)
	}
	if !c.EnableScaleToZero || c.Decode.MaxScale != MaxLocalReplicas || c.Disaggregated || c.Advisory {
		t.Errorf("config %+v", c)
	}

	// Explicit targets, bounds per role, advise mode.
	svc = parse(strings.Join([]string{
		`llm-d.ai/slo-ttft: 300ms`, `llm-d.ai/slo-tpot: 20ms`, `llm-d.ai/slo-percentile: "99"`,
		`autoscaling.knative.dev/min-scale: "1"`, `autoscaling.knative.dev/max-scale: "5"`,
		`llm-d.ai/disaggregation: prefill-decode`, `llm-d.ai/prefill-max-scale: "3"`,
		`llm-d.ai/autoscaler-mode: advise`}, "\n        "))
	c, err = AutoscalerConfig(svc, o)
	if err != nil {
		t.Fatal(err)
	}
	if c.SLO.TTFT != 300*time.Millisecond || c.SLO.TPOT != 20*time.Millisecond || c.SLO.Percentile != 99 {
		t.Errorf("SLO %+v", c.SLO)
	}
	if c.EnableScaleToZero || c.Decode.MinScale != 1 || c.Decode.MaxScale != 5 || !c.Disaggregated ||
		c.Prefill.MaxScale != 3 || !c.Advisory {
		t.Errorf("config %+v", c)
	}

	// A Service without llm-d annotations keeps Knative's class: no decider.
	if Autoscaled(parse(`autoscaling.knative.dev/min-scale: "0"`)) {
		t.Error("a plain Service should not be autoscaled")
	}
}

// request is one completion; unlike complete it may run outside the test
// goroutine.
func request(base, host, prompt string, maxTokens int) error {
	body := fmt.Sprintf(`{"model":"demo","prompt":%q,"max_tokens":%d,"ignore_eos":true}`, prompt, maxTokens)
	req, err := http.NewRequest(http.MethodPost, base+"/v1/completions", strings.NewReader(body))
	if err != nil {
		return err
	}
	req.Header.Set("Content-Type", "application/json")
	req.Host = host
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	raw, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK {
		return &statusError{code: resp.StatusCode, retryAfter: resp.Header.Get("Retry-After"), msg: fmt.Sprintf("%s: %s", resp.Status, raw)}
	}
	return nil
}

// statusError is an answer other than 200.
type statusError struct {
	code       int
	retryAfter string
	msg        string
}

func (e *statusError) Error() string { return e.msg }

// shed reports whether err is the activator's overload answer: a 429
// with a Retry-After, which a client retries later.
func shed(err error) bool {
	var se *statusError
	return errors.As(err, &se) && se.code == http.StatusTooManyRequests && se.retryAfter != ""
}

// burst sends n concurrent completions and returns the failures.
func burst(t *testing.T, rt *Runtime, host string, n, maxTokens int) []string {
	failed, _ := burstShed(t, rt, host, n, maxTokens, false)
	return failed
}

// burstShed is burst that, with allowShed, counts the activator's
// overload answers (429 with Retry-After) apart from the failures.
func burstShed(t *testing.T, rt *Runtime, host string, n, maxTokens int, allowShed bool) (failed []string, shedN int) {
	t.Helper()
	var mu sync.Mutex
	var wg sync.WaitGroup
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			prompt := fmt.Sprintf("request %d: %s", i, strings.Repeat("tell me about autoscaling ", 40))
			if err := request(rt.APIURL(), host, prompt, maxTokens); err != nil {
				mu.Lock()
				if allowShed && shed(err) {
					shedN++
				} else {
					failed = append(failed, err.Error())
				}
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	return failed, shedN
}

// TestAutoscalerScalesZeroToNToZero: a Service of the SLO class at
// min-scale 0 wakes on a burst (the poke asks the decider; the activator
// buffers while pods load), scales out to several pods under the queue,
// scales back down once the load stops and reaches zero after the grace
// period, with no failed request.
func TestAutoscalerScalesZeroToNToZero(t *testing.T) {
	const grace = 3 * time.Second
	ann := strings.Join([]string{`autoscaling.knative.dev/min-scale: "0"`, `autoscaling.knative.dev/max-scale: "4"`,
		`llm-d.ai/slo-ttft: 200ms`}, "\n        ")
	rt := newRuntime(t, svcYAML("llm", ann), func(o *Options) {
		o.SimStartupDelay = 20 * time.Second // 400 ms of wall time at 0.02
		o.Autoscale = AutoscaleOptions{Tick: 50 * time.Millisecond, StableWindow: 500 * time.Millisecond,
			ScaleToZeroGracePeriod: grace}
	})
	key := rt.Services()[0].Key()
	if rep, _ := rt.Scaler().Replicas(key, RoleDecode); rep != (Replicas{}) {
		t.Fatalf("at start: %+v, want zero", rep)
	}

	// Watch the desired count throughout.
	var mu sync.Mutex
	history := []int{0}
	stop := make(chan struct{})
	watched := make(chan struct{})
	go func() {
		defer close(watched)
		for {
			select {
			case <-stop:
				return
			case <-time.After(5 * time.Millisecond):
			}
			rep, _ := rt.Scaler().Replicas(key, RoleDecode)
			mu.Lock()
			if history[len(history)-1] != rep.Desired {
				history = append(history, rep.Desired)
			}
			mu.Unlock()
		}
	}()

	start := time.Now()
	if failed := burst(t, rt, "llm.default.localhost", 32, 16); len(failed) > 0 {
		t.Fatalf("%d failed requests, first: %s", len(failed), failed[0])
	}
	loadStopped := time.Now()
	t.Logf("burst served in %v", loadStopped.Sub(start))
	mu.Lock()
	peak := 0
	for _, n := range history {
		peak = max(peak, n)
	}
	mu.Unlock()
	if peak < 2 {
		t.Fatalf("desired replicas %v: want a scale-out to at least 2 under the burst", history)
	}
	if got := testutil.ToFloat64(rt.recommendedG.WithLabelValues(key.String(), "decode")); got < 1 {
		t.Errorf("recommended gauge %v during the load", got)
	}

	deadline := time.Now().Add(grace + 30*time.Second)
	var zeroAt time.Time
	for {
		rep, _ := rt.Scaler().Replicas(key, RoleDecode)
		if rep.Desired == 0 && zeroAt.IsZero() {
			zeroAt = time.Now()
		}
		if rep.Desired == 0 && rep.Current == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("not at zero %v after the load stopped: %+v", time.Since(loadStopped), rep)
		}
		time.Sleep(10 * time.Millisecond)
	}
	close(stop)
	<-watched
	mu.Lock()
	defer mu.Unlock()
	if history[len(history)-1] != 0 {
		history = append(history, 0)
	}
	t.Logf("desired replicas over time: %v; zero %v after the load stopped", history, zeroAt.Sub(loadStopped))
	// 0 -> peak -> something between -> 0.
	if history[0] != 0 || history[len(history)-1] != 0 {
		t.Fatalf("history %v", history)
	}
	down := false
	for i, n := range history {
		if n > 0 && n < peak && i > 0 && history[i-1] > n {
			down = true
		}
	}
	if !down {
		t.Errorf("history %v: want a scale-down step before zero", history)
	}
	// The grace period counts from the decider's last tick that saw
	// traffic, which comes before loadStopped by up to a tick plus however
	// long this goroutine took to note the time after the last answer (a
	// busy machine: a second is generous). Without the grace period zero
	// would come after the 500 ms stable window.
	if zeroAt.Sub(loadStopped) < grace-time.Second {
		t.Errorf("reached zero %v after the load stopped, before the %v grace period", zeroAt.Sub(loadStopped), grace)
	}
	if st := rt.act.Stats(); st[0].Errors != 0 {
		t.Errorf("activator counted %d errors", st[0].Errors)
	}
}

// TestAutoscalerAdviseMode: in advise mode the decider reports (gauge,
// status.json, status page data) a scale-out under load but the replicas
// stay where they are.
func TestAutoscalerAdviseMode(t *testing.T) {
	ann := strings.Join([]string{`autoscaling.knative.dev/min-scale: "1"`, `autoscaling.knative.dev/max-scale: "4"`,
		`llm-d.ai/slo-ttft: 100ms`, `llm-d.ai/autoscaler-mode: advise`}, "\n        ")
	// --max-num-seqs 4: a pod holds 4 sequences, so 48 concurrent requests
	// need several.
	yaml := strings.Replace(svcYAML("adv", ann), `"8192"]`, `"8192", "--max-num-seqs", "4"]`, 1)
	rt := newRuntime(t, yaml, func(o *Options) {
		o.Autoscale = AutoscaleOptions{Tick: 20 * time.Millisecond, StableWindow: 500 * time.Millisecond}
	})
	waitReady(t, rt)
	key := rt.Services()[0].Key()
	gauge := func() float64 { return testutil.ToFloat64(rt.recommendedG.WithLabelValues(key.String(), "decode")) }

	// Keep a queue building until the decider advises more pods.
	done := make(chan struct{})
	var wg sync.WaitGroup
	var failedMu sync.Mutex
	var failed []string
	shedTotal := 0
	for range 3 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				select {
				case <-done:
					return
				default:
				}
				// One pod kept under a queue that keeps growing: the
				// activator sheds what cannot start within the tier's
				// budget (429 with Retry-After), as it should; anything
				// else is a failure.
				f, n := burstShed(t, rt, "adv.default.localhost", 16, 64, true)
				failedMu.Lock()
				failed = append(failed, f...)
				shedTotal += n
				failedMu.Unlock()
			}
		}()
	}
	eventually(t, "a recommendation above one replica", func() bool { return gauge() >= 2 })
	var st Status
	getJSON(t, metricsURL(rt)+"/status.json", &st)
	close(done)
	wg.Wait()
	if len(failed) > 0 {
		t.Fatalf("%d failed requests, first: %s", len(failed), failed[0])
	}
	t.Logf("%d requests shed with 429 and Retry-After while the one pod was saturated", shedTotal)
	rep, _ := rt.Scaler().Replicas(key, RoleDecode)
	if rep.Desired != 1 || rep.Current != 1 {
		t.Fatalf("advise mode changed the replicas: %+v", rep)
	}
	ss := st.Services[0]
	if ss.Autoscaler == nil || ss.Autoscaler.Mode != apis.AutoscalerAdvise || ss.Autoscaler.Recommendation == nil ||
		!ss.Autoscaler.Recommendation.Advisory {
		t.Fatalf("status autoscaler %+v", ss.Autoscaler)
	}
	if r := ss.Roles[0]; r.Recommended == nil || r.Desired != 1 {
		t.Fatalf("status role %+v", r)
	}
	t.Logf("advised %v decode replicas (status: %d recommended, %d desired)", gauge(), *ss.Roles[0].Recommended, ss.Roles[0].Desired)
}

// TestColdStartReachesTheDecider: the decider plans burst headroom for the
// pods' cold start: simulated pods' --sim-startup-delay unless
// AutoscaleOptions.ColdStart says otherwise; --pod-command pods only when
// it is given.
func TestColdStartReachesTheDecider(t *testing.T) {
	for _, tc := range []struct {
		name       string
		sim        time.Duration
		coldStart  time.Duration
		podCommand string
		want       time.Duration
	}{
		{name: "none", want: 0},
		{name: "simulated pods' startup delay", sim: 20 * time.Second, want: 20 * time.Second},
		{name: "given", sim: 20 * time.Second, coldStart: 5 * time.Second, want: 5 * time.Second},
		{name: "pod command, none given", sim: 20 * time.Second, podCommand: "run --port {port}", want: 0},
		{name: "pod command, given", podCommand: "run --port {port}", coldStart: time.Minute, want: time.Minute},
	} {
		t.Run(tc.name, func(t *testing.T) {
			svcs, err := Parse("t.yaml", []byte(svcYAML("llm", `llm-d.ai/routing-profile: default`)), DefaultVocabulary())
			if err != nil {
				t.Fatal(err)
			}
			rt, err := New(Options{Services: svcs, Addr: "127.0.0.1:0", MetricsAddr: "off", SimStartupDelay: tc.sim,
				PodCommand: tc.podCommand, Autoscale: AutoscaleOptions{ColdStart: tc.coldStart}})
			if err != nil {
				t.Fatal(err)
			}
			defer rt.Close()
			a := rt.autoscalers[svcs[0].Key()]
			if a == nil {
				t.Fatal("no decider")
			}
			if a.cfg.ColdStart != tc.want {
				t.Errorf("decider's cold start %v, want %v", a.cfg.ColdStart, tc.want)
			}
		})
	}
}
