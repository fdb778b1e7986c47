"""loop.add_signal_handler / remove_signal_handler with real signals.

Signals come from the process itself (os.kill inside a callback), from
another thread and from a child process, mostly while the loop is blocked
in the kernel with nothing else to wake it: a guard timer with a generous
bound turns "the signal was not noticed" into a failure instead of a hang. Every test runs on asyncio's own loop and on shardloop. Scenarios
that depend on the interpreter's initial SIGINT disposition (asyncio.Runner)
run in a child interpreter.
"""

import asyncio
import gc
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
import warnings

import pytest

from _support import PY312, run

pytestmark = pytest.mark.skipif(threading.current_thread() is not threading.main_thread(),
                                reason="signal handlers belong to the main thread")

SIGNALS = (signal.SIGUSR1, signal.SIGUSR2, signal.SIGINT)
GUARD = 10.0  # the bound on "a signal is noticed"; normally milliseconds
BOUND = 3 * GUARD  # for whole scenarios, so that GUARD is what fails first


@pytest.fixture(autouse=True)
def _restore_signals():
    saved = {sig: signal.getsignal(sig) for sig in SIGNALS}
    try:
        yield
    finally:
        for sig, handler in saved.items():
            signal.signal(sig, handler)
        signal.set_wakeup_fd(-1)


def current_wakeup_fd():
    fd = signal.set_wakeup_fd(-1)
    if fd != -1:
        signal.set_wakeup_fd(fd)
    return fd


def kill_later(sig, delay=0.1):
    timer = threading.Timer(delay, os.kill, (os.getpid(), sig))
    timer.start()
    return timer


async def spin(n=20):
    for _ in range(n):
        await asyncio.sleep(0)


async def settle():
    """Time for a duplicate delivery to show up, were there one."""
    await spin()
    await asyncio.sleep(0.05)
    await spin()


class Recorder:
    def __init__(self, loop):
        self.loop = loop
        self.calls = []
        self._waiter = None

    def __call__(self, *args):
        self.calls.append(args)
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    async def next_call(self, count):
        while len(self.calls) < count:
            self._waiter = self.loop.create_future()
            guard = self.loop.call_later(GUARD, self._expire, self._waiter)
            try:
                await self._waiter
            finally:
                guard.cancel()

    @staticmethod
    def _expire(waiter):
        # Not asyncio.wait_for: a signal left pending until its timeout
        # would be handled just before the timeout is checked, and pass.
        if not waiter.done():
            waiter.set_exception(AssertionError(f"no signal handled within {GUARD}s"))


# ------------------------------------------------------------ delivery


def test_handler_runs_once_per_delivery_with_args(loop):
    rec = Recorder(loop)
    loop.add_signal_handler(signal.SIGUSR1, rec, "a", 2)

    async def main():
        for i in range(3):
            os.kill(os.getpid(), signal.SIGUSR1)
            await rec.next_call(i + 1)
            await settle()
            assert len(rec.calls) == i + 1

    run(loop, main(), BOUND)
    assert rec.calls == [("a", 2)] * 3


def test_signal_from_thread_wakes_blocked_loop(loop):
    """Added before the loop runs; each signal arrives while the loop is
    blocked with no timer due before the guard."""
    rec = Recorder(loop)
    loop.add_signal_handler(signal.SIGUSR1, rec, "thread")

    async def main():
        for i in range(3):
            timer = kill_later(signal.SIGUSR1)
            await rec.next_call(i + 1)
            timer.join()
            await settle()
        return list(rec.calls)

    assert run(loop, main(), 4 * GUARD) == [("thread",)] * 3


def test_signal_from_child_process(loop):
    rec = Recorder(loop)
    loop.add_signal_handler(signal.SIGUSR2, rec)
    child = subprocess.Popen(["sh", "-c", f"sleep 0.1; kill -USR2 {os.getpid()}"])
    try:
        run(loop, rec.next_call(1), BOUND)
        run(loop, settle(), BOUND)
    finally:
        child.wait(GUARD)
    assert child.returncode == 0
    assert rec.calls == [()]


def test_signal_before_the_loop_runs_is_handled_once_it_runs(loop):
    rec = Recorder(loop)
    loop.add_signal_handler(signal.SIGUSR1, rec, "early")
    os.kill(os.getpid(), signal.SIGUSR1)
    assert rec.calls == []  # never in the signal handler itself
    run(loop, rec.next_call(1), BOUND)
    run(loop, settle(), BOUND)
    assert rec.calls == [("early",)]


def test_sigint_handler_replaces_keyboardinterrupt(loop):
    stopped = []
    loop.add_signal_handler(signal.SIGINT, lambda: (stopped.append(True), loop.stop()))
    timer = kill_later(signal.SIGINT)
    guard = loop.call_later(GUARD, loop.stop)
    loop.run_forever()  # a KeyboardInterrupt would fail the test here
    guard.cancel()
    timer.join()
    assert stopped == [True]
    assert loop.remove_signal_handler(signal.SIGINT) is True
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_callback_runs_in_the_loop_with_context(loop):
    import contextvars
    var = contextvars.ContextVar("var", default="unset")
    seen = []

    def callback():
        seen.append((asyncio.get_running_loop() is loop, threading.current_thread().name, var.get()))

    var.set("at add")
    loop.add_signal_handler(signal.SIGUSR1, callback)
    var.set("later")
    timer = kill_later(signal.SIGUSR1)

    async def main():
        while not seen:
            await asyncio.sleep(0.01)

    run(loop, main(), BOUND)
    timer.join()
    assert seen == [(True, threading.main_thread().name, "at add")]


# ------------------------------------------------------ replace / remove


def test_replacing_a_handler(loop):
    first, second = Recorder(loop), Recorder(loop)
    loop.add_signal_handler(signal.SIGUSR1, first, 1)
    loop.add_signal_handler(signal.SIGUSR1, second, 2)
    os.kill(os.getpid(), signal.SIGUSR1)
    run(loop, second.next_call(1), BOUND)
    run(loop, settle(), BOUND)
    assert (first.calls, second.calls) == ([], [(2,)])


def test_handler_still_runs_while_signal_signal_replaced_it(loop):
    # uvicorn's Server.serve() swaps in its own handler with signal.signal()
    # and restores the loop's afterwards (its test_server_interrupt). On
    # asyncio's loop the callback still runs, from the signal number CPython
    # writes to the wakeup fd; shardloop ran callbacks from its Python-level
    # handler and lost this one.
    rec, theirs = Recorder(loop), []
    loop.add_signal_handler(signal.SIGUSR1, rec, "loop")
    ours = signal.signal(signal.SIGUSR1, lambda signum, frame: theirs.append(signum))

    async def main():
        os.kill(os.getpid(), signal.SIGUSR1)
        await spin()
        signal.signal(signal.SIGUSR1, ours)
        await rec.next_call(1)
        await settle()

    run(loop, main(), BOUND)
    assert theirs == [signal.SIGUSR1]
    assert rec.calls == [("loop",)]


def test_remove_signal_handler(loop):
    rec = Recorder(loop)
    assert current_wakeup_fd() == -1
    loop.add_signal_handler(signal.SIGUSR1, rec)
    loop.add_signal_handler(signal.SIGUSR2, rec)
    assert current_wakeup_fd() != -1
    assert loop.remove_signal_handler(signal.SIGUSR1) is True
    assert loop.remove_signal_handler(signal.SIGUSR1) is False
    assert signal.getsignal(signal.SIGUSR1) == signal.SIG_DFL
    assert current_wakeup_fd() != -1  # SIGUSR2 still handled
    assert loop.remove_signal_handler(signal.SIGUSR2) is True
    assert signal.getsignal(signal.SIGUSR2) == signal.SIG_DFL
    assert current_wakeup_fd() == -1
    assert loop.remove_signal_handler(signal.SIGKILL) is False
    assert loop.remove_signal_handler(signal.SIGINT) is False
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    run(loop, settle(), BOUND)
    assert rec.calls == []


def test_removed_handler_no_longer_runs(loop):
    rec, other = Recorder(loop), Recorder(loop)
    loop.add_signal_handler(signal.SIGUSR1, rec)
    loop.add_signal_handler(signal.SIGUSR2, other)
    loop.remove_signal_handler(signal.SIGUSR1)
    # SIGUSR1 is ignored rather than fatal for the rest of the test
    signal.signal(signal.SIGUSR1, signal.SIG_IGN)
    os.kill(os.getpid(), signal.SIGUSR1)
    os.kill(os.getpid(), signal.SIGUSR2)
    run(loop, other.next_call(1), BOUND)
    run(loop, settle(), BOUND)
    assert (rec.calls, other.calls) == ([], [()])


WHEN_ADDED = ["before_run", "while_running"]


@pytest.mark.parametrize("added", WHEN_ADDED)
def test_ctrl_c_still_wakes_after_last_handler_removed_while_running(loop, added):
    """Without the wakeup fd the SIGINT would only be seen when the long
    sleep ends: there is no other event until then."""
    if added == "before_run":
        loop.add_signal_handler(signal.SIGUSR1, print)

    async def main():
        if added == "while_running":
            loop.add_signal_handler(signal.SIGUSR1, print)
        assert loop.remove_signal_handler(signal.SIGUSR1)
        timer = kill_later(signal.SIGINT)
        try:
            await asyncio.sleep(3 * GUARD)
        finally:
            timer.join()

    started = time.monotonic()
    with pytest.raises(KeyboardInterrupt):
        loop.run_until_complete(main())
    assert time.monotonic() - started < 2 * GUARD, "SIGINT was not noticed while the loop slept"
    loop.close()
    assert current_wakeup_fd() == -1


@pytest.mark.parametrize("added", WHEN_ADDED)
def test_wakeup_fd_outlives_a_run_while_handlers_remain(loop, added):
    rec = Recorder(loop)

    async def add():
        loop.add_signal_handler(signal.SIGUSR1, rec)
        return current_wakeup_fd()

    if added == "before_run":
        loop.add_signal_handler(signal.SIGUSR1, rec)
        fd = current_wakeup_fd()
        run(loop, settle(), BOUND)
    else:
        fd = run(loop, add(), BOUND)
    assert current_wakeup_fd() == fd != -1
    # Delivered between runs, handled by the next one.
    os.kill(os.getpid(), signal.SIGUSR1)
    run(loop, rec.next_call(1), BOUND)
    assert rec.calls == [()]
    loop.close()
    assert current_wakeup_fd() == -1


# ------------------------------------------------------------- errors


async def _coro_function():
    pass


def test_bad_arguments(loop):
    with pytest.raises(TypeError, match=r"^sig must be an int, not '1'$"):
        loop.add_signal_handler("1", print)
    with pytest.raises(TypeError, match=r"^sig must be an int, not 1.0$"):
        loop.remove_signal_handler(1.0)
    for bad in (0, -1, signal.NSIG, 1000):
        with pytest.raises(ValueError, match=rf"^invalid signal number {bad}$"):
            loop.add_signal_handler(bad, print)
        with pytest.raises(ValueError, match=rf"^invalid signal number {bad}$"):
            loop.remove_signal_handler(bad)
    with pytest.raises(TypeError, match=r"^coroutines cannot be used with add_signal_handler\(\)$"):
        loop.add_signal_handler(signal.SIGUSR1, _coro_function)
    coro = _coro_function()
    with pytest.raises(TypeError, match=r"^coroutines cannot be used with add_signal_handler\(\)$"):
        loop.add_signal_handler(signal.SIGUSR1, coro)
    coro.close()
    assert signal.getsignal(signal.SIGUSR1) == signal.SIG_DFL
    assert current_wakeup_fd() == -1


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGSTOP], ids=["SIGKILL", "SIGSTOP"])
def test_uncatchable_signal(loop, sig):
    with pytest.raises(RuntimeError, match=rf"^sig {int(sig)} cannot be caught$"):
        loop.add_signal_handler(sig, print)
    assert current_wakeup_fd() == -1
    assert loop.remove_signal_handler(sig) is False


def test_only_in_main_thread(loop):
    errors = []

    def other_thread():
        try:
            loop.add_signal_handler(signal.SIGUSR1, print)
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=other_thread)
    thread.start()
    thread.join()
    assert [type(e) for e in errors] == [RuntimeError]
    assert str(errors[0]) == "set_wakeup_fd only works in main thread of the main interpreter"
    assert signal.getsignal(signal.SIGUSR1) == signal.SIG_DFL


def test_closed_loop(loop):
    loop.close()
    with pytest.raises(RuntimeError, match="^Event loop is closed$"):
        loop.add_signal_handler(signal.SIGUSR1, print)
    assert loop.remove_signal_handler(signal.SIGUSR1) is False
    assert signal.getsignal(signal.SIGUSR1) == signal.SIG_DFL


def test_handler_exception_goes_to_exception_handler(loop):
    contexts = []
    loop.set_exception_handler(lambda lp, ctx: contexts.append(ctx))

    def boom(arg):
        raise ZeroDivisionError(arg)

    loop.add_signal_handler(signal.SIGUSR1, boom, "x")
    rec = Recorder(loop)
    loop.add_signal_handler(signal.SIGUSR2, rec)
    os.kill(os.getpid(), signal.SIGUSR1)
    os.kill(os.getpid(), signal.SIGUSR2)
    run(loop, rec.next_call(1), BOUND)
    run(loop, settle(), BOUND)
    assert len(contexts) == 1
    ctx = contexts[0]
    assert isinstance(ctx["exception"], ZeroDivisionError)
    assert ctx["exception"].args == ("x",)
    assert ctx["message"].startswith("Exception in callback ")
    assert "boom" in ctx["message"]
    assert isinstance(ctx["handle"], asyncio.Handle)
    assert loop.is_closed() is False


# ------------------------------------------------------------- closing


def test_close_removes_handlers(loop):
    loop.add_signal_handler(signal.SIGUSR1, print)
    loop.add_signal_handler(signal.SIGINT, print)
    assert signal.getsignal(signal.SIGUSR1) not in (signal.SIG_DFL, signal.SIG_IGN)
    loop.close()
    assert signal.getsignal(signal.SIGUSR1) == signal.SIG_DFL
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    assert current_wakeup_fd() == -1
    assert loop.remove_signal_handler(signal.SIGUSR1) is False


def test_unreferenced_loop_gives_its_handlers_back(loop_factory):
    loop = loop_factory()
    loop.add_signal_handler(signal.SIGUSR1, print)
    del loop
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ResourceWarning)
        gc.collect()
    assert signal.getsignal(signal.SIGUSR1) == signal.SIG_DFL
    assert current_wakeup_fd() == -1


RUNNER_SCRIPT = textwrap.dedent("""
    import asyncio, os, signal, sys, threading
    {setup}
    got = []
    cancelled = []

    async def main():
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGUSR1, got.append, "usr1")
        os.kill(os.getpid(), signal.SIGUSR1)
        while not got:
            await asyncio.sleep(0.01)
        if sys.argv[1] == "interrupt":
            threading.Timer(0.1, os.kill, (os.getpid(), signal.SIGINT)).start()
            try:
                await asyncio.sleep(100)  # past the parent's timeout
            except asyncio.CancelledError:
                cancelled.append(True)
                raise
        return "done"

    def go():
        {run}

    try:
        print(go())
    except KeyboardInterrupt:
        print("KeyboardInterrupt", cancelled)
    print(got, signal.getsignal(signal.SIGUSR1) == signal.SIG_DFL,
          signal.getsignal(signal.SIGINT) is signal.default_int_handler,
          signal.set_wakeup_fd(-1))
""")

RUNNERS = [
    pytest.param("", "with asyncio.Runner() as r: return r.run(main())", id="asyncio-runner"),
    pytest.param("import shardloop",
                 "with asyncio.Runner(loop_factory=shardloop.new_event_loop) as r: return r.run(main())",
                 id="shardloop-runner"),
    pytest.param("import shardloop", "return asyncio.run(main(), loop_factory=shardloop.new_event_loop)",
                 id="shardloop-asyncio.run",
                 marks=pytest.mark.skipif(not PY312, reason="asyncio.run(loop_factory=) is 3.12+")),
]


@pytest.mark.parametrize("setup,run_expr", RUNNERS)
@pytest.mark.parametrize("mode", ["complete", "interrupt"])
def test_runner_shuts_down_cleanly_after_handlers_were_added(setup, run_expr, mode):
    """The Runner closes the loop, which gives the handlers back; its own
    SIGINT handling (cancel the main task, then KeyboardInterrupt) still
    works with loop signal handlers in place. A fresh interpreter, so the
    real initial SIGINT disposition applies."""
    if setup:
        pytest.importorskip("shardloop")
    script = RUNNER_SCRIPT.format(setup=setup, run=run_expr)
    out = subprocess.run([sys.executable, "-c", script, mode], capture_output=True, text=True,
                         timeout=4 * GUARD)
    first = "done" if mode == "complete" else "KeyboardInterrupt [True]"
    assert out.stdout.splitlines() == [first, "['usr1'] True True -1"], (out.stdout, out.stderr)
    assert out.returncode == 0
