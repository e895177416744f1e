// Package engine asks a vLLM pod for the token ids of a prompt: exact by
// construction (the engine's own tokenizer and chat template), for models
// whose tokenizer files the activator does not have. It uses
// /v1/chat/completions/render and /v1/completions/render where the engine
// serves them, else /tokenize, with bounded latency: a timeout per call,
// identical calls in flight coalesced into one, and a bounded cache keyed
// by a digest of the content.
//
// This package knows HTTP and nothing of Kubernetes or routing.
package engine

import (
	"bytes"
	"container/list"
	"context"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"github.com/llmd-kn/llmd-kn/pkg/tokenizer"
)

// Options configure a Tokenizer. Zero fields take the defaults.
type Options struct {
	// Model is the model name sent with each call.
	Model string
	// Client is the HTTP client (http.DefaultClient).
	Client *http.Client
	// Timeout bounds one call to the engine (2 s).
	Timeout time.Duration
	// CacheEntries bounds the cache (4096 prompts); negative disables it.
	CacheEntries int
	// MaxResponseBytes bounds an engine's answer (64 MiB).
	MaxResponseBytes int64
}

// Tokenizer tokenizes with the engine at the address Base returns (a
// ready pod of the revision). Safe for concurrent use.
type Tokenizer struct {
	base func() (string, bool)
	opts Options

	noChatRender, noCompletionRender atomic.Bool // the engine answered 404 for these

	mu       sync.Mutex
	inflight map[[32]byte]*flight
	cache    map[[32]byte]*list.Element
	lru      list.List
}

type flight struct {
	done chan struct{}
	ids  []uint32
	err  error
}

type cached struct {
	key [32]byte
	ids []uint32
}

// ErrNoEngine is returned when no engine is available to ask.
var ErrNoEngine = errors.New("no engine to tokenize with")

// New returns a Tokenizer that asks the engine whose base URL (like
// http://10.0.0.7:8000) base returns; base reports false when none is
// available.
func New(base func() (string, bool), opts Options) *Tokenizer {
	if opts.Client == nil {
		opts.Client = http.DefaultClient
	}
	if opts.Timeout <= 0 {
		opts.Timeout = 2 * time.Second
	}
	if opts.CacheEntries == 0 {
		opts.CacheEntries = 4096
	}
	if opts.MaxResponseBytes <= 0 {
		opts.MaxResponseBytes = 64 << 20
	}
	return &Tokenizer{base: base, opts: opts, inflight: map[[32]byte]*flight{}, cache: map[[32]byte]*list.Element{}}
}

// Info implements tokenizer.Tokenizer. The vocabulary size is the engine's
// to check.
func (t *Tokenizer) Info() tokenizer.Info {
	return tokenizer.Info{Kind: "engine", Name: "engine", Exact: true}
}

// Encode implements tokenizer.Tokenizer: the ids /v1/completions computes
// (special tokens added).
func (t *Tokenizer) Encode(ctx context.Context, text string) ([]uint32, error) {
	key := digest("completion", t.opts.Model, text)
	return t.do(ctx, key, func(ctx context.Context, base string) ([]uint32, error) {
		if !t.noCompletionRender.Load() {
			ids, err := t.post(ctx, base+"/v1/completions/render", map[string]any{"model": t.opts.Model, "prompt": text})
			if !errors.Is(err, errNotServed) {
				return ids, err
			}
			t.noCompletionRender.Store(true)
		}
		return t.post(ctx, base+"/tokenize", map[string]any{"model": t.opts.Model, "prompt": text, "add_special_tokens": true})
	})
}

// ApplyChatTemplate implements tokenizer.Tokenizer: the ids
// /v1/chat/completions computes.
func (t *Tokenizer) ApplyChatTemplate(ctx context.Context, msgs []tokenizer.Message, addGenerationPrompt bool) ([]uint32, error) {
	return t.ApplyChat(ctx, msgs, tokenizer.ChatOptions{AddGenerationPrompt: addGenerationPrompt})
}

// ApplyChat implements tokenizer.Tokenizer: the request's messages (with
// their tool calls, names, reasoning), tools, chat_template_kwargs and
// generation flags go to the engine as the client sent them.
func (t *Tokenizer) ApplyChat(ctx context.Context, msgs []tokenizer.Message, opts tokenizer.ChatOptions) ([]uint32, error) {
	wire := make([]map[string]any, len(msgs))
	for i, m := range msgs {
		w := map[string]any{"role": m.Role, "content": m.Content}
		for _, f := range m.Extra {
			if f.Name != "role" && f.Name != "content" {
				w[f.Name] = json.RawMessage(f.Value)
			}
		}
		wire[i] = w
	}
	body := map[string]any{"model": t.opts.Model, "messages": wire, "add_generation_prompt": opts.AddGenerationPrompt}
	if opts.ContinueFinalMessage {
		body["continue_final_message"] = true
	}
	if opts.Tools != nil {
		body["tools"] = json.RawMessage(opts.Tools)
	}
	if opts.Kwargs != nil {
		body["chat_template_kwargs"] = json.RawMessage(opts.Kwargs)
	}
	content, err := json.Marshal(body)
	if err != nil {
		return nil, err
	}
	key := digest("chat", t.opts.Model, string(content))
	return t.do(ctx, key, func(ctx context.Context, base string) ([]uint32, error) {
		if !t.noChatRender.Load() {
			ids, err := t.post(ctx, base+"/v1/chat/completions/render", body)
			if !errors.Is(err, errNotServed) {
				return ids, err
			}
			t.noChatRender.Store(true)
		}
		return t.post(ctx, base+"/tokenize", body)
	})
}

// digest keys the cache and the coalescing: the content is not kept.
func digest(kind, model, content string) [32]byte {
	h := sha256.New()
	for _, s := range []string{kind, model, content} {
		var n [8]byte
		for i := range n {
			n[i] = byte(len(s) >> (8 * i))
		}
		h.Write(n[:])
		h.Write([]byte(s))
	}
	var k [32]byte
	h.Sum(k[:0])
	return k
}

// do answers from the cache, joins an identical call in flight, or makes
// the call. The call runs under its own timeout, detached from the first
// caller's cancellation, since others may be waiting on it; each caller
// still stops waiting when its own context ends.
func (t *Tokenizer) do(ctx context.Context, key [32]byte, call func(context.Context, string) ([]uint32, error)) ([]uint32, error) {
	t.mu.Lock()
	if e, ok := t.cache[key]; ok {
		t.lru.MoveToFront(e)
		ids := e.Value.(*cached).ids
		t.mu.Unlock()
		return append([]uint32(nil), ids...), nil
	}
	f, joined := t.inflight[key]
	if !joined {
		f = &flight{done: make(chan struct{})}
		t.inflight[key] = f
	}
	t.mu.Unlock()
	if !joined {
		go t.run(ctx, key, f, call)
	}
	select {
	case <-f.done:
		if f.err != nil {
			return nil, f.err
		}
		return append([]uint32(nil), f.ids...), nil
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

func (t *Tokenizer) run(ctx context.Context, key [32]byte, f *flight, call func(context.Context, string) ([]uint32, error)) {
	cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), t.opts.Timeout)
	defer cancel()
	if base, ok := t.base(); ok {
		f.ids, f.err = call(cctx, base)
	} else {
		f.err = ErrNoEngine
	}
	t.mu.Lock()
	delete(t.inflight, key)
	if f.err == nil && t.opts.CacheEntries > 0 {
		t.cache[key] = t.lru.PushFront(&cached{key: key, ids: f.ids})
		for t.lru.Len() > t.opts.CacheEntries {
			old := t.lru.Back()
			t.lru.Remove(old)
			delete(t.cache, old.Value.(*cached).key)
		}
	}
	t.mu.Unlock()
	close(f.done)
}

var errNotServed = errors.New("endpoint not served")

// post sends body as JSON and reads token ids from any of the answers
// vLLM gives: /tokenize's {"tokens": [...]}, /render's {"token_ids": [...]}
// or a list of those, and older vLLM's [conversation, [{"prompt_token_ids":
// [...]}]].
func (t *Tokenizer) post(ctx context.Context, url string, body any) ([]uint32, error) {
	b, err := json.Marshal(body)
	if err != nil {
		return nil, err
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, url, bytes.NewReader(b))
	if err != nil {
		return nil, err
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := t.opts.Client.Do(req)
	if err != nil {
		return nil, fmt.Errorf("engine tokenizer: %w", err)
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(io.LimitReader(resp.Body, t.opts.MaxResponseBytes+1))
	if err != nil {
		return nil, fmt.Errorf("engine tokenizer: %s: %w", url, err)
	}
	if int64(len(data)) > t.opts.MaxResponseBytes {
		return nil, fmt.Errorf("engine tokenizer: %s: answer over %d bytes", url, t.opts.MaxResponseBytes)
	}
	switch {
	case resp.StatusCode == http.StatusNotFound || resp.StatusCode == http.StatusMethodNotAllowed:
		return nil, errNotServed
	case resp.StatusCode != http.StatusOK:
		if len(data) > 512 {
			data = data[:512]
		}
		return nil, fmt.Errorf("engine tokenizer: %s: %s: %s", url, resp.Status, bytes.TrimSpace(data))
	}
	ids, ok := tokenIDs(data)
	if !ok {
		return nil, fmt.Errorf("engine tokenizer: %s: no token ids in the answer", url)
	}
	return ids, nil
}

func tokenIDs(data []byte) ([]uint32, bool) {
	var obj struct {
		Tokens         *[]uint32 `json:"tokens"`
		TokenIDs       *[]uint32 `json:"token_ids"`
		PromptTokenIDs *[]uint32 `json:"prompt_token_ids"`
	}
	if json.Unmarshal(data, &obj) == nil {
		for _, p := range []*[]uint32{obj.TokenIDs, obj.PromptTokenIDs, obj.Tokens} {
			if p != nil {
				return *p, true
			}
		}
		return nil, false
	}
	var list []json.RawMessage
	if json.Unmarshal(data, &list) != nil {
		return nil, false
	}
	for _, item := range list {
		if ids, ok := tokenIDs(item); ok {
			return ids, true
		}
	}
	// [conversation, engine_prompts]: the token ids are in the second.
	if len(list) == 2 {
		return tokenIDs(list[1])
	}
	return nil, false
}

var _ tokenizer.Tokenizer = (*Tokenizer)(nil)
