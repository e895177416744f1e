package activator

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math"

	"github.com/llmd-kn/llmd-kn/pkg/tokenizer"
)

// Request kinds by path.
const (
	KindCompletion = "completion"
	KindChat       = "chat"
)

// LLMRequest is an OpenAI request as the activator needs it: parsed once,
// tokenized once, and kept as a field map so that the P/D steps can rewrite
// it without a second parse.
type LLMRequest struct {
	Kind      string
	Model     string
	Stream    bool
	MaxTokens int // 0 when the client did not say
	Tokens    []uint32
	Fields    map[string]json.RawMessage
	Size      int

	// The prompt as parsed, for the revision's tokenizer (Retokenize):
	// a completion's text (or token ids, when idPrompt), or a chat's
	// messages.
	promptText string
	idPrompt   bool
	messages   []tokenizer.Message
}

// BadRequestError is a request the activator refuses with 400 (or Status).
type BadRequestError struct {
	Status int
	Msg    string
}

func (e *BadRequestError) Error() string { return e.Msg }

func bad(format string, args ...any) error {
	return &BadRequestError{Status: 400, Msg: fmt.Sprintf(format, args...)}
}

// maxPromptItems bounds lists of prompts and of messages (not token ids,
// which the body limit and the engine's context length bound).
const maxPromptItems = 4096

// ParseLLMRequest parses an OpenAI completions or chat body. It rejects
// what vLLM would reject as malformed (wrong types, empty prompt or
// messages, n != 1 is left to the engine) with a message naming the field,
// and removes kv_transfer_params: only the activator may ask pods to
// transfer KV, since its remote_host/remote_port make a pod call an address.
func ParseLLMRequest(kind string, body []byte) (*LLMRequest, error) {
	r := &LLMRequest{Kind: kind, Size: len(body)}
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.UseNumber()
	if err := dec.Decode(&r.Fields); err != nil {
		return nil, bad("request body is not a JSON object: %v", err)
	}
	if r.Fields == nil {
		return nil, bad("request body is not a JSON object")
	}
	if dec.More() {
		return nil, bad("request body has data after the JSON object")
	}
	delete(r.Fields, "kv_transfer_params")
	if raw, ok := r.Fields["model"]; ok {
		if err := json.Unmarshal(raw, &r.Model); err != nil {
			return nil, bad("model: must be a string")
		}
	}
	if raw, ok := r.Fields["stream"]; ok && string(raw) != "null" {
		if err := json.Unmarshal(raw, &r.Stream); err != nil {
			return nil, bad("stream: must be a boolean")
		}
	}
	for _, key := range []string{"max_tokens", "max_completion_tokens"} {
		raw, ok := r.Fields[key]
		if !ok || string(raw) == "null" {
			continue
		}
		var n float64
		if err := json.Unmarshal(raw, &n); err != nil || n != math.Trunc(n) || n < 1 || n > math.MaxInt32 {
			return nil, bad("%s: must be a positive integer", key)
		}
		r.MaxTokens = int(n)
	}
	var err error
	switch kind {
	case KindCompletion:
		r.Tokens, err = r.promptTokens(r.Fields["prompt"])
	case KindChat:
		r.Tokens, err = r.chatTokens(r.Fields["messages"])
	default:
		err = bad("unknown request kind %q", kind)
	}
	if err != nil {
		return nil, err
	}
	return r, nil
}

// Retokenize replaces the estimate's ids with tk's (the revision's
// tokenizer, known once the revision is resolved) and checks token-id
// prompts against its vocabulary.
func (r *LLMRequest) Retokenize(ctx context.Context, tk tokenizer.Tokenizer) error {
	if r.idPrompt {
		if n := tk.Info().VocabSize; n > 0 {
			for i, id := range r.Tokens {
				if int(id) >= n {
					return bad("prompt[%d]: token id %d out of range [0, %d)", i, id, n)
				}
			}
		}
		return nil
	}
	if tk == tokenizer.Estimate {
		return nil // ParseLLMRequest computed these
	}
	var ids []uint32
	var err error
	switch r.Kind {
	case KindCompletion:
		ids, err = tk.Encode(ctx, r.promptText)
	case KindChat:
		ids, err = tk.ApplyChatTemplate(ctx, r.messages, true)
	}
	if err != nil {
		return bad("%s: %v", map[string]string{KindCompletion: "prompt", KindChat: "messages"}[r.Kind], err)
	}
	r.Tokens = ids
	return nil
}

func (r *LLMRequest) promptTokens(raw json.RawMessage) ([]uint32, error) {
	if len(raw) == 0 || string(raw) == "null" {
		return nil, bad("prompt: required")
	}
	var s string
	if json.Unmarshal(raw, &s) == nil {
		if s == "" {
			return nil, bad("prompt: must not be empty")
		}
		r.promptText = s
		return tokenizer.Encode(nil, s), nil
	}
	// Token ids (as long as the body limit allows: the engine checks the
	// context length), or the first of several prompts (routing looks at
	// the first; the engine answers all).
	var ids []int64
	if json.Unmarshal(raw, &ids) == nil {
		if len(ids) == 0 {
			return nil, bad("prompt: must not be empty")
		}
		// The vocabulary is the revision's tokenizer's: Retokenize checks
		// the upper bound.
		out := make([]uint32, len(ids))
		for i, id := range ids {
			if id < 0 || id > math.MaxUint32 {
				return nil, bad("prompt[%d]: token id %d out of range", i, id)
			}
			out[i] = uint32(id)
		}
		r.idPrompt = true
		return out, nil
	}
	var list []json.RawMessage
	if err := json.Unmarshal(raw, &list); err != nil {
		return nil, bad("prompt: must be a string, a list of strings, or a list of token ids")
	}
	if len(list) == 0 {
		return nil, bad("prompt: must not be empty")
	}
	if len(list) > maxPromptItems {
		return nil, bad("prompt: more than %d prompts", maxPromptItems)
	}
	return r.promptTokens(list[0])
}

func (r *LLMRequest) chatTokens(raw json.RawMessage) ([]uint32, error) {
	if len(raw) == 0 || string(raw) == "null" {
		return nil, bad("messages: required")
	}
	var msgs []struct {
		Role    string          `json:"role"`
		Content json.RawMessage `json:"content"`
	}
	if err := json.Unmarshal(raw, &msgs); err != nil {
		return nil, bad("messages: must be a list of {role, content} objects")
	}
	if len(msgs) == 0 {
		return nil, bad("messages: must not be empty")
	}
	if len(msgs) > maxPromptItems {
		return nil, bad("messages: more than %d items", maxPromptItems)
	}
	tm := make([]tokenizer.Message, len(msgs))
	for i, m := range msgs {
		if m.Role == "" {
			return nil, bad("messages[%d].role: required", i)
		}
		text, err := contentText(m.Content)
		if err != nil {
			return nil, bad("messages[%d].content: %v", i, err)
		}
		tm[i] = tokenizer.Message{Role: m.Role, Content: text}
	}
	r.messages = tm
	return tokenizer.ApplyChatTemplate(nil, tm, true), nil
}

func contentText(raw json.RawMessage) (string, error) {
	if len(raw) == 0 || string(raw) == "null" {
		return "", nil
	}
	var s string
	if json.Unmarshal(raw, &s) == nil {
		return s, nil
	}
	var parts []struct {
		Type string `json:"type"`
		Text string `json:"text"`
	}
	if err := json.Unmarshal(raw, &parts); err != nil {
		return "", errors.New("must be a string or a list of content parts")
	}
	// Text parts joined with newlines, as vLLM's chat preprocessing does;
	// other parts are left for the engine to accept or refuse.
	var b bytes.Buffer
	n := 0
	for _, p := range parts {
		if p.Type == "text" {
			if n > 0 {
				b.WriteByte('\n')
			}
			b.WriteString(p.Text)
			n++
		}
	}
	return b.String(), nil
}

// Body returns the request as JSON, with extra fields set (nil values
// delete the field).
func (r *LLMRequest) Body(extra map[string]json.RawMessage) ([]byte, error) {
	if len(extra) == 0 {
		return json.Marshal(r.Fields)
	}
	m := make(map[string]json.RawMessage, len(r.Fields)+len(extra))
	for k, v := range r.Fields {
		m[k] = v
	}
	for k, v := range extra {
		if v == nil {
			delete(m, k)
		} else {
			m[k] = v
		}
	}
	return json.Marshal(m)
}
