package bench

import (
	"os"
	"strings"
	"testing"
	"time"

	"github.com/llmd-kn/llmd-kn/internal/testutil"
)

func TestProgressLine(t *testing.T) {
	s := LiveSnapshot{Total: 100, Elapsed: 61500 * ms, Scheduled: 60, Sent: 58, Completed: 40, Failed: 2, Dropped: 3, InFlight: 16, Chunks: 5000, LateMax: 2 * ms}
	prev := LiveSnapshot{Chunks: 3000}
	bar := progressLine("run1", s, prev, time.Second, 2*time.Minute, true)
	want := "run1 [==========>             ]  45% 45/100 done, 1m1s/2m0s, 16 in flight, 40 ok, 2 failed, 3 DROPPED, 2000 chunks/s, late max 2.00 ms"
	if bar != want {
		t.Errorf("bar\n got %q\nwant %q", bar, want)
	}
	// Lines mode has no bar; an endless workload shows time progress.
	s.Total, s.Dropped = -1, 0
	line := progressLine("run1", s, prev, 0, 2*time.Minute, false)
	want = "run1  51% 42 done, 1m1s/2m0s, 16 in flight, 40 ok, 2 failed, late max 2.00 ms"
	if line != want {
		t.Errorf("line\n got %q\nwant %q", line, want)
	}
	if drain := progressLine("r", LiveSnapshot{Total: 3, Scheduled: 3, Completed: 1}, LiveSnapshot{}, 0, 0, false); !strings.Contains(drain, "1/3 done, 0s (all sent)") {
		t.Errorf("draining line %q", drain)
	}
	if done := progressLine("r", LiveSnapshot{Total: 2, Completed: 2}, LiveSnapshot{}, 0, 0, true); !strings.Contains(done, "[========================] 100%") {
		t.Errorf("finished bar %q", done)
	}
}

func TestShowProgress(t *testing.T) {
	live := &Live{}
	live.total.Store(3)
	live.completed.Store(3)

	var bar testutil.SyncBuffer
	stop := ShowProgress(&bar, "r", live, ProgressBar, 0)
	time.Sleep(BarInterval + 100*ms)
	stop()
	stop() // idempotent
	out := bar.String()
	if !strings.HasPrefix(out, "\rr [") || !strings.HasSuffix(out, "\x1b[K\n") || strings.Count(out, "\n") != 1 {
		t.Errorf("bar output %q: want carriage-return updates and one final newline", out)
	}

	var lines testutil.SyncBuffer
	ShowProgress(&lines, "r", live, ProgressLines, 0)()
	if out := lines.String(); strings.Contains(out, "\r") || strings.Count(out, "\n") != 1 || !strings.Contains(out, "3/3 done") {
		t.Errorf("lines output %q", out)
	}

	var none testutil.SyncBuffer
	ShowProgress(&none, "r", live, ProgressNone, 0)()
	if none.String() != "" {
		t.Errorf("none wrote %q", none.String())
	}
}

func TestIsTerminal(t *testing.T) {
	f, err := os.CreateTemp(t.TempDir(), "x")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if IsTerminal(f) {
		t.Error("a regular file is a terminal")
	}
}
