package main

import (
	"context"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

func TestVocabularyIsTheActivators(t *testing.T) {
	v, err := vocabulary("", "")
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{"default", "kv-precise", "prefix-approx"} {
		if !slices.Contains(v.RoutingProfiles, p) {
			t.Errorf("built-in routing profiles %v lack %s", v.RoutingProfiles, p)
		}
	}
	if !slices.Contains(v.Tiers, "critical") || len(v.SimProfiles) == 0 {
		t.Errorf("vocabulary %+v", v)
	}
}

func TestRunRejectsBadConfiguration(t *testing.T) {
	bad := filepath.Join(t.TempDir(), "tiers.yaml")
	if err := os.WriteFile(bad, []byte("tiers: [oops"), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, args := range [][]string{
		{"--tiers", bad},
		{"--router-config", filepath.Join(t.TempDir(), "missing.yaml")},
		{"--no-such-flag"},
	} {
		if err := run(context.Background(), args, io.Discard); err == nil {
			t.Errorf("run %s: no error", strings.Join(args, " "))
		}
	}
}
