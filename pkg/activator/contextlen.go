package activator

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strings"
	"sync/atomic"
	"time"
)

// The context length (issue 17, failure 7): a prompt longer than the
// model's max_model_len is refused by the engine anyway; refused here,
// before the request counts as load, it never pokes the autoscaler nor
// shows as arrived prompt tokens (a 3,000,001-token prompt used to scale
// the quick start to 29 pods before the pod refused it).

// modelLen is a revision's max_model_len: the configured one, else the
// smallest any of its pods reported in /v1/models (kept after the pods go,
// so that it holds across scale to zero). Zero: unknown, nothing checked.
type modelLen struct{ learned atomic.Int64 }

// observe records a pod's max_model_len.
func (m *modelLen) observe(n int) {
	if n <= 0 {
		return
	}
	for {
		cur := m.learned.Load()
		if cur != 0 && cur <= int64(n) {
			return
		}
		if m.learned.CompareAndSwap(cur, int64(n)) {
			return
		}
	}
}

// maxModelLen is the revision's context length (0: unknown).
func (rev *revision) maxModelLen() int {
	if n := rev.config().MaxModelLen; n > 0 {
		return n
	}
	return int(rev.modelLen.learned.Load())
}

// contextLengthError is vLLM's 400 for a request over the context length.
func contextLengthError(maxLen, prompt, completion int) error {
	return bad("This model's maximum context length is %d tokens. However, you requested %d tokens (%d in the messages, %d in the completion). Please reduce the length of the messages or completion.",
		maxLen, prompt+completion, prompt, completion)
}

// checkContext refuses a request whose prompt and max_tokens exceed the
// revision's max_model_len, before it is counted or queued.
func (a *Activator) checkContext(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		c := callOf(r)
		if n := c.rev.maxModelLen(); n > 0 && len(c.req.Tokens)+max(c.req.MaxTokens, 0) > n {
			c.code = http.StatusBadRequest
			a.metrics.Requests.WithLabelValues(c.rev.key.String(), c.tier.Name, "400").Inc()
			a.fail(w, contextLengthError(n, len(c.req.Tokens), max(c.req.MaxTokens, 0)))
			return
		}
		next.ServeHTTP(w, r)
	})
}

// modelsProbeInterval is how often a pod whose /v1/models could not be
// read is asked again.
const modelsProbeInterval = 5 * time.Second

// maxModelLenBody bounds the /v1/models answer read.
const maxModelLenBody = 1 << 20

// FetchMaxModelLen reads a vLLM pod's /v1/models and returns the smallest
// max_model_len of the models it serves (0 when none says).
func FetchMaxModelLen(ctx context.Context, c *http.Client, base string) (int, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, strings.TrimSuffix(base, "/")+"/v1/models", nil)
	if err != nil {
		return 0, err
	}
	resp, err := c.Do(req)
	if err != nil {
		return 0, fmt.Errorf("GET /v1/models: %w", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return 0, fmt.Errorf("GET /v1/models: %s", resp.Status)
	}
	var list struct {
		Data []struct {
			MaxModelLen int `json:"max_model_len"`
		} `json:"data"`
	}
	if err := json.NewDecoder(io.LimitReader(resp.Body, maxModelLenBody)).Decode(&list); err != nil {
		return 0, fmt.Errorf("GET /v1/models: %w", err)
	}
	n := 0
	for _, m := range list.Data {
		if m.MaxModelLen > 0 && (n == 0 || m.MaxModelLen < n) {
			n = m.MaxModelLen
		}
	}
	return n, nil
}

// learnModelLen asks a healthy pod for its max_model_len until it answers
// once (at most every modelsProbeInterval).
func (rev *revision) learnModelLen(ctx context.Context, p *pod) {
	now := rev.a.opts.Now()
	if p.modelLenKnown || now.Sub(p.modelLenAsked) < modelsProbeInterval {
		return
	}
	p.modelLenAsked = now
	sctx, cancel := context.WithTimeout(ctx, scrapeTimeout)
	defer cancel()
	n, err := FetchMaxModelLen(sctx, rev.a.opts.ScrapeClient, p.spec.URL)
	if err != nil {
		return
	}
	p.modelLenKnown = true
	rev.modelLen.observe(n)
}
