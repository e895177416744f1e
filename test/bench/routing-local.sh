#!/usr/bin/env bash
# Real-time routing comparison: the same shared-prefix workload through
# `kn-llmd local` (simulated Qwen3-32B on 2xH100 pods) once per routing
# profile, measured by `kn-llmd bench`, one report for all five.
#
#   test/bench/routing-local.sh [OUT_DIR]      (default docs/benchmarks/routing-local)
#
# Knobs (environment): PODS (4), SCALE (sim time scale, 0.25), RATE (wall
# req/s, 24: 6 req/s of modelled time), REQUESTS (300), GROUPS (60), PROFILES
# (the built-in routing profiles), TOKENIZER (a folder of the model's Hugging
# Face tokenizer files: the simulated pods tokenize with them, the activator
# too, natively, and bench sends chat text, so the router's ids must match
# the engines'; empty: the estimate on both sides and token-id prompts).
set -euo pipefail
cd "$(dirname "$0")/../.."
OUT="${1:-docs/benchmarks/routing-local}"
PODS="${PODS:-4}"
SCALE="${SCALE:-0.25}"
RATE="${RATE:-24}"
REQUESTS="${REQUESTS:-300}"
GROUPS="${GROUPS:-60}"
TOKENIZER="${TOKENIZER:-}"
read -r -a PROFILES <<< "${PROFILES:-round-robin least-request prefix-approx kv-precise ttft-cost default}"

work=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$work"' EXIT
if [ -n "${KN_LLMD:-}" ]; then cp "$KN_LLMD" "$work/kn-llmd"; else go build -o "$work/kn-llmd" ./cmd/kn-llmd; fi

cat > "$work/workload.yaml" <<YAML
# llm-d's shared-prefix workload, scaled to one machine: $GROUPS groups x 5
# prompts, 6,000-token system prompt per group, 1,200-token question, 200
# output tokens.
kind: shared-prefix
seed: 1
sharedPrefix:
  groups: $GROUPS
  promptsPerGroup: 5
  systemPromptLen: 6000
  questionLen: 1200
  outputLen: 200
arrival:
  kind: poisson
  rate: $RATE
maxRequests: $REQUESTS
YAML

tokann="" simtok=() api=()
if [ -n "$TOKENIZER" ]; then
  tokann="llm-d.ai/tokenizer: \"native:$TOKENIZER\""
  simtok=(--sim-tokenizer "$TOKENIZER")
  api=(--api chat)
fi
runs=()
port=18100
for p in "${PROFILES[@]}"; do
  port=$((port + 1))
  cat > "$work/$p.yaml" <<YAML
apiVersion: serving.knative.dev/v1
kind: Service
metadata:
  name: llm
  namespace: default
spec:
  template:
    metadata:
      annotations:
        autoscaling.knative.dev/min-scale: "$PODS"
        llm-d.ai/routing-profile: $p
        llm-d.ai/sim-profile: qwen3-32b-2xh100
        $tokann
    spec:
      containers:
      - image: vllm/vllm-openai:v0.11.0
        args: [--model, Qwen/Qwen3-32B, --max-model-len, "40960"]
YAML
  "$work/kn-llmd" local -f "$work/$p.yaml" --addr "127.0.0.1:$port" --metrics-addr off \
    --sim-time-scale "$SCALE" "${simtok[@]}" >"$work/$p.log" 2>&1 &
  runs+=(--run "$p=http://127.0.0.1:$port")
done
for i in $(seq 1 180); do
  ready=0
  for p in "${PROFILES[@]}"; do grep -q "is ready" "$work/$p.log" && ready=$((ready + 1)); done
  [ "$ready" -eq ${#PROFILES[@]} ] && break
  sleep 1
done
# SLO targets of 2 s TTFT and 100 ms TPOT in modelled time, scaled to wall time.
ttft=$(awk -v s="$SCALE" 'BEGIN{printf "%dms", 2000*s}')
tpot=$(awk -v s="$SCALE" 'BEGIN{printf "%dms", 100*s}')
"$work/kn-llmd" bench --workload "$work/workload.yaml" "${runs[@]}" --model Qwen/Qwen3-32B "${api[@]}" \
  --slo-ttft "$ttft" --slo-tpot "$tpot" --cooldown 5s --progress lines --out "$OUT"
echo "report: $OUT/report.md (modelled time runs ${SCALE}x wall time: divide wall latencies by $SCALE)"
