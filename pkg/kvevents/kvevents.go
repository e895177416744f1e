// Package kvevents is the wire format of vLLM's KV-cache events: the
// msgpack payload a vLLM engine publishes over ZMQ when blocks enter or leave
// its prefix cache, and the three-frame message that carries it.
//
// A message is three frames: the topic (vLLM's `kv@<pod>@<model>`
// convention), an 8-byte big-endian sequence number, and the payload. The
// payload is a msgpack array `[ts, [event, ...], data_parallel_rank]`, and
// each event is a tagged array, as vLLM's msgspec structs (array_like, tag)
// encode them:
//
//	["BlockStored", [hash, ...], parent_hash|nil, [token_id, ...], block_size, lora_id|nil, medium|nil]
//	["BlockRemoved", [hash, ...], medium|nil]
//	["AllBlocksCleared"]
//
// The simulator encodes with this package and the router decodes with it, so
// both speak exactly what a real vLLM sends. The decoder is lenient where vLLM
// versions differ (a missing or extra trailing field, hashes as integers or
// as bytes, unknown event tags) and strict where the input is malformed: it
// never panics and never allocates more than the payload can describe.
//
// This package is pure: no sockets, no clock, no global mutable state.
package kvevents

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"math"

	"github.com/vmihailenco/msgpack/v5"
	"github.com/vmihailenco/msgpack/v5/msgpcode"
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

// The tags vLLM writes as the first element of each event.
const (
	TagBlockStored      = "BlockStored"
	TagBlockRemoved     = "BlockRemoved"
	TagAllBlocksCleared = "AllBlocksCleared"
)

// MediumGPU is the medium vLLM reports for blocks in GPU memory.
const MediumGPU = "GPU"

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
	// Hashes are the block hashes, parent first (BlockStored, BlockRemoved).
	Hashes []uint64
	// Parent is the hash of the block before Hashes[0]; HasParent is false
	// when the first stored block starts the sequence (BlockStored).
	Parent    uint64
	HasParent bool
	// TokenIDs are the tokens of all stored blocks, len(Hashes)*BlockSize
	// of them (BlockStored).
	TokenIDs  []uint32
	BlockSize int
	// LoraID is set when HasLoraID (BlockStored).
	LoraID    int64
	HasLoraID bool
	// Medium is where the blocks live ("GPU", "CPU", ...); empty encodes as
	// nil.
	Medium string
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

// Encoder encodes batches; it reuses its buffer, so one Encoder serves one
// goroutine.
type Encoder struct {
	buf bytes.Buffer
	enc *msgpack.Encoder
}

// NewEncoder returns an Encoder.
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

// AppendBatch appends the msgpack payload of b to dst.
func AppendBatch(dst []byte, b *Batch) ([]byte, error) {
	p, err := NewEncoder().Encode(b)
	if err != nil {
		return dst, err
	}
	return append(dst, p...), nil
}

func (e *Encoder) encode(b *Batch) error {
	enc := e.enc
	var errs []error
	try := func(err error) {
		if err != nil {
			errs = append(errs, err)
		}
	}
	try(enc.EncodeArrayLen(3))
	try(enc.EncodeFloat64(b.TS))
	try(enc.EncodeArrayLen(len(b.Events)))
	for i := range b.Events {
		ev := &b.Events[i]
		switch ev.Kind {
		case BlockStored:
			try(enc.EncodeArrayLen(7))
			try(enc.EncodeString(TagBlockStored))
			try(encodeHashes(enc, ev.Hashes))
			if ev.HasParent {
				try(enc.EncodeUint(ev.Parent))
			} else {
				try(enc.EncodeNil())
			}
			try(enc.EncodeArrayLen(len(ev.TokenIDs)))
			for _, t := range ev.TokenIDs {
				try(enc.EncodeUint(uint64(t)))
			}
			try(enc.EncodeInt(int64(ev.BlockSize)))
			if ev.HasLoraID {
				try(enc.EncodeInt(ev.LoraID))
			} else {
				try(enc.EncodeNil())
			}
			try(encodeOptString(enc, ev.Medium))
		case BlockRemoved:
			try(enc.EncodeArrayLen(3))
			try(enc.EncodeString(TagBlockRemoved))
			try(encodeHashes(enc, ev.Hashes))
			try(encodeOptString(enc, ev.Medium))
		case AllBlocksCleared:
			try(enc.EncodeArrayLen(1))
			try(enc.EncodeString(TagAllBlocksCleared))
		default:
			return fmt.Errorf("kvevents: event %d: unknown kind %v", i, ev.Kind)
		}
	}
	if b.HasDPRank {
		try(enc.EncodeInt(int64(b.DPRank)))
	} else {
		try(enc.EncodeNil())
	}
	return errors.Join(errs...)
}

func encodeHashes(enc *msgpack.Encoder, hs []uint64) error {
	if err := enc.EncodeArrayLen(len(hs)); err != nil {
		return err
	}
	for _, h := range hs {
		if err := enc.EncodeUint(h); err != nil {
			return err
		}
	}
	return nil
}

func encodeOptString(enc *msgpack.Encoder, s string) error {
	if s == "" {
		return enc.EncodeNil()
	}
	return enc.EncodeString(s)
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

// DecodeBatch decodes a msgpack payload. Events with an unknown tag are
// skipped, so that a router keeps working when a newer vLLM adds kinds.
func DecodeBatch(payload []byte) (Batch, error) {
	r := bytes.NewReader(payload)
	d := &decoder{r: r, dec: msgpack.NewDecoder(r)}
	b, err := d.batch()
	if err != nil {
		return Batch{}, fmt.Errorf("kvevents: %w", err)
	}
	if r.Len() != 0 {
		return Batch{}, fmt.Errorf("kvevents: %d trailing bytes after the batch", r.Len())
	}
	return b, nil
}

type decoder struct {
	r   *bytes.Reader
	dec *msgpack.Decoder
}

var errTooLong = errors.New("declared length exceeds the payload")

// arrayLen decodes an array header and bounds its length by the bytes left:
// every element takes at least one byte.
func (d *decoder) arrayLen(what string) (int, error) {
	n, err := d.dec.DecodeArrayLen()
	if err != nil {
		return 0, fmt.Errorf("%s: %w", what, err)
	}
	if n < 0 {
		return 0, fmt.Errorf("%s: nil, want an array", what)
	}
	if n > d.r.Len() {
		return 0, fmt.Errorf("%s: %w", what, errTooLong)
	}
	return n, nil
}

func (d *decoder) isNil() (bool, error) {
	c, err := d.dec.PeekCode()
	if err != nil {
		return false, err
	}
	if c == msgpcode.Nil {
		return true, d.dec.DecodeNil()
	}
	return false, nil
}

func (d *decoder) batch() (Batch, error) {
	var b Batch
	n, err := d.arrayLen("batch")
	if err != nil {
		return b, err
	}
	if n < 2 {
		return b, fmt.Errorf("batch: %d elements, want at least 2 (ts, events)", n)
	}
	if b.TS, err = d.float("ts"); err != nil {
		return b, err
	}
	ne, err := d.arrayLen("events")
	if err != nil {
		return b, err
	}
	b.Events = make([]Event, 0, min(ne, 64))
	for i := range ne {
		ev, ok, err := d.event()
		if err != nil {
			return Batch{}, fmt.Errorf("event %d: %w", i, err)
		}
		if ok {
			b.Events = append(b.Events, ev)
		}
	}
	if n >= 3 {
		isNil, err := d.isNil()
		if err != nil {
			return Batch{}, fmt.Errorf("data_parallel_rank: %w", err)
		}
		if !isNil {
			v, err := d.dec.DecodeInt64()
			if err != nil {
				return Batch{}, fmt.Errorf("data_parallel_rank: %w", err)
			}
			if v < 0 || v > math.MaxInt32 {
				return Batch{}, fmt.Errorf("data_parallel_rank %d out of range", v)
			}
			b.DPRank, b.HasDPRank = int(v), true
		}
	}
	if err := d.skip(n - 3); err != nil {
		return Batch{}, err
	}
	return b, nil
}

func (d *decoder) float(what string) (float64, error) {
	c, err := d.dec.PeekCode()
	if err != nil {
		return 0, fmt.Errorf("%s: %w", what, err)
	}
	if c == msgpcode.Float || c == msgpcode.Double {
		v, err := d.dec.DecodeFloat64()
		if err != nil {
			return 0, fmt.Errorf("%s: %w", what, err)
		}
		return v, nil
	}
	// An integer timestamp is still a timestamp.
	v, err := d.dec.DecodeInt64()
	if err != nil {
		return 0, fmt.Errorf("%s: %w", what, err)
	}
	return float64(v), nil
}

// maxSkipDepth bounds the nesting of values the decoder skips, so that a
// hostile payload of nested arrays cannot exhaust the stack.
const maxSkipDepth = 32

// skip skips n values (ignored trailing fields and unknown events).
func (d *decoder) skip(n int) error { return d.skipDepth(n, 0) }

func (d *decoder) skipDepth(n, depth int) error {
	if depth > maxSkipDepth {
		return errors.New("values nested too deeply")
	}
	for range n {
		c, err := d.dec.PeekCode()
		if err != nil {
			return err
		}
		switch {
		case msgpcode.IsFixedArray(c) || c == msgpcode.Array16 || c == msgpcode.Array32:
			m, err := d.arrayLen("skipped array")
			if err != nil {
				return err
			}
			if err := d.skipDepth(m, depth+1); err != nil {
				return err
			}
		case msgpcode.IsFixedMap(c) || c == msgpcode.Map16 || c == msgpcode.Map32:
			m, err := d.dec.DecodeMapLen()
			if err != nil {
				return err
			}
			if m < 0 || 2*m > d.r.Len() {
				return errTooLong
			}
			if err := d.skipDepth(2*m, depth+1); err != nil {
				return err
			}
		default:
			if err := d.dec.Skip(); err != nil {
				return err
			}
		}
	}
	return nil
}

func (d *decoder) event() (Event, bool, error) {
	var ev Event
	n, err := d.arrayLen("event")
	if err != nil {
		return ev, false, err
	}
	if n < 1 {
		return ev, false, errors.New("empty event array")
	}
	tag, err := d.dec.DecodeString()
	if err != nil {
		return ev, false, fmt.Errorf("tag: %w", err)
	}
	switch tag {
	case TagBlockStored:
		ev.Kind = BlockStored
		if n < 5 {
			return ev, false, fmt.Errorf("BlockStored has %d elements, want at least 5", n)
		}
		if ev.Hashes, err = d.hashes(); err != nil {
			return ev, false, err
		}
		isNil, err := d.isNil()
		if err != nil {
			return ev, false, fmt.Errorf("parent_block_hash: %w", err)
		}
		if !isNil {
			if ev.Parent, err = d.hash(); err != nil {
				return ev, false, fmt.Errorf("parent_block_hash: %w", err)
			}
			ev.HasParent = true
		}
		if ev.TokenIDs, err = d.tokens(); err != nil {
			return ev, false, err
		}
		bs, err := d.dec.DecodeInt64()
		if err != nil {
			return ev, false, fmt.Errorf("block_size: %w", err)
		}
		if bs < 1 || bs > math.MaxInt32 {
			return ev, false, fmt.Errorf("block_size %d out of range", bs)
		}
		ev.BlockSize = int(bs)
		if n >= 6 {
			isNil, err := d.isNil()
			if err != nil {
				return ev, false, fmt.Errorf("lora_id: %w", err)
			}
			if !isNil {
				if ev.LoraID, err = d.dec.DecodeInt64(); err != nil {
					return ev, false, fmt.Errorf("lora_id: %w", err)
				}
				ev.HasLoraID = true
			}
		}
		if n >= 7 {
			if ev.Medium, err = d.optString("medium"); err != nil {
				return ev, false, err
			}
		}
		return ev, true, d.skip(n - 7)
	case TagBlockRemoved:
		ev.Kind = BlockRemoved
		if n < 2 {
			return ev, false, fmt.Errorf("BlockRemoved has %d elements, want at least 2", n)
		}
		if ev.Hashes, err = d.hashes(); err != nil {
			return ev, false, err
		}
		if n >= 3 {
			if ev.Medium, err = d.optString("medium"); err != nil {
				return ev, false, err
			}
		}
		return ev, true, d.skip(n - 3)
	case TagAllBlocksCleared:
		ev.Kind = AllBlocksCleared
		return ev, true, d.skip(n - 1)
	}
	return ev, false, d.skip(n - 1)
}

func (d *decoder) optString(what string) (string, error) {
	isNil, err := d.isNil()
	if err != nil || isNil {
		return "", err
	}
	s, err := d.dec.DecodeString()
	if err != nil {
		return "", fmt.Errorf("%s: %w", what, err)
	}
	return s, nil
}

func (d *decoder) hashes() ([]uint64, error) {
	n, err := d.arrayLen("block_hashes")
	if err != nil {
		return nil, err
	}
	hs := make([]uint64, n)
	for i := range hs {
		if hs[i], err = d.hash(); err != nil {
			return nil, fmt.Errorf("block_hashes[%d]: %w", i, err)
		}
	}
	return hs, nil
}

// hash decodes a block hash: an integer (vLLM's int hashes, possibly
// negative from Python's hash()) or bytes (vLLM's newer ExternalBlockHash),
// of which the last 8 are taken as a big-endian integer.
func (d *decoder) hash() (uint64, error) {
	c, err := d.dec.PeekCode()
	if err != nil {
		return 0, err
	}
	if msgpcode.IsBin(c) || msgpcode.IsString(c) {
		n, err := d.dec.DecodeBytesLen()
		if err != nil {
			return 0, err
		}
		if n < 0 || n > d.r.Len() {
			return 0, errTooLong
		}
		var buf [8]byte
		skip := max(0, n-8)
		if _, err := d.r.Seek(int64(skip), 1); err != nil {
			return 0, err
		}
		if err := d.dec.ReadFull(buf[8-(n-skip):]); err != nil {
			return 0, err
		}
		return binary.BigEndian.Uint64(buf[:]), nil
	}
	if c == msgpcode.Nil {
		return 0, errors.New("nil hash")
	}
	return d.dec.DecodeUint64()
}

func (d *decoder) tokens() ([]uint32, error) {
	n, err := d.arrayLen("token_ids")
	if err != nil {
		return nil, err
	}
	ts := make([]uint32, n)
	for i := range ts {
		v, err := d.dec.DecodeInt64()
		if err != nil {
			return nil, fmt.Errorf("token_ids[%d]: %w", i, err)
		}
		if v < 0 || v > math.MaxUint32 {
			return nil, fmt.Errorf("token_ids[%d]: %d out of range", i, v)
		}
		ts[i] = uint32(v)
	}
	return ts, nil
}
