package main

import (
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestPlanVariantsCommand(t *testing.T) {
	out := t.TempDir()
	cmd := newRootCommand()
	var stdout strings.Builder
	cmd.SetOut(&stdout)
	cmd.SetErr(io.Discard)
	cmd.SetArgs([]string{"plan", "variants", "--dataset", "random", "--rate", "4", "--duration", "2m",
		"--variant", "h100=llama-3.1-8b-h100:1", "--variant", "a100=llama-3.1-8b-a100:0.45:8", "--batch-fraction", "0.3", "--out", out})
	if err := cmd.Execute(); err != nil {
		t.Fatal(err)
	}
	for _, w := range []string{"| mix |", "| h100 only |", "| a100 only |", "windows over capacity"} {
		if !strings.Contains(stdout.String(), w) {
			t.Errorf("output lacks %q:\n%s", w, stdout.String())
		}
	}
	for _, f := range []string{"variants.md", "variants.json"} {
		if _, err := os.Stat(filepath.Join(out, f)); err != nil {
			t.Error(err)
		}
	}
}

func TestPlanVariantsRejectsBadFlags(t *testing.T) {
	ok := []string{"--dataset", "random", "--rate", "1", "--duration", "10s"}
	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"--variant", "h100=llama-3.1-8b-h100:1"}, "2 to 4 variants"},
		{[]string{"--variant", "h100=llama-3.1-8b-h100:1", "--variant", "a100"}, "NAME=PROFILE:COST"},
		{[]string{"--variant", "h100=llama-3.1-8b-h100:1", "--variant", "x=gpt-5:1"}, "unknown profile"},
		{[]string{"--variant", "h100=llama-3.1-8b-h100:1", "--variant", "x=llama-3.1-8b-a100:-1"}, "positive number"},
		{[]string{"--variant", "h100=llama-3.1-8b-h100:1", "--variant", "x=llama-3.1-8b-a100:1:0"}, "max replicas"},
		{[]string{"--variant", "h=llama-3.1-8b-h100:1", "--variant", "h=llama-3.1-8b-a100:1"}, "given twice"},
		{[]string{"--variant", "h=llama-3.1-8b-h100:1", "--variant", "a=llama-3.1-8b-a100:1", "--batch-fraction", "1.5"}, "batch fraction"},
	} {
		t.Run(strings.Join(c.args, " "), func(t *testing.T) {
			cmd := newRootCommand()
			cmd.SetOut(io.Discard)
			cmd.SetErr(io.Discard)
			cmd.SetArgs(append(append([]string{"plan", "variants"}, ok...), c.args...))
			err := cmd.Execute()
			if err == nil || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("error %v, want %q", err, c.want)
			}
		})
	}
}
