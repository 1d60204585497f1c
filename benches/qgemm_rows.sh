#!/usr/bin/env bash
# Time per row of the batched quantized products (benches/benches/qgemm.rs) against the 1-row product of the
# same layout, from criterion's estimates: `cargo bench -p enigma-benches --bench qgemm` first.
# Prints: group, rows, µs per call, µs per row, (time of the call) / (time of 1 row).
set -euo pipefail
cd "$(dirname "$0")/.."
python3 - <<'PY'
import json, glob, os, re
root = "target/criterion"
rows = {}
for est in glob.glob(f"{root}/qgemm_*/new/estimates.json") + glob.glob(f"{root}/qgemm_*/*/new/estimates.json"):
    bench = json.load(open(os.path.join(os.path.dirname(est), "benchmark.json")))
    gid, fid = bench["group_id"], bench["function_id"]
    t = int(fid.rsplit("/", 1)[1])
    rows.setdefault(gid, {})[t] = json.load(open(est))["median"]["point_estimate"] / 1e3
print(f"{'group':48} {'rows':>4} {'us/call':>9} {'us/row':>8} {'call/1row':>9}")
for gid in sorted(rows):
    one = rows[gid].get(1)
    for t in sorted(rows[gid]):
        us = rows[gid][t]
        ratio = f"{us / one:9.2f}" if one else "        -"
        print(f"{gid:48} {t:>4} {us:9.1f} {us / t:8.2f} {ratio}")
PY
