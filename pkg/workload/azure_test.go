package workload

import (
	"math"
	"strings"
	"testing"
	"time"
)

func TestAzureRealTrace(t *testing.T) {
	needFile(t, azurePath)
	tr, err := LoadAzure(azurePath)
	if err != nil {
		t.Fatalf("LoadAzure: %v", err)
	}
	if tr.Len() != 8819 {
		t.Errorf("rows = %d, want 8819", tr.Len())
	}
	ds, err := tr.Dataset(0, 1)
	if err != nil {
		t.Fatal(err)
	}
	var ctx, gen int
	for i := range ds.Len() {
		r := ds.Request(i)
		ctx += r.PromptLen
		gen += r.MaxTokens
	}
	n := float64(ds.Len())
	if mean := float64(ctx) / n; math.Abs(mean-2048) > 1 {
		t.Errorf("mean context = %.1f, want 2,048", mean)
	}
	if mean := float64(gen) / n; math.Abs(mean-28) > 0.5 {
		t.Errorf("mean generated = %.1f, want 28", mean)
	}
	if want := time.Date(2023, 11, 16, 18, 17, 3, 979960000, time.UTC); !tr.Start().Equal(want) {
		t.Errorf("start = %s, want %s", tr.Start(), want)
	}
	if first := ds.Request(0).At; first != 0 {
		t.Errorf("first request at %s, want 0", first)
	}
	// 19:14:19.9280160 − 18:17:03.9799600
	if last, want := ds.Request(ds.Len()-1).At, 57*time.Minute+15*time.Second+948056*time.Microsecond; last != want {
		t.Errorf("last request at %s, want %s", last, want)
	}
}

func TestAzureSystemPrompt(t *testing.T) {
	const csv = "TIMESTAMP,ContextTokens,GeneratedTokens\n" +
		"2023-11-16 18:17:03.9799600,300,10\n" +
		"2023-11-16 18:17:04.0319600,250,8\n" +
		"2023-11-16 18:17:04.5,40,27\n"
	tr, err := ReadAzure(strings.NewReader(csv))
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name   string
		system int
		shared int // tokens rows 0 and 1 must share
		group  int
	}{
		{"no system prompt", 0, 0, -1},
		{"system prompt of 100", 100, 100, 0},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			ds, err := tr.Dataset(tc.system, 7)
			if err != nil {
				t.Fatal(err)
			}
			r0, r1, r2 := ds.Request(0), ds.Request(1), ds.Request(2)
			p0, p1, p2 := r0.Prompt(), r1.Prompt(), r2.Prompt()
			if len(p0) != 300 || len(p1) != 250 || len(p2) != 40 {
				t.Fatalf("prompt lengths = %d, %d, %d, want the trace's 300, 250, 40", len(p0), len(p1), len(p2))
			}
			if n := commonPrefix(p0, p1); n < tc.shared || n > tc.shared+4 {
				t.Errorf("rows 0 and 1 share %d tokens, want %d", n, tc.shared)
			}
			if r0.Group != tc.group {
				t.Errorf("group = %d, want %d", r0.Group, tc.group)
			}
			if tc.system > 0 && !equalIDs(p2, p0[:40]) {
				t.Error("a prompt shorter than the system prompt is not the system prompt's start")
			}
			if r2.At != 520040*time.Microsecond {
				t.Errorf("row 2 at %s, want 520.04ms", r2.At)
			}
			// Another seed, other prompts; the same seed, the same ones.
			other, _ := tr.Dataset(tc.system, 8)
			same, _ := tr.Dataset(tc.system, 7)
			ro, rs := other.Request(0), same.Request(0)
			if equalIDs(ro.Prompt(), p0) {
				t.Error("seeds 7 and 8 give the same prompt")
			}
			if !equalIDs(rs.Prompt(), p0) {
				t.Error("seed 7 gives two different prompts")
			}
		})
	}
	if _, err := tr.Dataset(-1, 0); err == nil {
		t.Error("negative system prompt length accepted")
	}
}

func TestReadAzureBadRows(t *testing.T) {
	const header = "TIMESTAMP,ContextTokens,GeneratedTokens\n"
	const ok = "2023-11-16 18:17:03.9799600,4808,10\n"
	tests := []struct {
		name string
		text string
		line int
		msg  string
	}{
		{"wrong header", "TIMESTAMP,Context,Generated\n" + ok, 1, "want header"},
		{"missing header", ok + ok, 1, "want header"},
		{"two fields", header + ok + "2023-11-16 18:17:04.0,4808\n", 3, "want 3 fields"},
		{"four fields", header + ok + "2023-11-16 18:17:04.0,4808,10,1\n", 3, "want 3 fields"},
		{"zero context", header + ok + "2023-11-16 18:17:04.0,0,10\n", 3, "ContextTokens \"0\""},
		{"negative generated", header + ok + "2023-11-16 18:17:04.0,10,-1\n", 3, "GeneratedTokens \"-1\""},
		{"spaces around a count", header + ok + "2023-11-16 18:17:04.0, 10,1\n", 3, "ContextTokens"},
		{"fractional count", header + ok + "2023-11-16 18:17:04.0,10.0,1\n", 3, "ContextTokens"},
		{"ISO T separator", header + ok + "2023-11-16T18:17:04.0,10,1\n", 3, "TIMESTAMP"},
		{"one-digit hour", header + ok + "2023-11-16 8:17:04.0,10,1\n", 3, "TIMESTAMP"},
		{"ten fraction digits", header + ok + "2023-11-16 18:17:04.0123456789,10,1\n", 3, "TIMESTAMP"},
		{"empty fraction", header + ok + "2023-11-16 18:17:04.,10,1\n", 3, "TIMESTAMP"},
		{"time zone", header + ok + "2023-11-16 18:17:04.5Z,10,1\n", 3, "TIMESTAMP"},
		{"no such day", header + ok + "2023-11-31 18:17:04.5,10,1\n", 3, "no day 31 in November 2023"},
		{"hour 24", header + ok + "2023-11-16 24:00:00,10,1\n", 3, "TIMESTAMP"},
		{"time goes back", header + ok + "2023-11-16 18:17:03.9,10,1\n", 3, "is before the previous row's"},
		{"empty line", header + ok + "\n" + ok, 3, "empty line"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := ReadAzure(strings.NewReader(tc.text))
			wantRowError(t, err, tc.line, tc.msg)
		})
	}
	t.Run("header only", func(t *testing.T) {
		if _, err := ReadAzure(strings.NewReader(header)); err == nil || !strings.Contains(err.Error(), "no rows") {
			t.Errorf("error = %v, want no rows", err)
		}
	})
	t.Run("byte order mark and CRLF accepted", func(t *testing.T) {
		tr, err := ReadAzure(strings.NewReader("\ufeff" + strings.ReplaceAll(header+ok+ok, "\n", "\r\n")))
		if err != nil || tr.Len() != 2 {
			t.Errorf("ReadAzure = %v rows, %v", tr, err)
		}
	})
}

func TestParseAzureTime(t *testing.T) {
	tests := []struct {
		in   string
		want time.Time
	}{
		{"2023-11-16 18:17:03", time.Date(2023, 11, 16, 18, 17, 3, 0, time.UTC)},
		{"2023-11-16 18:17:03.5", time.Date(2023, 11, 16, 18, 17, 3, 500000000, time.UTC)},
		{"2023-11-16 18:17:03.9799600", time.Date(2023, 11, 16, 18, 17, 3, 979960000, time.UTC)},
		{"2024-02-29 00:00:00.000000001", time.Date(2024, 2, 29, 0, 0, 0, 1, time.UTC)},
	}
	for _, tc := range tests {
		got, err := parseAzureTime(tc.in)
		if err != nil || !got.Equal(tc.want) {
			t.Errorf("parseAzureTime(%q) = %s, %v, want %s", tc.in, got, err, tc.want)
		}
	}
	if _, err := parseAzureTime("2023-02-29 00:00:00"); err == nil {
		t.Error("2023-02-29 accepted")
	}
}
