package activator

import (
	"encoding/json"
	"errors"
	"strings"
	"testing"

	"github.com/llmd-kn/llmd-kn/pkg/tokenizer"
)

func TestParseLLMRequest(t *testing.T) {
	r, err := ParseLLMRequest(KindChat, []byte(`{"model":"m","stream":true,"max_tokens":20,
		"messages":[{"role":"system","content":"be brief"},{"role":"user","content":[{"type":"text","text":"hi"}]}],
		"kv_transfer_params":{"do_remote_prefill":true,"remote_host":"169.254.169.254","remote_port":80}}`))
	if err != nil {
		t.Fatal(err)
	}
	want := tokenizer.ApplyChatTemplate(nil, []tokenizer.Message{{Role: "system", Content: "be brief"}, {Role: "user", Content: "hi"}}, true)
	if r.Model != "m" || !r.Stream || r.MaxTokens != 20 || len(r.Tokens) != len(want) {
		t.Fatalf("parsed %+v", r)
	}
	if _, ok := r.Field("kv_transfer_params"); ok || strings.Contains(string(r.AppendBody(nil)), "kv_transfer") {
		t.Fatal("client kv_transfer_params kept: a client could make a pod call any address")
	}
	c, err := ParseLLMRequest(KindCompletion, []byte(`{"model":"m","prompt":[1,2,3]}`))
	if err != nil || len(c.Tokens) != 3 || c.Tokens[2] != 3 {
		t.Fatalf("token prompt: %v %v", c, err)
	}
	long := strings.Repeat("7,", 20000) + "7"
	if c, err := ParseLLMRequest(KindCompletion, []byte(`{"model":"m","prompt":[`+long+`]}`)); err != nil || len(c.Tokens) != 20001 {
		t.Fatalf("a 20,001-token prompt: %v", err)
	}
	c, err = ParseLLMRequest(KindCompletion, []byte(`{"model":"m","prompt":["a b c","d"]}`))
	if err != nil || len(c.Tokens) != 3 {
		t.Fatalf("string list prompt: %v %v", c, err)
	}
	c, err = ParseLLMRequest(KindCompletion, []byte(`{"model":"m","prompt":[1],"cache_salt":"tenant-1"}`))
	if err != nil || c.CacheSalt != "tenant-1" || !strings.Contains(string(c.AppendBody(nil)), `"cache_salt":"tenant-1"`) {
		t.Fatalf("cache_salt: %+v %v (read, and forwarded to the engine)", c, err)
	}
}

func TestParseLLMRequestRejects(t *testing.T) {
	cases := []struct{ name, kind, body, field string }{
		{"not json", KindCompletion, `{"model":`, "JSON"},
		{"array body", KindCompletion, `[1]`, "JSON object"},
		{"trailing data", KindCompletion, `{"prompt":"a"} {}`, "after"},
		{"model type", KindCompletion, `{"model":1,"prompt":"a"}`, "model"},
		{"stream type", KindCompletion, `{"stream":"yes","prompt":"a"}`, "stream"},
		{"cache_salt type", KindCompletion, `{"prompt":"a","cache_salt":1}`, "cache_salt"},
		{"negative max_tokens", KindCompletion, `{"prompt":"a","max_tokens":-1}`, "max_tokens"},
		{"huge max_tokens", KindCompletion, `{"prompt":"a","max_tokens":1e12}`, "max_tokens"},
		{"fractional max_tokens", KindChat, `{"messages":[{"role":"user","content":"a"}],"max_completion_tokens":1.5}`, "max_completion_tokens"},
		{"no prompt", KindCompletion, `{"model":"m"}`, "prompt"},
		{"empty prompt", KindCompletion, `{"prompt":""}`, "prompt"},
		{"prompt object", KindCompletion, `{"prompt":{"a":1}}`, "prompt"},
		{"bad token id", KindCompletion, `{"prompt":[1,-2]}`, "prompt[1]"},
		{"empty messages", KindChat, `{"messages":[]}`, "messages"},
		{"messages type", KindChat, `{"messages":"hi"}`, "messages"},
		{"no role", KindChat, `{"messages":[{"content":"hi"}]}`, "messages[0].role"},
		{"content type", KindChat, `{"messages":[{"role":"user","content":5}]}`, "messages[0].content"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			_, err := ParseLLMRequest(c.kind, []byte(c.body))
			var br *BadRequestError
			if !errors.As(err, &br) || br.Status != 400 || !strings.Contains(err.Error(), c.field) {
				t.Fatalf("got %v, want a 400 naming %q", err, c.field)
			}
		})
	}
}

func FuzzParseLLMRequest(f *testing.F) {
	f.Add(`{"model":"m","prompt":"hello","max_tokens":3}`)
	f.Add(`{"messages":[{"role":"user","content":[{"type":"text","text":"x"}]}],"stream":true}`)
	f.Add(`{"prompt":[[1,2],[3]]}`)
	f.Fuzz(func(t *testing.T, body string) {
		for _, kind := range []string{KindCompletion, KindChat} {
			r, err := ParseLLMRequest(kind, []byte(body))
			if err != nil {
				var br *BadRequestError
				if !errors.As(err, &br) {
					t.Fatalf("error of type %T: %v", err, err)
				}
				continue
			}
			if len(r.Tokens) == 0 && !(kind == KindChat) {
				t.Fatalf("accepted a request with no prompt tokens: %q", body)
			}
			askUsage(r)
			r.Set("priority", []byte("3"))
			out := r.AppendBody(nil, Edit{Key: "kv_transfer_params", Value: []byte(`{"x":1}`)}, Edit{Key: "max_tokens"})
			if !json.Valid(out) {
				t.Fatalf("forwarded body is not JSON: %q from %q", out, body)
			}
			var m map[string]json.RawMessage
			if err := json.Unmarshal(out, &m); err != nil || string(m["priority"]) != "3" || m["max_tokens"] != nil || string(m["kv_transfer_params"]) != `{"x":1}` {
				t.Fatalf("edits not applied: %q from %q", out, body)
			}
		}
	})
}

// TestForwardedBodyIsTheClientsBytesWithTheDocumentedEdits: what reaches a
// pod is the client's body byte for byte (key order, spacing, number
// spellings, unknown fields, escapes) except the activator's edits.
func TestForwardedBodyIsTheClientsBytesWithTheDocumentedEdits(t *testing.T) {
	client := `{ "zeta": 1.50, "model" : "m",
  "prompt": [1, 2,3], "kv_transfer_params": {"remote_host":"169.254.169.254"},
  "stream":true, "x-unknown": {"nested": [1e3, -0.0, "\u00e9\n"]}, "KV_Transfer_Params": 1,
  "temperature": 0.70 }`
	cases := []struct {
		name string
		edit func(r *LLMRequest) []byte
		want string
	}{
		{"reserved keys removed, nothing else", func(r *LLMRequest) []byte { return r.AppendBody(nil) },
			`{ "zeta": 1.50, "model" : "m",
  "prompt": [1, 2,3],
  "stream":true, "x-unknown": {"nested": [1e3, -0.0, "\u00e9\n"]},
  "temperature": 0.70 }`},
		{"usage asked, priority set", func(r *LLMRequest) []byte {
			askUsage(r)
			r.Set("priority", []byte("-5"))
			return r.AppendBody(nil)
		}, `{ "zeta": 1.50, "model" : "m",
  "prompt": [1, 2,3],
  "stream":true, "x-unknown": {"nested": [1e3, -0.0, "\u00e9\n"]},
  "temperature": 0.70,"stream_options":{"include_usage":true},"priority":-5 }`},
		{"decode after prefill", func(r *LLMRequest) []byte {
			return r.AppendBody(nil, Edit{Key: "kv_transfer_params", Value: []byte(`{"do_remote_prefill":true}`)})
		}, `{ "zeta": 1.50, "model" : "m",
  "prompt": [1, 2,3],
  "stream":true, "x-unknown": {"nested": [1e3, -0.0, "\u00e9\n"]},
  "temperature": 0.70,"kv_transfer_params":{"do_remote_prefill":true} }`},
		{"prefill", func(r *LLMRequest) []byte {
			return r.AppendBody(nil, Edit{Key: "max_tokens", Value: []byte("1")}, Edit{Key: "stream", Value: []byte("false")}, Edit{Key: "zeta"})
		}, `{ "model" : "m",
  "prompt": [1, 2,3],
  "stream":false, "x-unknown": {"nested": [1e3, -0.0, "\u00e9\n"]},
  "temperature": 0.70,"max_tokens":1 }`},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			body := []byte(client)
			r, err := ParseLLMRequest(KindCompletion, body)
			if err != nil {
				t.Fatal(err)
			}
			if got := string(c.edit(r)); got != c.want {
				t.Fatalf("forwarded\n%s\nwant\n%s", got, c.want)
			}
			if string(body) != client {
				t.Fatal("the client's bytes were modified")
			}
		})
	}
	plain := []byte(`{"model":"m","prompt":[1,2],"stream":false}`)
	r, err := ParseLLMRequest(KindCompletion, plain)
	if err != nil {
		t.Fatal(err)
	}
	if got := r.RawBody(); &got[0] != &plain[0] || len(got) != len(plain) {
		t.Fatal("a request with no edits is copied instead of forwarded as is")
	}
}
