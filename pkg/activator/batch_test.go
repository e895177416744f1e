package activator_test

import (
	"context"
	"errors"
	"net/http"
	"net/http/httptest"
	"os"
	"strings"
	"testing"
	"time"

	cloudevents "github.com/cloudevents/sdk-go/v2"
	cehttp "github.com/cloudevents/sdk-go/v2/protocol/http"
	"github.com/openai/openai-go/v3"
	"github.com/openai/openai-go/v3/option"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/llmd-kn/llmd-kn/internal/simtest"
	"github.com/llmd-kn/llmd-kn/pkg/activator"
	"github.com/llmd-kn/llmd-kn/pkg/batch"
	"github.com/llmd-kn/llmd-kn/pkg/router"
)

// Batch work enters through BatchFront and is served by the activator's
// own chain, in the batch tier: a CloudEvent (real SDK client, model
// omitted) and an OpenAI batch (real SDK) against a simulated pod.
func TestBatchFrontServesThroughTheChain(t *testing.T) {
	_, simAddr := simtest.Start(t, "demo")
	reg := prometheus.NewRegistry()
	act, err := activator.New(activator.Options{Registerer: reg, ScrapeInterval: 20 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(act.Close)
	key := activator.RevisionKey{Namespace: "default", Name: "llm-00001"}
	if err := act.UpsertRevision(activator.RevisionConfig{Key: key, Service: "llm", Models: []string{"demo"}, Spec: defaultSpec()}); err != nil {
		t.Fatal(err)
	}
	if err := act.SetPods(key, []activator.PodSpec{{Name: "pod-0", URL: "http://" + simAddr, Role: router.RoleBoth}}); err != nil {
		t.Fatal(err)
	}
	front, stop, err := act.BatchFront(context.Background(), activator.BatchConfig{Storage: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(stop)
	srv := httptest.NewServer(front)
	t.Cleanup(srv.Close)

	ce, err := cloudevents.NewClientHTTP()
	if err != nil {
		t.Fatal(err)
	}
	ev := cloudevents.NewEvent()
	ev.SetID("doc-1")
	ev.SetSource("/tests/activator")
	ev.SetType(batch.TypeRequest)
	_ = ev.SetData(cloudevents.ApplicationJSON, map[string]any{"prompt": "Once upon a time", "max_tokens": 3})
	reply, res := ce.Request(cloudevents.ContextWithTarget(context.Background(), srv.URL+"/"), ev)
	if !cloudevents.IsACK(res) || reply == nil || reply.Type() != batch.TypeResponse || reply.Subject() != "doc-1" {
		t.Fatalf("reply %v, %v", reply, res)
	}

	oc := openai.NewClient(option.WithBaseURL(srv.URL+"/v1/"), option.WithAPIKey("unused"), option.WithMaxRetries(0))
	c, err := batch.NewClient(batch.ClientOptions{URL: srv.URL, Poll: 10 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	_ = oc
	input := t.TempDir() + "/in.jsonl"
	if err := writeLines(input, `{"custom_id":"a","method":"POST","url":"/v1/completions","body":{"prompt":"hello","max_tokens":2}}`,
		`{"custom_id":"b","method":"POST","url":"/v1/completions","body":{"model":"demo","prompt":"world","max_tokens":2}}`); err != nil {
		t.Fatal(err)
	}
	b, err := c.Submit(context.Background(), batch.SubmitOptions{Input: input})
	if err != nil {
		t.Fatal(err)
	}
	if b.Status != openai.BatchStatusCompleted || b.RequestCounts.Completed != 2 {
		t.Fatalf("batch %+v", b)
	}
	// Interactive endpoints are still served by the activator.
	if _, err := oc.Models.List(context.Background()); err != nil {
		t.Fatal(err)
	}
	// All three inferences ran in the batch tier.
	if got := tierRequests(t, reg, "batch"); got != 3 {
		t.Fatalf("%v requests counted in the batch tier, want 3", got)
	}
}

func tierRequests(t *testing.T, reg *prometheus.Registry, tier string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	sum := 0.0
	for _, mf := range mfs {
		if mf.GetName() != "llmd_activator_requests_total" {
			continue
		}
		for _, m := range mf.Metric {
			for _, l := range m.Label {
				if l.GetName() == "tier" && l.GetValue() == tier {
					sum += m.GetCounter().GetValue()
				}
			}
		}
	}
	return sum
}

func writeLines(path string, lines ...string) error {
	return os.WriteFile(path, []byte(strings.Join(lines, "\n")+"\n"), 0o644)
}

// A Service's llm-d.ai/batch-sink sends its CloudEvents results to that
// sink (a real SDK receiver): the sender hears 202 at once.
func TestBatchFrontAnnotationSink(t *testing.T) {
	_, simAddr := simtest.Start(t, "demo")
	got := make(chan cloudevents.Event, 1)
	p, err := cloudevents.NewHTTP()
	if err != nil {
		t.Fatal(err)
	}
	recv, err := cloudevents.NewHTTPReceiveHandler(context.Background(), p, func(ev cloudevents.Event) { got <- ev })
	if err != nil {
		t.Fatal(err)
	}
	sink := httptest.NewServer(recv)
	t.Cleanup(sink.Close)

	act, err := activator.New(activator.Options{ScrapeInterval: 20 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(act.Close)
	spec, _, err := activator.ParseRevisionSpec(map[string]string{"llm-d.ai/batch-sink": sink.URL},
		"annotations", activator.NewVocabulary(activator.DefaultTiers(), router.DefaultConfig()))
	if err != nil {
		t.Fatal(err)
	}
	key := activator.RevisionKey{Namespace: "default", Name: "llm-00001"}
	if err := act.UpsertRevision(activator.RevisionConfig{Key: key, Service: "llm", Models: []string{"demo"}, Spec: spec}); err != nil {
		t.Fatal(err)
	}
	if err := act.SetPods(key, []activator.PodSpec{{Name: "pod-0", URL: "http://" + simAddr, Role: router.RoleBoth}}); err != nil {
		t.Fatal(err)
	}
	front, stop, err := act.BatchFront(context.Background(), activator.BatchConfig{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(stop)
	srv := httptest.NewServer(front)
	t.Cleanup(srv.Close)

	ce, _ := cloudevents.NewClientHTTP()
	ev := cloudevents.NewEvent()
	ev.SetID("doc-2")
	ev.SetSource("/tests/activator")
	ev.SetType(batch.TypeRequest)
	_ = ev.SetData(cloudevents.ApplicationJSON, map[string]any{"prompt": "hi", "max_tokens": 2})
	// The revision is found by Knative's headers, as its ingress sends them.
	ctx := cloudevents.ContextWithTarget(context.Background(), srv.URL+"/")
	ctx = cehttp.WithCustomHeader(ctx, http.Header{activator.RevisionHeader: {"llm-00001"}, activator.NamespaceHeader: {"default"}})
	reply, res := ce.Request(ctx, ev)
	var hr *cehttp.Result
	if !cloudevents.IsACK(res) || !errors.As(res, &hr) || hr.StatusCode != http.StatusAccepted || reply != nil {
		t.Fatalf("want 202 and no reply: %v %v", res, reply)
	}
	select {
	case r := <-got:
		if r.Type() != batch.TypeResponse || r.Subject() != "doc-2" {
			t.Fatalf("sink got %s", r)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("nothing reached the Service's sink")
	}
}
