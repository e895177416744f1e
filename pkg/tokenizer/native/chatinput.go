package native

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strings"
	"unicode"

	"github.com/ardanlabs/jinja"

	"github.com/llmd-kn/llmd-kn/pkg/tokenizer"
)

// What a chat template sees of a request, built as vLLM builds it (its
// chat_utils: parse_chat_messages, _postprocess_messages; serving_chat's
// tool dicts; Hugging Face's apply_chat_template): JSON objects keep the
// order they were sent in, since a template's tojson writes them in that
// order and the order changes the token ids.

// templateVars returns the variables a render gets.
func (t *Tokenizer) templateVars(msgs []tokenizer.Message, opts tokenizer.ChatOptions) (map[string]jinja.Value, error) {
	if opts.AddGenerationPrompt && opts.ContinueFinalMessage {
		return nil, errors.New("cannot set both continue_final_message and add_generation_prompt to true")
	}
	vars := make(map[string]jinja.Value, len(t.chatVars)+8)
	for k, v := range t.chatVars {
		vars[k] = jinja.FromGoValue(v)
	}
	list := make([]jinja.Value, len(msgs))
	for i := range msgs {
		m, err := templateMessage(&msgs[i])
		if err != nil {
			return nil, fmt.Errorf("messages[%d]: %w", i, err)
		}
		list[i] = m
	}
	vars[tojsonFunc] = tojsonCallable
	vars["messages"] = jinja.NewList(list)
	vars["add_generation_prompt"] = jinja.NewBool(opts.AddGenerationPrompt)
	vars["continue_final_message"] = jinja.NewBool(opts.ContinueFinalMessage)
	if opts.Tools != nil && !isNull(opts.Tools) {
		tools, err := templateTools(opts.Tools)
		if err != nil {
			return nil, fmt.Errorf("tools: %w", err)
		}
		vars["tools"] = tools
	}
	if opts.Kwargs != nil && !isNull(opts.Kwargs) {
		kw, err := decodeJSON(opts.Kwargs)
		if err != nil || !kw.IsDict() {
			return nil, errors.New("chat_template_kwargs: must be an object")
		}
		d := kw.AsDict()
		for _, k := range d.Keys {
			switch k {
			case "chat_template", "tokenize":
				return nil, fmt.Errorf("chat_template_kwargs: unexpected %s", k)
			case "messages":
				continue // apply_chat_template's own argument
			}
			// Like vLLM, the request's kwargs win over its fields.
			vars[k] = d.Data[k]
		}
	}
	return vars, nil
}

// templateMessage is a message as vLLM hands it to the template: role and
// content, the name when it is a string, an assistant's tool calls (their
// arguments decoded from JSON text to objects, an empty list dropped) and
// reasoning, a tool message's tool_call_id.
func templateMessage(m *tokenizer.Message) (jinja.Value, error) {
	d := jinja.NewDict()
	dict := d.AsDict()
	dict.Set("role", jinja.NewString(m.Role))
	dict.Set("content", jinja.NewString(m.Content))
	var reasoning, reasoningContent *jinja.Value
	for _, f := range m.Extra {
		if isNull(f.Value) {
			continue
		}
		v, err := decodeJSON(f.Value)
		if err != nil {
			return jinja.Value{}, fmt.Errorf("%s: %w", f.Name, err)
		}
		switch f.Name {
		case "name":
			if v.IsString() {
				dict.Set("name", v)
			}
		case "tool_calls":
			if m.Role != "assistant" {
				continue
			}
			if !v.IsList() {
				return jinja.Value{}, errors.New("tool_calls: must be a list")
			}
			if v.AsList().Len() == 0 {
				continue
			}
			for _, call := range v.AsList().Items {
				if err := decodeArguments(call); err != nil {
					return jinja.Value{}, err
				}
			}
			dict.Set("tool_calls", v)
		case "tool_call_id":
			if m.Role == "tool" {
				dict.Set("tool_call_id", v)
			}
		case "reasoning":
			reasoning = &v
		case "reasoning_content":
			reasoningContent = &v
		}
	}
	if m.Role == "assistant" {
		// vLLM reads reasoning and sets both names; older vLLM took
		// reasoning_content.
		switch {
		case reasoning != nil:
			dict.Set("reasoning", *reasoning)
			dict.Set("reasoning_content", *reasoning)
		case reasoningContent != nil:
			dict.Set("reasoning_content", *reasoningContent)
		}
	}
	return d, nil
}

// decodeArguments turns a tool call's function.arguments from JSON text
// into what it encodes, as vLLM does for Hugging Face templates: text that
// is not JSON, and anything but an object or list, becomes {}.
func decodeArguments(call jinja.Value) error {
	if !call.IsDict() {
		return errors.New("tool_calls: each must be an object")
	}
	fn, ok := call.AsDict().Get("function")
	if !ok || !fn.IsDict() {
		return errors.New("tool_calls: each must have a function object")
	}
	args, _ := fn.AsDict().Get("arguments")
	switch {
	case args.IsString():
		v, err := decodeJSON([]byte(args.AsString()))
		if err != nil {
			v = jinja.NewDict()
		}
		fn.AsDict().Set("arguments", v)
	case args.IsDict() || args.IsList():
	default:
		fn.AsDict().Set("arguments", jinja.NewDict())
	}
	return nil
}

// templateTools are the request's tools as vLLM's tool model dumps them:
// type (default "function") and function {name, description, parameters}
// first, unset ones as null, then any other member in the order sent.
func templateTools(raw []byte) (jinja.Value, error) {
	v, err := decodeJSON(raw)
	if err != nil {
		return jinja.Value{}, err
	}
	if !v.IsList() {
		return jinja.Value{}, errors.New("must be a list")
	}
	out := make([]jinja.Value, 0, v.AsList().Len())
	for _, tool := range v.AsList().Items {
		if !tool.IsDict() {
			return jinja.Value{}, errors.New("each tool must be an object")
		}
		in := tool.AsDict()
		fn, ok := in.Get("function")
		if !ok || !fn.IsDict() {
			return jinja.Value{}, errors.New("each tool must have a function object")
		}
		name, ok := fn.AsDict().Get("name")
		if !ok || !name.IsString() {
			return jinja.Value{}, errors.New("each function must have a name")
		}
		f := reorder(fn.AsDict(), []string{"name", "description", "parameters"})
		d := jinja.NewDict()
		dict := d.AsDict()
		typ, ok := in.Get("type")
		if !ok {
			typ = jinja.NewString("function")
		}
		dict.Set("type", typ)
		dict.Set("function", f)
		for _, k := range in.Keys {
			if k != "type" && k != "function" {
				dict.Set(k, in.Data[k])
			}
		}
		out = append(out, d)
	}
	return jinja.NewList(out), nil
}

// reorder returns d with the keys first (null when absent), then its
// other keys in their order.
func reorder(d *jinja.Dict, first []string) jinja.Value {
	out := jinja.NewDict()
	od := out.AsDict()
	for _, k := range first {
		v, ok := d.Get(k)
		if !ok {
			v = jinja.None()
		}
		od.Set(k, v)
	}
	for _, k := range d.Keys {
		od.Set(k, d.Data[k]) // keys already set keep their place
	}
	return out
}

func isNull(raw []byte) bool { return string(bytes.TrimSpace(raw)) == "null" }

// maxJSONDepth bounds the nesting of what a template gets.
const maxJSONDepth = 64

// decodeJSON decodes one JSON value into template values, objects in
// their members' order (a repeated key keeps its first place and its last
// value, as Python's json.loads).
func decodeJSON(raw []byte) (jinja.Value, error) {
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.UseNumber()
	v, err := decodeValue(dec, 0)
	if err != nil {
		return jinja.Value{}, err
	}
	if _, err := dec.Token(); err != io.EOF {
		return jinja.Value{}, errors.New("data after the JSON value")
	}
	return v, nil
}

func decodeValue(dec *json.Decoder, depth int) (jinja.Value, error) {
	if depth > maxJSONDepth {
		return jinja.Value{}, errors.New("nested too deeply")
	}
	tok, err := dec.Token()
	if err != nil {
		return jinja.Value{}, err
	}
	switch tv := tok.(type) {
	case json.Delim:
		switch tv {
		case '[':
			var items []jinja.Value
			for dec.More() {
				v, err := decodeValue(dec, depth+1)
				if err != nil {
					return jinja.Value{}, err
				}
				items = append(items, v)
			}
			if _, err := dec.Token(); err != nil {
				return jinja.Value{}, err
			}
			if items == nil {
				items = []jinja.Value{}
			}
			return jinja.NewList(items), nil
		case '{':
			d := jinja.NewDict()
			for dec.More() {
				kt, err := dec.Token()
				if err != nil {
					return jinja.Value{}, err
				}
				k, _ := kt.(string)
				v, err := decodeValue(dec, depth+1)
				if err != nil {
					return jinja.Value{}, err
				}
				d.AsDict().Set(k, v)
			}
			if _, err := dec.Token(); err != nil {
				return jinja.Value{}, err
			}
			return d, nil
		}
		return jinja.Value{}, fmt.Errorf("unexpected %v", tv)
	case nil:
		return jinja.None(), nil
	case bool:
		return jinja.NewBool(tv), nil
	case json.Number:
		return jinja.FromGoValue(tv), nil
	case string:
		return jinja.NewString(tv), nil
	}
	return jinja.Value{}, fmt.Errorf("unexpected token %v", tok)
}

// continueFinal cuts a rendered chat right after its final message's
// text, as Hugging Face's apply_chat_template does for
// continue_final_message (where the template trimmed the message's
// trailing spaces, after its trimmed text).
func continueFinal(rendered string, msgs []tokenizer.Message) (string, error) {
	if len(msgs) == 0 {
		return "", errors.New("continue_final_message: no message to continue")
	}
	final := msgs[len(msgs)-1].Content
	trimmed := strings.TrimFunc(final, isPySpace)
	loc := strings.LastIndex(rendered, trimmed)
	if loc < 0 {
		return "", errors.New("continue_final_message is set but the final message does not appear in the chat after applying the chat template")
	}
	left := strings.TrimLeftFunc(final, isPySpace)
	if end := loc + len(left); end <= len(rendered) && rendered[loc:end] == final {
		return rendered[:end], nil
	}
	return rendered[:loc+len(trimmed)], nil
}

// isPySpace is Python's str.isspace for one character (str.strip's set):
// Unicode white space and the separators U+001C..U+001F.
func isPySpace(r rune) bool { return unicode.IsSpace(r) || r >= 0x1c && r <= 0x1f }
