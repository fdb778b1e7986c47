"""A benchmark server in its own process: started pinned to one CPU, ready
when a line of its output matches, its CPU time read from /proc, stopped
cleanly. Shared by the echo and HTTP parts."""

import os
import re
import signal
import subprocess
import tempfile
import time

CLK_TCK = os.sysconf("SC_CLK_TCK")


class Unsupported(Exception):
    """The server exited before it was ready because the loop raised
    NotImplementedError; the message is the loop's own."""


class ServerFailed(Exception):
    """The server exited or did not become ready for any other reason."""


def guarded_cell(loop, missing, measure):
    """measure()'s cell, or a skipped cell when the loop cannot serve
    (`missing` says what it lacks; the loop's own message goes in
    `detail`), or an error cell: one broken cell must not end a run of
    dozens."""
    try:
        return measure()
    except Unsupported as e:
        return {"skipped": f"{loop}: {missing}", "detail": str(e)}
    except Exception as e:
        if not loop.startswith("shardloop"):
            # A peer that fails here (rloop's create_server accepts no
            # connection) is a fact about the peer, reported in its cell;
            # only our own failures fail the run.
            return {"skipped": f"{loop} failed: {type(e).__name__}: {e}"}
        return {"error": f"{type(e).__name__}: {e}"}


def load_cell(requests, seconds, latency_us, cpu_user_s, cpu_sys_s):
    """The cell of a server benchmark: req/s as its value, the latency
    percentiles as the client saw them, server CPU per request."""
    n = max(requests, 1)
    return {
        "value": requests / seconds,
        "requests": requests,
        "seconds": seconds,
        "latency_us": latency_us,
        "cpu_us_per_request": {"user": cpu_user_s * 1e6 / n, "sys": cpu_sys_s * 1e6 / n},
    }


def cpu_split():
    """(server CPUs, load CPUs): disjoint sets when there are two or more
    usable CPUs, so that the load generator does not steal the server's core;
    both None (no pinning) on a single CPU."""
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        return None, None
    return {cpus[0]}, {cpus[1]}


def pin(pid, cpus):
    if cpus:
        os.sched_setaffinity(pid, cpus)


def cpu_times(pid):
    """(user, system) CPU seconds of the process so far, all threads."""
    with open(f"/proc/{pid}/stat") as f:
        stat = f.read()
    # The command name (field 2) may contain spaces and parentheses; the
    # numeric fields start after the last ')'. utime and stime are fields 14
    # and 15, i.e. the 12th and 13th after it.
    fields = stat[stat.rindex(")") + 2:].split()
    return int(fields[11]) / CLK_TCK, int(fields[12]) / CLK_TCK


class Server:
    """Context manager around one server process."""

    def __init__(self, argv, ready_pattern, cpus=None, start_timeout=20.0, env=None, cwd=None):
        self.argv = argv
        self.ready = re.compile(ready_pattern)
        self.cpus = cpus
        self.start_timeout = start_timeout
        self.env = env
        self.cwd = cwd
        self.proc = None
        self.port = None
        # Output goes to a file, not a pipe: nobody reads the server while it
        # is under load, and a full pipe would block it mid-benchmark.
        self.log = tempfile.TemporaryFile(mode="w+")

    def __enter__(self):
        self.proc = subprocess.Popen(self.argv, stdin=subprocess.DEVNULL, stdout=self.log,
                                     stderr=subprocess.STDOUT, env=self.env, cwd=self.cwd)
        # Pinned right after the start: a Python server has created no
        # threads yet, and the ones it creates later inherit the mask.
        pin(self.proc.pid, self.cpus)
        deadline = time.monotonic() + self.start_timeout
        while True:
            m = self.ready.search(self.output())
            if m:
                if m.groupdict().get("port"):
                    self.port = int(m.group("port"))
                return self
            if self.proc.poll() is not None:
                self._raise_exited()
            if time.monotonic() > deadline:
                self.stop()
                raise ServerFailed(f"not ready after {self.start_timeout:.0f} s: {self.tail()}")
            time.sleep(0.02)

    def __exit__(self, *exc):
        self.stop()
        self.log.close()

    def output(self):
        self.log.flush()
        self.log.seek(0)
        return self.log.read()

    def tail(self, lines=3):
        text = self.output().strip().splitlines()
        return " | ".join(text[-lines:]) if text else "(no output)"

    def _raise_exited(self):
        out = self.output()
        nie = [l for l in out.splitlines() if "NotImplementedError" in l]
        if nie:
            raise Unsupported(nie[-1].split("NotImplementedError:", 1)[-1].strip())
        raise ServerFailed(f"exited with status {self.proc.returncode}: {self.tail()}")

    def check_alive(self):
        """Raise Unsupported/ServerFailed if the server has died (e.g. a loop
        that failed only once a client connected)."""
        if self.proc.poll() is not None:
            self._raise_exited()

    def cpu(self):
        return cpu_times(self.proc.pid)

    def stop(self):
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGINT)
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
