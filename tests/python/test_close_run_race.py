"""close() and run_forever() from different threads decide consistently:
close() while the loop runs (on another thread) raises RuntimeError and
leaves it running; a run that another thread starts while close() is busy
closing (here: from a finalizer close() triggers) is refused as closed. The
native _close_native() makes the running check and the close under one
critical section, the one _run() takes the loop under."""

import os
import threading

import pytest

from _support import is_shardloop, run_forever_bounded


def close_from_thread(close):
    errors = []

    def target():
        try:
            close()
        except RuntimeError as exc:
            errors.append(str(exc))

    t = threading.Thread(target=target)
    t.start()
    t.join()
    return errors


def test_close_from_another_thread_while_running_raises(loop):
    outcome = []

    def in_loop():
        outcome.append(close_from_thread(loop.close))
        outcome.append(loop.is_closed())
        loop.call_soon(loop.stop)

    loop.call_soon(in_loop)
    run_forever_bounded(loop)
    assert outcome == [["Cannot close a running event loop"], False]
    loop.close()
    assert loop.is_closed()


def test_native_close_from_another_thread_while_running_raises(loop):
    if not is_shardloop(loop):
        pytest.skip("shardloop's native close")
    outcome = []

    def in_loop():
        outcome.append(close_from_thread(loop._close_native))
        loop.call_soon(outcome.append, "still running")
        loop.call_soon(loop.stop)

    loop.call_soon(in_loop)
    run_forever_bounded(loop)
    assert outcome == [["Cannot close a running event loop"], "still running"]


class StartsRunOnDel:
    """Drops out of the loop's reader map during close(); its finalizer then
    tries to run the loop from another thread, while close() is under way."""

    def __init__(self, loop, results):
        self.loop = loop
        self.results = results

    def __call__(self):
        pass

    def __del__(self):
        loop, results = self.loop, self.results

        def target():
            try:
                loop.run_forever()
                results.append("ran")
            except RuntimeError as exc:
                results.append(str(exc))

        t = threading.Thread(target=target)
        t.start()
        t.join(10)
        if t.is_alive():  # it is running the loop: end it so the test can fail
            results.append("running during close")
            loop.call_soon_threadsafe(loop.stop)
            t.join()


def test_run_started_while_close_is_under_way_is_refused(loop):
    r, w = os.pipe()
    try:
        results = []
        loop.add_reader(r, StartsRunOnDel(loop, results))
        loop.close()
        assert results == ["Event loop is closed"]
        assert loop.is_closed()
    finally:
        os.close(r)
        os.close(w)
