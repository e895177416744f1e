package vllmsim_test

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/openai/openai-go/v3"
	"github.com/openai/openai-go/v3/option"
	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
	"google.golang.org/protobuf/testing/protocmp"

	"github.com/llmd-kn/llmd-kn/pkg/engine"
	"github.com/llmd-kn/llmd-kn/pkg/tokenizer"
	"github.com/llmd-kn/llmd-kn/pkg/vllmsim"
)

// testTimeScale runs the modelled H100 fifty times faster: a decode step of
// about 7 ms takes 0.14 ms.
const testTimeScale = 0.02

type sim struct {
	*vllmsim.Server
	url  string
	port int
	stop func() error // graceful: cancels Serve and waits for it
}

// startSim runs a simulator on a loopback port until the test ends.
func startSim(t testing.TB, cfg vllmsim.Config) *sim {
	t.Helper()
	if cfg.TimeScale == 0 {
		cfg.TimeScale = testTimeScale
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	s, err := vllmsim.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Serve(ctx, ln) }()
	var once sync.Once
	var serveErr error
	stop := func() error {
		once.Do(func() {
			cancel()
			serveErr = <-done
		})
		return serveErr
	}
	t.Cleanup(func() {
		if err := stop(); err != nil {
			t.Errorf("serve: %v", err)
		}
		_ = s.Close()
	})
	return &sim{Server: s, url: "http://" + ln.Addr().String(), port: ln.Addr().(*net.TCPAddr).Port, stop: stop}
}

func (s *sim) client() openai.Client {
	return openai.NewClient(option.WithBaseURL(s.url+"/v1/"), option.WithAPIKey("unused"), option.WithMaxRetries(0))
}

// longText is a prompt of about n tokens.
func longText(n int, salt string) string {
	words := strings.Fields("the quick brown fox jumps over a lazy dog while seven wise owls watch from old oak trees")
	var sb strings.Builder
	sb.WriteString(salt)
	for i := range n {
		sb.WriteString(" ")
		sb.WriteString(words[i%len(words)])
	}
	return sb.String()
}

func post(t testing.TB, url, body string) (int, []byte) {
	t.Helper()
	resp, err := http.Post(url, "application/json", strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp.StatusCode, b
}

// eventually polls cond until it holds or the deadline passes.
func eventually(t testing.TB, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(2 * time.Millisecond)
	}
}

func TestOpenAIClientStreamsChat(t *testing.T) {
	s := startSim(t, vllmsim.Config{})
	c := s.client()
	msgs := []openai.ChatCompletionMessageParamUnion{
		openai.SystemMessage("You are terse."),
		openai.UserMessage("Name three rivers."),
	}
	stream := c.Chat.Completions.NewStreaming(context.Background(), openai.ChatCompletionNewParams{
		Model:         "demo",
		Messages:      msgs,
		MaxTokens:     openai.Int(12),
		StreamOptions: openai.ChatCompletionStreamOptionsParam{IncludeUsage: openai.Bool(true)},
	}, option.WithJSONSet("ignore_eos", true))
	var acc openai.ChatCompletionAccumulator
	chunks := 0
	for stream.Next() {
		acc.AddChunk(stream.Current())
		chunks++
	}
	if err := stream.Err(); err != nil {
		t.Fatal(err)
	}
	wantPrompt := len(vllmsim.EncodeChatPrompt(nil, []tokenizer.Message{
		{Role: "system", Content: "You are terse."}, {Role: "user", Content: "Name three rivers."}}, true))
	u := acc.Usage
	if u.PromptTokens != int64(wantPrompt) || u.CompletionTokens != 12 || u.TotalTokens != int64(wantPrompt+12) {
		t.Fatalf("usage %+v, want prompt %d, completion 12", u, wantPrompt)
	}
	// A role chunk, twelve one-token chunks, the usage chunk.
	if chunks != 14 {
		t.Errorf("got %d chunks, want 14", chunks)
	}
	if len(acc.Choices) != 1 || acc.Choices[0].FinishReason != "length" {
		t.Fatalf("choices %+v", acc.Choices)
	}
	if got := strings.Count(acc.Choices[0].Message.Content, " "); got != 12 {
		t.Errorf("content %q has %d words, want 12", acc.Choices[0].Message.Content, got)
	}
	if acc.Choices[0].Message.Role != "assistant" {
		t.Errorf("role %q", acc.Choices[0].Message.Role)
	}

	// Not streamed.
	resp, err := c.Chat.Completions.New(context.Background(), openai.ChatCompletionNewParams{
		Model: "demo", Messages: msgs, MaxCompletionTokens: openai.Int(5),
	}, option.WithJSONSet("ignore_eos", true))
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(resp.ID, "chatcmpl-") || resp.Object != "chat.completion" || resp.Model != "demo" {
		t.Errorf("response header fields: %s %s %s", resp.ID, resp.Object, resp.Model)
	}
	if resp.Usage.CompletionTokens != 5 || resp.Choices[0].FinishReason != "length" || resp.Choices[0].Message.Content == "" {
		t.Fatalf("response %+v", resp)
	}
	// The repeated conversation reuses its cached full blocks.
	if c := resp.Usage.PromptTokensDetails.CachedTokens; c != int64((wantPrompt-1)/16*16) {
		t.Errorf("cached tokens %d, want %d", c, (wantPrompt-1)/16*16)
	}
}

func TestOpenAIClientStreamsCompletionWithCachedTokens(t *testing.T) {
	s := startSim(t, vllmsim.Config{})
	c := s.client()
	prompt := longText(300, "completion")
	promptTokens := len(vllmsim.EncodeCompletionPrompt(nil, prompt))

	stream := func() (openai.CompletionUsage, string, int) {
		st := c.Completions.NewStreaming(context.Background(), openai.CompletionNewParams{
			Model:         "demo",
			Prompt:        openai.CompletionNewParamsPromptUnion{OfString: openai.String(prompt)},
			MaxTokens:     openai.Int(20),
			StreamOptions: openai.ChatCompletionStreamOptionsParam{IncludeUsage: openai.Bool(true)},
		}, option.WithJSONSet("ignore_eos", true))
		var u openai.CompletionUsage
		var text strings.Builder
		n := 0
		for st.Next() {
			ch := st.Current()
			n++
			if len(ch.Choices) == 0 {
				u = ch.Usage
				continue
			}
			text.WriteString(ch.Choices[0].Text)
		}
		if err := st.Err(); err != nil {
			t.Fatal(err)
		}
		return u, text.String(), n
	}
	u1, text, n := stream()
	if u1.PromptTokens != int64(promptTokens) || u1.CompletionTokens != 20 {
		t.Fatalf("usage %+v, want %d prompt tokens", u1, promptTokens)
	}
	if u1.PromptTokensDetails.CachedTokens != 0 {
		t.Errorf("cold prompt reports %d cached tokens", u1.PromptTokensDetails.CachedTokens)
	}
	if n != 21 || strings.Count(text, " ") != 20 {
		t.Errorf("%d chunks, text %q", n, text)
	}
	u2, _, _ := stream()
	cached := u2.PromptTokensDetails.CachedTokens
	if cached <= 0 || cached%16 != 0 || cached != int64((promptTokens-1)/16*16) {
		t.Fatalf("repeated prompt: cached tokens %d, want %d (full blocks but the last token)", cached, (promptTokens-1)/16*16)
	}

	// Not streamed, token ids as the prompt.
	ids := []int64{1, 2, 3, 4, 5}
	resp, err := c.Completions.New(context.Background(), openai.CompletionNewParams{
		Model:     "demo",
		Prompt:    openai.CompletionNewParamsPromptUnion{OfArrayOfTokens: ids},
		MaxTokens: openai.Int(3),
		Seed:      openai.Int(42),
	})
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(resp.ID, "cmpl-") || resp.Usage.PromptTokens != 5 || resp.Usage.CompletionTokens != 3 || len(resp.Choices) != 1 {
		t.Fatalf("response %+v", resp)
	}
}

func TestSeedIsDeterministic(t *testing.T) {
	s := startSim(t, vllmsim.Config{})
	text := func(seed int) string {
		_, b := post(t, s.url+"/v1/completions", fmt.Sprintf(`{"prompt":"hello there","max_tokens":30,"seed":%d}`, seed))
		var r struct {
			Choices []struct{ Text string }
		}
		if err := json.Unmarshal(b, &r); err != nil || len(r.Choices) != 1 {
			t.Fatalf("%s: %v", b, err)
		}
		return r.Choices[0].Text
	}
	if a, b := text(7), text(7); a != b {
		t.Fatalf("same seed, different text: %q vs %q", a, b)
	}
	if a, b := text(7), text(8); a == b {
		t.Fatalf("different seeds, same text %q", a)
	}
}

// plainClient reads /metrics as routers do: no compression, the page the
// simulator caches between changes.
var plainClient = &http.Client{Transport: &http.Transport{DisableCompression: true}}

// gzipClient asks for a compressed page, which promhttp renders each time.
var gzipClient = http.DefaultClient

func scrape(t testing.TB, url string) map[string]*dto.MetricFamily {
	t.Helper()
	return scrapeWith(t, plainClient, url)
}

func scrapeWith(t testing.TB, c *http.Client, url string) map[string]*dto.MetricFamily {
	t.Helper()
	resp, err := c.Get(url + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	p := expfmt.NewTextParser(model.LegacyValidation)
	mf, err := p.TextToMetricFamilies(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return mf
}

// value returns the sample of family name whose labels include want (for a
// histogram, its count).
func value(t testing.TB, mf map[string]*dto.MetricFamily, name string, want ...string) float64 {
	t.Helper()
	f, ok := mf[name]
	if !ok {
		t.Fatalf("metric %s missing", name)
	}
next:
	for _, m := range f.GetMetric() {
		labels := map[string]string{}
		for _, l := range m.GetLabel() {
			labels[l.GetName()] = l.GetValue()
		}
		for i := 0; i+1 < len(want); i += 2 {
			if labels[want[i]] != want[i+1] {
				continue next
			}
		}
		switch f.GetType() {
		case dto.MetricType_COUNTER:
			return m.GetCounter().GetValue()
		case dto.MetricType_GAUGE:
			return m.GetGauge().GetValue()
		case dto.MetricType_HISTOGRAM:
			return float64(m.GetHistogram().GetSampleCount())
		}
	}
	t.Fatalf("metric %s%v missing", name, want)
	return 0
}

func TestMetricsMoveAsRequestsFlow(t *testing.T) {
	s := startSim(t, vllmsim.Config{ServedModelNames: []string{"demo", "alias"}})
	before := scrape(t, s.url)
	for _, name := range []string{"vllm:num_requests_running", "vllm:num_requests_waiting", "vllm:kv_cache_usage_perc",
		"vllm:prefix_cache_queries_total", "vllm:prefix_cache_hits_total", "vllm:prompt_tokens_total",
		"vllm:generation_tokens_total", "vllm:num_preemptions_total", "vllm:time_to_first_token_seconds",
		"vllm:inter_token_latency_seconds", "vllm:e2e_request_latency_seconds", "vllm:request_queue_time_seconds"} {
		if value(t, before, name, "model_name", "demo", "engine", "0") != 0 {
			t.Errorf("%s not zero at start", name)
		}
	}
	info := before["vllm:cache_config_info"].GetMetric()[0]
	labels := map[string]string{}
	for _, l := range info.GetLabel() {
		labels[l.GetName()] = l.GetValue()
	}
	if labels["block_size"] != "16" || labels["num_gpu_blocks"] != fmt.Sprint(s.Stats().NumBlocks) || info.GetGauge().GetValue() != 1 {
		t.Errorf("cache_config_info %v = %v", labels, info.GetGauge().GetValue())
	}

	const n, maxTokens = 8, 10
	prompt := longText(100, "metrics")
	promptTokens := len(vllmsim.EncodeCompletionPrompt(nil, prompt))
	send := func(i int) {
		body := fmt.Sprintf(`{"model":"alias","prompt":%q,"max_tokens":%d,"ignore_eos":true,"stream":%v}`, prompt, maxTokens, i%2 == 0)
		if code, b := post(t, s.url+"/v1/completions", body); code != 200 {
			t.Errorf("status %d: %s", code, b)
		}
	}
	// The first alone: its blocks are cached when the others arrive, so
	// they hit whatever steps they share (identical prompts scheduled in
	// one step all miss, as in vLLM: a busy machine made that happen).
	send(0)
	var wg sync.WaitGroup
	for i := 1; i < n; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			send(i)
		}()
	}
	wg.Wait()
	after := scrape(t, s.url)
	d := func(name string, labels ...string) float64 {
		return value(t, after, name, labels...) - value(t, before, name, labels...)
	}
	checks := []struct {
		name   string
		labels []string
		want   float64
	}{
		{"vllm:prompt_tokens_total", nil, n * float64(promptTokens)},
		{"vllm:generation_tokens_total", nil, n * maxTokens},
		{"vllm:request_success_total", []string{"finished_reason", "length"}, n},
		{"vllm:time_to_first_token_seconds", nil, n},
		{"vllm:inter_token_latency_seconds", nil, n * (maxTokens - 1)},
		{"vllm:e2e_request_latency_seconds", nil, n},
		{"vllm:request_queue_time_seconds", nil, n},
		{"vllm:prefix_cache_queries_total", nil, n * float64(promptTokens)},
		{"vllm:num_requests_running", nil, 0},
	}
	for _, c := range checks {
		if got := d(c.name, c.labels...); got != c.want {
			t.Errorf("%s%v moved by %v, want %v", c.name, c.labels, got, c.want)
		}
	}
	if hits := d("vllm:prefix_cache_hits_total"); hits <= 0 || int(hits)%16 != 0 {
		t.Errorf("prefix cache hits moved by %v, want a positive multiple of the block size", hits)
	}
	if ttft := after["vllm:time_to_first_token_seconds"].GetMetric()[0].GetHistogram().GetSampleSum(); ttft <= 0 {
		t.Errorf("TTFT sum %v", ttft)
	}
	// The cached plain page and promhttp's compressed one say the same.
	if diff := cmp.Diff(scrapeWith(t, gzipClient, s.url), scrape(t, s.url), protocmp.Transform()); diff != "" {
		t.Errorf("plain page differs from promhttp's (-gzip +plain):\n%s", diff)
	}
}

// TestMetricsPageCountsEachAnswer reads the (cached) plain page right after
// each answer: the answer must already be counted, as vLLM's is.
func TestMetricsPageCountsEachAnswer(t *testing.T) {
	s := startSim(t, vllmsim.Config{ServedModelNames: []string{"demo"}})
	for i := 1; i <= 20; i++ {
		body := fmt.Sprintf(`{"model":"demo","prompt":"count me %d","max_tokens":3,"ignore_eos":true,"stream":%v}`, i, i%2 == 0)
		if code, b := post(t, s.url+"/v1/completions", body); code != 200 {
			t.Fatalf("status %d: %s", code, b)
		}
		mf := scrape(t, s.url)
		if got := value(t, mf, "vllm:request_success_total", "finished_reason", "length"); got != float64(i) {
			t.Fatalf("after answer %d the page counts %v", i, got)
		}
		if got := value(t, mf, "vllm:generation_tokens_total"); got != float64(3*i) {
			t.Fatalf("after answer %d the page counts %v generated tokens", i, got)
		}
	}
}

// TestIdleMetricsPageIsNotRenderedAgain checks that serving an unchanged
// page allocates next to nothing (rendering it allocates hundreds of
// objects): what keeps hundreds of idle simulated pods cheap to read.
func TestIdleMetricsPageIsNotRenderedAgain(t *testing.T) {
	s := startSim(t, vllmsim.Config{ServedModelNames: []string{"demo"}})
	h := s.Handler()
	req := httptest.NewRequest(http.MethodGet, "/metrics", nil)
	serve := func() *httptest.ResponseRecorder {
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, req)
		return rec
	}
	first := serve()
	if first.Code != 200 || first.Header().Get("Content-Length") != strconv.Itoa(first.Body.Len()) ||
		!strings.HasPrefix(first.Header().Get("Content-Type"), "text/plain; version=0.0.4") {
		t.Fatalf("status %d, headers %v", first.Code, first.Header())
	}
	if again := serve(); again.Body.String() != first.Body.String() {
		t.Fatal("an idle pod's page changed")
	}
	if allocs := testing.AllocsPerRun(20, func() { serve() }); allocs > 30 {
		t.Fatalf("serving an unchanged page allocated %v objects per call: rendered again", allocs)
	}
}

func TestStreamChunkTokens(t *testing.T) {
	s := startSim(t, vllmsim.Config{StreamChunkTokens: 4})
	resp, err := http.Post(s.url+"/v1/completions", "application/json",
		strings.NewReader(`{"prompt":"count","max_tokens":10,"ignore_eos":true,"stream":true}`))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if ct := resp.Header.Get("Content-Type"); !strings.HasPrefix(ct, "text/event-stream") {
		t.Errorf("content type %q", ct)
	}
	var sizes []int
	var reasons []string
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		line, ok := strings.CutPrefix(sc.Text(), "data: ")
		if !ok || line == "[DONE]" {
			continue
		}
		var ch struct {
			Choices []struct {
				Text         string  `json:"text"`
				FinishReason *string `json:"finish_reason"`
			}
		}
		if err := json.Unmarshal([]byte(line), &ch); err != nil {
			t.Fatalf("%s: %v", line, err)
		}
		sizes = append(sizes, strings.Count(ch.Choices[0].Text, " "))
		r := "null"
		if ch.Choices[0].FinishReason != nil {
			r = *ch.Choices[0].FinishReason
		}
		reasons = append(reasons, r)
	}
	if fmt.Sprint(sizes) != "[1 4 4 1]" || fmt.Sprint(reasons) != "[null null null length]" {
		t.Fatalf("chunk sizes %v, finish reasons %v; want [1 4 4 1], length last", sizes, reasons)
	}
}

func TestModelsHealthTokenize(t *testing.T) {
	s := startSim(t, vllmsim.Config{Model: "meta-llama/Llama-3.1-8B-Instruct", ServedModelNames: []string{"llama", "demo"}, MaxModelLen: 4096})
	resp, err := http.Get(s.url + "/v1/models")
	if err != nil {
		t.Fatal(err)
	}
	var models struct {
		Object string
		Data   []struct {
			ID          string `json:"id"`
			Object      string `json:"object"`
			OwnedBy     string `json:"owned_by"`
			Root        string `json:"root"`
			MaxModelLen int    `json:"max_model_len"`
		}
	}
	if err := json.NewDecoder(resp.Body).Decode(&models); err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if models.Object != "list" || len(models.Data) != 2 || models.Data[0].ID != "llama" || models.Data[1].ID != "demo" ||
		models.Data[0].MaxModelLen != 4096 || models.Data[0].Root != "meta-llama/Llama-3.1-8B-Instruct" || models.Data[0].Object != "model" {
		t.Fatalf("models %+v", models)
	}
	// The OpenAI client lists them too.
	cl := s.client()
	page, err := cl.Models.List(context.Background())
	if err != nil || len(page.Data) != 2 {
		t.Fatalf("client list: %v %+v", err, page)
	}

	if resp, err := http.Get(s.url + "/health"); err != nil || resp.StatusCode != 200 {
		t.Fatalf("health: %v %v", err, resp)
	}

	code, b := post(t, s.url+"/tokenize", `{"model":"llama","prompt":"Hello world"}`)
	var tok struct {
		Count       int      `json:"count"`
		MaxModelLen int      `json:"max_model_len"`
		Tokens      []uint32 `json:"tokens"`
	}
	if err := json.Unmarshal(b, &tok); code != 200 || err != nil {
		t.Fatalf("%d %s", code, b)
	}
	want := vllmsim.EncodeCompletionPrompt(nil, "Hello world")
	if tok.Count != len(want) || tok.MaxModelLen != 4096 || fmt.Sprint(tok.Tokens) != fmt.Sprint(want) {
		t.Fatalf("tokenize %+v, want %v", tok, want)
	}
	code, b = post(t, s.url+"/tokenize", `{"messages":[{"role":"user","content":"hi"}]}`)
	if err := json.Unmarshal(b, &tok); code != 200 || err != nil ||
		tok.Count != len(vllmsim.EncodeChatPrompt(nil, []tokenizer.Message{{Role: "user", Content: "hi"}}, true)) {
		t.Fatalf("chat tokenize %d %s", code, b)
	}
	ids := tokenizer.GeneratedVocab()[:3]
	code, b = post(t, s.url+"/detokenize", fmt.Sprintf(`{"tokens":[%d,%d,%d]}`, ids[0], ids[1], ids[2]))
	var detok struct{ Prompt string }
	if err := json.Unmarshal(b, &detok); code != 200 || err != nil || detok.Prompt != tokenizer.DecodeString(ids) {
		t.Fatalf("detokenize %d %s", code, b)
	}
}

func TestStartupDelay(t *testing.T) {
	// 50 s of simulated model loading: 1 s at the test time scale. A
	// check that comes back after that second (a busy machine) cannot see
	// the loading state; it must not see readiness before.
	const loading = time.Second
	started := time.Now()
	s := startSim(t, vllmsim.Config{StartupDelay: 50 * time.Second})
	during := func(what string, code int) {
		t.Helper()
		if code == http.StatusServiceUnavailable {
			return
		}
		if since := time.Since(started); since < loading {
			t.Fatalf("%s %v after start, still loading: %d", what, since, code)
		}
		t.Logf("%s: %d, checked after the loading time", what, code)
	}
	resp, err := http.Get(s.url + "/health")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	during("health during startup", resp.StatusCode)
	code, _ := post(t, s.url+"/v1/completions", `{"prompt":"x"}`)
	during("completion during startup", code)
	eventually(t, "health 200", func() bool {
		resp, err := http.Get(s.url + "/health")
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == 200
	})
	if code, b := post(t, s.url+"/v1/completions", `{"prompt":"x","max_tokens":2}`); code != 200 {
		t.Fatalf("completion after startup: %d %s", code, b)
	}
}

type apiError struct {
	Error struct {
		Message string  `json:"message"`
		Type    string  `json:"type"`
		Param   *string `json:"param"`
		Code    int     `json:"code"`
	} `json:"error"`
}

func TestBadInput(t *testing.T) {
	s := startSim(t, vllmsim.Config{MaxModelLen: 256, MaxBodyBytes: 8192, Role: engine.RoleBoth})
	long := longText(300, "too long")
	tests := []struct {
		name, method, path, body string
		status                   int
		typ                      string
	}{
		{"malformed JSON", "POST", "/v1/completions", `{"prompt":"x",`, 400, "BadRequestError"},
		{"not JSON", "POST", "/v1/chat/completions", `hello`, 400, "BadRequestError"},
		{"wrong type", "POST", "/v1/completions", `{"prompt":"x","ignore_eos":"yes"}`, 400, "BadRequestError"},
		{"negative max_tokens", "POST", "/v1/completions", `{"prompt":"x","max_tokens":-3}`, 400, "BadRequestError"},
		{"huge max_tokens", "POST", "/v1/completions", `{"prompt":"x","max_tokens":1000000}`, 400, "BadRequestError"},
		{"empty messages", "POST", "/v1/chat/completions", `{"model":"demo","messages":[]}`, 400, "BadRequestError"},
		{"unknown model", "POST", "/v1/completions", `{"model":"gpt-9","prompt":"x"}`, 404, "NotFoundError"},
		{"unknown model, chat", "POST", "/v1/chat/completions", `{"model":"gpt-9","messages":[{"role":"user","content":"x"}]}`, 404, "NotFoundError"},
		{"prompt over max_model_len", "POST", "/v1/completions", fmt.Sprintf(`{"prompt":%q}`, long), 400, "BadRequestError"},
		{"n > 1", "POST", "/v1/completions", `{"prompt":"x","n":3}`, 400, "BadRequestError"},
		{"oversized body", "POST", "/v1/completions", fmt.Sprintf(`{"prompt":%q}`, strings.Repeat("a", 10000)), 413, "Request Entity Too Large"},
		{"decode request on a both engine with bad kv params", "POST", "/v1/completions", `{"prompt":"x","kv_transfer_params":{"do_remote_prefill":"yes"}}`, 400, "BadRequestError"},
		{"unknown path", "GET", "/v2/models", ``, 404, "Not Found"},
		{"wrong method", "GET", "/v1/completions", ``, 405, "Method Not Allowed"},
		{"wrong method on models", "DELETE", "/v1/models", ``, 405, "Method Not Allowed"},
		{"release without id", "POST", vllmsim.ReleasePath, `{}`, 400, "BadRequestError"},
		{"detokenize out of vocabulary", "POST", "/detokenize", `{"tokens":[999999]}`, 400, "BadRequestError"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			req, _ := http.NewRequest(tc.method, s.url+tc.path, strings.NewReader(tc.body))
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			defer resp.Body.Close()
			b, _ := io.ReadAll(resp.Body)
			if resp.StatusCode != tc.status {
				t.Fatalf("status %d, want %d: %s", resp.StatusCode, tc.status, b)
			}
			var e apiError
			if err := json.Unmarshal(b, &e); err != nil {
				t.Fatalf("body %s: %v", b, err)
			}
			if e.Error.Type != tc.typ || e.Error.Code != tc.status || e.Error.Message == "" {
				t.Fatalf("error %+v, want type %q code %d", e.Error, tc.typ, tc.status)
			}
			if ct := resp.Header.Get("Content-Type"); ct != "application/json" {
				t.Errorf("content type %q", ct)
			}
		})
	}
	// The OpenAI client surfaces the error with its status.
	cl := s.client()
	_, err := cl.Completions.New(context.Background(), openai.CompletionNewParams{
		Model: "nope", Prompt: openai.CompletionNewParamsPromptUnion{OfString: openai.String("x")},
	})
	var apiErr *openai.Error
	if !errors.As(err, &apiErr) || apiErr.StatusCode != 404 {
		t.Fatalf("client error %v", err)
	}
	// Nothing leaked into the engine.
	if st := s.Stats(); st.Running+st.Waiting != 0 {
		t.Fatalf("engine holds requests after bad input: %+v", st)
	}
}

func TestClientDisconnectFreesBlocks(t *testing.T) {
	s := startSim(t, vllmsim.Config{})
	idle := func() bool {
		st := s.Stats()
		return st.Running == 0 && st.Waiting == 0 && st.KVUsage == 0
	}

	// Mid-stream.
	ctx, cancel := context.WithCancel(context.Background())
	req, _ := http.NewRequestWithContext(ctx, "POST", s.url+"/v1/chat/completions", strings.NewReader(
		`{"messages":[{"role":"user","content":"`+longText(200, "disconnect")+`"}],"max_tokens":100000,"ignore_eos":true,"stream":true}`))
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	r := bufio.NewReader(resp.Body)
	for range 3 { // the role chunk and some tokens
		if _, err := r.ReadString('\n'); err != nil {
			t.Fatal(err)
		}
	}
	if st := s.Stats(); st.Running != 1 || st.KVUsage == 0 {
		t.Fatalf("stream not running: %+v", st)
	}
	cancel()
	resp.Body.Close()
	eventually(t, "blocks freed after a mid-stream disconnect", idle)

	// Mid-request, not streamed.
	ctx, cancel = context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	req, _ = http.NewRequestWithContext(ctx, "POST", s.url+"/v1/completions", strings.NewReader(
		`{"prompt":"wait for it","max_tokens":100000,"ignore_eos":true}`))
	if _, err := http.DefaultClient.Do(req); err == nil {
		t.Fatal("request finished before the client gave up")
	}
	eventually(t, "blocks freed after a disconnect", idle)

	m := scrape(t, s.url)
	if v := value(t, m, "vllm:num_requests_running"); v != 0 {
		t.Errorf("running gauge %v after disconnects", v)
	}
	if v := value(t, m, "vllm:kv_cache_usage_perc"); v != 0 {
		t.Errorf("kv usage gauge %v after disconnects", v)
	}
}

func TestQueueFullIs503(t *testing.T) {
	s := startSim(t, vllmsim.Config{MaxNumSeqs: 1, MaxWaiting: 1})
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	long := `{"prompt":"long one","max_tokens":100000,"ignore_eos":true}`
	send := func() {
		go func() {
			req, _ := http.NewRequestWithContext(ctx, "POST", s.url+"/v1/completions", strings.NewReader(long))
			if resp, err := http.DefaultClient.Do(req); err == nil {
				resp.Body.Close()
			}
		}()
	}
	// One running, then one waiting (sent one after the other: the first
	// waits in the queue until the engine's next step).
	send()
	eventually(t, "one running", func() bool { return s.Stats().Running == 1 })
	send()
	eventually(t, "one running and one waiting", func() bool {
		st := s.Stats()
		return st.Running == 1 && st.Waiting == 1
	})
	req, _ := http.NewRequest("POST", s.url+"/v1/completions", strings.NewReader(`{"prompt":"x"}`))
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	var e apiError
	_ = json.Unmarshal(b, &e)
	if resp.StatusCode != 503 || e.Error.Code != 503 || resp.Header.Get("Retry-After") == "" {
		t.Fatalf("status %d %s", resp.StatusCode, b)
	}
	cancel()
	eventually(t, "queue drained", func() bool { st := s.Stats(); return st.Running+st.Waiting == 0 })
}

func TestGracefulShutdownDrainsStreams(t *testing.T) {
	s := startSim(t, vllmsim.Config{})
	resp, err := http.Post(s.url+"/v1/completions", "application/json",
		strings.NewReader(`{"prompt":"drain me","max_tokens":200,"ignore_eos":true,"stream":true}`))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	r := bufio.NewReader(resp.Body)
	if _, err := r.ReadString('\n'); err != nil {
		t.Fatal(err)
	}
	stopped := make(chan error, 1)
	go func() { stopped <- s.stop() }()
	rest, err := io.ReadAll(r)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.HasSuffix(rest, []byte("data: [DONE]\n\n")) || bytes.Count(rest, []byte("data: ")) != 200 {
		t.Fatalf("stream cut short: %d events", bytes.Count(rest, []byte("data: ")))
	}
	select {
	case err := <-stopped:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("Serve did not return after the drain")
	}
}

func TestPriorityScheduling(t *testing.T) {
	s := startSim(t, vllmsim.Config{MaxNumSeqs: 1, SchedulingPolicy: engine.PolicyPriority})
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go func() {
		req, _ := http.NewRequestWithContext(ctx, "POST", s.url+"/v1/completions",
			strings.NewReader(`{"prompt":"blocker","max_tokens":100000,"ignore_eos":true}`))
		if resp, err := http.DefaultClient.Do(req); err == nil {
			resp.Body.Close()
		}
	}()
	eventually(t, "the blocker running", func() bool { return s.Stats().Running == 1 })
	// The low-priority request is long (it would take minutes), the high
	// one 50 tokens: with one sequence at a time, the high one finishes
	// while the low one has not, only if it ran first.
	lowCtx, lowCancel := context.WithCancel(context.Background())
	defer lowCancel()
	lowDone, highDone := make(chan struct{}), make(chan struct{})
	go func() {
		defer close(lowDone)
		req, _ := http.NewRequestWithContext(lowCtx, "POST", s.url+"/v1/completions",
			strings.NewReader(`{"prompt":"low","max_tokens":100000,"ignore_eos":true,"priority":5}`))
		if resp, err := http.DefaultClient.Do(req); err == nil {
			_, _ = io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
		}
	}()
	eventually(t, "low queued", func() bool { return s.Stats().Waiting == 1 })
	go func() {
		defer close(highDone)
		if code, b := post(t, s.url+"/v1/completions", `{"prompt":"high","max_tokens":50,"ignore_eos":true,"priority":-1}`); code != 200 {
			t.Errorf("high: %d %s", code, b)
		}
	}()
	eventually(t, "high queued", func() bool { return s.Stats().Waiting == 2 })
	cancel() // the blocker goes; the queue runs in priority order
	select {
	case <-highDone:
	case <-lowDone:
		t.Fatal("the low-priority request ended first; lower priority values run first")
	case <-time.After(30 * time.Second):
		t.Fatal("the high-priority request did not finish: it waits behind the low one")
	}
	select {
	case <-lowDone:
		t.Fatal("the low-priority request ended with the high one; lower priority values run first")
	default:
	}
	lowCancel()
	<-lowDone
	fcfs := startSim(t, vllmsim.Config{})
	if code, b := post(t, fcfs.url+"/v1/completions", `{"prompt":"x","priority":3}`); code != 400 {
		t.Fatalf("priority on an FCFS engine: %d %s", code, b)
	}
}

// TestRealTimePacing: tokens stream at the modelled step times multiplied
// by the time scale: never faster, and not much slower on a busy machine.
func TestRealTimePacing(t *testing.T) {
	const scale, n = 0.1, 150
	s := startSim(t, vllmsim.Config{TimeScale: scale})
	prompt := vllmsim.EncodeCompletionPrompt(nil, "pace yourself")
	var want time.Duration
	p := s.Config().Profile
	for i := 1; i < n; i++ { // decode steps between the first and last token
		want += p.StepTime([]engine.StepInput{{Query: 1, Context: len(prompt) + i - 1}})
	}
	want = time.Duration(float64(want) * scale)

	sent := time.Now()
	resp, err := http.Post(s.url+"/v1/completions", "application/json",
		strings.NewReader(fmt.Sprintf(`{"prompt":"pace yourself","max_tokens":%d,"ignore_eos":true,"stream":true}`, n)))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	var first, last time.Time
	chunks := 0
	for sc.Scan() {
		if strings.HasPrefix(sc.Text(), "data: {") {
			last = time.Now()
			if chunks == 0 {
				first = last
			}
			chunks++
		}
	}
	if chunks != n {
		t.Fatalf("%d chunks", chunks)
	}
	// Never faster: the engine sleeps each step's scaled duration against
	// absolute deadlines from when it took the request (after it was
	// sent), so the last token comes at least the decode steps after the
	// request was sent (the first token's arrival may be delayed by a busy
	// client, so it is no reference for a floor). Not much slower is only
	// logged: a busy machine delays steps without bound.
	if got := last.Sub(sent); got < want*99/100 {
		t.Fatalf("%d tokens streamed %v after the request, the model says at least %v at time scale %v", n, got, want, scale)
	}
	got := last.Sub(first)
	t.Logf("%d tokens in %v (modelled %v)", n, got, want)
}
