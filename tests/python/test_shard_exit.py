"""Interpreter exit while shards are busy: the process ends with the status
the program asked for, not an abort from a shard thread torn down inside
native frames. Each case is a child interpreter."""

import signal
import subprocess
import sys
import textwrap

import pytest

pytest.importorskip("shardloop")

# Shard 1 keeps running Python callbacks (taking and dropping the GIL) and
# cross-shard calls keep crossing, until the process ends.
BUSY = textwrap.dedent("""
    import asyncio, sys, threading
    import shardloop

    busy = threading.Event()

    def spin(n=0):
        sum(range(2000))
        if n == 100:
            busy.set()
        asyncio.get_running_loop().call_soon(spin, n + 1)

    async def main():
        shardloop.loop_of(1).call_soon_threadsafe(spin)
        await asyncio.to_thread(busy.wait)
        for _ in range(50):
            await shardloop.submit_to(1, sum, range(100))
        {end_in_main}
""")

CASES = {
    # shardloop.run() closes the runtime on the way out.
    "sys.exit in main": (BUSY.format(end_in_main="sys.exit(3)") + "shardloop.run(main(), shards=2)\n", 3),
    "exception in main": (BUSY.format(end_in_main="raise ValueError('boom')") +
                          "shardloop.run(main(), shards=2)\n", 1),
    # A sharded loop nobody closes: its shards are still running at exit.
    "end of script, loop left open": (BUSY.format(end_in_main="pass") +
                                      "loop = shardloop.new_event_loop(shards=2)\n"
                                      "loop.run_until_complete(main())\n", 0),
    "sys.exit, loop left open": (BUSY.format(end_in_main="pass") +
                                 "loop = shardloop.new_event_loop(shards=2)\n"
                                 "loop.run_until_complete(main())\n"
                                 "sys.exit(3)\n", 3),
    "exception, loop left open": (BUSY.format(end_in_main="pass") +
                                  "loop = shardloop.new_event_loop(shards=2)\n"
                                  "loop.run_until_complete(main())\n"
                                  "raise ValueError('boom')\n", 1),
    "exception in main, loop left open": (BUSY.format(end_in_main="raise ValueError('boom')") +
                                          "loop = shardloop.new_event_loop(shards=2)\n"
                                          "loop.run_until_complete(main())\n", 1),
}


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("attempt", range(3))
def test_exit_status_with_busy_shards(case, attempt):
    """Several attempts: the shard thread's position when finalization
    starts varies from run to run."""
    script, status = CASES[case]
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert out.returncode == status, (out.returncode, out.stderr[-3000:])
    assert "terminate called" not in out.stderr and "Fatal Python error" not in out.stderr, out.stderr[-3000:]
