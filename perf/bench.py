#!/usr/bin/env python3
"""shardloop vs uvloop vs asyncio, every benchmark in one run: micro-
benchmarks, instructions per op (callgrind), echo servers (plain and TLS)
under a C++ load generator, HTTP servers under wrk, the sharded echo server
and cross-shard messaging, the native C++ servers against C, Go and Node.js.
Writes Markdown tables, PNG plots and the raw JSON (perf/results/ by
default); progress goes to stderr.

    python perf/bench.py                     # full run into perf/results/ (~10 min)
    python perf/bench.py --quick --json x.json   # smoke test: seconds per part
    python perf/bench.py --only echo --duration 5 --out /tmp/r

perf/compare.py A.json B.json compares two runs.
"""

import argparse
import importlib
import json
import os
import shutil
import subprocess
import sys
import time
from types import SimpleNamespace

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import echo_bench  # noqa: E402
import http_bench  # noqa: E402
import instructions  # noqa: E402
import micro  # noqa: E402
import report  # noqa: E402
import shards_bench  # noqa: E402
import tls_bench  # noqa: E402
from native import compare as native_compare  # noqa: E402

RESULTS_DIR = os.path.join(HERE, "results")
SCHEMA = 1

# name -> module with part(cfg, loops, skipped_loops, add_step), in run order.
PARTS = {
    "micro": micro,
    "instructions": instructions,
    "echo": echo_bench,
    "tls": tls_bench,
    "http": http_bench,
    "shards": shards_bench,
    "native": native_compare,
}
# Parts that need shardloop features still to come, name -> why (with the
# issue that brings it); each turns into a real part when its issue lands.
PENDING = {}


def log(msg):
    print(msg, file=sys.stderr, flush=True)


def fmt_duration(s):
    s = int(round(s))
    return f"{s // 60}m{s % 60:02d}s" if s >= 60 else f"{s}s"


class Steps:
    """The run's plan: every step registered up front, so that progress can
    say how much is left. A part's estimates are rescaled by how long its
    measured steps really took against their own estimates; skipped cells
    (a loop that cannot serve is done in a fraction of a second) say nothing
    about the rest and are left out of that."""

    def __init__(self):
        self.steps = []
        self.elapsed = {}    # part -> seconds all its finished steps took
        self.measured = {}   # part -> seconds its measured steps took
        self.estimated = {}  # part -> what those measured steps were estimated at

    def adder(self, part):
        """The add_step callback handed to one part."""
        return lambda label, estimate, fn: self.steps.append((part, label, estimate, fn))

    def left(self, i):
        def scale(part):
            est = self.estimated.get(part, 0.0)
            return self.measured[part] / est if est > 0.5 else 1.0
        return sum(e * scale(part) for part, _, e, _ in self.steps[i:])

    def run(self):
        total = len(self.steps)
        for i, (part, label, estimate, fn) in enumerate(self.steps):
            log(f"[{i + 1}/{total}] {label} ... (~{fmt_duration(self.left(i))} left)")
            t0 = time.monotonic()
            cell = fn()
            took = time.monotonic() - t0
            self.elapsed[part] = self.elapsed.get(part, 0.0) + took
            if not (isinstance(cell, dict) and ("skipped" in cell or "error" in cell)):
                self.measured[part] = self.measured.get(part, 0.0) + took
                self.estimated[part] = self.estimated.get(part, 0.0) + estimate
            if isinstance(cell, dict):
                if "value" in cell:
                    log(f"    {report.fmt_value(cell['value'])}")
                elif "skipped" in cell or "error" in cell:
                    log(f"    {'skipped' if 'skipped' in cell else 'ERROR'}: "
                        f"{cell.get('skipped') or cell.get('error')}")


def module_version(name):
    try:
        mod = importlib.import_module(name)
    except Exception:
        return "not installed"
    return str(getattr(mod, "__version__", "unknown"))


def tool_version(argv):
    if not shutil.which(argv[0]):
        return "not installed"
    res = subprocess.run(argv, capture_output=True, text=True)
    lines = (res.stdout or res.stderr).strip().splitlines()
    return lines[0] if lines else "unknown"


def libuv_versions():
    out = {}
    try:
        from shardloop import _core
        out["libuv (shardloop)"] = _core.libuv_version()
    except Exception as e:
        out["libuv (shardloop)"] = f"unavailable: {e}"
    try:
        import uvloop.loop
        v = uvloop.loop.libuv_get_version()  # uv_version(): major << 16 | minor << 8 | patch
        out["libuv (uvloop, bundled)"] = f"{v >> 16}.{(v >> 8) & 0xff}.{v & 0xff}"
    except Exception as e:
        out["libuv (uvloop, bundled)"] = f"unavailable: {e}"
    return out


def environment():
    env = micro.environment()
    for name in ("shardloop", "uvloop"):
        env[name] = module_version(name)
    env.update(libuv_versions())
    env["httptools"] = module_version("httptools")
    env["uvicorn"] = module_version("uvicorn")
    env["wrk"] = tool_version(["wrk", "-v"])
    env["valgrind"] = tool_version(["valgrind", "--version"])
    env["affinity"] = ",".join(map(str, sorted(os.sched_getaffinity(0))))
    # Other work on the machine competes with the pinned server and load
    # generator; the load average says how much there was at the start.
    env["load average (1/5/15 min) at start"] = " / ".join(f"{x:.2f}" for x in os.getloadavg())
    return env


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__.split("\n\n", 1)[1])
    p.add_argument("--quick", action="store_true",
                   help="seconds per part; checks the harness, measures nothing (writes no results unless --out)")
    p.add_argument("--only", action="append", choices=list(PARTS) + list(PENDING), metavar="NAME",
                   help="run only this part (repeatable): " + ", ".join(list(PARTS) + list(PENDING)))
    p.add_argument("--duration", type=float, help="measured seconds per echo/HTTP cell (default 10, 0.3 with --quick)")
    p.add_argument("--warmup", type=float, help="seconds of load before measuring (default 1, 0.2 with --quick)")
    p.add_argument("--connections", type=int, default=10, help="client connections per echo/HTTP cell (default 10)")
    p.add_argument("--repeat", type=int, help="micro repeats, best of (default 5, 1 with --quick)")
    p.add_argument("--loops", default=",".join(micro.LOOP_MODULES),
                   help="comma-separated subset of " + ",".join(micro.LOOP_MODULES))
    p.add_argument("--json", metavar="PATH", help="also write the raw results here")
    p.add_argument("--out", metavar="DIR",
                   help="write latest.md, latest.json and the plots here "
                        "(default perf/results/ for a full run without --quick/--only)")
    args = p.parse_args(argv)
    loops = [s.strip() for s in args.loops.split(",") if s.strip()]
    bad = [s for s in loops if s not in micro.LOOP_MODULES]
    if bad or not loops:
        p.error(f"--loops: unknown loop(s) {bad}; choose from {','.join(micro.LOOP_MODULES)}")
    cfg = SimpleNamespace(
        quick=args.quick,
        loops=loops,
        duration=args.duration if args.duration is not None else (0.3 if args.quick else 10.0),
        warmup=args.warmup if args.warmup is not None else (0.2 if args.quick else 1.0),
        connections=args.connections,
        repeat=args.repeat or (1 if args.quick else 5),
    )
    if cfg.duration <= 0 or cfg.warmup < 0 or cfg.connections < 1 or cfg.repeat < 1:
        p.error("--duration, --connections and --repeat must be positive, --warmup not negative")
    out = args.out
    if out is None and not args.quick and not args.only:
        out = RESULTS_DIR
    return args, cfg, out


def main(argv=None):
    args, cfg, out_dir = parse_args(argv)
    selected = args.only or list(PARTS) + list(PENDING)
    started = time.monotonic()
    env = environment()
    # A loop that does not even import is skipped everywhere, with the reason.
    _, skipped_loops = micro.load_loops(cfg.loops)
    for loop, why in skipped_loops.items():
        log(f"skipped {loop} everywhere: {why}")

    steps = Steps()
    parts = {name: mod.part(cfg, cfg.loops, skipped_loops, steps.adder(name))
             for name, mod in PARTS.items() if name in selected}
    pending = {name: why for name, why in PENDING.items() if name in selected}
    for name, part in parts.items():
        if part.get("status") == "skipped":
            log(f"{name}: skipped: {part['reason']}")
    for why in pending.values():
        log(f"skipped: {why}")
    steps.run()
    for name, seconds in steps.elapsed.items():
        parts[name]["elapsed_s"] = round(seconds, 1)

    doc = {
        "schema": SCHEMA,
        "environment": env,
        "settings": {"quick": cfg.quick, "loops": cfg.loops, "duration_s": cfg.duration, "warmup_s": cfg.warmup,
                     "connections": cfg.connections, "micro_repeat": cfg.repeat, "parts": selected},
        "parts": parts,
        "pending": pending,
        "elapsed_s": round(time.monotonic() - started, 1),
    }
    if out_dir:
        os.makedirs(out_dir, exist_ok=True)
        why = report.plots(doc, out_dir)
        if why:
            log(f"plots skipped: {why}")
    md = report.markdown(doc)
    print(md)
    paths = [args.json] if args.json else []
    if out_dir:
        paths.append(os.path.join(out_dir, "latest.json"))
        with open(os.path.join(out_dir, "latest.md"), "w") as f:
            f.write(md)
    for path in paths:
        with open(path, "w") as f:
            json.dump(doc, f, indent=1)
            f.write("\n")
    log(f"done in {fmt_duration(doc['elapsed_s'])}" + (f"; results in {out_dir}" if out_dir else ""))
    tables = [t for p in parts.values() for t in (p, p.get("cross_shard", {}))]
    errors = [(b, l) for t in tables for b, row in t.get("results", {}).items()
              for l, c in row.items() if "error" in c]
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
