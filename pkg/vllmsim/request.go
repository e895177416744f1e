package vllmsim

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"net/http"
	"reflect"
	"strings"

	"github.com/llmd-kn/llmd-kn/pkg/jsonscan"
	"github.com/llmd-kn/llmd-kn/pkg/tokenizer"
)

// Request is a validated /v1/completions or /v1/chat/completions request:
// what DecodeCompletionRequest and DecodeChatRequest return. Checks that need
// the server's configuration (model name, context length) come later.
type Request struct {
	// Chat is set for /v1/chat/completions.
	Chat bool
	// Model is the requested model name; empty means the first served name.
	Model string

	// A completion prompt is text (PromptIsText) or token ids.
	PromptText   string
	PromptIsText bool
	PromptTokens []uint32

	// Messages and AddGenerationPrompt are a chat request's; ChatOptions
	// its other inputs to the chat template (tools,
	// chat_template_kwargs, continue_final_message), as vLLM passes them.
	Messages            []tokenizer.Message
	AddGenerationPrompt bool
	ChatOptions         tokenizer.ChatOptions

	// MaxTokens is max_tokens (or, for chat, max_completion_tokens, which
	// wins); 0 when not given.
	MaxTokens int
	Stream    bool
	// IncludeUsage and ContinuousUsage are stream_options.include_usage and
	// stream_options.continuous_usage_stats.
	IncludeUsage    bool
	ContinuousUsage bool
	IgnoreEOS       bool
	Seed            int64
	HasSeed         bool
	// Priority is vLLM's priority (lower runs first under the priority
	// scheduling policy; must be 0 otherwise).
	Priority int
	// CacheSalt is vLLM's cache_salt ("" when absent).
	CacheSalt string
	// KVTransfer is kv_transfer_params; nil when absent or null.
	KVTransfer *KVTransferParams
}

// KVTransferParams is vLLM's kv_transfer_params for the NIXL connector.
type KVTransferParams struct {
	// DoRemoteDecode asks a prefill engine to compute the prompt and hold
	// its blocks for a decode engine.
	DoRemoteDecode bool
	// DoRemotePrefill tells a decode engine that the prompt's KV is to be
	// pulled from RemoteEngineID at RemoteHost:RemotePort.
	DoRemotePrefill bool
	RemoteEngineID  string
	RemoteBlockIDs  []int
	RemoteHost      string
	RemotePort      int
	RemoteRequestID string
	TPSize          int
}

// Error is an error in vLLM's OpenAI-compatible shape.
type Error struct {
	Status  int
	Type    string
	Message string
	// Param names the offending request field, if any.
	Param string
}

func (e *Error) Error() string { return e.Message }

func badRequest(param, format string, args ...any) *Error {
	return &Error{Status: http.StatusBadRequest, Type: "BadRequestError", Message: fmt.Sprintf(format, args...), Param: param}
}

// maxTokensLimit rejects absurd max_tokens before any arithmetic.
const maxTokensLimit = math.MaxInt32

type rawStreamOptions struct {
	IncludeUsage         *bool `json:"include_usage"`
	ContinuousUsageStats *bool `json:"continuous_usage_stats"`
}

type rawKVTransfer struct {
	DoRemoteDecode  *bool    `json:"do_remote_decode"`
	DoRemotePrefill *bool    `json:"do_remote_prefill"`
	RemoteEngineID  *string  `json:"remote_engine_id"`
	RemoteBlockIDs  []*int64 `json:"remote_block_ids"`
	RemoteHost      *string  `json:"remote_host"`
	RemotePort      *int64   `json:"remote_port"`
	RemoteRequestID *string  `json:"remote_request_id"`
	TPSize          *int64   `json:"tp_size"`
}

type rawCommon struct {
	Model            *string           `json:"model"`
	MaxTokens        *int64            `json:"max_tokens"`
	N                *int64            `json:"n"`
	Stream           *bool             `json:"stream"`
	StreamOptions    *rawStreamOptions `json:"stream_options"`
	IgnoreEOS        *bool             `json:"ignore_eos"`
	Seed             *int64            `json:"seed"`
	Priority         *int64            `json:"priority"`
	CacheSalt        *string           `json:"cache_salt"`
	KVTransferParams *rawKVTransfer    `json:"kv_transfer_params"`
}

type rawCompletion struct {
	rawCommon
	Prompt json.RawMessage `json:"prompt"`
}

type rawMessage struct {
	Role    *string         `json:"role"`
	Content json.RawMessage `json:"content"`
	// What vLLM passes on to the chat template.
	Name             json.RawMessage `json:"name"`
	ToolCalls        json.RawMessage `json:"tool_calls"`
	ToolCallID       json.RawMessage `json:"tool_call_id"`
	Reasoning        json.RawMessage `json:"reasoning"`
	ReasoningContent json.RawMessage `json:"reasoning_content"`
}

type rawChat struct {
	rawCommon
	Messages             []rawMessage    `json:"messages"`
	MaxCompletionTokens  *int64          `json:"max_completion_tokens"`
	AddGenerationPrompt  *bool           `json:"add_generation_prompt"`
	ContinueFinalMessage *bool           `json:"continue_final_message"`
	Tools                json.RawMessage `json:"tools"`
	ChatTemplateKwargs   json.RawMessage `json:"chat_template_kwargs"`
}

// DecodeCompletionRequest parses and validates a /v1/completions body. Fields
// the simulator does not model (temperature, top_p, stop, ...) are accepted
// and ignored, as vLLM ignores what it does not know; a known field of the
// wrong type is an error.
func DecodeCompletionRequest(body []byte) (*Request, error) {
	var raw rawCompletion
	rest, prompt := cutPrompt(body)
	if err := unmarshalBody(rest, &raw); err != nil {
		return nil, err
	}
	if prompt != nil {
		raw.Prompt = prompt
	}
	r := &Request{}
	if err := raw.rawCommon.apply(r); err != nil {
		return nil, err
	}
	if raw.MaxTokens != nil {
		r.MaxTokens = int(*raw.MaxTokens)
	}
	if err := decodePrompt(raw.Prompt, r); err != nil {
		return nil, err
	}
	return r, nil
}

// DecodeChatRequest parses and validates a /v1/chat/completions body.
func DecodeChatRequest(body []byte) (*Request, error) {
	var raw rawChat
	if err := unmarshalBody(body, &raw); err != nil {
		return nil, err
	}
	r := &Request{Chat: true, AddGenerationPrompt: true}
	if err := raw.rawCommon.apply(r); err != nil {
		return nil, err
	}
	switch {
	case raw.MaxCompletionTokens != nil:
		if err := checkMaxTokens("max_completion_tokens", *raw.MaxCompletionTokens); err != nil {
			return nil, err
		}
		r.MaxTokens = int(*raw.MaxCompletionTokens)
	case raw.MaxTokens != nil:
		r.MaxTokens = int(*raw.MaxTokens)
	}
	if raw.AddGenerationPrompt != nil {
		r.AddGenerationPrompt = *raw.AddGenerationPrompt
	}
	if len(raw.Messages) == 0 {
		return nil, badRequest("messages", "messages must be a non-empty list")
	}
	r.Messages = make([]tokenizer.Message, len(raw.Messages))
	for i, m := range raw.Messages {
		if m.Role == nil || *m.Role == "" {
			return nil, badRequest("messages", "messages[%d].role is required", i)
		}
		text, err := decodeContent(m.Content, i)
		if err != nil {
			return nil, err
		}
		r.Messages[i] = tokenizer.Message{Role: *m.Role, Content: text}
		for _, f := range []struct {
			name string
			v    json.RawMessage
		}{{"name", m.Name}, {"tool_calls", m.ToolCalls}, {"tool_call_id", m.ToolCallID}, {"reasoning", m.Reasoning}, {"reasoning_content", m.ReasoningContent}} {
			if f.v != nil {
				r.Messages[i].Extra = append(r.Messages[i].Extra, tokenizer.Field{Name: f.name, Value: f.v})
			}
		}
	}
	r.ChatOptions = tokenizer.ChatOptions{AddGenerationPrompt: r.AddGenerationPrompt, Tools: raw.Tools, Kwargs: raw.ChatTemplateKwargs}
	if raw.ContinueFinalMessage != nil {
		r.ChatOptions.ContinueFinalMessage = *raw.ContinueFinalMessage
	}
	if r.ChatOptions.AddGenerationPrompt && r.ChatOptions.ContinueFinalMessage {
		return nil, badRequest("continue_final_message", "cannot set both continue_final_message and add_generation_prompt to true")
	}
	return r, nil
}

// cutPrompt finds the prompt of a well-formed completion body in one pass
// and returns the body with the prompt's value replaced by null, so that
// encoding/json decodes only the small rest (a prompt of token ids is most
// of the bytes). A malformed body is returned whole, for unmarshalBody to
// describe.
func cutPrompt(body []byte) (rest, prompt []byte) {
	i := jsonscan.Space(body, 0)
	if i >= len(body) || body[i] != '{' {
		return body, nil
	}
	var spans [][2]int
	end, err := jsonscan.Object(body, i, func(m jsonscan.Member) (int, error) {
		end, err := jsonscan.Skip(body, m.Value)
		if err == nil && !m.Escaped && string(m.Key) == "prompt" {
			spans = append(spans, [2]int{m.Value, end})
		}
		return end, err
	})
	if err != nil || jsonscan.Space(body, end) != len(body) || len(spans) == 0 {
		return body, nil
	}
	last := spans[len(spans)-1]
	rest = make([]byte, 0, len(body)-(last[1]-last[0])+4*len(spans))
	at := 0
	for _, sp := range spans {
		rest = append(append(rest, body[at:sp[0]]...), "null"...)
		at = sp[1]
	}
	return append(rest, body[at:]...), body[last[0]:last[1]]
}

func unmarshalBody(body []byte, v any) error {
	body = bytes.TrimSpace(body)
	if len(body) == 0 {
		return badRequest("", "the request body is empty; expected a JSON object")
	}
	if body[0] != '{' {
		return badRequest("", "the request body must be a JSON object")
	}
	// Keys as vLLM matches them: exactly (exactkeys.go).
	body = exactKeys(body, reflect.TypeOf(v).Elem())
	if err := json.Unmarshal(body, v); err != nil {
		return jsonError(err)
	}
	return nil
}

// jsonError turns an encoding/json error into a message that names the
// field and the expected type.
func jsonError(err error) *Error {
	var te *json.UnmarshalTypeError
	if errors.As(err, &te) {
		// Fields of the embedded rawCommon come prefixed with its name.
		field := strings.ReplaceAll(te.Field, "rawCommon.", "")
		if field == "" {
			return badRequest("", "invalid JSON value: expected %s, got %s", jsonTypeName(te.Type.String()), te.Value)
		}
		return badRequest(field, "invalid type for %q: expected %s, got %s", field, jsonTypeName(te.Type.String()), te.Value)
	}
	var se *json.SyntaxError
	if errors.As(err, &se) {
		return badRequest("", "malformed JSON at byte %d: %v", se.Offset, err)
	}
	return badRequest("", "malformed JSON: %v", err)
}

func jsonTypeName(goType string) string {
	t := strings.TrimPrefix(goType, "*")
	switch {
	case strings.HasPrefix(t, "int") || strings.HasPrefix(t, "uint"):
		return "an integer"
	case t == "bool":
		return "a boolean"
	case t == "string":
		return "a string"
	case strings.HasPrefix(t, "[]"):
		return "a list"
	case strings.HasPrefix(t, "float"):
		return "a number"
	}
	return "an object"
}

func checkMaxTokens(field string, v int64) error {
	if v < 1 {
		return badRequest(field, "%s must be at least 1, got %d.", field, v)
	}
	if v > maxTokensLimit {
		return badRequest(field, "%s is too large: %d", field, v)
	}
	return nil
}

func (c *rawCommon) apply(r *Request) error {
	if c.Model != nil {
		r.Model = *c.Model
	}
	if c.MaxTokens != nil {
		if err := checkMaxTokens("max_tokens", *c.MaxTokens); err != nil {
			return err
		}
	}
	if c.N != nil && *c.N != 1 {
		return badRequest("n", "n=%d is not supported by the simulator; only n=1 is", *c.N)
	}
	if c.Stream != nil {
		r.Stream = *c.Stream
	}
	if c.StreamOptions != nil {
		if !r.Stream {
			return badRequest("stream_options", "Stream options can only be defined when `stream=True`.")
		}
		if c.StreamOptions.IncludeUsage != nil {
			r.IncludeUsage = *c.StreamOptions.IncludeUsage
		}
		if c.StreamOptions.ContinuousUsageStats != nil {
			r.ContinuousUsage = *c.StreamOptions.ContinuousUsageStats
		}
	}
	if c.IgnoreEOS != nil {
		r.IgnoreEOS = *c.IgnoreEOS
	}
	if c.Seed != nil {
		r.Seed, r.HasSeed = *c.Seed, true
	}
	if c.Priority != nil {
		if *c.Priority < math.MinInt32 || *c.Priority > math.MaxInt32 {
			return badRequest("priority", "priority %d out of range", *c.Priority)
		}
		r.Priority = int(*c.Priority)
	}
	if c.CacheSalt != nil {
		if *c.CacheSalt == "" {
			return badRequest("cache_salt", "cache_salt must not be empty")
		}
		r.CacheSalt = *c.CacheSalt
	}
	if c.KVTransferParams != nil {
		kv, err := c.KVTransferParams.validate()
		if err != nil {
			return err
		}
		r.KVTransfer = kv
	}
	return nil
}

func (k *rawKVTransfer) validate() (*KVTransferParams, error) {
	const p = "kv_transfer_params"
	kv := &KVTransferParams{}
	if k.DoRemoteDecode != nil {
		kv.DoRemoteDecode = *k.DoRemoteDecode
	}
	if k.DoRemotePrefill != nil {
		kv.DoRemotePrefill = *k.DoRemotePrefill
	}
	if kv.DoRemoteDecode && kv.DoRemotePrefill {
		return nil, badRequest(p, "kv_transfer_params: do_remote_decode and do_remote_prefill are mutually exclusive")
	}
	if k.RemoteEngineID != nil {
		kv.RemoteEngineID = *k.RemoteEngineID
	}
	if k.RemoteHost != nil {
		kv.RemoteHost = *k.RemoteHost
	}
	if k.RemoteRequestID != nil {
		kv.RemoteRequestID = *k.RemoteRequestID
	}
	if k.RemotePort != nil {
		if *k.RemotePort < 0 || *k.RemotePort > 65535 {
			return nil, badRequest(p, "kv_transfer_params.remote_port %d out of range", *k.RemotePort)
		}
		kv.RemotePort = int(*k.RemotePort)
	}
	if k.TPSize != nil {
		if *k.TPSize < 0 || *k.TPSize > 1<<16 {
			return nil, badRequest(p, "kv_transfer_params.tp_size %d out of range", *k.TPSize)
		}
		kv.TPSize = int(*k.TPSize)
	}
	if len(k.RemoteBlockIDs) > 0 {
		kv.RemoteBlockIDs = make([]int, len(k.RemoteBlockIDs))
		for i, b := range k.RemoteBlockIDs {
			if b == nil || *b < 0 || *b > math.MaxInt32 {
				return nil, badRequest(p, "kv_transfer_params.remote_block_ids[%d] must be a block id", i)
			}
			kv.RemoteBlockIDs[i] = int(*b)
		}
	}
	return kv, nil
}

// decodePrompt accepts vLLM's prompt forms: a string, a list of one string,
// a list of token ids, or a list of one list of token ids. Batches of several
// prompts are refused.
func decodePrompt(raw json.RawMessage, r *Request) error {
	raw = bytes.TrimSpace(raw)
	if len(raw) == 0 || bytes.Equal(raw, []byte("null")) {
		return badRequest("prompt", "prompt is required")
	}
	switch raw[0] {
	case '"':
		if err := json.Unmarshal(raw, &r.PromptText); err != nil {
			return badRequest("prompt", "prompt: %v", err)
		}
		r.PromptIsText = true
		return nil
	case '[':
		if i := jsonscan.Space(raw, 1); i < len(raw) && (raw[i] == '-' || (raw[i] >= '0' && raw[i] <= '9')) {
			return decodeTokenIDs(raw, r) // the common long case, without a list of raw items
		}
	default:
		return badRequest("prompt", "prompt must be a string, a list of strings or a list of token ids")
	}
	var items []json.RawMessage
	if err := json.Unmarshal(raw, &items); err != nil {
		return badRequest("prompt", "prompt: %v", err)
	}
	if len(items) == 0 {
		return badRequest("prompt", "prompt cannot be empty")
	}
	first := bytes.TrimSpace(items[0])
	if len(first) == 0 {
		return badRequest("prompt", "prompt cannot be empty")
	}
	switch first[0] {
	case '"', '[':
		if len(items) > 1 {
			return badRequest("prompt", "batched prompts (%d) are not supported by the simulator; send one prompt per request", len(items))
		}
		if first[0] == '"' {
			if err := json.Unmarshal(first, &r.PromptText); err != nil {
				return badRequest("prompt", "prompt[0]: %v", err)
			}
			r.PromptIsText = true
			return nil
		}
		return decodeTokenIDs(first, r)
	}
	return decodeTokenIDs(raw, r)
}

func decodeTokenIDs(raw json.RawMessage, r *Request) error {
	// One pass, no reflection: a 32k-token prompt is most of a request.
	ids, end, err := jsonscan.Uint32s(make([]uint32, 0, len(raw)/6+1), raw, 0, tokenizer.VocabSize)
	var re *jsonscan.RangeError
	switch {
	case errors.As(err, &re):
		return badRequest("prompt", "token id %s at position %d is out of vocabulary (size %d)", re.Value, re.Index, tokenizer.VocabSize)
	case errors.Is(err, jsonscan.ErrNotInt):
		return badRequest("prompt", "token id at position %d is not an integer", len(ids))
	case err != nil || jsonscan.Space(raw, end) != len(raw):
		return badRequest("prompt", "prompt must be a string, a list of strings or a list of token ids (integers)")
	case len(ids) == 0:
		return badRequest("prompt", "prompt cannot be empty")
	}
	r.PromptTokens = ids
	return nil
}

// decodeContent accepts a message's content as a string, null (an assistant
// turn that only called tools), or a list of text parts, joined with
// newlines as vLLM joins them.
func decodeContent(raw json.RawMessage, i int) (string, error) {
	raw = bytes.TrimSpace(raw)
	if len(raw) == 0 || bytes.Equal(raw, []byte("null")) {
		return "", nil
	}
	switch raw[0] {
	case '"':
		var s string
		if err := json.Unmarshal(raw, &s); err != nil {
			return "", badRequest("messages", "messages[%d].content: %v", i, err)
		}
		return s, nil
	case '[':
		var parts []struct {
			Type *string `json:"type"`
			Text *string `json:"text"`
		}
		if err := json.Unmarshal(raw, &parts); err != nil {
			return "", badRequest("messages", "messages[%d].content must be a string or a list of content parts", i)
		}
		texts := make([]string, 0, len(parts))
		for j, p := range parts {
			if p.Type == nil || *p.Type != "text" {
				t := "<missing>"
				if p.Type != nil {
					t = *p.Type
				}
				return "", badRequest("messages", "messages[%d].content[%d]: content part type %q is not supported by this model (text only)", i, j, t)
			}
			if p.Text == nil {
				return "", badRequest("messages", "messages[%d].content[%d].text is required", i, j)
			}
			texts = append(texts, *p.Text)
		}
		return strings.Join(texts, "\n"), nil
	}
	return "", badRequest("messages", "messages[%d].content must be a string or a list of content parts", i)
}

// EncodeCompletionPrompt returns the token ids of a text completion prompt as
// the simulator computes them: tokenizer.Encode of the text, with no special
// tokens added (the project-wide convention the activator and router share,
// so that their block hashes match the simulator's; a real Llama-3 vLLM
// would prepend BOS).
func EncodeCompletionPrompt(dst []uint32, text string) []uint32 {
	return tokenizer.Encode(dst, text)
}

// EncodeChatPrompt returns the token ids of a chat request as the simulator
// computes them (the project's chat template).
func EncodeChatPrompt(dst []uint32, msgs []tokenizer.Message, addGenerationPrompt bool) []uint32 {
	return tokenizer.ApplyChatTemplate(dst, msgs, addGenerationPrompt)
}

// promptTokens returns the request's prompt as token ids, tokenized with
// tok.
func (r *Request) promptTokens(ctx context.Context, tok tokenizer.Tokenizer) ([]uint32, error) {
	switch {
	case r.Chat:
		opts := r.ChatOptions
		opts.AddGenerationPrompt = r.AddGenerationPrompt
		return tok.ApplyChat(ctx, r.Messages, opts)
	case r.PromptIsText:
		return tok.Encode(ctx, r.PromptText)
	}
	return r.PromptTokens, nil
}
