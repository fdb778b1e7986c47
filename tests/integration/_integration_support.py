"""Helpers shared by the integration tests (imported by conftest.py)."""

import asyncio

import pytest

try:
    import shardloop
    SKIP_REASON = None
except Exception as exc:  # depends on whether the extension is built
    shardloop = None
    SKIP_REASON = f"shardloop is not importable: {exc!r}"

FACTORIES = {"asyncio": asyncio.new_event_loop}
if shardloop is not None:
    FACTORIES["shardloop"] = shardloop.new_event_loop


def factory_params():
    """pytest params naming the two loops (ids asyncio / shardloop)."""
    return [
        pytest.param("asyncio", id="asyncio"),
        pytest.param("shardloop", id="shardloop",
                     marks=pytest.mark.skipif(shardloop is None, reason=str(SKIP_REASON))),
    ]


def assert_runs_on(loop, loop_name):
    """Fail unless *loop* is the kind of loop *loop_name* names."""
    is_shardloop = shardloop is not None and isinstance(loop, shardloop.Loop)
    assert is_shardloop == (loop_name == "shardloop"), f"{loop_name} test ran on {type(loop)!r}"


def run(loop_factory, coro, timeout=20.0):
    """Run *coro* on a new loop from *loop_factory*, bounded by *timeout*."""
    with asyncio.Runner(loop_factory=loop_factory) as runner:
        return runner.run(asyncio.wait_for(coro, timeout))
