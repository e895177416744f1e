package workload

import (
	"errors"
	"os"
	"strings"
	"testing"
)

// The public traces live outside the repository, next to it (see
// ../shared/data/README.md); tests that need them skip when absent.
const (
	mooncakePath = "../../../shared/data/mooncake/synthetic_trace.jsonl"
	azurePath    = "../../../shared/data/azure/AzureLLMInferenceTrace_code.csv"
)

func needFile(tb testing.TB, path string) {
	tb.Helper()
	if _, err := os.Stat(path); err != nil {
		tb.Skipf("trace not available, skipping (expected at %s relative to the package, i.e. ../shared/data next to the repository): %v", path, err)
	}
}

// wantRowError checks that err is a *RowError for line with a message
// containing msg.
func wantRowError(t *testing.T, err error, line int, msg string) {
	t.Helper()
	var re *RowError
	if !errors.As(err, &re) {
		t.Fatalf("error = %v, want a *RowError", err)
	}
	if re.Line != line {
		t.Errorf("error line = %d, want %d (%v)", re.Line, line, err)
	}
	if !strings.Contains(err.Error(), msg) {
		t.Errorf("error = %q, want it to contain %q", err, msg)
	}
}

func collect(tb testing.TB, s Source) []Request {
	tb.Helper()
	var out []Request
	for {
		r, ok := s.Next()
		if !ok {
			return out
		}
		out = append(out, r)
	}
}

func equalIDs(a, b []uint32) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

// commonPrefix returns the length of the longest common prefix of a and b.
func commonPrefix(a, b []uint32) int {
	n := 0
	for n < len(a) && n < len(b) && a[n] == b[n] {
		n++
	}
	return n
}
