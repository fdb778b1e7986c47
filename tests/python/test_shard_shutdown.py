"""Process-level shutdown of a sharded runtime: a shard stuck in a blocking
callback, and interpreter exit with shards busy. Each case runs in a child
interpreter, since it ends the process (or would hang it)."""

import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

pytest.importorskip("shardloop")

# A test runner started in the background may pass SIGINT down ignored.
RESTORE_SIGINT = "import signal; signal.signal(signal.SIGINT, signal.default_int_handler)\n"

STUCK_SCRIPT = RESTORE_SIGINT + textwrap.dedent("""
    import asyncio, threading, time
    import shardloop

    entered = threading.Event()

    def stuck_in_a_blocking_call():
        entered.set()
        time.sleep({sleep})

    async def main():
        shardloop.loop_of(1).call_soon_threadsafe(stuck_in_a_blocking_call)
        await asyncio.to_thread(entered.wait)

    # shardloop.run(), spelled out to say when its shutdown begins.
    runner = asyncio.Runner(loop_factory=lambda: shardloop.new_event_loop(shards=2, shutdown_timeout={timeout}))
    runner.run(main())
    print("closing", flush=True)
    runner.close()
    print("returned", flush=True)
""")


def _child(script):
    return subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_shutdown_leaves_a_stuck_shard_behind_after_shutdown_timeout():
    """Shard 1 sleeps an hour in a callback: run() returns once
    shutdown_timeout has passed, warning which shard is stuck and where.
    The hang guard is far below the sleep, so a shutdown that waits for
    the shard fails here."""
    child = _child(STUCK_SCRIPT.format(sleep=3600, timeout=1))
    try:
        out, err = child.communicate(timeout=60)
    finally:
        child.kill()
    assert child.returncode == 0, err
    assert out.split() == ["closing", "returned"], (out, err)
    assert "RuntimeWarning: shard 1 did not stop within shutdown_timeout=1.0 s" in err, err
    assert ', in stuck_in_a_blocking_call\n' in err, err


def test_sigint_ends_the_wait_for_a_stuck_shard():
    """Ctrl-C while shard 0 waits for a stuck shard (shutdown_timeout an
    hour): the wait ends with KeyboardInterrupt and the process exits."""
    child = _child(STUCK_SCRIPT.format(sleep=3600, timeout=3600))
    try:
        assert child.stdout.readline() == "closing\n"
        # Not an assertion: lets the shutdown reach its wait, where a SIGINT
        # must be seen; one that comes earlier ends the process too.
        time.sleep(0.5)
        child.send_signal(signal.SIGINT)
        out, err = child.communicate(timeout=60)
    finally:
        child.kill()
    assert "KeyboardInterrupt" in err, err
    # An unhandled KeyboardInterrupt ends CPython by SIGINT itself.
    assert child.returncode == -signal.SIGINT, (child.returncode, err)
    assert "returned" not in out


@pytest.mark.parametrize("value,error", [(-1, ValueError), (float("nan"), ValueError), ("1", TypeError),
                                         (True, TypeError)])
def test_shutdown_timeout_is_checked(value, error):
    import shardloop
    with pytest.raises(error):
        shardloop.new_event_loop(shards=2, shutdown_timeout=value)
