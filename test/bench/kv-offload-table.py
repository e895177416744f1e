#!/usr/bin/env python3
"""The table of test/bench/kv-offload-local.sh: reads OUT/<mode>/*.records.jsonl
(kn-llmd bench's per-request records), OUT/<mode>.poll.jsonl (ready pods and
the pods' llmd_kv_offload_* counters, polled each second) and OUT/plan.log
(kn-llmd plan's lines for the same workload), and prints markdown.

"After a cold start": the requests sent within 60 s from the first request
that found no ready pod (the run's first request, and the first after each
scale to zero). Their TTFT is shown as the client saw it and less the wait
for the pod: the time until the pod became ready, as polled (1 s grain)."""
import glob, json, os, sys

WINDOW = 60.0


def pct(xs, q):
    if not xs:
        return None
    s = sorted(xs)
    i = max(0, min(len(s) - 1, int(q * len(s) + 0.999999) - 1))
    return s[i]


def fmt(x):
    if x is None:
        return "–"
    return f"{x * 1000:.0f} ms" if x < 1 else f"{x:.2f} s"


def load_records(d):
    recs = []
    for p in glob.glob(os.path.join(d, "*.records.jsonl")):
        with open(p) as f:
            recs += [json.loads(l) for l in f if l.strip()]
    return recs


def load_poll(p):
    rows = []
    if os.path.exists(p):
        with open(p) as f:
            for l in f:
                try:
                    rows.append(json.loads(l))
                except ValueError:
                    pass
    return rows


def stored(out, mode):
    try:
        with open(os.path.join(out, mode + ".store-objects")) as f:
            return int(f.read().strip() or 0)
    except (OSError, ValueError):
        return None


def run_row(out, mode):
    recs = load_records(os.path.join(out, mode))
    poll = load_poll(os.path.join(out, mode + ".poll.jsonl"))
    if not recs:
        return None
    # The bench clock: records' sent is ns since the run's start; the poll
    # rows carry wall time. Align with the bench log's start if present:
    # the first poll row before the first request is at most a second off,
    # so cold starts are found from the poll's ready count alone.
    ok = [r for r in recs if not r.get("error")]
    prompt = sum(r.get("promptTokens", 0) for r in ok)
    cached = sum(r.get("cachedTokens", 0) for r in ok)
    ttft = [r["ttft"] / 1e9 for r in ok]
    # Cold starts: transitions of ready from 0 to > 0 in the poll; each
    # window starts at the first request sent while nothing was ready.
    t0 = poll[0]["t"] if poll else 0
    colds = 0
    zero_spans = []  # (start, end) in poll seconds with ready == 0
    start = None
    for row in poll:
        if row["ready"] == 0 and start is None:
            start = row["t"] - t0
        elif row["ready"] > 0 and start is not None:
            zero_spans.append((start, row["t"] - t0))
            start = None
            colds += 1
    # Bench start relative to poll start: the bench began right after the
    # poller; the offset is small (<1 s) and ignored.
    sent = sorted(ok, key=lambda r: r["sent"])
    after, served = [], []
    for (z0, z1) in zero_spans:
        first = next((r for r in sent if z0 <= r["sent"] / 1e9 < z1), None)
        if first is None:
            continue
        w0 = first["sent"] / 1e9
        for r in sent:
            s = r["sent"] / 1e9
            if w0 <= s < w0 + WINDOW:
                after.append(r["ttft"] / 1e9)
                served.append(max(0.0, r["ttft"] / 1e9 - max(0.0, z1 - s)))
    # Offload counters: the last value each pod reported, summed.
    last = {}
    for row in poll:
        for pod, m in (row.get("metrics") or {}).items():
            last[pod] = m
    tot = {}
    for m in last.values():
        for k, v in m.items():
            tot[k] = tot.get(k, 0) + v
    def ctr(prefix):
        return sum(v for k, v in tot.items() if k.startswith(prefix))
    return {
        "mode": mode, "n": len(recs), "ok": len(ok),
        "p50": pct(ttft, 0.5), "p90": pct(ttft, 0.9),
        "a50": pct(after, 0.5), "a90": pct(after, 0.9), "an": len(after),
        "s50": pct(served, 0.5), "s90": pct(served, 0.9),
        "cached": cached / prompt if prompt else 0, "colds": colds,
        "counters": tot, "stored": stored(out, mode),
    }


def main():
    out = sys.argv[1]
    print("| run | requests (ok) | TTFT p50 / p90 (all) | after each cold start: TTFT p50 / p90 | same, less the wait for the pod | prompt tokens cached | cold starts | objects in storage at the end |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    rows = []
    for mode in ("off", "on-scale-down"):
        r = run_row(out, mode)
        if r is None:
            continue
        rows.append(r)
        print(f"| real time, kv-offload {mode} | {r['n']} ({r['ok']}) | {fmt(r['p50'])} / {fmt(r['p90'])} | "
              f"{fmt(r['a50'])} / {fmt(r['a90'])} ({r['an']} req.) | {fmt(r['s50'])} / {fmt(r['s90'])} | "
              f"{r['cached'] * 100:.1f}% | {r['colds']} | {'–' if r['stored'] is None else r['stored']} |")
    print()
    for r in rows:
        if r["counters"]:
            print(f"Pods' offload counters, {r['mode']} (last value per pod, summed; a pod flushes as it"
                  " leaves, after its last poll: the flush shows as the objects in storage):")
            print()
            for k in sorted(r["counters"]):
                if "flushed" in k or "written" in k:
                    continue
                print(f"    {k} {r['counters'][k]:g}")
            print()
    plan = os.path.join(out, "plan.log")
    if os.path.exists(plan):
        print("kn-llmd plan, the same workload and deployment (its output):")
        print()
        with open(plan) as f:
            for l in f:
                print("    " + l.rstrip())


if __name__ == "__main__":
    main()
