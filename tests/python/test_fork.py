"""fork() with shardloop loops around: in the child there is no running
loop, a new loop works, and an old loop closes without touching the
parent's kernel objects (its epoll instance is shared until the child makes
its own); the parent's loop keeps working after the child exits. Each case
runs in a child interpreter, which forks again."""

import subprocess
import sys
import textwrap

import pytest

pytest.importorskip("shardloop")

COMMON = textwrap.dedent("""
    import asyncio, multiprocessing, os, socket, subprocess, sys
    import shardloop

    def in_child_check():
        # Runs in the fork child; its exit status says what failed.
        try:
            asyncio.get_running_loop()
            os._exit(11)
        except RuntimeError:
            pass
        async def fresh():
            await asyncio.sleep(0.01)
            return await shardloop.submit_to(shardloop.shard_count() - 1, lambda: "fresh")
        if shardloop.run(fresh(), shards=2) != "fresh":
            os._exit(12)

    def wait_child(pid):
        _, status = os.waitpid(pid, 0)
        return os.waitstatus_to_exitcode(status)

    def watch(loop):
        # A reader registered in the loop's epoll instance (one iteration
        # makes libuv register it), to see whether the parent still gets
        # its events after the child is gone.
        r, w = socket.socketpair()
        got = loop.create_future()
        loop.add_reader(r, lambda: got.done() or got.set_result(r.recv(16)))
        loop.run_until_complete(asyncio.sleep(0))
        return w, got

    def still_works(loop, w, got):
        w.send(b"ping")
        guard = loop.call_later(30, lambda: got.done() or got.set_result(b"hang guard"))
        assert loop.run_until_complete(got) == b"ping"
        guard.cancel()
""")

CASES = {
    "outside a running loop": """
        loop = shardloop.new_event_loop({shards})
        w, got = watch(loop)
        pid = os.fork()
        if pid == 0:
            in_child_check()
            loop.close()  # the parent's registrations must survive this
            os._exit(0)
        assert wait_child(pid) == 0
        still_works(loop, w, got)
        if {sharded}:
            assert loop.run_until_complete(shardloop.submit_to(1, lambda: 7)) == 7
        loop.close()
    """,
    "inside a running loop": """
        loop = shardloop.new_event_loop({shards})
        w, got = watch(loop)
        async def main():
            pid = os.fork()
            if pid == 0:
                in_child_check()
                os._exit(0)
            assert await loop.run_in_executor(None, wait_child, pid) == 0
            await asyncio.sleep(0.01)
            if {sharded}:
                assert await shardloop.submit_to(1, lambda: 7) == 7
        loop.run_until_complete(main())
        still_works(loop, w, got)
        loop.close()
    """,
    "multiprocessing fork": """
        def target():
            in_child_check()
        loop = shardloop.new_event_loop({shards})
        w, got = watch(loop)
        async def main():
            proc = multiprocessing.get_context("fork").Process(target=target)
            proc.start()
            await loop.run_in_executor(None, proc.join)
            assert proc.exitcode == 0, proc.exitcode
            if {sharded}:
                assert await shardloop.submit_to(1, lambda: 7) == 7
        loop.run_until_complete(main())
        still_works(loop, w, got)
        loop.close()
    """,
    "sock_recv waiting across the fork": """
        # The child's sock_* waits use an epoll set of its own: were it the
        # parent's (shared through fork), the child dropping a socket it no
        # longer waits on would take it out of the parent's set too.
        loop = shardloop.new_event_loop({shards})
        a, b = socket.socketpair()
        a.setblocking(False)
        task = loop.create_task(loop.sock_recv(a, 16))
        loop.run_until_complete(asyncio.sleep(0))  # waiting now
        pid = os.fork()
        if pid == 0:
            in_child_check()
            c, d = socket.socketpair()
            c.setblocking(False)
            async def child():
                loop.call_soon(d.send, b"c")
                return await loop.sock_recv(c, 16)
            if loop.run_until_complete(child()) != b"c":
                os._exit(13)
            task.cancel()  # the child's copy: it reads nothing
            loop.run_until_complete(asyncio.sleep(0))
            b.send(b"x")  # for the parent's wait
            loop.run_until_complete(asyncio.sleep(0.05))
            loop.close()
            os._exit(0)
        assert wait_child(pid) == 0
        assert loop.run_until_complete(asyncio.wait_for(task, 30)) == b"x"
        loop.close()
    """,
    "subprocess with preexec_fn": """
        loop = shardloop.new_event_loop({shards})
        w, got = watch(loop)
        async def main():
            cmd = [sys.executable, "-c", "print('hi')"]
            done = subprocess.run(cmd, capture_output=True, preexec_fn=os.getpid)
            assert done.stdout == b"hi\\n", done
            proc = await asyncio.create_subprocess_exec(*cmd, stdout=subprocess.PIPE, preexec_fn=os.getpid)
            assert await proc.communicate() == (b"hi\\n", None)
            if {sharded}:
                assert await shardloop.submit_to(1, lambda: 7) == 7
        loop.run_until_complete(main())
        still_works(loop, w, got)
        loop.close()
    """,
}


@pytest.mark.parametrize("shards", [1, 2], ids=["one loop", "2 shards"])
@pytest.mark.parametrize("case", list(CASES))
def test_fork(case, shards):
    body = textwrap.dedent(CASES[case]).format(shards=f"shards={shards}", sharded=shards > 1)
    script = COMMON + body + "print('ok')\n"
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=90)
    assert (out.returncode, out.stdout) == (0, "ok\n"), out.stderr[-3000:]
