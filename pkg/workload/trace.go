package workload

import (
	"bufio"
	"fmt"
	"io"
	"os"
)

// RowError is a malformed or unknown row of a trace file.
type RowError struct {
	// Line is the 1-based line number in the file.
	Line int
	Err  error
}

func (e *RowError) Error() string { return fmt.Sprintf("line %d: %v", e.Line, e.Err) }

func (e *RowError) Unwrap() error { return e.Err }

// maxLength bounds prompt and output lengths read from traces, far above any
// model's context, so that sums over a trace cannot overflow.
const maxLength = 1 << 30

// maxLineBytes bounds one trace line (a Mooncake row of a 1M-token prompt is
// about 16 KiB).
const maxLineBytes = 16 << 20

// eachLine calls fn with every line of r (without its line ending) and its
// 1-based number, and stops at fn's first error.
func eachLine(r io.Reader, fn func(line []byte, n int) error) error {
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 0, 64<<10), maxLineBytes)
	n := 0
	for sc.Scan() {
		n++
		line := sc.Bytes()
		if len(line) > 0 && line[len(line)-1] == '\r' {
			line = line[:len(line)-1]
		}
		if err := fn(line, n); err != nil {
			return err
		}
	}
	if err := sc.Err(); err != nil {
		return fmt.Errorf("after line %d: %w", n, err)
	}
	return nil
}

// loadFile opens path and reads it with read, naming the file in errors.
func loadFile[T any](path string, read func(io.Reader) (T, error)) (T, error) {
	f, err := os.Open(path)
	if err != nil {
		var zero T
		return zero, err
	}
	defer f.Close()
	t, err := read(f)
	if err != nil {
		return t, fmt.Errorf("%s: %w", path, err)
	}
	return t, nil
}
