package bench

import (
	"encoding/json"
	"fmt"
	"net/http"
	"strconv"
	"sync"
	"time"

	"github.com/llmd-kn/llmd-kn/pkg/tokenizer"
)

// fakeVLLM is a loopback OpenAI server that streams as vLLM does: for chat
// a role-only first chunk, then one chunk a token with `"usage":null`, a
// usage-only chunk with empty choices, and `data: [DONE]`. It answers
// max_tokens tokens whatever the prompt (ignore_eos), and records the
// requests it got.
type fakeVLLM struct {
	// gap is the time between tokens; headerDelay the time before the
	// response starts; roleDelay the time between the role chunk and the
	// first token (chat).
	gap, headerDelay, roleDelay time.Duration
	// cached is the cached_tokens reported.
	cached int

	mu   sync.Mutex
	reqs []fakeRequest
}

// fakeRequest is what the server understood of a request.
type fakeRequest struct {
	Path      string
	Model     string
	PromptLen int // token ids, or tokens of the text re-encoded
	MaxTokens int
	Stream    bool
	Usage     bool
	IgnoreEOS *bool
	Text      bool
	Received  time.Time
}

type fakeBody struct {
	Model               string          `json:"model"`
	Prompt              json.RawMessage `json:"prompt"`
	Messages            []struct{ Role, Content string }
	MaxTokens           int  `json:"max_tokens"`
	MaxCompletionTokens int  `json:"max_completion_tokens"`
	Stream              bool `json:"stream"`
	StreamOptions       struct {
		IncludeUsage bool `json:"include_usage"`
	} `json:"stream_options"`
	IgnoreEOS *bool `json:"ignore_eos"`
}

func (f *fakeVLLM) parse(r *http.Request) (fakeRequest, bool, error) {
	fr := fakeRequest{Path: r.URL.Path, Received: time.Now()}
	var b fakeBody
	dec := json.NewDecoder(r.Body)
	dec.DisallowUnknownFields()
	if err := dec.Decode(&b); err != nil {
		return fr, false, err
	}
	fr.Model, fr.Stream, fr.Usage, fr.IgnoreEOS = b.Model, b.Stream, b.StreamOptions.IncludeUsage, b.IgnoreEOS
	chat := b.Messages != nil
	if chat {
		if len(b.Messages) != 1 || b.Messages[0].Role != "user" {
			return fr, chat, fmt.Errorf("messages %+v", b.Messages)
		}
		fr.Text, fr.MaxTokens = true, b.MaxCompletionTokens
		fr.PromptLen = len(tokenizer.Encode(nil, b.Messages[0].Content))
		return fr, chat, nil
	}
	fr.MaxTokens = b.MaxTokens
	var ids []uint32
	var text string
	switch {
	case json.Unmarshal(b.Prompt, &ids) == nil:
		fr.PromptLen = len(ids)
	case json.Unmarshal(b.Prompt, &text) == nil:
		fr.Text, fr.PromptLen = true, len(tokenizer.Encode(nil, text))
	default:
		return fr, chat, fmt.Errorf("prompt %.40s", b.Prompt)
	}
	return fr, chat, nil
}

func (f *fakeVLLM) requests() []fakeRequest {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]fakeRequest(nil), f.reqs...)
}

func (f *fakeVLLM) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	fr, chat, err := f.parse(r)
	if err != nil {
		http.Error(w, `{"object":"error","message":"`+err.Error()+`","code":400}`, http.StatusBadRequest)
		return
	}
	f.mu.Lock()
	f.reqs = append(f.reqs, fr)
	f.mu.Unlock()
	if !sleepCtx(r, f.headerDelay) {
		return
	}
	w.Header().Set("Content-Type", "text/event-stream; charset=utf-8")
	w.WriteHeader(http.StatusOK)
	fl := w.(http.Flusher)
	object := "text_completion"
	if chat {
		object = "chat.completion.chunk"
		fmt.Fprintf(w, "data: {\"id\":\"c\",\"object\":%q,\"created\":1,\"model\":%q,\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":\"\"},\"logprobs\":null,\"finish_reason\":null}],\"usage\":null}\n\n", object, fr.Model)
		fl.Flush()
		if !sleepCtx(r, f.roleDelay) {
			return
		}
	}
	for i := range fr.MaxTokens {
		if i > 0 && !sleepCtx(r, f.gap) {
			return
		}
		finish := "null"
		if i == fr.MaxTokens-1 {
			finish = `"length"`
		}
		if chat {
			fmt.Fprintf(w, "data: {\"id\":\"c\",\"object\":%q,\"created\":1,\"model\":%q,\"choices\":[{\"index\":0,\"delta\":{\"content\":\" tok\"},\"logprobs\":null,\"finish_reason\":%s}],\"usage\":null}\n\n", object, fr.Model, finish)
		} else {
			fmt.Fprintf(w, "data: {\"id\":\"c\",\"object\":%q,\"created\":1,\"model\":%q,\"choices\":[{\"index\":0,\"text\":\" tok\",\"logprobs\":null,\"finish_reason\":%s,\"stop_reason\":null}],\"usage\":null}\n\n", object, fr.Model, finish)
		}
		fl.Flush()
	}
	if fr.Usage {
		fmt.Fprintf(w, "data: {\"id\":\"c\",\"object\":%q,\"created\":1,\"model\":%q,\"choices\":[],\"usage\":{\"prompt_tokens\":%d,\"total_tokens\":%d,\"completion_tokens\":%d,\"prompt_tokens_details\":{\"cached_tokens\":%d}}}\n\n",
			object, fr.Model, fr.PromptLen, fr.PromptLen+fr.MaxTokens, fr.MaxTokens, min(f.cached, fr.PromptLen))
	}
	fmt.Fprint(w, "data: [DONE]\n\n")
	fl.Flush()
}

// sleepCtx sleeps d unless the client goes away first.
func sleepCtx(r *http.Request, d time.Duration) bool {
	if d <= 0 {
		return true
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-r.Context().Done():
		return false
	}
}

// chunkBytes is one pre-rendered completion chunk, for the benchmark server.
func chunkBytes(i int) []byte {
	return []byte("data: {\"id\":\"cmpl-" + strconv.Itoa(i) + "\",\"object\":\"text_completion\",\"created\":1,\"model\":\"m\",\"choices\":[{\"index\":0,\"text\":\" tok\",\"logprobs\":null,\"finish_reason\":null,\"stop_reason\":null}],\"usage\":null}\n\n")
}
