"""anyio's asyncio backend with a loop factory: anyio.run(backend_options=...)
and anyio's pytest plugin (anyio_backend = ("asyncio", {"loop_factory": ...}))."""

import asyncio
import sys

import anyio
import pytest

from _integration_support import FACTORIES, assert_runs_on, factory_params


async def workload(loop_name):
    assert_runs_on(asyncio.get_running_loop(), loop_name)

    async def handle(stream):
        async with stream:
            async for chunk in stream:
                await stream.send(chunk.upper())

    listener = await anyio.create_tcp_listener(local_host="127.0.0.1")
    port = listener.extra(anyio.abc.SocketAttribute.local_port)
    results = []
    async with anyio.create_task_group() as tg:
        tg.start_soon(listener.serve, handle)

        async def client(i):
            async with await anyio.connect_tcp("127.0.0.1", port) as stream:
                await stream.send(f"client {i}".encode())
                results.append(await stream.receive())

        async with anyio.create_task_group() as clients:
            for i in range(10):
                clients.start_soon(client, i)
        tg.cancel_scope.cancel()
    await listener.aclose()
    assert sorted(results) == sorted(f"CLIENT {i}".encode() for i in range(10))

    assert await anyio.to_thread.run_sync(sum, [1, 2, 3]) == 6
    with anyio.move_on_after(0.01) as scope:
        await anyio.sleep(10)
    assert scope.cancelled_caught

    done = await anyio.run_process([sys.executable, "-c", "import sys; print(sys.stdin.read()[::-1])"],
                                   input=b"abc")
    assert done.returncode == 0 and done.stdout.strip() == b"cba"
    return "ok"


def test_anyio_run_with_loop_factory(loop_name, loop_factory):
    assert anyio.run(workload, loop_name, backend="asyncio",
                     backend_options={"loop_factory": loop_factory}) == "ok"


@pytest.fixture(params=factory_params())
def anyio_backend(request):
    return ("asyncio", {"loop_factory": FACTORIES[request.param]})


@pytest.mark.anyio
async def test_anyio_pytest_plugin(anyio_backend):
    loop_name = next(name for name, factory in FACTORIES.items()
                     if factory is anyio_backend[1]["loop_factory"])
    assert await workload(loop_name) == "ok"
