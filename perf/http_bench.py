"""HTTP benchmarks under wrk: a bare httptools server and uvicorn (its
httptools protocol, `--loop module:new_event_loop`) serving a plain-text
ASGI app. Same layout per cell as the echo part: req/s, latency percentiles,
server CPU per request; server and wrk on separate CPUs."""

import importlib.metadata
import json
import os
import re
import shutil
import socket
import subprocess
import sys

import serverproc

HERE = os.path.dirname(os.path.abspath(__file__))
SERVERS_DIR = os.path.join(HERE, "servers")
WRK_SCRIPT = os.path.join(HERE, "wrk_report.lua")
# The skipped cell's reason when a loop raises NotImplementedError in a server.
MISSING = "lacks the networking this server uses (raised NotImplementedError)"
# wrk's connection set-up and the servers' first requests (imports,
# specialisation) stay out of the measured run.
WRK_WARMUP_S = 1


def wrk_seconds(cfg):
    """(warm-up, measured) seconds: wrk takes whole seconds only, so a short
    (--quick) run skips the warm-up and measures one second."""
    return (WRK_WARMUP_S if cfg.warmup >= WRK_WARMUP_S else 0), max(1, round(cfg.duration))


def free_port():
    # uvicorn releases differ in whether they log the real port for --port 0,
    # so it gets a concrete one; the window for a clash is a few ms.
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def httptools_server(loop):
    return ([sys.executable, os.path.join(SERVERS_DIR, "http_httptools.py"), "--loop", loop, "--port", "0"],
            r"READY (?P<port>\d+)", None)


def uvicorn_server(loop):
    port = free_port()
    argv = [sys.executable, "-m", "uvicorn", "asgi_app:app", "--app-dir", SERVERS_DIR,
            "--host", "127.0.0.1", "--port", str(port), "--loop", f"{loop}:new_event_loop",
            "--http", "httptools", "--no-access-log", "--lifespan", "off"]
    return argv, r"Uvicorn running on", port


# name: (distribution the server needs, the oldest release that works,
# argv/ready-pattern/port builder). uvicorn takes `--loop module:callable`
# since 0.36.
SERVERS = {
    "httptools": ("httptools", (0, 6), httptools_server),
    "uvicorn": ("uvicorn", (0, 36), uvicorn_server),
}


def missing_dependency(dist, oldest):
    """None when `dist` is installed at `oldest` or later, else why not."""
    try:
        version = importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return f"{dist} is not installed (pip install '{dist}>={'.'.join(map(str, oldest))}')"
    have = tuple(int(p) for p in re.findall(r"\d+", version)[:len(oldest)])
    if have < oldest:
        return f"{dist} {version} is too old, this benchmark needs {'.'.join(map(str, oldest))} or later"
    return None


def run_wrk(port, seconds, connections, load_cpus):
    cmd = ["wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "--latency",
           "-s", WRK_SCRIPT, f"http://127.0.0.1:{port}/"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    serverproc.pin(proc.pid, load_cpus)
    try:
        out, _ = proc.communicate(timeout=seconds + 30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        raise RuntimeError("wrk did not finish")
    for line in out.splitlines():
        if line.startswith("JSON "):
            return json.loads(line[5:])
    raise RuntimeError(f"wrk failed ({proc.returncode}): {out.strip()[-300:]}")


def cell(server_name, loop, cfg, cpus):
    server_cpus, load_cpus = cpus
    argv, ready, port = SERVERS[server_name][2](loop)
    with serverproc.Server(argv, ready, cpus=server_cpus) as server:
        port = port or server.port
        warmup, seconds = wrk_seconds(cfg)
        if warmup:
            run_wrk(port, warmup, cfg.connections, load_cpus)
        u0, s0 = server.cpu()
        r = run_wrk(port, seconds, cfg.connections, load_cpus)
        u1, s1 = server.cpu()
        server.check_alive()
    if r["errors"]:
        raise RuntimeError(f"wrk counted {r['errors']} errors")
    # wrk's start-up and teardown fall inside the CPU window, unlike the echo
    # part's; a few ms against seconds of load.
    return serverproc.load_cell(r["requests"], r["seconds"], r["latency_us"], u1 - u0, s1 - s0)


def part(cfg, loops, skipped_loops, add_step):
    warmup, seconds = wrk_seconds(cfg)
    result = {
        "title": "HTTP",
        "unit": "req/s",
        "higher_is_better": True,
        "description": (f"wrk, 1 thread, {cfg.connections} keep-alive connections, 13-byte text/plain body; "
                        f"{seconds} s measured" + (f" after a {warmup} s warm-up run" if warmup else "")),
        "results": {},
    }
    if not shutil.which("wrk"):
        result.update(status="skipped", reason="wrk is not installed (apt-get install wrk)")
        return result
    result["status"] = "ran"
    cpus = serverproc.cpu_split()
    for server_name, (dist, oldest, _) in SERVERS.items():
        row = result["results"].setdefault(server_name, {})
        why_not = missing_dependency(dist, oldest)
        if server_name == "uvicorn" and not why_not:  # it serves with --http httptools
            why_not = missing_dependency(*SERVERS["httptools"][:2])
        for loop in loops:
            if loop in skipped_loops or why_not:
                row[loop] = {"skipped": skipped_loops.get(loop) or why_not}
                continue

            def step(row=row, loop=loop, server_name=server_name):
                row[loop] = serverproc.guarded_cell(loop, MISSING, lambda: cell(server_name, loop, cfg, cpus))
                return row[loop]

            add_step(f"http {server_name} {loop}", warmup + seconds + 1.0, step)
    return result
