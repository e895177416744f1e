package native

import (
	"errors"
	"fmt"
	"math"
	"regexp"
	"strconv"
	"strings"

	"github.com/ardanlabs/jinja"
)

// The template engine writes `x | tojson(indent=N)` with Go's encoder:
// keys sorted and <, >, & escaped, where Hugging Face's tojson (Python's
// json.dumps, ensure_ascii=False) keeps the order and the characters. Meta's
// Llama 3.x templates write tool definitions that way, so the prompt's ids
// would differ from vLLM's after the tools. A template's indented tojson on
// a plain operand (a name, attributes, subscripts: what a filter binds to)
// is rewritten into a call of pyToJSON, passed with the variables.

const tojsonFunc = "__llmd_tojson_indent"

var indentedTojson = regexp.MustCompile(`([A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*|\[[^\[\]]*\])*)\s*\|\s*tojson\(\s*indent\s*=\s*(\d+)\s*\)`)

// rewriteIndentedTojson rewrites a template's indented tojson filters on
// plain operands into calls of tojsonFunc.
func rewriteIndentedTojson(src string) string {
	if !strings.Contains(src, "tojson") {
		return src
	}
	return indentedTojson.ReplaceAllString(src, tojsonFunc+"($1, $2)")
}

var tojsonCallable = jinja.NewCallable(tojsonFunc, func(args []jinja.Value, _ map[string]jinja.Value) (jinja.Value, error) {
	if len(args) != 2 || !args[1].IsInt() {
		return jinja.Value{}, errors.New("tojson: want a value and an indent")
	}
	var b strings.Builder
	if err := pyJSON(&b, args[0], int(args[1].AsInt()), 0); err != nil {
		return jinja.Value{}, err
	}
	return jinja.NewString(b.String()), nil
})

// pyJSON writes v as Python's json.dumps(v, indent=indent,
// ensure_ascii=False) does: members in order, ", " → ",\n", ": ".
func pyJSON(b *strings.Builder, v jinja.Value, indent, depth int) error {
	if depth > maxJSONDepth {
		return errors.New("tojson: nested too deeply")
	}
	newline := func(d int) {
		b.WriteByte('\n')
		b.WriteString(strings.Repeat(" ", indent*d))
	}
	switch {
	case v.IsNone() || v.IsUndefined():
		b.WriteString("null")
	case v.IsBool():
		b.WriteString(strconv.FormatBool(v.AsBool()))
	case v.IsInt():
		b.WriteString(strconv.FormatInt(v.AsInt(), 10))
	case v.IsFloat():
		s, err := pyFloat(v.AsFloat())
		if err != nil {
			return err
		}
		b.WriteString(s)
	case v.IsString():
		pyString(b, v.AsString())
	case v.IsList():
		items := v.AsList().Items
		if len(items) == 0 {
			b.WriteString("[]")
			return nil
		}
		b.WriteByte('[')
		for i, it := range items {
			if i > 0 {
				b.WriteByte(',')
			}
			newline(depth + 1)
			if err := pyJSON(b, it, indent, depth+1); err != nil {
				return err
			}
		}
		newline(depth)
		b.WriteByte(']')
	case v.IsDict():
		d := v.AsDict()
		if d.Len() == 0 {
			b.WriteString("{}")
			return nil
		}
		b.WriteByte('{')
		for i, k := range d.Keys {
			if i > 0 {
				b.WriteByte(',')
			}
			newline(depth + 1)
			pyString(b, k)
			b.WriteString(": ")
			if err := pyJSON(b, d.Data[k], indent, depth+1); err != nil {
				return err
			}
		}
		newline(depth)
		b.WriteByte('}')
	default:
		return fmt.Errorf("tojson: cannot encode %s", v.String())
	}
	return nil
}

// pyFloat is Python's float repr: the shortest digits, positional for
// decimal exponents in [-4, 16) with at least one decimal, else d.ddde±XX.
func pyFloat(f float64) (string, error) {
	if math.IsInf(f, 0) || math.IsNaN(f) {
		// Python writes Infinity/NaN (not JSON); refuse rather than guess.
		return "", fmt.Errorf("tojson: cannot encode %v", f)
	}
	e := strconv.FormatFloat(f, 'e', -1, 64) // like -1.2345e+06
	mant, expStr, _ := strings.Cut(e, "e")
	exp, _ := strconv.Atoi(expStr)
	if exp >= -4 && exp < 16 {
		s := strconv.FormatFloat(f, 'f', -1, 64)
		if !strings.Contains(s, ".") {
			s += ".0"
		}
		return s, nil
	}
	sign := "+"
	if exp < 0 {
		sign, exp = "-", -exp
	}
	return fmt.Sprintf("%se%s%02d", mant, sign, exp), nil
}

// pyString writes s as a JSON string the way Python does without
// ensure_ascii: only ", \ and control characters escaped.
func pyString(b *strings.Builder, s string) {
	b.WriteByte('"')
	for _, r := range s {
		switch r {
		case '"':
			b.WriteString(`\"`)
		case '\\':
			b.WriteString(`\\`)
		case '\n':
			b.WriteString(`\n`)
		case '\r':
			b.WriteString(`\r`)
		case '\t':
			b.WriteString(`\t`)
		case '\b':
			b.WriteString(`\b`)
		case '\f':
			b.WriteString(`\f`)
		default:
			if r < 0x20 {
				fmt.Fprintf(b, `\u%04x`, r)
			} else {
				b.WriteRune(r)
			}
		}
	}
	b.WriteByte('"')
}
