"""Child processes: subprocess_exec / subprocess_shell.

The transport is asyncio's own skeleton (base_subprocess) started with
subprocess.Popen, so every Popen argument behaves as it does there; the
child's pipes are shardloop's pipe transports. Exit is seen without a child
watcher: a pidfd polled by the loop, then waitpid() of exactly that pid, so
no other thread's children are reaped and no SIGCHLD handler is needed."""

from __future__ import annotations

import asyncio
import logging
import os
import subprocess
import threading
from asyncio import base_subprocess
from typing import Any

logger = logging.getLogger("asyncio")

# What asyncio reports when it cannot learn a child's status.
_UNKNOWN_RETURNCODE = 255


class SubprocessTransport(base_subprocess.BaseSubprocessTransport):
    def _start(self, args: Any, shell: bool, stdin: Any, stdout: Any, stderr: Any,
               bufsize: int, **kwargs: Any) -> None:
        self._proc = subprocess.Popen(args, shell=shell, stdin=stdin, stdout=stdout, stderr=stderr,
                                      universal_newlines=False, bufsize=bufsize, **kwargs)


class _ChildWatch:
    """Reaps one child and tells its transport: readiness of a pidfd on the
    loop, or (no pidfd_open, or no fd to spare) a thread blocked in
    waitpid() of that pid."""

    def __init__(self, loop: Any, transport: SubprocessTransport) -> None:
        self._loop = loop
        self._transport = transport
        self._proc = transport._proc
        self._pid = transport.get_pid()
        self._pidfd = -1

    def __del__(self, _close: Any = os.close) -> None:
        # The loop closed with the child still running: its watch is gone.
        if self._pidfd >= 0:
            _close(self._pidfd)
            self._pidfd = -1

    def start(self) -> None:
        try:
            self._pidfd = os.pidfd_open(self._pid)
        except ProcessLookupError:
            # Already reaped, by a Popen.poll() in another thread.
            self._loop.call_soon(self._deliver, self._status_from_popen())
            return
        except (AttributeError, OSError):
            self._start_thread()
            return
        try:
            self._loop._add_reader(self._pidfd, self._on_exit)
        except OSError:
            self._close_pidfd()
            self._start_thread()

    def _close_pidfd(self) -> None:
        if self._pidfd >= 0:
            os.close(self._pidfd)
            self._pidfd = -1

    def _on_exit(self) -> None:
        self._loop._remove_reader(self._pidfd)
        self._close_pidfd()
        # A readable pidfd means the child has exited: this does not block.
        self._deliver(self._reap())

    def _reap(self) -> int:
        try:
            _, status = os.waitpid(self._pid, 0)
        except ChildProcessError:
            return self._status_from_popen()
        code = os.waitstatus_to_exitcode(status)
        # Popen must not try to reap it again (and guess 0 on ECHILD).
        if self._proc.returncode is None:
            self._proc.returncode = code
        return code

    def _status_from_popen(self) -> int:
        if self._proc.returncode is not None:
            return self._proc.returncode
        logger.warning("Unknown child process pid %d, will report returncode %d",
                       self._pid, _UNKNOWN_RETURNCODE)
        return _UNKNOWN_RETURNCODE

    def _deliver(self, returncode: int) -> None:
        transport, self._transport = self._transport, None
        # One more iteration, as asyncio does, so output read together with
        # the exit is handed over first.
        self._loop.call_soon(transport._process_exited, returncode)

    def _start_thread(self) -> None:
        threading.Thread(target=self._wait_in_thread, name=f"waitpid-{self._pid}", daemon=True).start()

    def _wait_in_thread(self) -> None:
        code = self._reap()
        try:
            self._loop.call_soon_threadsafe(self._deliver, code)
        except RuntimeError:
            pass  # the loop has closed: nobody is left to tell


class SubprocessMixin:
    async def _make_subprocess_transport(self, protocol: Any, args: Any, shell: bool, stdin: Any,
                                         stdout: Any, stderr: Any, bufsize: int,
                                         extra: dict | None = None, **kwargs: Any) -> SubprocessTransport:
        waiter = self.create_future()  # type: ignore[attr-defined]
        transport = SubprocessTransport(self, protocol, args, shell, stdin, stdout, stderr, bufsize,
                                        waiter=waiter, extra=extra, **kwargs)
        _ChildWatch(self, transport).start()
        try:
            await waiter
        except (SystemExit, KeyboardInterrupt):
            raise
        except BaseException:
            transport.close()
            await transport._wait()
            raise
        return transport

    async def subprocess_shell(self, protocol_factory: Any, cmd: Any, *, stdin: Any = subprocess.PIPE,
                               stdout: Any = subprocess.PIPE, stderr: Any = subprocess.PIPE,
                               universal_newlines: bool = False, shell: bool = True, bufsize: int = 0,
                               encoding: Any = None, errors: Any = None, text: Any = None,
                               **kwargs: Any) -> tuple:
        if not isinstance(cmd, (bytes, str)):
            raise ValueError("cmd must be a string")
        _check_popen_options(universal_newlines, None if shell else "shell must be True", bufsize, text,
                             encoding, errors)
        protocol = protocol_factory()
        transport = await self._spawn(protocol, cmd, True, stdin, stdout, stderr, bufsize, kwargs,
                                      f"run shell command {cmd!r}")
        return transport, protocol

    async def subprocess_exec(self, protocol_factory: Any, program: Any, *args: Any,
                              stdin: Any = subprocess.PIPE, stdout: Any = subprocess.PIPE,
                              stderr: Any = subprocess.PIPE, universal_newlines: bool = False,
                              shell: bool = False, bufsize: int = 0, encoding: Any = None,
                              errors: Any = None, text: Any = None, **kwargs: Any) -> tuple:
        _check_popen_options(universal_newlines, "shell must be False" if shell else None, bufsize, text,
                             encoding, errors)
        protocol = protocol_factory()
        transport = await self._spawn(protocol, (program,) + args, False, stdin, stdout, stderr, bufsize,
                                      kwargs, f"execute program {program!r}")
        return transport, protocol

    async def _spawn(self, protocol: Any, args: Any, shell: bool, stdin: Any, stdout: Any, stderr: Any,
                     bufsize: int, kwargs: dict, what: str) -> Any:
        # Only the program is logged: arguments may hold secrets.
        debug = self.get_debug()  # type: ignore[attr-defined]
        if debug:
            logger.debug("%s stdin=%s stdout=%s stderr=%s", what, _describe(stdin), _describe(stdout),
                         _describe(stderr))
        transport = await self._make_subprocess_transport(protocol, args, shell, stdin, stdout, stderr,
                                                          bufsize, **kwargs)
        if debug:
            logger.info("%s: %r", what, transport)
        return transport


def _check_popen_options(universal_newlines: Any, shell_error: str | None, bufsize: Any, text: Any,
                         encoding: Any, errors: Any) -> None:
    # asyncio's order of checks, so the same option wins when several are off.
    if universal_newlines:
        raise ValueError("universal_newlines must be False")
    if shell_error:
        raise ValueError(shell_error)
    if bufsize != 0:
        raise ValueError("bufsize must be 0")
    if text:
        raise ValueError("text must be False")
    if encoding is not None:
        raise ValueError("encoding must be None")
    if errors is not None:
        raise ValueError("errors must be None")


def _describe(pipe: Any) -> str:
    names = {subprocess.PIPE: "<pipe>", subprocess.STDOUT: "<stdout>", subprocess.DEVNULL: "<devnull>"}
    if isinstance(pipe, int) and pipe in names:
        return names[pipe]
    return repr(pipe)
