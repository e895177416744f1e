package activator

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"math"
	"strconv"
	"strings"

	"github.com/llmd-kn/llmd-kn/pkg/jsonscan"
	"github.com/llmd-kn/llmd-kn/pkg/tokenizer"
)

// Request kinds by path.
const (
	KindCompletion = "completion"
	KindChat       = "chat"
)

// LLMRequest is an OpenAI request as the activator needs it: the fields it
// reads, parsed once in one pass over the client's bytes, and tokenized
// once. The body itself is never re-encoded: AppendBody forwards the
// client's bytes with only the activator's edits spliced in (see Edit).
type LLMRequest struct {
	Kind      string
	Model     string
	Stream    bool
	MaxTokens int // 0 when the client did not say
	// CacheSalt is vLLM's cache_salt ("" when absent): the router keeps
	// the salt's prefixes apart from everyone else's.
	CacheSalt string
	Tokens    []uint32
	Size      int

	// The prompt as parsed, for the revision's tokenizer (Retokenize):
	// a completion's text (or token ids, when idPrompt), or a chat's
	// messages.
	promptText string
	idPrompt   bool
	messages   []tokenizer.Message
	chatOpts   tokenizer.ChatOptions // a chat's other template inputs
	tokenized  bool                  // Tokens hold a text prompt's ids

	body    []byte   // the client's bytes; never modified
	open    int      // offset of the object's '{'
	close   int      // offset of its '}'
	members []member // its members, in order
	edits   []Edit
}

// member is one top-level member of the body: the key's opening quote, the
// value's span, and whether the activator removes it.
type member struct {
	key           string
	start, vs, ve int
	prevEnd       int // the end of the previous member's value (or the '{')
	dropped       bool
}

// Edit sets a top-level field of the forwarded body to Value (raw JSON) or,
// with a nil Value, removes it. The activator's edits are: removing the
// client's kv_transfer_params (always); stream_options.include_usage set
// on streams (askUsage); priority under priority scheduling; and for P/D,
// kv_transfer_params on the decode request and max_tokens,
// max_completion_tokens, stream, stream_options and kv_transfer_params on
// the prefill request.
type Edit struct {
	Key   string
	Value []byte
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

// ReservedFields are the top-level body fields only the activator sends:
// kv_transfer_params (its remote_host/remote_port make a pod call an
// address) and priority (vLLM's priority is the request's SLO tier, which
// the activator decides: a client's would be a tier escalation).
var ReservedFields = []string{"kv_transfer_params", "priority"}

// reservedKey reports whether a client's top-level key is a ReservedField,
// removed from what is forwarded. Matched under Unicode case folding
// (strings.EqualFold: "KV_Transfer_Params", "\u212Av_transfer_params" with
// the Kelvin sign, "kv_tran\u017Ffer_params" with the long s), so that no
// engine that matches keys loosely can be reached with a variant spelling.
func reservedKey(key string) bool {
	for _, r := range ReservedFields {
		if strings.EqualFold(key, r) {
			return true
		}
	}
	return false
}

// ParseLLMRequest parses an OpenAI completions or chat body in one pass,
// reading only the fields the activator needs (model, stream, max_tokens,
// max_completion_tokens, prompt or messages) and validating the rest as
// JSON. It rejects what vLLM would reject as malformed (wrong types, empty
// prompt or messages; n != 1 is left to the engine) with a message naming
// the field. The request keeps body (which the caller must not modify while
// the request lives) to forward it.
func ParseLLMRequest(kind string, body []byte) (*LLMRequest, error) {
	r, err := parseLLMRequest(kind, body)
	if err != nil {
		return nil, err
	}
	r.estimate()
	return r, nil
}

// parseLLMRequest is ParseLLMRequest leaving a text prompt untokenized:
// the activator tokenizes it once, with the revision's tokenizer
// (Retokenize), once the revision is known.
func parseLLMRequest(kind string, body []byte) (*LLMRequest, error) {
	if kind != KindCompletion && kind != KindChat {
		return nil, bad("unknown request kind %q", kind)
	}
	r := &LLMRequest{Kind: kind, Size: len(body), body: body}
	i := jsonscan.Space(body, 0)
	if i >= len(body) || body[i] != '{' {
		if _, _, err := jsonscan.Document(body); err != nil {
			return nil, bad("request body is not a JSON object: %v", err)
		}
		return nil, bad("request body is not a JSON object")
	}
	r.open = i
	r.chatOpts.AddGenerationPrompt = true // vLLM's default
	var (
		prompt   promptValue
		msgs     []tokenizer.Message
		havePr   bool
		haveMsgs bool
	)
	prevEnd := i + 1
	end, err := jsonscan.Object(body, i, func(m jsonscan.Member) (int, error) {
		key := m.Name()
		var end int
		var err error
		switch {
		case key == "model":
			end, err = r.parseModel(m.Value)
		case key == "stream":
			end, err = r.parseStream(m.Value)
		case key == "cache_salt":
			end, err = r.parseCacheSalt(m.Value)
		case key == "max_tokens" || key == "max_completion_tokens":
			end, err = r.parseMaxTokens(key, m.Value)
		case key == "prompt" && kind == KindCompletion:
			prompt, end, err = parsePrompt(body, m.Value, 0)
			havePr = true
		case key == "messages" && kind == KindChat:
			msgs, end, err = parseMessages(body, m.Value)
			haveMsgs = true
		case kind == KindChat && (key == "tools" || key == "chat_template_kwargs"):
			end, err = jsonscan.Skip(body, m.Value)
			if err == nil && string(body[m.Value:end]) != "null" {
				// A copy: the body's buffer goes back to a pool while an
				// engine tokenizer's call may still run.
				raw := bytes.Clone(body[m.Value:end])
				if key == "tools" {
					r.chatOpts.Tools = raw
				} else {
					r.chatOpts.Kwargs = raw
				}
			}
		case kind == KindChat && (key == "add_generation_prompt" || key == "continue_final_message"):
			var b *bool
			end, b, err = parseBool(body, key, m.Value)
			if err == nil && b != nil {
				if key == "add_generation_prompt" {
					r.chatOpts.AddGenerationPrompt = *b
				} else {
					r.chatOpts.ContinueFinalMessage = *b
				}
			}
		default:
			end, err = jsonscan.Skip(body, m.Value)
		}
		if err != nil {
			return end, err
		}
		r.members = append(r.members, member{key: key, start: m.KeyStart, vs: m.Value, ve: end,
			dropped: reservedKey(key), prevEnd: prevEnd})
		prevEnd = end
		return end, nil
	})
	if err != nil {
		var br *BadRequestError
		if errors.As(err, &br) {
			return nil, err
		}
		return nil, bad("request body is not a JSON object: %v", err)
	}
	if jsonscan.Space(body, end) != len(body) {
		return nil, bad("request body has data after the JSON object")
	}
	r.close = end - 1
	switch kind {
	case KindCompletion:
		if !havePr || prompt.null {
			return nil, bad("prompt: required")
		}
		if prompt.isText {
			r.promptText = prompt.text
		} else {
			// The vocabulary is the revision's tokenizer's: Retokenize
			// checks the upper bound.
			r.idPrompt = true
			r.Tokens = prompt.ids
		}
	case KindChat:
		if !haveMsgs || msgs == nil {
			return nil, bad("messages: required")
		}
		r.messages = msgs
	}
	return r, nil
}

// estimate sets a text prompt's ids from the estimate, unless they are
// set.
func (r *LLMRequest) estimate() {
	if r.idPrompt || r.tokenized {
		return
	}
	switch r.Kind {
	case KindCompletion:
		r.Tokens = tokenizer.Encode(nil, r.promptText)
	case KindChat:
		r.Tokens, _ = tokenizer.Estimate.ApplyChat(context.Background(), r.messages, r.chatOpts)
	}
	r.tokenized = true
}

// Retokenize sets a text prompt's ids from tk (the revision's tokenizer,
// known once the revision is resolved), replacing the estimate's if
// ParseLLMRequest computed them, and checks token-id prompts against its
// vocabulary.
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
		r.estimate() // ParseLLMRequest may have computed these
		return nil
	}
	var ids []uint32
	var err error
	switch r.Kind {
	case KindCompletion:
		ids, err = tk.Encode(ctx, r.promptText)
	case KindChat:
		ids, err = tk.ApplyChat(ctx, r.messages, r.chatOpts)
	}
	if err != nil {
		return bad("%s: %v", map[string]string{KindCompletion: "prompt", KindChat: "messages"}[r.Kind], err)
	}
	r.Tokens, r.tokenized = ids, true
	return nil
}

func (r *LLMRequest) parseModel(v int) (int, error) {
	switch r.body[v] {
	case '"':
		s, end, err := jsonscan.String(r.body, v)
		r.Model = s
		return end, err
	case 'n':
		r.Model = ""
		return jsonscan.Skip(r.body, v)
	}
	return v, bad("model: must be a string")
}

func (r *LLMRequest) parseCacheSalt(v int) (int, error) {
	switch r.body[v] {
	case '"':
		s, end, err := jsonscan.String(r.body, v)
		r.CacheSalt = s
		return end, err
	case 'n':
		r.CacheSalt = ""
		return jsonscan.Skip(r.body, v)
	}
	return v, bad("cache_salt: must be a string")
}

// parseBool reads a boolean field: nil for null.
func parseBool(b []byte, key string, v int) (int, *bool, error) {
	end, err := jsonscan.Skip(b, v)
	if err != nil {
		return end, nil, err
	}
	switch string(b[v:end]) {
	case "true":
		t := true
		return end, &t, nil
	case "false":
		f := false
		return end, &f, nil
	case "null":
		return end, nil, nil
	}
	return end, nil, bad("%s: must be a boolean", key)
}

func (r *LLMRequest) parseStream(v int) (int, error) {
	end, err := jsonscan.Skip(r.body, v)
	if err != nil {
		return end, err
	}
	switch string(r.body[v:end]) {
	case "true":
		r.Stream = true
	case "false", "null":
		r.Stream = false
	default:
		return end, bad("stream: must be a boolean")
	}
	return end, nil
}

func (r *LLMRequest) parseMaxTokens(key string, v int) (int, error) {
	end, err := jsonscan.Skip(r.body, v)
	if err != nil {
		return end, err
	}
	raw := string(r.body[v:end])
	if raw == "null" {
		return end, nil
	}
	if c := raw[0]; c != '-' && (c < '0' || c > '9') {
		return end, bad("%s: must be a positive integer", key)
	}
	n, err := strconv.ParseFloat(raw, 64)
	if err != nil || n != math.Trunc(n) || n < 1 || n > math.MaxInt32 {
		return end, bad("%s: must be a positive integer", key)
	}
	r.MaxTokens = int(n)
	return end, nil
}

// promptValue is a completion prompt: text, token ids, or null.
type promptValue struct {
	text   string
	isText bool
	ids    []uint32
	null   bool
}

const promptForms = "prompt: must be a string, a list of strings, or a list of token ids"

// parsePrompt reads a prompt: a string, token ids (as long as the body
// limit allows: the engine checks the context length), or a list of
// prompts, of which routing looks at the first (the engine answers all).
// A list is never tried as a string first: its first element says what it
// is.
func parsePrompt(b []byte, v, depth int) (promptValue, int, error) {
	var p promptValue
	switch b[v] {
	case 'n':
		p.null = true
		end, err := jsonscan.Skip(b, v)
		return p, end, err
	case '"':
		s, end, err := jsonscan.String(b, v)
		if err == nil && s == "" {
			err = bad("prompt: must not be empty")
		}
		p.text, p.isText = s, true
		return p, end, err
	case '[':
	default:
		end, err := jsonscan.Skip(b, v)
		if err == nil {
			err = bad(promptForms)
		}
		return p, end, err
	}
	first := jsonscan.Space(b, v+1)
	if first >= len(b) {
		end, err := jsonscan.Skip(b, v)
		return p, end, err
	}
	switch c := b[first]; {
	case c == ']':
		return p, first + 1, bad("prompt: must not be empty")
	case c == '-' || (c >= '0' && c <= '9'):
		ids, end, err := jsonscan.Uint32s(make([]uint32, 0, (len(b)-v)/6+1), b, v, math.MaxUint32)
		var re *jsonscan.RangeError
		switch {
		case errors.As(err, &re):
			return p, end, bad("prompt[%d]: token id %s out of range", re.Index, re.Value)
		case errors.Is(err, jsonscan.ErrNotInt):
			if end, err := jsonscan.Skip(b, v); err != nil {
				return p, end, err
			}
			return p, end, bad(promptForms)
		}
		p.ids = ids
		return p, end, err
	case (c == '"' || c == '[') && depth < 1:
		var err error
		end, err := jsonscan.Array(b, v, func(n, e int) (int, error) {
			if n >= maxPromptItems {
				return e, bad("prompt: more than %d prompts", maxPromptItems)
			}
			if n == 0 {
				var end int
				var err error
				p, end, err = parsePrompt(b, e, depth+1)
				return end, err
			}
			return jsonscan.Skip(b, e)
		})
		return p, end, err
	}
	end, err := jsonscan.Skip(b, v)
	if err == nil {
		err = bad(promptForms)
	}
	return p, end, err
}

const messagesForm = "messages: must be a list of {role, content} objects"

// parseMessages reads a chat's messages: role and content of each; content
// parts other than text are left for the engine to accept or refuse.
func parseMessages(b []byte, v int) ([]tokenizer.Message, int, error) {
	switch b[v] {
	case 'n':
		end, err := jsonscan.Skip(b, v)
		return nil, end, err
	case '[':
	default:
		end, err := jsonscan.Skip(b, v)
		if err == nil {
			err = bad(messagesForm)
		}
		return nil, end, err
	}
	msgs := []tokenizer.Message{}
	end, err := jsonscan.Array(b, v, func(n, e int) (int, error) {
		if n >= maxPromptItems {
			return e, bad("messages: more than %d items", maxPromptItems)
		}
		if b[e] != '{' {
			end, err := jsonscan.Skip(b, e)
			if err == nil {
				err = bad(messagesForm)
			}
			return end, err
		}
		var m tokenizer.Message
		end, err := jsonscan.Object(b, e, func(f jsonscan.Member) (int, error) {
			switch f.Name() {
			case "role":
				switch b[f.Value] {
				case '"':
					s, end, err := jsonscan.String(b, f.Value)
					m.Role = s
					return end, err
				case 'n':
					return jsonscan.Skip(b, f.Value)
				}
				end, err := jsonscan.Skip(b, f.Value)
				if err == nil {
					err = bad(messagesForm)
				}
				return end, err
			case "name", "tool_calls", "tool_call_id", "reasoning", "reasoning_content":
				// What vLLM passes on to the chat template.
				end, err := jsonscan.Skip(b, f.Value)
				if err == nil {
					m.Extra = append(m.Extra, tokenizer.Field{Name: f.Name(), Value: bytes.Clone(b[f.Value:end])})
				}
				return end, err
			case "content":
				s, end, err := contentText(b, f.Value)
				var se *jsonscan.SyntaxError
				if err != nil && !errors.As(err, &se) {
					err = bad("messages[%d].content: %v", n, err)
				}
				m.Content = s
				return end, err
			}
			return jsonscan.Skip(b, f.Value)
		})
		if err == nil && m.Role == "" {
			err = bad("messages[%d].role: required", n)
		}
		msgs = append(msgs, m)
		return end, err
	})
	if err == nil && len(msgs) == 0 {
		err = bad("messages: must not be empty")
	}
	return msgs, end, err
}

var errContentForm = errors.New("must be a string or a list of content parts")

// contentText reads a message's content: a string, null, or content parts
// whose text parts are joined with newlines, as vLLM's chat preprocessing
// does.
func contentText(b []byte, v int) (string, int, error) {
	switch b[v] {
	case '"':
		return jsonscan.String(b, v)
	case 'n':
		end, err := jsonscan.Skip(b, v)
		return "", end, err
	case '[':
	default:
		end, err := jsonscan.Skip(b, v)
		if err == nil {
			err = errContentForm
		}
		return "", end, err
	}
	var sb strings.Builder
	n := 0
	end, err := jsonscan.Array(b, v, func(_, e int) (int, error) {
		switch b[e] {
		case 'n':
			return jsonscan.Skip(b, e)
		case '{':
		default:
			end, err := jsonscan.Skip(b, e)
			if err == nil {
				err = errContentForm
			}
			return end, err
		}
		var typ, text string
		end, err := jsonscan.Object(b, e, func(f jsonscan.Member) (int, error) {
			k := f.Name()
			if k != "type" && k != "text" {
				return jsonscan.Skip(b, f.Value)
			}
			var s string
			var end int
			var err error
			switch b[f.Value] {
			case '"':
				s, end, err = jsonscan.String(b, f.Value)
			case 'n':
				end, err = jsonscan.Skip(b, f.Value)
			default:
				end, err = jsonscan.Skip(b, f.Value)
				if err == nil {
					err = errContentForm
				}
			}
			if k == "type" {
				typ = s
			} else {
				text = s
			}
			return end, err
		})
		if err == nil && typ == "text" {
			if n > 0 {
				sb.WriteByte('\n')
			}
			sb.WriteString(text)
			n++
		}
		return end, err
	})
	return sb.String(), end, err
}

// Set records an edit of a top-level field (a nil value removes it); a
// later Set of the same key replaces an earlier one.
func (r *LLMRequest) Set(key string, value []byte) {
	for i := range r.edits {
		if r.edits[i].Key == key {
			r.edits[i].Value = value
			return
		}
	}
	r.edits = append(r.edits, Edit{Key: key, Value: value})
}

// Field returns a top-level field's raw value as it will be forwarded
// (the last one when the client repeated the key, as JSON decoders read
// it), edits included.
func (r *LLMRequest) Field(key string) ([]byte, bool) {
	for i := len(r.edits) - 1; i >= 0; i-- {
		if r.edits[i].Key == key {
			return r.edits[i].Value, r.edits[i].Value != nil
		}
	}
	for i := len(r.members) - 1; i >= 0; i-- {
		if m := r.members[i]; m.key == key && !m.dropped {
			return r.body[m.vs:m.ve], true
		}
	}
	return nil, false
}

// edited reports whether forwarding the request needs any byte changed.
func (r *LLMRequest) edited(extra []Edit) bool {
	if len(r.edits) > 0 || len(extra) > 0 {
		return true
	}
	for _, m := range r.members {
		if m.dropped {
			return true
		}
	}
	return false
}

// RawBody returns the client's bytes when nothing is to be changed, and nil
// otherwise.
func (r *LLMRequest) RawBody() []byte {
	if r.edited(nil) {
		return nil
	}
	return r.body
}

// AppendBody appends the body to forward to dst: the client's bytes, key
// order, spacing, numbers and unknown fields kept, with the request's edits
// and then extra applied (a later edit of a key wins). An edited key is
// replaced where it stands (every occurrence, if the client repeated it); a
// new one goes last.
func (r *LLMRequest) AppendBody(dst []byte, extra ...Edit) []byte {
	if !r.edited(extra) {
		return append(dst, r.body...)
	}
	edit := func(key string) ([]byte, bool) {
		for i := len(extra) - 1; i >= 0; i-- {
			if extra[i].Key == key {
				return extra[i].Value, true
			}
		}
		for i := range r.edits {
			if r.edits[i].Key == key {
				return r.edits[i].Value, true
			}
		}
		return nil, false
	}
	b := r.body
	dst = append(dst, b[:r.open+1]...)
	emitted := false
	last := r.open + 1
	for _, m := range r.members {
		last = m.ve
		v, ok := edit(m.key)
		if m.dropped || (ok && v == nil) {
			continue
		}
		if emitted {
			dst = append(dst, b[m.prevEnd:m.start]...) // the comma and spacing
		} else {
			dst = append(dst, b[r.open+1:r.members[0].start]...)
		}
		emitted = true
		if ok {
			dst = append(dst, b[m.start:m.vs]...)
			dst = append(dst, v...)
		} else {
			dst = append(dst, b[m.start:m.ve]...)
		}
	}
	add := func(key string, v []byte) {
		if v == nil {
			return
		}
		for _, m := range r.members {
			if m.key == key && !m.dropped {
				return // replaced in place
			}
		}
		if emitted {
			dst = append(dst, ',')
		}
		emitted = true
		dst = strconv.AppendQuote(dst, key)
		dst = append(dst, ':')
		dst = append(dst, v...)
	}
	for _, e := range r.edits {
		if v, _ := edit(e.Key); v != nil {
			add(e.Key, v)
		}
	}
	for i, e := range extra {
		if v, _ := edit(e.Key); v != nil && !editedBefore(r.edits, extra[:i], e.Key) {
			add(e.Key, v)
		}
	}
	return append(dst, b[last:]...)
}

func editedBefore(edits, extra []Edit, key string) bool {
	for _, e := range edits {
		if e.Key == key {
			return true
		}
	}
	for _, e := range extra {
		if e.Key == key {
			return true
		}
	}
	return false
}
