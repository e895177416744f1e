package local

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/llmd-kn/llmd-kn/pkg/activator"
	"github.com/llmd-kn/llmd-kn/pkg/engine"
	"github.com/llmd-kn/llmd-kn/pkg/vllmsim"
)

// simPod is the test binary as a pod whose KV-event publisher connects to
// a collector, as llm-d-inference-sim's does: --kv ENDPOINT --topic T
// --port P. It serves until SIGTERM kills it.
func simPod() {
	fs := flag.NewFlagSet("simpod", flag.ExitOnError)
	kv := fs.String("kv", "", "collector endpoint")
	topic := fs.String("topic", "", "KV-event topic")
	port := fs.String("port", "", "HTTP port")
	_ = fs.Parse(os.Args[1:])
	prof, err := engine.BuiltinProfile(engine.DefaultProfile)
	if err != nil {
		fmt.Println(err)
		os.Exit(1)
	}
	srv, err := vllmsim.New(vllmsim.Config{Model: "demo", Profile: prof, TimeScale: 0.02, Seed: 1,
		Logger:   slog.New(slog.DiscardHandler),
		KVEvents: vllmsim.KVEventsConfig{Enable: true, Publisher: "zmq", Endpoint: *kv, Topic: *topic}})
	if err != nil {
		fmt.Println(err)
		os.Exit(1)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:"+*port)
	if err != nil {
		fmt.Println(err)
		os.Exit(1)
	}
	fmt.Println("publishing to", *kv, "as", *topic)
	_ = srv.Serve(context.Background(), ln)
}

// TestKVEventsFromPodsThatConnect: kn-llmd local binds a KV-event
// collector for a pod command that names {kv_events_collector}; the pods'
// publishers connect to it under llm-d's topic kv@<pod IP>:<port>@<model>
// (two pods on one IP, told apart by port), and a repeated prompt lands
// on the pod that holds it, predicted cached from those events.
func TestKVEventsFromPodsThatConnect(t *testing.T) {
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	t.Setenv("LOCAL_TEST_SIMPOD", "1")
	ann := "llm-d.ai/routing-profile: kv-precise\n        autoscaling.knative.dev/min-scale: \"2\""
	rt := newRuntime(t, svcYAML("conn", ann), func(o *Options) {
		o.PodCommand = exe + " --kv {kv_events_collector} --topic kv@127.0.0.1:{port}@{served_model_name} --port {port}"
		o.DebugRouting = true
	})
	if !strings.HasPrefix(rt.kvCollector, "tcp://127.0.0.1:") || strings.HasSuffix(rt.kvCollector, ":0") {
		t.Fatalf("collector %q", rt.kvCollector)
	}
	waitReady(t, rt)
	send := func(prompt string) (pod string, predicted int) {
		t.Helper()
		body, _ := json.Marshal(map[string]any{"model": "demo", "prompt": prompt, "max_tokens": 2})
		resp, err := http.Post(rt.APIURL()+"/v1/completions", "application/json", strings.NewReader(string(body)))
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		raw, _ := io.ReadAll(resp.Body)
		if resp.StatusCode != 200 {
			t.Fatalf("%d %s", resp.StatusCode, raw)
		}
		for _, f := range strings.Fields(resp.Header.Get(activator.RouteHeader)) {
			if v, ok := strings.CutPrefix(f, "decode="); ok {
				pod = strings.TrimSuffix(v, ";")
			}
			if v, ok := strings.CutPrefix(f, "cached="); ok {
				fmt.Sscanf(v, "%d/", &predicted)
			}
		}
		return pod, predicted
	}
	publishing := func() int {
		for _, s := range rt.act.Stats() {
			if s.KVEvents != nil {
				return s.KVEvents.PodsPublishing
			}
		}
		return 0
	}
	// A connecting publisher's first batches may go before its connection
	// is up: distinct prompts until both pods' events arrive.
	deadline := time.Now().Add(30 * time.Second)
	for n := 0; publishing() < 2; n++ {
		send(fmt.Sprintf("warm-up %d: %s", n, strings.Repeat("lorem ipsum dolor sit amet ", 40)))
		if time.Now().After(deadline) {
			t.Fatalf("KV events from %d of 2 pods through %s", publishing(), rt.kvCollector)
		}
		time.Sleep(20 * time.Millisecond)
	}
	shared := strings.Repeat("The lending rules of the library, quoted exactly. ", 60)
	first, _ := send(shared + "first")
	deadline = time.Now().Add(30 * time.Second)
	for n := 0; ; n++ {
		pod, predicted := send(fmt.Sprintf("%squestion %d", shared, n))
		if pod == first && predicted > 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("repeat went to %s (first %s), predicted %d cached", pod, first, predicted)
		}
		time.Sleep(20 * time.Millisecond)
	}
	for _, s := range rt.act.Stats() {
		if kv := s.KVEvents; kv == nil || kv.BatchesRejected != 0 || kv.BlocksUnmatched != 0 {
			t.Fatalf("KV events summary %+v", kv)
		}
	}
}

// TestKVEventsBindOption: an explicit bind endpoint is used as given, and a
// bad one fails Start with the flag's name.
func TestKVEventsBindOption(t *testing.T) {
	rt := newRuntime(t, svcYAML("b", "{}"), func(o *Options) { o.KVEventsBind = "tcp://127.0.0.1:0" })
	if !strings.HasPrefix(rt.kvCollector, "tcp://127.0.0.1:") {
		t.Fatalf("collector %q", rt.kvCollector)
	}
	svcs, err := Parse("t.yaml", []byte(svcYAML("c", "{}")), DefaultVocabulary())
	if err != nil {
		t.Fatal(err)
	}
	bad, err := New(Options{Services: svcs, Addr: "127.0.0.1:0", MetricsAddr: "off", KVEventsBind: "udp://x", Logger: testLogger()})
	if err != nil {
		t.Fatal(err)
	}
	if err := bad.Start(); err == nil || !strings.Contains(err.Error(), "--kv-events-bind") {
		t.Fatalf("Start with a bad bind: %v", err)
	}
}
