package batch

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
)

// TierHeader is the header the activator reads a request's tier from.
const TierHeader = "X-Llm-D-Slo-Tier"

// Call is one OpenAI request sent on behalf of batch work.
type Call struct {
	Method string // GET or POST
	Path   string // /v1/chat/completions, /v1/completions, /v1/models
	Body   []byte
	Tier   string
	// Origin carries the headers that resolve the revision (Host and
	// Knative's revision headers) from the request that brought the work.
	Origin Origin
}

// Origin is what resolves the revision of batch work after its HTTP
// request is gone: kept with async work and with batch state.
type Origin struct {
	Host      string `json:"host,omitempty"`
	Revision  string `json:"revision,omitempty"`
	Namespace string `json:"namespace,omitempty"`
}

// Knative's revision headers (as the activator reads them).
const (
	revisionHeader  = "Knative-Serving-Revision"
	namespaceHeader = "Knative-Serving-Namespace"
)

// OriginOf keeps what resolves the revision of an inbound request.
func OriginOf(r *http.Request) Origin {
	return Origin{Host: r.Host, Revision: r.Header.Get(revisionHeader), Namespace: r.Header.Get(namespaceHeader)}
}

// Answer is a backend's reply.
type Answer struct {
	Status int
	Body   []byte
	// RetryAfter is the Retry-After header, if any.
	RetryAfter string
}

// Backend serves OpenAI requests.
type Backend interface {
	Do(ctx context.Context, c Call) (Answer, error)
}

// maxAnswerBytes bounds one answer held in memory (a non-streamed
// completion is small; 16 MiB is generous).
const maxAnswerBytes = 16 << 20

func newHTTPRequest(ctx context.Context, base string, c Call) (*http.Request, error) {
	method := c.Method
	if method == "" {
		method = http.MethodPost
	}
	var body io.Reader
	if c.Body != nil {
		body = bytes.NewReader(c.Body)
	}
	req, err := http.NewRequestWithContext(ctx, method, strings.TrimSuffix(base, "/")+c.Path, body)
	if err != nil {
		return nil, err
	}
	if c.Body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	if c.Tier != "" {
		req.Header.Set(TierHeader, c.Tier)
	}
	if c.Origin.Host != "" {
		req.Host = c.Origin.Host
	}
	if c.Origin.Revision != "" {
		req.Header.Set(revisionHeader, c.Origin.Revision)
		req.Header.Set(namespaceHeader, c.Origin.Namespace)
	}
	return req, nil
}

// HandlerBackend serves calls with an in-process http.Handler (the
// activator's own chain), so batch work takes the normal request path.
type HandlerBackend struct{ Handler http.Handler }

// Do implements Backend. A handler that aborts its answer (panics with
// http.ErrAbortHandler, as the activator does when an upstream fails
// mid-answer) is an error here, as a cut connection is to a client.
func (b HandlerBackend) Do(ctx context.Context, c Call) (a Answer, err error) {
	req, err := newHTTPRequest(ctx, "http://activator.internal", c)
	if err != nil {
		return Answer{}, err
	}
	req.RemoteAddr = "127.0.0.1:0"
	w := &recorder{header: http.Header{}, status: http.StatusOK}
	defer func() {
		if p := recover(); p != nil {
			if p != http.ErrAbortHandler {
				panic(p)
			}
			a, err = Answer{}, errors.New("the answer was aborted")
		}
	}()
	b.Handler.ServeHTTP(w, req)
	if w.over {
		return Answer{}, fmt.Errorf("answer over %d bytes", maxAnswerBytes)
	}
	return Answer{Status: w.status, Body: w.buf.Bytes(), RetryAfter: w.header.Get("Retry-After")}, nil
}

// recorder is a bounded in-memory ResponseWriter.
type recorder struct {
	header http.Header
	status int
	wrote  bool
	buf    bytes.Buffer
	over   bool
}

func (r *recorder) Header() http.Header { return r.header }
func (r *recorder) WriteHeader(code int) {
	if !r.wrote {
		r.status, r.wrote = code, true
	}
}
func (r *recorder) Write(p []byte) (int, error) {
	r.WriteHeader(http.StatusOK)
	if r.buf.Len()+len(p) > maxAnswerBytes {
		r.over = true
		return 0, fmt.Errorf("answer over %d bytes", maxAnswerBytes)
	}
	return r.buf.Write(p)
}
func (r *recorder) Flush() {}

// HTTPBackend serves calls over HTTP (an activator or an engine at URL).
type HTTPBackend struct {
	URL    string
	Client *http.Client // http.DefaultClient
}

// Do implements Backend.
func (b HTTPBackend) Do(ctx context.Context, c Call) (Answer, error) {
	req, err := newHTTPRequest(ctx, b.URL, c)
	if err != nil {
		return Answer{}, err
	}
	client := b.Client
	if client == nil {
		client = http.DefaultClient
	}
	resp, err := client.Do(req)
	if err != nil {
		return Answer{}, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, maxAnswerBytes+1))
	if err != nil {
		return Answer{}, err
	}
	if len(body) > maxAnswerBytes {
		return Answer{}, fmt.Errorf("answer over %d bytes", maxAnswerBytes)
	}
	return Answer{Status: resp.StatusCode, Body: body, RetryAfter: resp.Header.Get("Retry-After")}, nil
}

// servedModel asks the backend which model the origin's revision serves;
// exactly one is needed to fill in an omitted model.
func servedModel(ctx context.Context, be Backend, o Origin) (string, error) {
	a, err := be.Do(ctx, Call{Method: http.MethodGet, Path: "/v1/models", Origin: o})
	if err != nil {
		return "", fmt.Errorf("listing models: %w", err)
	}
	if a.Status != http.StatusOK {
		return "", fmt.Errorf("listing models: status %d", a.Status)
	}
	var list struct {
		Data []struct {
			ID string `json:"id"`
		} `json:"data"`
	}
	if err := json.Unmarshal(a.Body, &list); err != nil {
		return "", fmt.Errorf("listing models: %w", err)
	}
	switch len(list.Data) {
	case 0:
		return "", fmt.Errorf("model: omitted and no model is served here")
	case 1:
		return list.Data[0].ID, nil
	}
	ids := make([]string, len(list.Data))
	for i, m := range list.Data {
		ids[i] = m.ID
	}
	return "", fmt.Errorf("model: omitted, and this endpoint serves several (%s): name one", strings.Join(ids, ", "))
}
