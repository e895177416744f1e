#!/usr/bin/env bash
# Runs every Go fuzz target in the module briefly ($FUZZTIME: a duration or
# an execution count like 20000x). `go test -fuzz` takes one target and one package at a time,
# so the targets are discovered with `go test -list`.
#
# The committed corpora (pkg/.../testdata/fuzz/FuzzX/, run as seeds by every
# plain `go test`) come from longer runs: FUZZTIME=60s with -parallel 1 per
# target, then up to 40 of the inputs of at most 1 KiB that Go kept in
# $(go env GOCACHE)/fuzz/<module>/<package>/FuzzX (sampled by file name, a
# hash), copied into the package's testdata/fuzz/FuzzX.
set -euo pipefail
cd "$(dirname "$0")/.."
GO="${GO:-go}"
FUZZTIME="${FUZZTIME:-20000x}"
found=0
for pkg in $($GO list ./...); do
  dir=$($GO list -f '{{.Dir}}' "$pkg")
  grep -qs '^func Fuzz' "$dir"/*_test.go || continue
  for target in $($GO test -list '^Fuzz' "$pkg" | grep '^Fuzz' || true); do
    found=$((found + 1))
    echo "fuzz $pkg $target ($FUZZTIME)"
    $GO test -run '^$' -fuzz "^${target}\$" -fuzztime "$FUZZTIME" "$pkg" >/tmp/fuzz.$$.log 2>&1 || {
      cat /tmp/fuzz.$$.log; rm -f /tmp/fuzz.$$.log; exit 1; }
  done
done
rm -f /tmp/fuzz.$$.log
echo "fuzz: $found targets passed"
