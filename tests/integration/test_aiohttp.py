"""aiohttp server and client in one loop (plain requests, a large streamed
body, a websocket session; over plain TCP and over TLS), and
web.run_app(loop=...) in a child process."""

import asyncio
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import urllib.request

import aiohttp
import pytest
from aiohttp import web

from _integration_support import assert_runs_on, run

BIG = bytes(range(256)) * 4096  # 1 MiB: many reads and writes, with flow control


def make_app():
    async def hello(request):
        return web.Response(text=f"hello {request.match_info['name']}")

    async def echo_json(request):
        body = await request.json()
        return web.json_response({"got": body, "loop": type(asyncio.get_running_loop()).__module__})

    async def big(request):
        response = web.StreamResponse()
        await response.prepare(request)
        for i in range(0, len(BIG), 65536):
            await response.write(BIG[i:i + 65536])
        await response.write_eof()
        return response

    async def upload(request):
        return web.json_response({"size": len(await request.read())})

    async def ws(request):
        sock = web.WebSocketResponse()
        await sock.prepare(request)
        async for msg in sock:
            if msg.type == aiohttp.WSMsgType.TEXT:
                if msg.data == "close":
                    await sock.close(code=4000, message=b"bye")
                else:
                    await sock.send_str(msg.data.upper())
            elif msg.type == aiohttp.WSMsgType.BINARY:
                await sock.send_bytes(msg.data[::-1])
        return sock

    app = web.Application()
    app.router.add_get("/hello/{name}", hello)
    app.router.add_post("/json", echo_json)
    app.router.add_get("/big", big)
    app.router.add_post("/upload", upload)
    app.router.add_get("/ws", ws)
    return app


@pytest.fixture(scope="module")
def tls_pair(tmp_path_factory):
    """(server context, client context) for a self-signed 127.0.0.1 certificate."""
    if shutil.which("openssl") is None:
        pytest.skip("no openssl command")
    d = tmp_path_factory.mktemp("aiohttp-tls")
    cert, key = d / "cert.pem", d / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
                    "-nodes", "-days", "2", "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
                    "-keyout", str(key), "-out", str(cert)], check=True, capture_output=True)
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server.load_cert_chain(cert, key)
    return server, ssl.create_default_context(cafile=str(cert))


async def serve_and_query(loop_name, tls=None):
    assert_runs_on(asyncio.get_running_loop(), loop_name)
    runner = web.AppRunner(make_app())
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=tls[0] if tls else None)
    await site.start()
    port = runner.addresses[0][1]
    base = f"{'https' if tls else 'http'}://127.0.0.1:{port}"
    try:
        connector = aiohttp.TCPConnector(ssl=tls[1] if tls else True)
        async with aiohttp.ClientSession(connector=connector) as session:
            async with session.get(f"{base}/hello/shard") as resp:
                assert resp.status == 200
                assert await resp.text() == "hello shard"

            async with session.post(f"{base}/json", json={"a": [1, 2, 3]}) as resp:
                assert await resp.json() == {
                    "got": {"a": [1, 2, 3]},
                    "loop": type(asyncio.get_running_loop()).__module__,
                }

            async def fetch(i):
                async with session.get(f"{base}/hello/{i}") as resp:
                    return await resp.text()

            # Concurrent requests share the client's connection pool.
            texts = await asyncio.gather(*(fetch(i) for i in range(20)))
            assert texts == [f"hello {i}" for i in range(20)]

            async with session.get(f"{base}/big") as resp:
                assert await resp.read() == BIG

            async with session.post(f"{base}/upload", data=BIG) as resp:
                assert await resp.json() == {"size": len(BIG)}

            async with session.get(f"{base}/missing") as resp:
                assert resp.status == 404

            async with session.ws_connect(f"{base}/ws") as sock:
                await sock.send_str("ping")
                assert (await sock.receive()).data == "PING"
                await sock.send_bytes(b"\x00\x01\x02")
                assert (await sock.receive()).data == b"\x02\x01\x00"
                await sock.send_str("close")
                msg = await sock.receive()
                assert msg.type == aiohttp.WSMsgType.CLOSE
                assert sock.close_code == 4000
    finally:
        await runner.cleanup()


def test_aiohttp_server_and_client(loop_name, loop_factory):
    run(loop_factory, serve_and_query(loop_name))


def test_aiohttp_over_tls(loop_name, loop_factory, tls_pair):
    """The same session over HTTPS and WSS: shardloop's TLS layer on both
    the server's and the client's connections."""
    run(loop_factory, serve_and_query(loop_name, tls_pair))


RUN_APP = """
import asyncio, socket, sys
from aiohttp import web
import {module}

async def info(request):
    loop = asyncio.get_running_loop()
    return web.Response(text=type(loop).__module__)

app = web.Application()
app.router.add_get("/", info)
sock = socket.socket(fileno=int(sys.argv[1]))
web.run_app(app, sock=sock, loop={module}.new_event_loop(), print=None)
"""


def test_aiohttp_run_app_with_loop(loop_name):
    """web.run_app(app, loop=...) in a child: serves, then exits cleanly on SIGINT."""
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    child = subprocess.Popen([sys.executable, "-c", RUN_APP.format(module=loop_name), str(listener.fileno())],
                             pass_fds=[listener.fileno()], stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True)
    listener.close()
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=15) as resp:
            assert resp.read().decode().split(".")[0] == loop_name
        child.send_signal(signal.SIGINT)
        output, _ = child.communicate(timeout=15)
        assert child.returncode == 0, output
    finally:
        if child.poll() is None:
            child.kill()
            child.communicate()
