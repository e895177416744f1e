// Package jsonscan reads JSON in place, without building values: it walks
// the members of an object and the elements of an array with their byte
// offsets, skips (and so validates) whatever the caller does not read, and
// decodes strings, integers and lists of token ids straight from the input.
// The data path uses it to read the few fields it needs from a request body
// in one pass and forward the rest byte for byte. What it accepts is what
// encoding/json's Valid accepts; strings decode to what encoding/json
// decodes. It depends on nothing but the standard library.
package jsonscan

import (
	"encoding/json"
	"fmt"
	"strconv"
	"unicode/utf16"
	"unicode/utf8"
)

// MaxDepth bounds nesting, as encoding/json does.
const MaxDepth = 10000

// SyntaxError is malformed JSON at byte Offset.
type SyntaxError struct {
	Offset int
	Msg    string
}

func (e *SyntaxError) Error() string { return fmt.Sprintf("%s at byte %d", e.Msg, e.Offset) }

func errAt(b []byte, i int, what string) error {
	if i >= len(b) {
		return &SyntaxError{Offset: i, Msg: "unexpected end of JSON input"}
	}
	return &SyntaxError{Offset: i, Msg: fmt.Sprintf("invalid character %q %s", b[i], what)}
}

// Space returns the index of the first non-whitespace byte at or after i.
func Space(b []byte, i int) int {
	for i < len(b) {
		switch b[i] {
		case ' ', '\t', '\n', '\r':
			i++
		default:
			return i
		}
	}
	return i
}

// Skip validates the value that starts at b[i] (no leading space) and
// returns the index just past it.
func Skip(b []byte, i int) (int, error) { return skip(b, i, 0) }

func skip(b []byte, i, depth int) (int, error) {
	if i >= len(b) {
		return i, errAt(b, i, "")
	}
	switch c := b[i]; {
	case c == '"':
		return skipString(b, i)
	case c == '{':
		if depth >= MaxDepth {
			return i, &SyntaxError{Offset: i, Msg: "exceeded max depth"}
		}
		return Object(b, i, func(m Member) (int, error) { return skip(b, m.Value, depth+1) })
	case c == '[':
		if depth >= MaxDepth {
			return i, &SyntaxError{Offset: i, Msg: "exceeded max depth"}
		}
		return Array(b, i, func(_, v int) (int, error) { return skip(b, v, depth+1) })
	case c == '-' || (c >= '0' && c <= '9'):
		return skipNumber(b, i)
	case c == 't':
		return literal(b, i, "true")
	case c == 'f':
		return literal(b, i, "false")
	case c == 'n':
		return literal(b, i, "null")
	}
	return i, errAt(b, i, "looking for beginning of value")
}

func literal(b []byte, i int, lit string) (int, error) {
	for k := 0; k < len(lit); k++ {
		if i+k >= len(b) || b[i+k] != lit[k] {
			return i + k, errAt(b, i+k, "in literal "+lit)
		}
	}
	return i + len(lit), nil
}

func isDigit(c byte) bool { return c >= '0' && c <= '9' }

func skipNumber(b []byte, i int) (int, error) {
	if b[i] == '-' {
		i++
	}
	switch {
	case i < len(b) && b[i] == '0':
		i++
	case i < len(b) && b[i] >= '1' && b[i] <= '9':
		for i++; i < len(b) && isDigit(b[i]); i++ {
		}
	default:
		return i, errAt(b, i, "in numeric literal")
	}
	if i < len(b) && b[i] == '.' {
		i++
		if i >= len(b) || !isDigit(b[i]) {
			return i, errAt(b, i, "after decimal point in numeric literal")
		}
		for i++; i < len(b) && isDigit(b[i]); i++ {
		}
	}
	if i < len(b) && (b[i] == 'e' || b[i] == 'E') {
		i++
		if i < len(b) && (b[i] == '+' || b[i] == '-') {
			i++
		}
		if i >= len(b) || !isDigit(b[i]) {
			return i, errAt(b, i, "in exponent of numeric literal")
		}
		for i++; i < len(b) && isDigit(b[i]); i++ {
		}
	}
	return i, nil
}

func isHex(c byte) bool { return isDigit(c) || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F') }

// skipString validates the string at b[i] == '"'; it returns the index past
// the closing quote.
func skipString(b []byte, i int) (int, error) {
	end, _, err := scanString(b, i)
	return end, err
}

// scanString is skipString that also says whether the string holds an
// escape or a non-ASCII byte (and so needs more than a copy to decode).
func scanString(b []byte, i int) (end int, plain bool, err error) {
	plain = true
	for i++; i < len(b); i++ {
		c := b[i]
		switch {
		case c == '"':
			return i + 1, plain, nil
		case c == '\\':
			plain = false
			i++
			if i >= len(b) {
				return i, false, errAt(b, i, "")
			}
			switch b[i] {
			case '"', '\\', '/', 'b', 'f', 'n', 'r', 't':
			case 'u':
				for k := 1; k <= 4; k++ {
					if i+k >= len(b) || !isHex(b[i+k]) {
						return i + k, false, errAt(b, i+k, "in \\u hexadecimal character escape")
					}
				}
				i += 4
			default:
				return i, false, errAt(b, i, "in string escape code")
			}
		case c < 0x20:
			return i, false, errAt(b, i, "in string literal")
		case c >= utf8.RuneSelf:
			plain = false
		}
	}
	return i, false, errAt(b, i, "")
}

// Member is one member of an object as Object sees it: the key's raw bytes
// (between the quotes, escapes not decoded; Escaped says whether it has
// any), the offset of the key's opening quote and that of the value's first
// byte.
type Member struct {
	Key      []byte
	Escaped  bool
	KeyStart int
	Value    int
}

// Name returns the member's key, decoded.
func (m Member) Name() string {
	if m.Escaped {
		return Unquote(m.Key)
	}
	return string(m.Key)
}

// Object walks the object at b[i] == '{', calling fn for each member (its
// Value always indexes a byte of b); fn must consume the value (Skip it, at least) and return the index past it.
// Object returns the index past the closing brace.
func Object(b []byte, i int, fn func(m Member) (int, error)) (int, error) {
	if i >= len(b) || b[i] != '{' {
		return i, errAt(b, i, "looking for beginning of object")
	}
	i = Space(b, i+1)
	if i < len(b) && b[i] == '}' {
		return i + 1, nil
	}
	for {
		if i >= len(b) || b[i] != '"' {
			return i, errAt(b, i, "looking for beginning of object key string")
		}
		end, plain, err := scanString(b, i)
		if err != nil {
			return end, err
		}
		m := Member{Key: b[i+1 : end-1], Escaped: !plain, KeyStart: i}
		i = Space(b, end)
		if i >= len(b) || b[i] != ':' {
			return i, errAt(b, i, "after object key")
		}
		m.Value = Space(b, i+1)
		if m.Value >= len(b) {
			return m.Value, errAt(b, m.Value, "")
		}
		if i, err = fn(m); err != nil {
			return i, err
		}
		i = Space(b, i)
		if i >= len(b) {
			return i, errAt(b, i, "")
		}
		switch b[i] {
		case ',':
			i = Space(b, i+1)
		case '}':
			return i + 1, nil
		default:
			return i, errAt(b, i, "after object key:value pair")
		}
	}
}

// Array walks the array at b[i] == '['; fn is called with each element's
// position in the array and the index of its first byte (always a byte of
// b), and must consume
// it. Array returns the index past the closing bracket.
func Array(b []byte, i int, fn func(n, v int) (int, error)) (int, error) {
	if i >= len(b) || b[i] != '[' {
		return i, errAt(b, i, "looking for beginning of array")
	}
	i = Space(b, i+1)
	if i < len(b) && b[i] == ']' {
		return i + 1, nil
	}
	for n := 0; ; n++ {
		if i >= len(b) {
			return i, errAt(b, i, "")
		}
		var err error
		if i, err = fn(n, i); err != nil {
			return i, err
		}
		i = Space(b, i)
		if i >= len(b) {
			return i, errAt(b, i, "")
		}
		switch b[i] {
		case ',':
			i = Space(b, i+1)
		case ']':
			return i + 1, nil
		default:
			return i, errAt(b, i, "after array element")
		}
	}
}

// String decodes the string at b[i] == '"' as encoding/json would (invalid
// UTF-8 and lone surrogates become U+FFFD) and returns the index past it.
func String(b []byte, i int) (string, int, error) {
	if i >= len(b) || b[i] != '"' {
		return "", i, errAt(b, i, "looking for beginning of string")
	}
	end, plain, err := scanString(b, i)
	if err != nil {
		return "", end, err
	}
	raw := b[i+1 : end-1]
	if plain {
		return string(raw), end, nil
	}
	s, ok := unescape(raw)
	if !ok {
		// Invalid UTF-8 or surrogate escapes: let encoding/json say what
		// they decode to.
		if err := json.Unmarshal(b[i:end], &s); err != nil {
			return "", end, &SyntaxError{Offset: i, Msg: err.Error()}
		}
	}
	return s, end, nil
}

// Unquote decodes raw string contents (as Object passes keys).
func Unquote(raw []byte) string {
	if s, ok := unescape(raw); ok {
		return s
	}
	var s string
	q := make([]byte, 0, len(raw)+2)
	q = append(append(append(q, '"'), raw...), '"')
	_ = json.Unmarshal(q, &s)
	return s
}

// unescape decodes validated string contents; it reports false for what it
// leaves to encoding/json: invalid UTF-8 and \u escapes of surrogates.
func unescape(raw []byte) (string, bool) {
	out := make([]byte, 0, len(raw))
	for i := 0; i < len(raw); {
		c := raw[i]
		if c >= utf8.RuneSelf {
			r, size := utf8.DecodeRune(raw[i:])
			if r == utf8.RuneError && size == 1 {
				return "", false
			}
			out = append(out, raw[i:i+size]...)
			i += size
			continue
		}
		if c != '\\' {
			out = append(out, c)
			i++
			continue
		}
		switch e := raw[i+1]; e {
		case 'b':
			out = append(out, '\b')
		case 'f':
			out = append(out, '\f')
		case 'n':
			out = append(out, '\n')
		case 'r':
			out = append(out, '\r')
		case 't':
			out = append(out, '\t')
		case 'u':
			v, _ := strconv.ParseUint(string(raw[i+2:i+6]), 16, 32)
			if utf16.IsSurrogate(rune(v)) {
				return "", false
			}
			out = utf8.AppendRune(out, rune(v))
			i += 6
			continue
		default: // '"', '\\', '/'
			out = append(out, e)
		}
		i += 2
	}
	return string(out), true
}

// RangeError is a token id outside [0, limit).
type RangeError struct {
	Index int
	Value string
	Limit uint32
}

func (e *RangeError) Error() string {
	return fmt.Sprintf("token id %s at position %d out of range [0, %d)", e.Value, e.Index, e.Limit)
}

// ErrNotInt is returned by Uint32s for an element that is not an integer.
var ErrNotInt = fmt.Errorf("not a list of integers")

// Uint32s appends to dst the array of integers at b[i] == '[' and returns
// the index past it. An element that is not an integer literal (a fraction,
// an exponent, a string, null) is ErrNotInt, wrapped with its offset; an
// integer outside [0, limit) a *RangeError.
func Uint32s(dst []uint32, b []byte, i int, limit uint32) ([]uint32, int, error) {
	if i >= len(b) || b[i] != '[' {
		return dst, i, errAt(b, i, "looking for beginning of array")
	}
	i = Space(b, i+1)
	if i < len(b) && b[i] == ']' {
		return dst, i + 1, nil
	}
	for n := 0; ; n++ {
		start := i
		neg := i < len(b) && b[i] == '-'
		if neg {
			i++
		}
		if i >= len(b) || !isDigit(b[i]) {
			if _, err := Skip(b, i); err == nil && !neg {
				return dst, i, fmt.Errorf("element %d at byte %d: %w", n, i, ErrNotInt)
			}
			return dst, i, errAt(b, i, "in numeric literal")
		}
		var v uint64
		if b[i] == '0' {
			i++
		} else {
			for ; i < len(b) && isDigit(b[i]); i++ {
				if v <= uint64(limit) {
					v = v*10 + uint64(b[i]-'0')
				}
			}
		}
		if i < len(b) && (b[i] == '.' || b[i] == 'e' || b[i] == 'E') {
			return dst, i, fmt.Errorf("element %d at byte %d: %w", n, start, ErrNotInt)
		}
		if (neg && v != 0) || v >= uint64(limit) {
			return dst, i, &RangeError{Index: n, Value: string(b[start:i]), Limit: limit}
		}
		dst = append(dst, uint32(v))
		i = Space(b, i)
		if i >= len(b) {
			return dst, i, errAt(b, i, "")
		}
		switch b[i] {
		case ',':
			i = Space(b, i+1)
		case ']':
			return dst, i + 1, nil
		default:
			return dst, i, errAt(b, i, "after array element")
		}
	}
}

// Document checks that b is one JSON value with only whitespace around it
// and returns the offsets of its first byte and of the end of the value.
func Document(b []byte) (start, end int, err error) {
	start = Space(b, 0)
	if end, err = Skip(b, start); err != nil {
		return start, end, err
	}
	if j := Space(b, end); j != len(b) {
		return start, end, errAt(b, j, "after top-level value")
	}
	return start, end, nil
}
