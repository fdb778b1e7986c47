"""`python -m shardloop`: a short tour of the loop in use (what `make demo` runs)."""

from __future__ import annotations

import asyncio
import contextvars
import os
import sys
import threading
import time

import shardloop

request_id: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="-")


async def worker(name: str, delay: float, results: list[str]) -> None:
    request_id.set(name)
    await asyncio.sleep(delay)
    results.append(f"{name} (request_id={request_id.get()})")


async def main() -> None:
    loop = asyncio.get_running_loop()
    print(f"running on {loop!r} (shardloop {shardloop.__version__}, "
          f"libuv {shardloop._core.libuv_version()})")

    results: list[str] = []
    async with asyncio.TaskGroup() as group:
        for i, delay in enumerate((0.03, 0.01, 0.02)):
            group.create_task(worker(f"task-{i}", delay, results))
    print("tasks finished in deadline order:", ", ".join(results))

    fired = loop.create_future()
    threading.Timer(0.01, loop.call_soon_threadsafe, (fired.set_result, "hello from a thread")).start()
    print("call_soon_threadsafe:", await fired)

    print("run_in_executor:", await loop.run_in_executor(None, sum, range(1_000_000)))

    try:
        async with asyncio.timeout(0.05):
            await asyncio.sleep(10)
    except TimeoutError:
        print("asyncio.timeout: timed out after 50 ms as asked")

    n = 100_000
    done = loop.create_future()
    count = 0

    def tick() -> None:
        nonlocal count
        count += 1
        if count == n:
            done.set_result(None)

    start = time.perf_counter()
    for _ in range(n):
        loop.call_soon(tick)
    await done
    elapsed = time.perf_counter() - start
    print(f"{n} call_soon callbacks in {elapsed * 1e3:.1f} ms")


# -- the sharded echo server ----------------------------------------------

CLIENT_CONNECTIONS = 64
CLIENT_SECONDS = 2.0
MESSAGE = b"x" * 1023 + b"\n"


async def client(port: int) -> None:
    """The load: a separate process, CLIENT_CONNECTIONS connections each
    sending a line and waiting for its echo, for CLIENT_SECONDS."""
    stop_at = time.monotonic() + CLIENT_SECONDS

    async def one() -> int:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        done = 0
        while time.monotonic() < stop_at:
            writer.write(MESSAGE)
            if await reader.readline() != MESSAGE:
                raise RuntimeError("echo mismatch")
            done += 1
        writer.close()
        await writer.wait_closed()
        return done

    print(sum(await asyncio.gather(*(one() for _ in range(CLIENT_CONNECTIONS)))))


async def serve_under_load() -> tuple[list[int], list[int], int]:
    shards = shardloop.shard_count()
    connections, requests = [0] * shards, [0] * shards  # each shard writes its own slot

    async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        me = shardloop.current_shard()
        connections[me] += 1
        while line := await reader.readline():
            requests[me] += 1
            writer.write(line)
        writer.close()

    server = await asyncio.start_server(echo, "127.0.0.1", 0, reuse_port=True)
    port = server.sockets[0].getsockname()[1]
    load = await asyncio.create_subprocess_exec(sys.executable, "-m", "shardloop", "--client", str(port),
                                                stdout=asyncio.subprocess.PIPE)
    out, _ = await load.communicate()
    server.close()
    await server.wait_closed()
    return connections, requests, int(out)


def sharded_demo() -> None:
    n = max(2, len(os.sched_getaffinity(0)))
    print(f"\nsharded echo server: asyncio.start_server(..., reuse_port=True), {CLIENT_CONNECTIONS} "
          f"client connections for {CLIENT_SECONDS:g} s from another process")
    for shards in (1, n):
        connections, requests, answered = shardloop.run(serve_under_load(), shards=shards)
        per_shard = ", ".join(f"shard {i}: {c} conn / {r} req" for i, (c, r) in enumerate(zip(connections, requests)))
        print(f"  shards={shards}: {answered / CLIENT_SECONDS:,.0f} req/s  ({per_shard})")


if __name__ == "__main__":
    if sys.argv[1:2] == ["--client"]:
        shardloop.run(client(int(sys.argv[2])))
    else:
        shardloop.run(main())
        sharded_demo()
