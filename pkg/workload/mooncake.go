package workload

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"strconv"
	"time"
)

// MooncakeBlockTokens is the number of prompt tokens one Mooncake hash id
// stands for. It is a multiple of every KV block size in use (16, 64), so
// shared Mooncake blocks are shared engine blocks.
const MooncakeBlockTokens = 512

// mooncakeDomain separates the token streams of Mooncake blocks from every
// other seeded stream.
const mooncakeDomain = 0x6d6f6f6e63616b65 // "mooncake"

// mooncakeBlockSeed is the seed of the 512 token ids of one hash id. It
// depends on the id alone, not on the workload seed: the README's contract
// is that equal ids are equal blocks, in every workload and every process.
func mooncakeBlockSeed(id int64) uint64 { return derive(0, mooncakeDomain, uint64(id)) }

// MooncakeTrace is a Mooncake request trace (FAST'25 release format): one
// JSON object a line,
//
//	{"timestamp": ms, "input_length": n, "output_length": n, "hash_ids": [id, ...]}
//
// Each hash id stands for one 512-token block of the prompt; requests that
// share leading ids share that prefix. It is a Dataset whose requests keep
// the trace's timestamps, and it is safe for concurrent use.
type MooncakeTrace struct {
	rows []mooncakeRow
	ids  []int64 // the hash ids of all rows, back to back
}

type mooncakeRow struct {
	at            time.Duration
	input, output int
	ids           []int64 // a window of MooncakeTrace.ids
}

// LoadMooncake reads the Mooncake trace file at path (see ReadMooncake).
func LoadMooncake(path string) (*MooncakeTrace, error) {
	return loadFile(path, ReadMooncake)
}

// ReadMooncake reads a whole Mooncake trace. Every row must be an object with
// exactly the four fields, each once: timestamp a number of milliseconds ≥ 0
// (fractions allowed) not before the previous row's, input_length and
// output_length integers ≥ 1, and hash_ids non-negative integers whose
// blocks fit input_length exactly — 512 × (len−1) < input_length ≤ 512 × len,
// since only the last block may be partial. Anything else, including an
// empty line, is a *RowError naming the line.
func ReadMooncake(r io.Reader) (*MooncakeTrace, error) {
	t := &MooncakeTrace{}
	type span struct{ lo, hi int }
	var spans []span
	var prev time.Duration
	err := eachLine(r, func(line []byte, n int) error {
		lo := len(t.ids)
		row, ids, err := parseMooncakeLine(line, t.ids)
		if err != nil {
			return &RowError{Line: n, Err: err}
		}
		if len(t.rows) > 0 && row.at < prev {
			return &RowError{Line: n, Err: fmt.Errorf("timestamp %s is before the previous row's %s", fmtMillis(row.at), fmtMillis(prev))}
		}
		prev = row.at
		t.ids = ids
		t.rows = append(t.rows, row)
		spans = append(spans, span{lo, len(ids)})
		return nil
	})
	if err != nil {
		return nil, err
	}
	if len(t.rows) == 0 {
		return nil, errors.New("no rows")
	}
	// Windows are cut only now: appending may have moved t.ids.
	for i, s := range spans {
		t.rows[i].ids = t.ids[s.lo:s.hi:s.hi]
	}
	return t, nil
}

func fmtMillis(d time.Duration) string {
	return strconv.FormatFloat(float64(d)/float64(time.Millisecond), 'f', -1, 64) + " ms"
}

// maxMillis bounds timestamps (about 31 years) so that they fit a Duration.
const maxMillis = 1e12

// parseMooncakeLine parses one row, appending its hash ids to ids. It walks
// the JSON tokens itself rather than unmarshalling into a struct so that an
// unknown or repeated field, a null, a quoted number or a fraction where an
// integer belongs are errors, not silently accepted.
func parseMooncakeLine(line []byte, ids []int64) (mooncakeRow, []int64, error) {
	var row mooncakeRow
	if len(bytes.TrimSpace(line)) == 0 {
		return row, ids, errors.New("empty line")
	}
	dec := json.NewDecoder(bytes.NewReader(line))
	dec.UseNumber()
	if err := expectDelim(dec, '{', "a JSON object"); err != nil {
		return row, ids, err
	}
	const (
		hasTimestamp = 1 << iota
		hasInput
		hasOutput
		hasHashIDs
	)
	seen := 0
	first := len(ids)
	for dec.More() {
		tok, err := dec.Token()
		if err != nil {
			return row, ids, syntaxErr(err)
		}
		key, ok := tok.(string)
		if !ok {
			return row, ids, fmt.Errorf("want a field name, got %v", tok)
		}
		var bit int
		switch key {
		case "timestamp":
			bit = hasTimestamp
			ms, err := numberToken(dec, key)
			if err != nil {
				return row, ids, err
			}
			v, err := strconv.ParseFloat(ms.String(), 64)
			if err != nil || v < 0 || v > maxMillis {
				return row, ids, fmt.Errorf("timestamp: want milliseconds in [0, %g], got %s", float64(maxMillis), ms)
			}
			row.at = time.Duration(math.Round(v * float64(time.Millisecond)))
		case "input_length", "output_length":
			v, err := intToken(dec, key, 1, maxLength)
			if err != nil {
				return row, ids, err
			}
			if key == "input_length" {
				bit, row.input = hasInput, int(v)
			} else {
				bit, row.output = hasOutput, int(v)
			}
		case "hash_ids":
			bit = hasHashIDs
			// Most of a row is its hash ids: decoding the array as one raw
			// value and scanning it here is ten times cheaper than a token
			// each.
			var raw json.RawMessage
			if err := dec.Decode(&raw); err != nil {
				return row, ids, syntaxErr(err)
			}
			if ids, err = appendHashIDs(ids, raw); err != nil {
				return row, ids, err
			}
		default:
			return row, ids, fmt.Errorf("unknown field %q", key)
		}
		if seen&bit != 0 {
			return row, ids, fmt.Errorf("duplicate field %q", key)
		}
		seen |= bit
	}
	if err := expectDelim(dec, '}', "end of object"); err != nil {
		return row, ids, err
	}
	if _, err := dec.Token(); err != io.EOF {
		return row, ids, errors.New("text after the object")
	}
	for _, f := range []struct {
		bit  int
		name string
	}{{hasTimestamp, "timestamp"}, {hasInput, "input_length"}, {hasOutput, "output_length"}, {hasHashIDs, "hash_ids"}} {
		if seen&f.bit == 0 {
			return row, ids, fmt.Errorf("missing field %q", f.name)
		}
	}
	n := len(ids) - first
	if row.input > MooncakeBlockTokens*n || row.input <= MooncakeBlockTokens*(n-1) {
		return row, ids, fmt.Errorf("input_length %d does not fit %d hash_ids: %d blocks of %d tokens hold %d to %d tokens",
			row.input, n, n, MooncakeBlockTokens, max(0, MooncakeBlockTokens*(n-1)+1), MooncakeBlockTokens*n)
	}
	row.ids = ids[first:len(ids):len(ids)]
	return row, ids, nil
}

// appendHashIDs appends the ids of raw, a valid JSON value, which must be an
// array of non-negative integers.
func appendHashIDs(ids []int64, raw []byte) ([]int64, error) {
	i := skipSpace(raw, 0)
	if raw[i] != '[' {
		return ids, fmt.Errorf("hash_ids: want an array, got %s", truncate(string(raw), 40))
	}
	i = skipSpace(raw, i+1)
	if raw[i] == ']' {
		return ids, nil
	}
	for k := 0; ; k++ {
		j := i
		for j < len(raw) && !isDelim(raw[j]) {
			j++
		}
		v, ok := parseID(raw[i:j])
		if !ok {
			return ids, fmt.Errorf("hash_ids[%d]: want an integer in [0, %d], got %s", k, int64(math.MaxInt64), truncate(string(raw[i:j]), 40))
		}
		ids = append(ids, v)
		// raw is valid JSON, so after an element comes ',' or ']'.
		if i = skipSpace(raw, j); raw[i] == ']' {
			return ids, nil
		}
		i = skipSpace(raw, i+1)
	}
}

// parseID parses a non-negative decimal int64.
func parseID(b []byte) (int64, bool) {
	if len(b) == 0 || len(b) > 19 {
		return 0, false
	}
	var v uint64
	for _, c := range b {
		if c < '0' || c > '9' {
			return 0, false
		}
		v = v*10 + uint64(c-'0')
	}
	return int64(v), v <= math.MaxInt64
}

func skipSpace(b []byte, i int) int {
	for i < len(b) && (b[i] == ' ' || b[i] == '\t' || b[i] == '\n' || b[i] == '\r') {
		i++
	}
	return i
}

func isDelim(c byte) bool {
	return c == ',' || c == ']' || c == ' ' || c == '\t' || c == '\n' || c == '\r'
}

func expectDelim(dec *json.Decoder, d json.Delim, want string) error {
	tok, err := dec.Token()
	if err != nil {
		return syntaxErr(err)
	}
	if got, ok := tok.(json.Delim); !ok || got != d {
		return fmt.Errorf("want %s, got %v", want, tokenString(tok))
	}
	return nil
}

func numberToken(dec *json.Decoder, field string) (json.Number, error) {
	tok, err := dec.Token()
	if err != nil {
		return "", syntaxErr(err)
	}
	n, ok := tok.(json.Number)
	if !ok {
		return "", fmt.Errorf("%s: want a number, got %s", field, tokenString(tok))
	}
	return n, nil
}

func intToken(dec *json.Decoder, field string, lo, hi int64) (int64, error) {
	n, err := numberToken(dec, field)
	if err != nil {
		return 0, err
	}
	v, err := strconv.ParseInt(n.String(), 10, 64)
	if err != nil || v < lo || v > hi {
		return 0, fmt.Errorf("%s: want an integer in [%d, %d], got %s", field, lo, hi, n)
	}
	return v, nil
}

func tokenString(tok json.Token) string {
	switch t := tok.(type) {
	case nil:
		return "null"
	case string:
		return strconv.Quote(t)
	default:
		return fmt.Sprint(t)
	}
}

func syntaxErr(err error) error {
	if err == io.EOF {
		return errors.New("unexpected end of line")
	}
	return fmt.Errorf("invalid JSON: %w", err)
}

// Len returns the number of rows.
func (t *MooncakeTrace) Len() int { return len(t.rows) }

// Timed reports true: requests carry the trace's timestamps.
func (t *MooncakeTrace) Timed() bool { return true }

// Request returns row i as a request: At is its timestamp, the prompt is the
// blocks of its hash ids cut to input_length, and Group is -1 (the prefix
// structure is in the blocks themselves).
func (t *MooncakeTrace) Request(i int) Request {
	row := &t.rows[i]
	return Request{
		Index:     i,
		At:        row.at,
		PromptLen: row.input,
		MaxTokens: row.output,
		Group:     -1,
		Item:      i,
		prompt:    promptPlan{blocks: row.ids},
	}
}

// HashIDs returns the hash ids of row i. The caller must not modify them.
func (t *MooncakeTrace) HashIDs(i int) []int64 { return t.rows[i].ids }
