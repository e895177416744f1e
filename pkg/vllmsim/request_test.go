package vllmsim

import (
	"context"
	"net/http"
	"reflect"
	"strings"
	"testing"

	"github.com/llmd-kn/llmd-kn/pkg/tokenizer"
)

func TestDecodeCompletionRequest(t *testing.T) {
	tests := []struct {
		name string
		body string
		want Request
	}{
		{"string prompt", `{"model":"m","prompt":"hi","max_tokens":5}`,
			Request{Model: "m", PromptText: "hi", PromptIsText: true, MaxTokens: 5}},
		{"one-string list", `{"prompt":["hi"]}`, Request{PromptText: "hi", PromptIsText: true}},
		{"token ids", `{"prompt":[1,2,3]}`, Request{PromptTokens: []uint32{1, 2, 3}}},
		{"one token-id list", `{"prompt":[[4,5]]}`, Request{PromptTokens: []uint32{4, 5}}},
		{"stream, usage, seed, eos, unknown fields", `{"prompt":"x","stream":true,"stream_options":{"include_usage":true},"seed":-3,"ignore_eos":true,"temperature":0.7,"n":1,"max_tokens":null}`,
			Request{PromptText: "x", PromptIsText: true, Stream: true, IncludeUsage: true, Seed: -3, HasSeed: true, IgnoreEOS: true}},
		{"kv transfer, prefill side", `{"prompt":"x","kv_transfer_params":{"do_remote_decode":true,"do_remote_prefill":false,"remote_engine_id":null,"remote_block_ids":null,"remote_host":null,"remote_port":null}}`,
			Request{PromptText: "x", PromptIsText: true, KVTransfer: &KVTransferParams{DoRemoteDecode: true}}},
		{"kv transfer, decode side", `{"prompt":"x","kv_transfer_params":{"do_remote_prefill":true,"remote_engine_id":"e","remote_block_ids":[1,2],"remote_host":"10.0.0.1","remote_port":8000,"remote_request_id":"cmpl-1","tp_size":2}}`,
			Request{PromptText: "x", PromptIsText: true, KVTransfer: &KVTransferParams{DoRemotePrefill: true, RemoteEngineID: "e",
				RemoteBlockIDs: []int{1, 2}, RemoteHost: "10.0.0.1", RemotePort: 8000, RemoteRequestID: "cmpl-1", TPSize: 2}}},
		{"null kv transfer", `{"prompt":"x","kv_transfer_params":null}`, Request{PromptText: "x", PromptIsText: true}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := DecodeCompletionRequest([]byte(tc.body))
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(*got, tc.want) {
				t.Fatalf("\n got %+v\nwant %+v", *got, tc.want)
			}
		})
	}
}

func TestDecodeChatRequest(t *testing.T) {
	got, err := DecodeChatRequest([]byte(`{"model":"m","messages":[
		{"role":"system","content":"be brief"},
		{"role":"user","content":[{"type":"text","text":"a"},{"type":"text","text":"b"}]},
		{"role":"assistant","content":null,"tool_calls":[]}],
		"max_tokens":9,"max_completion_tokens":7,"add_generation_prompt":false}`))
	if err != nil {
		t.Fatal(err)
	}
	want := Request{Chat: true, Model: "m", MaxTokens: 7, Messages: []tokenizer.Message{
		{Role: "system", Content: "be brief"}, {Role: "user", Content: "a\nb"},
		{Role: "assistant", Extra: []tokenizer.Field{{Name: "tool_calls", Value: []byte(`[]`)}}}}}
	if !reflect.DeepEqual(*got, want) {
		t.Fatalf("\n got %+v\nwant %+v", *got, want)
	}
}

func TestDecodeRejects(t *testing.T) {
	tests := []struct {
		name, body, param, contains string
		chat                        bool
	}{
		{name: "empty body", body: ``},
		{name: "not an object", body: `[1]`},
		{name: "malformed", body: `{"prompt":`, contains: "malformed JSON"},
		{name: "trailing garbage", body: `{"prompt":"x"} x`, contains: "malformed"},
		{name: "wrong type", body: `{"prompt":"x","max_tokens":"5"}`, param: "max_tokens", contains: "expected an integer"},
		{name: "float max_tokens", body: `{"prompt":"x","max_tokens":1.5}`, param: "max_tokens"},
		{name: "negative max_tokens", body: `{"prompt":"x","max_tokens":-1}`, param: "max_tokens", contains: "at least 1"},
		{name: "zero max_tokens", body: `{"prompt":"x","max_tokens":0}`, param: "max_tokens"},
		{name: "huge max_tokens", body: `{"prompt":"x","max_tokens":99999999999}`, param: "max_tokens"},
		{name: "max_tokens beyond int64", body: `{"prompt":"x","max_tokens":1e30}`, param: "max_tokens"},
		{name: "n > 1", body: `{"prompt":"x","n":2}`, param: "n"},
		{name: "stream options without stream", body: `{"prompt":"x","stream_options":{"include_usage":true}}`, param: "stream_options"},
		{name: "stream not bool", body: `{"prompt":"x","stream":"yes"}`, param: "stream"},
		{name: "model not string", body: `{"prompt":"x","model":1}`, param: "model"},
		{name: "missing prompt", body: `{"model":"m"}`, param: "prompt"},
		{name: "null prompt", body: `{"prompt":null}`, param: "prompt"},
		{name: "empty prompt list", body: `{"prompt":[]}`, param: "prompt"},
		{name: "batched prompts", body: `{"prompt":["a","b"]}`, param: "prompt", contains: "batched"},
		{name: "batched token lists", body: `{"prompt":[[1],[2]]}`, param: "prompt", contains: "batched"},
		{name: "mixed list", body: `{"prompt":[1,"a"]}`, param: "prompt"},
		{name: "token out of vocabulary", body: `{"prompt":[1,128256]}`, param: "prompt", contains: "out of vocabulary"},
		{name: "negative token", body: `{"prompt":[-1]}`, param: "prompt"},
		{name: "null token", body: `{"prompt":[1,null]}`, param: "prompt"},
		{name: "null in token lists", body: `{"prompt":[null]}`, param: "prompt"},
		{name: "kv null block id", body: `{"prompt":"x","kv_transfer_params":{"remote_block_ids":[null]}}`, param: "kv_transfer_params"},
		{name: "prompt object", body: `{"prompt":{"a":1}}`, param: "prompt"},
		{name: "both remote flags", body: `{"prompt":"x","kv_transfer_params":{"do_remote_decode":true,"do_remote_prefill":true}}`, param: "kv_transfer_params"},
		{name: "kv params not object", body: `{"prompt":"x","kv_transfer_params":[1]}`, param: "kv_transfer_params"},
		{name: "kv port type", body: `{"prompt":"x","kv_transfer_params":{"remote_port":"80"}}`, param: "kv_transfer_params.remote_port"},
		{name: "kv port range", body: `{"prompt":"x","kv_transfer_params":{"remote_port":70000}}`, param: "kv_transfer_params"},
		{name: "kv block ids type", body: `{"prompt":"x","kv_transfer_params":{"remote_block_ids":["a"]}}`, param: "kv_transfer_params.remote_block_ids"},
		{name: "kv negative block id", body: `{"prompt":"x","kv_transfer_params":{"remote_block_ids":[-1]}}`, param: "kv_transfer_params"},
		{name: "empty messages", body: `{"messages":[]}`, chat: true, param: "messages"},
		{name: "missing messages", body: `{"model":"m"}`, chat: true, param: "messages"},
		{name: "messages not list", body: `{"messages":"hi"}`, chat: true, param: "messages"},
		{name: "missing role", body: `{"messages":[{"content":"hi"}]}`, chat: true, param: "messages"},
		{name: "image part", body: `{"messages":[{"role":"user","content":[{"type":"image_url","image_url":{"url":"x"}}]}]}`, chat: true, param: "messages", contains: "not supported"},
		{name: "content number", body: `{"messages":[{"role":"user","content":3}]}`, chat: true, param: "messages"},
		{name: "negative max_completion_tokens", body: `{"messages":[{"role":"user","content":"x"}],"max_completion_tokens":-5}`, chat: true, param: "max_completion_tokens"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var err error
			if tc.chat {
				_, err = DecodeChatRequest([]byte(tc.body))
			} else {
				_, err = DecodeCompletionRequest([]byte(tc.body))
			}
			e, ok := err.(*Error)
			if !ok {
				t.Fatalf("got %v (%T), want *Error", err, err)
			}
			if e.Status != http.StatusBadRequest || e.Type != "BadRequestError" {
				t.Fatalf("got %d %s, want 400 BadRequestError", e.Status, e.Type)
			}
			if e.Param != tc.param {
				t.Errorf("param %q, want %q (%s)", e.Param, tc.param, e.Message)
			}
			if !strings.Contains(e.Message, tc.contains) {
				t.Errorf("message %q does not mention %q", e.Message, tc.contains)
			}
		})
	}
}

// checkDecoded asserts what every accepted request satisfies.
func checkDecoded(t *testing.T, r *Request) {
	t.Helper()
	if r.MaxTokens < 0 || r.MaxTokens > maxTokensLimit {
		t.Fatalf("max tokens %d accepted", r.MaxTokens)
	}
	if r.Chat {
		if len(r.Messages) == 0 {
			t.Fatal("chat request without messages accepted")
		}
	} else if !r.PromptIsText && len(r.PromptTokens) == 0 {
		t.Fatal("completion request without a prompt accepted")
	}
	ids, err := r.promptTokens(context.Background(), tokenizer.Estimate)
	if err != nil {
		t.Fatal(err)
	}
	for _, id := range ids {
		if id >= tokenizer.VocabSize {
			t.Fatalf("token %d out of vocabulary accepted", id)
		}
	}
	if kv := r.KVTransfer; kv != nil && kv.DoRemoteDecode && kv.DoRemotePrefill {
		t.Fatal("both remote flags accepted")
	}
	if r.IncludeUsage && !r.Stream {
		t.Fatal("stream options without stream accepted")
	}
}

func FuzzDecodeCompletionRequest(f *testing.F) {
	for _, s := range []string{
		`{"model":"m","prompt":"hi","max_tokens":5,"stream":true,"stream_options":{"include_usage":true}}`,
		`{"prompt":[[1,2]],"kv_transfer_params":{"do_remote_prefill":true,"remote_block_ids":[1],"remote_port":1}}`,
		`{"prompt":["a"],"n":1,"seed":7,"ignore_eos":true}`,
		`{"prompt":[1,2,3],"max_tokens":-1}`,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, body []byte) {
		r, err := DecodeCompletionRequest(body)
		if err != nil {
			if _, ok := err.(*Error); !ok {
				t.Fatalf("error %v is not an *Error", err)
			}
			return
		}
		checkDecoded(t, r)
	})
}

func FuzzDecodeChatRequest(f *testing.F) {
	for _, s := range []string{
		`{"model":"m","messages":[{"role":"user","content":"hi"}],"max_completion_tokens":3}`,
		`{"messages":[{"role":"user","content":[{"type":"text","text":"a"}]}],"stream":true}`,
		`{"messages":[{"role":"assistant","content":null}],"kv_transfer_params":{"do_remote_decode":true}}`,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, body []byte) {
		r, err := DecodeChatRequest(body)
		if err != nil {
			if _, ok := err.(*Error); !ok {
				t.Fatalf("error %v is not an *Error", err)
			}
			return
		}
		checkDecoded(t, r)
	})
}

// TestAppendEscapedMatchesEncodingJSON: the hand-written escaper yields the
// string encoding/json would, for valid, invalid and special text.

func TestBuckets125(t *testing.T) {
	got := buckets125(100)
	want := []float64{1, 2, 5, 10, 20, 50, 100}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("got %v, want %v", got, want)
	}
}
