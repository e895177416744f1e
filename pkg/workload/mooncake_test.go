package workload

import (
	"math"
	"strings"
	"testing"
	"time"
)

func TestMooncakeRealTrace(t *testing.T) {
	needFile(t, mooncakePath)
	tr, err := LoadMooncake(mooncakePath)
	if err != nil {
		t.Fatalf("LoadMooncake: %v", err)
	}
	// The figures of ../shared/data/README.md.
	if tr.Len() != 3993 {
		t.Errorf("rows = %d, want 3993", tr.Len())
	}
	var in, out, maxIn, blocks, repeats int
	seen := map[int64]bool{}
	for i := range tr.Len() {
		r := tr.Request(i)
		in += r.PromptLen
		out += r.MaxTokens
		maxIn = max(maxIn, r.PromptLen)
		for _, id := range tr.HashIDs(i) {
			blocks++
			if seen[id] {
				repeats++
			}
			seen[id] = true
		}
	}
	n := float64(tr.Len())
	if mean := float64(in) / n; math.Abs(mean-15325) > 1 {
		t.Errorf("mean input = %.1f, want 15,325", mean)
	}
	if mean := float64(out) / n; math.Abs(mean-149) > 0.5 {
		t.Errorf("mean output = %.1f, want 149", mean)
	}
	if maxIn != 191378 {
		t.Errorf("max input = %d, want 191,378", maxIn)
	}
	if len(seen) != 43924 {
		t.Errorf("distinct blocks = %d, want 43,924", len(seen))
	}
	if share := float64(repeats) / float64(blocks); math.Abs(share-0.64) > 0.005 {
		t.Errorf("repeated blocks = %.3f, want 0.64", share)
	}
	if last := tr.Request(tr.Len() - 1).At; last != 1022025*time.Millisecond {
		t.Errorf("last timestamp = %s, want 1022.025s", last)
	}
}

// Requests whose hash ids share a leading run must have equal prompt token
// ids over exactly those blocks, and (with overwhelming probability) differ
// right after.
func TestMooncakeSharedBlocksShareTokens(t *testing.T) {
	needFile(t, mooncakePath)
	tr, err := LoadMooncake(mooncakePath)
	if err != nil {
		t.Fatal(err)
	}
	checked := 0
	for i := 1; i < tr.Len() && checked < 200; i++ {
		a, b := tr.HashIDs(i-1), tr.HashIDs(i)
		shared := 0
		for shared < len(a) && shared < len(b) && a[shared] == b[shared] {
			shared++
		}
		if shared == 0 {
			continue
		}
		checked++
		ra, rb := tr.Request(i-1), tr.Request(i)
		pa, pb := ra.Prompt(), rb.Prompt()
		want := min(shared*MooncakeBlockTokens, len(pa), len(pb))
		got := commonPrefix(pa, pb)
		if got < want {
			t.Fatalf("rows %d and %d share %d blocks but only %d prompt tokens, want %d", i-1, i, shared, got, want)
		}
		if shared < len(a) && shared < len(b) && got > want+8 {
			t.Errorf("rows %d and %d share %d tokens, more than their %d shared blocks explain", i-1, i, got, shared)
		}
	}
	if checked == 0 {
		t.Fatal("no consecutive rows share a prefix; the check checked nothing")
	}
}

func TestReadMooncake(t *testing.T) {
	const two = `{"timestamp": 0, "input_length": 600, "output_length": 5, "hash_ids": [7, 8]}
{"timestamp": 12.5, "input_length": 1024, "output_length": 1, "hash_ids": [7, 9]}
`
	tr, err := ReadMooncake(strings.NewReader(two))
	if err != nil {
		t.Fatal(err)
	}
	if tr.Len() != 2 {
		t.Fatalf("rows = %d, want 2", tr.Len())
	}
	r0, r1 := tr.Request(0), tr.Request(1)
	if r1.At != 12500*time.Microsecond || r0.PromptLen != 600 || r0.MaxTokens != 5 || r1.Group != -1 || r1.Item != 1 {
		t.Errorf("requests = %+v, %+v", r0, r1)
	}
	p0, p1 := r0.Prompt(), r1.Prompt()
	if len(p0) != 600 || len(p1) != 1024 {
		t.Fatalf("prompt lengths = %d, %d", len(p0), len(p1))
	}
	if n := commonPrefix(p0, p1); n < 512 || n > 520 {
		t.Errorf("common prefix = %d tokens, want the 512 of block 7", n)
	}
	// A partial last block is the start of the same block in full.
	blk8 := appendTokens(nil, mooncakeBlockSeed(8), 512)
	if !equalIDs(p0[512:], blk8[:88]) {
		t.Error("partial block 8 is not the first 88 tokens of block 8")
	}
	// Same id, same tokens, in any trace.
	tr2, err := ReadMooncake(strings.NewReader(`{"hash_ids": [9], "timestamp": 3, "output_length": 2, "input_length": 512}` + "\r\n"))
	if err != nil {
		t.Fatal(err)
	}
	r2 := tr2.Request(0)
	if !equalIDs(r2.Prompt(), p1[512:]) {
		t.Error("hash id 9 gives different tokens in two traces")
	}
}

func TestReadMooncakeBadRows(t *testing.T) {
	const ok = `{"timestamp": 0, "input_length": 10, "output_length": 5, "hash_ids": [1]}`
	tests := []struct {
		name string
		row  string // written as line 2, after a good row
		msg  string
	}{
		{"not JSON", `timestamp=0`, "invalid JSON"},
		{"not an object", `[1, 2]`, "want a JSON object"},
		{"truncated", `{"timestamp": 0, "input_length": 10`, "unexpected end of line"},
		{"unknown field", `{"timestamp": 0, "input_length": 10, "output_length": 5, "hash_ids": [1], "user": "x"}`, `unknown field "user"`},
		{"field in another case", `{"Timestamp": 0, "input_length": 10, "output_length": 5, "hash_ids": [1]}`, `unknown field "Timestamp"`},
		{"duplicate field", `{"timestamp": 0, "timestamp": 1, "input_length": 10, "output_length": 5, "hash_ids": [1]}`, `duplicate field "timestamp"`},
		{"missing hash_ids", `{"timestamp": 0, "input_length": 10, "output_length": 5}`, `missing field "hash_ids"`},
		{"missing timestamp", `{"input_length": 10, "output_length": 5, "hash_ids": [1]}`, `missing field "timestamp"`},
		{"negative input", `{"timestamp": 0, "input_length": -10, "output_length": 5, "hash_ids": [1]}`, "input_length: want an integer"},
		{"zero output", `{"timestamp": 0, "input_length": 10, "output_length": 0, "hash_ids": [1]}`, "output_length: want an integer"},
		{"fractional length", `{"timestamp": 0, "input_length": 10.5, "output_length": 5, "hash_ids": [1]}`, "input_length: want an integer"},
		{"quoted length", `{"timestamp": 0, "input_length": "10", "output_length": 5, "hash_ids": [1]}`, "input_length: want a number"},
		{"null length", `{"timestamp": 0, "input_length": null, "output_length": 5, "hash_ids": [1]}`, "input_length: want a number, got null"},
		{"negative timestamp", `{"timestamp": -1, "input_length": 10, "output_length": 5, "hash_ids": [1]}`, "timestamp: want milliseconds"},
		{"timestamp goes back", `{"timestamp": 0, "input_length": 10, "output_length": 5, "hash_ids": [1]}`, ""}, // replaced below
		{"null hash id", `{"timestamp": 0, "input_length": 10, "output_length": 5, "hash_ids": [1, null]}`, "hash_ids[1]: want an integer in [0, 9223372036854775807], got null"},
		{"negative hash id", `{"timestamp": 0, "input_length": 10, "output_length": 5, "hash_ids": [-3]}`, "hash_ids[0]: want an integer"},
		{"hash_ids not a list", `{"timestamp": 0, "input_length": 10, "output_length": 5, "hash_ids": 1}`, "hash_ids: want an array, got 1"},
		{"too long for its blocks", `{"timestamp": 0, "input_length": 1025, "output_length": 5, "hash_ids": [1, 2]}`, "input_length 1025 does not fit 2 hash_ids"},
		{"too short for its blocks", `{"timestamp": 0, "input_length": 512, "output_length": 5, "hash_ids": [1, 2]}`, "input_length 512 does not fit 2 hash_ids"},
		{"no blocks", `{"timestamp": 0, "input_length": 1, "output_length": 5, "hash_ids": []}`, "does not fit 0 hash_ids"},
		{"two objects", ok + ` {}`, "text after the object"},
		{"empty line", ``, "empty line"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			first := ok
			if tc.name == "timestamp goes back" {
				first = strings.Replace(ok, `"timestamp": 0`, `"timestamp": 20`, 1)
				tc.msg = "timestamp 0 ms is before the previous row's 20 ms"
			}
			_, err := ReadMooncake(strings.NewReader(first + "\n" + tc.row + "\n" + ok + "\n"))
			wantRowError(t, err, 2, tc.msg)
		})
	}
	t.Run("empty file", func(t *testing.T) {
		if _, err := ReadMooncake(strings.NewReader("")); err == nil || !strings.Contains(err.Error(), "no rows") {
			t.Errorf("error = %v, want no rows", err)
		}
	})
	t.Run("file named in error", func(t *testing.T) {
		_, err := LoadMooncake("testdata/bad-mooncake.jsonl")
		wantRowError(t, err, 3, "unknown field")
		if !strings.Contains(err.Error(), "testdata/bad-mooncake.jsonl: line 3:") {
			t.Errorf("error = %q, want the path and line", err)
		}
	})
}
