package vllmsim_test

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"testing"

	"github.com/llmd-kn/llmd-kn/pkg/tokenizer"
	"github.com/llmd-kn/llmd-kn/pkg/tokenizer/native"
	"github.com/llmd-kn/llmd-kn/pkg/vllmsim"
)

type rendered struct {
	RequestID      string   `json:"request_id"`
	TokenIDs       []uint32 `json:"token_ids"`
	Model          string   `json:"model"`
	SamplingParams struct {
		MaxTokens int `json:"max_tokens"`
	} `json:"sampling_params"`
}

// renderAll asks /render, /tokenize and /detokenize about a chat and a
// completion, as the engine tokenizer mode of a router does.
func renderAll(t *testing.T, url string, msgs []tokenizer.Message, text string) (chat, completion, tokChat, tokCompletion []uint32, detok string) {
	t.Helper()
	// vLLM's field names, exactly (the simulator matches keys as vLLM does).
	wire := make([]map[string]string, len(msgs))
	for i, m := range msgs {
		wire[i] = map[string]string{"role": m.Role, "content": m.Content}
	}
	mj, _ := json.Marshal(wire)
	code, b := post(t, url+"/v1/chat/completions/render", fmt.Sprintf(`{"model":"demo","messages":%s,"max_tokens":7}`, mj))
	if code != 200 {
		t.Fatalf("chat render: %d %s", code, b)
	}
	var rc rendered
	if err := json.Unmarshal(b, &rc); err != nil {
		t.Fatalf("chat render: %v: %s", err, b)
	}
	if rc.Model != "demo" || rc.SamplingParams.MaxTokens != 7 || rc.RequestID == "" {
		t.Fatalf("chat render: %s", b)
	}
	code, b = post(t, url+"/v1/completions/render", fmt.Sprintf(`{"model":"demo","prompt":%q}`, text))
	if code != 200 {
		t.Fatalf("completion render: %d %s", code, b)
	}
	var rcs []rendered
	if err := json.Unmarshal(b, &rcs); err != nil || len(rcs) != 1 {
		t.Fatalf("completion render: %v: %s", err, b)
	}
	if rcs[0].SamplingParams.MaxTokens != 16 {
		t.Fatalf("completion render: max_tokens %d, want vLLM's default 16", rcs[0].SamplingParams.MaxTokens)
	}
	type tokenized struct {
		Count  int      `json:"count"`
		Tokens []uint32 `json:"tokens"`
	}
	var tk tokenized
	code, b = post(t, url+"/tokenize", fmt.Sprintf(`{"model":"demo","messages":%s}`, mj))
	if code != 200 || json.Unmarshal(b, &tk) != nil || tk.Count != len(tk.Tokens) {
		t.Fatalf("tokenize messages: %d %s", code, b)
	}
	tokChat = tk.Tokens
	tk = tokenized{}
	code, b = post(t, url+"/tokenize", fmt.Sprintf(`{"model":"demo","prompt":%q}`, text))
	if code != 200 || json.Unmarshal(b, &tk) != nil {
		t.Fatalf("tokenize prompt: %d %s", code, b)
	}
	tokCompletion = tk.Tokens
	ids, _ := json.Marshal(rcs[0].TokenIDs)
	code, b = post(t, url+"/detokenize", fmt.Sprintf(`{"model":"demo","tokens":%s}`, ids))
	var dt struct {
		Prompt string `json:"prompt"`
	}
	if code != 200 || json.Unmarshal(b, &dt) != nil {
		t.Fatalf("detokenize: %d %s", code, b)
	}
	return rc.TokenIDs, rcs[0].TokenIDs, tokChat, tokCompletion, dt.Prompt
}

var renderMsgs = []tokenizer.Message{
	{Role: "system", Content: "You are a terse assistant."},
	{Role: "user", Content: "What is the capital of France? Answer in one word."},
}

const renderText = "The quick brown fox jumps over the lazy dog."

func TestRenderEndpoints(t *testing.T) {
	s := startSim(t, vllmsim.Config{})
	chat, completion, tokChat, tokCompletion, detok := renderAll(t, s.url, renderMsgs, renderText)
	if want := vllmsim.EncodeChatPrompt(nil, renderMsgs, true); !slices.Equal(chat, want) || !slices.Equal(tokChat, want) {
		t.Fatalf("chat ids\nrender   %v\ntokenize %v\nwant     %v", chat, tokChat, want)
	}
	if want := vllmsim.EncodeCompletionPrompt(nil, renderText); !slices.Equal(completion, want) || !slices.Equal(tokCompletion, want) {
		t.Fatalf("completion ids\nrender   %v\ntokenize %v\nwant     %v", completion, tokCompletion, want)
	}
	// The estimate's ids name hashed pieces: decoding shows them, not the
	// text.
	if detok == "" {
		t.Fatal("detokenize answered nothing")
	}
	if code, b := post(t, s.url+"/v1/chat/completions/render", `{"model":"other","messages":[{"role":"user","content":"x"}]}`); code != 404 {
		t.Fatalf("unknown model: %d %s", code, b)
	}
}

// llamaTokenizer returns the Llama 3.1 tokenizer files hack/install-tokenizers.sh
// caches, or skips (fails under LLMD_REQUIRE_TOKENIZERS=1).
func llamaTokenizer(t *testing.T) string {
	t.Helper()
	dir := os.Getenv("LLMD_TOKENIZERS_DIR")
	if dir == "" {
		dir = filepath.Join("..", "..", "_output", "tokenizers", "node_modules")
	}
	dir, _ = filepath.Abs(filepath.Join(dir, "@lenml", "tokenizer-llama3_1", "models"))
	if _, err := os.Stat(filepath.Join(dir, "tokenizer.json")); err != nil {
		if os.Getenv("LLMD_REQUIRE_TOKENIZERS") == "1" {
			t.Fatalf("Llama 3.1 tokenizer files: %v (run hack/install-tokenizers.sh)", err)
		}
		t.Skipf("Llama 3.1 tokenizer files: %v (run hack/install-tokenizers.sh)", err)
	}
	return dir
}

// TestTokenizerDir: with the model's tokenizer files the simulator
// tokenizes as a vLLM serving that model: BOS, the Llama 3.1 chat template.
func TestTokenizerDir(t *testing.T) {
	dir := llamaTokenizer(t)
	nt, err := native.Load(dir, native.Options{})
	if err != nil {
		t.Fatal(err)
	}
	s := startSim(t, vllmsim.Config{TokenizerDir: dir})
	chat, completion, tokChat, tokCompletion, detok := renderAll(t, s.url, renderMsgs, renderText)
	ctx := context.Background()
	wantChat, _ := nt.ApplyChatTemplate(ctx, renderMsgs, true)
	wantText, _ := nt.Encode(ctx, renderText)
	if !slices.Equal(chat, wantChat) || !slices.Equal(tokChat, wantChat) || chat[0] != 128000 {
		t.Fatalf("chat ids\nrender   %v\ntokenize %v\nwant     %v", chat, tokChat, wantChat)
	}
	if !slices.Equal(completion, wantText) || !slices.Equal(tokCompletion, wantText) {
		t.Fatalf("completion ids\nrender   %v\ntokenize %v\nwant     %v", completion, tokCompletion, wantText)
	}
	if detok != "<|begin_of_text|>"+renderText {
		t.Fatalf("detokenize %q", detok)
	}
	// Generation uses the same ids: usage counts them.
	code, b := post(t, s.url+"/v1/completions", fmt.Sprintf(`{"model":"demo","prompt":%q,"max_tokens":2}`, renderText))
	var out struct {
		Usage struct {
			PromptTokens int `json:"prompt_tokens"`
		} `json:"usage"`
	}
	if code != 200 || json.Unmarshal(b, &out) != nil || out.Usage.PromptTokens != len(wantText) {
		t.Fatalf("completion: %d %s, want %d prompt tokens", code, b, len(wantText))
	}
}

// TestChatTemplateInputs: a tool-calling chat tokenizes in the simulator
// (generation and /tokenize) as the native tokenizer renders it with the
// same tools, tool calls and kwargs, as a vLLM would.
func TestChatTemplateInputs(t *testing.T) {
	// Qwen 3's template reads tools and tool calls (the Llama files the
	// tests use carry Llama 3's plain template).
	dir := filepath.Join(filepath.Dir(llamaTokenizer(t)), "..", "tokenizer-qwen3", "models")
	nt, err := native.Load(dir, native.Options{})
	if err != nil {
		t.Fatal(err)
	}
	s := startSim(t, vllmsim.Config{TokenizerDir: dir})
	body := `{"model":"demo","max_tokens":1,"messages":[{"role":"user","content":"Weather?"},
	  {"role":"assistant","content":null,"tool_calls":[{"id":"c1","type":"function","function":{"name":"get","arguments":"{\"city\":\"Paris\"}"}}]},
	  {"role":"tool","content":"21C","tool_call_id":"c1"}],
	  "tools":[{"type":"function","function":{"name":"get","parameters":{"type":"object"}}}],
	  "chat_template_kwargs":{"date_string":"26 Jul 2024"}}`
	msgs := []tokenizer.Message{{Role: "user", Content: "Weather?"},
		{Role: "assistant", Extra: []tokenizer.Field{{Name: "tool_calls", Value: []byte(`[{"id":"c1","type":"function","function":{"name":"get","arguments":"{\"city\":\"Paris\"}"}}]`)}}},
		{Role: "tool", Content: "21C", Extra: []tokenizer.Field{{Name: "tool_call_id", Value: []byte(`"c1"`)}}}}
	want, err := nt.ApplyChat(context.Background(), msgs, tokenizer.ChatOptions{AddGenerationPrompt: true,
		Tools: []byte(`[{"type":"function","function":{"name":"get","parameters":{"type":"object"}}}]`), Kwargs: []byte(`{"date_string":"26 Jul 2024"}`)})
	if err != nil {
		t.Fatal(err)
	}
	bare := []tokenizer.Message{{Role: "user", Content: "Weather?"}, {Role: "assistant"}, {Role: "tool", Content: "21C"}}
	if plain, _ := nt.ApplyChatTemplate(context.Background(), bare, true); slices.Equal(plain, want) {
		t.Fatal("the tool call changed nothing in the rendered chat")
	}
	code, b := post(t, s.url+"/v1/chat/completions", body)
	var out struct {
		Usage struct {
			PromptTokens int `json:"prompt_tokens"`
		} `json:"usage"`
	}
	if code != 200 || json.Unmarshal(b, &out) != nil || out.Usage.PromptTokens != len(want) {
		t.Fatalf("chat: %d %s, want %d prompt tokens", code, b, len(want))
	}
	code, b = post(t, s.url+"/tokenize", body)
	var tok struct {
		Tokens []uint32 `json:"tokens"`
	}
	if code != 200 || json.Unmarshal(b, &tok) != nil || !slices.Equal(tok.Tokens, want) {
		t.Fatalf("/tokenize: %d %s\nwant %v", code, b, want)
	}
}
