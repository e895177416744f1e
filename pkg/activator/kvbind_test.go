package activator

import (
	"context"
	"fmt"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/llmd-kn/llmd-kn/pkg/apis"
	"github.com/llmd-kn/llmd-kn/pkg/engine"
	"github.com/llmd-kn/llmd-kn/pkg/vllmsim"
)

// TestKVEventsBind: with the activator binding a collector endpoint and the
// engines' publishers connecting to it (llm-d's direction), events reach the
// pod their topic names and a repeated prompt is predicted cached, whether
// the topic names the pod (kv@pod-0@model) or, as llm-d's publishers do,
// its IP:port (kv@127.0.0.1:8000@model, two pods on one IP).
func TestKVEventsBind(t *testing.T) {
	for _, topic := range []string{"name", "ip:port"} {
		t.Run(topic, func(t *testing.T) { testKVEventsBind(t, topic == "ip:port") })
	}
}

func testKVEventsBind(t *testing.T, byAddr bool) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	// The fixture's activator is built first; its collector binds before
	// the simulators connect.
	f := newFixture(t, apis.Spec{RoutingProfile: "kv-precise", PDThreshold: 1 << 30})
	addrc := make(chan net.Addr, 1)
	errc := make(chan error, 1)
	go func() { errc <- f.act.ServeKVEvents(ctx, "tcp://127.0.0.1:0", func(a net.Addr) { addrc <- a }) }()
	var bound net.Addr
	select {
	case bound = <-addrc:
	case err := <-errc:
		t.Fatal(err)
	case <-time.After(30 * time.Second):
		t.Fatal("collector never bound")
	}
	var sims []*sim
	for i := range 2 {
		name := fmt.Sprintf("pod-%d", i)
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		sims = append(sims, startSimOn(t, ln, name, engine.RoleBoth, 0.02, func(c *vllmsim.Config) {
			c.KVEvents.Endpoint = "tcp://" + bound.String()
			if byAddr {
				c.KVEvents.Topic = "kv@" + ln.Addr().String() + "@" + testModel
			}
		}))
	}
	var pods []PodSpec
	for _, s := range sims {
		if s.kv != "" {
			t.Fatalf("%s binds %s, want it to connect", s.name, s.kv)
		}
		pods = append(pods, PodSpec{Name: s.name, URL: s.url})
	}
	if err := f.act.SetPods(f.key, pods); err != nil {
		t.Fatal(err)
	}
	f.waitReady(t, 2)
	f.act.mu.RLock()
	rev := f.act.revs[f.key]
	f.act.mu.RUnlock()
	// A connecting publisher's first messages may go before the connection
	// is up: send throwaway prompts until events flow for both pods.
	deadline := time.Now().Add(30 * time.Second)
	for n := 0; ; n++ {
		if c := f.complete(t, longPrompt(200, uint32(1000+n)), 1, nil); c.status != 200 {
			t.Fatalf("%d %s", c.status, c.body)
		}
		if rev.rt.PreciseEndpoint("pod-0").Stored > 0 && rev.rt.PreciseEndpoint("pod-1").Stored > 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no KV events through the bound endpoint: %+v %+v", rev.rt.PreciseEndpoint("pod-0"), rev.rt.PreciseEndpoint("pod-1"))
		}
		time.Sleep(20 * time.Millisecond)
	}
	shared := longPrompt(2000, 7)
	first := f.complete(t, shared, 4, nil)
	pod := routedTo(first.route)
	deadline = time.Now().Add(30 * time.Second)
	for {
		c := f.complete(t, shared, 4, nil)
		if routedTo(c.route) == pod && strings.Contains(c.route, "cached=19") {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("repeat not predicted cached on %s: %s", pod, c.route)
		}
		time.Sleep(20 * time.Millisecond)
	}
	if p := rev.pod(pod); p.kv.decoded.Load() == 0 || p.kv.rejected.Load() != 0 {
		t.Fatalf("pod %s: %d batches decoded, %d rejected", pod, p.kv.decoded.Load(), p.kv.rejected.Load())
	}
	if st := f.act.Stats(); st[0].KVEvents == nil || st[0].KVEvents.PodsPublishing != 2 || !strings.Contains(st[0].KVEvents.Line, "KV events from 2 pods") {
		t.Fatalf("status summary %+v", st[0].KVEvents)
	}
	if n := f.act.kvUnknown.Load(); n != 0 {
		t.Fatalf("%d messages from unknown pods", n)
	}
	cancel()
	if err := <-errc; err != nil {
		t.Fatal(err)
	}
}

// TestKVTopicNamesPod: which pod a collector's topic names.
func TestKVTopicNamesPod(t *testing.T) {
	act, err := New(Options{Registerer: prometheus.NewRegistry()})
	if err != nil {
		t.Fatal(err)
	}
	defer act.Close()
	a := RevisionKey{Namespace: "default", Name: "a-00001"}
	b := RevisionKey{Namespace: "default", Name: "b-00001"}
	for _, k := range []RevisionKey{a, b} {
		if err := act.UpsertRevision(RevisionConfig{Key: k, Service: k.Name, Models: []string{k.Name}, Spec: apis.Spec{RoutingProfile: "default"}}); err != nil {
			t.Fatal(err)
		}
	}
	// Unreachable ports: the pods never get ready, which topics ignore.
	if err := act.SetPods(a, []PodSpec{{Name: "a-1", URL: "http://127.0.0.1:9"}, {Name: "a-2", URL: "http://127.0.0.1:11"},
		{Name: "a-3", URL: "http://10.0.0.7:8000"}}); err != nil {
		t.Fatal(err)
	}
	if err := act.SetPods(b, []PodSpec{{Name: "b-1", URL: "http://[fd00::5]:8000"}, {Name: "b-2", URL: "http://10.0.0.8"}}); err != nil {
		t.Fatal(err)
	}
	for topic, want := range map[string]string{
		"kv@a-2@a":                 "a-2",
		"kv@127.0.0.1:9@a":         "a-1", // llm-d: <pod IP>:<port>
		"kv@127.0.0.1:11@anything": "a-2",
		"kv@10.0.0.7@a":            "a-3", // vLLM's kv@<pod IP>: one pod has it
		"kv@10.0.0.7:8000@a":       "a-3",
		"kv@[fd00::5]:8000@b":      "b-1",
		"kv@fd00::5@b":             "b-1",
		"kv@10.0.0.8:80@b":         "b-2", // the scheme's port
		"kv@127.0.0.1@a":           "",    // two pods on that IP: ambiguous
		"kv@127.0.0.1:12@a":        "",
		"kv@10.0.0.7:9000@a":       "",
		"kv@@a":                    "",
		"kv":                       "",
		"kv@nobody@a":              "",
	} {
		_, p := act.kvPod(topic)
		got := ""
		if p != nil {
			got = p.spec.Name
		}
		if got != want {
			t.Errorf("topic %q names %q, want %q", topic, got, want)
		}
	}
}
