#!/usr/bin/env bash
# Autoscaling comparison (issues #7, #16): the SLO autoscaler's decider
# against Knative's KPA (its own decider, knative.dev/serving/pkg/autoscaler/scaling,
# fed concurrency), static peak provisioning, the instant bound (per window,
# no cold starts) and the clairvoyant bound (knows every arrival, pays cold
# starts and the scale-to-zero grace), in
# `kn-llmd plan` (virtual time: no GPU, no cluster, about two and a half minutes on two
# shared cores).
#
#   test/bench/autoscaling.sh [OUT_DIR]     (default docs/benchmarks/autoscaling)
#
# Writes OUT_DIR/<run>/autoscaling.{md,json} for each run below. DATA
# (default ../shared/data) holds the traces.
#
# Deployment: Llama-3.1-8B on H100 engines (one GPU each), default routing,
# the activator's standard-tier flow control; autoscalers start at zero
# replicas (scale to zero after 30 s without traffic), new replicas take
# 10 s to start. SLO: the standard tier's TTFT 2 s and TPOT 100 ms, at p90
# for the decider and the report's latencies; attainment is the fraction of
# requests meeting both. The engines' step budget is chosen from the TPOT
# target as the webhook does (--max-num-batched-tokens auto: 2,048 tokens).
#
#   RUNS="azure-min1 mooncake-tuned" test/bench/autoscaling.sh   # a subset
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
cd "$root"
OUT="${1:-docs/benchmarks/autoscaling}"
DATA="${DATA:-$root/../shared/data}"
DATA="$(cd "$DATA" && pwd)"
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT

go build -o "$tmp/kn-llmd" ./cmd/kn-llmd

# The Azure code trace at its own timestamps (one hour, bursty, idle gaps),
# every prompt starting with one shared 1,024-token system prompt.
cat >"$tmp/azure-code.yaml" <<YAML
kind: azure
path: $DATA/azure/AzureLLMInferenceTrace_code.csv
azure: {systemPromptLen: 1024}
YAML
# The Mooncake synthetic trace at its own timestamps: its peak needs 6 to 7
# replicas by the lower bound.
cat >"$tmp/mooncake.yaml" <<YAML
kind: mooncake
path: $DATA/mooncake/synthetic_trace.jsonl
YAML

common=(--routing default --profile llama-3.1-8b-h100 --startup-delay 10s --scale-to-zero-grace 30s
  --slo-ttft 2s --slo-tpot 100ms --slo-percentile 90 --lower-bound-window 10s)
# slo-forecast is the SLO decider with its arrival forecast (Holt's linear
# trend over the cold start and a tick; autoscaler.DefaultForecast).
# Knative's defaults (panic at 200 %, no scale-down delay) and a tuned
# setting (panic at 500 %, 60 s scale-down delay), the same for both
# autoscalers.
tuned=(--panic-threshold 500 --scale-down-delay 60s)

plan() { # NAME WORKLOAD ARGS...
  local name="$1" wl="$2"
  shift 2
  if [[ -n "${RUNS:-}" && " $RUNS " != *" $name "* ]]; then return; fi
  echo "== $name"
  (cd "$tmp" && nice -n 10 ./kn-llmd plan --workload "$wl.yaml" "${common[@]}" "$@" --out "$name")
  mkdir -p "$OUT/$name"
  cp "$tmp/$name/autoscaling.md" "$tmp/$name/autoscaling.json" "$OUT/$name/"
}

# Azure: at most 8 replicas; static peak at 99 %.
plan azure-default azure-code --engines 8 --autoscaler fixed,slo,kpa,static-peak,instant-bound,clairvoyant \
  --kpa-target 2,4,8,16,32 --target-attainment 0.99
plan azure-tuned azure-code --engines 8 --autoscaler slo,slo-forecast,kpa,instant-bound,clairvoyant --kpa-target 2,4,8,16,32 "${tuned[@]}"
# The cost of scale to zero, separated: the autoscalers never go below 1
# replica, or wait 5 minutes without traffic before going to zero.
plan azure-min1 azure-code --engines 8 --min-engines 1 --autoscaler slo,slo-forecast,kpa,instant-bound,clairvoyant --kpa-target 2,8,32 "${tuned[@]}"
plan azure-grace5m azure-code --engines 8 --autoscaler slo,kpa,instant-bound,clairvoyant --kpa-target 2,8,32 "${tuned[@]}" --scale-to-zero-grace 5m
# Faster cold starts (a KV-offload restore, vLLM sleep mode or weight
# streaming: 2 s instead of 10 s), with scale to zero and with one replica
# kept.
plan azure-start2s azure-code --engines 8 --autoscaler slo,slo-forecast,kpa,instant-bound,clairvoyant --kpa-target 2,8,32 "${tuned[@]}" --startup-delay 2s
plan azure-min1-start2s azure-code --engines 8 --min-engines 1 --autoscaler slo,kpa,instant-bound,clairvoyant --kpa-target 2,8,32 "${tuned[@]}" --startup-delay 2s
# Issue #16's starting point: vLLM's default budget of 8,192 tokens.
plan azure-min1-budget8192 azure-code --engines 8 --min-engines 1 --autoscaler slo,kpa,instant-bound,clairvoyant --kpa-target 2,8,32 "${tuned[@]}" --max-num-batched-tokens 8192
# Azure without scale to zero: the autoscalers never go below 2 replicas.
plan azure-min2 azure-code --engines 8 --min-engines 2 --autoscaler slo,kpa,instant-bound,clairvoyant --kpa-target 4,8,16 "${tuned[@]}"
# The goal's 99 %: the SLO decider (and the bound) planning for p99
# rather than p90 (KPA has no percentile: its attainment is as above).
plan azure-p99 azure-code --engines 8 --autoscaler slo,instant-bound,clairvoyant --slo-percentile 99 "${tuned[@]}"
plan azure-p99-min1 azure-code --engines 8 --min-engines 1 --autoscaler slo,instant-bound,clairvoyant --slo-percentile 99 "${tuned[@]}"

# Mooncake: at most 16 replicas; prompts up to 191k tokens cannot all meet
# a 2 s TTFT (16 fixed replicas reach 0.949), so static peak aims at 0.94.
plan mooncake-default mooncake --engines 16 --autoscaler fixed,slo,kpa,static-peak,instant-bound,clairvoyant \
  --kpa-target 1,1.5,2,4,8 --target-attainment 0.94
plan mooncake-tuned mooncake --engines 16 --autoscaler slo,slo-forecast,kpa,instant-bound,clairvoyant --kpa-target 1,1.5,2,4,8 "${tuned[@]}"
plan mooncake-min2 mooncake --engines 16 --min-engines 2 --autoscaler slo,kpa,instant-bound,clairvoyant --kpa-target 1,2,4 "${tuned[@]}"
plan mooncake-start2s mooncake --engines 16 --autoscaler slo,slo-forecast,kpa,instant-bound,clairvoyant --kpa-target 1,2,4 "${tuned[@]}" --startup-delay 2s
plan mooncake-budget8192 mooncake --engines 16 --autoscaler slo,kpa,instant-bound,clairvoyant --kpa-target 1,2,4 "${tuned[@]}" --max-num-batched-tokens 8192
