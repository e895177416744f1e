package workload

import (
	"errors"
	"fmt"
	"io"
	"strings"
	"time"
)

// azureHeader is the first line of an Azure LLM inference trace.
const azureHeader = "TIMESTAMP,ContextTokens,GeneratedTokens"

// AzureTrace is an Azure LLM inference trace (2023 release, the Splitwise
// paper's): a CSV file with the header TIMESTAMP,ContextTokens,GeneratedTokens
// and one request a row. It holds arrival times and lengths only; prompts are
// generated (see Dataset). It is safe for concurrent use.
type AzureTrace struct {
	rows  []azureRow
	start time.Time
}

type azureRow struct {
	at       time.Duration // from the first row
	ctx, gen int
}

// LoadAzure reads the Azure trace file at path (see ReadAzure).
func LoadAzure(path string) (*AzureTrace, error) {
	return loadFile(path, ReadAzure)
}

// ReadAzure reads a whole Azure trace. The first line must be the header;
// every other line must be TIMESTAMP,ContextTokens,GeneratedTokens with the
// timestamp written exactly as `2006-01-02 15:04:05` plus an optional
// fraction of 1 to 9 digits (UTC; the files have 7), not before the previous
// row's, and both counts decimal integers ≥ 1. Anything else, including an
// empty line, is a *RowError naming the line. Request times are offsets from
// the first row.
func ReadAzure(r io.Reader) (*AzureTrace, error) {
	t := &AzureTrace{}
	var prev time.Time
	err := eachLine(r, func(line []byte, n int) error {
		if n == 1 {
			h := strings.TrimPrefix(string(line), "\ufeff")
			if h != azureHeader {
				return &RowError{Line: n, Err: fmt.Errorf("want header %q, got %q", azureHeader, truncate(h, 80))}
			}
			return nil
		}
		ts, ctx, gen, err := parseAzureLine(string(line))
		if err != nil {
			return &RowError{Line: n, Err: err}
		}
		if len(t.rows) == 0 {
			t.start = ts
		} else if ts.Before(prev) {
			return &RowError{Line: n, Err: fmt.Errorf("timestamp %s is before the previous row's %s", ts.Format(azureLayout), prev.Format(azureLayout))}
		}
		prev = ts
		t.rows = append(t.rows, azureRow{at: ts.Sub(t.start), ctx: ctx, gen: gen})
		return nil
	})
	if err != nil {
		return nil, err
	}
	if len(t.rows) == 0 {
		return nil, errors.New("no rows")
	}
	return t, nil
}

const azureLayout = "2006-01-02 15:04:05.0000000"

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + "..."
}

// parseAzureLine parses one data row.
func parseAzureLine(line string) (ts time.Time, ctx, gen int, err error) {
	if strings.TrimSpace(line) == "" {
		return ts, 0, 0, errors.New("empty line")
	}
	f := strings.Split(line, ",")
	if len(f) != 3 {
		return ts, 0, 0, fmt.Errorf("want 3 fields (%s), got %d", azureHeader, len(f))
	}
	if ts, err = parseAzureTime(f[0]); err != nil {
		return ts, 0, 0, fmt.Errorf("TIMESTAMP %q: %w", truncate(f[0], 40), err)
	}
	if ctx, err = parseCount(f[1]); err != nil {
		return ts, 0, 0, fmt.Errorf("ContextTokens %q: %w", truncate(f[1], 40), err)
	}
	if gen, err = parseCount(f[2]); err != nil {
		return ts, 0, 0, fmt.Errorf("GeneratedTokens %q: %w", truncate(f[2], 40), err)
	}
	return ts, ctx, gen, nil
}

// parseCount parses a decimal integer in [1, maxLength] with no sign,
// spaces or leading zeros.
func parseCount(s string) (int, error) {
	if s == "" || len(s) > 10 || (s[0] == '0' && len(s) > 1) {
		return 0, errNotCount
	}
	v := 0
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c < '0' || c > '9' {
			return 0, errNotCount
		}
		v = v*10 + int(c-'0')
	}
	if v < 1 || v > maxLength {
		return 0, errNotCount
	}
	return v, nil
}

var errNotCount = fmt.Errorf("want a decimal integer in [1, %d]", maxLength)

// parseAzureTime parses `YYYY-MM-DD hh:mm:ss[.fffffffff]` exactly: every
// field has its fixed number of digits and a valid value. time.Parse is not
// used because it accepts one-digit hours, a comma before the fraction and
// silently drops fraction digits past the ninth.
func parseAzureTime(s string) (time.Time, error) {
	const base = "2006-01-02 15:04:05"
	bad := func() (time.Time, error) {
		return time.Time{}, errors.New("want YYYY-MM-DD hh:mm:ss with an optional .fraction of up to 9 digits")
	}
	if len(s) < len(base) {
		return bad()
	}
	num := func(i, n int) int {
		v := 0
		for _, c := range []byte(s[i : i+n]) {
			if c < '0' || c > '9' {
				return -1
			}
			v = v*10 + int(c-'0')
		}
		return v
	}
	if s[4] != '-' || s[7] != '-' || s[10] != ' ' || s[13] != ':' || s[16] != ':' {
		return bad()
	}
	year, month, day := num(0, 4), num(5, 2), num(8, 2)
	hour, minute, sec := num(11, 2), num(14, 2), num(17, 2)
	nsec := 0
	if frac := s[len(base):]; frac != "" {
		if frac[0] != '.' || len(frac) < 2 || len(frac) > 10 {
			return bad()
		}
		digits := len(frac) - 1
		if nsec = num(len(base)+1, digits); nsec < 0 {
			return bad()
		}
		for ; digits < 9; digits++ {
			nsec *= 10
		}
	}
	if year < 0 || month < 1 || month > 12 || day < 1 || hour < 0 || hour > 23 ||
		minute < 0 || minute > 59 || sec < 0 || sec > 59 {
		return bad()
	}
	t := time.Date(year, time.Month(month), day, hour, minute, sec, nsec, time.UTC)
	if t.Day() != day { // 2023-02-30 normalises to March
		return time.Time{}, fmt.Errorf("no day %d in %s %d", day, time.Month(month), year)
	}
	return t, nil
}

// Len returns the number of rows.
func (t *AzureTrace) Len() int { return len(t.rows) }

// Start returns the absolute time of the first row.
func (t *AzureTrace) Start() time.Time { return t.start }

// Dataset returns the trace as a Dataset. Each prompt is ContextTokens long:
// the first systemPromptLen tokens are one system prompt shared by every
// request (and Group is 0), the rest are per request; a prompt shorter than
// the system prompt is its first ContextTokens tokens, so lengths stay the
// trace's. With systemPromptLen 0 prompts share nothing and Group is -1. The
// seed fixes the token ids.
func (t *AzureTrace) Dataset(systemPromptLen int, seed uint64) (Dataset, error) {
	if systemPromptLen < 0 || systemPromptLen > maxLength {
		return nil, fmt.Errorf("system prompt length %d out of range [0, %d]", systemPromptLen, maxLength)
	}
	return &azureDataset{trace: t, system: systemPromptLen, seed: seed}, nil
}

type azureDataset struct {
	trace  *AzureTrace
	system int
	seed   uint64
}

const (
	azureSystemDomain = 0x617a7572652d7379 // "azure-sy"
	azureRestDomain   = 0x617a7572652d7265 // "azure-re"
)

func (d *azureDataset) Len() int    { return len(d.trace.rows) }
func (d *azureDataset) Timed() bool { return true }

func (d *azureDataset) Request(i int) Request {
	row := &d.trace.rows[i]
	r := Request{Index: i, At: row.at, PromptLen: row.ctx, MaxTokens: row.gen, Group: -1, Item: i}
	sys := min(d.system, row.ctx)
	if d.system > 0 {
		r.Group = 0
		r.prompt.segs[0] = segment{seed: derive(d.seed, azureSystemDomain, 0), n: sys}
	}
	r.prompt.segs[1] = segment{seed: derive(d.seed, azureRestDomain, uint64(i)), n: row.ctx - sys}
	return r
}
