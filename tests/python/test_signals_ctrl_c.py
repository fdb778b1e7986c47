"""Ctrl-C (a real SIGINT) while the loop is blocked in the kernel.

libuv retries its poll on EINTR, so without the loop's wakeup fd a SIGINT
would only be noticed at the next event; these tests leave no other event
for a long time, so they fail if the signal is not seen at once."""

import asyncio
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time

import pytest

from _support import factory_params

pytestmark = pytest.mark.skipif(threading.current_thread() is not threading.main_thread(),
                                reason="signals are delivered to the main thread")


def _send_sigint_after(delay):
    timer = threading.Timer(delay, os.kill, (os.getpid(), signal.SIGINT))
    timer.start()
    return timer


@pytest.mark.parametrize("factory", factory_params())
def test_sigint_raises_keyboardinterrupt_from_run_until_complete(factory):
    loop = factory()
    try:
        timer = _send_sigint_after(0.1)
        started = time.monotonic()
        with pytest.raises(KeyboardInterrupt):
            loop.run_until_complete(asyncio.sleep(30))
        timer.join()
        assert time.monotonic() - started < 20, "SIGINT was not noticed while the loop slept"
        assert not loop.is_running()
        # The loop is still usable afterwards.
        assert loop.run_until_complete(asyncio.sleep(0, "again")) == "again"
    finally:
        loop.close()


RUNNER_SCRIPT = textwrap.dedent("""
    import asyncio, os, signal, sys, threading
    {setup}
    cancelled = []

    async def main():
        threading.Timer(0.1, os.kill, (os.getpid(), signal.SIGINT)).start()
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            cancelled.append(True)
            raise

    try:
        {run}
    except KeyboardInterrupt:
        print("KeyboardInterrupt", cancelled)
""")


@pytest.mark.parametrize("name,setup,run", [
    ("asyncio", "", "asyncio.run(main())"),
    ("shardloop", "import shardloop", "shardloop.run(main())"),
    ("shardloop-runner", "import shardloop",
     "asyncio.Runner(loop_factory=shardloop.new_event_loop).run(main())"),
])
def test_sigint_cancels_main_task_like_asyncio_run(name, setup, run):
    """asyncio.Runner's SIGINT handler cancels the main task and the run
    ends with KeyboardInterrupt; in a fresh interpreter so the real default
    SIGINT disposition applies."""
    if name != "asyncio":
        pytest.importorskip("shardloop")
    script = RUNNER_SCRIPT.format(setup=setup, run=run)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=25)
    assert out.stdout.strip() == "KeyboardInterrupt [True]", (out.stdout, out.stderr)


FOREIGN_WAKEUP_SCRIPT = textwrap.dedent("""
    import asyncio, os, signal, socket, threading
    {setup}
    # Someone else's wakeup fd, installed before the loop runs.
    theirs, ours = socket.socketpair()
    theirs.setblocking(False)
    ours.setblocking(False)
    signal.set_wakeup_fd(ours.fileno())

    async def main():
        threading.Timer(0.1, os.kill, (os.getpid(), signal.SIGINT)).start()
        await asyncio.sleep(3600)

    loop = {factory}
    try:
        loop.run_until_complete(main())
    except KeyboardInterrupt:
        print("KeyboardInterrupt")
    finally:
        loop.close()
    # Its owner still hears of the signal, and gets its fd back.
    print("forwarded", signal.SIGINT in theirs.recv(64))
    print("restored", signal.set_wakeup_fd(-1) == ours.fileno())
""")


@pytest.mark.parametrize("name,setup,factory", [
    ("asyncio", "", "asyncio.new_event_loop()"),
    ("shardloop", "import shardloop", "shardloop.new_event_loop()"),
])
def test_sigint_with_a_foreign_wakeup_fd(name, setup, factory):
    """Another wakeup fd is installed before the loop runs: a SIGINT while
    the loop is blocked in the kernel still ends the run, the fd's owner
    still receives the signal byte, and gets its fd back afterwards. The
    sleep is an hour, so only the hang guard ends a run that missed it."""
    if name != "asyncio":
        pytest.importorskip("shardloop")
    script = FOREIGN_WAKEUP_SCRIPT.format(setup=setup, factory=factory)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert out.stdout.split("\n")[:3] == ["KeyboardInterrupt", "forwarded True", "restored True"], \
        (out.stdout, out.stderr)
