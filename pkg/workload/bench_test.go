package workload

import (
	"os"
	"testing"
)

// BenchmarkMooncakeRead reads and validates the whole Mooncake trace.
func BenchmarkMooncakeRead(b *testing.B) {
	needFile(b, mooncakePath)
	data, err := os.ReadFile(mooncakePath)
	if err != nil {
		b.Fatal(err)
	}
	b.SetBytes(int64(len(data)))
	for b.Loop() {
		if _, err := LoadMooncake(mooncakePath); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkMooncakeReplay is one pass over the whole Mooncake trace (3,993
// requests, 61M prompt tokens) as a consumer sees it: every request with its
// prompt token ids made into a reused buffer.
func BenchmarkMooncakeReplay(b *testing.B) {
	needFile(b, mooncakePath)
	tr, err := LoadMooncake(mooncakePath)
	if err != nil {
		b.Fatal(err)
	}
	w, err := New(tr, Arrival{}, Options{})
	if err != nil {
		b.Fatal(err)
	}
	benchReplay(b, w)
}

// BenchmarkMooncakeReplayNoPrompts is the same pass without making prompts:
// what a consumer pays that needs only times and lengths.
func BenchmarkMooncakeReplayNoPrompts(b *testing.B) {
	needFile(b, mooncakePath)
	tr, err := LoadMooncake(mooncakePath)
	if err != nil {
		b.Fatal(err)
	}
	w, err := New(tr, Arrival{}, Options{})
	if err != nil {
		b.Fatal(err)
	}
	for b.Loop() {
		n := 0
		for range w.All() {
			n++
		}
		if n != tr.Len() {
			b.Fatalf("%d requests", n)
		}
	}
}

// BenchmarkLLMDSharedPrefixReplay is one pass over llm-d's published
// shared-prefix workload on its QPS ladder (about 17,100 requests of 7,200
// prompt tokens).
func BenchmarkLLMDSharedPrefixReplay(b *testing.B) {
	ds, err := NewSharedPrefix(LLMDSharedPrefix(), 1)
	if err != nil {
		b.Fatal(err)
	}
	w, err := New(ds, Arrival{Kind: ArrivalLadder, Preset: LadderPresetLLMD}, Options{Seed: 1})
	if err != nil {
		b.Fatal(err)
	}
	benchReplay(b, w)
}

func benchReplay(b *testing.B, w *Workload) {
	var buf []uint32
	tokens := 0
	for b.Loop() {
		tokens = 0
		for r := range w.All() {
			buf = r.AppendPrompt(buf[:0])
			tokens += len(buf)
		}
	}
	b.ReportMetric(float64(w.Len()), "requests/op")
	b.ReportMetric(float64(tokens), "tokens/op")
	b.ReportMetric(float64(tokens)*float64(b.N)/b.Elapsed().Seconds()/1e6, "Mtokens/s")
}
