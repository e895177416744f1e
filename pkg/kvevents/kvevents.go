// Package kvevents is the wire format of vLLM's KV-cache events: the
// msgpack payload a vLLM engine publishes over ZMQ when blocks enter or leave
// its prefix cache, and the three-frame message that carries it.
//
// A message is three frames: the topic (vLLM's `kv@<pod>@<model>`
// convention), an 8-byte big-endian sequence number, and the payload. The
// payload is vLLM's EventBatch, a msgpack array `[ts, [event, ...],
// data_parallel_rank]`. Each event is one of vLLM's tagged msgspec structs,
// which vLLM has encoded two ways:
//
//   - positional arrays (array_like, before vLLM's switch to maps in 2026):
//     ["BlockStored", block_hashes, parent_block_hash, token_ids, block_size,
//     lora_id, medium, lora_name, extra_keys, ...], ["BlockRemoved",
//     block_hashes, medium, ...], ["AllBlocksCleared"];
//   - maps with the tag under "type" (current vLLM): {"type": "BlockStored",
//     "block_hashes": ..., "parent_block_hash": ..., "token_ids": ...,
//     "block_size": ..., "lora_id": ..., "medium": ..., "lora_name": ...,
//     "group_idx": ..., ...}.
//
// The decoder reads both (and a map-shaped batch), skips fields and event
// kinds it does not know, and reads a block hash as vLLM's external hash: an
// integer (Python's, possibly negative), or bytes (SHA-256 or xxhash
// digests, VLLM_KV_EVENTS_USE_INT_BLOCK_HASHES=0), of which the last 8 bytes
// big-endian are the integer vLLM would have sent. It is strict where the
// input is malformed: it never panics and never allocates more than the
// payload can describe. The encoder writes either shape, with integer or
// byte hashes, so that the simulator publishes exactly what a vLLM of
// either generation sends.
//
// This package is pure: no sockets, no clock, no global mutable state.
package kvevents

import (
	"bytes"
	"encoding/binary"
	"fmt"

	"github.com/vmihailenco/msgpack/v5"
)

// Kind is an event type.
type Kind uint8

const (
	// BlockStored: blocks entered the prefix cache.
	BlockStored Kind = iota + 1
	// BlockRemoved: blocks were evicted from the prefix cache.
	BlockRemoved
	// AllBlocksCleared: the whole prefix cache was reset.
	AllBlocksCleared
)

// The tags vLLM writes as the first element (or the "type" field) of each
// event.
const (
	TagBlockStored      = "BlockStored"
	TagBlockRemoved     = "BlockRemoved"
	TagAllBlocksCleared = "AllBlocksCleared"
)

// Media vLLM and its offloading connectors report.
const (
	MediumGPU = "GPU"
	MediumCPU = "CPU"
	// MediumStorage is current vLLM's MEDIUM_STORAGE: the offloading
	// connector's tier below CPU (local NVMe or a filesystem). The
	// simulator's disk tier publishes it.
	MediumStorage = "STORAGE"
	// MediumDisk is older vLLM's DiskLoadStoreSpec.medium(); a consumer
	// treats it as MediumStorage.
	MediumDisk = "Disk"
)

func (k Kind) String() string {
	switch k {
	case BlockStored:
		return TagBlockStored
	case BlockRemoved:
		return TagBlockRemoved
	case AllBlocksCleared:
		return TagAllBlocksCleared
	}
	return fmt.Sprintf("Kind(%d)", uint8(k))
}

// Event is one KV-cache event. Fields that a kind does not carry are zero.
type Event struct {
	Kind Kind
	// Hashes are the block hashes, parent first (BlockStored, BlockRemoved),
	// as vLLM's integer external hashes.
	Hashes []uint64
	// Parent is the hash of the block before Hashes[0]; HasParent is false
	// when the first stored block starts the sequence (BlockStored).
	Parent    uint64
	HasParent bool
	// TokenIDs are the tokens of all stored blocks, len(Hashes)*BlockSize
	// of them (BlockStored).
	TokenIDs  []uint32
	BlockSize int
	// LoraID is set when HasLoraID (BlockStored; vLLM deprecated it for
	// LoraName).
	LoraID    int64
	HasLoraID bool
	// LoraName names the adapter the blocks were computed with; empty for
	// the base model (BlockStored).
	LoraName string
	// Medium is where the blocks live ("GPU", "CPU", ...); empty encodes as
	// nil, which vLLM's consumers read as GPU.
	Medium string

	// RawHashes and RawParent, when set, are encoded as bytes in place of
	// Hashes and Parent (vLLM's digests); the decoder never sets them.
	RawHashes [][]byte
	RawParent []byte
}

// Batch is the payload of one message: the events of one engine step.
type Batch struct {
	// TS is the wall-clock time in seconds since the Unix epoch.
	TS     float64
	Events []Event
	// DPRank is the data-parallel rank when HasDPRank; vLLM's publisher sets
	// it (0 without data parallelism).
	DPRank    int
	HasDPRank bool
}

// Format is how events are encoded.
type Format uint8

const (
	// FormatMap is current vLLM's: each event a map tagged by "type".
	FormatMap Format = iota
	// FormatArray is vLLM's before 2026: each event a positional array.
	FormatArray
)

// Encoder encodes batches; it reuses its buffer, so one Encoder serves one
// goroutine.
type Encoder struct {
	// Format of the events; the batch is an array in both.
	Format Format
	buf    bytes.Buffer
	enc    *msgpack.Encoder
}

// NewEncoder returns an Encoder of current vLLM's format.
func NewEncoder() *Encoder {
	e := &Encoder{}
	e.enc = msgpack.NewEncoder(&e.buf)
	e.enc.UseCompactInts(true)
	return e
}

// Encode returns the msgpack payload of b. The result is valid until the next
// call to Encode.
func (e *Encoder) Encode(b *Batch) ([]byte, error) {
	e.buf.Reset()
	if err := e.encode(b); err != nil {
		return nil, err
	}
	return e.buf.Bytes(), nil
}

// AppendBatch appends the msgpack payload of b, in format f, to dst.
func AppendBatch(dst []byte, b *Batch, f Format) ([]byte, error) {
	enc := NewEncoder()
	enc.Format = f
	p, err := enc.Encode(b)
	if err != nil {
		return dst, err
	}
	return append(dst, p...), nil
}

// errWriter collects the first error of a sequence of writes.
type errWriter struct {
	enc *msgpack.Encoder
	err error
}

func (w *errWriter) try(err error) {
	if w.err == nil && err != nil {
		w.err = err
	}
}

func (w *errWriter) str(s string) { w.try(w.enc.EncodeString(s)) }
func (w *errWriter) optStr(s string) {
	if s == "" {
		w.try(w.enc.EncodeNil())
		return
	}
	w.str(s)
}

func (w *errWriter) hashes(hs []uint64, raw [][]byte) {
	if raw != nil {
		w.try(w.enc.EncodeArrayLen(len(raw)))
		for _, h := range raw {
			w.try(w.enc.EncodeBytes(h))
		}
		return
	}
	w.try(w.enc.EncodeArrayLen(len(hs)))
	for _, h := range hs {
		w.try(w.enc.EncodeUint(h))
	}
}

func (w *errWriter) parent(ev *Event) {
	switch {
	case ev.RawParent != nil:
		w.try(w.enc.EncodeBytes(ev.RawParent))
	case ev.HasParent:
		w.try(w.enc.EncodeUint(ev.Parent))
	default:
		w.try(w.enc.EncodeNil())
	}
}

func (w *errWriter) tokens(ts []uint32) {
	w.try(w.enc.EncodeArrayLen(len(ts)))
	for _, t := range ts {
		w.try(w.enc.EncodeUint(uint64(t)))
	}
}

func (w *errWriter) loraID(ev *Event) {
	if ev.HasLoraID {
		w.try(w.enc.EncodeInt(ev.LoraID))
	} else {
		w.try(w.enc.EncodeNil())
	}
}

func (e *Encoder) encode(b *Batch) error {
	w := &errWriter{enc: e.enc}
	w.try(w.enc.EncodeArrayLen(3))
	w.try(w.enc.EncodeFloat64(b.TS))
	w.try(w.enc.EncodeArrayLen(len(b.Events)))
	for i := range b.Events {
		ev := &b.Events[i]
		if ev.Kind < BlockStored || ev.Kind > AllBlocksCleared {
			return fmt.Errorf("kvevents: event %d: unknown kind %v", i, ev.Kind)
		}
		if e.Format == FormatArray {
			e.arrayEvent(w, ev)
		} else {
			e.mapEvent(w, ev)
		}
	}
	if b.HasDPRank {
		w.try(w.enc.EncodeInt(int64(b.DPRank)))
	} else {
		w.try(w.enc.EncodeNil())
	}
	return w.err
}

func (e *Encoder) arrayEvent(w *errWriter, ev *Event) {
	switch ev.Kind {
	case BlockStored:
		n := 7
		if ev.LoraName != "" {
			n = 8
		}
		w.try(w.enc.EncodeArrayLen(n))
		w.str(TagBlockStored)
		w.hashes(ev.Hashes, ev.RawHashes)
		w.parent(ev)
		w.tokens(ev.TokenIDs)
		w.try(w.enc.EncodeInt(int64(ev.BlockSize)))
		w.loraID(ev)
		w.optStr(ev.Medium)
		if n == 8 {
			w.str(ev.LoraName)
		}
	case BlockRemoved:
		w.try(w.enc.EncodeArrayLen(3))
		w.str(TagBlockRemoved)
		w.hashes(ev.Hashes, ev.RawHashes)
		w.optStr(ev.Medium)
	case AllBlocksCleared:
		w.try(w.enc.EncodeArrayLen(1))
		w.str(TagAllBlocksCleared)
	}
}

// mapEvent writes the fields vLLM always writes (msgspec's omit_defaults
// leaves out only fields with defaults, such as extra_keys and group_idx).
func (e *Encoder) mapEvent(w *errWriter, ev *Event) {
	switch ev.Kind {
	case BlockStored:
		w.try(w.enc.EncodeMapLen(8))
		w.str("type")
		w.str(TagBlockStored)
		w.str("block_hashes")
		w.hashes(ev.Hashes, ev.RawHashes)
		w.str("parent_block_hash")
		w.parent(ev)
		w.str("token_ids")
		w.tokens(ev.TokenIDs)
		w.str("block_size")
		w.try(w.enc.EncodeInt(int64(ev.BlockSize)))
		w.str("lora_id")
		w.loraID(ev)
		w.str("medium")
		w.optStr(ev.Medium)
		w.str("lora_name")
		w.optStr(ev.LoraName)
	case BlockRemoved:
		w.try(w.enc.EncodeMapLen(3))
		w.str("type")
		w.str(TagBlockRemoved)
		w.str("block_hashes")
		w.hashes(ev.Hashes, ev.RawHashes)
		w.str("medium")
		w.optStr(ev.Medium)
	case AllBlocksCleared:
		w.try(w.enc.EncodeMapLen(1))
		w.str("type")
		w.str(TagAllBlocksCleared)
	}
}

// AppendSeq appends the 8-byte big-endian sequence frame.
func AppendSeq(dst []byte, seq uint64) []byte {
	return binary.BigEndian.AppendUint64(dst, seq)
}

// ParseMessage splits a received ZMQ message into topic, sequence number and
// payload. It accepts vLLM's three frames.
func ParseMessage(frames [][]byte) (topic string, seq uint64, payload []byte, err error) {
	if len(frames) != 3 {
		return "", 0, nil, fmt.Errorf("kvevents: message has %d frames, want 3 (topic, seq, payload)", len(frames))
	}
	if len(frames[1]) != 8 {
		return "", 0, nil, fmt.Errorf("kvevents: sequence frame has %d bytes, want 8", len(frames[1]))
	}
	return string(frames[0]), binary.BigEndian.Uint64(frames[1]), frames[2], nil
}

// HashFromBytes folds a vLLM block-hash digest into the integer vLLM sends
// when VLLM_KV_EVENTS_USE_INT_BLOCK_HASHES is set (its default): the last 8
// bytes, big-endian.
func HashFromBytes(b []byte) uint64 {
	var buf [8]byte
	n := min(len(b), 8)
	copy(buf[8-n:], b[len(b)-n:])
	return binary.BigEndian.Uint64(buf[:])
}
