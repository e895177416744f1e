package bench

import (
	"bytes"
	"encoding/json"
	"errors"
	"io"
	"strconv"
	"time"
)

// The stream path runs once per chunk for every open stream, so it works on
// bytes: lines are cut with bytes.IndexByte, events are classified by
// looking for a few keys, and only the usage object (once a request) and
// error events (rare) go through encoding/json.

// maxEventBytes bounds one SSE line or event; a bigger one is a protocol
// error rather than unbounded memory.
const maxEventBytes = 8 << 20

var errEventTooLarge = errors.New("SSE event larger than 8 MiB")

// sseScanner splits a byte stream into server-sent events (the WHATWG
// event-stream format): lines end in LF, CRLF or CR; `data:` lines of one
// event are joined with LF; a blank line dispatches; comments and other
// fields are skipped except `event:`. At the end of the input an event
// whose last line was not followed by a blank line is still dispatched
// (servers that close right after `data: [DONE]` are common).
type sseScanner struct {
	r    io.Reader
	buf  []byte // buf[start:end] is unread input
	data []byte // the event being assembled
	// name is the event field of the event being assembled (usually
	// empty: vLLM and OpenAI send none).
	name                   []byte
	start, end             int
	hasData, skipLF, atEOF bool
	dispatched             bool // the last call returned an event
	err                    error
	// readAt is when the last Read that returned bytes returned: the
	// arrival time of the bytes that complete an event, since events are
	// returned from buffered bytes before reading more.
	readAt time.Time
	// clock is time.Now, replaceable in tests.
	clock func() time.Time
}

func (s *sseScanner) reset(r io.Reader, buf []byte) {
	*s = sseScanner{r: r, buf: buf[:cap(buf)], data: s.data[:0], name: s.name[:0], clock: s.clock}
	if s.clock == nil {
		s.clock = time.Now
	}
}

// next returns the next event's name and data, valid until the following
// call. At the end of the stream it returns io.EOF, or the read error.
func (s *sseScanner) next() (name, data []byte, err error) {
	if s.dispatched {
		s.name = s.name[:0]
		s.dispatched = false
	}
	for {
		line, ok, err := s.line()
		if err != nil {
			return nil, nil, err
		}
		if !ok {
			// End of input: dispatch what is pending if the input ended
			// cleanly, then report the end.
			if s.hasData && s.err == io.EOF {
				s.hasData, s.dispatched = false, true
				return s.name, s.data, nil
			}
			return nil, nil, s.err
		}
		if len(line) == 0 {
			if s.hasData {
				s.hasData, s.dispatched = false, true
				return s.name, s.data, nil
			}
			s.name = s.name[:0]
			continue
		}
		field, value := line, []byte(nil)
		if i := bytes.IndexByte(line, ':'); i >= 0 {
			field, value = line[:i], line[i+1:]
			if len(value) > 0 && value[0] == ' ' {
				value = value[1:]
			}
		}
		switch string(field) {
		case "data":
			if !s.hasData {
				s.hasData = true
				s.data = s.data[:0]
			} else {
				s.data = append(s.data, '\n')
			}
			if len(s.data)+len(value) > maxEventBytes {
				return nil, nil, errEventTooLarge
			}
			s.data = append(s.data, value...)
		case "event":
			s.name = append(s.name[:0], value...)
		}
		// Comments (an empty field), id, retry and unknown fields are
		// ignored, as the format says.
	}
}

// line returns the next line without its terminator; ok is false at the
// end of the input (s.err then says why). An unterminated last line counts
// as a line when the input ended cleanly (io.EOF), and is dropped when the
// read failed: a stream cut mid-line must not yield half an event.
func (s *sseScanner) line() (line []byte, ok bool, err error) {
	for {
		if s.skipLF && s.start < s.end {
			if s.buf[s.start] == '\n' {
				s.start++
			}
			s.skipLF = false
		}
		rest := s.buf[s.start:s.end]
		if i := bytes.IndexAny(rest, "\r\n"); i >= 0 {
			s.start += i + 1
			s.skipLF = rest[i] == '\r'
			return rest[:i], true, nil
		}
		if s.atEOF {
			if len(rest) > 0 && s.err == io.EOF {
				s.start = s.end
				return rest, true, nil
			}
			return nil, false, nil
		}
		if len(rest) >= maxEventBytes {
			return nil, false, errEventTooLarge
		}
		// Make room: move the partial line to the front, grow if full.
		if s.start > 0 {
			n := copy(s.buf, rest)
			s.start, s.end = 0, n
		}
		if s.end == len(s.buf) {
			nb := make([]byte, max(2*len(s.buf), 4096))
			copy(nb, s.buf[:s.end])
			s.buf = nb
		}
		n, err := s.r.Read(s.buf[s.end:])
		if n > 0 {
			s.end += n
			s.readAt = s.clock()
		}
		if err != nil {
			s.atEOF = true
			s.err = err
		}
	}
}

// chunk is what an event's data means to the driver.
type chunk struct {
	done    bool // `[DONE]`
	content bool // carries generated text
	usage   bool // carries a usage object
	err     bool // is an error report
}

var (
	keyText      = []byte(`"text"`)
	keyContent   = []byte(`"content"`)
	keyReasoning = []byte(`"reasoning_content"`)
	keyReason2   = []byte(`"reasoning"`)
	keyUsage     = []byte(`"usage"`)
	keyError     = []byte(`"error"`)
	keyObject    = []byte(`"object"`)
	doneData     = []byte("[DONE]")
)

// classify looks at an event's data without decoding it. It relies on a
// property of JSON: a quote inside a string is escaped, so `"key"` followed
// by a colon can only be an object key, never string content.
func classify(data []byte) chunk {
	data = bytes.TrimSpace(data)
	if bytes.Equal(data, doneData) {
		return chunk{done: true}
	}
	var c chunk
	c.content = hasNonEmptyString(data, keyText) || hasNonEmptyString(data, keyContent) ||
		hasNonEmptyString(data, keyReasoning) || hasNonEmptyString(data, keyReason2)
	if v := valueAfterKey(data, keyUsage); len(v) > 0 && v[0] == '{' {
		c.usage = true
	}
	if c.content {
		return c // an event that carries text is no error report
	}
	if v := valueAfterKey(data, keyError); len(v) > 0 && (v[0] == '{' || v[0] == '"') {
		c.err = true
	} else if v := valueAfterKey(data, keyObject); bytes.HasPrefix(v, []byte(`"error"`)) {
		c.err = true
	}
	return c
}

// valueAfterKey returns the data following the first occurrence of key used
// as an object key (after the colon and any whitespace), or nil.
func valueAfterKey(data, key []byte) []byte {
	for off := 0; ; {
		i := bytes.Index(data[off:], key)
		if i < 0 {
			return nil
		}
		rest := skipSpace(data[off+i+len(key):])
		off += i + len(key)
		if len(rest) > 0 && rest[0] == ':' {
			return skipSpace(rest[1:])
		}
	}
}

// hasNonEmptyString reports whether some occurrence of key is an object key
// whose value is a non-empty string.
func hasNonEmptyString(data, key []byte) bool {
	for off := 0; ; {
		i := bytes.Index(data[off:], key)
		if i < 0 {
			return false
		}
		off += i + len(key)
		rest := skipSpace(data[off:])
		if len(rest) == 0 || rest[0] != ':' {
			continue
		}
		rest = skipSpace(rest[1:])
		if len(rest) >= 2 && rest[0] == '"' && rest[1] != '"' {
			return true
		}
	}
}

func skipSpace(b []byte) []byte {
	for len(b) > 0 && (b[0] == ' ' || b[0] == '\t' || b[0] == '\n' || b[0] == '\r') {
		b = b[1:]
	}
	return b
}

// objectEnd returns the length of the JSON object or array at the start of
// b, or -1 if it is not closed. Strings are skipped, so braces inside them do
// not count.
func objectEnd(b []byte) int {
	depth := 0
	for i := 0; i < len(b); i++ {
		switch b[i] {
		case '"':
			for i++; i < len(b) && b[i] != '"'; i++ {
				if b[i] == '\\' {
					i++
				}
			}
		case '{', '[':
			depth++
		case '}', ']':
			depth--
			if depth == 0 {
				return i + 1
			}
		}
	}
	return -1
}

// usage is the OpenAI usage object.
type usage struct {
	PromptTokens        int `json:"prompt_tokens"`
	CompletionTokens    int `json:"completion_tokens"`
	PromptTokensDetails *struct {
		CachedTokens int `json:"cached_tokens"`
	} `json:"prompt_tokens_details"`
}

// parseUsage decodes the usage object of an event that classify found one
// in, decoding that object alone rather than the whole event.
func parseUsage(data []byte) (prompt, completion, cached int, err error) {
	v := valueAfterKey(data, keyUsage)
	n := objectEnd(v)
	if n < 0 {
		return 0, 0, 0, errors.New("unterminated usage object")
	}
	var u usage
	if err := json.Unmarshal(v[:n], &u); err != nil {
		return 0, 0, 0, err
	}
	if u.PromptTokensDetails != nil {
		cached = u.PromptTokensDetails.CachedTokens
	}
	return u.PromptTokens, u.CompletionTokens, cached, nil
}

// errorMessage extracts a readable message from an error body or event:
// OpenAI's {"error": {"message": ...}}, vLLM's older {"object": "error",
// "message": ...} or {"error": "..."}; otherwise the text itself, cut short.
func errorMessage(data []byte) string {
	var e struct {
		Message string          `json:"message"`
		Error   json.RawMessage `json:"error"`
	}
	if json.Unmarshal(data, &e) == nil {
		if e.Message != "" {
			return truncate(e.Message, 200)
		}
		var inner struct {
			Message string `json:"message"`
			Code    any    `json:"code"`
		}
		if json.Unmarshal(e.Error, &inner) == nil && inner.Message != "" {
			return truncate(inner.Message, 200)
		}
		var s string
		if json.Unmarshal(e.Error, &s) == nil && s != "" {
			return truncate(s, 200)
		}
	}
	return truncate(string(bytes.TrimSpace(data)), 200)
}

// truncate cuts s to at most n bytes on a rune boundary, marking the cut,
// and quotes it if it has control characters.
func truncate(s string, n int) string {
	if len(s) > n {
		i := n
		for i > 0 && s[i]&0xC0 == 0x80 {
			i--
		}
		s = s[:i] + "…"
	}
	for _, c := range []byte(s) {
		if c < 0x20 {
			return strconv.Quote(s)
		}
	}
	return s
}
