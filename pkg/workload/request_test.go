package workload

import (
	"slices"
	"testing"
	"time"

	"github.com/llmd-kn/llmd-kn/pkg/tokenizer"
)

func TestPromptTokensAreGeneratedVocabulary(t *testing.T) {
	vocab := map[uint32]bool{}
	for _, id := range tokenizer.GeneratedVocab() {
		vocab[id] = true
	}
	ids := appendTokens(nil, 42, 10000)
	used := map[uint32]bool{}
	for _, id := range ids {
		if id >= tokenizer.SpecialBase || !vocab[id] {
			t.Fatalf("id %d is not an ordinary id of the generated vocabulary", id)
		}
		used[id] = true
	}
	if len(used) < len(vocab)*9/10 {
		t.Errorf("10,000 tokens use %d of %d vocabulary ids", len(used), len(vocab))
	}
	// Text round-trips, so a client can send text and the server sees ids.
	if got := tokenizer.Encode(nil, tokenizer.DecodeString(ids)); !equalIDs(got, ids) {
		t.Error("Encode(Decode(prompt)) != prompt")
	}
}

// A stream's first k ids do not depend on how many are asked for: partial
// Mooncake blocks and cut system prompts rely on it.
func TestTokenStreamPrefixStable(t *testing.T) {
	full := appendTokens(nil, 7, 513)
	for _, k := range []int{0, 1, 2, 3, 100, 511, 512} {
		if got := appendTokens(nil, 7, k); !equalIDs(got, full[:k]) {
			t.Errorf("stream cut at %d is not the full stream's start", k)
		}
	}
	if equalIDs(appendTokens(nil, 8, 64), full[:64]) {
		t.Error("seeds 7 and 8 give the same stream")
	}
}

func TestAppendPromptReusesBuffer(t *testing.T) {
	r := Request{PromptLen: 300}
	r.prompt.segs = [2]segment{{seed: 1, n: 100}, {seed: 2, n: 200}}
	buf := make([]uint32, 0, 1000)
	p := r.AppendPrompt(buf)
	if len(p) != 300 || &p[0] != &buf[:1][0] {
		t.Errorf("AppendPrompt did not append into the buffer")
	}
	if allocs := testing.AllocsPerRun(100, func() { p = r.AppendPrompt(p[:0]) }); allocs != 0 {
		t.Errorf("AppendPrompt allocates %v times into a large enough buffer", allocs)
	}
	if !equalIDs(r.Prompt(), p) {
		t.Error("Prompt and AppendPrompt differ")
	}
}

func TestRequestsSource(t *testing.T) {
	a := NewRequest(0, 0, []uint32{1, 2, 3}, 4)
	b := NewRequest(1, time.Second, []uint32{5}, 1)
	s := Requests([]Request{a, b})
	if s.Len() != 2 {
		t.Errorf("Len = %d, want 2", s.Len())
	}
	got := collect(t, s)
	if len(got) != 2 || !slices.Equal(got[0].Prompt(), []uint32{1, 2, 3}) || got[0].PromptLen != 3 || got[1].At != time.Second || got[1].Group != -1 {
		t.Errorf("requests = %+v", got)
	}
	if _, ok := s.Next(); ok {
		t.Error("Next after the end returned a request")
	}
}
