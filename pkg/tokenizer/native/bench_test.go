package native

import (
	"fmt"
	"math/rand/v2"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/llmd-kn/llmd-kn/pkg/tokenizer"
)

// proseTexts are English-like sentences (the estimate's common words),
// numbers and code lines: what most long chat prompts are made of.
func proseTexts() []string {
	rng := rand.New(rand.NewPCG(3, 3))
	vocab := tokenizer.GeneratedVocab()
	code := []string{"func main() {\n\tfmt.Println(\"hello\")\n}", "for i in range(10):\n    print(i * 2)", `{"id": 42, "name": "widget", "tags": ["a", "b"]}`, "SELECT name, count(*) FROM users GROUP BY name;"}
	var out []string
	for i := 0; i < 1000; i++ {
		if i%10 == 9 {
			out = append(out, code[rng.IntN(len(code))])
			continue
		}
		ids := make([]uint32, 8+rng.IntN(20))
		for k := range ids {
			ids[k] = vocab[rng.IntN(len(vocab))]
		}
		out = append(out, strings.TrimSpace(tokenizer.DecodeString(ids))+fmt.Sprintf(", %d.", rng.IntN(5000)))
	}
	return out
}

// benchConversation builds a multi-turn chat of about turns*tokensPerTurn
// tokens from texts, each message unique.
func benchConversation(texts []string, turns, tokensPerTurn int) []tokenizer.Message {
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
// every section encoded from scratch (no section cache, empty word cache),
// on one goroutine; "prose" is English-like text and code, "mixed" the
// equality corpus (random scripts, emoji, whitespace: the worst case).
func BenchmarkChat32kCold(b *testing.B) {
	for _, family := range families {
		for _, kind := range []string{"prose", "mixed"} {
			b.Run(family+"/"+kind, func(b *testing.B) {
				texts := proseTexts()
				if kind == "mixed" {
					texts = corpusTexts(corpusSize)
				}
				tk, err := Load(modelFiles(b, family), Options{SectionCacheBytes: -1})
				if err != nil {
					b.Fatal(err)
				}
				msgs := benchConversation(texts, 16, 2000)
				ids, err := tk.AppendChat(nil, msgs, true)
				if err != nil {
					b.Fatal(err)
				}
				var cpu time.Duration
				b.ResetTimer()
				for i := 0; i < b.N; i++ {
					b.StopTimer()
					tk.words = wordCache{} // cold: nothing remembered from before
					b.StartTimer()
					c0 := cpuTime()
					if _, err := tk.AppendChat(ids[:0], msgs, true); err != nil {
						b.Fatal(err)
					}
					cpu += cpuTime() - c0
				}
				b.ReportMetric(float64(len(ids)), "tokens")
				b.ReportMetric(float64(cpu.Nanoseconds())/float64(b.N), "cpu-ns/op")
			})
		}
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
			msgs := benchConversation(proseTexts(), 16, 2000)
			if _, err := tk.AppendChat(nil, msgs, true); err != nil {
				b.Fatal(err)
			}
			next := append(msgs[:len(msgs):len(msgs)], tokenizer.Message{Role: "user", Content: "And what about the second point? Explain it briefly, with an example."})
			ids, err := tk.AppendChat(nil, next, true)
			if err != nil {
				b.Fatal(err)
			}
			b.ResetTimer()
			c0 := cpuTime()
			for i := 0; i < b.N; i++ {
				if _, err := tk.AppendChat(ids[:0], next, true); err != nil {
					b.Fatal(err)
				}
			}
			b.ReportMetric(float64(len(ids)), "tokens")
			b.ReportMetric(float64((cpuTime()-c0).Nanoseconds())/float64(b.N), "cpu-ns/op")
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

// cpuTime is the process's CPU time: on a shared, loaded machine the wall
// time of a benchmark says more about the neighbours than about the code.
func cpuTime() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
