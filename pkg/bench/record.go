package bench

import "time"

// ErrorKind classifies a failed request. The values are stable: they are the
// keys of RunSummary.Requests.Errors in summary.json.
type ErrorKind string

// Error kinds. A request has at most one; the empty kind is success.
const (
	// ErrHTTP4xx and ErrHTTP5xx are answers with a 4xx or 5xx status (429
	// and 503 included: Requests.ByStatus keeps the exact codes).
	ErrHTTP4xx ErrorKind = "http_4xx"
	ErrHTTP5xx ErrorKind = "http_5xx"
	// ErrHTTPOther is any other status that is not 2xx (1xx, 3xx).
	ErrHTTPOther ErrorKind = "http_other"
	// ErrConnection is a failure before any response: refused, reset, DNS.
	ErrConnection ErrorKind = "connection"
	// ErrTimeout is the per-request timeout, before or during the stream.
	ErrTimeout ErrorKind = "timeout"
	// ErrStreamCut is a stream that ended (EOF or read error) before
	// `data: [DONE]`.
	ErrStreamCut ErrorKind = "stream_cut"
	// ErrStreamError is an error event inside a 2xx stream, such as vLLM's
	// `data: {"error": {...}}`.
	ErrStreamError ErrorKind = "stream_error"
	// ErrProtocol is a 2xx answer that is not a usable event stream (JSON
	// instead of SSE, an oversized event).
	ErrProtocol ErrorKind = "protocol"
	// ErrCanceled is a request cut short because the run was interrupted.
	ErrCanceled ErrorKind = "canceled"
	// ErrDropped is a request the generator never sent because the hard
	// cap on requests in flight was reached. It is not counted as sent.
	ErrDropped ErrorKind = "dropped"
)

// Record is what happened to one request of a run. The real-time driver
// (Run) fills it from the wire; `kn-llmd plan` fills it from its virtual
// clock. Summarize turns a run's records into a RunSummary and needs nothing
// else, so both instruments report alike.
//
// Times are offsets: Scheduled and Sent from the start of the run, TTFT,
// E2E and the ITL gaps from Sent.
type Record struct {
	// Index is the request's index in its workload.
	Index int `json:"index"`
	// Scheduled is when the workload said to send the request.
	Scheduled time.Duration `json:"scheduled"`
	// Sent is when it was sent; Sent − Scheduled is the generator's
	// lateness (including any wait for a MaxConcurrency slot). For a
	// dropped request it is when the drop was decided.
	Sent time.Duration `json:"sent"`
	// TTFT is the time to the first event carrying generated text (a chat
	// stream's role-only first chunk does not count); 0 when none came.
	TTFT time.Duration `json:"ttft"`
	// E2E is the time to the end of the stream (`data: [DONE]`), or to the
	// failure.
	E2E time.Duration `json:"e2e"`
	// ITL holds the gaps between successive content events: one fewer than
	// Chunks. A server that packs several tokens in an event (vLLM
	// multi-step, the simulator's --stream-chunk-tokens) gives one gap per
	// event, as vLLM's own benchmark counts them.
	ITL []time.Duration `json:"itl,omitempty"`
	// Chunks is the number of content events received.
	Chunks int `json:"chunks"`

	// PromptLen and MaxTokens are what the workload asked for.
	PromptLen int `json:"promptLen"`
	MaxTokens int `json:"maxTokens"`
	// HasUsage says whether the server reported usage; without it
	// Summarize counts PromptLen prompt tokens, Chunks completion tokens
	// and no cached tokens.
	HasUsage         bool `json:"hasUsage"`
	PromptTokens     int  `json:"promptTokens"`
	CompletionTokens int  `json:"completionTokens"`
	CachedTokens     int  `json:"cachedTokens"`

	// Queue is the time the request waited in a server queue, when known
	// (HasQueue): `kn-llmd plan` knows it, a client does not.
	Queue    time.Duration `json:"queue,omitempty"`
	HasQueue bool          `json:"hasQueue,omitempty"`

	// Error is empty for a request that completed.
	Error ErrorKind `json:"error,omitempty"`
	// Status is the HTTP status, 0 when none was received.
	Status int `json:"status,omitempty"`
	// Detail is a short description of the error (the server's message
	// when it gave one). It never contains the prompt.
	Detail string `json:"detail,omitempty"`
}

// OK reports whether the request completed.
func (r *Record) OK() bool { return r.Error == "" }

// promptTokens is the prompt length Summarize counts.
func (r *Record) promptTokens() int {
	if r.HasUsage {
		return r.PromptTokens
	}
	return r.PromptLen
}

// completionTokens is the output length Summarize counts.
func (r *Record) completionTokens() int {
	if r.HasUsage {
		return r.CompletionTokens
	}
	return r.Chunks
}

// tpot is the time per output token after the first, in seconds:
// (E2E − TTFT) / (completion tokens − 1). ok is false when there are fewer
// than two tokens.
func (r *Record) tpot() (float64, bool) {
	n := r.completionTokens()
	if n < 2 || r.TTFT <= 0 {
		return 0, false
	}
	return (r.E2E - r.TTFT).Seconds() / float64(n-1), true
}
