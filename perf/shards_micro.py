#!/usr/bin/env python3
"""Cross-shard messaging between shard 0 and shard 1 of shardloop.run(shards=2):
the loops' inbox (call_soon_threadsafe: a multi-producer queue and a
uv_async_send per message) against the native Runtime (`_core.Runtime.post`:
a single-producer ring per pair of shards, a wake-up only when the target is
about to block), in one process, one run.

  round trip  shard 0 sends a callback to shard 1, which sends one back that
              resolves a future shard 0 awaits; N times in sequence.
  submit_to   the same through the code behind shardloop.submit_to (a
              function call and its result or exception coming back, with
              cancellation): `runtime` as shipped, `inbox` the same code
              over call_soon_threadsafe, the transport shardloop used
              before the Runtime.
  submit_to x64  the same, 64 calls in flight at a time (asyncio.gather):
              the target is often awake when a message comes.
  one way     one shard-0 callback sends M callbacks (each bumps a counter) to
              shard 1, then a last one that answers back; timed from the
              first send to that answer: messages delivered and run per second.

Each cell is the best of K repeats (wall clock, and separately the process's
CPU time over both shards' threads, which a loaded machine disturbs less),
the cases taking turns (so a change in the machine's load hits both paths
alike). blocks/op: voluntary context switches (a thread blocking in epoll or
on the GIL) per op, the fewest of the repeats; wake-ups/op: the Runtime's
uv_async_send calls per op over the best repeat. Results depend heavily on the load of the
machine (reported) since both shards share one GIL on a GIL build.
"""

import argparse
import asyncio
import functools
import json
import os
import platform
import resource
import sys
import time

import shardloop
from shardloop import _shards

ROUND_TRIPS = 20_000
ONE_WAY = 200_000


class Counter:
    __slots__ = ("n",)

    def __init__(self):
        self.n = 0

    def bump(self):
        self.n += 1


def noop():
    return None


async def round_trip_inbox(n):
    here = asyncio.get_running_loop()
    there = shardloop.loop_of(1)

    def pong(fut):
        here.call_soon_threadsafe(fut.set_result, None)

    for _ in range(n):
        fut = here.create_future()
        there.call_soon_threadsafe(pong, fut)
        await fut


async def round_trip_runtime(n):
    here = asyncio.get_running_loop()
    post = here._shard_runtime.post

    def pong(fut):
        post(0, fut.set_result, None)

    for _ in range(n):
        fut = here.create_future()
        post(1, pong, fut)
        await fut


class InboxTransport:
    """What the Runtime offers submit_to (post/request by shard index),
    built on the loops' call_soon_threadsafe instead: the same submit_to
    code over the pre-Runtime transport."""

    def __init__(self, runtime):
        self.loops = runtime.loops

    def post(self, shard, fn, *args):
        self.loops[shard].call_soon_threadsafe(fn, *args)
        return True

    def request(self, shard, stopped, fn, *args):
        return self.post(shard, fn, *args)


async def submit_to_inbox(n):
    here = asyncio.get_running_loop()
    transport = InboxTransport(here._shard_runtime)
    for _ in range(n):
        await _shards._send(here, transport, 1, noop, ())


async def submit_to_runtime(n):
    here = asyncio.get_running_loop()
    runtime = here._shard_runtime
    for _ in range(n):
        await _shards._send(here, runtime, 1, noop, ())


WINDOW = 64


async def pipelined_inbox(n):
    here = asyncio.get_running_loop()
    transport = InboxTransport(here._shard_runtime)
    for _ in range(n // WINDOW):
        await asyncio.gather(*(_shards._send(here, transport, 1, noop, ()) for _ in range(WINDOW)))


async def pipelined_runtime(n):
    here = asyncio.get_running_loop()
    runtime = here._shard_runtime
    for _ in range(n // WINDOW):
        await asyncio.gather(*(_shards._send(here, runtime, 1, noop, ()) for _ in range(WINDOW)))


async def one_way(m, send_to_1, send_to_0):
    here = asyncio.get_running_loop()
    counter = Counter()
    done = here.create_future()
    bump = counter.bump

    def finish():
        send_to_0(done.set_result, counter.n)

    for _ in range(m):
        send_to_1(bump)
    send_to_1(finish)
    delivered = await done
    assert delivered == m, (delivered, m)


async def one_way_inbox(m):
    here = asyncio.get_running_loop()
    there = shardloop.loop_of(1)
    await one_way(m, there.call_soon_threadsafe, here.call_soon_threadsafe)


async def one_way_runtime(m):
    post = asyncio.get_running_loop()._shard_runtime.post
    await one_way(m, functools.partial(post, 1), functools.partial(post, 0))


CASES = [
    ("round trip", "inbox", round_trip_inbox, "rt"),
    ("round trip", "runtime", round_trip_runtime, "rt"),
    ("submit_to", "inbox", submit_to_inbox, "rt"),
    ("submit_to", "runtime", submit_to_runtime, "rt"),
    (f"submit_to x{WINDOW}", "inbox", pipelined_inbox, "rt"),
    (f"submit_to x{WINDOW}", "runtime", pipelined_runtime, "rt"),
    ("one way", "inbox", one_way_inbox, "ow"),
    ("one way", "runtime", one_way_runtime, "ow"),
]


def _switches():
    # Voluntary context switches of the whole process: a thread blocking in
    # epoll or on the GIL. Unlike time, barely moved by the machine's load.
    return resource.getrusage(resource.RUSAGE_SELF).ru_nvcsw


async def measure(repeat, rt_n, ow_m, only=None):
    native = asyncio.get_running_loop()._shard_runtime.native
    best = {}
    for _ in range(repeat):
        for name, path, fn, kind in CASES:
            if only and only not in f"{name} {path}":
                continue
            n = rt_n if kind == "rt" else ow_m
            before = native.stats()["wakeups"]
            switches0 = _switches()
            cpu0 = time.process_time()
            t0 = time.perf_counter()
            await fn(n)
            elapsed = time.perf_counter() - t0
            cpu = time.process_time() - cpu0
            switches = _switches() - switches0
            wakeups = native.stats()["wakeups"] - before
            cell = best.setdefault((name, path), {"case": name, "path": path, "ops": n, "seconds": elapsed,
                                                  "cpu_seconds": cpu, "runtime_wakeups": wakeups,
                                                  "switches": switches})
            # Wall clock and CPU time (both threads) are each the best repeat.
            if elapsed < cell["seconds"]:
                cell.update(seconds=elapsed, runtime_wakeups=wakeups)
            cell["cpu_seconds"] = min(cell["cpu_seconds"], cpu)
            cell["switches"] = min(cell["switches"], switches)
            cell["ops_per_s"] = n / cell["seconds"]
    return [best[name, path] for name, path, _, _ in CASES if (name, path) in best]


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--round-trips", type=int, default=ROUND_TRIPS)
    parser.add_argument("--one-way", type=int, default=ONE_WAY)
    parser.add_argument("--pin", action="store_true", help="pin the two shards to CPUs (needs 2)")
    parser.add_argument("--only", help="run only the cases whose name or path contains this (e.g. under strace -c)")
    parser.add_argument("--json", help="write the results here too")
    args = parser.parse_args()

    load_before = os.getloadavg()
    results = shardloop.run(measure(args.repeat, args.round_trips, args.one_way, args.only), shards=2, pin=args.pin)
    load_after = os.getloadavg()
    info = {
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
        "python": sys.version.split()[0] + (" free-threaded" if not getattr(sys, "_is_gil_enabled", lambda: True)()
                                             else ""),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs ({len(os.sched_getaffinity(0))} usable)",
        "loadavg_before": load_before,
        "loadavg_after": load_after,
        "pinned": args.pin,
        "repeat": args.repeat,
    }
    print(f"# {info['date']}  Python {info['python']}  {info['machine']}")
    print(f"# load average before {load_before[0]:.2f}, after {load_after[0]:.2f}; best of {args.repeat}")
    print(f"{'case':<15} {'path':<8} {'ops':>8} {'ops/s':>12} {'us/op':>8} {'cpu us/op':>10} {'blocks/op':>10} {'wakeups/op':>11}")
    for r in results:
        print(f"{r['case']:<15} {r['path']:<8} {r['ops']:>8} {r['ops_per_s']:>12,.0f} "
              f"{1e6 * r['seconds'] / r['ops']:>8.2f} {1e6 * r['cpu_seconds'] / r['ops']:>10.2f} "
              f"{r['switches'] / r['ops']:>10.3f} "
              f"{(r['runtime_wakeups'] / r['ops']) if r['path'] == 'runtime' else float('nan'):>11.3f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"info": info, "results": results}, f, indent=2)


if __name__ == "__main__":
    main()
