package vllmsim

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"slices"
	"strings"
	"time"

	"github.com/llmd-kn/llmd-kn/pkg/apis"
	"github.com/llmd-kn/llmd-kn/pkg/engine"
)

// ReleasePath is the internal endpoint a decode simulator calls on a prefill
// simulator once it has pulled a request's blocks (NIXL's notification).
const ReleasePath = "/internal/kv/release"

// router dispatches by exact path, then method, answering unknown paths and
// methods in vLLM's error shape.
type router struct {
	routes map[string]map[string]http.HandlerFunc
}

func (rt *router) handle(method, path string, h http.HandlerFunc) {
	if rt.routes[path] == nil {
		rt.routes[path] = map[string]http.HandlerFunc{}
	}
	rt.routes[path][method] = h
	if method == http.MethodGet {
		rt.routes[path][http.MethodHead] = h
	}
}

func (rt *router) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	byMethod, ok := rt.routes[r.URL.Path]
	if !ok {
		writeError(w, httpError(http.StatusNotFound, "Not Found"))
		return
	}
	h, ok := byMethod[r.Method]
	if !ok {
		allow := make([]string, 0, len(byMethod))
		for m := range byMethod {
			allow = append(allow, m)
		}
		slices.Sort(allow)
		w.Header().Set("Allow", strings.Join(allow, ", "))
		writeError(w, httpError(http.StatusMethodNotAllowed, "Method Not Allowed"))
		return
	}
	h(w, r)
}

func (s *Server) routes() http.Handler {
	rt := &router{routes: map[string]map[string]http.HandlerFunc{}}
	rt.handle(http.MethodPost, "/v1/completions", func(w http.ResponseWriter, r *http.Request) { s.handleGenerate(w, r, false) })
	rt.handle(http.MethodPost, "/v1/chat/completions", func(w http.ResponseWriter, r *http.Request) { s.handleGenerate(w, r, true) })
	rt.handle(http.MethodGet, "/v1/models", s.handleModels)
	rt.handle(http.MethodGet, "/health", s.handleHealth)
	rt.handle(http.MethodGet, "/version", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, http.StatusOK, map[string]string{"version": "kn-llmd-sim"})
	})
	rt.handle(http.MethodPost, "/v1/completions/render", func(w http.ResponseWriter, r *http.Request) { s.handleRender(w, r, false) })
	rt.handle(http.MethodPost, "/v1/chat/completions/render", func(w http.ResponseWriter, r *http.Request) { s.handleRender(w, r, true) })
	rt.handle(http.MethodPost, "/tokenize", s.handleTokenize)
	rt.handle(http.MethodPost, "/detokenize", s.handleDetokenize)
	rt.handle(http.MethodPost, ReleasePath, s.handleRelease)
	rt.handle(http.MethodPost, apis.KVFlushPath, s.handleFlush)
	rt.handle(http.MethodGet, "/metrics", s.metrics.serveHTTP)
	return rt
}

var errNotReady = &Error{Status: http.StatusServiceUnavailable, Type: "ServiceUnavailableError", Message: "the server is starting up (model loading)"}

func (s *Server) handleHealth(w http.ResponseWriter, r *http.Request) {
	if !s.Ready() {
		writeError(w, errNotReady)
		return
	}
	select {
	case <-s.loopDone:
		writeError(w, errShuttingDown)
		return
	default:
	}
	w.WriteHeader(http.StatusOK)
}

type modelPermission struct {
	ID                 string  `json:"id"`
	Object             string  `json:"object"`
	Created            int64   `json:"created"`
	AllowCreateEngine  bool    `json:"allow_create_engine"`
	AllowSampling      bool    `json:"allow_sampling"`
	AllowLogprobs      bool    `json:"allow_logprobs"`
	AllowSearchIndices bool    `json:"allow_search_indices"`
	AllowView          bool    `json:"allow_view"`
	AllowFineTuning    bool    `json:"allow_fine_tuning"`
	Organization       string  `json:"organization"`
	Group              *string `json:"group"`
	IsBlocking         bool    `json:"is_blocking"`
}

type modelCard struct {
	ID          string            `json:"id"`
	Object      string            `json:"object"`
	Created     int64             `json:"created"`
	OwnedBy     string            `json:"owned_by"`
	Root        string            `json:"root"`
	Parent      *string           `json:"parent"`
	MaxModelLen int               `json:"max_model_len"`
	Permission  []modelPermission `json:"permission"`
}

func (s *Server) handleModels(w http.ResponseWriter, r *http.Request) {
	if !s.Ready() {
		writeError(w, errNotReady)
		return
	}
	cards := make([]modelCard, 0, len(s.cfg.ServedModelNames))
	for _, name := range s.cfg.ServedModelNames {
		cards = append(cards, modelCard{
			ID: name, Object: "model", Created: s.created, OwnedBy: "vllm", Root: s.cfg.Model,
			MaxModelLen: s.maxLen,
			Permission: []modelPermission{{
				ID: newID("modelperm-"), Object: "model_permission", Created: s.created,
				AllowSampling: true, AllowLogprobs: true, AllowView: true, Organization: "*",
			}},
		})
	}
	writeJSON(w, http.StatusOK, &struct {
		Object string      `json:"object"`
		Data   []modelCard `json:"data"`
	}{"list", cards})
}

// readBody reads a request body of at most MaxBodyBytes.
func (s *Server) readBody(w http.ResponseWriter, r *http.Request) ([]byte, *Error) {
	limit := s.cfg.MaxBodyBytes
	if r.ContentLength > limit {
		return nil, httpError(http.StatusRequestEntityTooLarge, fmt.Sprintf("request body of %d bytes exceeds the limit of %d", r.ContentLength, limit))
	}
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, limit))
	if err != nil {
		var mbe *http.MaxBytesError
		if errors.As(err, &mbe) {
			return nil, httpError(http.StatusRequestEntityTooLarge, fmt.Sprintf("request body exceeds the limit of %d bytes", limit))
		}
		return nil, badRequest("", "read request body: %v", err)
	}
	return body, nil
}

// checkModel resolves the requested model name as vLLM does: empty means the
// first served name; an unknown name is 404.
func (s *Server) checkModel(name string) (string, *Error) {
	if name == "" {
		return s.cfg.ServedModelNames[0], nil
	}
	if slices.Contains(s.cfg.ServedModelNames, name) {
		return name, nil
	}
	return "", &Error{Status: http.StatusNotFound, Type: "NotFoundError", Param: "model",
		Message: fmt.Sprintf("The model `%s` does not exist.", name)}
}

var errShuttingDown = &Error{Status: http.StatusServiceUnavailable, Type: "ServiceUnavailableError", Message: "the server is shutting down"}

// seedMix maps a request seed to a non-zero engine seed (the engine derives
// the seed from the request id when it is zero).
const seedMix = 0x9e3779b97f4a7c15

func asError(err error) *Error {
	var e *Error
	if errors.As(err, &e) {
		return e
	}
	return badRequest("", "%v", err)
}

// handleGenerate serves /v1/completions and /v1/chat/completions.
func (s *Server) handleGenerate(w http.ResponseWriter, r *http.Request, chat bool) {
	arrival := time.Now()
	if !s.Ready() {
		writeError(w, errNotReady)
		return
	}
	body, herr := s.readBody(w, r)
	if herr != nil {
		writeError(w, herr)
		return
	}
	var req *Request
	var err error
	if chat {
		req, err = DecodeChatRequest(body)
	} else {
		req, err = DecodeCompletionRequest(body)
	}
	if err != nil {
		writeError(w, asError(err))
		return
	}
	model, herr := s.checkModel(req.Model)
	if herr != nil {
		writeError(w, herr)
		return
	}
	prompt, maxTokens, herr := s.render(r.Context(), req, chat)
	if herr != nil {
		writeError(w, herr)
		return
	}

	prefix := "cmpl-"
	if chat {
		prefix = "chatcmpl-"
	}
	id := newID(prefix)
	er := engine.Request{ID: id, Prompt: prompt, MaxTokens: maxTokens, IgnoreEOS: req.IgnoreEOS, Priority: req.Priority, CacheSalt: req.CacheSalt}
	if req.HasSeed {
		er.Seed = uint64(req.Seed) ^ seedMix
		if er.Seed == 0 {
			er.Seed = 1
		}
	}
	rs := &reqState{id: id, stream: req.Stream, chunk: s.cfg.StreamChunkTokens, arrival: arrival, notify: make(chan struct{}, 1)}
	if kv := req.KVTransfer; kv != nil {
		er.RemoteDecode = kv.DoRemoteDecode
		er.RemotePrefill = kv.DoRemotePrefill
		if kv.DoRemotePrefill && kv.RemoteHost != "" && kv.RemotePort > 0 && kv.RemoteRequestID != "" {
			rs.release = &releaseTarget{host: kv.RemoteHost, port: kv.RemotePort, requestID: kv.RemoteRequestID}
		}
	}

	s.restoreFromStorage(r.Context(), &er)
	s.mu.Lock()
	s.reqs[id] = rs
	err = s.eng.Add(s.simAt(arrival), er)
	if err != nil {
		delete(s.reqs, id)
	}
	s.mu.Unlock()
	if err != nil {
		writeError(w, engineError(err))
		return
	}
	s.kick()

	out := &responder{s: s, rs: rs, chat: chat, id: id, model: model, created: arrival.Unix(), req: req}
	if req.Stream {
		out.stream(w, r)
	} else {
		out.await(w, r)
	}
}

func engineError(err error) *Error {
	switch {
	case errors.Is(err, engine.ErrQueueFull):
		return &Error{Status: http.StatusServiceUnavailable, Type: "ServiceUnavailableError",
			Message: "the waiting queue is full; retry later"}
	case errors.Is(err, engine.ErrTooLong), errors.Is(err, engine.ErrBadRequest):
		return badRequest("", "%v", err)
	}
	return &Error{Status: http.StatusInternalServerError, Type: "InternalServerError", Message: err.Error()}
}

// responder writes one request's response from its mailbox.
type responder struct {
	s       *Server
	rs      *reqState
	chat    bool
	id      string
	model   string
	created int64
	req     *Request
}

// take moves the tokens ready to send out of the mailbox. A stream takes the
// first token alone, then whole chunks, and what is left once finished.
func (o *responder) take(dst []uint32, firstSent bool) (toks []uint32, fin bool, snap snapshot) {
	rs := o.rs
	rs.mu.Lock()
	defer rs.mu.Unlock()
	n := len(rs.toks)
	if !rs.finished && rs.stream {
		first := 0
		if !firstSent && n > 0 {
			first = 1
		}
		n = first + (n-first)/rs.chunk*rs.chunk
	}
	dst = append(dst, rs.toks[:n]...)
	rs.toks = append(rs.toks[:0], rs.toks[n:]...)
	snap = snapshot{delivered: rs.delivered - len(rs.toks), reason: rs.reason, prompt: rs.prompt, cached: rs.cached,
		held: rs.held, blockIDs: rs.blockIDs}
	return dst, rs.finished, snap
}

// snapshot is what a handler reads of its mailbox besides the tokens.
type snapshot struct {
	delivered      int
	reason         engine.FinishReason
	prompt, cached int
	held           bool
	blockIDs       []int
}

func (o *responder) kvParams(snap *snapshot) *kvTransferJSON {
	if !snap.held {
		return nil
	}
	s := o.s
	return &kvTransferJSON{
		DoRemotePrefill: true,
		RemoteBlockIDs:  snap.blockIDs,
		RemoteEngineID:  s.cfg.EngineID,
		RemoteHost:      s.cfg.AdvertiseHost,
		RemotePort:      int(s.advPort.Load()),
		RemoteRequestID: o.id,
		TPSize:          s.cfg.Profile.Accelerator.Count,
	}
}

// await serves a non-streamed request: one response once it finishes.
func (o *responder) await(w http.ResponseWriter, r *http.Request) {
	var toks []uint32
	for {
		select {
		case <-o.rs.notify:
		case <-r.Context().Done():
			o.s.abort(o.rs)
			return
		case <-o.s.loopDone:
			writeError(w, errShuttingDown)
			return
		}
		var fin bool
		var snap snapshot
		toks, fin, snap = o.take(toks, true)
		if !fin {
			continue
		}
		u := usage{Prompt: snap.prompt, Completion: snap.delivered, Cached: snap.cached}
		reason := string(snap.reason)
		text := tokensText(toks)
		if o.chat {
			writeJSON(w, http.StatusOK, &chatResponse{
				ID: o.id, Object: "chat.completion", Created: o.created, Model: o.model,
				Choices: []chatChoice{{
					Message:      chatMessage{Role: "assistant", Content: text, ToolCalls: []string{}},
					FinishReason: &reason,
				}},
				Usage:            u.json(),
				KVTransferParams: o.kvParams(&snap),
			})
			return
		}
		writeJSON(w, http.StatusOK, &completionResponse{
			ID: o.id, Object: "text_completion", Created: o.created, Model: o.model,
			Choices:          []completionChoice{{Text: text, FinishReason: &reason}},
			Usage:            u.json(),
			KVTransferParams: o.kvParams(&snap),
		})
		return
	}
}

// stream serves a streamed request as server-sent events.
func (o *responder) stream(w http.ResponseWriter, r *http.Request) {
	rc := http.NewResponseController(w)
	cw := newChunkWriter(o.chat, o.id, o.model, o.created, o.req.IncludeUsage, o.req.ContinuousUsage)
	var (
		buf       = make([]byte, 0, 2048)
		toks      []uint32
		started   bool
		firstSent bool
		sent      int
	)
	for {
		select {
		case <-o.rs.notify:
		case <-r.Context().Done():
			o.s.abort(o.rs)
			return
		case <-o.s.loopDone:
			if !started {
				writeError(w, errShuttingDown)
				return
			}
			buf = appendStreamError(buf[:0], errShuttingDown)
			buf = appendDone(buf)
			_, _ = w.Write(buf)
			return
		}
		var fin bool
		var snap snapshot
		toks, fin, snap = o.take(toks[:0], firstSent)
		if len(toks) == 0 && !fin {
			continue
		}
		buf = buf[:0]
		u := usage{Prompt: snap.prompt, Cached: snap.cached}
		if !started {
			h := w.Header()
			h.Set("Content-Type", "text/event-stream; charset=utf-8")
			h.Set("Cache-Control", "no-cache")
			w.WriteHeader(http.StatusOK)
			started = true
			if o.chat {
				buf = cw.appendRole(buf, u)
			}
		}
		var kv []byte
		if fin {
			if p := o.kvParams(&snap); p != nil {
				kv, _ = json.Marshal(p)
			}
		}
		for len(toks) > 0 {
			n := o.rs.chunk
			if !firstSent {
				n, firstSent = 1, true
			}
			n = min(n, len(toks))
			last := len(toks) == n
			sent += n
			u.Completion = sent
			reason := engine.FinishNone
			var evKV []byte
			if fin && last {
				reason, evKV = snap.reason, kv
			}
			buf = cw.appendContent(buf, toks[:n], reason, u, evKV)
			toks = toks[n:]
		}
		if fin {
			if o.req.IncludeUsage {
				u.Completion = sent
				buf = cw.appendUsageChunk(buf, u)
			}
			buf = appendDone(buf)
		}
		if _, err := w.Write(buf); err != nil {
			o.s.abort(o.rs)
			return
		}
		if err := rc.Flush(); err != nil {
			o.s.abort(o.rs)
			return
		}
		if fin {
			return
		}
	}
}

// render returns a request's prompt ids and its resolved max_tokens, as
// vLLM's renderer does before a request reaches the engine.
func (s *Server) render(ctx context.Context, req *Request, chat bool) ([]uint32, int, *Error) {
	prompt, err := req.promptTokens(ctx, s.tok)
	if err != nil {
		return nil, 0, badRequest("messages", "%v", err)
	}
	if len(prompt) == 0 {
		return nil, 0, badRequest("prompt", "the prompt cannot be empty")
	}
	if len(prompt) >= s.maxLen {
		return nil, 0, badRequest("", "This model's maximum context length is %d tokens. However, your request has %d input tokens. Please reduce the length of the input messages.", s.maxLen, len(prompt))
	}
	maxTokens := req.MaxTokens
	if maxTokens == 0 {
		maxTokens = s.maxLen - len(prompt)
		if !chat {
			maxTokens = min(16, maxTokens) // vLLM's completions default
		}
	}
	if len(prompt)+maxTokens > s.maxLen {
		return nil, 0, badRequest("max_tokens", "'max_tokens' is too large: %d. This model's maximum context length is %d tokens and your request has %d input tokens (%d > %d - %d).",
			maxTokens, s.maxLen, len(prompt), maxTokens, s.maxLen, len(prompt))
	}
	return prompt, maxTokens, nil
}

// generateRequest is vLLM's GenerateRequest, what its /render endpoints
// answer: the prompt as token ids and the sampling parameters, ready for the
// engine.
type generateRequest struct {
	RequestID        string            `json:"request_id"`
	TokenIDs         []uint32          `json:"token_ids"`
	Features         any               `json:"features"`
	SamplingParams   renderedSampling  `json:"sampling_params"`
	Model            string            `json:"model"`
	Stream           bool              `json:"stream"`
	CacheSalt        *string           `json:"cache_salt"`
	Priority         int               `json:"priority"`
	KVTransferParams *KVTransferParams `json:"kv_transfer_params"`
}

type renderedSampling struct {
	MaxTokens int    `json:"max_tokens"`
	IgnoreEOS bool   `json:"ignore_eos"`
	Seed      *int64 `json:"seed"`
}

// handleRender serves vLLM's /v1/chat/completions/render (one
// GenerateRequest) and /v1/completions/render (a list, one per prompt): the
// token ids this server would compute for the request, chat template
// included, without running it.
func (s *Server) handleRender(w http.ResponseWriter, r *http.Request, chat bool) {
	body, herr := s.readBody(w, r)
	if herr != nil {
		writeError(w, herr)
		return
	}
	var req *Request
	var err error
	if chat {
		req, err = DecodeChatRequest(body)
	} else {
		req, err = DecodeCompletionRequest(body)
	}
	if err != nil {
		writeError(w, asError(err))
		return
	}
	model, herr := s.checkModel(req.Model)
	if herr != nil {
		writeError(w, herr)
		return
	}
	prompt, maxTokens, herr := s.render(r.Context(), req, chat)
	if herr != nil {
		writeError(w, herr)
		return
	}
	prefix := "cmpl-"
	if chat {
		prefix = "chatcmpl-"
	}
	g := generateRequest{RequestID: newID(prefix), TokenIDs: prompt, Model: model, Stream: req.Stream,
		Priority: req.Priority, KVTransferParams: req.KVTransfer,
		SamplingParams: renderedSampling{MaxTokens: maxTokens, IgnoreEOS: req.IgnoreEOS}}
	if req.HasSeed {
		g.SamplingParams.Seed = &req.Seed
	}
	if chat {
		writeJSON(w, http.StatusOK, &g)
		return
	}
	writeJSON(w, http.StatusOK, []generateRequest{g})
}

// handleTokenize serves vLLM's /tokenize: the token ids the engine sees for a
// completion prompt or chat messages. add_special_tokens is accepted and
// ignored: the project's tokenizer adds no special tokens to a prompt.
func (s *Server) handleTokenize(w http.ResponseWriter, r *http.Request) {
	body, herr := s.readBody(w, r)
	if herr != nil {
		writeError(w, herr)
		return
	}
	var raw struct {
		Model               *string         `json:"model"`
		Prompt              *string         `json:"prompt"`
		Messages            json.RawMessage `json:"messages"`
		AddSpecialTokens    *bool           `json:"add_special_tokens"`
		AddGenerationPrompt *bool           `json:"add_generation_prompt"`
	}
	if err := unmarshalBody(body, &raw); err != nil {
		writeError(w, asError(err))
		return
	}
	if raw.Model != nil {
		if _, herr := s.checkModel(*raw.Model); herr != nil {
			writeError(w, herr)
			return
		}
	}
	var toks []uint32
	switch {
	case len(raw.Messages) > 0 && string(raw.Messages) != "null":
		// The chat's template inputs as /v1/chat/completions reads them
		// (tools, chat_template_kwargs, add_generation_prompt,
		// continue_final_message).
		req, err := DecodeChatRequest(body)
		if err != nil {
			writeError(w, asError(err))
			return
		}
		if toks, err = req.promptTokens(r.Context(), s.tok); err != nil {
			writeError(w, badRequest("messages", "%v", err))
			return
		}
	case raw.Prompt != nil:
		var err error
		if toks, err = s.tok.Encode(r.Context(), *raw.Prompt); err != nil {
			writeError(w, badRequest("prompt", "%v", err))
			return
		}
	default:
		writeError(w, badRequest("prompt", "either prompt or messages is required"))
		return
	}
	if toks == nil {
		toks = []uint32{}
	}
	writeJSON(w, http.StatusOK, &struct {
		Count       int      `json:"count"`
		MaxModelLen int      `json:"max_model_len"`
		Tokens      []uint32 `json:"tokens"`
		TokenStrs   []string `json:"token_strs"`
	}{len(toks), s.maxLen, toks, nil})
}

// handleDetokenize serves vLLM's /detokenize.
func (s *Server) handleDetokenize(w http.ResponseWriter, r *http.Request) {
	body, herr := s.readBody(w, r)
	if herr != nil {
		writeError(w, herr)
		return
	}
	var raw struct {
		Model  *string `json:"model"`
		Tokens []int64 `json:"tokens"`
	}
	if err := unmarshalBody(body, &raw); err != nil {
		writeError(w, asError(err))
		return
	}
	if raw.Model != nil {
		if _, herr := s.checkModel(*raw.Model); herr != nil {
			writeError(w, herr)
			return
		}
	}
	vocab := s.tok.Info().VocabSize
	ids := make([]uint32, len(raw.Tokens))
	for i, t := range raw.Tokens {
		if t < 0 || t >= int64(vocab) {
			writeError(w, badRequest("tokens", "token id %d at position %d is out of vocabulary (size %d)", t, i, vocab))
			return
		}
		ids[i] = uint32(t)
	}
	text, err := s.detok(ids)
	if err != nil {
		writeError(w, badRequest("tokens", "%v", err))
		return
	}
	writeJSON(w, http.StatusOK, map[string]string{"prompt": text})
}

// handleRelease frees the blocks this (prefill) engine holds for a request
// once a decode engine has pulled them. Unknown ids answer released=false:
// the call is idempotent, and the blocks may already have expired.
func (s *Server) handleRelease(w http.ResponseWriter, r *http.Request) {
	body, herr := s.readBody(w, r)
	if herr != nil {
		writeError(w, herr)
		return
	}
	var raw struct {
		RequestID *string `json:"request_id"`
	}
	if err := unmarshalBody(body, &raw); err != nil {
		writeError(w, asError(err))
		return
	}
	if raw.RequestID == nil || *raw.RequestID == "" {
		writeError(w, badRequest("request_id", "request_id is required"))
		return
	}
	s.mu.Lock()
	released := s.eng.Release(*raw.RequestID)
	s.mu.Unlock()
	s.kick()
	writeJSON(w, http.StatusOK, map[string]bool{"released": released})
}
