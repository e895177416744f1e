package activator

import (
	"bytes"
	"encoding/json"
	"net/http"
	"strconv"

	"github.com/llmd-kn/llmd-kn/pkg/jsonscan"
)

// askUsage makes a streaming request carry stream_options.include_usage, so
// that the activator learns its token counts (the autoscaler's feed and the
// cache accounting need them). It reports whether the client had not asked,
// in which case the usage-only event must not reach the client.
func askUsage(req *LLMRequest) (strip bool) {
	if !req.Stream {
		return false
	}
	raw, ok := req.Field("stream_options")
	if !ok || string(raw) == "null" {
		req.Set("stream_options", []byte(`{"include_usage":true}`))
		return true
	}
	if raw[0] != '{' {
		return false // malformed: leave it for the engine to refuse
	}
	at, n := [2]int{-1, -1}, 0
	_, err := jsonscan.Object(raw, 0, func(m jsonscan.Member) (int, error) {
		n++
		end, err := jsonscan.Skip(raw, m.Value)
		if m.Name() == "include_usage" {
			at = [2]int{m.Value, end}
		}
		return end, err
	})
	if err != nil {
		return false
	}
	var opts []byte
	switch {
	case at[0] >= 0 && string(raw[at[0]:at[1]]) == "true":
		return false
	case at[0] >= 0:
		opts = append(append(append(opts, raw[:at[0]]...), "true"...), raw[at[1]:]...)
	default:
		opts = append(opts, `{"include_usage":true`...)
		if n > 0 {
			opts = append(opts, ',')
		}
		opts = append(opts, raw[1:]...)
	}
	req.Set("stream_options", opts)
	return true
}

// usageFilter relays an answer while fixing its usage for the client: in a
// stream it drops the usage-only event the activator asked for on the
// client's behalf (strip), and with rewrite it reports cached as
// prompt_tokens_details.cached_tokens (P/D: the prefill pod's cache hits,
// not the decode pod's count of the KV it received). Stream events pass
// through as soon as they are complete; a non-streaming body is held until
// its end (it is small) so that its usage can be rewritten.
type usageFilter struct {
	http.ResponseWriter
	streaming bool
	strip     bool
	rewrite   bool
	cached    int
	buf       []byte
	rc        *http.ResponseController
}

var sseEnd = []byte("\n\n")

func (s *usageFilter) WriteHeader(code int) {
	if s.rewrite {
		s.Header().Del("Content-Length")
	}
	s.ResponseWriter.WriteHeader(code)
}

func (s *usageFilter) Write(b []byte) (int, error) {
	if !s.streaming {
		if s.rewrite {
			s.buf = append(s.buf, b...) // held to its end
			return len(b), nil
		}
		return s.ResponseWriter.Write(b)
	}
	if !s.strip && !s.rewrite {
		return s.ResponseWriter.Write(b)
	}
	if len(s.buf) > 0 {
		// An event began in an earlier write (rare: reads end on event
		// boundaries): go through the held bytes until they drain.
		s.buf = append(s.buf, b...)
		if err := s.relay(); err != nil {
			return 0, err
		}
		return len(b), nil
	}
	// Complete events are relayed from b itself; only an incomplete tail
	// is copied.
	n := len(b)
	for len(b) > 0 {
		i := bytes.Index(b, sseEnd)
		if i < 0 {
			s.buf = append(s.buf, b...)
			break
		}
		if err := s.event(b[:i+2]); err != nil {
			return 0, err
		}
		b = b[i+2:]
	}
	return n, nil
}

// relay writes the complete events held in s.buf and keeps the rest.
func (s *usageFilter) relay() error {
	rest := s.buf
	for {
		i := bytes.Index(rest, sseEnd)
		if i < 0 {
			break
		}
		if err := s.event(rest[:i+2]); err != nil {
			return err
		}
		rest = rest[i+2:]
	}
	s.buf = append(s.buf[:0], rest...)
	return nil
}

// event relays one complete event: dropped if it is the usage-only event
// the client did not ask for, its usage rewritten under P/D.
func (s *usageFilter) event(ev []byte) error {
	var err error
	switch {
	case s.strip && usageOnly(ev):
	case s.rewrite && bytes.Contains(ev, []byte(`"usage":{`)):
		_, err = s.ResponseWriter.Write(rewriteEvent(ev, s.cached))
	default:
		_, err = s.ResponseWriter.Write(ev)
	}
	return err
}

// close writes whatever is left: an incomplete event, or the held body.
func (s *usageFilter) close() {
	if len(s.buf) == 0 {
		return
	}
	if !s.streaming && s.rewrite {
		s.buf = rewriteUsage(s.buf, s.cached)
	}
	_, _ = s.ResponseWriter.Write(s.buf)
	s.buf = nil
}

func (s *usageFilter) Flush() {
	if s.rc == nil {
		s.rc = http.NewResponseController(s.ResponseWriter)
	}
	_ = s.rc.Flush()
}

func (s *usageFilter) Unwrap() http.ResponseWriter { return s.ResponseWriter }

// usageOnly reports whether an SSE event is the final usage chunk: empty
// choices and a usage object.
func usageOnly(ev []byte) bool {
	return bytes.Contains(ev, []byte(`"choices":[]`)) && bytes.Contains(ev, []byte(`"usage":{`))
}

// rewriteEvent rewrites the usage in one "data: {...}" SSE event.
func rewriteEvent(ev []byte, cached int) []byte {
	data, ok := bytes.CutPrefix(bytes.TrimSpace(ev), []byte("data:"))
	if !ok {
		return ev
	}
	out := append([]byte("data: "), rewriteUsage(bytes.TrimSpace(data), cached)...)
	return append(out, sseEnd...)
}

// rewriteUsage sets usage.prompt_tokens_details.cached_tokens in a JSON
// object; anything it cannot parse is returned unchanged.
func rewriteUsage(doc []byte, cached int) []byte {
	var obj map[string]json.RawMessage
	if json.Unmarshal(doc, &obj) != nil {
		return doc
	}
	var usage map[string]json.RawMessage
	if json.Unmarshal(obj["usage"], &usage) != nil || usage == nil {
		return doc
	}
	details := map[string]json.RawMessage{}
	_ = json.Unmarshal(usage["prompt_tokens_details"], &details)
	if details == nil {
		details = map[string]json.RawMessage{}
	}
	details["cached_tokens"] = json.RawMessage(strconv.Itoa(cached))
	usage["prompt_tokens_details"], _ = json.Marshal(details)
	obj["usage"], _ = json.Marshal(usage)
	out, err := json.Marshal(obj)
	if err != nil {
		return doc
	}
	return out
}
