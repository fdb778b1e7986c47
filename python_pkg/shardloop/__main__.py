"""`python -m shardloop`: a short tour of the loop in use (what `make demo` runs)."""

from __future__ import annotations

import asyncio
import contextvars
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


if __name__ == "__main__":
    shardloop.run(main())
