"""Thread-per-core mode: shards, submit_to, and one server over every shard."""

import asyncio
import socket
import sys
import threading

import pytest

from _support import requires_shardloop, shardloop

pytestmark = requires_shardloop


def run(main, shards=3):
    return shardloop.run(main(), shards=shards)


async def whereami(tag=None):
    await asyncio.sleep(0)
    return shardloop.current_shard(), threading.get_ident(), asyncio.get_running_loop(), tag


def test_single_loop_mode_is_one_shard():
    async def main():
        assert shardloop.shard_count() == 1
        assert shardloop.current_shard() == 0
        assert shardloop.loop_of(0) is asyncio.get_running_loop()
        with pytest.raises(ValueError):
            shardloop.loop_of(1)
        return await shardloop.submit_to(0, whereami, "x")

    shard, ident, _, tag = run(main, shards=1)
    assert (shard, ident, tag) == (0, threading.get_ident(), "x")


def test_each_shard_has_its_own_loop_and_thread():
    async def main():
        assert shardloop.shard_count() == 3
        results = await asyncio.gather(*(shardloop.submit_to(i, whereami, i) for i in (0, 1, 2, 1)))
        return asyncio.get_running_loop(), results

    home, results = run(main)
    assert [r[0] for r in results] == [0, 1, 2, 1]
    assert [r[3] for r in results] == [0, 1, 2, 1]
    assert results[0][2] is home and results[0][1] == threading.get_ident()
    assert len({r[1] for r in results}) == 3
    assert len({id(r[2]) for r in results}) == 3
    assert results[1][2] is results[3][2]
    assert home.is_closed() and all(r[2].is_closed() for r in results)


def test_submit_to_plain_function_and_exceptions():
    def plain(a, b):
        return a + b, shardloop.current_shard()

    async def fails():
        raise KeyError("remote")

    def fails_sync():
        raise ZeroDivisionError

    async def main():
        assert await shardloop.submit_to(2, plain, 1, 2) == (3, 2)
        with pytest.raises(KeyError, match="remote"):
            await shardloop.submit_to(1, fails)
        with pytest.raises(ZeroDivisionError):
            await shardloop.submit_to(2, fails_sync)
        with pytest.raises(ValueError, match=r"out of range\(0, 3\)"):
            await shardloop.submit_to(3, plain, 1, 2)
        with pytest.raises(TypeError):
            await shardloop.submit_to("1", plain, 1, 2)
        return True

    assert run(main)


def test_many_calls_from_every_shard_arrive_exactly_once():
    counts = [0, 0, 0]

    def bump(shard):
        counts[shard] += 1  # each shard only touches its own slot

    async def fan_out(n):
        await asyncio.gather(*(shardloop.submit_to(i % 3, bump, i % 3) for i in range(n)))

    async def main():
        await asyncio.gather(*(shardloop.submit_to(s, fan_out, 600) for s in range(3)))

    run(main)
    assert counts == [600, 600, 600]


def test_cancelling_the_caller_cancels_the_remote_task():
    async def main():
        started = threading.Event()
        cancelled = threading.Event()

        async def wait_forever():
            started.set()
            try:
                await asyncio.sleep(3600)
            except asyncio.CancelledError:
                cancelled.set()
                raise

        call = asyncio.ensure_future(shardloop.submit_to(1, wait_forever))
        while not started.is_set():
            await asyncio.sleep(0.005)
        call.cancel()
        with pytest.raises(asyncio.CancelledError):
            await call
        for _ in range(400):
            if cancelled.is_set():
                return True
            await asyncio.sleep(0.005)
        return False

    assert run(main)


def test_shutdown_cancels_remote_work_and_joins_threads():
    before = threading.active_count()
    remote_cancelled = threading.Event()

    async def long_running():
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            remote_cancelled.set()
            raise

    async def main():
        loop = asyncio.get_running_loop()
        shardloop.loop_of(2).call_soon_threadsafe(lambda: asyncio.ensure_future(long_running()))
        await asyncio.sleep(0.05)
        assert threading.active_count() == before + 2
        return loop

    loop = run(main)
    assert loop.is_closed()
    assert remote_cancelled.is_set()
    assert threading.active_count() == before


def test_unused_runtime_closes_cleanly():
    before = threading.active_count()
    loop = shardloop.new_event_loop(shards=4)
    assert threading.active_count() == before + 3
    loop.close()
    assert threading.active_count() == before


def test_policy_with_shards():
    async def main():
        return shardloop.shard_count(), await shardloop.submit_to(1, whereami)

    policy = shardloop.EventLoopPolicy(shards=2)
    loop = policy.new_event_loop()
    try:
        count, (shard, ident, _, _) = loop.run_until_complete(main())
    finally:
        loop.close()
    assert count == 2 and shard == 1 and ident != threading.get_ident()


@pytest.mark.parametrize("bad, exc", [(0, ValueError), (-1, ValueError), ("2", TypeError), (True, TypeError)])
def test_bad_shard_counts(bad, exc):
    with pytest.raises(exc):
        shardloop.new_event_loop(shards=bad)
    with pytest.raises(exc):
        shardloop.EventLoopPolicy(shards=bad)


def test_run_refuses_loop_factory_with_shards():
    async def main():
        pass

    coro = main()
    with pytest.raises(ValueError, match="not both"):
        shardloop.run(coro, shards=2, loop_factory=asyncio.new_event_loop)
    coro.close()


def test_shards_none_means_one_per_usable_cpu():
    import os

    async def main():
        return shardloop.shard_count()

    assert shardloop.run(main(), shards=None) == len(os.sched_getaffinity(0))


async def _echo_line(port, payload):
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(payload + b"\n")
    await writer.drain()
    line = await reader.readline()
    writer.close()
    await writer.wait_closed()
    return line


def test_start_server_with_reuse_port_serves_on_every_shard():
    served = []

    async def handle(reader, writer):
        # The streams belong to the shard that accepted the connection.
        assert reader._loop is asyncio.get_running_loop()
        served.append(shardloop.current_shard())
        writer.write((await reader.readline()).upper())
        await writer.drain()
        writer.close()

    async def main():
        server = await asyncio.start_server(handle, "127.0.0.1", 0, reuse_port=True)
        assert isinstance(server, shardloop.ShardedServer)
        assert server.get_loop() is asyncio.get_running_loop()
        ports = {s.getsockname()[1] for s in server.sockets}
        assert len(server.sockets) == 3 and len(ports) == 1
        port = ports.pop()
        assert server.is_serving()
        replies = await asyncio.gather(*(_echo_line(port, b"m%d" % i) for i in range(120)))
        assert replies == [b"M%d\n" % i for i in range(120)]
        server.close()
        await server.wait_closed()
        assert not server.is_serving()
        with pytest.raises(OSError):
            await _echo_line(port, b"late")
        return True

    assert run(main)
    assert len(served) == 120
    # SO_REUSEPORT hashes connections over the listeners; with 120
    # connections every shard gets some unless the kernel ignores the option.
    assert set(served) == {0, 1, 2}


def test_protocol_factory_runs_on_the_accepting_shard():
    made = []

    class Echo(asyncio.Protocol):
        def connection_made(self, transport):
            made.append((shardloop.current_shard(), transport.get_extra_info("socket") is not None))
            self.transport = transport

        def data_received(self, data):
            self.transport.write(data.upper())

    async def main():
        server = await asyncio.get_running_loop().create_server(Echo, "127.0.0.1", 0, reuse_port=True,
                                                                  start_serving=False)
        assert not server.is_serving()
        await server.start_serving()
        port = server.sockets[0].getsockname()[1]
        replies = await asyncio.gather(*(_echo_line(port, b"p%d" % i) for i in range(60)))
        assert replies == [b"P%d\n" % i for i in range(60)]
        async with server:
            pass
        await server.wait_closed()
        return True

    assert run(main)
    assert len(made) == 60 and len({m[0] for m in made}) > 1


def test_without_reuse_port_a_server_stays_on_its_shard():
    async def main():
        server = await asyncio.start_server(lambda r, w: w.close(), "127.0.0.1", 0)
        assert isinstance(server, asyncio.base_events.Server)
        assert len(server.sockets) == 1
        server.close()
        await server.wait_closed()
        return True

    assert run(main)


def test_serve_forever_cancelled_closes_every_shard():
    async def main():
        server = await shardloop.start_server(lambda r, w: w.close(), "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        task = asyncio.ensure_future(server.serve_forever())
        await asyncio.sleep(0.02)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert not server.is_serving()
        probe = socket.socket()
        try:
            with pytest.raises(OSError):
                probe.connect(("127.0.0.1", port))
        finally:
            probe.close()
        return True

    assert run(main)


def test_sharded_server_port_in_use_fails_whole():
    async def main():
        blocker = socket.socket()
        blocker.bind(("127.0.0.1", 0))
        blocker.listen()
        port = blocker.getsockname()[1]
        try:
            with pytest.raises(OSError):
                await shardloop.create_server(asyncio.Protocol, "127.0.0.1", port)
        finally:
            blocker.close()
        return True

    assert run(main)


# --- the native runtime under the Python shards ------------------------------


def _runtime():
    return asyncio.get_running_loop()._shard_runtime


def test_cross_shard_calls_go_through_the_native_runtime():
    async def main():
        native = _runtime().native
        assert isinstance(native, shardloop._core.Runtime) and native.shard_count == 3
        before = native.stats()["wakeups"]
        for i in range(20):
            assert await shardloop.submit_to(1 + i % 2, whereami, i) is not None
        # Each round trip finds the other side asleep at least sometimes;
        # with no native path nothing would be counted at all.
        return native.stats()["wakeups"] - before

    assert run(main) > 0


def test_post_runs_in_call_soon_order_on_its_own_shard():
    async def main():
        loop = asyncio.get_running_loop()
        order = []
        done = loop.create_future()
        loop.call_soon(order.append, "a")
        assert _runtime().post(0, order.append, "b") is True
        loop.call_soon(order.append, "c")
        loop.call_soon(done.set_result, None)
        await done
        return order

    assert run(main) == ["a", "b", "c"]


def test_posts_from_one_shard_run_in_order_on_the_other():
    async def main():
        seen = []
        rt = _runtime()
        done = asyncio.get_running_loop().create_future()
        for i in range(500):
            rt.post(1, seen.append, i)
        rt.post(1, rt.post, 0, done.set_result, None)
        await done
        return seen

    assert run(main, shards=2) == list(range(500))


def test_exception_in_posted_callback_goes_to_that_shards_handler():
    async def main():
        contexts = []

        def install():
            asyncio.get_running_loop().set_exception_handler(lambda loop, ctx: contexts.append((loop, ctx)))
            return asyncio.get_running_loop()

        def bad():
            raise ZeroDivisionError("on shard 1")

        target = await shardloop.submit_to(1, install)
        assert _runtime().post(1, bad) is True
        # Still serving, and the handler ran before this (FIFO per pair).
        assert await shardloop.submit_to(1, shardloop.current_shard) == 1
        return target, contexts

    target, contexts = run(main, shards=2)
    assert len(contexts) == 1
    loop, ctx = contexts[0]
    assert loop is target
    assert isinstance(ctx["exception"], ZeroDivisionError)
    assert ctx["message"].startswith("Exception in callback")


def test_post_from_a_thread_that_is_not_a_shard():
    async def main():
        rt = _runtime()
        here = asyncio.get_running_loop()
        done = here.create_future()
        seen = []

        def from_thread():
            # The foreign (multi-producer) queue: then back to shard 0.
            assert rt.post(1, lambda: seen.append(shardloop.current_shard())) is True
            assert rt.post(1, lambda: rt.post(0, done.set_result, threading.get_ident())) is True

        thread = threading.Thread(target=from_thread)
        thread.start()
        ident = await done
        thread.join()
        return seen, ident, thread.ident

    seen, ident, thread_ident = run(main, shards=2)
    assert seen == [1] and ident not in (thread_ident, threading.get_ident())


def test_post_bad_arguments():
    async def main():
        rt = _runtime()
        with pytest.raises(ValueError, match=r"out of range\(0, 2\)"):
            rt.post(2, print)
        with pytest.raises(TypeError, match="shard must be an int"):
            rt.post(True, print)
        with pytest.raises(TypeError, match="callable"):
            rt.post(1, 42)
        coro = whereami()
        with pytest.raises(TypeError, match="coroutines cannot be used"):
            rt.post(1, coro)
        coro.close()
        return True

    assert run(main, shards=2)


def test_a_stopped_runtime_refuses_work():
    async def main():
        return _runtime()

    rt = run(main, shards=2)
    assert rt.post(1, print) is False
    assert rt.request(1, print, print) is False


def test_system_exit_on_a_shard_ends_the_program():
    async def main():
        _runtime().post(1, sys.exit, 3)
        await asyncio.sleep(3600)

    with pytest.raises(SystemExit) as info:
        run(main, shards=2)
    assert info.value.code == 3


def _native_pair():
    """A bare two-shard native runtime: shard 0 on this thread, shard 1 on a
    thread that runs its loop only when told to."""
    native = shardloop._core.Runtime(2)
    home = shardloop.new_event_loop()
    native.attach(0, home)
    other = {}
    attached = threading.Event()
    go = threading.Event()

    def shard1():
        other["loop"] = loop = shardloop.new_event_loop()
        native.attach(1, loop)
        attached.set()
        go.wait()
        native.detach()
        loop.close()

    thread = threading.Thread(target=shard1)
    thread.start()
    attached.wait()
    return native, home, other["loop"], go, thread


def test_work_discarded_at_shutdown_is_released_and_answered():
    native, home, _, go, thread = _native_pair()
    token = object()
    base = sys.getrefcount(token)
    answered = []

    def stopped():
        answered.append("stopped")
        if len(answered) == 50:
            home.stop()

    for _ in range(50):
        assert native.post(1, print, token) is True
        assert native.request(1, stopped, print, token) is True
    assert sys.getrefcount(token) == base + 100
    go.set()  # shard 1 detaches without ever running its loop
    # Its detach stops this loop (once) and sends the answers here.
    while len(answered) < 50:
        home.run_forever()
    native.detach()
    thread.join()
    home.close()
    assert answered == ["stopped"] * 50
    assert sys.getrefcount(token) == base


def test_runtime_attach_errors():
    native, home, other, go, thread = _native_pair()
    try:
        spare = shardloop.new_event_loop()
        with pytest.raises(RuntimeError, match="already a shard"):
            native.attach(1, spare)
        spare.close()
        with pytest.raises(RuntimeError, match="closed"):
            native.attach(1, spare)
        plain = asyncio.new_event_loop()
        with pytest.raises(TypeError, match="needs a shardloop loop"):
            native.attach(1, plain)
        plain.close()
    finally:
        go.set()
        native.detach()
        thread.join()
        home.close()
    with pytest.raises(RuntimeError, match="needs the thread of an attached shard"):
        native.detach()


def test_close_from_another_thread_is_refused_and_harmless():
    loop = shardloop.new_event_loop(shards=2)
    errors = []

    def close_elsewhere():
        try:
            loop.close()
        except RuntimeError as exc:
            errors.append(exc)

    thread = threading.Thread(target=close_elsewhere)
    thread.start()
    thread.join()
    assert len(errors) == 1 and "thread that created it" in str(errors[0])
    assert not loop.is_closed()

    async def still_served():
        return await shardloop.submit_to(1, shardloop.current_shard)

    assert loop.run_until_complete(still_served()) == 1
    loop.close()
    assert loop.is_closed()


def test_pinned_shards_get_one_cpu_each_and_give_it_back():
    import os

    before = os.sched_getaffinity(0)
    if len(before) < 2:
        pytest.skip("needs two usable CPUs")

    async def main():
        return os.sched_getaffinity(0), await shardloop.submit_to(1, os.sched_getaffinity, 0)

    home, other = shardloop.run(main(), shards=2, pin=True)
    assert len(home) == 1 and len(other) == 1 and home != other and home | other <= before
    assert os.sched_getaffinity(0) == before


def test_more_shards_than_cpus_are_not_pinned():
    import os

    count = len(os.sched_getaffinity(0)) + 1

    async def main():
        return await shardloop.submit_to(count - 1, os.sched_getaffinity, 0)

    with pytest.warns(RuntimeWarning, match="not pinned"):
        loop = shardloop.new_event_loop(shards=count, pin=True)
    try:
        assert loop.run_until_complete(main()) == os.sched_getaffinity(0)
    finally:
        loop.close()


def test_sharded_echo_of_10000_connections_is_byte_exact_on_every_shard():
    import hashlib
    import os

    total = 2_000 if os.environ.get("SHARDLOOP_SANITIZED") else 10_000
    per_shard = [0, 0, 0]

    async def echo(reader, writer):
        per_shard[shardloop.current_shard()] += 1  # each shard writes its own slot
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
        writer.close()

    async def one(port, i, limit):
        payload = hashlib.sha256(b"%d" % i).digest() * (1 + i % 64)
        async with limit:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(payload)
            writer.write_eof()
            got = await reader.read()
            writer.close()
            await writer.wait_closed()
        return got == payload

    async def main():
        server = await asyncio.start_server(echo, "127.0.0.1", 0, reuse_port=True, backlog=1024)
        port = server.sockets[0].getsockname()[1]
        limit = asyncio.Semaphore(200)
        results = await asyncio.gather(*(one(port, i, limit) for i in range(total)))
        server.close()
        await server.wait_closed()
        return results

    results = run(main)
    assert all(results) and len(results) == total
    assert sum(per_shard) == total
    print("connections per shard:", per_shard)
    assert all(count > 0 for count in per_shard)


CTRL_C_SCRIPT = r"""
import asyncio, os, signal, sys, threading
import shardloop

async def main():
    assert shardloop.shard_count() == 3
    server = await asyncio.start_server(lambda r, w: w.close(), "127.0.0.1", 0, reuse_port=True)
    await shardloop.submit_to(2, asyncio.sleep, 0)
    print("READY", threading.active_count(), flush=True)
    try:
        await asyncio.sleep(60)
    finally:
        print("CANCELLED", flush=True)

try:
    shardloop.run(main(), shards=3)
except KeyboardInterrupt:
    print("INTERRUPTED", threading.active_count(), flush=True)
"""


def test_ctrl_c_stops_every_shard():
    import signal
    import subprocess
    import sys

    proc = subprocess.Popen([sys.executable, "-c", CTRL_C_SCRIPT], stdout=subprocess.PIPE, text=True)
    try:
        ready = proc.stdout.readline().split()
        assert ready[0] == "READY" and int(ready[1]) >= 3
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=60)
    finally:
        proc.kill()
    lines = out.split()
    assert "CANCELLED" in lines
    # Only the main thread is left: every shard's thread was joined.
    assert lines[lines.index("INTERRUPTED") + 1] == "1"
    assert proc.returncode == 0


def test_more_pinned_shards_than_cpus_warns_and_runs_unpinned():
    import os

    count = len(os.sched_getaffinity(0)) + 1
    with pytest.warns(RuntimeWarning, match="not pinned"):
        loop = shardloop.new_event_loop(shards=count, pin=True)
    try:
        assert loop.run_until_complete(shardloop.submit_to(count - 1, shardloop.current_shard)) == count - 1
    finally:
        loop.close()
