package vllmsim

import (
	"encoding/json"
	"net/http"
	"strconv"
	"strings"

	"github.com/llmd-kn/llmd-kn/pkg/engine"
	"github.com/llmd-kn/llmd-kn/pkg/jsonstr"
	"github.com/llmd-kn/llmd-kn/pkg/tokenizer"
)

// Streamed chunks are written with append-style JSON rather than
// encoding/json: the stream path runs once per chunk for every open stream,
// and reflection there would cost more than the rest of the path together.
// Non-streamed responses, written once per request, use encoding/json.

// tokenText caches the text of the generated vocabulary (every generated
// token is one of these), so that decoding a chunk allocates nothing.
var tokenText = func() map[uint32]string {
	m := make(map[uint32]string, len(tokenizer.GeneratedVocab()))
	for _, id := range tokenizer.GeneratedVocab() {
		m[id] = tokenizer.DecodeString([]uint32{id})
	}
	return m
}()

// appendTokensText appends the JSON string of the text of ids.
func appendTokensText(dst []byte, ids []uint32) []byte {
	dst = append(dst, '"')
	for _, id := range ids {
		s, ok := tokenText[id]
		if !ok {
			s = tokenizer.DecodeString([]uint32{id})
		}
		dst = jsonstr.AppendEscaped(dst, s)
	}
	return append(dst, '"')
}

// usage is the token accounting of one request.
type usage struct {
	Prompt, Completion, Cached int
}

func appendUsage(dst []byte, u usage) []byte {
	dst = append(dst, `{"prompt_tokens":`...)
	dst = strconv.AppendInt(dst, int64(u.Prompt), 10)
	dst = append(dst, `,"total_tokens":`...)
	dst = strconv.AppendInt(dst, int64(u.Prompt+u.Completion), 10)
	dst = append(dst, `,"completion_tokens":`...)
	dst = strconv.AppendInt(dst, int64(u.Completion), 10)
	dst = append(dst, `,"prompt_tokens_details":{"cached_tokens":`...)
	dst = strconv.AppendInt(dst, int64(u.Cached), 10)
	return append(dst, `}}`...)
}

// chunkWriter builds the SSE events of one streamed response.
type chunkWriter struct {
	chat bool
	// head is `{"id":...,"object":...,"created":...,"model":...` shared by
	// every chunk of the stream.
	head []byte
	// includeUsage: `"usage":null` on content chunks and a final usage
	// chunk; continuous: the running usage on every chunk instead.
	includeUsage, continuous bool
}

func newChunkWriter(chat bool, id, model string, created int64, includeUsage, continuous bool) *chunkWriter {
	object := "text_completion"
	if chat {
		object = "chat.completion.chunk"
	}
	h := make([]byte, 0, 128)
	h = append(h, `{"id":`...)
	h = jsonstr.Append(h, id)
	h = append(h, `,"object":"`...)
	h = append(h, object...)
	h = append(h, `","created":`...)
	h = strconv.AppendInt(h, created, 10)
	h = append(h, `,"model":`...)
	h = jsonstr.Append(h, model)
	return &chunkWriter{chat: chat, head: h, includeUsage: includeUsage, continuous: continuous && includeUsage}
}

func appendFinish(dst []byte, reason engine.FinishReason) []byte {
	if reason == engine.FinishNone {
		return append(dst, "null"...)
	}
	dst = append(dst, '"')
	dst = append(dst, reason...)
	return append(dst, '"')
}

func (cw *chunkWriter) appendTail(dst []byte, u usage, kv []byte) []byte {
	switch {
	case cw.continuous:
		dst = append(dst, `,"usage":`...)
		dst = appendUsage(dst, u)
	case cw.includeUsage:
		dst = append(dst, `,"usage":null`...)
	}
	if kv != nil {
		dst = append(dst, `,"kv_transfer_params":`...)
		dst = append(dst, kv...)
	}
	return append(dst, "}\n\n"...)
}

// appendRole appends a chat stream's first event, which announces the
// assistant role, as vLLM sends it.
func (cw *chunkWriter) appendRole(dst []byte, u usage) []byte {
	dst = append(dst, "data: "...)
	dst = append(dst, cw.head...)
	dst = append(dst, `,"choices":[{"index":0,"delta":{"role":"assistant","content":""},"logprobs":null,"finish_reason":null}]`...)
	return cw.appendTail(dst, u, nil)
}

// appendContent appends one content event carrying the text of ids; reason
// is set on the last one. kv, when not nil, is the raw kv_transfer_params
// JSON, put on the last event.
func (cw *chunkWriter) appendContent(dst []byte, ids []uint32, reason engine.FinishReason, u usage, kv []byte) []byte {
	dst = append(dst, "data: "...)
	dst = append(dst, cw.head...)
	if cw.chat {
		dst = append(dst, `,"choices":[{"index":0,"delta":{"content":`...)
		dst = appendTokensText(dst, ids)
		dst = append(dst, `},"logprobs":null,"finish_reason":`...)
		dst = appendFinish(dst, reason)
		dst = append(dst, `}]`...)
	} else {
		dst = append(dst, `,"choices":[{"index":0,"text":`...)
		dst = appendTokensText(dst, ids)
		dst = append(dst, `,"logprobs":null,"finish_reason":`...)
		dst = appendFinish(dst, reason)
		dst = append(dst, `,"stop_reason":null}]`...)
	}
	return cw.appendTail(dst, u, kv)
}

// appendUsageChunk appends the final usage event (empty choices).
func (cw *chunkWriter) appendUsageChunk(dst []byte, u usage) []byte {
	dst = append(dst, "data: "...)
	dst = append(dst, cw.head...)
	dst = append(dst, `,"choices":[],"usage":`...)
	dst = appendUsage(dst, u)
	return append(dst, "}\n\n"...)
}

func appendDone(dst []byte) []byte { return append(dst, "data: [DONE]\n\n"...) }

// appendStreamError appends an error event, as vLLM reports a failure after
// the stream has started.
func appendStreamError(dst []byte, e *Error) []byte {
	dst = append(dst, "data: "...)
	dst = appendErrorJSON(dst, e)
	return append(dst, "\n\n"...)
}

func appendErrorJSON(dst []byte, e *Error) []byte {
	dst = append(dst, `{"error":{"message":`...)
	dst = jsonstr.Append(dst, e.Message)
	dst = append(dst, `,"type":`...)
	dst = jsonstr.Append(dst, e.Type)
	dst = append(dst, `,"param":`...)
	if e.Param == "" {
		dst = append(dst, "null"...)
	} else {
		dst = jsonstr.Append(dst, e.Param)
	}
	dst = append(dst, `,"code":`...)
	dst = strconv.AppendInt(dst, int64(e.Status), 10)
	return append(dst, "}}"...)
}

// writeError writes e as vLLM's ErrorResponse with e.Status.
func writeError(w http.ResponseWriter, e *Error) {
	h := w.Header()
	h.Set("Content-Type", "application/json")
	if e.Status == http.StatusServiceUnavailable {
		h.Set("Retry-After", "1")
	}
	w.WriteHeader(e.Status)
	_, _ = w.Write(appendErrorJSON(make([]byte, 0, 128+len(e.Message)), e))
}

// httpError is an error for a status with no more specific type, typed by
// the status phrase as vLLM's HTTP exception handler types it.
func httpError(status int, msg string) *Error {
	return &Error{Status: status, Type: http.StatusText(status), Message: msg}
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	b, err := json.Marshal(v)
	if err != nil {
		writeError(w, httpError(http.StatusInternalServerError, "encode response: "+err.Error()))
		return
	}
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_, _ = w.Write(b)
}

// Non-streamed response bodies, in vLLM's field order.

type usageJSON struct {
	PromptTokens        int                `json:"prompt_tokens"`
	TotalTokens         int                `json:"total_tokens"`
	CompletionTokens    int                `json:"completion_tokens"`
	PromptTokensDetails promptTokensDetail `json:"prompt_tokens_details"`
}

type promptTokensDetail struct {
	CachedTokens int `json:"cached_tokens"`
}

func (u usage) json() usageJSON {
	return usageJSON{u.Prompt, u.Prompt + u.Completion, u.Completion, promptTokensDetail{u.Cached}}
}

// kvTransferJSON is the kv_transfer_params a prefill engine returns: what
// the decode engine needs to pull the blocks (vLLM's NIXL connector fields).
type kvTransferJSON struct {
	DoRemotePrefill bool   `json:"do_remote_prefill"`
	DoRemoteDecode  bool   `json:"do_remote_decode"`
	RemoteBlockIDs  []int  `json:"remote_block_ids"`
	RemoteEngineID  string `json:"remote_engine_id"`
	RemoteHost      string `json:"remote_host"`
	RemotePort      int    `json:"remote_port"`
	RemoteRequestID string `json:"remote_request_id"`
	TPSize          int    `json:"tp_size"`
}

type completionChoice struct {
	Index          int     `json:"index"`
	Text           string  `json:"text"`
	Logprobs       *string `json:"logprobs"`
	FinishReason   *string `json:"finish_reason"`
	StopReason     *string `json:"stop_reason"`
	PromptLogprobs *string `json:"prompt_logprobs"`
}

type completionResponse struct {
	ID                string             `json:"id"`
	Object            string             `json:"object"`
	Created           int64              `json:"created"`
	Model             string             `json:"model"`
	Choices           []completionChoice `json:"choices"`
	ServiceTier       *string            `json:"service_tier"`
	SystemFingerprint *string            `json:"system_fingerprint"`
	Usage             usageJSON          `json:"usage"`
	KVTransferParams  *kvTransferJSON    `json:"kv_transfer_params"`
}

type chatMessage struct {
	Role             string   `json:"role"`
	Content          string   `json:"content"`
	Refusal          *string  `json:"refusal"`
	ToolCalls        []string `json:"tool_calls"`
	ReasoningContent *string  `json:"reasoning_content"`
}

type chatChoice struct {
	Index        int         `json:"index"`
	Message      chatMessage `json:"message"`
	Logprobs     *string     `json:"logprobs"`
	FinishReason *string     `json:"finish_reason"`
	StopReason   *string     `json:"stop_reason"`
}

type chatResponse struct {
	ID                string          `json:"id"`
	Object            string          `json:"object"`
	Created           int64           `json:"created"`
	Model             string          `json:"model"`
	Choices           []chatChoice    `json:"choices"`
	ServiceTier       *string         `json:"service_tier"`
	SystemFingerprint *string         `json:"system_fingerprint"`
	Usage             usageJSON       `json:"usage"`
	PromptLogprobs    *string         `json:"prompt_logprobs"`
	KVTransferParams  *kvTransferJSON `json:"kv_transfer_params"`
}

func tokensText(ids []uint32) string {
	var sb strings.Builder
	for _, id := range ids {
		if s, ok := tokenText[id]; ok {
			sb.WriteString(s)
		} else {
			tokenizer.Decode(&sb, []uint32{id})
		}
	}
	return sb.String()
}
