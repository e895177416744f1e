package bench

import (
	"bytes"
	"errors"
	"io"
	"slices"
	"strings"
	"testing"
)

// partsReader returns its parts one Read at a time, as a network would.
type partsReader struct {
	parts []string
	err   error // returned after the parts; io.EOF when nil
}

func (r *partsReader) Read(p []byte) (int, error) {
	for len(r.parts) > 0 && r.parts[0] == "" {
		r.parts = r.parts[1:]
	}
	if len(r.parts) == 0 {
		if r.err != nil {
			return 0, r.err
		}
		return 0, io.EOF
	}
	n := copy(p, r.parts[0])
	r.parts[0] = r.parts[0][n:]
	return n, nil
}

type event struct{ name, data string }

// scanAll reads every event of r with a small initial buffer, so that
// growing is exercised too.
func scanAll(r io.Reader) ([]event, error) {
	var s sseScanner
	s.reset(r, make([]byte, 8))
	var evs []event
	for {
		name, data, err := s.next()
		if err != nil {
			return evs, err
		}
		evs = append(evs, event{string(name), string(data)})
	}
}

func TestSSEScanner(t *testing.T) {
	tests := []struct {
		name  string
		parts []string
		err   error
		want  []event
		// wantErr is the error scanning ends with.
		wantErr error
	}{
		{
			name:    "vLLM stream",
			parts:   []string{"data: {\"a\":1}\n\ndata: [DONE]\n\n"},
			want:    []event{{"", `{"a":1}`}, {"", "[DONE]"}},
			wantErr: io.EOF,
		},
		{
			name:    "split everywhere",
			parts:   []string{"da", "ta", ": {", "\"a\":1}", "\n", "\nd", "ata: [DONE]\n", "\n"},
			want:    []event{{"", `{"a":1}`}, {"", "[DONE]"}},
			wantErr: io.EOF,
		},
		{
			name:    "CRLF split between CR and LF",
			parts:   []string{"data: x\r", "\n\r", "\ndata: y\r\n\r\n"},
			want:    []event{{"", "x"}, {"", "y"}},
			wantErr: io.EOF,
		},
		{
			name:    "bare CR",
			parts:   []string{"data: x\r\rdata: y\r\r"},
			want:    []event{{"", "x"}, {"", "y"}},
			wantErr: io.EOF,
		},
		{
			name:    "multi-line data, comments, id and retry ignored",
			parts:   []string{": keep-alive\n\nid: 7\nretry: 10\ndata: a\ndata:b\ndata\n\n"},
			want:    []event{{"", "a\nb\n"}},
			wantErr: io.EOF,
		},
		{
			name:    "event name applies to one event",
			parts:   []string{"event: error\ndata: {\"error\":\"x\"}\n\ndata: y\n\n"},
			want:    []event{{"error", `{"error":"x"}`}, {"", "y"}},
			wantErr: io.EOF,
		},
		{
			name:    "DONE without trailing newline at clean EOF",
			parts:   []string{"data: a\n\ndata: [DONE]"},
			want:    []event{{"", "a"}, {"", "[DONE]"}},
			wantErr: io.EOF,
		},
		{
			name:    "cut mid-line drops the half event",
			parts:   []string{"data: a\n\ndata: {\"choices\":[{\"text\":\"b"},
			err:     io.ErrUnexpectedEOF,
			want:    []event{{"", "a"}},
			wantErr: io.ErrUnexpectedEOF,
		},
		{
			name:    "cut after a data line but before the blank line",
			parts:   []string{"data: a\n\ndata: b\n"},
			err:     io.ErrUnexpectedEOF,
			want:    []event{{"", "a"}},
			wantErr: io.ErrUnexpectedEOF,
		},
		{
			name:    "empty data dispatches an empty event",
			parts:   []string{"data:\n\n"},
			want:    []event{{"", ""}},
			wantErr: io.EOF,
		},
		{
			name:    "blank lines alone dispatch nothing",
			parts:   []string{"\n\n\r\n"},
			wantErr: io.EOF,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := scanAll(&partsReader{parts: slices.Clone(tt.parts), err: tt.err})
			if !errors.Is(err, tt.wantErr) {
				t.Errorf("error %v, want %v", err, tt.wantErr)
			}
			if !slices.Equal(got, tt.want) {
				t.Errorf("events\n got %q\nwant %q", got, tt.want)
			}
		})
	}
}

func TestSSEScannerTooLarge(t *testing.T) {
	big := "data: " + strings.Repeat("x", maxEventBytes+1) + "\n\n"
	_, err := scanAll(strings.NewReader(big))
	if !errors.Is(err, errEventTooLarge) {
		t.Fatalf("error %v, want %v", err, errEventTooLarge)
	}
}

func TestClassify(t *testing.T) {
	tests := []struct {
		name string
		data string
		want chunk
	}{
		{"done", "[DONE]", chunk{done: true}},
		{"done with spaces", " [DONE] ", chunk{done: true}},
		{
			"completion text",
			`{"id":"cmpl-1","object":"text_completion","created":1,"model":"m","choices":[{"index":0,"text":" hello","logprobs":null,"finish_reason":null,"stop_reason":null}],"usage":null}`,
			chunk{content: true},
		},
		{
			"chat role-only first chunk",
			`{"id":"c","object":"chat.completion.chunk","choices":[{"index":0,"delta":{"role":"assistant","content":""},"logprobs":null,"finish_reason":null}]}`,
			chunk{},
		},
		{
			"chat role chunk without content",
			`{"choices":[{"index":0,"delta":{"role":"assistant"}}]}`,
			chunk{},
		},
		{
			"chat content",
			`{"choices":[{"index":0,"delta":{"content":"Hi"},"logprobs":null,"finish_reason":null}]}`,
			chunk{content: true},
		},
		{
			"chat null content",
			`{"choices":[{"index":0,"delta":{"content":null},"finish_reason":"length"}]}`,
			chunk{},
		},
		{
			"reasoning content",
			`{"choices":[{"index":0,"delta":{"reasoning_content":"hmm"}}]}`,
			chunk{content: true},
		},
		{
			"spaces around colons (Python json.dumps)",
			`{"choices": [{"index": 0, "text": "a"}], "usage": {"prompt_tokens": 1}}`,
			chunk{content: true, usage: true},
		},
		{
			"empty text on the finishing chunk",
			`{"choices":[{"index":0,"text":"","finish_reason":"length"}]}`,
			chunk{},
		},
		{
			"text that looks like keys",
			`{"choices":[{"index":0,"text":"\"usage\":{\"error\":\"x\"}"}],"usage":null}`,
			chunk{content: true},
		},
		{
			"escaped quote first in text",
			`{"choices":[{"text":"\"quoted\""}]}`,
			chunk{content: true},
		},
		{
			"usage-only last chunk",
			`{"id":"cmpl-1","object":"text_completion","created":1,"model":"m","choices":[],"usage":{"prompt_tokens":12,"total_tokens":16,"completion_tokens":4,"prompt_tokens_details":{"cached_tokens":8}}}`,
			chunk{usage: true},
		},
		{
			"OpenAI error mid-stream",
			`{"error":{"message":"boom","type":"InternalServerError","code":500}}`,
			chunk{err: true},
		},
		{
			"vLLM old-style error object",
			`{"object":"error","message":"boom","type":"BadRequestError","code":400}`,
			chunk{err: true},
		},
		{
			"chat logprobs content array is not text",
			`{"choices":[{"delta":{},"logprobs":{"content":[{"token":"a"}]}}]}`,
			chunk{},
		},
		{"not JSON", `garbage`, chunk{}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := classify([]byte(tt.data)); got != tt.want {
				t.Errorf("classify(%s) = %+v, want %+v", tt.data, got, tt.want)
			}
		})
	}
}

func TestParseUsage(t *testing.T) {
	p, c, cached, err := parseUsage([]byte(`{"choices":[],"usage":{"prompt_tokens":12,"total_tokens":16,"completion_tokens":4,"prompt_tokens_details":{"cached_tokens":8}}}`))
	if err != nil || p != 12 || c != 4 || cached != 8 {
		t.Errorf("got %d %d %d %v, want 12 4 8", p, c, cached, err)
	}
	// No details: no cached tokens; braces inside strings do not confuse.
	p, c, cached, err = parseUsage([]byte(`{"usage": {"prompt_tokens": 3, "completion_tokens": 2, "note": "}{"}, "x": 1}`))
	if err != nil || p != 3 || c != 2 || cached != 0 {
		t.Errorf("got %d %d %d %v, want 3 2 0", p, c, cached, err)
	}
	if _, _, _, err := parseUsage([]byte(`{"usage":{"prompt_tokens":3`)); err == nil {
		t.Error("unterminated usage: no error")
	}
}

func TestErrorMessage(t *testing.T) {
	tests := map[string]string{
		`{"error":{"message":"boom","code":500}}`:                  "boom",
		`{"object":"error","message":"too long","code":400}`:       "too long",
		`{"error":"plain"}`:                                        "plain",
		`upstream connect error`:                                   "upstream connect error",
		`{"detail":"x"}`:                                           `{"detail":"x"}`,
		"line1\nline2":                                             `"line1\nline2"`,
		`{"error":{"message":"` + strings.Repeat("é", 150) + `"}}`: strings.Repeat("é", 100) + "…",
	}
	for in, want := range tests {
		if got := errorMessage([]byte(in)); got != want {
			t.Errorf("errorMessage(%.40q) = %q, want %q", in, got, want)
		}
	}
}

// FuzzParseSSE checks that the scanner never panics, that events do not
// depend on how the input is split into reads, and that classifying and
// decoding usage never panic either.
func FuzzParseSSE(f *testing.F) {
	for _, s := range []string{
		"data: {\"choices\":[{\"text\":\"a\"}],\"usage\":null}\n\ndata: [DONE]\n\n",
		"data: {\"choices\":[],\"usage\":{\"prompt_tokens\":1,\"completion_tokens\":2,\"prompt_tokens_details\":{\"cached_tokens\":1}}}\r\n\r\n",
		"event: error\ndata: {\"error\":{\"message\":\"x\"}}\n\n",
		": comment\r\rdata:x\rdata\r\r",
		"data: {\"usage\":{\"a\":\"}\"}}\n\ndata: [DONE]",
		"data: {\"choices\":[{\"delta\":{\"role\":\"assistant\",\"content\":\"\"}}]}\n\n",
		"\n\n\n",
	} {
		f.Add([]byte(s), uint8(3))
	}
	f.Fuzz(func(t *testing.T, in []byte, split uint8) {
		whole, werr := scanAll(bytes.NewReader(in))
		size := int(split%16) + 1
		var parts []string
		for i := 0; i < len(in); i += size {
			parts = append(parts, string(in[i:min(i+size, len(in))]))
		}
		pieces, perr := scanAll(&partsReader{parts: parts})
		if !errors.Is(werr, perr) && !(werr == io.EOF && perr == io.EOF) {
			t.Fatalf("errors differ: whole %v, split %v", werr, perr)
		}
		if !slices.Equal(whole, pieces) {
			t.Fatalf("events differ with reads of %d bytes:\nwhole %q\nsplit %q", size, whole, pieces)
		}
		for _, e := range whole {
			c := classify([]byte(e.data))
			if c.usage {
				_, _, _, _ = parseUsage([]byte(e.data))
			}
			if c.err {
				_ = errorMessage([]byte(e.data))
			}
			if c.done && (c.content || c.usage || c.err) {
				t.Fatalf("[DONE] classified as more: %+v", c)
			}
		}
	})
}
