"""An exception that must leave run_forever (KeyboardInterrupt, SystemExit)
raised where no run is in progress must reach its caller, and must not end
the next run_forever early: Handle._run() called by hand propagates it, as
asyncio's does, and the loop's next run goes on normally."""

import pytest

from _support import run_forever_bounded


def steps_until_stop(loop, n):
    """Runs the loop through n chained call_soon steps; returns how many ran."""
    steps = []

    def step():
        steps.append(None)
        if len(steps) < n:
            loop.call_soon(step)
        else:
            loop.stop()

    loop.call_soon(step)
    run_forever_bounded(loop)
    return len(steps)


@pytest.mark.parametrize("exc_type", [KeyboardInterrupt, SystemExit])
def test_handle_run_outside_the_loop_leaves_no_stale_abort(loop, exc_type):
    raised = []

    def callback():
        if not raised:
            raised.append(None)
            raise exc_type()

    handle = loop.call_soon(callback)
    with pytest.raises(exc_type):
        handle._run()
    # The handle is still queued; it runs again (quietly) in the run below.
    assert steps_until_stop(loop, 5) == 5
    assert not loop.is_running()


def test_handle_run_inside_a_callback_propagates_to_the_caller(loop):
    seen = []

    def inner():
        raise KeyboardInterrupt()

    def outer():
        handle = loop.call_later(3600, inner)  # only ever run by hand
        try:
            handle._run()
        except KeyboardInterrupt:
            seen.append("caught")
        handle.cancel()

    # The caller handled it: the run goes on as if nothing was raised.
    loop.call_soon(outer)
    assert steps_until_stop(loop, 5) == 5
    assert seen == ["caught"]
