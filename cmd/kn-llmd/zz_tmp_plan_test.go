package main

import (
	"os"
	"strings"
	"testing"
)

// Temporary: run `kn-llmd plan` from a test binary until main.go registers it.
func TestTmpPlanCLI(t *testing.T) {
	args := os.Getenv("PLAN_ARGS")
	if args == "" {
		t.Skip()
	}
	cmd := newPlanCmd()
	cmd.SetArgs(strings.Fields(args))
	if err := cmd.Execute(); err != nil {
		t.Fatal(err)
	}
}
