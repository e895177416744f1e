package native

import (
	"container/list"
	"encoding/json"
	"errors"
	"fmt"
	"sync"

	"github.com/ardanlabs/jinja"

	"github.com/llmd-kn/llmd-kn/pkg/tokenizer"
)

// The special-token names Hugging Face passes to a chat template.
var specialTokenNames = []string{"bos_token", "eos_token", "unk_token", "sep_token", "pad_token", "cls_token", "mask_token"}

// loadConfig reads the chat template and the special tokens it refers to.
// A template that does not compile is kept as an error for ApplyChatTemplate,
// so that completions still work.
func (t *Tokenizer) loadConfig(configJSON []byte, override string) error {
	t.chatVars = map[string]any{}
	var cfg map[string]json.RawMessage
	if len(configJSON) > 0 {
		if err := json.Unmarshal(configJSON, &cfg); err != nil {
			return err
		}
	}
	for _, name := range specialTokenNames {
		raw, ok := cfg[name]
		if !ok || string(raw) == "null" {
			continue
		}
		var s string
		if json.Unmarshal(raw, &s) != nil {
			var obj struct {
				Content string `json:"content"`
			}
			if err := json.Unmarshal(raw, &obj); err != nil {
				return fmt.Errorf("%s: neither a string nor a token object", name)
			}
			s = obj.Content
		}
		t.chatVars[name] = s
	}
	src := override
	if src == "" {
		if raw, ok := cfg["chat_template"]; ok && string(raw) != "null" {
			var err error
			if src, err = chatTemplateSource(raw); err != nil {
				return fmt.Errorf("chat_template: %w", err)
			}
		}
	}
	if src == "" {
		t.chatErr = errors.New("the tokenizer has no chat template")
		return nil
	}
	tmpl, err := compileTemplate(rewriteIndentedTojson(src))
	if err != nil {
		t.chatErr = fmt.Errorf("chat template: %w", err)
		return nil
	}
	t.chat = tmpl
	return nil
}

// compileTemplate guards against a panic in the template engine on hostile
// input: a template is outside input.
func compileTemplate(src string) (tmpl *jinja.Template, err error) {
	defer func() {
		if r := recover(); r != nil {
			tmpl, err = nil, fmt.Errorf("template engine failed: %v", r)
		}
	}()
	return jinja.Compile(src)
}

// chatTemplateSource reads a chat_template that is a string or a list of
// named templates (the one named "default").
func chatTemplateSource(raw json.RawMessage) (string, error) {
	var s string
	if json.Unmarshal(raw, &s) == nil {
		return s, nil
	}
	var named []struct {
		Name     string `json:"name"`
		Template string `json:"template"`
	}
	if err := json.Unmarshal(raw, &named); err != nil {
		return "", errors.New("neither a string nor a list of named templates")
	}
	for _, n := range named {
		if n.Name == "default" {
			return n.Template, nil
		}
	}
	return "", errors.New("no template named default")
}

// RenderChat renders messages with the chat template, as vLLM does before
// tokenizing (Hugging Face's apply_chat_template with tokenize=False).
func (t *Tokenizer) RenderChat(msgs []tokenizer.Message, addGenerationPrompt bool) (string, error) {
	return t.RenderChatWith(msgs, tokenizer.ChatOptions{AddGenerationPrompt: addGenerationPrompt})
}

// RenderChatWith is RenderChat with the request's other inputs to the
// template: tools, chat_template_kwargs, continue_final_message.
func (t *Tokenizer) RenderChatWith(msgs []tokenizer.Message, opts tokenizer.ChatOptions) (out string, err error) {
	if t.chat == nil {
		return "", t.chatErr
	}
	vars, err := t.templateVars(msgs, opts)
	if err != nil {
		return "", err
	}
	defer func() {
		if r := recover(); r != nil {
			out, err = "", fmt.Errorf("chat template: template engine failed: %v", r)
		}
	}()
	out, err = t.chat.RenderValues(vars)
	if err != nil {
		return "", fmt.Errorf("chat template: %w", err)
	}
	if opts.ContinueFinalMessage {
		return continueFinal(out, msgs)
	}
	return out, nil
}

// AppendChat appends the ids of messages rendered with the chat template,
// encoded as vLLM does (no special tokens added: the template writes them).
func (t *Tokenizer) AppendChat(dst []uint32, msgs []tokenizer.Message, addGenerationPrompt bool) ([]uint32, error) {
	return t.AppendChatWith(dst, msgs, tokenizer.ChatOptions{AddGenerationPrompt: addGenerationPrompt})
}

// AppendChatWith is AppendChat with the request's other template inputs.
func (t *Tokenizer) AppendChatWith(dst []uint32, msgs []tokenizer.Message, opts tokenizer.ChatOptions) ([]uint32, error) {
	text, err := t.RenderChatWith(msgs, opts)
	if err != nil {
		return dst, err
	}
	return t.AppendEncode(dst, text, false), nil
}

// minCachedSection is the shortest section worth caching: below it, the
// lookup costs about what encoding does.
const minCachedSection = 64

// sectionCache maps the text of a section (the text between two added
// tokens) to its ids. It is exact: the Hugging Face pipeline splits on
// added tokens first and normalizes, pre-tokenizes and merges each section
// on its own, so a section's ids never depend on its neighbours. In a chat,
// the template separates messages with special tokens, so a conversation's
// earlier messages are cache hits when its next turn arrives. Bounded by
// the bytes of text and ids it holds; the least recently used go first.
type sectionCache struct {
	mu      sync.Mutex
	max     int
	size    int
	entries map[string]*list.Element
	lru     list.List
}

type sectionEntry struct {
	text string
	ids  []uint32
}

func newSectionCache(maxBytes int) *sectionCache {
	return &sectionCache{max: maxBytes, entries: map[string]*list.Element{}}
}

func entrySize(text string, ids []uint32) int { return len(text) + 4*len(ids) + 64 }

func (c *sectionCache) get(text string) ([]uint32, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	e, ok := c.entries[text]
	if !ok {
		return nil, false
	}
	c.lru.MoveToFront(e)
	return e.Value.(*sectionEntry).ids, true
}

func (c *sectionCache) put(text string, ids []uint32) {
	size := entrySize(text, ids)
	if size > c.max/4 {
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if _, ok := c.entries[text]; ok {
		return
	}
	for c.size+size > c.max {
		old := c.lru.Back()
		oe := old.Value.(*sectionEntry)
		c.lru.Remove(old)
		delete(c.entries, oe.text)
		c.size -= entrySize(oe.text, oe.ids)
	}
	// The text may be a slice of a large request body: copy it, so the
	// cache holds only what it counts.
	e := &sectionEntry{text: string([]byte(text)), ids: append([]uint32(nil), ids...)}
	c.entries[e.text] = c.lru.PushFront(e)
	c.size += size
}
