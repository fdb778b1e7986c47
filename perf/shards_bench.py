#!/usr/bin/env python3
"""Sharded Python echo server: `shardloop.run(main(), shards=N)`
serving `asyncio.start_server(..., reuse_port=True)` with N = 1, 2, ... on
each interpreter given (a GIL build and free-threaded CPython), driven by the
closed-loop C load generator. Per cell: req/s, the server's user and system
CPU per request, and how the connections spread over the shards.

On a machine with fewer cores than shards + 1 the server and the load
generator share the cores (nothing is pinned), so req/s there says how the
whole system shares its CPUs; CPU per request staying flat as N grows is the
figure that says the shards do not get in each other's way.

    python perf/shards_bench.py                                 # this interpreter + .venv-3.13t
    python perf/shards_bench.py --shards 1,2,4 --duration 5 --json out.json
    python perf/shards_bench.py --python gil=.venv-3.13/bin/python --python ft=.venv-3.13t/bin/python

Each interpreter must import shardloop (installed in its venv, or
`--python LABEL=PYTHON,PYTHONPATH`). The server side of this file runs as
`PYTHON perf/shards_bench.py --serve --shards N`. `part()` is bench.py's
`shards` part: these cells plus shards_micro.py's submit_to and the native
cross-shard figures.
"""

import argparse
import json
import os
import subprocess
import sys
import time
from types import SimpleNamespace

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
FT_VENV_PYTHON = os.path.join(ROOT, ".venv-3.13t", "bin", "python")
SIZE = 1024


# --- server (runs in the measured interpreter) ------------------------------

def serve(shards, port):
    import asyncio

    import shardloop

    # The single-loop streams echo server's handler, so that 1 shard here
    # and the echo part's streams cell run the same code.
    sys.path.insert(0, os.path.join(HERE, "servers"))
    import echo_streams

    accepted = [0] * shards  # each shard writes only its own slot

    async def echo(reader, writer):
        accepted[shardloop.current_shard()] += 1
        await echo_streams.echo(reader, writer)

    async def main():
        server = await asyncio.start_server(echo, "127.0.0.1", port, reuse_port=True)
        print(f"READY {server.sockets[0].getsockname()[1]}", flush=True)
        await server.serve_forever()

    try:
        shardloop.run(main(), shards=shards)
    except KeyboardInterrupt:
        pass
    finally:
        print("CONNECTIONS " + json.dumps(accepted), flush=True)


# --- driver -----------------------------------------------------------------

def describe(python, env):
    """(version, free-threaded?) of an interpreter, or raise with its error."""
    code = ("import sys, shardloop; print(sys.version.split()[0]); "
            "print(int(not getattr(sys, '_is_gil_enabled', lambda: True)()))")
    res = subprocess.run([python, "-c", code], capture_output=True, text=True, env=env, timeout=60)
    if res.returncode != 0:
        raise RuntimeError(res.stderr.strip().splitlines()[-1] if res.stderr.strip() else "failed")
    version, ft = res.stdout.split()
    return version, ft == "1"


def interpreters(specs):
    """[(label, python, env)] from LABEL=PYTHON[,PYTHONPATH] specs; by
    default this interpreter and .venv-3.13t's when it exists."""
    out = []
    for spec in specs or [f"this={sys.executable}"]:
        label, _, rest = spec.partition("=")
        python, _, path = rest.partition(",")
        env = dict(os.environ)
        if path:
            env["PYTHONPATH"] = os.path.abspath(path)
        out.append((label, python or label, env))
    if not specs and os.path.exists(FT_VENV_PYTHON) and \
            os.path.realpath(FT_VENV_PYTHON) != os.path.realpath(sys.executable):
        # Its own install, not this interpreter's PYTHONPATH (e.g. build/pkg):
        # that would shadow it with an extension built for another ABI.
        out.append(("3.13t", FT_VENV_PYTHON, {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}))
    return out


def cell(loadgen, python, env, shards, cfg):
    import echo_bench
    import serverproc

    argv = [python, os.path.abspath(__file__), "--serve", "--shards", str(shards)]
    with serverproc.Server(argv, r"READY (?P<port>\d+)", env=env) as server:
        r = echo_bench.run_loadgen(loadgen, server, server.port, SIZE, cfg, None)
        server.stop()
        spread = None
        for line in server.output().splitlines():
            if line.startswith("CONNECTIONS "):
                spread = json.loads(line.split(" ", 1)[1])
    result = serverproc.load_cell(r["requests"], r["seconds"], r["latency_us"],
                                  r["server_cpu_s"]["user"], r["server_cpu_s"]["sys"])
    result["connections_per_shard"] = spread
    return result


def measure(cfg, shard_counts, specs, log=lambda msg: print(msg, file=sys.stderr, flush=True)):
    sys.path.insert(0, HERE)
    import echo_bench

    loadgen = echo_bench.build_loadgen()
    rows = []
    for label, python, env in interpreters(specs):
        try:
            version, ft = describe(python, env)
        except Exception as e:  # noqa: BLE001 - reported, the others still run
            rows.append({"interpreter": label, "python": python, "error": f"{type(e).__name__}: {e}"})
            log(f"{label}: skipped: {e}")
            continue
        for shards in shard_counts:
            name = f"{label} (CPython {version}{', free-threaded' if ft else ', GIL'}) shards={shards}"
            log(f"{name} ...")
            row = {"interpreter": label, "python": python, "version": version, "free_threaded": ft,
                   "shards": shards}
            try:
                row.update(cell(loadgen, python, env, shards, cfg))
            except Exception as e:  # noqa: BLE001
                row["error"] = f"{type(e).__name__}: {e}"
            rows.append(row)
            if "value" in row:
                cpu = row["cpu_us_per_request"]
                log(f"    {row['value']:,.0f} req/s, {cpu['user'] + cpu['sys']:.1f} CPU us/request")
            else:
                log(f"    ERROR: {row['error']}")
    return rows


# --- bench.py's `shards` part --------------------------------------------------

MICRO = os.path.join(HERE, "shards_micro.py")
# shards_micro.py's submit_to cases: (repeats, round trips per repeat).
MICRO_FULL = (3, 5000)
MICRO_QUICK = (1, 300)
NATIVE = "native C++"


def shard_label(n):
    return f"{n} shard" + ("s" if n > 1 else "")


def micro_cells(python, env, quick):
    """shards_micro.py's submit_to cases in a fresh `python`:
    {"submit_to (runtime)": cell, ...}, each cell round trips/s."""
    import tempfile

    repeat, n = MICRO_QUICK if quick else MICRO_FULL
    with tempfile.NamedTemporaryFile(suffix=".json") as out:
        res = subprocess.run([python, MICRO, "--repeat", str(repeat), "--round-trips", str(n), "--only", "submit_to",
                              "--json", out.name], capture_output=True, text=True, env=env, timeout=300)
        if res.returncode != 0:
            raise RuntimeError(f"shards_micro.py exited with {res.returncode}: {res.stderr.strip()[-300:]}")
        doc = json.load(out)
    return {f"{r['case']} ({r['path']})": {"value": r["ops_per_s"], "ops": r["ops"],
                                           "cpu_us_per_op": 1e6 * r["cpu_seconds"] / r["ops"]}
            for r in sorted(doc["results"], key=lambda r: (r["case"], r["path"] != "runtime"))}


def native_cells(quick):
    """cross_shard_bench's figures as cells of the NATIVE column."""
    from native import compare

    bin_dir, why = compare.prepare(quick)
    if why:
        return {name: {"skipped": why} for name in ("Runtime::post", "wake-up latency p50", "wake-up latency p99")}
    r = compare.cross_shard(bin_dir, quick)
    if "error" in r:
        return {"Runtime::post": {"error": r["error"]}}
    lat = r["wake_latency_us"]
    return {"Runtime::post": {"value": r["messages_per_s"], "messages": r["messages"], "pinned": r["pinned"]},
            "wake-up latency p50": {"value": lat["p50"], "samples": lat["samples"]},
            "wake-up latency p99": {"value": lat["p99"], "samples": lat["samples"], "max": lat["max"]}}


def part(cfg, loops, skipped_loops, add_step, shard_counts=(1, 2)):
    """The sharded echo server per interpreter and shard count (results),
    and cross-shard messaging (cross_shard: Python's submit_to per
    interpreter, the native Runtime's messages/s and wake-up latency)."""
    import echo_bench
    import serverproc

    result = {
        "title": "Shards",
        "unit": "req/s",
        "higher_is_better": True,
        "description": (f"`shardloop.run(main(), shards=N)` serving `asyncio.start_server(..., reuse_port=True)` "
                        f"echo, {SIZE} B, closed loop, {cfg.connections} connections, {cfg.duration:g} s measured "
                        f"after {cfg.warmup:g} s warm-up; server and load generator not pinned "
                        f"({len(os.sched_getaffinity(0))} usable CPUs), so req/s is how the machine shares its "
                        "CPUs and CPU per request is the figure that shows shards getting in each other's way"),
        "columns": [shard_label(n) for n in shard_counts],
        "ratios": [[shard_label(n), shard_label(shard_counts[0])] for n in shard_counts[1:]],
        "results": {},
        "notes": [],
    }
    if "shardloop" not in loops or "shardloop" in skipped_loops:
        result.update(status="skipped", reason=skipped_loops.get("shardloop", "shardloop is not among --loops"))
        return result
    try:
        loadgen = echo_bench.build_loadgen()
    except RuntimeError as e:
        result.update(status="skipped", reason=str(e))
        return result
    result["status"] = "ran"
    specs = interpreters(None)
    if not os.path.exists(FT_VENV_PYTHON):
        result["notes"].append(f"free-threaded CPython: skipped, no {os.path.relpath(FT_VENV_PYTHON, ROOT)} "
                               "(`make test-ft` makes it)")
    micro_columns = []
    cross = {}
    for label, python, env in specs:
        try:
            version, ft = describe(python, env)
        except Exception as e:  # noqa: BLE001 - reported, the others still run
            result["notes"].append(f"{label} ({python}): skipped, it cannot import shardloop: {e}")
            continue
        name = f"{label}: CPython {version}, {'free-threaded' if ft else 'GIL'}"
        row = result["results"].setdefault(f"echo, {name}", {})
        for n in shard_counts:
            def step(row=row, n=n, python=python, env=env):
                c = serverproc.guarded_cell("shardloop", "sharded serving is not supported",
                                            lambda: cell(loadgen, python, env, n, cfg))
                c["shards"] = n
                base = row.get(shard_label(shard_counts[0]), {})
                if "value" in c and base.get("value"):
                    c["vs_1_shard"] = c["value"] / base["value"]
                row[shard_label(n)] = c
                return c

            add_step(f"shards echo {label} x{n}", cfg.warmup + cfg.duration + 1.5, step)
        micro_columns.append(name)

        def micro_step(name=name, python=python, env=env):
            try:
                cells = micro_cells(python, env, cfg.quick)
            except Exception as e:  # noqa: BLE001
                cells = {"submit_to (runtime)": {"error": f"{type(e).__name__}: {e}"}}
            for bench, c in cells.items():
                cross.setdefault(bench, {})[name] = c
            return cells.get("submit_to (runtime)")

        add_step(f"shards submit_to {label}", 3.0 if cfg.quick else 25.0, micro_step)

    def native_step():
        for bench, c in native_cells(cfg.quick).items():
            cross.setdefault(bench, {})[NATIVE] = c
        return cross["Runtime::post"][NATIVE]

    add_step("shards native cross-shard", 1.0 if cfg.quick else 10.0, native_step)
    result["cross_shard"] = {
        "description": ("two shards; submit_to: round trips/s, a call on shard 1 and its result back on shard 0 "
                        "(`runtime` as shipped, `inbox` the same over call_soon_threadsafe; x64: 64 in flight), "
                        "CPU µs per round trip in brackets; Runtime::post: messages/s from shard 0 to 1 "
                        "(C++, pinned); wake-up latency: µs from a post to a sleeping shard until it runs"),
        "columns": micro_columns + [NATIVE],
        "units": {"submit_to (runtime)": "round trips/s", "submit_to (inbox)": "round trips/s",
                  "submit_to x64 (runtime)": "round trips/s", "submit_to x64 (inbox)": "round trips/s",
                  "Runtime::post": "messages/s", "wake-up latency p50": "µs", "wake-up latency p99": "µs"},
        "results": cross,
    }
    return result


def markdown(rows, cfg, load_before, load_after):
    out = [
        f"Sharded echo, {SIZE} B messages, {cfg.connections} connections, closed loop, "
        f"{cfg.duration:g} s measured after {cfg.warmup:g} s warm-up; {os.cpu_count()} CPUs, "
        "server and load generator not pinned.",
        f"Load average (1/5/15 min): {load_before} before, {load_after} after.",
        "",
        "| interpreter | shards | req/s | vs 1 shard | user us/req | sys us/req | total us/req | connections per shard |",
        "|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    base = {}
    for row in rows:
        if "value" not in row:
            out.append(f"| {row['interpreter']} | {row.get('shards', '')} | error: {row['error']} | | | | | |")
            continue
        key = row["interpreter"]
        if row["shards"] == 1:
            base[key] = row["value"]
        ratio = f"{row['value'] / base[key]:.2f}x" if key in base else ""
        cpu = row["cpu_us_per_request"]
        kind = "free-threaded" if row["free_threaded"] else "GIL"
        out.append(f"| {row['version']} {kind} | {row['shards']} | {row['value']:,.0f} | {ratio} | "
                   f"{cpu['user']:.1f} | {cpu['sys']:.1f} | {cpu['user'] + cpu['sys']:.1f} | "
                   f"{row.get('connections_per_shard')} |")
    return "\n".join(out)


def load_average():
    return " / ".join(f"{x:.2f}" for x in os.getloadavg())


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog=__doc__.split("\n\n", 1)[1])
    p.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--port", type=int, default=0, help=argparse.SUPPRESS)
    p.add_argument("--shards", default="1,2", help="comma-separated shard counts (default 1,2)")
    p.add_argument("--python", action="append", metavar="LABEL=PYTHON[,PYTHONPATH]",
                   help="an interpreter to measure (repeatable; default: this one and .venv-3.13t's)")
    p.add_argument("--duration", type=float, default=5.0, help="measured seconds per cell (default 5)")
    p.add_argument("--warmup", type=float, default=1.0, help="seconds of load before measuring (default 1)")
    p.add_argument("--connections", type=int, default=100, help="client connections (default 100)")
    p.add_argument("--json", metavar="PATH", help="also write the rows here")
    args = p.parse_args(argv)
    try:
        counts = [int(s) for s in args.shards.split(",") if s.strip()]
    except ValueError:
        p.error("--shards: comma-separated integers")
    if not counts or min(counts) < 1:
        p.error("--shards: at least one count, each >= 1")
    if args.serve:
        serve(counts[0], args.port)
        return 0
    if args.duration <= 0 or args.warmup < 0 or args.connections < 1:
        p.error("--duration and --connections must be positive, --warmup not negative")
    cfg = SimpleNamespace(duration=args.duration, warmup=args.warmup, connections=args.connections)
    before = load_average()
    started = time.monotonic()
    rows = measure(cfg, counts, args.python)
    print(markdown(rows, cfg, before, load_average()))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"settings": vars(cfg), "load_average_before": before, "rows": rows,
                       "elapsed_s": round(time.monotonic() - started, 1)}, f, indent=1)
            f.write("\n")
    return 1 if any("error" in row for row in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
