package local

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"github.com/llmd-kn/llmd-kn/pkg/engine"
	"github.com/llmd-kn/llmd-kn/pkg/vllmsim"
)

// podCounter reads one counter (summed over its series) from the only
// ready pod of the first Service, through the status server.
func podCounter(t *testing.T, rt *Runtime, name string) float64 {
	t.Helper()
	var st Status
	getJSON(t, metricsURL(rt)+"/status.json", &st)
	var url string
	for _, r := range st.Services[0].Roles {
		for _, p := range r.Pods {
			if p.Phase == "ready" {
				url = p.MetricsURL
			}
		}
	}
	if url == "" {
		t.Fatalf("no ready pod: %+v", st.Services[0].Roles)
	}
	resp, err := http.Get(metricsURL(rt) + url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	p := expfmt.NewTextParser(model.LegacyValidation)
	mf, err := p.TextToMetricFamilies(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	var v float64
	if f := mf[name]; f != nil {
		for _, m := range f.GetMetric() {
			v += m.GetCounter().GetValue()
		}
	}
	return v
}

func cachedTokens(t *testing.T, body string) (prompt, cached int) {
	t.Helper()
	var r struct {
		Usage struct {
			PromptTokens        int `json:"prompt_tokens"`
			PromptTokensDetails struct {
				CachedTokens int `json:"cached_tokens"`
			} `json:"prompt_tokens_details"`
		}
	}
	if err := json.Unmarshal([]byte(body), &r); err != nil {
		t.Fatalf("%v: %.200s", err, body)
	}
	return r.Usage.PromptTokens, r.Usage.PromptTokensDetails.CachedTokens
}

// TestKVOffloadAcrossScaleToZero is issue 12's local end-to-end check: a
// revision that offloads (llm-d.ai/kv-offload, storage in the local
// default directory) warms a long prefix, scales to zero, and the first
// request after the cold start finds the prefix restored from storage
// (cached_tokens > 0) at a modelled cost below its recomputation. The
// comparison is of the simulator's modelled figures, not wall clock.
func TestKVOffloadAcrossScaleToZero(t *testing.T) {
	dir := t.TempDir()
	rt := newRuntime(t, svcYAML("llm", `autoscaling.knative.dev/min-scale: "0"
        llm-d.ai/kv-offload: on-scale-down
        llm-d.ai/kv-offload-deadline: 20s`), func(o *Options) {
		o.KVOffloadDir = dir
		o.SimStartupDelay = 10 * time.Second
		o.Autoscale.Disabled = true
	})
	key := rt.Services()[0].Key()
	host := "llm.default.localhost"
	prompt := strings.Repeat("You are a careful assistant for the support desk of a bank. ", 120)
	for i := range 2 {
		code, body := complete(t, rt.APIURL(), host, "demo", prompt, 4)
		if code != http.StatusOK {
			t.Fatalf("warm-up %d: %d %s", i, code, body)
		}
	}
	scaleTo := func(n int) {
		resp, err := http.Post(metricsURL(rt)+"/scale", "application/json",
			strings.NewReader(fmt.Sprintf(`{"service":"llm","replicas":%d}`, n)))
		if err != nil {
			t.Fatal(err)
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			t.Fatalf("POST /scale: %s", resp.Status)
		}
	}
	scaleTo(0)
	eventually(t, "scale to zero", func() bool {
		return len(rt.scaler.podsOf(key)[RoleDecode]) == 0 && rt.act.Stats()[0].Pods == 0
	})

	// The first request after the cold start.
	code, body := complete(t, rt.APIURL(), host, "demo", prompt, 4)
	if code != http.StatusOK {
		t.Fatalf("after scale from zero: %d %s", code, body)
	}
	promptTokens, cached := cachedTokens(t, body)
	if cached == 0 || cached >= promptTokens {
		t.Fatalf("first request after the cold start: %d of %d prompt tokens cached, want the restored prefix", cached, promptTokens)
	}
	if got := podCounter(t, rt, "llmd_kv_offload_restored_tokens_total"); int(got) != cached {
		t.Fatalf("the new pod restored %v tokens, the answer reports %d cached", got, cached)
	}
	restore := podCounter(t, rt, "llmd_kv_offload_restore_modelled_seconds_total")
	recompute := podCounter(t, rt, "llmd_kv_offload_recompute_modelled_seconds_total")
	if !(restore > 0 && restore < recompute) {
		t.Fatalf("modelled restore %.4fs, recompute %.4fs: want restore below recompute", restore, recompute)
	}
	t.Logf("restored %d of %d prompt tokens: modelled restore %.1f ms against %.1f ms of prefill",
		cached, promptTokens, restore*1e3, recompute*1e3)
}

// The local sample offloads into the runtime's directory, and the
// annotations reach the simulated pods' configuration.
func TestKVOffloadLocalSample(t *testing.T) {
	svcs, err := LoadFiles([]string{"../../config/samples/local/kv-offload.yaml"}, DefaultVocabulary())
	if err != nil {
		t.Fatal(err)
	}
	rt, err := New(Options{Services: svcs, KVOffloadDir: "/var/tmp/kv", Logger: testLogger()})
	if err != nil {
		t.Fatal(err)
	}
	kc, err := rt.kvOffloadConfig(svcs[0], engine.RoleBoth)
	if err != nil {
		t.Fatal(err)
	}
	want := vllmsim.KVOffloadConfig{Mode: "on-scale-down", URI: "/var/tmp/kv", MaxBytes: 64 << 30, Deadline: 30 * time.Second,
		PayloadScale: DefaultKVPayloadScale, PrefetchBytes: 4 << 30}
	if kc != want {
		t.Fatalf("pod config %+v, want %+v", kc, want)
	}
	if kc, _ := rt.kvOffloadConfig(svcs[0], engine.RoleDecode); kc.Enabled() {
		t.Fatalf("a decode pod offloads: %+v", kc)
	}
}

// The tier annotations reach an aggregated pod's simulator, not a
// prefill/decode pod's; without them there is no tier.
func TestKVTierAnnotationsReachThePods(t *testing.T) {
	const doc = `apiVersion: serving.knative.dev/v1
kind: Service
metadata:
  name: llm-tiers
spec:
  template:
    metadata:
      annotations:
        llm-d.ai/model: meta-llama/Llama-3.1-8B-Instruct
        llm-d.ai/kv-cpu-tier-bytes: 64Gi
        llm-d.ai/kv-disk-tier-bytes: 500Gi
    spec:
      containers:
      - name: vllm
        image: vllm/vllm-openai:v0.11.0
        args: [--model, meta-llama/Llama-3.1-8B-Instruct]
        ports:
        - containerPort: 8000
`
	svcs, err := Parse("tiers.yaml", []byte(doc), DefaultVocabulary())
	if err != nil {
		t.Fatal(err)
	}
	if cpu, disk := kvTiers(svcs[0], engine.RoleBoth); cpu != 64<<30 || disk != 500<<30 {
		t.Errorf("tiers %d %d, want 64Gi 500Gi", cpu, disk)
	}
	if cpu, disk := kvTiers(svcs[0], engine.RoleDecode); cpu != 0 || disk != 0 {
		t.Errorf("a decode pod gets tiers %d %d", cpu, disk)
	}
	plain, err := LoadFiles([]string{"../../config/samples/local/kv-offload.yaml"}, DefaultVocabulary())
	if err != nil {
		t.Fatal(err)
	}
	if cpu, disk := kvTiers(plain[0], engine.RoleBoth); cpu != 0 || disk != 0 {
		t.Errorf("a revision without tier annotations gets tiers %d %d", cpu, disk)
	}
	// The local tiers sample.
	sample, err := LoadFiles([]string{"../../config/samples/local/kv-tiers.yaml"}, DefaultVocabulary())
	if err != nil {
		t.Fatal(err)
	}
	if cpu, disk := kvTiers(sample[0], engine.RoleBoth); cpu != 8<<30 || disk != 64<<30 {
		t.Errorf("config/samples/local/kv-tiers.yaml: tiers %d %d, want 8Gi 64Gi", cpu, disk)
	}
	if n := sample[0].Engine.NumGPUBlocksOverride; n != 2048 {
		t.Errorf("config/samples/local/kv-tiers.yaml: %d GPU blocks, want the small 2048", n)
	}
}

// TestKVTiersLocal: a revision with llm-d.ai/kv-cpu-tier-bytes runs pods
// whose engines keep what their (small) GPU cache evicts in the CPU tier:
// a long prompt, three others that evict it from the GPU, then the first
// again: its whole blocks are cached (loaded from the tier, counted by the
// pod's tier counter), as vLLM's OffloadingConnector reports them.
func TestKVTiersLocal(t *testing.T) {
	yaml := strings.Replace(svcYAML("llm", `autoscaling.knative.dev/min-scale: "1"
        autoscaling.knative.dev/max-scale: "1"
        llm-d.ai/kv-cpu-tier-bytes: 1Gi`),
		`"--max-model-len", "8192"`, `"--max-model-len", "8192", "--num-gpu-blocks-override", "120"`, 1)
	rt := newRuntime(t, yaml, func(o *Options) { o.Autoscale.Disabled = true })
	host := "llm.default.localhost"
	ask := func(prompt string) (int, int) {
		t.Helper()
		code, body := complete(t, rt.APIURL(), host, "demo", prompt, 4)
		if code != http.StatusOK {
			t.Fatalf("%d %s", code, body)
		}
		return cachedTokens(t, body)
	}
	prompt := strings.Repeat("You are a careful assistant for the support desk of a bank. ", 60)
	ask(prompt)
	for i := range 3 {
		ask(strings.Repeat(fmt.Sprintf("Filler %d keeps the small GPU cache busy with other words. ", i), 60))
	}
	promptTokens, cached := ask(prompt)
	if want := (promptTokens - 1) / 16 * 16; cached != want {
		t.Fatalf("the prompt again: %d of %d prompt tokens cached, want %d from the CPU tier", cached, promptTokens, want)
	}
	if got := podCounter(t, rt, "kn_llmd_sim_kv_tier_hit_tokens_total"); int(got) != cached {
		t.Fatalf("the pod loaded %v tokens from its tiers, the answer reports %d cached", got, cached)
	}
}
