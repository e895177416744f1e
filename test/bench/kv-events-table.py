#!/usr/bin/env python3
"""Markdown table of test/bench/kv-events-local.sh runs: kv-events-table.py DIR."""
import json, os, re, sys

root = sys.argv[1]
print("| run | completed | cached / prompt tokens (share) | TTFT p50 / p90 ms | predicted / observed cached tokens | pods on the approximate index | batches received / rejected | blocks stored / unmatched / rejected | tokenizer |")
print("|---|---|---|---|---|---|---|---|---|")
for name in sorted(os.listdir(root)):
    d = os.path.join(root, name)
    if not os.path.exists(os.path.join(d, "summary.json")):
        continue
    r = json.load(open(os.path.join(d, "summary.json")))["runs"][0]
    st = json.load(open(os.path.join(d, "stats.json")))[0]
    m, kinds = {}, set()
    for line in open(os.path.join(d, "kvmetrics.txt")):
        mm = re.match(r"(\w+)\{(.*)\} (\S+)", line)
        if not mm:
            continue
        lab = dict(re.findall(r'(\w+)="([^"]*)"', mm.group(2)))
        if mm.group(1) == "llmd_activator_tokenizer":
            kinds.add(lab["kind"])
        k = (mm.group(1), lab.get("outcome"))
        m[k] = m.get(k, 0) + float(mm.group(3))
    b = lambda o: int(m.get(("llmd_activator_kv_event_batches_total", o), 0))
    bl = lambda o: int(m.get(("llmd_activator_kv_event_blocks_total", o), 0))
    t, l = r["tokens"], r["latencySeconds"]["ttft"]
    kv = st.get("kvEvents") or {}
    pods = st.get("pods", 4)
    fb = f"{len(kv.get('podsFallback') or [])}/{pods}" if kv else "—"
    ev = f"{b('received')} / {b('rejected')}" if kv else "—"
    evb = f"{bl('stored')} / {bl('unmatched')} / {bl('rejected')}" if kv else "—"
    print(f"| {name} | {r['requests']['completed']}/{r['requests']['total']} | {t['cached']:,} / {t['prompt']:,} ({100*t['cacheHitRate']:.1f} %) "
          f"| {1000*l['p50']:.1f} / {1000*l['p90']:.1f} | {st['predictedCachedTokens']:,} / {st['cachedTokens']:,} | {fb} | {ev} | {evb} | {', '.join(sorted(kinds)) or '—'} |")
