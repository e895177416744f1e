package engine

import (
	"errors"
	"flag"
	"fmt"
	"os"
	"strings"
	"testing"
	"time"
)

var updateRestoreTable = flag.Bool("update-kv-offload-table", false, "rewrite docs/benchmarks/kv-offload.md's table from the engine model")

const restoreDoc = "../../docs/benchmarks/kv-offload.md"

// firstTokenTime runs a fresh engine (a replica just started from zero:
// an empty GPU cache) on one request of prefix+tail tokens and returns its
// TTFT in virtual time, with the tokens it reported as cached/restored.
func firstTokenTime(t testing.TB, p Profile, prefix, tail, stored int) (time.Duration, int) {
	t.Helper()
	e, err := New(Config{Profile: p, DisableKVEvents: true})
	if err != nil {
		t.Fatal(err)
	}
	prompt := make([]uint32, prefix+tail)
	for i := range prompt {
		prompt[i] = uint32(1000 + i)
	}
	t0 := time.Unix(0, 0)
	if err := e.Add(t0, Request{ID: "r", Prompt: prompt, MaxTokens: 1, IgnoreEOS: true, StoredTokens: stored}); err != nil {
		t.Fatal(err)
	}
	now := t0
	for range 10000 {
		r := e.Step(now)
		if r.Idle {
			if r.WakeAt.IsZero() {
				t.Fatal("engine idle with the request pending")
			}
			now = r.WakeAt
			continue
		}
		now = now.Add(r.Duration)
		for _, o := range r.Outputs {
			if o.FirstToken {
				return now.Sub(t0), o.ExternalTokens
			}
		}
	}
	t.Fatal("no first token")
	return 0, 0
}

type restoreCell struct {
	profile                   string
	prefix, tail              int
	kvGiB                     float64
	floor, restore, recompute time.Duration
	restoredTokens            int
	overFloor, overRecompute  float64
}

// restoreTable is the first-request TTFT after scale from zero for a
// prefix the revision held before: restored from shared storage on demand
// (no prefetch), against recomputing it, beside the physical floor (the
// prefix's KV bytes at the storage bandwidth plus the tail's prefill over
// the restored context).
func restoreTable(t testing.TB) []restoreCell {
	const tail = 256
	var cells []restoreCell
	for _, name := range []string{"llama-3.1-8b-h100", "qwen3-32b-2xh100"} {
		p, err := BuiltinProfile(name)
		if err != nil {
			t.Fatal(err)
		}
		for _, prefix := range []int{8192, 32768} {
			recompute, _ := firstTokenTime(t, p, prefix, tail, 0)
			restore, restored := firstTokenTime(t, p, prefix, tail, prefix)
			bytes := float64(prefix) * p.KVBytesPerToken()
			floor := time.Duration(bytes/p.StorageBandwidth*float64(time.Second)) + p.StepTime([]StepInput{{Query: tail, Context: prefix}})
			cells = append(cells, restoreCell{
				profile: name, prefix: prefix, tail: tail, kvGiB: bytes / (1 << 30),
				floor: floor, restore: restore, recompute: recompute, restoredTokens: restored,
				overFloor: restore.Seconds() / floor.Seconds(), overRecompute: restore.Seconds() / recompute.Seconds(),
			})
		}
	}
	return cells
}

func renderRestoreTable(cells []restoreCell) string {
	var b strings.Builder
	b.WriteString("| profile | cached prefix | KV bytes | floor | restore | recompute | restore / floor | restore / recompute |\n")
	b.WriteString("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |\n")
	ms := func(d time.Duration) string { return fmt.Sprintf("%.0f ms", d.Seconds()*1000) }
	for _, c := range cells {
		fmt.Fprintf(&b, "| %s | %dk + %d tail | %.2f GiB | %s | %s | %s | %.2f× | %.2f× |\n",
			c.profile, c.prefix/1024, c.tail, c.kvGiB, ms(c.floor), ms(c.restore), ms(c.recompute), c.overFloor, c.overRecompute)
	}
	return b.String()
}

const tableBegin, tableEnd = "<!-- restore-table:begin -->\n", "<!-- restore-table:end -->"

// TestRestoreTable checks what the engine model guarantees for a restore
// (the whole stored prefix comes back, never faster than the floor, faster
// than recomputing it) and that docs/benchmarks/kv-offload.md shows the
// model's current figures; -update-kv-offload-table rewrites them.
func TestRestoreTable(t *testing.T) {
	cells := restoreTable(t)
	for _, c := range cells {
		if c.restoredTokens != c.prefix {
			t.Errorf("%s %d: restored %d tokens, want the whole prefix", c.profile, c.prefix, c.restoredTokens)
		}
		if c.restore < c.floor {
			t.Errorf("%s %d: restore %v beats the physical floor %v", c.profile, c.prefix, c.restore, c.floor)
		}
		if c.restore >= c.recompute {
			t.Errorf("%s %d: restore %v not faster than recompute %v at 10 GB/s", c.profile, c.prefix, c.restore, c.recompute)
		}
	}
	table := renderRestoreTable(cells)
	doc, err := os.ReadFile(restoreDoc)
	if err != nil && !(*updateRestoreTable && errors.Is(err, os.ErrNotExist)) {
		t.Fatal(err)
	}
	before, rest, ok1 := strings.Cut(string(doc), tableBegin)
	_, after, ok2 := strings.Cut(rest, tableEnd)
	if *updateRestoreTable {
		if !ok1 || !ok2 {
			t.Fatalf("%s lacks the %q ... %q markers", restoreDoc, tableBegin, tableEnd)
		}
		if err := os.WriteFile(restoreDoc, []byte(before+tableBegin+table+tableEnd+after), 0o644); err != nil {
			t.Fatal(err)
		}
		t.Logf("\n%s", table)
		return
	}
	if !ok1 || !ok2 || !strings.HasPrefix(rest, table+tableEnd) {
		t.Errorf("%s is out of date with the engine model; regenerate with\n  go test ./pkg/engine -run TestRestoreTable -update-kv-offload-table\nmodel:\n%s", restoreDoc, table)
	}
}

func TestRestoreTime(t *testing.T) {
	p, err := BuiltinProfile("llama-3.1-8b-h100")
	if err != nil {
		t.Fatal(err)
	}
	// 8192 tokens x 128 KiB = 1 GiB at 10 GB/s, plus 32 objects of 256
	// tokens in 2 rounds of 16 GETs at 10 ms.
	sec := 8192*131072/10e9 + 2*0.01
	want := time.Duration(sec * float64(time.Second))
	if got := p.RestoreTime(8192); got < want-time.Microsecond || got > want+time.Microsecond {
		t.Errorf("RestoreTime(8192) = %v, want %v", got, want)
	}
	if p.RestoreTime(0) != 0 {
		t.Error("restoring nothing costs something")
	}
	p.StorageBandwidth = 0
	if p.HasStorage() || p.RestoreTime(8192) != 0 {
		t.Error("a profile without storage restores")
	}
}

func TestStoredTokensValidated(t *testing.T) {
	p, _ := BuiltinProfile("llama-3.1-8b-h100")
	noStorage := p
	noStorage.StorageBandwidth = 0
	prompt := make([]uint32, 64)
	for _, tc := range []struct {
		name string
		p    Profile
		r    Request
	}{
		{"negative", p, Request{ID: "a", Prompt: prompt, MaxTokens: 1, StoredTokens: -1}},
		{"beyond the prompt", p, Request{ID: "a", Prompt: prompt, MaxTokens: 1, StoredTokens: 65}},
		{"profile without storage", noStorage, Request{ID: "a", Prompt: prompt, MaxTokens: 1, StoredTokens: 16}},
	} {
		e, err := New(Config{Profile: tc.p})
		if err != nil {
			t.Fatal(err)
		}
		if err := e.Add(time.Unix(0, 0), tc.r); !errors.Is(err, ErrBadRequest) {
			t.Errorf("%s: %v, want ErrBadRequest", tc.name, err)
		}
	}
}

// A prefix partly in the local cache restores only the rest, and a stored
// prefix shorter than a block restores nothing.
func TestRestoreOnlyWhatTheCacheLacks(t *testing.T) {
	p, _ := BuiltinProfile("llama-3.1-8b-h100")
	if _, got := firstTokenTime(t, p, 10, 100, 10); got != 0 {
		t.Errorf("restored %d tokens of a 10-token stored prefix, want 0 (no whole block)", got)
	}
	e, err := New(Config{Profile: p, DisableKVEvents: true})
	if err != nil {
		t.Fatal(err)
	}
	prompt := make([]uint32, 4096)
	for i := range prompt {
		prompt[i] = uint32(7 + i)
	}
	now := time.Unix(0, 0)
	run := func(r Request) Output {
		if err := e.Add(now, r); err != nil {
			t.Fatal(err)
		}
		for range 1000 {
			res := e.Step(now)
			if res.Idle {
				now = res.WakeAt
				continue
			}
			now = now.Add(res.Duration)
			for _, o := range res.Outputs {
				if o.Finished {
					return o
				}
			}
		}
		t.Fatal("not finished")
		return Output{}
	}
	run(Request{ID: "warm", Prompt: prompt[:1024], MaxTokens: 1, IgnoreEOS: true})
	o := run(Request{ID: "r", Prompt: prompt, MaxTokens: 1, IgnoreEOS: true, StoredTokens: 4096})
	if o.CachedTokens != 1024 || o.ExternalTokens != 4080-1024 {
		t.Errorf("cached %d restored %d, want 1024 from the GPU cache and %d from storage", o.CachedTokens, o.ExternalTokens, 4080-1024)
	}
}
