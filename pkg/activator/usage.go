package activator

import (
	"bytes"
	"encoding/json"
	"net/http"
	"strconv"
)

// askUsage makes a streaming request carry stream_options.include_usage, so
// that the activator learns its token counts (the autoscaler's feed and the
// cache accounting need them). It reports whether the client had not asked,
// in which case the usage-only event must not reach the client.
func askUsage(req *LLMRequest) (strip bool) {
	if !req.Stream {
		return false
	}
	opts := map[string]json.RawMessage{}
	if raw, ok := req.Fields["stream_options"]; ok && string(raw) != "null" {
		if json.Unmarshal(raw, &opts) != nil {
			return false // malformed: leave it for the engine to refuse
		}
	}
	var on bool
	if raw, ok := opts["include_usage"]; ok && json.Unmarshal(raw, &on) == nil && on {
		return false
	}
	opts["include_usage"] = json.RawMessage("true")
	b, _ := json.Marshal(opts)
	req.Fields["stream_options"] = b
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
}

var sseEnd = []byte("\n\n")

func (s *usageFilter) WriteHeader(code int) {
	if s.rewrite {
		s.Header().Del("Content-Length")
	}
	s.ResponseWriter.WriteHeader(code)
}

func (s *usageFilter) Write(b []byte) (int, error) {
	s.buf = append(s.buf, b...)
	if !s.streaming {
		if !s.rewrite {
			_, err := s.ResponseWriter.Write(s.buf)
			s.buf = s.buf[:0]
			return len(b), err
		}
		return len(b), nil
	}
	for {
		i := bytes.Index(s.buf, sseEnd)
		if i < 0 {
			return len(b), nil
		}
		ev := s.buf[:i+2]
		switch {
		case s.strip && usageOnly(ev):
		case s.rewrite && bytes.Contains(ev, []byte(`"usage":{`)):
			if _, err := s.ResponseWriter.Write(rewriteEvent(ev, s.cached)); err != nil {
				return 0, err
			}
		default:
			if _, err := s.ResponseWriter.Write(ev); err != nil {
				return 0, err
			}
		}
		s.buf = s.buf[i+2:]
	}
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

func (s *usageFilter) Flush() { _ = http.NewResponseController(s.ResponseWriter).Flush() }

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
