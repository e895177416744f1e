package activator

import (
	"bytes"
	"encoding/json"
	"net/http"
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

// usageStripper relays an SSE stream, dropping the usage-only event the
// activator asked for on the client's behalf. It passes complete events
// through as they arrive and keeps an incomplete one until its end.
type usageStripper struct {
	http.ResponseWriter
	buf []byte
}

var sseEnd = []byte("\n\n")

func (s *usageStripper) Write(b []byte) (int, error) {
	s.buf = append(s.buf, b...)
	for {
		i := bytes.Index(s.buf, sseEnd)
		if i < 0 {
			return len(b), nil
		}
		ev := s.buf[:i+2]
		if !usageOnly(ev) {
			if _, err := s.ResponseWriter.Write(ev); err != nil {
				return 0, err
			}
		}
		s.buf = s.buf[i+2:]
	}
}

// close writes whatever incomplete event is left.
func (s *usageStripper) close() {
	if len(s.buf) > 0 {
		_, _ = s.ResponseWriter.Write(s.buf)
		s.buf = nil
	}
}

func (s *usageStripper) Flush() { _ = http.NewResponseController(s.ResponseWriter).Flush() }

func (s *usageStripper) Unwrap() http.ResponseWriter { return s.ResponseWriter }

// usageOnly reports whether an SSE event is the final usage chunk: empty
// choices and a usage object.
func usageOnly(ev []byte) bool {
	return bytes.Contains(ev, []byte(`"choices":[]`)) && bytes.Contains(ev, []byte(`"usage":{`))
}
