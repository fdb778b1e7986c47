"""The websockets library's asyncio server and client on one loop."""

import asyncio

import pytest
from websockets.asyncio.client import connect
from websockets.asyncio.server import serve
from websockets.exceptions import ConnectionClosedOK

from _integration_support import assert_runs_on, run


async def handler(ws):
    async for message in ws:
        if message == "bye":
            await ws.close(code=1000, reason="done")
            return
        await ws.send(message[::-1])


async def session(loop_name):
    assert_runs_on(asyncio.get_running_loop(), loop_name)
    async with serve(handler, "127.0.0.1", 0, max_size=2**22) as server:
        port = next(iter(server.sockets)).getsockname()[1]
        async with connect(f"ws://127.0.0.1:{port}", max_size=2**22) as ws:
            await ws.send("hello")
            assert await ws.recv() == "olleh"
            big = bytes(range(256)) * 8192  # 2 MiB, fragmented by the transport
            await ws.send(big)
            assert await ws.recv() == big[::-1]
            # Many small frames in flight at once.
            for i in range(200):
                await ws.send(f"m{i}")
            assert [await ws.recv() for _ in range(200)] == [f"m{i}"[::-1] for i in range(200)]
            latency = await (await ws.ping())
            assert latency >= 0
            await ws.send("bye")
            with pytest.raises(ConnectionClosedOK):
                await ws.recv()
            assert ws.close_code == 1000 and ws.close_reason == "done"


def test_websockets_server_and_client(loop_name, loop_factory):
    run(loop_factory, session(loop_name))
