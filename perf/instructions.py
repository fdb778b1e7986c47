#!/usr/bin/env python3
"""Instructions per operation under valgrind's callgrind: the repeatable
counterpart of micro.py's wall-clock figures on a noisy shared machine.

One interpreter per loop runs under callgrind. For each benchmark of micro.py
it runs N ops once to warm up (first-use costs: imports, specialisation,
allocator arenas), then N and 2N ops; (I(2N) - I(N)) / N is the per-op cost
with everything per run (loop creation, gc.collect, close) cancelled out.
The runs are bracketed by calls to os.sched_yield(), and callgrind dumps its
counters before each (--dump-before=sched_yield), so the interpreter's
start-up is paid once per loop instead of once per measurement.

    python perf/instructions.py [--only NAME] [--n N] [--loops a,b,c]

perf/bench.py runs the same measurement as its "instructions" part.
"""

import argparse
import glob
import os
import re
import shutil
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import micro  # noqa: E402  (the benchmarks themselves)

# Small, because the warm-up makes the per-op figure stable at small N and
# asyncio's loop costs tens of thousands of instructions per op under a
# ~50x slowdown; 5,000 keeps all three loops at about 1.5 minutes.
DEFAULT_N = 5_000
QUICK_N = 200
# Under valgrind the thread hand-offs of call_soon_threadsafe cost seconds of
# wall time whatever N is; --quick only has to show that the part runs.
QUICK_BENCHES = ("call_soon", "tasks")
MARKER = "sched_yield"  # nothing in CPython, libuv or the loops calls it on these paths
RUNS_PER_BENCH = 3      # warm-up N, N, 2N


def child(plan):
    """Runs inside valgrind: for each (loop, bench, n) a warm-up, N and 2N,
    each preceded by a marker."""
    factories, skipped = micro.load_loops(sorted({loop for loop, _, _ in plan}))
    if skipped:
        raise SystemExit("; ".join(f"{l}: {why}" for l, why in skipped.items()))
    for loop_name, bench, n in plan:
        for ops in (n, n, 2 * n):
            os.sched_yield()
            micro.run_once(factories[loop_name], micro.BENCHMARKS[bench], ops, keep_gc=False)
    os.sched_yield()


def available():
    """None when callgrind can run, else why not."""
    if not getattr(sys, "_is_gil_enabled", lambda: True)():
        # Its locks and allocator call sched_yield, the marker used here.
        return "free-threaded CPython calls sched_yield itself (this benchmark's marker)"
    return None if shutil.which("valgrind") else "valgrind is not installed (apt-get install valgrind)"


def measure(plan):
    """{(loop, bench): instructions per op} for plan = [(loop, bench, n)],
    all in one interpreter: one loop per call keeps a crash in one loop from
    costing the others their figures, several per call save start-ups."""
    spec = ",".join(f"{l}:{b}:{n}" for l, b, n in plan)
    with tempfile.TemporaryDirectory(prefix="callgrind-") as tmp:
        out_file = os.path.join(tmp, "cg.out")
        cmd = ["valgrind", "--tool=callgrind", f"--dump-before={MARKER}", f"--callgrind-out-file={out_file}",
               sys.executable, os.path.abspath(__file__), "--child", spec]
        res = subprocess.run(cmd, capture_output=True, text=True)
        if res.returncode != 0:
            lines = [l for l in res.stderr.splitlines() if l.strip() and not l.startswith("==")]
            raise RuntimeError(lines[-1] if lines else res.stderr[-500:])
        # Dump k (cg.out.k) holds what ran between marker k-1 and marker k;
        # dump 1 is the start-up, the final cg.out the exit.
        dumps = sorted(glob.glob(out_file + ".*"), key=lambda p: int(p.rsplit(".", 1)[1]))
        counts = []
        for path in dumps:
            with open(path) as f:
                m = re.search(r"^summary:\s+(\d+)", f.read(), re.M)
            counts.append(int(m.group(1)))
    expected = 1 + RUNS_PER_BENCH * len(plan)
    if len(counts) != expected:
        # Some code called the marker function on its own: the intervals
        # no longer line up with the runs, so no number is better than a
        # wrong one.
        raise RuntimeError(f"expected {expected} callgrind dumps, got {len(counts)}")
    per_op = {}
    for i, (loop_name, bench, n) in enumerate(plan):
        _, once, twice = counts[1 + RUNS_PER_BENCH * i: 1 + RUNS_PER_BENCH * (i + 1)]
        per_op[(loop_name, bench)] = (twice - once) / n
    return per_op


def part(cfg, loops, skipped_loops, add_step):
    """perf/bench.py's instructions part: one callgrind run per loop, or,
    with --quick, one run for all loops at a tiny N and two benchmarks (a
    start-up under valgrind costs seconds, the benchmarks at that N almost
    nothing)."""
    n = QUICK_N if cfg.quick else DEFAULT_N
    benches = QUICK_BENCHES if cfg.quick else tuple(micro.BENCHMARKS)
    result = {
        "title": "Instructions per operation (callgrind)",
        "unit": "instr/op",
        "higher_is_better": False,
        "description": (f"(I(2N) - I(N)) / N after a warm-up run, N = {n:,}, "
                        f"one interpreter per loop{' (one for all with --quick)' if cfg.quick else ''}"),
        "results": {b: {} for b in benches},
    }
    why = available()
    if why:
        result.update(status="skipped", reason=why)
        return result
    result["status"] = "ran"
    runnable = []
    for loop_name in loops:
        if loop_name in skipped_loops:
            for row in result["results"].values():
                row[loop_name] = {"skipped": skipped_loops[loop_name]}
        else:
            runnable.append(loop_name)
    groups = [runnable] if cfg.quick else [[l] for l in runnable]
    for group in groups:
        def step(group=group):
            try:
                per_op = measure([(l, b, n) for l in group for b in benches])
            except Exception as e:
                for row in result["results"].values():
                    row.update({l: {"error": f"{type(e).__name__}: {e}"} for l in group})
                return None
            for (l, b), v in per_op.items():
                result["results"][b][l] = {"value": v}
            return None

        # Start-up under valgrind plus about 20 s per loop at the default N.
        add_step(f"instructions {','.join(group)}", 6 + (1 if cfg.quick else 20) * len(group), step)
    return result


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    p.add_argument("--child", metavar="PLAN", help=argparse.SUPPRESS)
    p.add_argument("--only", action="append", choices=list(micro.BENCHMARKS))
    p.add_argument("--n", type=int, default=DEFAULT_N, help=f"ops in the smaller run (default {DEFAULT_N:,})")
    p.add_argument("--loops", default=",".join(micro.LOOP_MODULES))
    args = p.parse_args()
    if args.child:
        child([(l, b, int(n)) for l, b, n in (item.split(":") for item in args.child.split(","))])
        return 0
    why = available()
    if why:
        print(f"skipped: {why}")
        return 1
    loops = [s for s in args.loops.split(",") if s]
    benches = [b for b in micro.BENCHMARKS if not args.only or b in args.only]
    per_op = {}
    for loop_name in loops:
        print(f"[instructions] {loop_name} ...", file=sys.stderr, flush=True)
        try:
            per_op.update(measure([(loop_name, b, args.n) for b in benches]))
        except Exception as e:  # a loop that is not installed, say
            print(f"  skipped: {e}", file=sys.stderr)
    print("| benchmark | " + " | ".join(f"{l} instr/op" for l in loops) + " | uvloop/shardloop |")
    print("|---|" + "---:|" * (len(loops) + 1))
    for bench in benches:
        row = {l: per_op[(l, bench)] for l in loops if (l, bench) in per_op}
        cells = [f"{row[l]:,.0f}" if l in row else "—" for l in loops]
        ratio = (f"{row['uvloop'] / row['shardloop']:.2f}x"
                 if "uvloop" in row and "shardloop" in row else "—")
        print(f"| {bench} | " + " | ".join(cells) + f" | {ratio} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
