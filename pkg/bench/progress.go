package bench

import (
	"fmt"
	"io"
	"os"
	"strings"
	"sync"
	"time"
)

// ProgressMode is how a run's progress is shown.
type ProgressMode int

// Progress modes.
const (
	// ProgressNone shows nothing.
	ProgressNone ProgressMode = iota
	// ProgressBar redraws one line in place (carriage return), for a
	// terminal.
	ProgressBar
	// ProgressLines prints a plain line at each interval, for logs.
	ProgressLines
)

// Refresh intervals of the progress modes.
const (
	BarInterval   = 250 * time.Millisecond
	LinesInterval = 5 * time.Second
)

// IsTerminal reports whether f is a character device (a terminal, as far as
// the standard library can tell without a terminal package).
func IsTerminal(f *os.File) bool {
	st, err := f.Stat()
	return err == nil && st.Mode()&os.ModeCharDevice != 0
}

// ShowProgress displays live's progress on w until the returned function is
// called, which prints a last update (ending the bar's line) and returns
// once nothing more will be written. planned is the workload's length in
// time, used for the time display (0 if unknown).
func ShowProgress(w io.Writer, name string, live *Live, mode ProgressMode, planned time.Duration) (stop func()) {
	if mode == ProgressNone {
		return func() {}
	}
	interval := LinesInterval
	if mode == ProgressBar {
		interval = BarInterval
	}
	done := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		t := time.NewTicker(interval)
		defer t.Stop()
		prev, prevAt := live.Snapshot(), time.Now()
		show := func(final bool) {
			now, s := time.Now(), live.Snapshot()
			line := progressLine(name, s, prev, now.Sub(prevAt), planned, mode == ProgressBar)
			switch {
			case mode == ProgressBar && final:
				fmt.Fprintf(w, "\r%s\x1b[K\n", line)
			case mode == ProgressBar:
				fmt.Fprintf(w, "\r%s\x1b[K", line)
			default:
				fmt.Fprintln(w, line)
			}
			prev, prevAt = s, now
		}
		for {
			select {
			case <-t.C:
				show(false)
			case <-done:
				show(true)
				return
			}
		}
	}()
	var once sync.Once
	return func() {
		once.Do(func() {
			close(done)
			wg.Wait()
		})
	}
}

const barWidth = 24

// progressLine renders one progress report; chunk rate is measured since
// prev, dt ago.
func progressLine(name string, s, prev LiveSnapshot, dt, planned time.Duration, bar bool) string {
	finished := s.Completed + s.Failed + s.Dropped
	frac := -1.0
	switch {
	case s.Total > 0:
		frac = float64(finished) / float64(s.Total)
	case planned > 0:
		frac = min(s.Elapsed.Seconds()/planned.Seconds(), 1)
	}
	var b strings.Builder
	b.WriteString(name)
	b.WriteString(" ")
	if bar && frac >= 0 {
		n := int(frac * barWidth)
		b.WriteString("[")
		b.WriteString(strings.Repeat("=", n))
		if n < barWidth {
			b.WriteString(">")
			b.WriteString(strings.Repeat(" ", barWidth-n-1))
		}
		b.WriteString("] ")
	}
	if frac >= 0 {
		fmt.Fprintf(&b, "%3.0f%% ", 100*frac)
	}
	if s.Total >= 0 {
		fmt.Fprintf(&b, "%d/%d done", finished, s.Total)
	} else {
		fmt.Fprintf(&b, "%d done", finished)
	}
	fmt.Fprintf(&b, ", %s", s.Elapsed.Truncate(time.Second))
	if planned > 0 {
		fmt.Fprintf(&b, "/%s", planned.Truncate(time.Second))
	}
	if s.Total > 0 && s.Scheduled == s.Total && finished < s.Total {
		b.WriteString(" (all sent)")
	}
	fmt.Fprintf(&b, ", %d in flight, %d ok, %d failed", s.InFlight, s.Completed, s.Failed)
	if s.Dropped > 0 {
		fmt.Fprintf(&b, ", %d DROPPED", s.Dropped)
	}
	if dt > 0 {
		fmt.Fprintf(&b, ", %s chunks/s", short(float64(s.Chunks-prev.Chunks)/dt.Seconds()))
	}
	fmt.Fprintf(&b, ", late max %s", secs(s.LateMax.Seconds()))
	return b.String()
}

// short prints a count compactly: 950, 12.3k, 4.5M.
func short(v float64) string {
	switch {
	case v >= 1e6:
		return fmt.Sprintf("%.1fM", v/1e6)
	case v >= 1e4:
		return fmt.Sprintf("%.1fk", v/1e3)
	default:
		return fmt.Sprintf("%.0f", v)
	}
}
