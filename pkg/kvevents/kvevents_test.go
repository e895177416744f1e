package kvevents

import (
	"bytes"
	"encoding/hex"
	"reflect"
	"strings"
	"testing"

	"github.com/vmihailenco/msgpack/v5"
)

func sampleBatch() Batch {
	return Batch{
		TS: 1722222222.5,
		Events: []Event{
			{Kind: BlockStored, Hashes: []uint64{1, 1 << 63}, TokenIDs: []uint32{1, 2, 3, 4}, BlockSize: 2, Medium: MediumGPU},
			{Kind: BlockStored, Hashes: []uint64{7}, Parent: 1 << 63, HasParent: true, TokenIDs: []uint32{128000, 5}, BlockSize: 2, LoraID: 3, HasLoraID: true},
			{Kind: BlockRemoved, Hashes: []uint64{1, 7}, Medium: MediumGPU},
			{Kind: AllBlocksCleared},
		},
		HasDPRank: true,
	}
}

func TestRoundTrip(t *testing.T) {
	for _, f := range []Format{FormatMap, FormatArray} {
		b := sampleBatch()
		p, err := AppendBatch(nil, &b, f)
		if err != nil {
			t.Fatal(err)
		}
		got, err := DecodeBatch(p)
		if err != nil {
			t.Fatal(err)
		}
		if !reflect.DeepEqual(got, b) {
			t.Fatalf("format %d round trip:\n got %+v\nwant %+v", f, got, b)
		}
	}
}

// TestRawHashes: digests encode as bytes and decode to the integers vLLM
// would have sent for them.
func TestRawHashes(t *testing.T) {
	d1 := bytes.Repeat([]byte{0xab}, 32)
	d2 := append(bytes.Repeat([]byte{0}, 24), 1, 2, 3, 4, 5, 6, 7, 8)
	b := Batch{Events: []Event{{Kind: BlockStored, RawHashes: [][]byte{d2}, RawParent: d1, TokenIDs: []uint32{1}, BlockSize: 1}}}
	p, err := AppendBatch(nil, &b, FormatMap)
	if err != nil {
		t.Fatal(err)
	}
	got, err := DecodeBatch(p)
	if err != nil {
		t.Fatal(err)
	}
	ev := got.Events[0]
	if ev.Hashes[0] != 0x0102030405060708 || ev.Parent != HashFromBytes(d1) || !ev.HasParent {
		t.Fatalf("got %+v", ev)
	}
}

// TestWireFormat pins the exact bytes: the layout vLLM's msgspec structs
// (array_like, tagged) produce, which every subscriber relies on.
func TestWireFormat(t *testing.T) {
	b := Batch{
		TS: 1.5,
		Events: []Event{
			{Kind: BlockStored, Hashes: []uint64{5}, TokenIDs: []uint32{1, 300}, BlockSize: 2, Medium: MediumGPU},
			{Kind: BlockRemoved, Hashes: []uint64{5}, Medium: MediumGPU},
			{Kind: AllBlocksCleared},
		},
		HasDPRank: true,
	}
	p, err := AppendBatch(nil, &b, FormatArray)
	if err != nil {
		t.Fatal(err)
	}
	want := strings.Join([]string{
		"93",                 // [ts, events, dp_rank]
		"cb3ff8000000000000", // 1.5 as float64
		"93",                 // 3 events
		"97", "ab" + hex.EncodeToString([]byte("BlockStored")),
		"9105",       // [5]
		"c0",         // parent nil
		"9201cd012c", // [1, 300]
		"02",         // block size
		"c0",         // lora_id nil
		"a3475055",   // "GPU"
		"93", "ac" + hex.EncodeToString([]byte("BlockRemoved")), "9105", "a3475055",
		"91", "b0" + hex.EncodeToString([]byte("AllBlocksCleared")),
		"00", // dp rank 0
	}, "")
	if got := hex.EncodeToString(p); got != want {
		t.Fatalf("wire bytes\n got %s\nwant %s", got, want)
	}
	// A generic msgpack decoder sees the same structure.
	var v []any
	if err := msgpack.Unmarshal(p, &v); err != nil {
		t.Fatal(err)
	}
	if len(v) != 3 || v[0].(float64) != 1.5 {
		t.Fatalf("generic decode: %#v", v)
	}
}

func enc(t *testing.T, v any) []byte {
	t.Helper()
	p, err := msgpack.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

func TestDecodeVariants(t *testing.T) {
	hashBytes := []byte{0xff, 0xee, 0, 0, 0, 0, 0, 0, 1, 2} // last 8 bytes big-endian
	tests := []struct {
		name string
		in   any
		want Batch
	}{
		{
			name: "two elements, int ts, no rank",
			in:   []any{int64(12), []any{[]any{"AllBlocksCleared"}}},
			want: Batch{TS: 12, Events: []Event{{Kind: AllBlocksCleared}}},
		},
		{
			name: "minimal BlockStored, negative hash",
			in:   []any{1.0, []any{[]any{"BlockStored", []any{int64(-1)}, nil, []any{1, 2}, 2}}, nil},
			want: Batch{TS: 1, Events: []Event{{Kind: BlockStored, Hashes: []uint64{^uint64(0)}, TokenIDs: []uint32{1, 2}, BlockSize: 2}}},
		},
		{
			name: "bytes hashes and newer trailing fields",
			in: []any{1.0, []any{
				[]any{"BlockStored", []any{hashBytes}, []byte{9}, []any{1}, 1, nil, "CPU", "lora-a", []any{nil}, 0},
				[]any{"BlockRemoved", []any{hashBytes}, "CPU", 0},
			}, 2},
			want: Batch{TS: 1, DPRank: 2, HasDPRank: true, Events: []Event{
				{Kind: BlockStored, Hashes: []uint64{0x0102}, Parent: 9, HasParent: true, TokenIDs: []uint32{1}, BlockSize: 1, Medium: "CPU", LoraName: "lora-a"},
				{Kind: BlockRemoved, Hashes: []uint64{0x0102}, Medium: "CPU"},
			}},
		},
		{
			// As vLLM 0.26 publishes: the batch an array, each event a map.
			name: "map events",
			in: []any{1789095808.8378847, []any{
				map[string]any{"type": "BlockStored", "block_hashes": []any{uint64(15760518052499183552)}, "parent_block_hash": nil,
					"token_ids": []any{151644, 872}, "block_size": 2, "lora_id": nil, "medium": "GPU", "lora_name": nil,
					"extra_keys": []any{nil}, "group_idx": 0, "kv_cache_spec_kind": "full_attention"},
				map[string]any{"block_hashes": []any{hashBytes}, "medium": "CPU", "type": "BlockRemoved", "group_idx": 0},
				map[string]any{"type": "AllBlocksCleared"},
				map[string]any{"type": "BlockMoved", "x": []any{1}},
			}, 0},
			want: Batch{TS: 1789095808.8378847, HasDPRank: true, Events: []Event{
				{Kind: BlockStored, Hashes: []uint64{15760518052499183552}, TokenIDs: []uint32{151644, 872}, BlockSize: 2, Medium: "GPU"},
				{Kind: BlockRemoved, Hashes: []uint64{0x0102}, Medium: "CPU"},
				{Kind: AllBlocksCleared},
			}},
		},
		{
			name: "map batch",
			in:   map[string]any{"events": []any{[]any{"AllBlocksCleared"}}, "ts": 2.5, "other": 1},
			want: Batch{TS: 2.5, Events: []Event{{Kind: AllBlocksCleared}}},
		},
		{
			name: "unknown tag skipped",
			in:   []any{1.0, []any{[]any{"BlockMoved", []any{[]any{1, map[string]any{"a": 1}}}}, []any{"BlockRemoved", []any{3}}}},
			want: Batch{TS: 1, Events: []Event{{Kind: BlockRemoved, Hashes: []uint64{3}}}},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := DecodeBatch(enc(t, tc.in))
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(got, tc.want) {
				t.Fatalf("\n got %+v\nwant %+v", got, tc.want)
			}
		})
	}
}

func TestDecodeRejects(t *testing.T) {
	nested := bytes.Repeat([]byte{0x91}, 10000)
	tests := []struct {
		name string
		in   []byte
	}{
		{"empty", nil},
		{"not an array", enc(t, map[string]int{"ts": 1})},
		{"one element", enc(t, []any{1.0})},
		{"events not an array", enc(t, []any{1.0, "x"})},
		{"event not an array", enc(t, []any{1.0, []any{1}})},
		{"empty event", enc(t, []any{1.0, []any{[]any{}}})},
		{"short BlockStored", enc(t, []any{1.0, []any{[]any{"BlockStored", []any{1}}}})},
		{"string token", enc(t, []any{1.0, []any{[]any{"BlockStored", []any{1}, nil, []any{"a"}, 1}}})},
		{"negative token", enc(t, []any{1.0, []any{[]any{"BlockStored", []any{1}, nil, []any{-1}, 1}}})},
		{"zero block size", enc(t, []any{1.0, []any{[]any{"BlockStored", []any{1}, nil, []any{1}, 0}}})},
		{"nil hash", enc(t, []any{1.0, []any{[]any{"BlockRemoved", []any{nil}}}})},
		{"huge declared array", []byte{0x92, 0xcb, 0, 0, 0, 0, 0, 0, 0, 0, 0xdd, 0xff, 0xff, 0xff, 0xff}},
		{"deep nesting in unknown event", append(append([]byte{0x92, 0x01, 0x91, 0x92, 0xa1, 'X'}, nested...), 0x01)},
		{"map event without type", enc(t, []any{1.0, []any{map[string]any{"block_hashes": []any{1}}}})},
		{"map BlockStored without tokens", enc(t, []any{1.0, []any{map[string]any{"type": "BlockStored", "block_hashes": []any{1}, "block_size": 1}}})},
		{"map key not a string", enc(t, []any{1.0, []any{map[int]any{1: 2}}})},
		{"float token", enc(t, []any{1.0, []any{[]any{"BlockStored", []any{1}, nil, []any{1.5}, 1}}})},
		{"map batch without events", enc(t, map[string]any{"ts": 1.0})},
		{"trailing bytes", append(enc(t, []any{1.0, []any{}}), 0x00)},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if b, err := DecodeBatch(tc.in); err == nil {
				t.Fatalf("decoded %+v, want an error", b)
			}
		})
	}
}

func TestParseMessage(t *testing.T) {
	topic, seq, payload, err := ParseMessage([][]byte{[]byte("kv@pod@m"), AppendSeq(nil, 258), {0x90}})
	if err != nil || topic != "kv@pod@m" || seq != 258 || !bytes.Equal(payload, []byte{0x90}) {
		t.Fatalf("got %q %d %x %v", topic, seq, payload, err)
	}
	if _, _, _, err := ParseMessage([][]byte{[]byte("t"), {1, 2}, {0x90}}); err == nil {
		t.Fatal("short sequence frame accepted")
	}
	if _, _, _, err := ParseMessage([][]byte{[]byte("t")}); err == nil {
		t.Fatal("one frame accepted")
	}
}

func TestEncodeRejectsUnknownKind(t *testing.T) {
	if _, err := AppendBatch(nil, &Batch{Events: []Event{{Kind: 9}}}, FormatMap); err == nil {
		t.Fatal("unknown kind encoded")
	}
}

// FuzzDecodeBatch: the decoder never panics, and whatever it accepts
// re-encodes to a payload that decodes to the same batch.
func FuzzDecodeBatch(f *testing.F) {
	b := sampleBatch()
	p, _ := AppendBatch(nil, &b, FormatArray)
	f.Add(p)
	p, _ = AppendBatch(nil, &b, FormatMap)
	f.Add(p)
	f.Add([]byte{0x92, 0xcb, 0, 0, 0, 0, 0, 0, 0, 0, 0x90})
	f.Add([]byte{0x93, 0x01, 0x91, 0x92, 0xac, 'B', 'l', 'o', 'c', 'k', 'R', 'e', 'm', 'o', 'v', 'e', 'd', 0x91, 0xc4, 0x01, 0x07, 0xc0})
	f.Fuzz(func(t *testing.T, data []byte) {
		b, err := DecodeBatch(data)
		if err != nil {
			return
		}
		for i := range b.Events {
			if b.Events[i].Kind == 0 {
				t.Fatalf("decoded an event without a kind")
			}
		}
		p, err := AppendBatch(nil, &b, Format(len(data)%2))
		if err != nil {
			t.Fatalf("re-encode: %v", err)
		}
		b2, err := DecodeBatch(p)
		if err != nil {
			t.Fatalf("decode of re-encoded batch: %v", err)
		}
		if !reflect.DeepEqual(normalize(b), normalize(b2)) {
			t.Fatalf("round trip differs:\n%+v\n%+v", b, b2)
		}
	})
}

// normalize maps equivalent encodings to one value (empty and nil slices).
func normalize(b Batch) Batch {
	for i := range b.Events {
		e := &b.Events[i]
		if len(e.Hashes) == 0 {
			e.Hashes = nil
		}
		if len(e.TokenIDs) == 0 {
			e.TokenIDs = nil
		}
	}
	if len(b.Events) == 0 {
		b.Events = nil
	}
	if b.TS != b.TS { // NaN
		b.TS = 0
	}
	return b
}
