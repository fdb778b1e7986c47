"""Native echo servers, same load, same core, one run: shardloop's C++ API
(one shard; on epoll and, here but not in bench.py, on io_uring), a plain C
epoll server, Go (GOMAXPROCS=1, when `go` is
installed) and Node.js (when `node` is installed). Closed loop, 1 KiB,
100 connections by default; server pinned to one CPU, load generator to
another. Reports req/s and the server's user/system CPU per request
(/proc/PID/stat), then the cross-shard messaging benchmark.

  python3 perf/native/compare.py --bin-dir build-native/perf/native [--duration 5] [--echo-only]

The functions below are also bench.py's `native` part (`part()`) and the
native figures of its `shards` part (`prepare()`, `cross_shard()`).
"""

import argparse
import json
import os
import shutil
import subprocess
import sys
import types

HERE = os.path.dirname(os.path.abspath(__file__))
PERF = os.path.dirname(HERE)
ROOT = os.path.dirname(PERF)
sys.path.insert(0, PERF)

import echo_bench  # noqa: E402  (the load generator: build and run)
import http_bench  # noqa: E402  (wrk)
import serverproc  # noqa: E402

BUILD_DIR = os.path.join(ROOT, "build-native")
BIN_DIR = os.path.join(BUILD_DIR, "perf", "native")
BINARIES = ("echo_server", "plain_epoll_echo", "http_server", "cross_shard_bench")
SIZE = 1024
# cross_shard_bench's arguments: messages for the throughput run, wake-ups
# sampled one per millisecond for the latency run.
CROSS_SHARD_FULL = (20_000_000, 2000)
CROSS_SHARD_QUICK = (200_000, 50)


def venv_tool(name):
    """The .venv's cmake/ninja (what `make bench-native` uses), else PATH's."""
    exe = os.path.join(ROOT, ".venv", "bin", name)
    return exe if os.path.exists(exe) else shutil.which(name)


def missing_binaries(bin_dir):
    return [b for b in BINARIES if not os.path.exists(os.path.join(bin_dir, b))]


def build(build_dir=BUILD_DIR, log=lambda msg: print(msg, file=sys.stderr, flush=True)):
    """Configures (once) and builds the native binaries the way `make
    bench-native` does; raises RuntimeError with the tool's last words."""
    cmake, ninja = venv_tool("cmake"), venv_tool("ninja")
    if not cmake or not ninja:
        raise RuntimeError("cmake/ninja not found (make deps installs them into .venv)")
    steps = []
    if not os.path.exists(os.path.join(build_dir, "build.ninja")):
        steps.append([cmake, "-S", ROOT, "-B", build_dir, "-G", "Ninja", "-DCMAKE_BUILD_TYPE=Release",
                      "-DSHARDLOOP_BUILD_PYTHON=OFF", "-DSHARDLOOP_BUILD_TESTS=OFF"])
    steps.append([ninja, "-C", build_dir])
    for argv in steps:
        log(f"native: {' '.join(os.path.basename(a) if i == 0 else a for i, a in enumerate(argv))}")
        res = subprocess.run(argv, capture_output=True, text=True)
        if res.returncode != 0:
            raise RuntimeError(f"{os.path.basename(argv[0])} failed: {(res.stdout + res.stderr).strip()[-500:]}")


_prepared = {}


def prepare(quick, bin_dir=BIN_DIR):
    """(bin_dir, None) when the native binaries are there to run, else
    (None, why not). A full run builds them (an up-to-date tree costs one
    ninja no-op); --quick only uses what is already built, since a first
    build takes minutes. Once per process: the shards and native parts share
    it."""
    key = (quick, bin_dir)
    if key not in _prepared:
        why = None
        if not quick:
            try:
                build(os.path.dirname(os.path.dirname(bin_dir)))
            except RuntimeError as e:
                why = f"building the native binaries failed: {e}"
        missing = missing_binaries(bin_dir)
        if not why and missing:
            why = (f"{os.path.relpath(bin_dir, ROOT)} lacks {', '.join(missing)}"
                   + ("; --quick does not build them (`make bench-native` or a full `make bench` does)"
                      if quick else ""))
        _prepared[key] = (None, why) if why else (bin_dir, None)
    return _prepared[key]


def servers(bin_dir, io_uring=False):
    """(name, argv, env, why not) of every server in the comparison; argv is
    None and `why not` says why when one cannot run here. Go's binary is
    built here (cached in bin_dir/gocache). Second value: notes (versions).
    `io_uring`: the C++ API's server on the io_uring backend too."""
    out, notes = [], []
    echo = [os.path.join(bin_dir, "echo_server"), "--port", "0", "--shards", "1"]
    out.append(("shardloop native", echo, None, None))
    if io_uring:
        out.append(("shardloop native io_uring", echo + ["--io-uring", "1"], None, None))
    out.append(("plain C epoll", [os.path.join(bin_dir, "plain_epoll_echo"), "0"], None, None))
    go = shutil.which("go")
    if go:
        exe = os.path.join(bin_dir, "echo_go")
        res = subprocess.run([go, "build", "-o", exe, os.path.join(HERE, "echo_go.go")], capture_output=True, text=True,
                             env=dict(os.environ, GOCACHE=os.path.abspath(os.path.join(bin_dir, "gocache")), GO111MODULE="off"))
        if res.returncode == 0:
            out.append(("Go", [exe, "0"], dict(os.environ, GOMAXPROCS="1"), None))
            notes.append(f"Go: {subprocess.run([go, 'version'], capture_output=True, text=True).stdout.strip()}, "
                         "GOMAXPROCS=1")
        else:
            out.append(("Go", None, None, f"go build failed: {res.stderr.strip()[-300:]}"))
    else:
        out.append(("Go", None, None, "no `go` on PATH"))
    node = shutil.which("node")
    if node:
        out.append(("Node.js", [node, os.path.join(HERE, "echo_node.js"), "0"], None, None))
        notes.append(f"Node.js {subprocess.run([node, '--version'], capture_output=True, text=True).stdout.strip()}")
    else:
        out.append(("Node.js", None, None, "no `node` on PATH"))
    return out, notes


def echo_cell(loadgen, argv, env, size, cfg, cpus):
    """One server under the closed-loop load: serverproc.load_cell's dict."""
    server_cpus, load_cpus = cpus
    with serverproc.Server(argv, r"READY (?P<port>\d+)", cpus=server_cpus, env=env) as server:
        r = echo_bench.run_loadgen(loadgen, server, server.port, size, cfg, load_cpus)
    return serverproc.load_cell(r["requests"], r["seconds"], r["latency_us"],
                                r["server_cpu_s"]["user"], r["server_cpu_s"]["sys"])


def http_cell(bin_dir, cfg, cpus):
    """The native HTTP hello server (one shard) under wrk, as bench.py's
    http part drives the Python servers."""
    server_cpus, load_cpus = cpus
    argv = [os.path.join(bin_dir, "http_server"), "--port", "0", "--shards", "1"]
    with serverproc.Server(argv, r"READY (?P<port>\d+)", cpus=server_cpus) as server:
        warmup, seconds = http_bench.wrk_seconds(cfg)
        if warmup:
            http_bench.run_wrk(server.port, warmup, cfg.connections, load_cpus)
        u0, s0 = server.cpu()
        r = http_bench.run_wrk(server.port, seconds, cfg.connections, load_cpus)
        u1, s1 = server.cpu()
        server.check_alive()
    if r["errors"]:
        raise RuntimeError(f"wrk counted {r['errors']} errors")
    return serverproc.load_cell(r["requests"], r["seconds"], r["latency_us"], u1 - u0, s1 - s0)


def cross_shard(bin_dir, quick=False):
    """cross_shard_bench's JSON (messages/s between two shards, wake-up
    latency in µs), or {"error": ...}."""
    messages, samples = CROSS_SHARD_QUICK if quick else CROSS_SHARD_FULL
    res = subprocess.run([os.path.join(bin_dir, "cross_shard_bench"), str(messages), str(samples)],
                         capture_output=True, text=True, timeout=300)
    if res.returncode != 0:
        return {"error": f"cross_shard_bench exited with {res.returncode}: {res.stderr.strip()[-300:]}"}
    return json.loads(res.stdout)


def part(cfg, loops, skipped_loops, add_step):
    """bench.py's `native` part: one row per workload, one column per
    server (not per loop: no Python runs here)."""
    cpus = serverproc.cpu_split()
    result = {
        "title": "Native servers",
        "unit": "req/s",
        "higher_is_better": True,
        "description": (f"C++ API (one shard) vs plain C epoll vs Go vs Node.js: echo {SIZE} B, closed loop, "
                        f"{cfg.connections} connections, {cfg.duration:g} s measured after {cfg.warmup:g} s "
                        "warm-up; the C++ HTTP hello server under wrk as in the HTTP part"),
        "results": {},
    }
    bin_dir, why = prepare(cfg.quick)
    if why is None:
        try:
            loadgen = echo_bench.build_loadgen()
        except RuntimeError as e:
            why = str(e)
    if why:
        result.update(status="skipped", reason=why)
        return result
    found, notes = servers(bin_dir)
    result["status"] = "ran"
    result["columns"] = [name for name, *_ in found]
    result["ratios"] = [["shardloop native", name] for name in result["columns"][1:]]
    result["notes"] = ([f"server pinned to CPU {min(cpus[0])}, load generator to CPU {min(cpus[1])}"]
                       if cpus[0] else ["one usable CPU: server and load generator share it (not pinned)"]) + notes
    row = result["results"].setdefault(f"echo {SIZE // 1024}KiB", {})
    for name, argv, env, why_not in found:
        if why_not:
            row[name] = {"skipped": f"{name}: {why_not}"}
            continue

        def step(name=name, argv=argv, env=env):
            row[name] = serverproc.guarded_cell(name, "unsupported", lambda: echo_cell(loadgen, argv, env, SIZE, cfg, cpus))
            return row[name]

        add_step(f"native echo {name}", cfg.warmup + cfg.duration + 0.5, step)
    http = result["results"].setdefault("http hello (wrk)", {})
    if not shutil.which("wrk"):
        http["shardloop native"] = {"skipped": "wrk is not installed (apt-get install wrk)"}
    else:
        def http_step():
            http["shardloop native"] = serverproc.guarded_cell("shardloop native", "unsupported",
                                                               lambda: http_cell(bin_dir, cfg, cpus))
            return http["shardloop native"]

        add_step("native http hello shardloop native", sum(http_bench.wrk_seconds(cfg)) + 1.0, http_step)
    return result


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin-dir", default=BIN_DIR)
    ap.add_argument("--connections", type=int, default=100)
    ap.add_argument("--size", type=int, default=SIZE)
    ap.add_argument("--duration", type=float, default=5.0)
    ap.add_argument("--warmup", type=float, default=1.0)
    ap.add_argument("--json", help="also write the results here")
    ap.add_argument("--echo-only", action="store_true", help="skip the cross-shard benchmark")
    args = ap.parse_args()
    cfg = types.SimpleNamespace(connections=args.connections, duration=args.duration, warmup=args.warmup)
    cpus = serverproc.cpu_split()
    loadgen = echo_bench.build_loadgen()
    found, notes = servers(args.bin_dir, io_uring=True)
    with open("/proc/loadavg") as f:
        load_before = f.read().split()[:3]
    results = {}
    for name, argv, env, why_not in found:
        if why_not:
            notes.append(f"{name}: skipped ({why_not})")
            continue
        try:
            results[name] = echo_cell(loadgen, argv, env, args.size, cfg, cpus)
        except Exception as e:  # one broken server must not hide the others
            results[name] = {"error": f"{type(e).__name__}: {e}"}
    with open("/proc/loadavg") as f:
        load_after = f.read().split()[:3]

    server_cpus, load_cpus = cpus
    print(f"echo, {args.size} B, {args.connections} connections, {args.duration:g} s; "
          f"server on CPU {sorted(server_cpus or [])}, load on CPU {sorted(load_cpus or [])}; "
          f"load average {' '.join(load_before)} -> {' '.join(load_after)}")
    print(f"{'server':26} {'req/s':>10} {'user us/req':>12} {'sys us/req':>11} {'p50 us':>8} {'p99 us':>8}")
    for name, r in results.items():
        if "error" in r:
            print(f"{name:26} {r['error']}")
        else:
            cpu, lat = r["cpu_us_per_request"], r["latency_us"]
            print(f"{name:26} {r['value']:10.0f} {cpu['user']:12.3f} {cpu['sys']:11.3f} "
                  f"{lat['p50']:8.1f} {lat['p99']:8.1f}")
    for note in notes:
        print(note)

    cross_result = None if args.echo_only else cross_shard(args.bin_dir)
    if cross_result is not None:
        print("cross-shard (2 shards):", json.dumps(cross_result))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"echo": results, "notes": notes, "load_average": [load_before, load_after],
                       "cross_shard": cross_result}, f, indent=2)


if __name__ == "__main__":
    main()
