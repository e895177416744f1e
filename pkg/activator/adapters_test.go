package activator

import (
	"fmt"
	"testing"
)

// The adapter names a revision keeps come from its pods (outside input):
// bounded in number and length.
func TestModelLenAdaptersBounded(t *testing.T) {
	var m modelLen
	if m.isAdapter("sql-lora") {
		t.Fatal("no pod answered: sql-lora taken for an adapter")
	}
	m.observeAdapters([]string{"sql-lora", ""})
	if !m.isAdapter("sql-lora") || m.isAdapter("") || m.isAdapter("base") {
		t.Fatal("sql-lora listed: want it alone an adapter")
	}
	names := make([]string, 2*maxAdapters)
	for i := range names {
		names[i] = fmt.Sprintf("a%d", i)
	}
	m.observeAdapters(names)
	m.observeAdapters([]string{string(make([]byte, 300))})
	if n := len(*m.adapters.Load()); n != maxAdapters {
		t.Fatalf("%d names kept, want at most %d", n, maxAdapters)
	}
}
