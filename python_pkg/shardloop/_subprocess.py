"""Child processes: subprocess_exec / subprocess_shell.

The transport is asyncio's own skeleton (base_subprocess) on a Popen whose
child is started by the engine (engine/src/process.cpp): vfork() and
execve() in C, the outcome of the exec read from memory shared with the
child. Popen's own start reads an error pipe with os.read() until the child
has exec'd, on the loop thread. Every other part of Popen (argument checks,
the pipes, the cleanup when the start fails, poll/kill) is Popen's; user,
group and extra_groups are set by the engine too, and only preexec_fn (Python
code in the child, which needs fork()) keeps Popen's own start. The child's pipes are shardloop's pipe transports.

Exit is seen without a child watcher: a pidfd polled by the loop, then
waitid() on that pidfd, so no other thread's children are reaped, no SIGCHLD
handler is needed, and a pid reused after someone else reaped the child is
never waited for."""

from __future__ import annotations

import asyncio
import contextvars
import errno
import logging
import os
import subprocess
import sys
import threading
from asyncio import base_subprocess
from typing import Any

from . import _core

logger = logging.getLogger("asyncio")

# What asyncio reports when it cannot learn a child's status.
_UNKNOWN_RETURNCODE = 255

# From 3.13 on, a failed step other than chdir() names no file (before, it
# named cwd, whatever failed).
_SETUP_ERROR_NAMES_CWD = sys.version_info < (3, 13)


_STDLIB_POPEN = subprocess.Popen


class _Popen(subprocess.Popen):
    """Popen with the child started by the engine: nothing on the loop thread
    waits in a Python call (os.read) for the exec. The steps and the errors
    are those of Popen's _execute_child on POSIX (CPython 3.11-3.13)."""

    def _execute_child(self, args: Any, executable: Any, preexec_fn: Any, close_fds: bool, pass_fds: Any,
                       cwd: Any, env: Any, startupinfo: Any, creationflags: int, shell: bool,
                       p2cread: int, p2cwrite: int, c2pread: int, c2pwrite: int, errread: int, errwrite: int,
                       restore_signals: bool, gid: Any, gids: Any, uid: Any, umask: int,
                       start_new_session: bool, process_group: int) -> None:
        if preexec_fn is not None:
            # Python code in the child needs fork(): Popen's path.
            return super()._execute_child(  # type: ignore[misc]
                args, executable, preexec_fn, close_fds, pass_fds, cwd, env, startupinfo, creationflags,
                shell, p2cread, p2cwrite, c2pread, c2pwrite, errread, errwrite, restore_signals, gid, gids,
                uid, umask, start_new_session, process_group)

        if isinstance(args, (str, bytes)):
            args = [args]
        elif isinstance(args, os.PathLike):
            if shell:
                raise TypeError("path-like args is not allowed when shell is true")
            args = [args]
        else:
            args = list(args)
        if shell:
            args = ["/bin/sh", "-c"] + args
            if executable:
                args[0] = executable
        if executable is None:
            executable = args[0]
        sys.audit("subprocess.Popen", executable, args, cwd, env)
        program = executable

        env_list = None
        if env is not None:
            env_list = []
            for key, value in env.items():
                key = os.fsencode(key)
                if b"=" in key:
                    raise ValueError("illegal environment variable name")
                env_list.append(key + b"=" + os.fsencode(value))
        executable = os.fsencode(executable)
        if os.path.dirname(executable):
            exec_paths = [executable]
        else:
            # PATH is searched here: the child may not allocate.
            exec_paths = [os.path.join(os.fsencode(d), executable) for d in os.get_exec_path(env)]
        argv = [os.fsencode(arg) for arg in args]
        cwd_bytes = None if cwd is None else os.fsencode(cwd)
        for item in (*argv, *exec_paths, *(env_list or ()), cwd_bytes or b""):
            if b"\0" in item:
                raise ValueError("embedded null byte")

        pid, error, stage, status = _core._spawn(
            argv, exec_paths, env_list, cwd_bytes, (p2cread, c2pwrite, errwrite), (p2cwrite, c2pread, errread),
            sorted(set(map(int, pass_fds))), bool(close_fds), bool(restore_signals), bool(start_new_session),
            process_group, umask, None if gids is None else list(gids), gid, uid)
        if stage == "fork":
            raise OSError(error, os.strerror(error))
        self.pid = pid
        self._child_created = True
        self._close_pipe_fds(p2cread, p2cwrite, c2pread, c2pwrite, errread, errwrite)  # type: ignore[attr-defined]
        if not stage:
            return
        # The engine has reaped the failed child: nothing is left to wait for.
        self.returncode = os.waitstatus_to_exitcode(status)
        if stage == "exec":
            filename = program
        elif stage == "chdir" or _SETUP_ERROR_NAMES_CWD:
            filename = cwd
        else:
            filename = None
        # OSError picks the subclass from the errno (FileNotFoundError, ...).
        if filename is None:
            raise OSError(error, os.strerror(error))
        raise OSError(error, os.strerror(error), filename)


class SubprocessTransport(base_subprocess.BaseSubprocessTransport):
    def _start(self, args: Any, shell: bool, stdin: Any, stdout: Any, stderr: Any,
               bufsize: int, **kwargs: Any) -> None:
        # process_exited() and connection_lost() run in the context the
        # transport was made in, as uvloop's do (README: Deliberate differences).
        self._context = contextvars.copy_context()
        # Code that replaces subprocess.Popen (tests mock it) sees its
        # replacement called, as on asyncio's loop.
        popen = _Popen if subprocess.Popen is _STDLIB_POPEN else subprocess.Popen
        self._proc = popen(args, shell=shell, stdin=stdin, stdout=stdout, stderr=stderr,
                           universal_newlines=False, bufsize=bufsize, **kwargs)


class _ChildWatch:
    """Reaps one child and tells its transport: readiness of a pidfd on the
    loop, then waitid() on that pidfd without waiting, or (no pidfd_open, or
    no fd to spare) a thread blocked in waitpid() of that pid."""

    # Bounds of the pause before trying again when a readable pidfd could not
    # be reaped (see _on_exit).
    _FIRST_RETRY_S = 0.001
    _LAST_RETRY_S = 0.1

    def __init__(self, loop: Any, transport: SubprocessTransport) -> None:
        self._loop = loop
        self._transport = transport
        self._proc = transport._proc
        self._pid = transport.get_pid()
        self._pidfd = -1
        self._retry_s = self._FIRST_RETRY_S

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
            return
        self._loop._child_watches.add(self)

    def hand_over(self) -> None:
        """The loop closes with the child not yet reaped: a thread waits for
        it, so it never stays a zombie (asyncio's watcher thread reaps
        whether or not its loop still runs). Nobody is told."""
        self._loop._remove_reader(self._pidfd)
        self._transport = None
        threading.Thread(target=self._reap_after_close, name=f"waitid-{self._pid}", daemon=True).start()

    def _reap_after_close(self) -> None:
        try:
            result = os.waitid(os.P_PIDFD, self._pidfd, os.WEXITED)
        except OSError:
            result = None  # reaped elsewhere, or no P_PIDFD: nothing to do
        if result is not None and self._proc.returncode is None:
            self._proc.returncode = _exit_code(result)
        self._close_pidfd()

    def _close_pidfd(self) -> None:
        if self._pidfd >= 0:
            os.close(self._pidfd)
            self._pidfd = -1

    def _on_exit(self) -> None:
        # A pidfd stays readable: it is watched no more, whatever comes next.
        self._loop._remove_reader(self._pidfd)
        code = self._reap_now()
        if code is None:
            # Popen.wait() in another thread holds the child (it will set the
            # returncode), or the kernel said exited before waitable: look
            # again shortly, never waiting on the loop thread.
            self._loop.call_later(self._retry_s, self._on_exit)
            self._retry_s = min(self._retry_s * 2, self._LAST_RETRY_S)
            return
        self._close_pidfd()
        self._deliver(code)

    def _reap_now(self) -> int | None:
        """The exit code, or None when it cannot be had without waiting."""
        proc = self._proc
        # Popen's own lock: its poll()/wait() in another thread and this
        # reap do not both collect the status (the loser would make one up).
        lock = getattr(proc, "_waitpid_lock", None)
        if lock is not None and not lock.acquire(False):
            return None
        try:
            if proc.returncode is not None:
                return proc.returncode
            try:
                code = self._wait_nohang()
            except ChildProcessError:
                # Reaped by someone else (os.waitpid(-1), SIGCHLD ignored):
                # the status is lost, as in asyncio.
                return self._status_from_popen()
            if code is not None:
                proc.returncode = code  # Popen must not reap it again
            return code
        finally:
            if lock is not None:
                lock.release()

    def _wait_nohang(self) -> int | None:
        # Through the pidfd, not the pid: once someone else has reaped the
        # child its pid may belong to another child of ours, which
        # waitpid(pid) would wait for (and report).
        try:
            result = os.waitid(os.P_PIDFD, self._pidfd, os.WEXITED | os.WNOHANG)
        except (AttributeError, OSError) as exc:
            if isinstance(exc, OSError) and exc.errno != errno.EINVAL:
                raise
            # No P_PIDFD (kernel before 5.4): the pid, still without waiting.
            pid, status = os.waitpid(self._pid, os.WNOHANG)
            return os.waitstatus_to_exitcode(status) if pid else None
        return None if result is None else _exit_code(result)

    def _reap(self) -> int:
        # The thread's wait (no pidfd): blocking is its job.
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
        self._loop._child_watches.discard(self)
        transport, self._transport = self._transport, None
        # One more iteration, as asyncio does, so output read together with
        # the exit is handed over first.
        self._loop.call_soon(transport._process_exited, returncode, context=transport._context)

    def _start_thread(self) -> None:
        threading.Thread(target=self._wait_in_thread, name=f"waitpid-{self._pid}", daemon=True).start()

    def _wait_in_thread(self) -> None:
        code = self._reap()
        try:
            self._loop.call_soon_threadsafe(self._deliver, code)
        except RuntimeError:
            pass  # the loop has closed: nobody is left to tell


def _exit_code(result: Any) -> int:
    """A waitid() result as a returncode: the status, or minus the signal
    that killed the child (with or without a core dump)."""
    return result.si_status if result.si_code == os.CLD_EXITED else -result.si_status


class SubprocessMixin:
    # The children watched through a pidfd and not yet reaped.
    _child_watches: set

    def _close_child_watches(self) -> None:
        watches = getattr(self, "_child_watches", None)
        while watches:
            watches.pop().hand_over()

    async def _make_subprocess_transport(self, protocol: Any, args: Any, shell: bool, stdin: Any,
                                         stdout: Any, stderr: Any, bufsize: int,
                                         extra: dict | None = None, **kwargs: Any) -> SubprocessTransport:
        waiter = self.create_future()  # type: ignore[attr-defined]
        transport = SubprocessTransport(self, protocol, args, shell, stdin, stdout, stderr, bufsize,
                                        waiter=waiter, extra=extra, **kwargs)
        if not hasattr(self, "_child_watches"):
            self._child_watches = set()
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
