"""Soak (issue 17): a mixed load on shardloop for a fixed time, on 1 and 2
shards at once (one child process each), with RSS, open fds and threads
sampled every --sample seconds.

Each child runs ``shardloop.run(main(), shards=N)``. Every shard runs the
same mix against servers on its own runtime (created with reuse_port=True,
so on 2 shards each listens on both): TCP connection churn (connect, echo
1-4 KiB, close), TLS connection churn (handshake, echo, close), UDP echo
(one datagram in flight), subprocesses (`cat` echoing through pipes),
bursts of timers half of which are cancelled, and cross-shard calls
(submit_to to the next shard, whose answer is checked). Every echo is
compared byte for byte; anything lost, late (30 s) or wrong is an error.

Sampling pauses the load: the workers finish what they have in flight and
wait, the servers' connections close, then the child reads /proc/self
(VmRSS, Threads, fd/). Open fds are only comparable at such quiet points.
A sample taken before --warmup seconds is not judged; after it, a sample
more than --growth (5 %) above the first judged one, in any of the three,
fails the run.

usage: soak.py [--duration S] [--warmup S] [--sample S] [--shards 1,2]
               [--tcp N] [--tls N] [--json PATH]
--tcp/--tls are the connection targets for the whole run (all children
together); each shard paces itself to its share, and falling short of a
target fails the run too. Exit status 0 only when every child passed.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import shutil
import ssl
import subprocess
import sys
import tempfile
import threading

ECHO_TIMEOUT = 30.0


# ---------------------------------------------------------------- child


class Totals:
    """What one shard did; read by shard 0 only while the load is paused."""

    def __init__(self):
        self.tcp = self.tls = self.udp = self.procs = self.timers = self.cross = 0
        self.errors: list[str] = []
        self.in_flight = 0
        self.served = 0  # server-side connections open on this shard


class Gate:
    """Pauses every shard's workers for a sample (a threading.Event: the
    shards are threads)."""

    def __init__(self):
        self.open = threading.Event()
        self.open.set()

    async def wait(self):
        while not self.open.is_set():
            await asyncio.sleep(0.005)


def proc_sample():
    status = {}
    with open("/proc/self/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            status[key] = value.split()
    return {"rss_kib": int(status["VmRSS"][0]), "threads": int(status["Threads"][0]),
            "fds": len(os.listdir("/proc/self/fd"))}


class EchoServer(asyncio.Protocol):
    def __init__(self, totals):
        self.totals = totals

    def connection_made(self, transport):
        self.transport = transport
        self.totals.served += 1

    def data_received(self, data):
        self.transport.write(data)

    def eof_received(self):
        return None  # close after our echo is out

    def connection_lost(self, exc):
        self.totals.served -= 1


class UdpEcho(asyncio.DatagramProtocol):
    def connection_made(self, transport):
        self.transport = transport

    def datagram_received(self, data, addr):
        self.transport.sendto(data, addr)


class UdpClient(asyncio.DatagramProtocol):
    def __init__(self):
        self.waiter = None

    def datagram_received(self, data, addr):
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_result(data)


async def paced(totals, gate, stop, rate, body, name):
    """Runs body() about `rate` times a second until `stop`; each run
    counts as in flight (so a sample can wait for it)."""
    loop = asyncio.get_running_loop()
    interval = 1.0 / rate
    next_at = loop.time()
    while loop.time() < stop:
        await gate.wait()
        totals.in_flight += 1
        try:
            await asyncio.wait_for(body(), ECHO_TIMEOUT)
        except Exception as exc:  # noqa: BLE001 - every failure is reported
            totals.errors.append("%s: %r" % (name, exc))
        finally:
            totals.in_flight -= 1
        next_at = max(next_at + interval, loop.time() - 1.0)  # catch up at most 1 s
        delay = next_at - loop.time()
        await asyncio.sleep(delay if delay > 0 else 0)


async def shard_load(cfg, totals, gate, ports, tls_ctx):
    import shardloop

    loop = asyncio.get_running_loop()
    me, n = shardloop.current_shard(), shardloop.shard_count()
    stop = loop.time() + cfg["duration"]
    rnd = random.Random(me)

    async def echo_once(use_tls):
        data = rnd.randbytes(rnd.randint(1024, 4096))
        reader, writer = await asyncio.open_connection(
            "127.0.0.1", ports["tls" if use_tls else "tcp"], ssl=tls_ctx if use_tls else None,
            server_hostname="localhost" if use_tls else None)
        try:
            writer.write(data)
            got = await reader.readexactly(len(data))
            if got != data:
                raise AssertionError("echo differs")
        finally:
            writer.close()
            await writer.wait_closed()
        if use_tls:
            totals.tls += 1
        else:
            totals.tcp += 1

    udp_client = UdpClient()
    udp_tr, _ = await loop.create_datagram_endpoint(lambda: udp_client, remote_addr=("127.0.0.1", ports["udp"]))

    async def udp_once():
        data = rnd.randbytes(rnd.randint(1, 1400))
        udp_client.waiter = loop.create_future()
        udp_tr.sendto(data)
        got = await asyncio.wait_for(udp_client.waiter, 5)
        if got != data:
            raise AssertionError("udp echo differs")
        totals.udp += 1

    async def proc_once():
        data = rnd.randbytes(2048)
        proc = await asyncio.create_subprocess_exec("cat", stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        out, _ = await proc.communicate(data)
        if out != data or proc.returncode != 0:
            raise AssertionError("cat returned %d bytes, status %s" % (len(out), proc.returncode))
        totals.procs += 1

    async def timers_once():
        fired = []
        handles = [loop.call_later(rnd.random() * 0.05, fired.append, i) for i in range(100)]
        for h in handles[::2]:
            h.cancel()
        await asyncio.sleep(0.06)  # later than every timer above: they have all run
        if sorted(fired) != list(range(1, 100, 2)):
            raise AssertionError("timers: %d fired, expected the 50 not cancelled" % len(fired))
        totals.timers += 50

    async def cross_once():
        x = rnd.randrange(1 << 30)
        got = await shardloop.submit_to((me + 1) % n, pow, x, 2)
        if got != x * x:
            raise AssertionError("cross-shard call returned %r" % (got,))
        totals.cross += 1

    share = cfg["shards"]  # cfg's targets are this child's: split among its shards
    jobs = []
    for _ in range(cfg["tcp_workers"]):
        jobs.append(paced(totals, gate, stop, cfg["tcp"] / cfg["duration"] / share / cfg["tcp_workers"],
                          lambda: echo_once(False), "tcp"))
    for _ in range(cfg["tls_workers"]):
        jobs.append(paced(totals, gate, stop, cfg["tls"] / cfg["duration"] / share / cfg["tls_workers"],
                          lambda: echo_once(True), "tls"))
    jobs.append(paced(totals, gate, stop, 100, udp_once, "udp"))
    jobs.append(paced(totals, gate, stop, 2, proc_once, "subprocess"))
    jobs.append(paced(totals, gate, stop, 10, timers_once, "timers"))
    jobs.append(paced(totals, gate, stop, 200, cross_once, "cross-shard"))
    await asyncio.gather(*jobs)
    udp_tr.close()


async def child_main(cfg):
    import shardloop

    n = shardloop.shard_count()
    loop = asyncio.get_running_loop()
    totals = [Totals() for _ in range(n)]
    gate = Gate()
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_ctx.load_cert_chain(cfg["cert"], cfg["key"])
    client_ctx = ssl.create_default_context(cafile=cfg["cert"])

    tcp = await loop.create_server(lambda: EchoServer(totals[shardloop.current_shard()]),
                                   "127.0.0.1", 0, reuse_port=True, backlog=1024)
    tls = await loop.create_server(lambda: EchoServer(totals[shardloop.current_shard()]),
                                   "127.0.0.1", 0, reuse_port=True, backlog=1024, ssl=server_ctx)
    ports = {"tcp": tcp.sockets[0].getsockname()[1], "tls": tls.sockets[0].getsockname()[1]}

    async def udp_server():
        tr, _ = await asyncio.get_running_loop().create_datagram_endpoint(UdpEcho, local_addr=("127.0.0.1", 0))
        return tr

    udp_servers = [await shardloop.submit_to(k, udp_server) for k in range(n)]

    samples = []
    start = loop.time()

    async def sampler():
        while loop.time() - start < cfg["duration"]:
            await asyncio.sleep(cfg["sample"])
            if loop.time() - start >= cfg["duration"]:
                break
            gate.open.clear()
            t0 = loop.time()
            while any(t.in_flight or t.served for t in totals) and loop.time() - t0 < ECHO_TIMEOUT:
                await asyncio.sleep(0.005)
            s = proc_sample()
            s.update(t=round(loop.time() - start, 1), pause_s=round(loop.time() - t0, 3),
                     tcp=sum(t.tcp for t in totals), tls=sum(t.tls for t in totals))
            samples.append(s)
            gate.open.set()

    async def load(k):
        ports_k = dict(ports, udp=udp_servers[k].get_extra_info("sockname")[1])
        await shardloop.submit_to(k, shard_load, cfg, totals[k], gate, ports_k, client_ctx)

    await asyncio.gather(sampler(), *(load(k) for k in range(n)))
    for k, tr in enumerate(udp_servers):
        await shardloop.submit_to(k, tr.close)  # each belongs to its shard's loop
    tcp.close()
    tls.close()
    await tcp.wait_closed()
    await tls.wait_closed()
    keys = ("tcp", "tls", "udp", "procs", "timers", "cross")
    return {
        "shards": n,
        "io_backend": loop.io_backend,
        "totals": {k: sum(getattr(t, k) for t in totals) for k in keys},
        "errors": [e for t in totals for e in t.errors][:50],
        "error_count": sum(len(t.errors) for t in totals),
        "samples": samples,
    }


def run_child(cfg):
    import shardloop

    result = shardloop.run(child_main(cfg), shards=cfg["shards"])
    json.dump(result, sys.stdout)


# ---------------------------------------------------------------- parent


def judge(result, cfg):
    """The reasons this child's run fails (empty when it passed)."""
    problems = []
    if result["error_count"]:
        problems.append("%d errors, first: %s" % (result["error_count"], result["errors"][:3]))
    judged = [s for s in result["samples"] if s["t"] >= cfg["warmup"]]
    if len(judged) < 2:
        problems.append("only %d samples after the warm-up" % len(judged))
    else:
        base = judged[0]
        for key in ("rss_kib", "fds", "threads"):
            top = max(s[key] for s in judged)
            if top > base[key] * (1 + cfg["growth"]):
                problems.append("%s grew from %d to %d after the warm-up (> %d %%)"
                                % (key, base[key], top, cfg["growth"] * 100))
    share = cfg["shards"] / sum(cfg["shard_list"])
    for key in ("tcp", "tls"):
        want = int(cfg[key] * share * 0.95)  # pacing may trail by a few seconds' worth
        if result["totals"][key] < want:
            problems.append("%d %s connections, wanted at least %d" % (result["totals"][key], key, want))
    return problems


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--duration", type=float, default=600)
    ap.add_argument("--warmup", type=float, default=60)
    ap.add_argument("--sample", type=float, default=10)
    ap.add_argument("--shards", default="1,2")
    ap.add_argument("--tcp", type=int, default=100_000)
    ap.add_argument("--tls", type=int, default=10_000)
    ap.add_argument("--growth", type=float, default=0.05)
    ap.add_argument("--json")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        run_child(json.loads(args.child))
        return 0

    shard_list = [int(s) for s in args.shards.split(",")]
    tmp = tempfile.mkdtemp(prefix="shardloop-soak-")
    try:
        cert, key = os.path.join(tmp, "cert.pem"), os.path.join(tmp, "key.pem")
        subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
                        "-nodes", "-keyout", key, "-out", cert, "-days", "2", "-subj", "/CN=localhost",
                        "-addext", "subjectAltName=DNS:localhost"], check=True, capture_output=True)
        children = []
        for shards in shard_list:
            # Each child's share of the targets is proportional to its shards.
            cfg = dict(duration=args.duration, warmup=args.warmup, sample=args.sample, shards=shards,
                       tcp=args.tcp * shards / sum(shard_list), tls=args.tls * shards / sum(shard_list),
                       tcp_workers=8, tls_workers=2, cert=cert, key=key)
            proc = subprocess.Popen([sys.executable, os.path.abspath(__file__), "--child", json.dumps(cfg)],
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            children.append((shards, cfg, proc))
        report, failed = [], False
        for shards, cfg, proc in children:
            out, err = proc.communicate(timeout=args.duration + 300)
            if proc.returncode != 0:
                print("soak: the %d-shard child exited with %s\n%s" % (shards, proc.returncode, err[-4000:]))
                failed = True
                continue
            result = json.loads(out)
            cfg_judge = dict(cfg, growth=args.growth, shard_list=shard_list,
                             tcp=args.tcp, tls=args.tls)
            problems = judge(result, cfg_judge)
            result["problems"] = problems
            report.append(result)
            failed |= bool(problems)
            t = result["totals"]
            print("soak: %d shard(s), %s, %ds: %d TCP + %d TLS connections, %d UDP echoes, %d subprocesses, "
                  "%d timers, %d cross-shard calls, %d errors"
                  % (shards, result["io_backend"], args.duration, t["tcp"], t["tls"], t["udp"], t["procs"],
                     t["timers"], t["cross"], result["error_count"]))
            print("      t(s)  RSS(KiB)  fds  threads  pause(s)")
            for s in result["samples"]:
                print("    %6.1f  %8d  %3d  %7d  %8.3f%s" % (s["t"], s["rss_kib"], s["fds"], s["threads"], s["pause_s"],
                                                          "" if s["t"] >= args.warmup else "  (warm-up)"))
            for p in problems:
                print("    FAIL:", p)
            if err.strip():
                print("    stderr:", err.strip()[-2000:])
        if args.json:
            with open(args.json, "w") as f:
                json.dump(report, f, indent=1)
        print("soak:", "FAILED" if failed else "passed")
        return 1 if failed else 0
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
