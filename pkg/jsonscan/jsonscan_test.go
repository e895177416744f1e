package jsonscan

import (
	"encoding/json"
	"errors"
	"strings"
	"testing"
)

var docs = []string{
	`{}`, `[]`, `""`, `0`, `-0`, `1.5e+3`, `-12.0E-2`, `true`, `false`, `null`,
	`{"a":[1,2,{"b":null}],"c":"x\"y\\z\u00e9\ud83d\ude00"}`, ` { "a" : 1 , "b" : [ ] } `,
	`"\ud800"`, `"\udc00x"`, "\"\xff\xfe\"", `"é€😀"`, `"\/\b\f\n\r\t"`,
	// malformed
	``, ` `, `{`, `{"a"}`, `{"a":}`, `{"a":1,}`, `[1,]`, `[1 2]`, `01`, `1.`, `1e`, `-`, `.5`, `+1`,
	`tru`, `nul`, `"abc`, `"a\x"`, `"\u12"`, "\"a\nb\"", `{"a":1}}`, `{1:2}`, `[1]x`, `{"a":1 "b":2}`,
}

func TestDocumentAgreesWithEncodingJSON(t *testing.T) {
	for _, d := range docs {
		_, _, err := Document([]byte(d))
		if (err == nil) != json.Valid([]byte(d)) {
			t.Errorf("%q: ours %v, encoding/json valid=%v", d, err, json.Valid([]byte(d)))
		}
	}
}

func TestStringDecodesAsEncodingJSON(t *testing.T) {
	for _, d := range docs {
		if !strings.HasPrefix(d, `"`) || !json.Valid([]byte(d)) {
			continue
		}
		var want string
		_ = json.Unmarshal([]byte(d), &want)
		got, end, err := String([]byte(d), 0)
		if err != nil || got != want || end != len(d) {
			t.Errorf("%q: got %q %d %v, want %q", d, got, end, err, want)
		}
	}
}

func TestObjectSpans(t *testing.T) {
	b := []byte(`{ "model" : "m", "pro\u006dpt":[1, 2 ,3] ,"x":{"y":[true]}}`)
	var keys []string
	var vals []string
	end, err := Object(b, 0, func(m Member) (int, error) {
		keys = append(keys, m.Name())
		e, err := Skip(b, m.Value)
		vals = append(vals, string(b[m.Value:e]))
		return e, err
	})
	if err != nil || end != len(b) {
		t.Fatal(end, err)
	}
	if strings.Join(keys, "|") != "model|prompt|x" || strings.Join(vals, "|") != `"m"|[1, 2 ,3]|{"y":[true]}` {
		t.Fatalf("%q %q", keys, vals)
	}
}

func TestUint32s(t *testing.T) {
	for _, c := range []struct {
		in   string
		want []uint32
		err  error
	}{
		{`[]`, nil, nil},
		{`[ 0 , 7,128255 ]`, []uint32{0, 7, 128255}, nil},
		{`[-0]`, []uint32{0}, nil},
		{`[1,128256]`, nil, &RangeError{}},
		{`[1,-2]`, nil, &RangeError{}},
		{`[99999999999999999999999]`, nil, &RangeError{}},
		{`[1.0]`, nil, ErrNotInt},
		{`[1e2]`, nil, ErrNotInt},
		{`["a"]`, nil, ErrNotInt},
		{`[null]`, nil, ErrNotInt},
		{`[1,]`, nil, &SyntaxError{}},
		{`[01]`, nil, &SyntaxError{}},
		{`[1`, nil, &SyntaxError{}},
	} {
		got, end, err := Uint32s(nil, []byte(c.in), 0, 128256)
		switch want := c.err.(type) {
		case nil:
			if err != nil || end != len(c.in) || len(got) != len(c.want) {
				t.Errorf("%s: %v %d %v", c.in, got, end, err)
			}
			for i := range got {
				if got[i] != c.want[i] {
					t.Errorf("%s: %v", c.in, got)
				}
			}
		case *RangeError:
			var re *RangeError
			if !errors.As(err, &re) {
				t.Errorf("%s: %v, want a range error", c.in, err)
			}
		case *SyntaxError:
			var se *SyntaxError
			if !errors.As(err, &se) {
				t.Errorf("%s: %v, want a syntax error", c.in, err)
			}
		default:
			if !errors.Is(err, want) {
				t.Errorf("%s: %v, want %v", c.in, err, want)
			}
		}
	}
}

// FuzzScan: Document accepts exactly what encoding/json accepts, strings
// decode alike, and lists of integers decode as []int64 does.
func FuzzScan(f *testing.F) {
	for _, d := range docs {
		f.Add(d)
	}
	f.Add(`[1,2,3]`)
	f.Fuzz(func(t *testing.T, d string) {
		b := []byte(d)
		start, end, err := Document(b)
		if (err == nil) != json.Valid(b) {
			t.Fatalf("%q: ours %v, encoding/json valid=%v", d, err, json.Valid(b))
		}
		if err != nil {
			return
		}
		v := b[start:end]
		switch v[0] {
		case '"':
			var want string
			_ = json.Unmarshal(v, &want)
			if got, _, err := String(v, 0); err != nil || got != want {
				t.Fatalf("%q: string %q %v, want %q", d, got, err, want)
			}
		case '[':
			var want []int64
			werr := json.Unmarshal(v, &want)
			got, _, err := Uint32s(nil, v, 0, 1<<31)
			if werr == nil {
				ok := err == nil
				for _, x := range want {
					if x < 0 || x >= 1<<31 {
						ok = err != nil // ours refuses what is out of range
					}
				}
				if !ok {
					t.Fatalf("%q: %v %v, want %v", d, got, err, want)
				}
				if err == nil {
					for i := range want {
						if int64(got[i]) != want[i] {
							t.Fatalf("%q: %v, want %v", d, got, want)
						}
					}
				}
			} else if err == nil {
				t.Fatalf("%q: accepted %v, encoding/json: %v", d, got, werr)
			}
		}
	})
}
