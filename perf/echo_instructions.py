#!/usr/bin/env python3
"""Server instructions per echo request under callgrind: the repeatable
counterpart of echo_bench.py's CPU µs/request, which swing by 2x on this
shared 2-core VM.

Each echo server runs under callgrind twice, driven by the load generator
(a few connections) for a short and a long time; the difference in
instructions over the difference in requests completed is the server's
user-space cost per request, with start-up and shutdown cancelled out (the
kernel's share is not counted: callgrind sees user space only).

    python perf/echo_instructions.py [--loops shardloop,uvloop,asyncio]
        [--servers protocol,streams,sock] [--size 1024] [--duration 4] [--tls]

--tls measures servers/echo_tls.py (servers protocol and streams) under the
load generator's TLS mode, with a certificate made for the run; handshakes
happen in both runs, so they cancel out too.
"""

import argparse
import glob
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import echo_bench  # noqa: E402
import tls_bench  # noqa: E402

TOTALS = re.compile(r"^(?:summary|totals):\s+(\d+)", re.M)


def run_once(loadgen, loop, server, size, duration, connections, tls=None):
    """(instructions, requests) of one server process: all of its run,
    start-up included, and the requests the load generator completed.
    tls: None, or the (cert, key) of a TLS server."""
    if tls:
        server_argv = tls_bench.server_argv(loop, server, *tls)
        loadgen_tls = ["--tls", "--tls-ca", tls[0]]
    else:
        server_argv = [sys.executable, os.path.join(echo_bench.SERVERS_DIR, echo_bench.SERVERS[server]),
                       "--loop", loop, "--port", "0"]
        loadgen_tls = []
    return run_argv(loadgen, server_argv, size, duration, connections, loadgen_tls)


def run_argv(loadgen, server_argv, size, duration, connections, loadgen_args=()):
    """run_once for any server command that prints READY <port>."""
    out_dir = tempfile.mkdtemp(prefix="echo-instr-")
    argv = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out_dir}/cg.%p", *server_argv]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        port = None
        for line in proc.stdout:
            m = re.search(r"READY (\d+)", line)
            if m:
                port = int(m.group(1))
                break
        if port is None:
            raise RuntimeError(f"{server_argv}: the server did not start")
        gen = subprocess.run([loadgen, "--port", str(port), "--connections", str(connections),
                              "--size", str(size), "--duration", str(duration), "--warmup", "0", *loadgen_args],
                             stdout=subprocess.PIPE, text=True, check=True)
        result = json.loads(gen.stdout.strip().splitlines()[-1])
    finally:
        proc.terminate()
        proc.wait()
    instructions = 0
    for path in glob.glob(os.path.join(out_dir, "cg.*")):
        with open(path) as f:
            m = TOTALS.search(f.read())
        if m:
            instructions += int(m.group(1))
    shutil.rmtree(out_dir, ignore_errors=True)
    return instructions, result["requests"]


def measure(loadgen, loop, server, size, duration, connections, tls=None):
    """Instructions per request from a short and a long run: start-up,
    connection set-up and shutdown cancel out in the difference."""
    short_i, short_r = run_once(loadgen, loop, server, size, duration / 3, connections, tls)
    long_i, long_r = run_once(loadgen, loop, server, size, duration, connections, tls)
    return (long_i - short_i) / max(long_r - short_r, 1), long_r - short_r


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--loops", default="shardloop,uvloop,asyncio")
    p.add_argument("--servers", help="default protocol,streams,sock (protocol,streams with --tls)")
    p.add_argument("--size", type=int, default=1024)
    p.add_argument("--duration", type=float, default=4.0)
    p.add_argument("--connections", type=int, default=4)
    p.add_argument("--tls", action="store_true", help="TLS echo servers (protocol, streams)")
    args = p.parse_args()
    if not shutil.which("valgrind") or not shutil.which("callgrind_control"):
        sys.exit("valgrind (with callgrind_control) is required")
    if args.servers is None:
        args.servers = ",".join(tls_bench.APIS if args.tls else echo_bench.SERVERS)
    tls = None
    if args.tls:
        bad = set(args.servers.split(",")) - set(tls_bench.APIS)
        if bad:
            p.error(f"--tls: no TLS server {sorted(bad)}; choose from {','.join(tls_bench.APIS)}")
        loadgen = tls_bench.build_tls_loadgen()
        cert_dir = tempfile.mkdtemp(prefix="echo-instr-tls-")
        tls = tls_bench.make_certificate(cert_dir)
    else:
        loadgen = echo_bench.build_loadgen()
    loops = args.loops.split(",")
    kind = "TLS echo" if tls else "echo"
    print(f"server instructions per {args.size}-byte {kind} request (callgrind, user space)")
    print("| server | " + " | ".join(loops) + " |")
    print("|---|" + "---:|" * len(loops))
    for server in args.servers.split(","):
        cells = []
        for loop in loops:
            per_request, requests = measure(loadgen, loop, server, args.size, args.duration, args.connections, tls)
            cells.append(f"{per_request:,.0f} ({requests} req)")
        print(f"| {server} | " + " | ".join(cells) + " |", flush=True)
    if tls:
        shutil.rmtree(cert_dir, ignore_errors=True)


if __name__ == "__main__":
    main()
