package activator

import (
	"bytes"
	"strconv"
	"time"

	"github.com/llmd-kn/llmd-kn/pkg/jsonscan"
)

// Usage is the OpenAI usage block of an answer.
type Usage struct {
	PromptTokens     int `json:"prompt_tokens"`
	CompletionTokens int `json:"completion_tokens"`
	TotalTokens      int `json:"total_tokens"`
	Details          *struct {
		CachedTokens int `json:"cached_tokens"`
	} `json:"prompt_tokens_details,omitempty"`
}

// CachedTokens returns prompt_tokens_details.cached_tokens, or 0.
func (u *Usage) CachedTokens() int {
	if u == nil || u.Details == nil {
		return 0
	}
	return u.Details.CachedTokens
}

// Meter watches an answer pass through the proxy and measures it: time to
// first byte, SSE events and their timing, and the usage block (the last
// SSE event that carries one, or the JSON body). It implements Observer.
type Meter struct {
	now       func() time.Time
	start     time.Time
	code      int
	first     time.Time
	last      time.Time
	events    int
	usage     *Usage
	line      []byte
	body      *buffer
	streaming bool
}

const maxMeteredBody = 1 << 20

// NewMeter starts measuring at start; now is the clock (time.Now in
// production).
func NewMeter(start time.Time, streaming bool, now func() time.Time) *Meter {
	return &Meter{now: now, start: start, streaming: streaming}
}

// Status records the upstream status code.
func (m *Meter) Status(code int) { m.code = code }

// Chunk records a piece of the body. A non-streamed answer is kept (in a
// pooled buffer, up to 1 MiB) for its usage; a stream is read line by line
// as it passes, a line copied only when it spans two chunks.
func (m *Meter) Chunk(b []byte) {
	t := m.now()
	if m.first.IsZero() {
		m.first = t
	}
	m.last = t
	if !m.streaming {
		if m.body == nil {
			m.body = getBuffer()
		}
		if len(m.body.b)+len(b) <= maxMeteredBody {
			m.body.b = append(m.body.b, b...)
		}
		return
	}
	for len(b) > 0 {
		i := bytes.IndexByte(b, '\n')
		if i < 0 {
			if len(m.line)+len(b) <= maxMeteredBody {
				m.line = append(m.line, b...)
			}
			return
		}
		if len(m.line) == 0 {
			m.event(b[:i])
		} else {
			m.line = append(m.line, b[:i]...)
			m.event(m.line)
			m.line = m.line[:0]
		}
		b = b[i+1:]
	}
}

func (m *Meter) event(line []byte) {
	data, ok := bytes.CutPrefix(line, []byte("data:"))
	if !ok {
		return
	}
	data = bytes.TrimSpace(data)
	if len(data) == 0 || bytes.Equal(data, []byte("[DONE]")) {
		return
	}
	m.events++
	// Only the events that carry a usage object are parsed: with
	// include_usage, the last one.
	if bytes.Contains(data, []byte(`"usage":{`)) || bytes.Contains(data, []byte(`"usage": {`)) {
		if u := usageOf(data); u != nil {
			m.usage = u
		}
	}
}

// usageOf reads the usage object of an answer or a stream event (nil when
// it has none or is not JSON), skipping everything else without decoding it.
func usageOf(doc []byte) *Usage {
	i := jsonscan.Space(doc, 0)
	var u *Usage
	_, err := jsonscan.Object(doc, i, func(f jsonscan.Member) (int, error) {
		if string(f.Key) != "usage" || doc[f.Value] != '{' {
			return jsonscan.Skip(doc, f.Value)
		}
		u = &Usage{}
		return jsonscan.Object(doc, f.Value, func(g jsonscan.Member) (int, error) {
			switch string(g.Key) {
			case "prompt_tokens":
				return intField(doc, g.Value, &u.PromptTokens)
			case "completion_tokens":
				return intField(doc, g.Value, &u.CompletionTokens)
			case "total_tokens":
				return intField(doc, g.Value, &u.TotalTokens)
			case "prompt_tokens_details":
				if doc[g.Value] != '{' {
					return jsonscan.Skip(doc, g.Value)
				}
				u.Details = &struct {
					CachedTokens int `json:"cached_tokens"`
				}{}
				return jsonscan.Object(doc, g.Value, func(h jsonscan.Member) (int, error) {
					if string(h.Key) == "cached_tokens" {
						return intField(doc, h.Value, &u.Details.CachedTokens)
					}
					return jsonscan.Skip(doc, h.Value)
				})
			}
			return jsonscan.Skip(doc, g.Value)
		})
	})
	if err != nil {
		return nil
	}
	return u
}

// intField reads a non-negative integer count; anything else leaves *dst
// alone.
func intField(doc []byte, v int, dst *int) (int, error) {
	end, err := jsonscan.Skip(doc, v)
	if err == nil {
		if n, perr := strconv.Atoi(string(doc[v:end])); perr == nil && n >= 0 {
			*dst = n
		}
	}
	return end, err
}

// Result is what the meter measured once the answer is complete.
type Result struct {
	Code   int
	TTFB   time.Duration // first body byte after start (TTFT for a stream)
	E2E    time.Duration
	Events int
	Usage  *Usage
	// Streaming answers have a TTFT and a TPOT; for the others TTFB is
	// the whole generation.
	Streaming bool
}

// Finish returns the measurements.
func (m *Meter) Finish() Result {
	r := Result{Code: m.code, Events: m.events, Streaming: m.streaming}
	end := m.now()
	r.E2E = end.Sub(m.start)
	if !m.first.IsZero() {
		r.TTFB = m.first.Sub(m.start)
	}
	if m.body != nil {
		m.usage = usageOf(m.body.b)
		m.body.release()
		m.body = nil
	}
	r.Usage = m.usage
	return r
}

// TPOT is the mean time per output token after the first. Without a usage
// block (a stream whose client did not ask for include_usage) each SSE
// event is taken as one token, which is exact for vLLM's default streaming.
func (r Result) TPOT() (time.Duration, bool) {
	n := r.Events
	if r.Usage != nil {
		n = r.Usage.CompletionTokens
	}
	if !r.Streaming || n < 2 || r.TTFB == 0 {
		return 0, false
	}
	return (r.E2E - r.TTFB) / time.Duration(n-1), true
}
