#!/usr/bin/env bash
# KV offload across scale to zero in real time (issue #12): the plan
# measurement of docs/benchmarks/kv-offload-workloads.md again on
# `kn-llmd local`, simulated pods streaming at the modelled speed, scaled
# down to one small machine. The same workload runs with llm-d.ai/kv-offload
# off and on-scale-down (the sample config/samples/local/kv-offload.yaml, one
# store directory per run), then through `kn-llmd plan` with the same
# deployment, so the two instruments' figures sit side by side.
#
#   test/bench/kv-offload-local.sh [OUT]     (default /tmp/kv-offload-local)
#
# Workload: WORKLOAD (default kv-offload-conversations.yaml beside this
# script: 8 assistants with 6,000-token system prompts, Poisson 0.5 req/s,
# 75 s idle after every 90 s of arrivals, 4 min 30 s of arrivals). The
# revision starts at zero, scales to zero in each gap (grace GRACE after its
# last request) and cold-starts (STARTUP) when the next request comes.
# Knobs (environment): WORKLOAD, STARTUP (20s), GRACE (15s), MAXSCALE (2),
# PREFETCH (the sample's 4Gi), KN_LLMD (a built binary; else it is built),
# NICE (10).
#
# Writes OUT/results.md: per run, TTFT p50/p90 of all requests and of the
# requests sent within 60 s after each cold start (with and without the
# wait for the pod), the share of prompt tokens served from cache
# (usage.prompt_tokens_details.cached_tokens), the cold starts counted from
# /status.json, and the pods' llmd_kv_offload_* counters summed over the run.
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
OUT="${1:-/tmp/kv-offload-local}"
WORKLOAD="${WORKLOAD:-$root/test/bench/kv-offload-conversations.yaml}"
STARTUP="${STARTUP:-20s}"
GRACE="${GRACE:-15s}"
MAXSCALE="${MAXSCALE:-2}"
PREFETCH="${PREFETCH:-4Gi}"
NICE="${NICE:-10}"
API=127.0.0.1:18389
METRICS=127.0.0.1:19389
mkdir -p "$OUT"
OUT="$(cd "$OUT" && pwd)"
tmp="$(mktemp -d)"
pid=""
poller=""
cleanup() {
	if [ -n "$poller" ]; then kill "$poller" 2>/dev/null || true; fi
	if [ -n "$pid" ]; then kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; fi
	rm -rf "$tmp"
}
trap cleanup EXIT
bin="${KN_LLMD:-}"
if [ -z "$bin" ]; then
	bin="$tmp/kn-llmd"
	(cd "$root" && nice -n "$NICE" go build -o "$bin" ./cmd/kn-llmd)
fi

svc() { # mode: the sample with its offload mode; "off" drops the
	# annotations that only mean something with offload on.
	if [ "$1" = off ]; then
		sed -e 's|llm-d.ai/kv-offload: on-scale-down|llm-d.ai/kv-offload: "off"|' \
			-e '/llm-d.ai\/kv-offload-max-bytes/d' -e '/llm-d.ai\/kv-offload-deadline/d' \
			-e '/llm-d.ai\/kv-prefetch-bytes/d' "$root/config/samples/local/kv-offload.yaml"
	else
		sed -e "s|llm-d.ai/kv-offload: on-scale-down|llm-d.ai/kv-offload: $1|" \
			-e "s|llm-d.ai/kv-prefetch-bytes: 4Gi|llm-d.ai/kv-prefetch-bytes: $PREFETCH|" \
			"$root/config/samples/local/kv-offload.yaml"
	fi | sed -e "s|autoscaling.knative.dev/min-scale: \"0\"|autoscaling.knative.dev/min-scale: \"0\"\n        autoscaling.knative.dev/max-scale: \"$MAXSCALE\"|"
}

# poll records the ready pods every second (cold starts) and each pod's
# llmd_kv_offload_* counters while it lives (a pod's /metrics goes with it).
poll() { # out
	exec python3 - "http://$METRICS" "$1" <<'PY'
import json, sys, time, urllib.request
base, out = sys.argv[1], sys.argv[2]
def get(url):
    with urllib.request.urlopen(url, timeout=2) as r:
        return r.read().decode()
with open(out, "a") as f:
    while True:
        try:
            s = json.loads(get(base + "/status.json"))
            svc = s["services"][0]
            ready = sum(r.get("ready", 0) for r in svc["roles"])
            metrics = {}
            for r in svc["roles"]:
                for p in r.get("pods") or []:
                    u = p.get("metricsURL") or ""
                    if not u:
                        continue
                    if u.startswith("/"):
                        u = base + u
                    try:
                        text = get(u)
                    except Exception:
                        continue
                    m = {}
                    for line in text.splitlines():
                        if line.startswith("llmd_kv_offload_"):
                            k, _, v = line.rpartition(" ")
                            try:
                                m[k] = float(v)
                            except ValueError:
                                pass
                    metrics[p["name"]] = m
            f.write(json.dumps({"t": time.time(), "ready": ready, "metrics": metrics}) + "\n")
            f.flush()
        except Exception:
            pass
        time.sleep(1)
PY
}

for mode in off on-scale-down; do
	svc "$mode" >"$tmp/svc.yaml"
	rm -rf "$tmp/store"
	echo "== $mode: $(date -u +%H:%M:%S) load $(cut -d' ' -f1-3 /proc/loadavg)"
	nice -n "$NICE" "$bin" local -f "$tmp/svc.yaml" --addr "$API" --metrics-addr "$METRICS" \
		--kv-offload-dir "$tmp/store" --sim-startup-delay "$STARTUP" \
		--scale-to-zero-grace-period "$GRACE" >"$OUT/$mode.local.log" 2>&1 &
	pid=$!
	for _ in $(seq 100); do curl -sf "http://$METRICS/status.json" >/dev/null && break; sleep 0.2; done
	: >"$OUT/$mode.poll.jsonl"
	poll "$OUT/$mode.poll.jsonl" &
	poller=$!
	nice -n "$NICE" "$bin" bench --url "http://$API" --header "Host: llm-kv-offload.default.localhost" \
		--model meta-llama/Llama-3.1-8B-Instruct --workload "$WORKLOAD" --save-records --name "$mode" --out "$OUT/$mode" >"$OUT/$mode.bench.log" 2>&1
	kill "$poller" 2>/dev/null || true
	wait "$poller" 2>/dev/null || true
	poller=""
	kill "$pid" 2>/dev/null || true
	wait "$pid" 2>/dev/null || true
	pid=""
	# What storage holds at the end (objects are shrunk by
	# --kv-payload-scale; the block count is the model's).
	{ find "$tmp/store" -type f 2>/dev/null || true; } | wc -l >"$OUT/$mode.store-objects"
done

echo "== plan: $(date -u +%H:%M:%S)"
nice -n "$NICE" "$bin" plan --workload "$WORKLOAD" --autoscaler slo --min-engines 0 --engines "$MAXSCALE" \
	--startup-delay "$STARTUP" --scale-to-zero-grace "$GRACE" --routing default --kv-offload off,on-scale-down \
	--kv-offload-max-bytes 64Gi --kv-offload-deadline 30s --kv-prefetch-bytes "$PREFETCH" \
	--out "$OUT/plan" >"$OUT/plan.log" 2>&1 || echo "plan failed: see $OUT/plan.log"

python3 "$root/test/bench/kv-offload-table.py" "$OUT" >"$OUT/results.md"
cat "$OUT/results.md"
