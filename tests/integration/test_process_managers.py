"""Several processes behind a process manager, each worker on the loop under
test: `uvicorn --workers 2 --loop ...` and gunicorn with uvicorn's worker
class (gunicorn_workers.py), serving pid_app.py.

For each: both workers answer (two pids seen), every answer comes from the
intended loop, and SIGTERM to the manager stops the workers gracefully: a
slow request already in flight gets its whole response and the manager
exits with status 0. Variants: asyncio's loop (the reference), shardloop,
and a shardloop runtime of 2 shards in each worker (the app reaches shard 1
with submit_to, from another thread).
"""

import concurrent.futures
import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time

import pytest

import pid_app
from _integration_support import SKIP_REASON

HERE = os.path.dirname(os.path.abspath(__file__))

VARIANTS = [pytest.param("asyncio", id="asyncio")] + [
    pytest.param(name, id=name, marks=pytest.mark.skipif(SKIP_REASON is not None, reason=str(SKIP_REASON)))
    for name in ("shardloop", "sharded")]
LOOP_TYPE = {"asyncio": "asyncio.unix_events._UnixSelectorEventLoop", "shardloop": "shardloop._loop.Loop",
             "sharded": "shardloop._loop.Loop"}
UVICORN_LOOP = {"asyncio": "asyncio", "shardloop": "shardloop:new_event_loop", "sharded": "pid_app:sharded_loop"}
GUNICORN_WORKER = {"asyncio": "gunicorn_workers.AsyncioWorker", "shardloop": "gunicorn_workers.ShardloopWorker",
                   "sharded": "gunicorn_workers.ShardedShardloopWorker"}


@pytest.fixture
def hang_timeout():
    return 90


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get(port, path, timeout=15.0):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("GET", path, headers={"Connection": "close"})
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def wait_listening(port, child, timeout=30.0):
    deadline = time.monotonic() + timeout
    while True:
        try:
            get(port, "/pid", timeout=2)
            return
        except OSError:
            if child.poll() is not None or time.monotonic() > deadline:
                child.kill()
                raise AssertionError(f"nothing answers on {port}: {child.communicate()[0]}")
            time.sleep(0.1)


def answers_from_both_workers(port, variant, timeout=30.0):
    """Requests from 8 threads at once until two pids have answered."""
    seen = {}
    deadline = time.monotonic() + timeout
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        while len(seen) < 2:
            assert time.monotonic() < deadline, f"only pids {sorted(seen)} answered within {timeout}s"
            for status, body in pool.map(lambda _: get(port, "/pid"), range(16)):
                assert status == 200
                info = json.loads(body)
                assert info["loop"] == LOOP_TYPE[variant], info
                if variant == "sharded":
                    assert info["shards"] == 2
                    assert info["other_shard_thread"] not in (None, info["thread"]), info
                else:
                    assert info["shards"] == 1 and info["other_shard_thread"] is None, info
                seen[info["pid"]] = info
    return seen


def sigterm_with_request_in_flight(child, port, started_dir):
    """SIGTERM to the manager while /slow is being served: the response
    arrives whole, the manager exits 0."""
    result = {}

    def slow():
        try:
            result["answer"] = get(port, "/slow", timeout=30)
        except Exception as exc:  # noqa: BLE001 - reported below
            result["error"] = exc

    client = threading.Thread(target=slow)
    client.start()
    deadline = time.monotonic() + 15
    while not os.listdir(started_dir):
        assert time.monotonic() < deadline and client.is_alive(), f"/slow never started: {result}"
        time.sleep(0.02)
    child.send_signal(signal.SIGTERM)
    client.join(30)
    output, _ = child.communicate(timeout=30)
    assert "error" not in result, f"{result['error']!r}\n{output}"
    status, body = result["answer"]
    assert status == 200, output
    assert body == pid_app.SLOW_BODY, f"{len(body)} of {len(pid_app.SLOW_BODY)} bytes\n{output}"
    assert child.returncode == 0, output
    return output


def start(cmd, tmp_path):
    started = tmp_path / "started"
    started.mkdir()
    env = dict(os.environ, PID_APP_STARTED=str(started),
               PYTHONPATH=os.pathsep.join(filter(None, [HERE, os.environ.get("PYTHONPATH")])))
    child = subprocess.Popen(cmd, cwd=HERE, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    return child, started


def run_scenario(cmd, port, variant, tmp_path):
    child, started = start(cmd, tmp_path)
    try:
        wait_listening(port, child)
        pids = answers_from_both_workers(port, variant)
        assert child.pid not in pids  # the manager itself serves nothing
        return pids, sigterm_with_request_in_flight(child, port, started)
    finally:
        if child.poll() is None:
            child.kill()
            child.communicate()


@pytest.mark.parametrize("variant", VARIANTS)
def test_uvicorn_workers(variant, tmp_path):
    port = free_port()
    cmd = [sys.executable, "-m", "uvicorn", "pid_app:app", "--workers", "2", "--loop", UVICORN_LOOP[variant],
           "--host", "127.0.0.1", "--port", str(port), "--log-level", "info"]
    pids, output = run_scenario(cmd, port, variant, tmp_path)
    for pid in pids:
        assert f"Finished server process [{pid}]" in output, output


@pytest.mark.parametrize("variant", VARIANTS)
def test_gunicorn_uvicorn_worker(variant, tmp_path):
    pytest.importorskip("gunicorn")
    port = free_port()
    cmd = [sys.executable, "-m", "gunicorn", "pid_app:app", "-k", GUNICORN_WORKER[variant], "-w", "2",
           "-b", f"127.0.0.1:{port}", "--graceful-timeout", "20", "--log-level", "info"]
    pids, output = run_scenario(cmd, port, variant, tmp_path)
    for pid in pids:
        assert f"Finished server process [{pid}]" in output, output
    assert "Shutting down: Master" in output, output
