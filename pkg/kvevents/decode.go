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

// mapLen decodes a map header, bounded like arrayLen.
func (d *decoder) mapLen(what string) (int, error) {
	n, err := d.dec.DecodeMapLen()
	if err != nil {
		return 0, fmt.Errorf("%s: %w", what, err)
	}
	if n < 0 {
		return 0, fmt.Errorf("%s: nil, want a map", what)
	}
	if 2*n > d.r.Len() {
		return 0, fmt.Errorf("%s: %w", what, errTooLong)
	}
	return n, nil
}

func (d *decoder) peek() (byte, error) { return d.dec.PeekCode() }

func isArray(c byte) bool {
	return msgpcode.IsFixedArray(c) || c == msgpcode.Array16 || c == msgpcode.Array32
}

func isMap(c byte) bool {
	return msgpcode.IsFixedMap(c) || c == msgpcode.Map16 || c == msgpcode.Map32
}

func (d *decoder) isNil() (bool, error) {
	c, err := d.peek()
	if err != nil {
		return false, err
	}
	if c == msgpcode.Nil {
		return true, d.dec.DecodeNil()
	}
	return false, nil
}

func (d *decoder) batch() (Batch, error) {
	c, err := d.peek()
	if err != nil {
		return Batch{}, fmt.Errorf("batch: %w", err)
	}
	if isMap(c) {
		return d.mapBatch()
	}
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
	if b.Events, err = d.events(); err != nil {
		return Batch{}, err
	}
	if n >= 3 {
		if b.DPRank, b.HasDPRank, err = d.dpRank(); err != nil {
			return Batch{}, err
		}
	}
	if err := d.skip(n - 3); err != nil {
		return Batch{}, err
	}
	return b, nil
}

// mapBatch reads an EventBatch encoded as a map (msgspec without
// array_like).
func (d *decoder) mapBatch() (Batch, error) {
	var b Batch
	n, err := d.mapLen("batch")
	if err != nil {
		return b, err
	}
	var haveTS, haveEvents bool
	for range n {
		k, err := d.key()
		if err != nil {
			return Batch{}, fmt.Errorf("batch: %w", err)
		}
		switch k {
		case "ts":
			b.TS, err = d.float("ts")
			haveTS = true
		case "events":
			b.Events, err = d.events()
			haveEvents = true
		case "data_parallel_rank":
			b.DPRank, b.HasDPRank, err = d.dpRank()
		default:
			err = d.skip(1)
		}
		if err != nil {
			return Batch{}, err
		}
	}
	if !haveTS || !haveEvents {
		return Batch{}, errors.New("batch: map without ts or events")
	}
	return b, nil
}

// key reads a map key, which vLLM writes as a string.
func (d *decoder) key() (string, error) {
	c, err := d.peek()
	if err != nil {
		return "", err
	}
	if !msgpcode.IsString(c) {
		return "", fmt.Errorf("map key of type 0x%02x, want a string", c)
	}
	return d.dec.DecodeString()
}

func (d *decoder) events() ([]Event, error) {
	ne, err := d.arrayLen("events")
	if err != nil {
		return nil, err
	}
	evs := make([]Event, 0, min(ne, 64))
	for i := range ne {
		ev, ok, err := d.event()
		if err != nil {
			return nil, fmt.Errorf("event %d: %w", i, err)
		}
		if ok {
			evs = append(evs, ev)
		}
	}
	return evs, nil
}

func (d *decoder) dpRank() (int, bool, error) {
	isNil, err := d.isNil()
	if err != nil {
		return 0, false, fmt.Errorf("data_parallel_rank: %w", err)
	}
	if isNil {
		return 0, false, nil
	}
	v, err := d.int("data_parallel_rank")
	if err != nil {
		return 0, false, err
	}
	if v < 0 || v > math.MaxInt32 {
		return 0, false, fmt.Errorf("data_parallel_rank %d out of range", v)
	}
	return int(v), true, nil
}

// int decodes an integer, refusing other types (msgpack's decoder would
// convert floats and strings).
func (d *decoder) int(what string) (int64, error) {
	c, err := d.peek()
	if err != nil {
		return 0, fmt.Errorf("%s: %w", what, err)
	}
	if !isInt(c) {
		return 0, fmt.Errorf("%s: type 0x%02x, want an integer", what, c)
	}
	v, err := d.dec.DecodeInt64()
	if err != nil {
		return 0, fmt.Errorf("%s: %w", what, err)
	}
	return v, nil
}

func isInt(c byte) bool {
	return msgpcode.IsFixedNum(c) || (c >= msgpcode.Uint8 && c <= msgpcode.Uint64) || (c >= msgpcode.Int8 && c <= msgpcode.Int64)
}

func (d *decoder) float(what string) (float64, error) {
	c, err := d.peek()
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
	v, err := d.int(what)
	return float64(v), err
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
		c, err := d.peek()
		if err != nil {
			return err
		}
		switch {
		case isArray(c):
			m, err := d.arrayLen("skipped array")
			if err != nil {
				return err
			}
			if err := d.skipDepth(m, depth+1); err != nil {
				return err
			}
		case isMap(c):
			m, err := d.mapLen("skipped map")
			if err != nil {
				return err
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

// eventFields are the fields of any event, as read from either shape.
type eventFields struct {
	ev                     Event
	haveHashes, haveTokens bool
	haveBlockSize          bool
}

func (d *decoder) event() (Event, bool, error) {
	c, err := d.peek()
	if err != nil {
		return Event{}, false, err
	}
	if isMap(c) {
		return d.mapEvent()
	}
	return d.arrayEvent()
}

func kindOf(tag string) Kind {
	switch tag {
	case TagBlockStored:
		return BlockStored
	case TagBlockRemoved:
		return BlockRemoved
	case TagAllBlocksCleared:
		return AllBlocksCleared
	}
	return 0
}

// field reads the value of one named field into f; unknown names are
// skipped.
func (d *decoder) field(f *eventFields, name string) error {
	ev := &f.ev
	var err error
	switch name {
	case "block_hashes":
		ev.Hashes, err = d.hashes()
		f.haveHashes = err == nil
	case "parent_block_hash":
		var isNil bool
		if isNil, err = d.isNil(); err == nil && !isNil {
			ev.Parent, err = d.hash()
			ev.HasParent = err == nil
		}
		if err != nil {
			err = fmt.Errorf("parent_block_hash: %w", err)
		}
	case "token_ids":
		ev.TokenIDs, err = d.tokens()
		f.haveTokens = err == nil
	case "block_size":
		var bs int64
		if bs, err = d.int("block_size"); err == nil {
			if bs < 1 || bs > math.MaxInt32 {
				return fmt.Errorf("block_size %d out of range", bs)
			}
			ev.BlockSize, f.haveBlockSize = int(bs), true
		}
	case "lora_id":
		var isNil bool
		if isNil, err = d.isNil(); err == nil && !isNil {
			ev.LoraID, err = d.int("lora_id")
			ev.HasLoraID = err == nil
		}
	case "medium":
		ev.Medium, err = d.optString("medium")
	case "lora_name":
		ev.LoraName, err = d.optString("lora_name")
	default:
		err = d.skip(1)
	}
	return err
}

// check validates the fields an event of f's kind must have.
func (f *eventFields) check() error {
	switch f.ev.Kind {
	case BlockStored:
		if !f.haveHashes || !f.haveTokens || !f.haveBlockSize {
			return errors.New("BlockStored without block_hashes, token_ids or block_size")
		}
	case BlockRemoved:
		if !f.haveHashes {
			return errors.New("BlockRemoved without block_hashes")
		}
	}
	return nil
}

// arrayFields are the positional fields of each kind, after the tag.
var arrayFields = map[Kind][]string{
	BlockStored:  {"block_hashes", "parent_block_hash", "token_ids", "block_size", "lora_id", "medium", "lora_name"},
	BlockRemoved: {"block_hashes", "medium"},
}

// arrayRequired is how many positional fields every vLLM version writes.
var arrayRequired = map[Kind]int{BlockStored: 4, BlockRemoved: 1}

func (d *decoder) arrayEvent() (Event, bool, error) {
	n, err := d.arrayLen("event")
	if err != nil {
		return Event{}, false, err
	}
	if n < 1 {
		return Event{}, false, errors.New("empty event array")
	}
	tag, err := d.tag()
	if err != nil {
		return Event{}, false, err
	}
	f := eventFields{ev: Event{Kind: kindOf(tag)}}
	if f.ev.Kind == 0 {
		return Event{}, false, d.skip(n - 1)
	}
	names := arrayFields[f.ev.Kind]
	// The leading fields have no defaults in vLLM's structs: they are
	// always written.
	if need := arrayRequired[f.ev.Kind]; n-1 < need {
		return Event{}, false, fmt.Errorf("%s has %d elements, want at least %d", tag, n, need+1)
	}
	for i := 1; i < n; i++ {
		if i-1 >= len(names) {
			if err := d.skip(n - i); err != nil {
				return Event{}, false, err
			}
			break
		}
		if err := d.field(&f, names[i-1]); err != nil {
			return Event{}, false, err
		}
	}
	if err := f.check(); err != nil {
		return Event{}, false, err
	}
	return f.ev, true, nil
}

func (d *decoder) tag() (string, error) {
	c, err := d.peek()
	if err != nil {
		return "", fmt.Errorf("tag: %w", err)
	}
	if !msgpcode.IsString(c) {
		return "", fmt.Errorf("tag: type 0x%02x, want a string", c)
	}
	s, err := d.dec.DecodeString()
	if err != nil {
		return "", fmt.Errorf("tag: %w", err)
	}
	return s, nil
}

func (d *decoder) mapEvent() (Event, bool, error) {
	n, err := d.mapLen("event")
	if err != nil {
		return Event{}, false, err
	}
	var f eventFields
	var tag string
	for range n {
		k, err := d.key()
		if err != nil {
			return Event{}, false, err
		}
		if k == "type" {
			if tag, err = d.tag(); err != nil {
				return Event{}, false, err
			}
			continue
		}
		if err := d.field(&f, k); err != nil {
			return Event{}, false, err
		}
	}
	if tag == "" {
		return Event{}, false, errors.New(`event map without "type"`)
	}
	k := kindOf(tag)
	if k == 0 {
		return Event{}, false, nil
	}
	f.ev.Kind = k
	// Fields of other kinds that a map carried do not belong to this one.
	switch k {
	case BlockRemoved:
		f.ev = Event{Kind: k, Hashes: f.ev.Hashes, Medium: f.ev.Medium}
	case AllBlocksCleared:
		f.ev = Event{Kind: k}
	}
	if err := f.check(); err != nil {
		return Event{}, false, err
	}
	return f.ev, true, nil
}

func (d *decoder) optString(what string) (string, error) {
	isNil, err := d.isNil()
	if err != nil || isNil {
		return "", err
	}
	c, err := d.peek()
	if err != nil {
		return "", err
	}
	if !msgpcode.IsString(c) {
		return "", fmt.Errorf("%s: type 0x%02x, want a string", what, c)
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
// negative from Python's hash()) or bytes (vLLM's digests), of which the
// last 8 are taken as a big-endian integer, as vLLM itself converts them.
func (d *decoder) hash() (uint64, error) {
	c, err := d.peek()
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
	if !isInt(c) {
		return 0, fmt.Errorf("hash of type 0x%02x, want an integer or bytes", c)
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
		v, err := d.int("token_ids")
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
