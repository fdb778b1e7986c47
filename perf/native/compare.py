"""Native echo servers, same load, same core, one run: shardloop's C++ API
(one shard), a plain C epoll server, Go (GOMAXPROCS=1, when `go` is
installed) and Node.js (when `node` is installed). Closed loop, 1 KiB,
100 connections by default; server pinned to one CPU, load generator to
another. Reports req/s and the server's user/system CPU per request
(/proc/PID/stat), then the cross-shard messaging benchmark.

  python3 perf/native/compare.py --bin-dir build-native/perf/native [--duration 5]
"""

import argparse
import json
import os
import shutil
import subprocess
import sys
import types

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

import echo_bench  # noqa: E402  (the load generator: build and run)
import serverproc  # noqa: E402


def servers(bin_dir):
    """(name, argv, env) of every server that can run here, and a note for
    those that cannot."""
    found, notes = [], []
    found.append(("shardloop native", [os.path.join(bin_dir, "echo_server"), "--port", "0", "--shards", "1"], None))
    found.append(("plain C epoll", [os.path.join(bin_dir, "plain_epoll_echo"), "0"], None))
    go = shutil.which("go")
    if go:
        exe = os.path.join(bin_dir, "echo_go")
        res = subprocess.run([go, "build", "-o", exe, os.path.join(HERE, "echo_go.go")], capture_output=True, text=True,
                             env=dict(os.environ, GOCACHE=os.path.abspath(os.path.join(bin_dir, "gocache")), GO111MODULE="off"))
        if res.returncode == 0:
            found.append(("Go (GOMAXPROCS=1)", [exe, "0"], dict(os.environ, GOMAXPROCS="1")))
        else:
            notes.append(f"Go: build failed: {res.stderr.strip()[-300:]}")
    else:
        notes.append("Go: skipped (no `go` on PATH)")
    node = shutil.which("node")
    if node:
        found.append((f"Node.js {subprocess.run([node, '--version'], capture_output=True, text=True).stdout.strip()}",
                      [node, os.path.join(HERE, "echo_node.js"), "0"], None))
    else:
        notes.append("Node.js: skipped (no `node` on PATH)")
    return found, notes


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin-dir", required=True)
    ap.add_argument("--connections", type=int, default=100)
    ap.add_argument("--size", type=int, default=1024)
    ap.add_argument("--duration", type=float, default=5.0)
    ap.add_argument("--warmup", type=float, default=1.0)
    ap.add_argument("--json", help="also write the results here")
    args = ap.parse_args()
    cfg = types.SimpleNamespace(connections=args.connections, duration=args.duration, warmup=args.warmup)
    server_cpus, load_cpus = serverproc.cpu_split()
    loadgen = echo_bench.build_loadgen()
    found, notes = servers(args.bin_dir)
    with open("/proc/loadavg") as f:
        load_before = f.read().split()[:3]
    results = {}
    for name, argv, env in found:
        try:
            with serverproc.Server(argv, r"READY (?P<port>\d+)", cpus=server_cpus, env=env) as server:
                r = echo_bench.run_loadgen(loadgen, server, server.port, args.size, cfg, load_cpus)
            n = max(r["requests"], 1)
            results[name] = {
                "req_per_s": r["requests"] / r["seconds"],
                "user_us_per_req": r["server_cpu_s"]["user"] * 1e6 / n,
                "sys_us_per_req": r["server_cpu_s"]["sys"] * 1e6 / n,
                "p50_us": r["latency_us"]["p50"],
                "p99_us": r["latency_us"]["p99"],
            }
        except Exception as e:  # one broken server must not hide the others
            results[name] = {"error": f"{type(e).__name__}: {e}"}
    with open("/proc/loadavg") as f:
        load_after = f.read().split()[:3]

    print(f"echo, {args.size} B, {args.connections} connections, {args.duration:g} s; "
          f"server on CPU {sorted(server_cpus or [])}, load on CPU {sorted(load_cpus or [])}; "
          f"load average {' '.join(load_before)} -> {' '.join(load_after)}")
    print(f"{'server':24} {'req/s':>10} {'user us/req':>12} {'sys us/req':>11} {'p50 us':>8} {'p99 us':>8}")
    for name, r in results.items():
        if "error" in r:
            print(f"{name:24} {r['error']}")
        else:
            print(f"{name:24} {r['req_per_s']:10.0f} {r['user_us_per_req']:12.3f} {r['sys_us_per_req']:11.3f} "
                  f"{r['p50_us']:8.1f} {r['p99_us']:8.1f}")
    for note in notes:
        print(note)

    cross = subprocess.run([os.path.join(args.bin_dir, "cross_shard_bench")], capture_output=True, text=True, timeout=300)
    cross_result = json.loads(cross.stdout) if cross.returncode == 0 else {"error": cross.stderr[-500:]}
    print("cross-shard (2 shards):", json.dumps(cross_result))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"echo": results, "notes": notes, "load_average": [load_before, load_after],
                       "cross_shard": cross_result}, f, indent=2)


if __name__ == "__main__":
    main()
