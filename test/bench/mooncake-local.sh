#!/usr/bin/env bash
# The Mooncake synthetic trace, truncated and time-scaled, on 8 simulated
# Llama-3.1-8B/H100 pods through `kn-llmd local` + `kn-llmd bench` (real
# time), once per routing profile, next to `kn-llmd plan` (virtual time) on
# the same workload and deployment.
#
#   test/bench/mooncake-local.sh [OUT_DIR]     (default docs/benchmarks/mooncake-local)
#
# Writes OUT_DIR/local/ (bench report of the real-time runs) and
# OUT_DIR/plan/ (plan report of the same workload, in modelled time).
#
# Knobs (environment): MINUTES (modelled minutes of trace replayed from its
# start, 2), SCALE (sim time scale, 0.5: wall time is SCALE x modelled time),
# PODS (8), PROFILES (round-robin prefix-approx default), DATA
# (../shared/data), OVERHEAD (the real path's per-request cost in modelled
# time that plan adds per hop, 16ms: what test/fidelity measures on the
# shared 2-core machine at SCALE 0.5).
#
# Converting between the instruments: the bench runs see the trace at
# speedup 1/SCALE and measure wall time, so their latencies are SCALE times
# the modelled ones; plan runs the trace at its own timestamps with the
# activator's wall-clock constants divided by SCALE (metrics scrape 50 ms,
# stale after 500 ms, KV-event lag ~2 ms).
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
cd "$root"
OUT="${1:-docs/benchmarks/mooncake-local}"
DATA="${DATA:-$root/../shared/data}"
MINUTES="${MINUTES:-2}"
SCALE="${SCALE:-0.5}"
PODS="${PODS:-8}"
OVERHEAD="${OVERHEAD:-16ms}"
read -r -a PROFILES <<< "${PROFILES:-round-robin prefix-approx default}"
trace="mooncake:$DATA/mooncake/synthetic_trace.jsonl"

work=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$work"' EXIT
go build -o "$work/kn-llmd" ./cmd/kn-llmd

ms() { awk -v d="$1" -v s="$SCALE" 'BEGIN{printf "%dms", d/s}'; }
speedup=$(awk -v s="$SCALE" 'BEGIN{print 1/s}')
wallDur=$(awk -v m="$MINUTES" -v s="$SCALE" 'BEGIN{printf "%ds", m*60*s}')
# SLO targets of 2 s TTFT and 100 ms TPOT in modelled time, in wall time.
ttftWall=$(awk -v s="$SCALE" 'BEGIN{printf "%dms", 2000*s}')
tpotWall=$(awk -v s="$SCALE" 'BEGIN{printf "%dms", 100*s}')

# Real time: one runtime per profile (idle until its turn: bench runs them
# one after the other, all in one report; latencies in wall time).
runs=()
port=18200
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
        autoscaling.knative.dev/max-scale: "$PODS"
        llm-d.ai/routing-profile: $p
        llm-d.ai/sim-profile: llama-3.1-8b-h100
    spec:
      containers:
      - image: vllm/vllm-openai:v0.11.0
        args: [--model, meta-llama/Llama-3.1-8B-Instruct]
YAML
  "$work/kn-llmd" local -f "$work/$p.yaml" --addr "127.0.0.1:$port" --metrics-addr off \
    --sim-time-scale "$SCALE" >"$work/$p.log" 2>&1 &
  runs+=(--run "$p=http://127.0.0.1:$port")
done
for i in $(seq 1 60); do
  ready=0
  for p in "${PROFILES[@]}"; do grep -q "is ready" "$work/$p.log" && ready=$((ready + 1)); done
  [ "$ready" -eq ${#PROFILES[@]} ] && break
  sleep 1
done
"$work/kn-llmd" bench --trace "$trace" --speedup "$speedup" --duration "$wallDur" "${runs[@]}" \
  --model meta-llama/Llama-3.1-8B-Instruct --slo-ttft "$ttftWall" --slo-tpot "$tpotWall" \
  --cooldown 5s --progress lines --out "$OUT/local"

# Virtual time: the same trace prefix at its own timestamps.
profiles_csv=$(IFS=,; echo "${PROFILES[*]}")
"$work/kn-llmd" plan --trace "$trace" --duration "${MINUTES}m" --profile llama-3.1-8b-h100 --engines "$PODS" \
  --routing "$profiles_csv" --scrape-interval "$(ms 50)" --stale-after "$(ms 500)" --kv-event-delay "$(ms 2)" --overhead "$OVERHEAD" \
  --slo-ttft 2s --slo-tpot 100ms --out "$OUT/plan"

echo "reports: $OUT/local/ (wall time: divide latencies by $SCALE) and $OUT/plan/ (modelled time)"
