#!/usr/bin/env python3
"""Event-loop micro-benchmarks: shardloop vs uvloop vs asyncio.

Every loop runs every benchmark in the same process; the result is the best of
K repeats (default 5), reported as ops/s. Each repeat uses a fresh loop.

Benchmarks (each times N "ops" from inside the running loop with
time.perf_counter, from the first callback until the loop is told to stop):

  call_soon            A driver callback schedules BATCH=1000 no-op callbacks
                       with loop.call_soon and then re-schedules itself, until
                       N no-ops have been scheduled; the last driver call stops
                       the loop. ops = N no-op callbacks (scheduled and run).
  call_later           N timers via loop.call_later(0.0001 * (i % 10), cb),
                       all scheduled from one callback; the N-th one to fire
                       stops the loop. ops = N timers (scheduled and fired).
  call_soon_threadsafe One producer thread calls loop.call_soon_threadsafe(cb)
                       N times while the loop runs; the N-th callback stops
                       the loop. Timed from the producer's start to that stop.
  tasks                A coroutine runs `await loop.create_task(noop())` N
                       times, with `async def noop(): pass`. ops = tasks.
  futures              A coroutine N times creates a future with
                       loop.create_future(), schedules its set_result with
                       call_soon and awaits it. ops = futures resolved.

gc.collect() runs before every timed run and the collector is disabled while
timing (unless --keep-gc), so that a collection triggered by garbage from an
earlier run does not land in a random sample.

A loop that cannot be imported or created is skipped with the reason; a
benchmark that raises for one loop is reported as an error for that cell only.
"""

import argparse
import asyncio
import datetime
import faulthandler
import gc
import importlib
import json
import os
import platform
import sys
import threading
import time

BATCH = 1000
# A loop that never wakes up (e.g. a broken call_soon_threadsafe) must not
# hang a smoke test forever: dump the stacks and exit after this long.
HANG_TIMEOUT_S = 60

FULL_N = {
    "call_soon": 1_000_000,
    "call_later": 200_000,
    "call_soon_threadsafe": 200_000,
    "tasks": 200_000,
    "futures": 200_000,
}
QUICK_N = {
    "call_soon": 20_000,
    "call_later": 5_000,
    "call_soon_threadsafe": 5_000,
    "tasks": 5_000,
    "futures": 5_000,
}
LOOP_MODULES = ("shardloop", "uvloop", "rloop", "asyncio")
# Loops the I/O parts (echo) measure besides LOOP_MODULES: shardloop's
# io_uring backend (the micro benchmarks do no I/O: it would repeat them).
IO_LOOP_MODULES = ("shardloop_uring",)


def bench_call_soon(loop, n):
    t = {}
    remaining = n

    def noop():
        pass

    def driver():
        nonlocal remaining
        if remaining <= 0:
            t["end"] = time.perf_counter()
            loop.stop()
            return
        k = min(BATCH, remaining)
        remaining -= k
        call_soon = loop.call_soon
        for _ in range(k):
            call_soon(noop)
        call_soon(driver)

    def start():
        t["start"] = time.perf_counter()
        driver()

    loop.call_soon(start)
    loop.run_forever()
    return t["end"] - t["start"]


def bench_call_later(loop, n):
    t = {}
    fired = 0

    def cb():
        nonlocal fired
        fired += 1
        if fired == n:
            t["end"] = time.perf_counter()
            loop.stop()

    def start():
        t["start"] = time.perf_counter()
        call_later = loop.call_later
        for i in range(n):
            call_later(0.0001 * (i % 10), cb)

    loop.call_soon(start)
    loop.run_forever()
    return t["end"] - t["start"]


def bench_call_soon_threadsafe(loop, n):
    t = {}
    done = 0

    def cb():
        nonlocal done
        done += 1
        if done == n:
            t["end"] = time.perf_counter()
            loop.stop()

    call = loop.call_soon_threadsafe  # a missing method fails here, not in the thread

    def producer():
        t["start"] = time.perf_counter()
        try:
            for _ in range(n):
                call(cb)
        except BaseException as e:
            t["error"] = e
            loop.call_soon_threadsafe(loop.stop)

    thread = threading.Thread(target=producer)
    # Start the producer only once the loop is running, so every call really
    # crosses threads into a live loop.
    loop.call_soon(thread.start)
    loop.run_forever()
    thread.join()
    if "error" in t:
        raise t["error"]
    return t["end"] - t["start"]


def bench_tasks(loop, n):
    async def noop():
        pass

    async def main():
        start = time.perf_counter()
        for _ in range(n):
            await loop.create_task(noop())
        return time.perf_counter() - start

    return loop.run_until_complete(main())


def bench_futures(loop, n):
    async def main():
        create_future = loop.create_future
        call_soon = loop.call_soon
        start = time.perf_counter()
        for _ in range(n):
            fut = create_future()
            call_soon(fut.set_result, None)
            await fut
        return time.perf_counter() - start

    return loop.run_until_complete(main())


BENCHMARKS = {
    "call_soon": bench_call_soon,
    "call_later": bench_call_later,
    "call_soon_threadsafe": bench_call_soon_threadsafe,
    "tasks": bench_tasks,
    "futures": bench_futures,
}


def cpu_model():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def load_loops(names):
    """Return ({name: factory}, {name: skip reason})."""
    factories, skipped = {}, {}
    for name in names:
        try:
            mod = importlib.import_module(name)
            factory = mod.new_event_loop
            factory().close()  # fail here, not in the middle of a benchmark
        except Exception as e:
            skipped[name] = f"{type(e).__name__}: {e}"
            continue
        factories[name] = factory
    return factories, skipped


def environment():
    def version(name):
        mod = sys.modules.get(name)
        if mod is None:
            return "not importable"
        return str(getattr(mod, "__version__", "unknown"))

    return {
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "executable": sys.executable,
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "kernel": platform.release(),
        "uvloop": version("uvloop"),
        "shardloop": version("shardloop"),
    }


def run_once(factory, bench, n, keep_gc):
    loop = factory()
    asyncio.set_event_loop(loop)
    # An exception inside a callback would otherwise only be logged by the
    # loop, and the benchmark would wait forever for its last callback.
    failures = []

    def on_error(loop, context):
        failures.append(context)
        loop.stop()

    loop.set_exception_handler(on_error)
    try:
        gc.collect()
        if not keep_gc:
            gc.disable()
        faulthandler.dump_traceback_later(HANG_TIMEOUT_S, exit=True)
        try:
            elapsed = bench(loop, n)
        except Exception:
            if not failures:
                raise
        finally:
            faulthandler.cancel_dump_traceback_later()
            gc.enable()
    finally:
        asyncio.set_event_loop(None)
        loop.close()
    if failures:
        ctx = failures[0]
        exc = ctx.get("exception")
        raise RuntimeError(f"{ctx.get('message')}: {exc!r}") from exc
    return n / elapsed


def fmt_ops(v):
    return f"{v:,.0f}" if v is not None else "—"


def fmt_ratio(a, b):
    return f"{a / b:.2f}x" if a and b else "—"


def print_table(results, loops, errors, skipped):
    best = {
        b: {l: max(v) if v else None for l, v in per.items()}
        for b, per in results.items()
    }
    head = ["benchmark"] + [f"{l} ops/s" for l in loops]
    head += ["shardloop/rloop", "shardloop/uvloop", "shardloop/asyncio"]
    print("| " + " | ".join(head) + " |")
    print("|" + "|".join(["---"] + ["---:"] * (len(head) - 1)) + "|")
    for b, per in best.items():
        cells = []
        for l in loops:
            if l in skipped:
                cells.append("skipped")
            elif (b, l) in errors:
                cells.append("error")
            else:
                cells.append(fmt_ops(per.get(l)))
        s = per.get("shardloop")
        cells += [fmt_ratio(s, per.get(ref)) for ref in ("rloop", "uvloop", "asyncio")]
        print("| " + " | ".join([b] + cells) + " |")


def part(cfg, loops, skipped_loops, add_step):
    """perf/bench.py's micro part: the same runs as main(), one step per
    (benchmark, repeat, loop), repeats interleaved as there."""
    sizes = QUICK_N if cfg.quick else FULL_N
    factories, failed = load_loops([l for l in loops if l not in skipped_loops])
    skipped = {**skipped_loops, **failed}
    result = {
        "title": "Micro-benchmarks",
        "unit": "ops/s",
        "higher_is_better": True,
        "description": (f"best of {cfg.repeat}; N: " + ", ".join(f"{b} {n:,}" for b, n in sizes.items())
                        + "; gc disabled while timing"),
        "status": "ran",
        "n": dict(sizes),
        "repeat": cfg.repeat,
        "results": {b: {l: {"skipped": skipped[l]} for l in loops if l in skipped} for b in BENCHMARKS},
    }
    for b in BENCHMARKS:
        row = result["results"][b]
        for _ in range(cfg.repeat):
            for l in factories:
                def step(row=row, b=b, l=l):
                    cell = row.setdefault(l, {"samples": []})
                    if "error" in cell:
                        return cell
                    try:
                        cell["samples"].append(run_once(factories[l], BENCHMARKS[b], sizes[b], keep_gc=False))
                        cell["value"] = max(cell["samples"])
                    except Exception as e:
                        row[l] = {"error": f"{type(e).__name__}: {e}"}
                    return row[l]

                # Rough guess at 500k ops/s; the driver rescales its
                # estimates by how long steps really take.
                add_step(f"micro {b} {l}", sizes[b] / 500_000, step)
    return result


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    p.add_argument("--quick", action="store_true",
                   help="small N and 1 repeat (smoke test)")
    p.add_argument("--only", action="append", choices=list(BENCHMARKS),
                   metavar="NAME", help="run only this benchmark (repeatable); "
                   "one of " + ", ".join(BENCHMARKS))
    p.add_argument("--repeat", type=int, help="repeats per cell (default 5, 1 with --quick)")
    p.add_argument("--json", metavar="PATH", help="write raw results here")
    p.add_argument("--loops", default=",".join(LOOP_MODULES),
                   help="comma-separated subset of " + ",".join(LOOP_MODULES))
    p.add_argument("--keep-gc", action="store_true",
                   help="leave the garbage collector enabled while timing")
    args = p.parse_args(argv)

    names = [s.strip() for s in args.loops.split(",") if s.strip()]
    bad = [s for s in names if s not in LOOP_MODULES]
    if bad or not names:
        p.error(f"--loops: unknown loop(s) {bad}; choose from {','.join(LOOP_MODULES)}")
    repeat = args.repeat or (1 if args.quick else 5)
    if repeat < 1:
        p.error("--repeat must be at least 1")
    sizes = QUICK_N if args.quick else FULL_N
    benches = [b for b in BENCHMARKS if not args.only or b in args.only]

    factories, skipped = load_loops(names)
    env = environment()
    print("## Environment\n")
    for k, v in env.items():
        print(f"- {k}: {v}")
    print(f"- repeats: {repeat} (best of), gc during timing: "
          f"{'enabled' if args.keep_gc else 'disabled'}")
    print("- N: " + ", ".join(f"{b}={sizes[b]:,}" for b in benches))
    for name, why in skipped.items():
        print(f"- skipped {name}: {why}")
    print()

    loops = list(factories)
    results = {b: {l: [] for l in loops} for b in benches}
    errors = {}
    for b in benches:
        # Repeats interleave the loops so that drift (CPU frequency, other
        # load) affects all of them alike instead of one loop's whole block.
        for r in range(repeat):
            for l in loops:
                if (b, l) in errors:
                    continue
                print(f"[{b}] {l} {r + 1}/{repeat} ...", end=" ", file=sys.stderr, flush=True)
                try:
                    ops = run_once(factories[l], BENCHMARKS[b], sizes[b], args.keep_gc)
                except Exception as e:
                    errors[(b, l)] = f"{type(e).__name__}: {e}"
                    print(f"ERROR {errors[(b, l)]}", file=sys.stderr)
                    continue
                results[b][l].append(ops)
                print(f"{ops:,.0f} ops/s", file=sys.stderr)

    print("## Results (ops/s, best of %d)\n" % repeat)
    print_table(results, names, errors, skipped)
    for (b, l), why in errors.items():
        print(f"\n- {b} on {l} failed: {why}")

    if args.json:
        with open(args.json, "w") as f:
            json.dump({
                "environment": env,
                "repeat": repeat,
                "gc_disabled": not args.keep_gc,
                "n": {b: sizes[b] for b in benches},
                "skipped": skipped,
                "errors": {f"{b}/{l}": why for (b, l), why in errors.items()},
                "results": results,
            }, f, indent=2)
            f.write("\n")
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
