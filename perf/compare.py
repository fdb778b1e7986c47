#!/usr/bin/env python3
"""Per-benchmark changes between two perf/bench.py runs:

    python perf/compare.py old.json new.json [--loop shardloop] [--min-change 5]

One row per (part, benchmark, loop) measured in both runs; "change" is
signed so that + is always better (more req/s or ops/s, fewer instructions),
whatever the unit. Cells skipped or failing in either run are listed below
the table instead of compared.
"""

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from report import fmt_value  # noqa: E402


def load(path):
    with open(path) as f:
        doc = json.load(f)
    if "parts" not in doc:
        sys.exit(f"{path}: not a perf/bench.py result (no 'parts')")
    return doc


def cells(doc):
    """{(part, bench, loop): cell} with the part's unit and direction."""
    out = {}
    for name, part in doc["parts"].items():
        for bench, row in part.get("results", {}).items():
            for loop, cell in row.items():
                out[(name, bench, loop)] = (cell, part["unit"], part["higher_is_better"])
    return out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("old")
    p.add_argument("new")
    p.add_argument("--loop", action="append", help="only this loop (repeatable)")
    p.add_argument("--min-change", type=float, default=0.0, metavar="PCT",
                   help="hide rows whose change is smaller than this many percent")
    args = p.parse_args(argv)
    old, new = load(args.old), load(args.new)
    a, b = cells(old), cells(new)
    print(f"old: {args.old} ({old['environment'].get('date')}, shardloop {old['environment'].get('shardloop')})")
    print(f"new: {args.new} ({new['environment'].get('date')}, shardloop {new['environment'].get('shardloop')})\n")
    rows, missing = [], []
    for key in a.keys() | b.keys():
        part, bench, loop = key
        if args.loop and loop not in args.loop:
            continue
        (ca, unit, hib), (cb, _, _) = a.get(key, ({}, "", True)), b.get(key, ({}, "", True))
        if "value" not in ca or "value" not in cb or not ca["value"] or not cb["value"]:
            state = lambda c: "value" if "value" in c else next((k for k in ("skipped", "error") if k in c), "absent")  # noqa: E731
            missing.append(f"- {part} / {bench} / {loop}: old {state(ca)}, new {state(cb)}")
            continue
        ratio = cb["value"] / ca["value"] if hib else ca["value"] / cb["value"]
        change = (ratio - 1) * 100
        if abs(change) >= args.min_change:
            rows.append((part, bench, loop, unit, ca["value"], cb["value"], change))
    order = {name: i for i, name in enumerate(list(new["parts"]) + list(old["parts"]))}
    rows.sort(key=lambda r: (order.get(r[0], 99), r[1], r[2]))
    print("| part | benchmark | loop | unit | old | new | change |")
    print("|---|---|---|---|---:|---:|---:|")
    for part, bench, loop, unit, va, vb, change in rows:
        print(f"| {part} | {bench} | {loop} | {unit} | {fmt_value(va)} | {fmt_value(vb)} | {change:+.1f}% |")
    if missing:
        print("\nnot compared:")
        print("\n".join(sorted(missing)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
