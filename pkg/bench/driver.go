package bench

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"mime"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/llmd-kn/llmd-kn/pkg/jsonstr"
	"github.com/llmd-kn/llmd-kn/pkg/tokenizer"
	"github.com/llmd-kn/llmd-kn/pkg/workload"
)

// API selects the OpenAI endpoint a run drives.
type API string

// APIs.
const (
	// APICompletions is /v1/completions (the default).
	APICompletions API = "completions"
	// APIChat is /v1/chat/completions, the prompt sent as one user message.
	APIChat API = "chat"
)

// PromptFormat says how prompts are sent.
type PromptFormat string

// Prompt formats.
const (
	// PromptTokenIDs sends the workload's token ids (`"prompt": [ids...]`),
	// which vLLM accepts on /v1/completions; lengths are then exact
	// whatever the server's tokenizer. The default for completions.
	PromptTokenIDs PromptFormat = "ids"
	// PromptText sends the ids decoded by pkg/tokenizer. A server using
	// that tokenizer (the simulator, the activator) sees the same ids; a
	// real model's tokenizer sees a different count. Chat always uses text.
	PromptText PromptFormat = "text"
)

// DefaultHardCap is the most requests Run keeps in flight when Config.HardCap
// is 0. Past it, requests are recorded as dropped (ErrDropped), never
// silently lost: an open-loop generator facing a stalled server would
// otherwise grow without bound.
const DefaultHardCap = 10000

// DefaultRequestTimeout is the per-request timeout when Config leaves it 0.
const DefaultRequestTimeout = 10 * time.Minute

// Config configures the real-time driver. The zero value of every field but
// URL and Model is a sensible default.
type Config struct {
	// URL is the endpoint. When its path is empty or "/", the API's path
	// (/v1/completions or /v1/chat/completions) is appended; otherwise it
	// is used as it is.
	URL string
	// Model is the "model" field of every request.
	Model string
	// API is APICompletions (default) or APIChat.
	API API
	// Prompt is PromptTokenIDs (default for completions) or PromptText
	// (default and only choice for chat).
	Prompt PromptFormat
	// NoIgnoreEOS leaves out `"ignore_eos": true`, for servers that reject
	// vLLM's extension; outputs may then be shorter than MaxTokens.
	NoIgnoreEOS bool
	// Header is added to every request (for example Authorization). It is
	// never written to a report.
	Header http.Header
	// MaxConcurrency bounds requests in flight: at the bound the generator
	// waits for one to finish, and the wait shows as lateness. 0 means
	// unlimited (up to HardCap). It must not exceed HardCap.
	MaxConcurrency int
	// HardCap is the safety bound on requests in flight beyond which
	// requests are dropped; 0 means DefaultHardCap.
	HardCap int
	// RequestTimeout bounds each request from send to the end of its
	// stream; 0 means DefaultRequestTimeout.
	RequestTimeout time.Duration
	// Client sends the requests; nil means a client made for benchmarking
	// (no proxy, no compression, enough idle connections for HardCap).
	Client *http.Client
	// Live, when set, is updated as the run goes (for progress display).
	Live *Live
}

// Result is a run of the real-time driver.
type Result struct {
	// Start is the wall-clock time of the run's time 0.
	Start time.Time
	// Duration is from time 0 until the last request ended.
	Duration time.Duration
	// Records has one entry per request the run reached, in workload
	// order.
	Records []Record
	// Interrupted is set when the context ended the run early: requests
	// not yet due then have no record, and those in flight are
	// ErrCanceled.
	Interrupted bool
	// MaxInFlight is the most requests that were in flight at once.
	MaxInFlight int
}

// EndpointURL returns the URL a run posts to: base with the API's path when
// base has no path of its own.
func EndpointURL(base string, api API) (string, error) {
	u, err := url.Parse(base)
	if err != nil {
		return "", fmt.Errorf("url %q: %w", base, err)
	}
	if u.Scheme != "http" && u.Scheme != "https" {
		return "", fmt.Errorf("url %q: scheme must be http or https", base)
	}
	if u.Host == "" {
		return "", fmt.Errorf("url %q: no host", base)
	}
	if u.Path == "" || u.Path == "/" {
		u.Path = "/v1/completions"
		if api == APIChat {
			u.Path = "/v1/chat/completions"
		}
	}
	return u.String(), nil
}

// validate checks cfg and fills in defaults.
func (cfg *Config) validate() error {
	if cfg.API == "" {
		cfg.API = APICompletions
	}
	if cfg.API != APICompletions && cfg.API != APIChat {
		return fmt.Errorf("api must be %q or %q, got %q", APICompletions, APIChat, cfg.API)
	}
	switch {
	case cfg.Prompt == "" && cfg.API == APIChat:
		cfg.Prompt = PromptText
	case cfg.Prompt == "":
		cfg.Prompt = PromptTokenIDs
	case cfg.Prompt != PromptTokenIDs && cfg.Prompt != PromptText:
		return fmt.Errorf("prompt format must be %q or %q, got %q", PromptTokenIDs, PromptText, cfg.Prompt)
	case cfg.Prompt == PromptTokenIDs && cfg.API == APIChat:
		return errors.New("chat requests carry text: token-id prompts need the completions API")
	}
	if cfg.Model == "" {
		return errors.New("model is required")
	}
	if cfg.HardCap == 0 {
		cfg.HardCap = DefaultHardCap
	}
	if cfg.HardCap < 0 {
		return fmt.Errorf("hard cap must be positive, got %d", cfg.HardCap)
	}
	if cfg.MaxConcurrency < 0 || cfg.MaxConcurrency > cfg.HardCap {
		return fmt.Errorf("max concurrency must be in [0, %d] (0: unlimited), got %d", cfg.HardCap, cfg.MaxConcurrency)
	}
	if cfg.RequestTimeout == 0 {
		cfg.RequestTimeout = DefaultRequestTimeout
	}
	if cfg.RequestTimeout < 0 {
		return fmt.Errorf("request timeout must be positive, got %s", cfg.RequestTimeout)
	}
	u, err := EndpointURL(cfg.URL, cfg.API)
	if err != nil {
		return err
	}
	cfg.URL = u
	if cfg.Client == nil {
		cfg.Client = NewClient(cfg.HardCap)
	}
	return nil
}

// NewClient returns an HTTP client suited to driving many streams at once:
// HTTP/1.1 (one connection per stream, as vLLM's benchmark client), no
// proxy, no compression, and an idle pool of maxConns connections so that
// connections are reused rather than reopened.
func NewClient(maxConns int) *http.Client {
	return &http.Client{Transport: &http.Transport{
		DialContext:         (&net.Dialer{Timeout: 30 * time.Second, KeepAlive: 30 * time.Second}).DialContext,
		MaxIdleConns:        maxConns,
		MaxIdleConnsPerHost: maxConns,
		IdleConnTimeout:     90 * time.Second,
		TLSHandshakeTimeout: 30 * time.Second,
		DisableCompression:  true,
	}}
}

// Run sends the requests of src to cfg.URL in real time, open loop: each is
// sent at its scheduled time whether or not earlier ones have finished
// (unless MaxConcurrency holds it back), each on its own goroutine, and it
// returns when all have ended. Cancelling ctx stops the run early; the
// records so far are still returned. The error is for a bad Config only.
func Run(ctx context.Context, cfg Config, src workload.Source) (*Result, error) {
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	d := &driver{cfg: cfg, live: cfg.Live}
	if d.live == nil {
		d.live = &Live{}
	}
	d.live.total.Store(int64(src.Len()))
	if cfg.MaxConcurrency > 0 {
		d.slots = make(chan struct{}, cfg.MaxConcurrency)
	}
	d.prefix, d.suffix = d.bodyParts()

	// Request bodies are made ahead of time by a goroutine of their own,
	// so that at a request's due time only the send remains: a 7,000-token
	// prompt takes 0.1–0.3 ms to render, which would otherwise count as
	// lateness and pile up when many requests are due at once.
	prep := make(chan prepared, prepareAhead)
	stopPrep := make(chan struct{})
	go d.prepare(src, prep, stopPrep)
	defer func() {
		close(stopPrep)
		for range prep { // let the preparer finish
		}
	}()
	first, more := <-prep

	var recs []*Record
	var wg sync.WaitGroup
	timer := time.NewTimer(0)
	<-timer.C
	start := time.Now()
	d.start = start
	d.live.start.Store(start.UnixNano())
	interrupted := false
schedule:
	for p := first; more; p, more = <-prep {
		r := p.r
		if wait := time.Until(start.Add(r.At)); wait > 0 {
			timer.Reset(wait)
			select {
			case <-timer.C:
			case <-ctx.Done():
				timer.Stop()
				interrupted = true
				break schedule
			}
		}
		if ctx.Err() != nil {
			interrupted = true
			break
		}
		rec := &Record{Index: r.Index, Scheduled: r.At, PromptLen: r.PromptLen, MaxTokens: r.MaxTokens}
		recs = append(recs, rec)
		d.live.scheduled.Add(1)
		if d.slots != nil {
			select {
			case d.slots <- struct{}{}:
			case <-ctx.Done():
				rec.Sent = time.Since(start)
				rec.Error, rec.Detail = ErrCanceled, "run interrupted while waiting for a concurrency slot"
				interrupted = true
				break schedule
			}
		}
		n := d.inFlight.Add(1)
		if n > int64(cfg.HardCap) {
			d.inFlight.Add(-1)
			if d.slots != nil {
				<-d.slots
			}
			rec.Sent = time.Since(start)
			rec.Error = ErrDropped
			rec.Detail = fmt.Sprintf("%d requests in flight: hard cap reached", cfg.HardCap)
			d.live.dropped.Add(1)
			d.pool.Put(p.b)
			continue
		}
		d.noteInFlight(n)
		wg.Add(1)
		go func() {
			defer wg.Done()
			d.do(ctx, r, rec, p.b)
			d.inFlight.Add(-1)
			d.live.inFlight.Add(-1)
			if d.slots != nil {
				<-d.slots
			}
		}()
	}
	wg.Wait()
	res := &Result{Start: start, Interrupted: interrupted, MaxInFlight: int(d.maxInFlight.Load())}
	res.Records = make([]Record, len(recs))
	for i, r := range recs {
		res.Records[i] = *r
		res.Duration = max(res.Duration, r.Sent+r.E2E)
	}
	return res, nil
}

type driver struct {
	cfg            Config
	live           *Live
	start          time.Time
	slots          chan struct{}
	inFlight       atomic.Int64
	maxInFlight    atomic.Int64
	prefix, suffix []byte // the request body around the prompt
	pool           sync.Pool
}

// noteInFlight records that a request was let in, n being in flight now.
func (d *driver) noteInFlight(n int64) {
	d.live.inFlight.Add(1)
	for {
		m := d.maxInFlight.Load()
		if n <= m || d.maxInFlight.CompareAndSwap(m, n) {
			return
		}
	}
}

// prepareAhead is how many requests the preparer keeps ready. It bounds the
// memory of prepared bodies (128 Mooncake prompts of ~15k tokens: ~13 MB).
const prepareAhead = 128

// prepared is a request with its body rendered.
type prepared struct {
	r workload.Request
	b *buffers
}

// prepare renders the bodies of src's requests in order into out, until src
// ends or stop is closed; it closes out.
func (d *driver) prepare(src workload.Source, out chan<- prepared, stop <-chan struct{}) {
	defer close(out)
	for {
		r, ok := src.Next()
		if !ok {
			return
		}
		b, _ := d.pool.Get().(*buffers)
		if b == nil {
			b = &buffers{read: make([]byte, 16<<10)}
		}
		b.ids = r.AppendPrompt(b.ids[:0])
		b.body = d.appendBody(b.body[:0], r, b.ids)
		select {
		case out <- prepared{r, b}:
		case <-stop:
			return
		}
	}
}

// buffers are one request's reusable memory.
type buffers struct {
	ids  []uint32
	body []byte
	read []byte
	sc   sseScanner
}

// bodyParts renders the parts of the request body that are the same for
// every request: the model before the prompt and the options after it.
func (d *driver) bodyParts() (prefix, suffix []byte) {
	prefix = append(prefix, `{"model":`...)
	prefix = jsonstr.Append(prefix, d.cfg.Model)
	if d.cfg.API == APIChat {
		prefix = append(prefix, `,"messages":[{"role":"user","content":`...)
		suffix = append(suffix, `}],"max_completion_tokens":`...)
	} else {
		prefix = append(prefix, `,"prompt":`...)
		suffix = append(suffix, `,"max_tokens":`...)
	}
	return prefix, suffix
}

func (d *driver) appendBody(dst []byte, r workload.Request, ids []uint32) []byte {
	dst = append(dst, d.prefix...)
	if d.cfg.Prompt == PromptText {
		dst = jsonstr.Append(dst, tokenizer.DecodeString(ids))
	} else {
		dst = append(dst, '[')
		for i, id := range ids {
			if i > 0 {
				dst = append(dst, ',')
			}
			dst = strconv.AppendUint(dst, uint64(id), 10)
		}
		dst = append(dst, ']')
	}
	dst = append(dst, d.suffix...)
	dst = strconv.AppendInt(dst, int64(r.MaxTokens), 10)
	dst = append(dst, `,"stream":true,"stream_options":{"include_usage":true}`...)
	if !d.cfg.NoIgnoreEOS {
		dst = append(dst, `,"ignore_eos":true`...)
	}
	return append(dst, '}')
}

// requestBody is the body of one request. The transport closes it when it
// has finished with it, which tells do when the buffer may be reused.
type requestBody struct {
	bytes.Reader
	closed atomic.Bool
}

func (b *requestBody) Close() error {
	b.closed.Store(true)
	return nil
}

// drainTimeout bounds the read, after `[DONE]`, of the end of a response,
// which lets the connection be reused.
const drainTimeout = time.Second

// do sends one request, whose body b holds, and fills rec.
func (d *driver) do(ctx context.Context, r workload.Request, rec *Record, b *buffers) {
	body := &requestBody{}
	body.Reset(b.body)

	rctx, cancel := context.WithTimeout(ctx, d.cfg.RequestTimeout)
	defer cancel()
	req, err := http.NewRequestWithContext(rctx, http.MethodPost, d.cfg.URL, body)
	if err != nil {
		rec.Error, rec.Detail = ErrProtocol, err.Error()
		return
	}
	req.ContentLength = int64(len(b.body))
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Accept", "text/event-stream")
	setHeader(req, d.cfg.Header)

	sent := time.Now()
	rec.Sent = sent.Sub(d.start)
	d.live.sent.Add(1)
	d.live.noteLate(rec.Sent - rec.Scheduled)
	defer func() {
		if rec.OK() {
			d.live.completed.Add(1)
		} else {
			d.live.failed.Add(1)
		}
		if body.closed.Load() {
			d.pool.Put(b)
		}
	}()

	resp, err := d.cfg.Client.Do(req)
	if err != nil {
		rec.E2E = time.Since(sent)
		rec.Error, rec.Detail = d.failure(ctx, rctx, ErrConnection, err)
		return
	}
	defer resp.Body.Close()
	rec.Status = resp.StatusCode
	if resp.StatusCode < 200 || resp.StatusCode > 299 {
		n, _ := io.ReadFull(resp.Body, b.read[:4096])
		rec.E2E = time.Since(sent)
		switch {
		case resp.StatusCode >= 500:
			rec.Error = ErrHTTP5xx
		case resp.StatusCode >= 400:
			rec.Error = ErrHTTP4xx
		default:
			rec.Error = ErrHTTPOther
		}
		rec.Detail = resp.Status
		if n > 0 {
			rec.Detail += ": " + errorMessage(b.read[:n])
		}
		return
	}
	if ct, _, _ := mime.ParseMediaType(resp.Header.Get("Content-Type")); ct == "application/json" {
		n, _ := io.ReadFull(resp.Body, b.read[:4096])
		rec.E2E = time.Since(sent)
		rec.Error = ErrProtocol
		rec.Detail = "answer is JSON, not an event stream: " + errorMessage(b.read[:n])
		return
	}

	d.readStream(ctx, rctx, resp.Body, b, r, rec, sent)
	if rec.OK() {
		// Read the end of the response so the connection can be reused,
		// but never wait long for it.
		t := time.AfterFunc(drainTimeout, cancel)
		_, _ = io.CopyBuffer(io.Discard, io.LimitReader(resp.Body, 1<<20), b.read)
		t.Stop()
	}
}

// readStream reads the event stream of a 2xx answer into rec.
func (d *driver) readStream(ctx, rctx context.Context, body io.Reader, b *buffers, r workload.Request, rec *Record, sent time.Time) {
	sc := &b.sc
	sc.reset(body, b.read)
	defer func() {
		// Keep a buffer the scanner had to grow for the next request,
		// unless one huge event made it too big to keep around.
		if cap(sc.buf) <= 1<<20 {
			b.read = sc.buf
		}
		if cap(sc.data) > 1<<20 {
			sc.data = nil
		}
		sc.r, sc.buf = nil, nil
	}()
	var last time.Time
	for {
		name, data, err := sc.next()
		if err != nil {
			rec.E2E = time.Since(sent)
			switch {
			case errors.Is(err, errEventTooLarge):
				rec.Error, rec.Detail = ErrProtocol, err.Error()
			default:
				what := "stream ended before [DONE]"
				if err != io.EOF {
					what += ": " + err.Error()
				}
				rec.Error, rec.Detail = d.failure(ctx, rctx, ErrStreamCut, errors.New(what))
			}
			return
		}
		at := sc.readAt
		if string(name) == "error" {
			rec.E2E = at.Sub(sent)
			rec.Error, rec.Detail = ErrStreamError, errorMessage(data)
			return
		}
		c := classify(data)
		switch {
		case c.done:
			rec.E2E = at.Sub(sent)
			return
		case c.err:
			rec.E2E = at.Sub(sent)
			rec.Error, rec.Detail = ErrStreamError, errorMessage(data)
			return
		}
		if c.content {
			if rec.Chunks == 0 {
				rec.TTFT = at.Sub(sent)
				// Room for the whole answer up to a bound: 10,000 streams
				// of 32k tokens must not reserve gigabytes up front.
				rec.ITL = make([]time.Duration, 0, min(max(r.MaxTokens-1, 0), 4096))
			} else {
				rec.ITL = append(rec.ITL, at.Sub(last))
			}
			last = at
			rec.Chunks++
			d.live.chunks.Add(1)
		}
		if c.usage {
			if p, n, cached, err := parseUsage(data); err == nil {
				rec.HasUsage = true
				rec.PromptTokens, rec.CompletionTokens, rec.CachedTokens = p, n, cached
			}
		}
	}
}

// failure classifies err, which ended a request, by what ended it: the run
// (canceled), the request's own timeout, or else kind.
func (d *driver) failure(ctx, rctx context.Context, kind ErrorKind, err error) (ErrorKind, string) {
	switch {
	case ctx.Err() != nil:
		return ErrCanceled, "run interrupted"
	case rctx.Err() != nil:
		return ErrTimeout, fmt.Sprintf("no complete answer within %s", d.cfg.RequestTimeout)
	}
	var ue *url.Error
	if errors.As(err, &ue) {
		err = ue.Err
	}
	return kind, truncate(err.Error(), 200)
}

// Live is a run's progress as it happens, safe for concurrent use; Run
// updates it and a progress display reads it with Snapshot.
type Live struct {
	total, start                                        atomic.Int64
	scheduled, sent, completed, failed, dropped, chunks atomic.Int64
	inFlight, lateMax                                   atomic.Int64
}

// LiveSnapshot is a reading of a Live.
type LiveSnapshot struct {
	// Total is the number of requests of the workload, -1 if unknown.
	Total int64
	// Elapsed is the time since the run started (0 before it starts).
	Elapsed                                                       time.Duration
	Scheduled, Sent, Completed, Failed, Dropped, InFlight, Chunks int64
	// LateMax is the largest lateness so far.
	LateMax time.Duration
}

// Snapshot reads l.
func (l *Live) Snapshot() LiveSnapshot {
	s := LiveSnapshot{
		Total:     l.total.Load(),
		Scheduled: l.scheduled.Load(),
		Sent:      l.sent.Load(),
		Completed: l.completed.Load(),
		Failed:    l.failed.Load(),
		Dropped:   l.dropped.Load(),
		InFlight:  l.inFlight.Load(),
		Chunks:    l.chunks.Load(),
		LateMax:   time.Duration(l.lateMax.Load()),
	}
	if st := l.start.Load(); st != 0 {
		s.Elapsed = time.Since(time.Unix(0, st))
	}
	return s
}

func (l *Live) noteLate(late time.Duration) {
	for {
		m := l.lateMax.Load()
		if int64(late) <= m || l.lateMax.CompareAndSwap(m, int64(late)) {
			return
		}
	}
}

// setHeader adds h to req. A Host entry becomes req.Host, the Host the
// request is sent with (net/http ignores Host in req.Header), so a run can
// name a virtual host such as a traffic tag's while it dials the URL's
// address.
func setHeader(req *http.Request, h http.Header) {
	for k, vs := range h {
		if k == "Host" {
			if len(vs) > 0 {
				req.Host = vs[len(vs)-1]
			}
			continue
		}
		req.Header[k] = vs
	}
}

// splitHeader parses "Name: value".
func splitHeader(s string) (string, string, bool) {
	k, v, ok := strings.Cut(s, ":")
	k = strings.TrimSpace(k)
	if !ok || k == "" || strings.ContainsAny(k, " \t") {
		return "", "", false
	}
	return http.CanonicalHeaderKey(k), strings.TrimSpace(v), true
}

// ParseHeaders turns "Name: value" strings into a header.
func ParseHeaders(list []string) (http.Header, error) {
	h := http.Header{}
	for _, s := range list {
		k, v, ok := splitHeader(s)
		if !ok {
			return nil, fmt.Errorf("header %q: want \"Name: value\"", s)
		}
		h.Add(k, v)
	}
	return h, nil
}
