"""Echo benchmarks: three TCP servers (Protocol, streams, sock_*) per loop,
each driven by the closed-loop C++ load generator at 1, 10 and 100 KiB, and a
UDP server (DatagramProtocol, sendto back to the sender) at 1 KiB with the
load generator's --udp mode (one connected UDP socket per "connection");
server and load on separate CPUs. Per cell: req/s, latency percentiles from
the load generator, and the server's user/system CPU per request from /proc."""

import hashlib
import json
import os
import shutil
import subprocess
import sys
import threading

import serverproc

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
SERVERS_DIR = os.path.join(HERE, "servers")
LOADGEN_SRC = os.path.join(HERE, "loadgen", "loadgen.cpp")
LOADGEN_DIR = os.path.join(ROOT, "build", "perf")
CXXFLAGS = ["-O2", "-std=c++17", "-Wall", "-Wextra"]

SERVERS = {
    "protocol": "echo_protocol.py",
    "streams": "echo_streams.py",
    "sock": "echo_sock.py",
}
SIZES = {"1KiB": 1024, "10KiB": 10 * 1024, "100KiB": 100 * 1024}
# UDP: one datagram per request, so no size above 64 KiB.
UDP_SERVERS = {"udp": "echo_udp.py"}
UDP_SIZES = {"1KiB": 1024}
QUICK_SIZES = ("1KiB",)  # --quick checks the harness; one size does that
# The skipped cell's reason when a loop raises NotImplementedError in these
# servers (it lacks part of asyncio's API they use); the loop's own message
# goes in the cell's `detail`.
MISSING = "lacks the networking these servers use (raised NotImplementedError)"


def build_loadgen(defines=(), libs=()):
    """Path of the load generator, compiled on first use; the binary's name
    carries a hash of source and flags, so an edit rebuilds it and an
    unchanged tree reuses it. `defines`/`libs` select optional parts (TLS:
    tls_bench.py)."""
    cxx = os.environ.get("CXX", "g++")
    if not shutil.which(cxx):
        raise RuntimeError(f"no C++ compiler ({cxx}) to build the load generator")
    flags = [*CXXFLAGS, *defines]
    with open(LOADGEN_SRC, "rb") as f:
        digest = hashlib.sha256(f.read() + " ".join([cxx, *flags, *libs]).encode()).hexdigest()[:12]
    exe = os.path.join(LOADGEN_DIR, f"loadgen-{digest}")
    if not os.path.exists(exe):
        os.makedirs(LOADGEN_DIR, exist_ok=True)
        tmp = f"{exe}.{os.getpid()}.tmp"
        res = subprocess.run([cxx, *flags, "-o", tmp, LOADGEN_SRC, *libs], capture_output=True, text=True)
        if res.returncode != 0:
            raise RuntimeError(f"building the load generator failed:\n{res.stderr[-2000:]}")
        os.replace(tmp, exe)  # atomic: a concurrent run never sees half a binary
    return exe


def run_loadgen(exe, server, port, size, cfg, load_cpus, extra_args=()):
    """One closed-loop run against a ready server; returns the load
    generator's JSON plus the server's CPU time over the measured interval."""
    cmd = [exe, "--port", str(port), "--connections", str(cfg.connections), "--size", str(size),
           "--duration", str(cfg.duration), "--warmup", str(cfg.warmup), *extra_args]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    serverproc.pin(proc.pid, load_cpus)
    # The load generator ends its own interval; this only catches a hang.
    watchdog = threading.Timer(cfg.warmup + cfg.duration + 30, proc.kill)
    watchdog.start()
    try:
        cpu = {}
        result = None
        for line in proc.stdout:
            line = line.strip()
            if line in ("MEASURE", "END"):
                # Sampled as the load generator crosses its own interval
                # boundaries, so CPU time and request count cover the same span.
                cpu[line] = server.cpu()
            elif line.startswith("{"):
                result = json.loads(line)
        err = proc.stderr.read().strip()
        proc.wait()
    finally:
        watchdog.cancel()
    if proc.returncode != 0 or result is None:
        server.check_alive()  # a server that died under load explains it best
        raise RuntimeError(f"load generator failed ({proc.returncode}): {err or 'no output'}")
    (u0, s0), (u1, s1) = cpu["MEASURE"], cpu["END"]
    result["server_cpu_s"] = {"user": u1 - u0, "sys": s1 - s0}
    return result


def cell(loadgen, loop, server_name, size, cfg, cpus):
    server_cpus, load_cpus = cpus
    udp = server_name in UDP_SERVERS
    script = (UDP_SERVERS if udp else SERVERS)[server_name]
    argv = [sys.executable, os.path.join(SERVERS_DIR, script), "--loop", loop, "--port", "0"]
    with serverproc.Server(argv, r"READY (?P<port>\d+)", cpus=server_cpus) as server:
        r = run_loadgen(loadgen, server, server.port, size, cfg, load_cpus, ("--udp",) if udp else ())
    result = serverproc.load_cell(r["requests"], r["seconds"], r["latency_us"],
                                  r["server_cpu_s"]["user"], r["server_cpu_s"]["sys"])
    if udp:
        result["lost"] = r["lost"]  # requests sent again after a second without an echo
    return result


def new_result(title, description):
    """(result dict of a load-generator part, not yet run; the CPU split
    between server and load generator, noted in the result)."""
    result = {"title": title, "unit": "req/s", "higher_is_better": True, "description": description,
              "results": {}}
    cpus = serverproc.cpu_split()
    if cpus[0] is None:
        result["notes"] = ["one usable CPU: server and load generator share it (not pinned)"]
    else:
        result["notes"] = [f"server pinned to CPU {min(cpus[0])}, load generator to CPU {min(cpus[1])}"]
    return result, cpus


def add_cells(result, cfg, loops, skipped_loops, add_step, grid, run_cell):
    """Registers one step per (name, size, loop) with add_step; a step puts
    run_cell(loop, name, size) in result["results"]["<name> <size>"][loop].
    grid: (step label, seconds per step, names, {size name: bytes},
    sizes kept by --quick)."""
    label, seconds, names, sizes, quick_sizes = grid
    for name in names:
        for size_name, size in sizes.items():
            if cfg.quick and size_name not in quick_sizes:
                continue
            bench = f"{name} {size_name}"
            row = result["results"].setdefault(bench, {})
            for loop in loops:
                if loop in skipped_loops:
                    row[loop] = {"skipped": skipped_loops[loop]}
                    continue

                def step(row=row, loop=loop, name=name, size=size):
                    row[loop] = run_cell(loop, name, size)
                    return row[loop]

                add_step(f"{label} {bench} {loop}", seconds, step)


def part(cfg, loops, skipped_loops, add_step):
    """Registers one step per (server, size, loop) with add_step and returns
    the part's result dict, which those steps fill in."""
    result, cpus = new_result(
        "Echo", (f"closed loop, {cfg.connections} connections, each waits for the full echo; "
                 f"{cfg.duration:g} s measured after {cfg.warmup:g} s warm-up"))
    try:
        loadgen = build_loadgen()
    except RuntimeError as e:
        result["status"] = "skipped"
        result["reason"] = str(e)
        return result
    result["status"] = "ran"

    def run_cell(loop, server_name, size):
        return serverproc.guarded_cell(loop, MISSING, lambda: cell(loadgen, loop, server_name, size, cfg, cpus))

    for servers, sizes in ((SERVERS, SIZES), (UDP_SERVERS, UDP_SIZES)):
        add_cells(result, cfg, with_io_backends(loops), skipped_loops, add_step,
                  ("echo", cfg.warmup + cfg.duration + 0.5, servers, sizes, QUICK_SIZES), run_cell)
    return result


def with_io_backends(loops):
    """`loops` with shardloop's io_uring backend right after shardloop."""
    out = []
    for loop in loops:
        out.append(loop)
        if loop == "shardloop":
            out.append("shardloop_uring")
    return out
