#!/usr/bin/env bash
# KV events on vs off, under concurrent load, through `kn-llmd local` with
# process pods: llmd-kn's simulator (`kn-llmd sim`, whose publisher binds;
# the activator dials it) or llm-d's llm-d-inference-sim (whose publisher
# connects to the activator's collector, {kv_events_collector}, under the
# topic kv@<pod IP>:<port>@<model>), wired directly, no bridge.
#
#   test/bench/kv-events-local.sh OUT_DIR
#
# Environment: SIMS ("ours tp"), CONDITIONS ("default:off default:on
# kv-precise:on"), TP_SIM (path to an llm-d-inference-sim binary; built from
# a snapshot of its public repository, not part of llmd-kn), TOKENIZER (a
# folder of Hugging Face tokenizer files both the activator and our
# simulator tokenize with; empty: the estimate), RATE (30 req/s), REQUESTS
# (600), PODS (4), BLOCKS (256 KV blocks of 16 tokens per pod), RUNS (1).
set -euo pipefail
cd "$(dirname "$0")/../.."
OUT="${1:?usage: $0 OUT_DIR}"
read -r -a SIMS <<< "${SIMS:-ours tp}"
read -r -a CONDITIONS <<< "${CONDITIONS:-default:off default:on kv-precise:on}"
RATE="${RATE:-30}"
REQUESTS="${REQUESTS:-600}"
PODS="${PODS:-4}"
BLOCKS="${BLOCKS:-256}"
RUNS="${RUNS:-1}"
TOKENIZER="${TOKENIZER:-}"
mkdir -p "$OUT"
work=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$work"' EXIT
KN="${KN_LLMD:-$work/kn-llmd}"
[ -x "$KN" ] || go build -o "$KN" ./cmd/kn-llmd

cat > "$work/workload.yaml" <<YAML
# Shared prefixes: 8 groups x 6 prompts, 1,000-token system prompt,
# 100-token question, 16 output tokens; chat text (the tokenizer matters).
kind: shared-prefix
seed: 7
sharedPrefix: {groups: 8, promptsPerGroup: 6, systemPromptLen: 1000, questionLen: 100, outputLen: 16, order: shuffle}
arrival: {kind: poisson, rate: $RATE}
maxRequests: $REQUESTS
YAML

tokann=""
simtok=""
if [ -n "$TOKENIZER" ]; then
  tokann="llm-d.ai/tokenizer: \"native:$TOKENIZER\""
  simtok="--tokenizer $TOKENIZER"
fi
port=18300
for run in $(seq 1 "$RUNS"); do
for sim in "${SIMS[@]}"; do
  for cond in "${CONDITIONS[@]}"; do
    profile="${cond%%:*}" events="${cond##*:}"
    name="$sim-$profile-events-$events"
    [ "$RUNS" -gt 1 ] && name="$name-r$run"
    port=$((port + 2))
    case "$sim:$events" in
      ours:on)  cmd="$KN sim --model {model} --served-model-name {served_model_name} --port {port} --num-gpu-blocks-override $BLOCKS --max-model-len 8192 --kv-events-endpoint tcp://*:{kv_events_port} $simtok" ;;
      ours:off) cmd="$KN sim --model {model} --served-model-name {served_model_name} --port {port} --num-gpu-blocks-override $BLOCKS --max-model-len 8192 $simtok" ;;
      tp:on)    cmd="$TP_SIM --port {port} --model {served_model_name} --force-dummy-tokenizer --enable-kvcache --kv-cache-size $BLOCKS --block-size 16 --use-vllm-map-event-format --zmq-endpoint {kv_events_collector} --max-num-seqs 8 --max-model-len 8192 --prefill-overhead 5ms --prefill-time-per-token 100us --inter-token-latency 5ms" ;;
      # Off: the publisher connects where nobody listens.
      tp:off)   cmd="$TP_SIM --port {port} --model {served_model_name} --force-dummy-tokenizer --enable-kvcache --kv-cache-size $BLOCKS --block-size 16 --use-vllm-map-event-format --zmq-endpoint tcp://127.0.0.1:9 --max-num-seqs 8 --max-model-len 8192 --prefill-overhead 5ms --prefill-time-per-token 100us --inter-token-latency 5ms" ;;
    esac
    cat > "$work/$name.yaml" <<YAML
apiVersion: serving.knative.dev/v1
kind: Service
metadata: {name: llm, namespace: default}
spec:
  template:
    metadata:
      annotations:
        autoscaling.knative.dev/min-scale: "$PODS"
        autoscaling.knative.dev/max-scale: "$PODS"
        llm-d.ai/routing-profile: $profile
        llm-d.ai/model: demo
        $tokann
    spec:
      containers:
      - image: vllm/vllm-openai:v0.11.0
        args: [--model, demo, --max-model-len, "8192"]
YAML
    PYTHONHASHSEED=0 "$KN" local -f "$work/$name.yaml" --addr "127.0.0.1:$port" --metrics-addr "127.0.0.1:$((port + 1))" \
      --no-autoscale --pod-command "$cmd" >"$work/$name.log" 2>&1 &
    pid=$!
    for i in $(seq 1 120); do grep -q "is ready" "$work/$name.log" && break; sleep 1; done
    sleep 2
    nice -n 10 "$KN" bench --url "http://127.0.0.1:$port" --model demo --api chat --workload "$work/workload.yaml" \
      --out "$OUT/$name" --name "$name" --progress none >"$work/$name.bench.log" 2>&1 || { cat "$work/$name.bench.log"; }
    sleep 1
    curl -s "127.0.0.1:$((port + 1))/stats" >"$OUT/$name/stats.json" || true
    curl -s "127.0.0.1:$((port + 1))/metrics" | grep -E "^llmd_activator_(kv_|prefix_prediction|tokeniz)" >"$OUT/$name/kvmetrics.txt" || true
    kill "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
    echo "done $name"
  done
done
done
