package workload

import (
	"bufio"
	"fmt"
	"os"
	"slices"
	"strings"
	"testing"
	"time"
)

// addFileLines adds the first n lines of a trace to a fuzz corpus, when the
// trace is present.
func addFileLines(f *testing.F, path string, n int, add func(string)) {
	file, err := os.Open(path)
	if err != nil {
		return
	}
	defer file.Close()
	sc := bufio.NewScanner(file)
	sc.Buffer(nil, maxLineBytes)
	for i := 0; i < n && sc.Scan(); i++ {
		add(sc.Text())
	}
}

func FuzzMooncakeLine(f *testing.F) {
	for _, s := range []string{
		`{"timestamp": 0, "input_length": 600, "output_length": 5, "hash_ids": [7, 8]}`,
		`{"timestamp": 1.5e3, "input_length": 1, "output_length": 1, "hash_ids": [0]}`,
		`{"hash_ids":[1],"output_length":2,"input_length":512,"timestamp":3}`,
		`{"timestamp": 0, "timestamp": 0}`,
		`{"timestamp": 0, "input_length": 10, "output_length": 5, "hash_ids": [1, null]}`,
		`{"timestamp": 0, "input_length": 10, "output_length": 5, "hash_ids": [1]} {}`,
		`{"\u0074imestamp": 0, "input_length": 10, "output_length": 5, "hash_ids": [1]}`,
		`[]`, ``, `{`,
	} {
		f.Add([]byte(s))
	}
	addFileLines(f, mooncakePath, 3, func(s string) { f.Add([]byte(s)) })
	f.Fuzz(func(t *testing.T, line []byte) {
		row, ids, err := parseMooncakeLine(line, nil)
		if err != nil {
			return
		}
		n := len(ids)
		if !slices.Equal(row.ids, ids) || row.input > MooncakeBlockTokens*n || row.input <= MooncakeBlockTokens*(n-1) ||
			row.input < 1 || row.output < 1 || row.at < 0 {
			t.Fatalf("accepted an inconsistent row %+v from %q", row, line)
		}
		// Written back canonically, the row reads the same.
		canon := fmt.Sprintf(`{"timestamp": %s, "input_length": %d, "output_length": %d, "hash_ids": [%s]}`,
			strings.TrimSuffix(fmtMillis(row.at), " ms"), row.input, row.output, strings.Trim(strings.Join(strings.Fields(fmt.Sprint(ids)), ", "), "[]"))
		again, _, err := parseMooncakeLine([]byte(canon), nil)
		if err != nil {
			t.Fatalf("canonical form %q of %q does not parse: %v", canon, line, err)
		}
		if again.at != row.at || again.input != row.input || again.output != row.output || !slices.Equal(again.ids, row.ids) {
			t.Fatalf("canonical form %q reads as %+v, want %+v", canon, again, row)
		}
		if slices.ContainsFunc(line, func(b byte) bool { return b == '\n' || b == '\r' }) {
			return
		}
		// The file reader agrees with the row parser.
		tr, err := ReadMooncake(strings.NewReader(string(line) + "\n"))
		if err != nil || tr.Len() != 1 {
			t.Fatalf("ReadMooncake rejects a row the parser accepts: %v", err)
		}
		r := tr.Request(0)
		if r.PromptLen != row.input || len(r.Prompt()) != row.input {
			t.Fatalf("prompt of %d tokens, want %d", len(r.Prompt()), row.input)
		}
	})
}

func FuzzAzureLine(f *testing.F) {
	for _, s := range []string{
		"2023-11-16 18:17:03.9799600,4808,10",
		"2023-11-16 18:17:03,1,1",
		"2024-02-29 23:59:59.999999999,1073741824,1",
		"2023-11-31 18:17:03.5,10,1",
		"2023-11-16 8:17:03.5,10,1",
		"2023-11-16 18:17:03.5,010,1",
		"2023-11-16 18:17:03.5,10,1,",
		"", ",,",
	} {
		f.Add(s)
	}
	addFileLines(f, azurePath, 4, func(s string) { f.Add(s) })
	f.Fuzz(func(t *testing.T, line string) {
		ts, ctx, gen, err := parseAzureLine(line)
		if err != nil {
			return
		}
		if ctx < 1 || gen < 1 || ctx > maxLength || gen > maxLength || ts.Location() != time.UTC {
			t.Fatalf("accepted %q as %s, %d, %d", line, ts, ctx, gen)
		}
		// Written back canonically, the row reads the same.
		canon := fmt.Sprintf("%s,%d,%d", ts.Format("2006-01-02 15:04:05.000000000"), ctx, gen)
		ts2, ctx2, gen2, err := parseAzureLine(canon)
		if err != nil || !ts2.Equal(ts) || ctx2 != ctx || gen2 != gen {
			t.Fatalf("canonical form %q of %q reads as %s, %d, %d, %v", canon, line, ts2, ctx2, gen2, err)
		}
		if strings.ContainsAny(line, "\r\n") || strings.HasPrefix(line, "\ufeff") {
			return
		}
		tr, err := ReadAzure(strings.NewReader(azureHeader + "\n" + line + "\n" + line + "\n"))
		if err != nil || tr.Len() != 2 || !tr.Start().Equal(ts) {
			t.Fatalf("ReadAzure disagrees with the row parser on %q: %v", line, err)
		}
	})
}
