"""The methods the native loop calls on its Python class (bindings/loop_upcalls.cpp):
declared in _core.LOOP_UPCALLS, looked up once on the class when a loop is
created, and honoured when a subclass overrides them."""

import asyncio

import pytest

from _support import requires_shardloop, shardloop

pytestmark = requires_shardloop


def test_shardloop_loop_defines_every_declared_upcall():
    from shardloop import _core
    assert len(_core.LOOP_UPCALLS) == 6
    for name in _core.LOOP_UPCALLS:
        assert callable(getattr(shardloop.Loop, name)), name


@pytest.mark.parametrize("missing", ["_create_task_slow", "_callback_error", "_log_slow_callback",
                                     "_handle_repr", "_extract_stack", "_ensure_fd_no_transport"])
def test_a_class_lacking_an_upcall_cannot_be_created(missing):
    from shardloop import _core
    # Every upcall but one, on a bare subclass of the native core.
    attrs = {name: (lambda self, *a: None) for name in _core.LOOP_UPCALLS if name != missing}
    cls = type("Partial", (_core.Loop,), attrs)
    with pytest.raises(TypeError, match=missing):
        cls()


def test_subclass_overrides_are_called_with_the_loop_first():
    calls = []

    class Traced(shardloop.Loop):
        def _handle_repr(self, handle):
            calls.append(("repr", self))
            return "<traced>"

        def _callback_error(self, handle, exc):
            calls.append(("error", self, type(exc)))

        def _create_task_slow(self, coro, name, context):
            calls.append(("task", self, name))
            return super()._create_task_slow(coro, name, context)

    loop = Traced()
    try:
        assert repr(loop.call_soon(lambda: None)) == "<traced>"
        loop.call_soon(lambda: 1 / 0)
        loop.set_task_factory(lambda lp, coro, **kw: asyncio.Task(coro, loop=lp, **kw))

        async def main():
            return 7

        assert loop.run_until_complete(loop.create_task(main(), name="t")) == 7
    finally:
        loop.close()
    assert ("repr", loop) in calls
    assert ("error", loop, ZeroDivisionError) in calls
    assert ("task", loop, "t") in calls


def test_debug_upcalls_record_source_and_slow_callbacks(caplog):
    loop = shardloop.new_event_loop()
    loop.set_debug(True)
    loop.slow_callback_duration = 0.0
    try:
        handle = loop.call_soon(lambda: None)
        # _extract_stack ran at creation: the stack ends in this test.
        assert handle._source_traceback[-1].name == "test_debug_upcalls_record_source_and_slow_callbacks"
        with caplog.at_level("WARNING", logger="asyncio"):
            loop.run_until_complete(asyncio.sleep(0))
    finally:
        loop.close()
    assert any("Executing" in r.getMessage() and "took" in r.getMessage() for r in caplog.records)
