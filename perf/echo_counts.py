"""Counts, not times: one Protocol echo server on shardloop (epoll or
io_uring) driven by the C++ load generator, then the loop's I/O counters
(Loop._io_stats) divided by the requests served, and the server's CPU per
request. Load on a shared machine moves req/s a lot; it moves these counts
little, so they explain a gap between backends where timings cannot.

    python perf/echo_counts.py --size 102400 --connections 100 --duration 3
"""

import argparse
import json
import os
import resource
import signal
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import echo_bench  # noqa: E402
import serverproc  # noqa: E402

SERVER = r"""
import asyncio, json, signal, sys
import shardloop

calls = 0

class Echo(asyncio.Protocol):
    def connection_made(self, transport):
        self.transport = transport

    def data_received(self, data):
        global calls
        calls += 1
        self.transport.write(data)

async def main(loop):
    server = await loop.create_server(Echo, "127.0.0.1", 0)
    stop = loop.create_future()
    loop.add_signal_handler(signal.SIGTERM, stop.set_result, None)
    print("READY", server.sockets[0].getsockname()[1], flush=True)
    await stop
    stats = loop._io_stats() if hasattr(loop, "_io_stats") else {"buffers": 0, "delivered_bytes": 0, "deliveries": 0}
    stats["data_received"] = calls
    stats["backend"] = loop.io_backend
    print(json.dumps(stats), flush=True)

loop = shardloop.new_event_loop(io_uring=sys.argv[1] == "io_uring")
loop.run_until_complete(main(loop))
loop.close()
"""


def tcp_segments():
    """(InSegs, OutSegs) of the whole machine: loopback traffic counts
    twice, once each way; other processes' traffic is noise."""
    with open("/proc/net/snmp") as f:
        rows = [line.split() for line in f if line.startswith("Tcp:")]
    fields = dict(zip(rows[0][1:], rows[1][1:]))
    return int(fields["InSegs"]), int(fields["OutSegs"])


def switches(pid):
    with open(f"/proc/{pid}/status") as f:
        return sum(int(line.split()[1]) for line in f if "ctxt_switches" in line)


def one(backend, args, exe):
    server = subprocess.Popen([args.python, "-c", SERVER, backend], stdout=subprocess.PIPE, text=True)
    try:
        serverproc.pin(server.pid, {0})
        port = int(server.stdout.readline().split()[1])
        cpu0 = serverproc.cpu_times(server.pid)
        prof = None
        if args.perf:
            # perf's own sampling costs the server little at this rate.
            prof = subprocess.Popen(["perf", "record", "-q", "-F", "999", "-g", "-p", str(server.pid), "-o",
                                     f"{args.perf}.{backend}.data"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            # And the load generator's CPU: its kernel work depends on the server.
            prof_load = subprocess.Popen(["perf", "record", "-q", "-F", "999", "-g", "-C", "1", "-o",
                                          f"{args.perf}.{backend}.load.data"], stdout=subprocess.DEVNULL,
                                         stderr=subprocess.DEVNULL)
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        seg0, sw0 = tcp_segments(), switches(server.pid)
        load = subprocess.run([exe, "--port", str(port), "--connections", str(args.connections), "--size",
                               str(args.size), "--duration", str(args.duration), "--warmup", "0"],
                              capture_output=True, text=True, preexec_fn=lambda: os.sched_setaffinity(0, {1}))
        cpu1 = serverproc.cpu_times(server.pid)
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        seg1, sw1 = tcp_segments(), switches(server.pid)
        if prof is not None:
            for p in (prof, prof_load):
                p.send_signal(signal.SIGINT)
                p.wait(timeout=60)
        server.send_signal(signal.SIGTERM)
        stats = json.loads(server.stdout.readline())
        server.wait(timeout=30)
    finally:
        if server.poll() is None:
            server.kill()
    result = json.loads([line for line in load.stdout.splitlines() if line.startswith("{")][-1])
    req = result["requests"]
    per = {k: round(v / req, 3) for k, v in stats.items() if isinstance(v, int) and v and k != "buffers"}
    per["buffers"] = stats.get("buffers", 0)  # a level, not a count
    per["bytes_per_delivery"] = round(stats["delivered_bytes"] / max(1, stats["deliveries"]))
    per["user_us"] = round((cpu1[0] - cpu0[0]) / req * 1e6, 1)
    per["sys_us"] = round((cpu1[1] - cpu0[1]) / req * 1e6, 1)
    # The load generator's own CPU (it waits on this server's replies).
    per["load_user_us"] = round((after.ru_utime - before.ru_utime) / req * 1e6, 1)
    per["load_sys_us"] = round((after.ru_stime - before.ru_stime) / req * 1e6, 1)
    per["segments"] = round((seg1[1] - seg0[1]) / req, 2)
    per["server_switches"] = round((sw1 - sw0) / req, 3)
    per["load_switches"] = round((after.ru_nvcsw + after.ru_nivcsw - before.ru_nvcsw - before.ru_nivcsw) / req, 3)
    per["server_busy"] = round((cpu1[0] - cpu0[0] + cpu1[1] - cpu0[1]) / result["seconds"], 2)
    return {"backend": stats["backend"], "requests": req, "rps": round(result["rps"]), "per_request": per}


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", type=int, default=100 * 1024)
    p.add_argument("--connections", type=int, default=100)
    p.add_argument("--duration", type=float, default=3.0)
    p.add_argument("--runs", type=int, default=3, help="each backend, interleaved")
    p.add_argument("--backends", default="epoll,io_uring")
    p.add_argument("--python", default=sys.executable, help="the server's interpreter (another build's venv)")
    p.add_argument("--perf", metavar="PREFIX", help="also `perf record -g` the server into PREFIX.<backend>.data")
    args = p.parse_args()
    exe = echo_bench.build_loadgen()
    for _ in range(args.runs):
        for backend in args.backends.split(","):
            print(json.dumps(one(backend, args, exe)), flush=True)


if __name__ == "__main__":
    main()
