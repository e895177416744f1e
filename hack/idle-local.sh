#!/usr/bin/env bash
# idle-local.sh PODS [WINDOW_S] [REPEATS]: run `kn-llmd local` with PODS
# simulated pods of one Service (the quick start without disaggregation, no
# autoscaling, no traffic), wait until they are ready, then print the
# process's CPU (utime+stime from /proc, all of it: activator, scrapes,
# simulators) per window. docs/benchmarks/datapath.md quotes it. The
# binary is bin/kn-llmd (make build) unless KN_LLMD says otherwise.
set -euo pipefail
pods=${1:?usage: idle-local.sh PODS [WINDOW_S] [REPEATS]}
win=${2:-10}
rep=${3:-3}
bin=${KN_LLMD:-bin/kn-llmd}
dir=$(mktemp -d)
trap 'kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; rm -rf "$dir"' EXIT
sed -e "s/min-scale: \"2\"/min-scale: \"$pods\"/" -e '/disaggregation/d' -e '/prefill-min-scale/d' \
	pkg/local/quickstart.yaml >"$dir/svc.yaml"
port=$((20000 + RANDOM % 20000))
"$bin" local -f "$dir/svc.yaml" --addr "127.0.0.1:$port" --metrics-addr "127.0.0.1:$((port + 1))" \
	--no-autoscale >"$dir/log" 2>&1 &
pid=$!
for _ in $(seq 1 300); do
	[ "$(grep -c 'msg="pod ready"' "$dir/log" || true)" -ge "$pods" ] && break
	sleep 1
done
sleep 5
tck=$(getconf CLK_TCK)
cpu() { awk '{print $14 + $15}' "/proc/$pid/stat"; }
for k in $(seq 1 "$rep"); do
	c0=$(cpu)
	t0=$(date +%s.%N)
	sleep "$win"
	c1=$(cpu)
	t1=$(date +%s.%N)
	awk -v c0="$c0" -v c1="$c1" -v t0="$t0" -v t1="$t1" -v tck="$tck" -v n="$pods" -v k="$k" 'BEGIN {
		c = (c1 - c0) / tck; w = t1 - t0
		printf "window %d: %.2f s CPU in %.1f s = %.1f %% of a core, %.3f %% per pod\n", k, c, w, 100 * c / w, 100 * c / w / n }'
done
