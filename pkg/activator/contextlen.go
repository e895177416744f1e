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
//
// It also keeps the names its pods list as LoRA adapters (a /v1/models
// entry with a parent, as vLLM lists --lora-modules): a request for one is
// routed on the adapter's own blocks (router.Request.LoRA), never the base
// model's.
type modelLen struct {
	learned  atomic.Int64
	adapters atomic.Pointer[map[string]bool]
}

// maxAdapters bounds the adapter names a revision keeps (a pod's answer is
// outside input).
const maxAdapters = 1024

// observeAdapters adds the names a pod listed as adapters.
func (m *modelLen) observeAdapters(names []string) {
	for {
		cur := m.adapters.Load()
		var old map[string]bool
		if cur != nil {
			old = *cur
		}
		next := make(map[string]bool, len(old)+len(names))
		for k := range old {
			next[k] = true
		}
		for _, n := range names {
			if len(next) >= maxAdapters {
				break
			}
			if n != "" && len(n) <= 256 {
				next[n] = true
			}
		}
		if len(next) == len(old) {
			return
		}
		if m.adapters.CompareAndSwap(cur, &next) {
			return
		}
	}
}

// isAdapter reports whether a pod listed model as a LoRA adapter.
func (m *modelLen) isAdapter(model string) bool {
	cur := m.adapters.Load()
	return cur != nil && (*cur)[model]
}

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

// Models is what a vLLM pod's /v1/models says of the revision's models.
type Models struct {
	// MaxModelLen is the smallest max_model_len of the models it serves
	// (0 when none says).
	MaxModelLen int
	// Adapters are the LoRA adapters it serves: entries with a parent (the
	// base model), as vLLM lists --lora-modules.
	Adapters []string
}

// FetchModels reads a vLLM pod's /v1/models.
func FetchModels(ctx context.Context, c *http.Client, base string) (Models, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, strings.TrimSuffix(base, "/")+"/v1/models", nil)
	if err != nil {
		return Models{}, err
	}
	resp, err := c.Do(req)
	if err != nil {
		return Models{}, fmt.Errorf("GET /v1/models: %w", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return Models{}, fmt.Errorf("GET /v1/models: %s", resp.Status)
	}
	var list struct {
		Data []struct {
			ID          string  `json:"id"`
			Parent      *string `json:"parent"`
			MaxModelLen int     `json:"max_model_len"`
		} `json:"data"`
	}
	if err := json.NewDecoder(io.LimitReader(resp.Body, maxModelLenBody)).Decode(&list); err != nil {
		return Models{}, fmt.Errorf("GET /v1/models: %w", err)
	}
	var out Models
	for _, m := range list.Data {
		if m.MaxModelLen > 0 && (out.MaxModelLen == 0 || m.MaxModelLen < out.MaxModelLen) {
			out.MaxModelLen = m.MaxModelLen
		}
		if m.Parent != nil && *m.Parent != "" && m.ID != "" && m.ID != *m.Parent {
			out.Adapters = append(out.Adapters, m.ID)
		}
	}
	return out, nil
}

// FetchMaxModelLen reads a vLLM pod's /v1/models and returns the smallest
// max_model_len of the models it serves (0 when none says).
func FetchMaxModelLen(ctx context.Context, c *http.Client, base string) (int, error) {
	m, err := FetchModels(ctx, c, base)
	return m.MaxModelLen, err
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
	ms, err := FetchModels(sctx, rev.a.opts.ScrapeClient, p.spec.URL)
	if err != nil {
		return
	}
	p.modelLenKnown = true
	rev.modelLen.observe(ms.MaxModelLen)
	rev.modelLen.observeAdapters(ms.Adapters)
}
