#!/usr/bin/env python3
"""Instructions per operation under valgrind's callgrind: the repeatable
counterpart of micro.py's wall-clock figures on a noisy shared machine.

Each benchmark of micro.py runs once per loop at N and at 2N ops in a fresh
interpreter under callgrind; (I(2N) - I(N)) / N is the per-op cost with the
interpreter's start-up and imports cancelled out.

    python perf/instructions.py [--only NAME] [--n N] [--loops a,b,c]
"""

import argparse
import os
import re
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import micro  # noqa: E402  (the benchmarks themselves)

DEFAULT_N = {"call_soon": 20_000, "call_later": 20_000, "call_soon_threadsafe": 20_000, "tasks": 10_000}


def child(loop_name, bench, n):
    factories, skipped = micro.load_loops([loop_name])
    if skipped:
        raise SystemExit(f"{loop_name}: {skipped[loop_name]}")
    micro.run_once(factories[loop_name], micro.BENCHMARKS[bench], n, keep_gc=False)


def count(loop_name, bench, n):
    cmd = ["valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null",
           sys.executable, os.path.abspath(__file__), "--child", loop_name, bench, str(n)]
    out = subprocess.run(cmd, capture_output=True, text=True)
    if out.returncode != 0:
        raise RuntimeError(out.stderr[-2000:])
    m = re.search(r"I\s+refs:\s+([\d,]+)", out.stderr)
    return int(m.group(1).replace(",", ""))


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    p.add_argument("--child", nargs=3, metavar=("LOOP", "BENCH", "N"), help=argparse.SUPPRESS)
    p.add_argument("--only", action="append", choices=list(micro.BENCHMARKS))
    p.add_argument("--n", type=int, help="ops in the smaller run (default per benchmark)")
    p.add_argument("--loops", default=",".join(micro.LOOP_MODULES))
    args = p.parse_args()
    if args.child:
        loop_name, bench, n = args.child
        child(loop_name, bench, int(n))
        return 0
    loops = [s for s in args.loops.split(",") if s]
    benches = [b for b in micro.BENCHMARKS if not args.only or b in args.only]
    print("| benchmark | " + " | ".join(f"{l} instr/op" for l in loops) + " | uvloop/shardloop |")
    print("|---|" + "---:|" * (len(loops) + 1))
    for bench in benches:
        n = args.n or DEFAULT_N[bench]
        per_op = {}
        for loop_name in loops:
            print(f"[{bench}] {loop_name} ...", file=sys.stderr, flush=True)
            try:
                per_op[loop_name] = (count(loop_name, bench, 2 * n) - count(loop_name, bench, n)) / n
            except Exception as e:  # a loop that is not installed, say
                print(f"  skipped: {str(e).strip().splitlines()[-1]}", file=sys.stderr)
        cells = [f"{per_op[l]:,.0f}" if l in per_op else "—" for l in loops]
        ratio = (f"{per_op['uvloop'] / per_op['shardloop']:.2f}x"
                 if "uvloop" in per_op and "shardloop" in per_op else "—")
        print(f"| {bench} | " + " | ".join(cells) + f" | {ratio} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
