package native

import (
	"fmt"
	"strings"
	"testing"

	"github.com/llmd-kn/llmd-kn/pkg/tokenizer"
)

// benchConversation builds a multi-turn chat of about tokens tokens from
// the corpus (mixed scripts, code, whitespace), each message unique.
func benchConversation(turns, tokensPerTurn int) []tokenizer.Message {
	texts := corpusTexts(corpusSize)
	var msgs []tokenizer.Message
	msgs = append(msgs, tokenizer.Message{Role: "system", Content: "You are a helpful assistant."})
	k := 0
	for i := 0; i < turns; i++ {
		var b strings.Builder
		for b.Len() < tokensPerTurn*4 {
			fmt.Fprintf(&b, "%d. ", k)
			b.WriteString(ToValidUTF8(texts[k%len(texts)]))
			b.WriteString("\n")
			k++
		}
		role := "user"
		if i%2 == 1 {
			role = "assistant"
		}
		msgs = append(msgs, tokenizer.Message{Role: role, Content: strings.TrimSpace(b.String())})
	}
	return msgs
}

// BenchmarkChat32kCold: a ~32k-token, 16-turn chat, template rendered and
// every section encoded from scratch (no section cache), on one goroutine.
func BenchmarkChat32kCold(b *testing.B) {
	for _, family := range families {
		b.Run(family, func(b *testing.B) {
			tk, err := Load(modelFiles(b, family), Options{SectionCacheBytes: -1})
			if err != nil {
				b.Fatal(err)
			}
			msgs := benchConversation(16, 2000)
			ids, err := tk.AppendChat(nil, msgs, true)
			if err != nil {
				b.Fatal(err)
			}
			b.ReportMetric(float64(len(ids)), "tokens")
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				if _, err := tk.AppendChat(ids[:0], msgs, true); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// BenchmarkChatNewTurnWarm: the same conversation after one more user
// turn, the earlier messages' sections already cached (as when its
// previous turn was routed).
func BenchmarkChatNewTurnWarm(b *testing.B) {
	for _, family := range families {
		b.Run(family, func(b *testing.B) {
			tk, err := Load(modelFiles(b, family), Options{})
			if err != nil {
				b.Fatal(err)
			}
			msgs := benchConversation(16, 2000)
			if _, err := tk.AppendChat(nil, msgs, true); err != nil {
				b.Fatal(err)
			}
			next := append(msgs[:len(msgs):len(msgs)], tokenizer.Message{Role: "user", Content: "And what about the second point? Explain it briefly, with an example."})
			ids, err := tk.AppendChat(nil, next, true)
			if err != nil {
				b.Fatal(err)
			}
			b.ReportMetric(float64(len(ids)), "tokens")
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				if _, err := tk.AppendChat(ids[:0], next, true); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// BenchmarkLoad: reading tokenizer.json and tokenizer_config.json.
func BenchmarkLoad(b *testing.B) {
	dir := modelFiles(b, "tokenizer-llama3_1")
	for i := 0; i < b.N; i++ {
		if _, err := Load(dir, Options{}); err != nil {
			b.Fatal(err)
		}
	}
}
