#!/usr/bin/env python3
"""websockets' own asyncio test suite on asyncio's loop and on shardloop: a
manual run (its sdist ships no tests, and CI cannot fetch the repository).

    git clone https://github.com/python-websockets/websockets /tmp/ws
    .venv/bin/python tests/upstream/websockets_suite.py /tmp/ws [--runs 5] [--loop asyncio,shardloop]
        [--module tests.asyncio.test_connection --module tests.asyncio.test_client]

It runs `python -m unittest` on the checkout's tests/asyncio as websockets'
Makefile does (PYTHONASYNCIODEBUG=1, PYTHONPATH=src, PYTHONWARNINGS=default),
with this interpreter; for shardloop a sitecustomize installs
shardloop.EventLoopPolicy(), so unittest's IsolatedAsyncioTestCase makes
shardloop loops. The sitecustomize records the type of every loop the
policy made, and a run whose loops are not the intended ones fails. It
prints, per loop and run, the tests run, failures, errors and skips, and
how often each test failed. Note websockets' warning: its timeouts are
scaled for a fast idle laptop (1 ms units on a checkout), so a loaded
machine fails some timing tests on any loop.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import re
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

SITECUSTOMIZE = textwrap.dedent('''
    import asyncio, atexit, json, os
    _made = []
    if os.environ.get("WS_SUITE_LOOP") == "shardloop":
        import shardloop
        base = shardloop.EventLoopPolicy
    else:
        base = asyncio.DefaultEventLoopPolicy

    class _Recording(base):
        def new_event_loop(self):
            loop = super().new_event_loop()
            _made.append(f"{type(loop).__module__}.{type(loop).__qualname__}")
            return loop

    asyncio.set_event_loop_policy(_Recording())

    @atexit.register
    def _report():
        with open(os.environ["WS_SUITE_REPORT"], "w") as out:
            json.dump(sorted(set(_made)) + [len(_made)], out)
''')

LOOP_TYPES = {"asyncio": "asyncio.unix_events._UnixSelectorEventLoop", "shardloop": "shardloop._loop.Loop"}


def run_once(src: Path, loop: str, site: Path, report: Path, modules: list[str], timeout: float) -> dict:
    env = dict(os.environ, PYTHONASYNCIODEBUG="1", PYTHONWARNINGS="default", PYTHON_CONTEXT_AWARE_WARNINGS="0",
               PYTHONPATH=os.pathsep.join([str(site), str(src / "src")]), WS_SUITE_LOOP=loop,
               WS_SUITE_REPORT=str(report))
    report.unlink(missing_ok=True)
    start = time.monotonic()
    what = modules or ["discover", "-t", ".", "-s", "tests/asyncio"]
    try:
        done = subprocess.run([sys.executable, "-m", "unittest", *what], cwd=src, env=env, capture_output=True,
                              text=True, timeout=timeout)
        out = done.stderr + done.stdout
    except subprocess.TimeoutExpired as exc:
        # Seen on asyncio's loop too: test_client's reconnection tests can
        # spin forever on a loaded machine. Reported as a hung run.
        out = f"{exc.stderr or ''}{exc.stdout or ''}\n[websockets_suite] killed after {timeout} s\n"
        if isinstance(out, bytes):
            out = out.decode(errors="replace")
    ran = re.search(r"^Ran (\d+) tests?", out, re.M)
    skipped = re.search(r"skipped=(\d+)", out)
    failed = re.findall(r"^(FAIL|ERROR): (\S+) \(([^)]+)\)", out, re.M)
    types = json.loads(report.read_text()) if report.exists() else [0]
    return {"ran": int(ran.group(1)) if ran else 0, "skipped": int(skipped.group(1)) if skipped else 0,
            "failures": [f"{cls}.{name}" if not cls.endswith(name) else cls for kind, name, cls in failed
                         if kind == "FAIL"],
            "errors": [f"{cls}.{name}" if not cls.endswith(name) else cls for kind, name, cls in failed
                       if kind == "ERROR"],
            "loop_types": types[:-1], "loops_made": types[-1], "seconds": time.monotonic() - start,
            "hung": "[websockets_suite] killed" in out, "output": out}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("src", type=Path, help="a checkout of python-websockets/websockets")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--loop", default="asyncio,shardloop")
    parser.add_argument("--module", action="append", default=[],
                        help="a test module to run instead of all of tests/asyncio (repeatable)")
    parser.add_argument("--timeout", type=float, default=300, help="seconds one run may take")
    parser.add_argument("--keep-output", type=Path, help="write each run's output here")
    args = parser.parse_args()
    bad = False
    with tempfile.TemporaryDirectory() as tmp:
        site = Path(tmp)
        (site / "sitecustomize.py").write_text(SITECUSTOMIZE)
        counts: dict[str, collections.Counter] = {}
        print("| loop | run | ran | failures | errors | skipped | loops made | time |\n|---|---|---|---|---|---|---|---|")
        for run in range(1, args.runs + 1):
            for loop in args.loop.split(","):
                result = run_once(args.src.resolve(), loop, site, site / "report.json", args.module,
                                  args.timeout)
                if args.keep_output:
                    args.keep_output.mkdir(parents=True, exist_ok=True)
                    (args.keep_output / f"{loop}-{run}.log").write_text(result["output"])
                if result["hung"]:
                    print(f"{loop} run {run}: killed after {args.timeout:.0f} s (hung)", file=sys.stderr)
                    counts.setdefault(loop, collections.Counter())["(run hung)"] += 1
                elif result["loop_types"] != [LOOP_TYPES[loop]] or result["ran"] == 0:
                    bad = True
                    print(f"{loop} run {run}: loops made {result['loop_types']}, ran {result['ran']}",
                          file=sys.stderr)
                counts.setdefault(loop, collections.Counter()).update(result["failures"] + result["errors"])
                print(f"| {loop} | {run} | {result['ran']} | {len(result['failures'])} | {len(result['errors'])} | "
                      f"{result['skipped']} | {result['loops_made']} | {result['seconds']:.0f} s |", flush=True)
    for loop, counter in counts.items():
        print(f"\n{loop}: tests that failed or erred, times out of {args.runs} runs")
        for test, n in counter.most_common():
            print(f"  {n}  {test}")
        if not counter:
            print("  none")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
