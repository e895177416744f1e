#!/usr/bin/env bash
# Issue 17's 10-minute soak (not in CI; docs/reliability.md has its figures).
# `kn-llmd local` (loopback only) with two simulated vLLM pods run as
# processes (`kn-llmd sim`, llama-3.1-8b-h100 profile, --max-num-seqs 8,
# priority scheduling; saturated throughput about 16 req/s), mixed-tier
# streamed load (critical:standard:batch = 1:2:3, 200-word prompts, 128
# tokens) held around capacity (RATE, 16 req/s) with a 3x burst (BURST
# more, 32 req/s, for 10 s) every minute, and faults injected: a pod killed
# (SIGKILL) at 30 % of the run, a pod frozen (SIGSTOP) for FREEZE seconds at
# 60 % and resumed (SIGCONT; the local liveness check may replace it first).
#
# It reports the requests sent, served (200 with [DONE]), shed (429),
# failed cleanly (503 and other statuses), hung (no end within GUARD),
# truncated-but-200 and transport errors; TTFT p90 per tier and the sheds
# answered after 50 ms; the faults and the pods started; the activator
# process's (`kn-llmd local`: activator and scaler; the pods are other
# processes) peak resident memory and its goroutines and open fds before the
# load and after it ended. Every client request is bounded (GUARD); the
# whole run by DURATION + GUARD.
#
#   test/bench/soak-local.sh                 # 10 minutes
#   DURATION=60 test/bench/soak-local.sh     # a short try
#
# Env: DURATION (600 s), RATE (16), BURST (32), FREEZE (30 s), GUARD (180 s),
# SETTLE (100 s: the second look at goroutines/fds, after idle connections close),
# PORT (18480; PORT+1 the metrics), OUT (a new temporary folder), KN_LLMD
# and OVERLOAD (binaries; built when unset). Keep the clients at normal
# priority: under real-time priority for minutes they starve the machine.
set -euo pipefail
cd "$(dirname "$0")/../.."
DURATION=${DURATION:-600}
RATE=${RATE:-16}
BURST=${BURST:-32}
FREEZE=${FREEZE:-30}
GUARD=${GUARD:-180}
PORT=${PORT:-18480}
MPORT=$((PORT + 1))
OUT=${OUT:-$(mktemp -d /tmp/soak.XXXXXX)}
mkdir -p "$OUT"
if [ -z "${KN_LLMD:-}" ]; then KN_LLMD=$OUT/kn-llmd; go build -o "$KN_LLMD" ./cmd/kn-llmd; fi
if [ -z "${OVERLOAD:-}" ]; then OVERLOAD=$OUT/overload; go build -o "$OVERLOAD" ./test/bench/overload; fi
echo "soak: ${DURATION}s at ${RATE} req/s, +${BURST} req/s for 10 s each minute; tree $(git rev-parse --short HEAD 2>/dev/null || echo unknown); out $OUT"

cat >"$OUT/svc.yaml" <<'YAML'
apiVersion: serving.knative.dev/v1
kind: Service
metadata: {name: llm, namespace: default}
spec:
  template:
    metadata:
      annotations:
        autoscaling.knative.dev/min-scale: "2"
        autoscaling.knative.dev/max-scale: "2"
        llm-d.ai/slo-tiers: critical,standard,batch
        llm-d.ai/slo-tier: critical
        llm-d.ai/sim-profile: llama-3.1-8b-h100
    spec:
      containers:
      - name: vllm
        image: vllm/vllm-openai:v0.11.0
        args: [--model, meta-llama/Llama-3.1-8B-Instruct, --max-model-len, "32768", --max-num-seqs, "8", --scheduling-policy, priority]
YAML

"$KN_LLMD" local -f "$OUT/svc.yaml" --no-autoscale --addr "127.0.0.1:$PORT" --metrics-addr "127.0.0.1:$MPORT" \
  --pod-command "$KN_LLMD sim --model {model} --served-model-name {served_model_name} --port {port} --profile {sim_profile} {args}" \
  >"$OUT/local.log" 2>&1 &
local_pid=$!
cleanup() { kill "$local_pid" 2>/dev/null || true; wait "$local_pid" 2>/dev/null || true; }
trap cleanup EXIT
for _ in $(seq 1 600); do grep -q "is ready" "$OUT/local.log" && break; sleep 0.1; done
grep -q "is ready" "$OUT/local.log" || { echo "kn-llmd local did not become ready"; tail "$OUT/local.log"; exit 1; }
sleep 2

probe() { # goroutines fds rss_kb tcp_conns of the activator process
  local g
  g=$(curl -s --max-time 5 "127.0.0.1:$MPORT/metrics" | awk '/^go_goroutines /{print $2}')
  echo "${g:-?} $(ls "/proc/$local_pid/fd" | wc -l) $(ps -o rss= -p "$local_pid" | tr -d ' ') $(conns)"
}
conns() { # its established TCP connections (to clients and pods; idle keep-alives included)
  ss -tnpH state established 2>/dev/null | grep -c "pid=$local_pid," || true
}
pods() { pgrep -P "$local_pid" -f " sim " || true; }
read -r g0 f0 r0 c0 < <(probe)
echo "before: goroutines $g0, fds $f0, rss ${r0} KiB, TCP connections $c0; pods $(pods | tr '\n' ' ')" | tee "$OUT/faults.txt"

# Resident memory every second, while the load runs.
(while kill -0 "$local_pid" 2>/dev/null; do ps -o rss= -p "$local_pid" 2>/dev/null || true; sleep 1; done) >"$OUT/rss.txt" &
sampler=$!

start=$(date +%s)
at() { local d=$((start + $1 - $(date +%s))); [ "$d" -gt 0 ] && sleep "$d"; return 0; }
clients=()
minutes=$(((DURATION + 59) / 60))
kill_at=$((DURATION * 3 / 10))
freeze_at=$((DURATION * 6 / 10))
events=()
for s in $(seq 0 60 $((DURATION - 1))); do events+=("$s base"); done
for s in $(seq 40 60 $((DURATION - 1))); do events+=("$s burst"); done
events+=("$kill_at kill" "$freeze_at freeze" "$((freeze_at + FREEZE)) resume")
frozen=""
while read -r s what; do
  at "$s"
  case $what in
    base)
      d=$((DURATION - s < 60 ? DURATION - s : 60))
      "$OVERLOAD" --url "http://127.0.0.1:$PORT" --host llm.default.localhost --rate "$RATE" --duration "${d}s" \
        --mix critical:1,standard:2,batch:3 --max-tokens 128 --guard "${GUARD}s" --out "$OUT/base-$s.jsonl" >"$OUT/base-$s.txt" 2>&1 </dev/null &
      clients+=($!) ;;
    burst)
      "$OVERLOAD" --url "http://127.0.0.1:$PORT" --host llm.default.localhost --rate "$BURST" --duration 10s \
        --mix critical:1,standard:2,batch:3 --max-tokens 128 --guard "${GUARD}s" --out "$OUT/burst-$s.jsonl" >"$OUT/burst-$s.txt" 2>&1 </dev/null &
      clients+=($!) ;;
    kill)
      p=$(pods | head -1)
      echo "t=${s}s: SIGKILL pod process $p" | tee -a "$OUT/faults.txt"
      [ -n "$p" ] && kill -KILL "$p" ;;
    freeze)
      frozen=$(pods | tail -1)
      echo "t=${s}s: SIGSTOP pod process $frozen for ${FREEZE}s" | tee -a "$OUT/faults.txt"
      [ -n "$frozen" ] && kill -STOP "$frozen" ;;
    resume)
      if [ -n "$frozen" ] && kill -CONT "$frozen" 2>/dev/null; then
        echo "t=${s}s: SIGCONT pod process $frozen (still there)" | tee -a "$OUT/faults.txt"
      else
        echo "t=${s}s: pod process $frozen gone before SIGCONT (the runtime replaced it)" | tee -a "$OUT/faults.txt"
      fi ;;
  esac
done < <(printf '%s\n' "${events[@]}" | sort -n)
echo "load sent for ${DURATION}s (${minutes} minute(s)); waiting for the clients (each bounded by ${GUARD}s)"
for c in "${clients[@]}"; do wait "$c" || true; done
ended=$(($(date +%s) - start))
sleep 5
read -r g1 f1 r1 c1 < <(probe)
kill "$sampler" 2>/dev/null || true
echo "after: goroutines $g1, fds $f1, rss ${r1} KiB, TCP connections $c1 (idle keep-alives to the pods among them); pods $(pods | tr '\n' ' ')" | tee -a "$OUT/faults.txt"
# Idle keep-alive connections close after the transports' idle timeout:
# what remains after it is held by something.
sleep "${SETTLE:-100}"
read -r g2 f2 r2 c2 < <(probe)
echo "after ${SETTLE:-100}s more: goroutines $g2, fds $f2, rss ${r2} KiB, TCP connections $c2" | tee -a "$OUT/faults.txt"
curl -s "127.0.0.1:$MPORT/metrics" | grep -E "^llmd_activator_(rejected_total|shed_seconds_(count|bucket\{.*le=\"0.05\"))" >"$OUT/metrics.txt" || true
ready=$(grep -c "pod ready" "$OUT/local.log" || true)
peak=$(sort -n "$OUT/rss.txt" | tail -1)

python3 - "$OUT" "$ended" "$g0" "$f0" "$g1" "$f1" "$peak" "$ready" "$g2" "$f2" <<'PY'
import glob, json, sys
out, ended, g0, f0, g1, f1, peak, ready, g2, f2 = sys.argv[1:]
rows = [json.loads(l) for p in sorted(glob.glob(out + "/*.jsonl")) for l in open(p)]
def q(xs, p):
    xs = sorted(xs)
    return xs[min(int(p * len(xs)), len(xs) - 1)] if xs else 0
tiers = ["critical", "standard", "batch"]
# xport: no answer, or a stream aborted mid-way / with an error event (a
# failure the client sees); trunc: a 200 that ended cleanly without [DONE].
print(f"{'tier':9} {'sent':>6} {'served':>6} {'429':>6} {'503':>5} {'other':>5} {'hung':>4} {'trunc':>5} {'xport':>5} {'ttft-p50':>9} {'ttft-p90':>9} {'shed>50ms':>9}")
tot = {}
for t in tiers + ["all"]:
    rs = [r for r in rows if t == "all" or r["tier"] == t]
    ok = [r for r in rs if r["status"] == 200 and not (r["hung"] or r["truncated"] or r["transport"])]
    shed = [r for r in rs if r["status"] == 429 and not r["hung"]]
    c = dict(sent=len(rs), served=len(ok), shed=len(shed),
             unavailable=sum(r["status"] == 503 for r in rs),
             other=sum(r["status"] not in (0, 200, 429, 503) for r in rs),
             hung=sum(r["hung"] for r in rs), trunc=sum(r["truncated"] for r in rs),
             xport=sum(r["transport"] for r in rs), slow=sum(r["end_ms"] > 50 for r in shed))
    ttft = [r["ttft_ms"] for r in ok]
    print(f"{t:9} {c['sent']:6} {c['served']:6} {c['shed']:6} {c['unavailable']:5} {c['other']:5} {c['hung']:4} {c['trunc']:5} {c['xport']:5} "
          f"{q(ttft, .5):7.0f}ms {q(ttft, .9):7.0f}ms {c['slow']:9}")
    tot = c
print(f"all ended {ended}s after the start; pods started (ready events, 2 at start): {ready}")
print(f"activator process: peak RSS {int(peak) / 1024:.0f} MiB; goroutines {g0} before, {g1} at the end, {g2} once idle connections closed; open fds {f0}, {f1}, {f2}")
bad = tot["hung"] + tot["trunc"]
print("PASS: hung 0, truncated-but-200 0" if bad == 0 else f"FAIL: {tot['hung']} hung, {tot['trunc']} truncated-but-200")
PY
echo "server side (arrival to refusal written):"; cat "$OUT/metrics.txt"
cat "$OUT/faults.txt"
