package activator

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"time"
)

// Proxy forwards a request to one endpoint and streams the answer back.
type Proxy struct {
	Client *http.Client
}

// NewProxy returns a proxy with a transport suited to many long streams to
// few hosts.
func NewProxy() *Proxy {
	tr := &http.Transport{
		Proxy:                 nil,
		DialContext:           (&net.Dialer{Timeout: 3 * time.Second, KeepAlive: 30 * time.Second}).DialContext,
		MaxIdleConns:          1000,
		MaxIdleConnsPerHost:   256,
		IdleConnTimeout:       90 * time.Second,
		ResponseHeaderTimeout: 0, // a long prefill may precede the headers
		DisableCompression:    true,
	}
	return &Proxy{Client: &http.Client{Transport: tr}}
}

// RetryableError is an upstream failure that happened before any byte
// reached the client: the request may go to another endpoint.
type RetryableError struct {
	Endpoint string
	Err      error
}

func (e *RetryableError) Error() string { return fmt.Sprintf("endpoint %s: %v", e.Endpoint, e.Err) }
func (e *RetryableError) Unwrap() error { return e.Err }

// StartedError is a failure after the response's status went to the
// client: it cannot be retried or answered with an error status.
type StartedError struct{ Err error }

func (e *StartedError) Error() string { return e.Err.Error() }
func (e *StartedError) Unwrap() error { return e.Err }

// Observer sees a response as it passes: the status, then each chunk of
// the body in order. It must not retain the chunk.
type Observer interface {
	Status(code int)
	Chunk(b []byte)
}

// Forward sends body to base+path with the inbound request's headers and
// streams the response to w. A streamed answer (unknown length) is flushed
// at the end of each line it brings, so that SSE events reach the client as
// they are produced without a flush for every part of an event; an answer
// of known length is not flushed (the server sends it as it fills). A
// connection failure or a 503 from the endpoint (a draining pod) before
// anything is written returns a *RetryableError and writes nothing. Client
// cancellation cancels the upstream request through ctx.
func (p *Proxy) Forward(ctx context.Context, w http.ResponseWriter, in *http.Request, base, path string, body []byte, obs Observer) error {
	return p.forward(ctx, w, in, base, path, body, nil, obs, Timeouts{})
}

// TimeoutError is an upstream timeout (Kind: "total", "response start"
// or "idle"); its status is 504 before the answer started.
type TimeoutError struct {
	Kind  string
	After time.Duration
}

func (e *TimeoutError) Error() string {
	return fmt.Sprintf("the endpoint exceeded the %s timeout of %v", e.Kind, e.After)
}

// forward is Forward with body held by owner (nil: not pooled), which the
// transport keeps a reference to until it is done sending, under the
// timeouts to: no response headers within to.ResponseStart is a
// *RetryableError wrapping a *TimeoutError (nothing reached the client);
// the whole request past to.Total, a *TimeoutError before the answer
// started; after it, to.Total or a silence of to.Idle between reads is a
// *StartedError wrapping a *TimeoutError.
func (p *Proxy) forward(ctx context.Context, w http.ResponseWriter, in *http.Request, base, path string, body []byte, owner *buffer, obs Observer, to Timeouts) error {
	uctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	if to.Total > 0 {
		var stop context.CancelFunc
		uctx, stop = context.WithTimeoutCause(uctx, to.Total, &TimeoutError{Kind: "total", After: to.Total})
		defer stop()
	}
	sent := newSentBody(body, owner)
	req, err := http.NewRequestWithContext(uctx, http.MethodPost, base+path, sent)
	if err != nil {
		_ = sent.Close()
		return fmt.Errorf("build upstream request: %w", err)
	}
	req.Header = upstreamHeader(in.Header)
	req.ContentLength = int64(len(body))
	var start *time.Timer
	if to.ResponseStart > 0 {
		start = time.AfterFunc(to.ResponseStart, func() { cancel(&TimeoutError{Kind: "response start", After: to.ResponseStart}) })
	}
	resp, err := p.Client.Do(req)
	startFired := start != nil && !start.Stop()
	if err != nil || startFired {
		if err == nil {
			resp.Body.Close()
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
		var te *TimeoutError
		if cause := context.Cause(uctx); errors.As(cause, &te) {
			if te.Kind == "total" {
				return te
			}
			return &RetryableError{Endpoint: base, Err: te}
		}
		return &RetryableError{Endpoint: base, Err: err}
	}
	defer resp.Body.Close()
	if to.Idle > 0 {
		idle := time.AfterFunc(to.Idle, func() { cancel(&TimeoutError{Kind: "idle", After: to.Idle}) })
		defer idle.Stop()
		resp.Body = &idleBody{ReadCloser: resp.Body, t: idle, d: to.Idle}
	}
	if resp.StatusCode == http.StatusServiceUnavailable {
		_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
		return &RetryableError{Endpoint: base, Err: errors.New("503 Service Unavailable")}
	}
	if obs != nil {
		obs.Status(resp.StatusCode)
	}
	h := w.Header()
	for k, vv := range resp.Header {
		h[k] = vv // resp.Header is not used again: no copy
	}
	if hasHopHeaders(resp.Header) {
		removeHopHeaders(h)
	}
	delete(h, "Content-Length")
	if resp.ContentLength >= 0 {
		h["Content-Length"] = []string{strconv.FormatInt(resp.ContentLength, 10)}
	}
	w.WriteHeader(resp.StatusCode)
	streamed := resp.ContentLength < 0
	sse := strings.HasPrefix(resp.Header.Get("Content-Type"), "text/event-stream")
	var rc *http.ResponseController
	if streamed {
		rc = http.NewResponseController(w)
	}
	bufp := copyBuffers.Get().(*[]byte)
	defer copyBuffers.Put(bufp)
	buf := *bufp
	// tail holds the last bytes relayed, to tell a stream whose [DONE]
	// already reached the client: OpenAI's SDKs hang up right after it,
	// which may cancel the context before the endpoint's EOF is read. The
	// answer was complete; it is not a failure.
	var tail [len(sseDone)]byte
	for {
		n, rerr := resp.Body.Read(buf)
		if n > 0 {
			if obs != nil {
				obs.Chunk(buf[:n])
			}
			if _, werr := w.Write(buf[:n]); werr != nil {
				return &StartedError{Err: fmt.Errorf("write to client: %w", werr)}
			}
			if streamed && (!sse || buf[n-1] == '\n') {
				_ = rc.Flush()
			}
			if sse {
				keepTail(tail[:], buf[:n])
			}
		}
		if rerr == io.EOF {
			return nil
		}
		if rerr != nil {
			if sse && string(tail[:]) == sseDone {
				return nil
			}
			if ctx.Err() != nil {
				return ctx.Err()
			}
			var te *TimeoutError
			if cause := context.Cause(uctx); errors.As(cause, &te) {
				rerr = te
			}
			return &StartedError{Err: fmt.Errorf("read from endpoint %s after the response started: %w", base, rerr)}
		}
	}
}

// idleBody restarts its timer at each read that brings bytes.
type idleBody struct {
	io.ReadCloser
	t *time.Timer
	d time.Duration
}

func (b *idleBody) Read(p []byte) (int, error) {
	n, err := b.ReadCloser.Read(p)
	if n > 0 {
		b.t.Reset(b.d)
	}
	return n, err
}

// sseDone ends every OpenAI stream.
const sseDone = "data: [DONE]\n\n"

// keepTail shifts the end of b into tail, so that tail holds the last
// len(tail) bytes of everything passed so far.
func keepTail(tail, b []byte) {
	if len(b) >= len(tail) {
		copy(tail, b[len(b)-len(tail):])
		return
	}
	copy(tail, tail[len(b):])
	copy(tail[len(tail)-len(b):], b)
}

// jsonContentType is shared by every upstream request (never modified).
var jsonContentType = []string{"application/json"}

// upstreamHeader is the header of an upstream request: the inbound one's
// values (shared, not copied: neither side modifies them) without
// hop-by-hop headers and Content-Length, as JSON.
func upstreamHeader(in http.Header) http.Header {
	h := make(http.Header, len(in)+1)
	for k, vv := range in {
		h[k] = vv
	}
	if hasHopHeaders(in) {
		h = h.Clone()
		removeHopHeaders(h)
	}
	delete(h, "Content-Length")
	h["Content-Type"] = jsonContentType
	return h
}

// prefillKVParams is what llm-d's routing sidecar sends a prefill pod: ask
// for remote decode, nothing remote yet.
var prefillKVParams = json.RawMessage(`{"do_remote_decode":true,"do_remote_prefill":false,"remote_engine_id":null,"remote_block_ids":null,"remote_host":null,"remote_port":null}`)

// PrefillResult is what a prefill pod returned.
type PrefillResult struct {
	KVTransferParams json.RawMessage
	CachedTokens     int
	PromptTokens     int
}

// Prefill runs the first half of vLLM's P/D protocol: the request goes to
// the prefill endpoint non-streaming with max_tokens 1 and
// kv_transfer_params.do_remote_decode, and the kv_transfer_params of its
// answer are returned for the decode request.
func (p *Proxy) Prefill(ctx context.Context, in *http.Request, base, path string, r *LLMRequest) (*PrefillResult, error) {
	one := []byte("1")
	edits := []Edit{{Key: "max_tokens", Value: one}, {Key: "stream", Value: []byte("false")},
		{Key: "stream_options"}, {Key: "kv_transfer_params", Value: prefillKVParams}}
	if _, ok := r.Field("max_completion_tokens"); ok {
		edits = append(edits, Edit{Key: "max_completion_tokens", Value: one})
	}
	data := r.AppendBody(nil, edits...)
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, base+path, bytes.NewReader(data))
	if err != nil {
		return nil, err
	}
	req.Header = upstreamHeader(in.Header)
	delete(req.Header, "Accept")
	resp, err := p.Client.Do(req)
	if err != nil {
		return nil, fmt.Errorf("prefill %s: %w", base, err)
	}
	defer resp.Body.Close()
	raw, err := io.ReadAll(io.LimitReader(resp.Body, 4<<20))
	if err != nil {
		return nil, fmt.Errorf("prefill %s: read: %w", base, err)
	}
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("prefill %s: status %d: %.200s", base, resp.StatusCode, raw)
	}
	var out struct {
		KVTransferParams json.RawMessage `json:"kv_transfer_params"`
		Usage            *struct {
			PromptTokens int `json:"prompt_tokens"`
			Details      *struct {
				CachedTokens int `json:"cached_tokens"`
			} `json:"prompt_tokens_details"`
		} `json:"usage"`
	}
	if err := json.Unmarshal(raw, &out); err != nil {
		return nil, fmt.Errorf("prefill %s: decode answer: %w", base, err)
	}
	if len(out.KVTransferParams) == 0 || string(out.KVTransferParams) == "null" {
		return nil, fmt.Errorf("prefill %s: answer has no kv_transfer_params", base)
	}
	res := &PrefillResult{KVTransferParams: out.KVTransferParams}
	if out.Usage != nil {
		res.PromptTokens = out.Usage.PromptTokens
		if out.Usage.Details != nil {
			res.CachedTokens = out.Usage.Details.CachedTokens
		}
	}
	return res, nil
}
