#!/usr/bin/env bash
# Batch soak in real time (issue #13): the plan soak (batch-soak.sh) again on
# `kn-llmd local`, scaled down to one small machine. Interactive traffic at
# 60 % of the deployment's capacity, half critical (the critical traffic tag's
# host) and half standard (the Service's host), alone and with a batch
# backlog submitted through the Batch API; then the batch backlog alone.
#
#   test/bench/batch-soak-local.sh [OUT]     (default /tmp/batch-soak-local)
#
# Writes OUT/results.md (the table) and each run's bench reports under OUT.
# Knobs (environment): SCALE (--sim-time-scale, default 4: the simulated
# pods run 4x slower than the modelled H100s, so the streamed tokens fit a
# 2-core machine), WINDOW (bench seconds per run, 90), LOAD (0.6),
# LINES (batch backlog, 2000), ORDER (runs, "1 2 3 1 2"; with RESUME=N the
# runs numbered from N+1 reuse OUT's capacity), KN_LLMD (a built
# binary; else it is built), NICE (niceness of everything, 19), BENCH_PREFIX
# (a command the two interactive bench clients run under, e.g. /tmp/rt.sh
# for real-time priority on a machine shared with others; default none:
# clients that fall behind spin, and at real-time priority they can starve
# the server and the machine, so use it only with a core to spare).
#
# Deployment: 2 simulated pods of Llama-3.1-8B on H100 (min-scale = max-scale
# = 2, --no-autoscale), default routing, vLLM priority scheduling, tiers
# critical, standard, batch. Interactive: vLLM's random dataset, 1,024
# prompt / 128 output tokens, Poisson; capacity = output tokens/s of a
# saturating 40 req/s run (seconds 15-40) / 128. Batch: LINES chat lines of
# 1,024 prompt tokens (1,025 with the template) and 256 output tokens
# (ignore_eos), all distinct, sent by `kn-llmd batch submit --detach`; its
# lines completed are read from GET /v1/batches/ID at the start and end of
# the bench window.
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
OUT="${1:-/tmp/batch-soak-local}"
SCALE="${SCALE:-4}"
WINDOW="${WINDOW:-90}"
LOAD="${LOAD:-0.6}"
LINES="${LINES:-2000}"
ORDER="${ORDER:-1 2 3 1 2}"
NICE="${NICE:-19}"
API=127.0.0.1:18189
METRICS=127.0.0.1:19189
mkdir -p "$OUT"
OUT="$(cd "$OUT" && pwd)"
tmp="$(mktemp -d)"
pid=""
cleanup() {
	if [ -n "$pid" ]; then kill "$pid" 2>/dev/null || true; fi
	rm -rf "$tmp"
}
trap cleanup EXIT
bin="${KN_LLMD:-}"
if [ -z "$bin" ]; then
	bin="$tmp/kn-llmd"
	(cd "$root" && nice -n "$NICE" go build -o "$bin" ./cmd/kn-llmd)
fi
run() { nice -n "$NICE" "$bin" "$@"; }
BENCH_PREFIX="${BENCH_PREFIX:-}"
runb() { nice -n "$NICE" $BENCH_PREFIX "$bin" "$@"; }

cat >"$tmp/svc.yaml" <<'EOF'
apiVersion: serving.knative.dev/v1
kind: Service
metadata:
  name: chat
  namespace: default
spec:
  template:
    metadata:
      annotations:
        llm-d.ai/model: meta-llama/Llama-3.1-8B-Instruct
        llm-d.ai/slo-tiers: critical,standard,batch
        llm-d.ai/slo-tier: standard
        llm-d.ai/routing-profile: default
        autoscaling.knative.dev/min-scale: "2"
        autoscaling.knative.dev/max-scale: "2"
        llm-d.ai/sim-profile: llama-3.1-8b-h100
    spec:
      containers:
      - name: vllm
        image: vllm/vllm-openai:v0.11.0
        args: [--model, meta-llama/Llama-3.1-8B-Instruct, --max-model-len, "32768", --scheduling-policy, priority]
        ports:
        - containerPort: 8000
        resources:
          limits:
            nvidia.com/gpu: "1"
  traffic:
  - {latestRevision: true, percent: 100}
  - {latestRevision: true, percent: 0, tag: critical}
  - {latestRevision: true, percent: 0, tag: batch}
EOF
cat >"$tmp/inter.yaml" <<'EOF'
kind: random
random: {inputLen: 1024, outputLen: 128, numPrompts: 20000}
arrival: {kind: poisson, rate: 1}
EOF
python3 - "$tmp/batch.jsonl" "$LINES" <<'EOF'
import json, random, sys
r = random.Random(7)
words = "alpha bravo delta river stone cloud paper green quick light north table seven piano metal ocean".split()
with open(sys.argv[1], "w") as f:
    for i in range(int(sys.argv[2])):
        text = " ".join(r.choice(words) for _ in range(1010))
        f.write(json.dumps({"custom_id": f"r{i}", "method": "POST", "url": "/v1/chat/completions",
            "body": {"model": "meta-llama/Llama-3.1-8B-Instruct", "messages": [{"role": "user", "content": f"{i}: {text}"}],
                     "max_tokens": 256, "ignore_eos": True}}) + "\n")
EOF

start_local() {
	rm -rf "$tmp/store"
	nice -n "$NICE" "$bin" local -f "$tmp/svc.yaml" --no-autoscale --sim-time-scale "$SCALE" \
		--batch-storage "$tmp/store" --addr "$API" --metrics-addr "$METRICS" >"$OUT/local-$1.log" 2>&1 &
	pid=$!
	for _ in $(seq 100); do
		curl -sf "http://$API/v1/models" >/dev/null && return 0
		sleep 0.3
	done
	echo "kn-llmd local did not start" >&2
	exit 1
}
stop_local() {
	kill "$pid"
	wait "$pid" || true
	pid=""
}
completed() { # batch id -> lines completed so far
	curl -sf "http://$API/v1/batches/$1" | python3 -c 'import json,sys; print(json.load(sys.stdin)["request_counts"]["completed"])'
}
submit() { # a new batch: the client would resume the one its state file (next to the input) names
	rm -f "$tmp/batch.jsonl.batch.json"
	run batch submit "$tmp/batch.jsonl" --url "http://$API" --detach -o "$tmp/out.jsonl" 2>&1 |
		grep -o 'batch_[A-Za-z0-9_-]*' | head -1
}
interactive() { # run dir, rate per tier
	runb bench --url "http://$API" --header 'Host: critical-chat.default.localhost' --workload "$tmp/inter.yaml" \
		--rate "$2" --seed 1 --duration "${WINDOW}s" --name critical --progress none --out "$1/critical" 2>"$1/critical.log" &
	local c=$!
	runb bench --url "http://$API" --header 'Host: chat.default.localhost' --workload "$tmp/inter.yaml" \
		--rate "$2" --seed 2 --duration "${WINDOW}s" --name standard --progress none --out "$1/standard" 2>"$1/standard.log" &
	local s=$!
	wait "$c" "$s"
}
batch_window() { # batch id, file: lines completed at the window's start and end
	local a b
	a=$(completed "$1")
	sleep "$WINDOW"
	b=$(completed "$1")
	echo "$a $b" >"$2"
}

if [ -n "${RESUME:-}" ] && [ -f "$OUT/params.json" ]; then # the runs after RESUME (an index) with the capacity measured
	cap=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["capacity"])' "$OUT/params.json")
else
echo "== capacity" >&2
start_local cap
run bench --url "http://$API" --header 'Host: chat.default.localhost' --workload "$tmp/inter.yaml" --rate 40 \
	--arrival constant --max-concurrency 512 --duration 40s --progress none --out "$OUT/capacity" 2>"$OUT/capacity.log"
stop_local
cap=$(python3 -c '
import json, sys
ts = json.load(open(sys.argv[1]))["runs"][0]["timeSeries"]
print(sum(b["outputTokens"] for b in ts if 15 <= b["t"] < 40) / 25 / 128)' "$OUT/capacity/summary.json")
rate=$(python3 -c "print(round($cap * $LOAD / 2, 3))")
echo "capacity $cap req/s; $rate req/s per tier" >&2
echo "{\"capacity\": $cap, \"ratePerTier\": $rate, \"scale\": $SCALE, \"window\": $WINDOW, \"lines\": $LINES}" >"$OUT/params.json"
fi
rate=$(python3 -c "print(round($cap * $LOAD / 2, 3))")

i=${RESUME:-0}
for r in $ORDER; do
	i=$((i + 1))
	d="$OUT/$i-run$r"
	mkdir -p "$d"
	echo "== $i: run $r" >&2
	start_local "$i"
	load0=$(cut -d' ' -f1-3 /proc/loadavg)
	case $r in
	1) interactive "$d" "$rate" ;;
	2)
		id=$(submit)
		batch_window "$id" "$d/batch" &
		w=$!
		interactive "$d" "$rate"
		wait "$w"
		;;
	3)
		id=$(submit)
		batch_window "$id" "$d/batch"
		;;
	esac
	echo "$load0 $(cut -d' ' -f1-3 /proc/loadavg)" >"$d/loadavg"
	stop_local
done

python3 - "$OUT" <<'EOF' | tee "$OUT/results.md"
import json, os, sys
out = sys.argv[1]
p = json.load(open(os.path.join(out, "params.json")))
runs = sorted(d for d in os.listdir(out) if "-run" in d)
def bench(d, tier):
    f = os.path.join(out, d, tier, "summary.json")
    if not os.path.exists(f):
        return None
    return json.load(open(f))["runs"][0]
def batch(d):
    f = os.path.join(out, d, "batch")
    if not os.path.exists(f):
        return None
    a, b = map(int, open(f).read().split())
    return b - a
alone = [batch(d) for d in runs if d.endswith("run3")]
alone_tok = sum(alone) * 256 / p["window"] / len(alone) if alone else None
print(f"Capacity {p['capacity']:.2f} req/s (1,024/128, --sim-time-scale {p['scale']}); interactive {2*p['ratePerTier']:.2f} req/s "
      f"({p['ratePerTier']} per tier); window {p['window']} s; batch backlog {p['lines']} lines of 1,024/256; "
      f"batch alone {alone_tok and round(alone_tok)} output tok/s.\n")
print("| run | critical TTFT p90 | standard TTFT p90 | completed/sent (crit / std; the rest shed, 429) | TPOT p90 (crit / std) | lateness p99 / max | batch lines in window | batch output tok/s | idle capacity used | load avg (start; end) |")
print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |")
for d in runs:
    c, s, n = bench(d, "critical"), bench(d, "standard"), batch(d)
    row = [d]
    if c and s:
        L = lambda r, k: r["latencySeconds"][k]
        row += [f"{L(c,'ttft')['p90']*1000:.0f} ms", f"{L(s,'ttft')['p90']*1000:.0f} ms",
                f"{c['requests']['completed']}/{c['requests']['sent']} / {s['requests']['completed']}/{s['requests']['sent']}",
                f"{L(c,'tpot')['p90']*1000:.0f} / {L(s,'tpot')['p90']*1000:.0f} ms",
                f"{max(L(c,'lateness')['p99'], L(s,'lateness')['p99'])*1000:.1f} / {max(L(c,'lateness')['max'], L(s,'lateness')['max'])*1000:.0f} ms"]
    else:
        row += ["—"] * 5
    if n is None:
        row += ["—", "—", "—"]
    else:
        tok = n * 256 / p["window"]
        idle = (1 - 0.6) * alone_tok if alone_tok else None
        row += [str(n), f"{tok:.0f}", f"{100*tok/idle:.0f} %" if (idle and not d.endswith("run3")) else "—"]
    la = open(os.path.join(out, d, "loadavg")).read().split()
    row.append(" ".join(la[:3]) + "; " + " ".join(la[3:]))
    print("| " + " | ".join(row) + " |")
EOF
