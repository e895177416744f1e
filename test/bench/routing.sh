#!/usr/bin/env bash
# Regenerates the routing benchmarks of docs/benchmarks/routing.md with
# `kn-llmd plan` (virtual time; no GPU, no cluster):
#   1. llm-d's shared-prefix workload and QPS ladder on 8 Qwen3-32B engines
#      (2xH100 each, 64-token KV blocks), the six built-in routing profiles
#      and llm-d's random and load baselines, without
#      flow control (as llm-d's published runs) and with the activator's
#      standard-tier flow control;
#   2. the Mooncake synthetic trace at its own timestamps on 8
#      Llama-3.1-8B/H100 engines, the six built-in routing profiles;
#   3. the same trace swept over 2..16 engines: how many engines each
#      routing profile needs for 90 % SLO attainment.
# Each writes summary.json, report.md and SVG charts under
# docs/benchmarks/routing/<name>/, then the tables between the GENERATED
# markers of docs/benchmarks/routing.md are rewritten. The prose around them
# is not: read it again if the numbers moved.
#
# Usage: test/bench/routing.sh            (from anywhere in the repository)
# Environment: DATA (default ../shared/data), the trace directory.
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
cd "$root"
DATA="${DATA:-$root/../shared/data}"
OUT=docs/benchmarks/routing
DOC=docs/benchmarks/routing.md
bin="$(mktemp -d)/kn-llmd"
trap 'rm -rf "$(dirname "$bin")"' EXIT

go build -o "$bin" ./cmd/kn-llmd

slo=(--slo-ttft 2s --slo-tpot 100ms --bucket 5s)
ladder=(--dataset shared-prefix --ladder llm-d --profile qwen3-32b-2xh100 --engines 8
  --block-size 64 --router-config test/bench/router-llmd.yaml
  --routing round-robin,least-request,random,load,prefix-approx,kv-precise,ttft-cost,default)

time "$bin" plan "${ladder[@]}" "${slo[@]}" --flow-control=false --out "$OUT/shared-prefix"
time "$bin" plan "${ladder[@]}" "${slo[@]}" --out "$OUT/shared-prefix-flow-control"
time "$bin" plan --trace "mooncake:$DATA/mooncake/synthetic_trace.jsonl" --profile llama-3.1-8b-h100 --engines 8 \
  --routing round-robin,least-request,prefix-approx,kv-precise,ttft-cost,default "${slo[@]}" --out "$OUT/mooncake"
time "$bin" plan --trace "mooncake:$DATA/mooncake/synthetic_trace.jsonl" --profile llama-3.1-8b-h100 \
  --routing round-robin,least-request,prefix-approx,kv-precise,ttft-cost,default "${slo[@]}" \
  --sweep-replicas 2..16:2 --target-attainment 0.9 --out "$OUT/mooncake-capacity"

tables="$(mktemp)"
go run ./test/bench/routingtables \
  "Shared prefix, llm-d ladder, no flow control=$OUT/shared-prefix" \
  "Shared prefix, llm-d ladder, standard-tier flow control=$OUT/shared-prefix-flow-control" \
  "Mooncake synthetic trace=$OUT/mooncake" \
  "Mooncake synthetic trace, engines needed=$OUT/mooncake-capacity" >"$tables"
awk -v tables="$tables" '
  /<!-- BEGIN GENERATED -->/ { print; while ((getline line < tables) > 0) print line; skip = 1; next }
  /<!-- END GENERATED -->/   { skip = 0 }
  !skip
' "$DOC" >"$DOC.new"
mv "$DOC.new" "$DOC"
rm -f "$tables"
echo "updated $DOC and $OUT/"
