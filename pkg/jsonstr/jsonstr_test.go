package jsonstr

import (
	"encoding/json"
	"math/rand/v2"
	"testing"
	"unicode/utf8"
)

func TestAppendEscapedMatchesEncodingJSON(t *testing.T) {
	cases := []string{"", "plain", `q"b\s`, "\n\r\t\x00\x1f\x7f", "é€😀", "\u2028\u2029", "\xff\xfeab\xc3", "<&>", " <128000>"}
	rng := rand.New(rand.NewPCG(1, 2))
	for range 2000 {
		b := make([]byte, rng.IntN(12))
		for i := range b {
			b[i] = byte(rng.IntN(256))
		}
		cases = append(cases, string(b))
	}
	for _, s := range cases {
		var got, want string
		if err := json.Unmarshal(Append(nil, s), &got); err != nil {
			t.Fatalf("%q: our encoding does not parse: %v", s, err)
		}
		w, _ := json.Marshal(s)
		if err := json.Unmarshal(w, &want); err != nil {
			t.Fatal(err)
		}
		if got != want {
			t.Fatalf("%q: decoded %q, encoding/json gives %q", s, got, want)
		}
		if !utf8.Valid(Append(nil, s)) {
			t.Fatalf("%q: output is not valid UTF-8", s)
		}
	}
}
