"""pytest-asyncio running tests and async fixtures on each loop through its
pytest_asyncio_loop_factories hook (conftest.py)."""

import asyncio

import pytest
import pytest_asyncio

from _integration_support import assert_runs_on


def loop_name_of(request):
    # The hook parametrises each test; the factory's name ends the test id.
    return "shardloop" if request.node.name.endswith("[shardloop]") else "asyncio"


@pytest_asyncio.fixture
async def echo_server():
    async def handle(reader, writer):
        writer.write(await reader.readline())
        await writer.drain()
        writer.close()
        await writer.wait_closed()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    yield server.sockets[0].getsockname()[1], asyncio.get_running_loop()
    server.close()
    await server.wait_closed()


@pytest.mark.asyncio
async def test_runs_on_the_configured_loop(request):
    assert request.node.name.endswith(("[asyncio]", "[shardloop]")), request.node.name
    assert_runs_on(asyncio.get_running_loop(), loop_name_of(request))
    assert await asyncio.wait_for(asyncio.sleep(0, "x"), 5) == "x"


@pytest.mark.asyncio
async def test_async_fixture_shares_the_loop(request, echo_server):
    port, fixture_loop = echo_server
    assert fixture_loop is asyncio.get_running_loop()
    assert_runs_on(fixture_loop, loop_name_of(request))
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"ping\n")
    assert await reader.readline() == b"ping\n"
    writer.close()
    await writer.wait_closed()
