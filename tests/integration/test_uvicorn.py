"""uvicorn serving an ASGI app on the loop named by --loop (a
``module:callable`` loop factory), queried over HTTP and websockets from
this process."""

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request

import pytest
from websockets.sync.client import connect

LOOP_OPTION = {"asyncio": "asyncio:new_event_loop", "shardloop": "shardloop:new_event_loop"}
LOOP_CLASS_PREFIX = {"asyncio": "asyncio.unix_events.", "shardloop": "shardloop."}


@pytest.fixture(params=["fd", "port"])
def uvicorn_server(request, loop_name):
    """A uvicorn child serving asgi_app on a socket passed with --fd (bound
    here, no port race), or on --port (the usual way; we wait for it)."""
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    if request.param == "fd":
        where, pass_fds = ["--fd", str(listener.fileno())], [listener.fileno()]
    else:
        listener.close()
        where, pass_fds = ["--host", "127.0.0.1", "--port", str(port)], []
    child = subprocess.Popen(
        [sys.executable, "-m", "uvicorn", "asgi_app:app", "--app-dir", os.path.dirname(__file__),
         *where, "--loop", LOOP_OPTION[loop_name], "--lifespan", "on", "--log-level", "info"],
        pass_fds=pass_fds, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    listener.close()
    try:
        if request.param == "port":
            wait_for_listener(port, child)
        yield f"127.0.0.1:{port}", child
    finally:
        if child.poll() is None:
            child.kill()
        child.communicate()


def wait_for_listener(port, child, timeout=15.0):
    deadline = time.monotonic() + timeout
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            if child.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"uvicorn did not listen on {port}: {child.communicate()[0]}")
            time.sleep(0.05)


def get(url, data=None):
    with urllib.request.urlopen(url, data=data, timeout=15) as resp:
        return resp.status, resp.read()


def test_uvicorn_serves_on_the_given_loop(loop_name, uvicorn_server):
    address, child = uvicorn_server
    status, body = get(f"http://{address}/info")
    assert status == 200
    info = json.loads(body)
    assert info["loop"].startswith(LOOP_CLASS_PREFIX[loop_name]), info
    assert info["startup_loop"] == info["loop"]

    payload = os.urandom(300_000)
    assert get(f"http://{address}/echo", data=payload) == (200, payload[::-1])

    for i in range(10):
        assert json.loads(get(f"http://{address}/n{i}")[1])["path"] == f"/n{i}"

    with connect(f"ws://{address}/ws", open_timeout=15) as ws:
        ws.send("hi")
        assert ws.recv(timeout=15) == "hi from " + info["loop"]
        ws.send(b"\x01\x02\x03")
        assert ws.recv(timeout=15) == b"\x03\x02\x01"

    # Graceful shutdown runs through the loop's signal handling.
    child.send_signal(signal.SIGINT)
    output, _ = child.communicate(timeout=15)
    assert child.returncode == 0, output
    assert "Application shutdown complete." in output, output
