"""Starting and reaping children: what the loop thread does while a child
starts (nothing that blocks in Python: checked with blockbuster, the checker
anyio's suite runs under, and by watching os.read/os.waitpid), the errors of
a failed start, every stdio combination, the Popen arguments the engine's
start handles, the arguments that keep Popen's own start, and reaping
through the pidfd (no zombie left, no wait on a pid that someone else reaped
and that now belongs to another child).

Every test runs on asyncio's own loop (the reference) and on shardloop,
except those that look at how shardloop starts or reaps (they say so).
"""

import asyncio
import errno
import itertools
import logging
import os
import resource
import signal
import subprocess
import threading
import time

import pytest

from _support import is_shardloop, run

PIPE = asyncio.subprocess.PIPE
DEVNULL = asyncio.subprocess.DEVNULL
STDOUT = asyncio.subprocess.STDOUT


def zombie_children():
    """Our children that have exited and were never reaped."""
    me = os.getpid()
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read()
        except OSError:
            continue  # gone meanwhile
        # The command name may hold spaces and parentheses: skip past it.
        state, ppid = fields[fields.rindex(")") + 2:].split()[:2]
        if int(ppid) == me and state == "Z":
            found.append(int(entry))
    return found


def is_our_child(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read()
    except OSError:
        return False
    return int(fields[fields.rindex(")") + 2:].split()[1]) == os.getpid()


def open_fds():
    return set(os.listdir("/proc/self/fd"))


class Exited(asyncio.SubprocessProtocol):
    """Resolves `exited` with the returncode."""

    def __init__(self):
        self.exited = asyncio.get_running_loop().create_future()
        self.transport = None

    def connection_made(self, transport):
        self.transport = transport

    def process_exited(self):
        self.exited.set_result(self.transport.get_returncode())


def shardloop_only(loop):
    if not is_shardloop(loop):
        pytest.skip("looks at how shardloop starts or reaps its children")


# ------------------------------------------------- nothing blocks the loop


def start_and_fail(loop, tmp_path):
    """Children started the ways anyio's suite starts them, a failed start,
    each waited for."""

    async def main():
        proc = await asyncio.create_subprocess_exec("cat", stdin=PIPE, stdout=PIPE, stderr=PIPE)
        assert await proc.communicate(b"ping") == (b"ping", b"")
        proc = await asyncio.create_subprocess_shell("echo hi >&2; exit 3", stdout=DEVNULL, stderr=PIPE)
        assert await proc.communicate() == (None, b"hi\n") and proc.returncode == 3
        with pytest.raises(FileNotFoundError):
            await asyncio.create_subprocess_exec(str(tmp_path / "missing"), stdout=PIPE)
        with pytest.raises(FileNotFoundError):
            await asyncio.create_subprocess_exec("true", cwd=tmp_path / "missing")
        transport, proto = await loop.subprocess_exec(Exited, "sh", "-c", "exit 4", stdin=None,
                                                      stdout=None, stderr=None)
        assert await proto.exited == 4
        transport.close()

    run(loop, main())


def test_start_under_blockbuster(loop, tmp_path):
    blockbuster = pytest.importorskip("blockbuster")
    # Before the engine started children, shardloop failed here with
    # "BlockingError: Blocking call to os.read" (Popen's error pipe).
    # asyncio's loop passes because blockbuster allows its subprocess_exec.
    with blockbuster.blockbuster_ctx():
        start_and_fail(loop, tmp_path)
    assert zombie_children() == []


def test_no_blocking_read_or_wait_on_the_loop_thread(loop, tmp_path, monkeypatch):
    shardloop_only(loop)  # asyncio's loop reads Popen's error pipe
    calls = []
    real_read, real_waitpid, real_waitid = os.read, os.waitpid, os.waitid
    loop_thread = []

    def on_loop_thread():
        return loop_thread and threading.get_ident() == loop_thread[0]

    def read(fd, n):
        if on_loop_thread() and os.get_blocking(fd):
            calls.append(("read", fd))
        return real_read(fd, n)

    def waitpid(pid, options):
        if on_loop_thread() and not options & os.WNOHANG:
            calls.append(("waitpid", pid))
        return real_waitpid(pid, options)

    def waitid(idtype, id, options):
        if on_loop_thread() and not options & os.WNOHANG:
            calls.append(("waitid", id))
        return real_waitid(idtype, id, options)

    monkeypatch.setattr(os, "read", read)
    monkeypatch.setattr(os, "waitpid", waitpid)
    monkeypatch.setattr(os, "waitid", waitid)
    loop.call_soon(lambda: loop_thread.append(threading.get_ident()))
    start_and_fail(loop, tmp_path)
    assert loop_thread and calls == []


# ------------------------------------------------- a failed start


def exec_error(loop, *args, **kwargs):
    async def main():
        before = open_fds()
        with pytest.raises(OSError) as info:
            await asyncio.create_subprocess_exec(*args, stdin=PIPE, stdout=PIPE, stderr=PIPE, **kwargs)
        assert open_fds() == before  # the pipes Popen made are closed
        return info.value

    exc = run(loop, main())
    assert zombie_children() == []  # the failed child was reaped
    return exc


def check_error(exc, cls, code, filename):
    assert type(exc) is cls
    assert exc.errno == code and exc.strerror == os.strerror(code)
    assert exc.filename == filename
    if filename is None:
        assert str(exc) == f"[Errno {code}] {os.strerror(code)}"
    else:
        assert str(exc) == f"[Errno {code}] {os.strerror(code)}: {filename!r}"


def test_error_program_missing(loop, tmp_path):
    missing = str(tmp_path / "missing")
    check_error(exec_error(loop, missing), FileNotFoundError, errno.ENOENT, missing)


def test_error_program_not_on_path(loop):
    name = "shardloop-no-such-program"
    check_error(exec_error(loop, name), FileNotFoundError, errno.ENOENT, name)


def test_error_not_executable(loop, tmp_path):
    path = tmp_path / "script"
    path.write_text("#!/bin/sh\nexit 0\n")
    path.chmod(0o644)
    check_error(exec_error(loop, path), PermissionError, errno.EACCES, path)


def test_error_directory(loop, tmp_path):
    check_error(exec_error(loop, str(tmp_path)), PermissionError, errno.EACCES, str(tmp_path))


def test_error_not_a_program(loop, tmp_path):
    path = tmp_path / "garbage"
    path.write_bytes(b"\x00\x01\x02 not an executable format\n")
    path.chmod(0o755)
    check_error(exec_error(loop, str(path)), OSError, errno.ENOEXEC, str(path))


def test_error_search_reports_the_program_found(loop, tmp_path):
    # Like os.execvp: a non-executable file found on PATH is the error
    # reported, even when a later directory has nothing.
    found = tmp_path / "found"
    found.mkdir()
    (found / "prog").write_text("#!/bin/sh\n")
    env = {"PATH": f"{found}:{tmp_path / 'empty'}"}
    check_error(exec_error(loop, "prog", env=env), PermissionError, errno.EACCES, "prog")


def test_error_cwd_missing(loop, tmp_path):
    cwd = tmp_path / "missing"
    check_error(exec_error(loop, "true", cwd=cwd), FileNotFoundError, errno.ENOENT, cwd)


def test_error_cwd_missing_shell(loop, tmp_path):
    cwd = str(tmp_path / "missing")

    async def main():
        with pytest.raises(FileNotFoundError) as info:
            await asyncio.create_subprocess_shell("true", cwd=cwd)
        return info.value

    check_error(run(loop, main()), FileNotFoundError, errno.ENOENT, cwd)


def test_error_bad_stdio_descriptor(loop):
    # A step before the exec fails (dup2 of a closed descriptor): Popen
    # names no file from 3.13 on, and names cwd (here None) before.
    # The highest descriptor allowed: nothing the start opens can get it.
    unused = resource.getrlimit(resource.RLIMIT_NOFILE)[0] - 1
    assert str(unused) not in open_fds()

    async def main():
        with pytest.raises(OSError) as info:
            await asyncio.create_subprocess_exec("true", stdout=unused)
        return info.value

    check_error(run(loop, main()), OSError, errno.EBADF, None)
    assert zombie_children() == []


@pytest.mark.parametrize("kwargs, exc_type, message", [
    ({"env": {"A=B": "1"}}, ValueError, "illegal environment variable name"),
    ({"env": {"A": "1\0"}}, ValueError, "embedded null byte"),
    ({"cwd": "/tmp\0x"}, ValueError, "embedded null byte"),
])
def test_error_bad_arguments(loop, kwargs, exc_type, message):
    async def main():
        with pytest.raises(exc_type) as info:
            await asyncio.create_subprocess_exec("true", **kwargs)
        assert str(info.value) == message

    run(loop, main())


def test_error_bad_argument_type(loop):
    async def main():
        with pytest.raises(TypeError) as info:
            await asyncio.create_subprocess_exec("echo", 42)
        assert str(info.value) == "expected str, bytes or os.PathLike object, not int"
        with pytest.raises(ValueError, match="^embedded null byte$"):
            await asyncio.create_subprocess_exec("echo", "a\0b")

    run(loop, main())


# ------------------------------------------------- every stdio combination

# The child reads a line when it has a stdin to read, then writes one line
# to stdout and one to stderr.
SCRIPT = 'if [ "$1" = read ]; then read line; else line=none; fi; echo "out:$line"; echo "err:$line" >&2'

STDIN = ["PIPE", "DEVNULL", "None", "fd", "file"]
STDOUT_KINDS = ["PIPE", "DEVNULL", "None", "fd", "file"]
STDERR_KINDS = ["PIPE", "DEVNULL", "None", "fd", "file", "STDOUT"]


class Sinks:
    """Where the child's output ends up, for each kind of destination."""

    def __init__(self, tmp_path):
        self.tmp_path = tmp_path
        self.closers = []
        self.readers = {}

    def stdin(self, kind):
        if kind in ("PIPE", "DEVNULL", "None"):
            return {"PIPE": PIPE, "DEVNULL": DEVNULL, "None": None}[kind]
        if kind == "fd":
            r, w = os.pipe()
            os.write(w, b"from-fd\n")
            os.close(w)
            self.closers.append(lambda: os.close(r))
            return r
        path = self.tmp_path / "stdin"
        path.write_bytes(b"from-file\n")
        f = open(path, "rb")
        self.closers.append(f.close)
        return f

    def output(self, kind, name):
        if kind in ("PIPE", "DEVNULL", "None", "STDOUT"):
            return {"PIPE": PIPE, "DEVNULL": DEVNULL, "None": None, "STDOUT": STDOUT}[kind]
        if kind == "fd":
            r, w = os.pipe()
            self.closers.append(lambda: os.close(r))
            self.readers[name] = ("fd", r, w)
            return w
        f = open(self.tmp_path / name, "wb")
        self.readers[name] = ("file", f, None)
        return f

    def after_start(self):
        # Our copies of the write ends go, so reading sees the child's EOF.
        for how, obj, w in self.readers.values():
            if how == "fd":
                os.close(w)
            else:
                obj.close()

    def read(self, name):
        how, obj, _ = self.readers[name]
        if how == "file":
            return (self.tmp_path / name).read_bytes()
        data = b""
        while chunk := os.read(obj, 65536):
            data += chunk
        return data

    def close(self):
        for close in self.closers:
            close()


@pytest.mark.parametrize("stdin, stdout, stderr", list(itertools.product(STDIN, STDOUT_KINDS, STDERR_KINDS)))
def test_stdio_combination(loop, tmp_path, capfd, stdin, stdout, stderr):
    sinks = Sinks(tmp_path)
    line = {"PIPE": "from-pipe", "fd": "from-fd", "file": "from-file"}.get(stdin, "none")

    async def main():
        proc = await asyncio.create_subprocess_exec(
            "sh", "-c", SCRIPT, "sh", "read" if stdin != "None" and stdin != "DEVNULL" else "no",
            stdin=sinks.stdin(stdin), stdout=sinks.output(stdout, "stdout"),
            stderr=sinks.output(stderr, "stderr"))
        sinks.after_start()
        assert (proc.stdin is not None, proc.stdout is not None, proc.stderr is not None) == (
            stdin == "PIPE", stdout == "PIPE", stderr == "PIPE")
        out, err = await proc.communicate(b"from-pipe\n" if stdin == "PIPE" else None)
        assert proc.returncode == 0
        return out, err

    try:
        out, err = run(loop, main())
        got = {"stdout": b"", "stderr": b""}
        captured = capfd.readouterr()
        for name, kind, piped, inherited in (("stdout", stdout, out, captured.out),
                                             ("stderr", stderr, err, captured.err)):
            if kind == "PIPE":
                got[name] = piped
            elif kind == "None":
                got[name] = inherited.encode()
            elif kind in ("fd", "file"):
                got[name] = sinks.read(name)
        expected_out = f"out:{line}\n".encode()
        expected_err = f"err:{line}\n".encode()
        if stderr == "STDOUT":
            # Both lines go where stdout goes (nowhere for DEVNULL).
            both = expected_out + expected_err if stdout != "DEVNULL" else b""
            assert (got["stdout"], got["stderr"]) == (both, b"")
        else:
            assert got["stdout"] == (b"" if stdout == "DEVNULL" else expected_out)
            assert got["stderr"] == (b"" if stderr == "DEVNULL" else expected_err)
    finally:
        sinks.close()


def test_stdout_and_stderr_given_as_descriptor_0(loop):
    # The child's 1 and 2 come from its 0, which its stdin replaces first:
    # the start must move them out of the way (Popen does).
    r, w = os.pipe()
    saved = os.dup(0)
    try:
        os.dup2(w, 0)
        os.close(w)

        async def main():
            proc = await asyncio.create_subprocess_exec("sh", "-c", "echo out; echo err >&2",
                                                        stdin=DEVNULL, stdout=0, stderr=0)
            return await proc.wait()

        assert run(loop, main()) == 0
    finally:
        os.dup2(saved, 0)
        os.close(saved)
    assert sorted(os.read(r, 100).split()) == [b"err", b"out"]
    os.close(r)


# ------------------------------------------------- the other Popen arguments


def sh_output(loop, script, **kwargs):
    async def main():
        proc = await asyncio.create_subprocess_exec("sh", "-c", script, stdout=PIPE, **kwargs)
        out, _ = await proc.communicate()
        assert proc.returncode == 0
        return out.decode().strip()

    return run(loop, main())


def test_close_fds(loop):
    r, w = os.pipe()
    os.set_inheritable(w, True)
    try:
        check = f"[ -e /proc/self/fd/{w} ] && echo open || echo closed"
        assert sh_output(loop, check) == "closed"
        assert sh_output(loop, check, close_fds=False) == "open"
        assert sh_output(loop, check, pass_fds=(w,)) == "open"
    finally:
        os.close(r)
        os.close(w)


def test_pass_fds_made_inheritable(loop):
    r, w = os.pipe()  # close-on-exec, as every descriptor Python makes
    try:
        assert sh_output(loop, f"echo through > /proc/self/fd/{w}; echo done", pass_fds=(w,)) == "done"
        assert os.read(r, 100) == b"through\n"
        assert not os.get_inheritable(w)  # only the child's copy changed
    finally:
        os.close(r)
        os.close(w)


def test_umask(loop):
    assert sh_output(loop, "umask", umask=0o027) == "0027"


def test_process_group(loop):
    out = sh_output(loop, "cut -d' ' -f5 /proc/$$/stat; echo $$", process_group=0)
    pgid, pid = out.split()
    assert pgid == pid


def test_start_new_session_and_env(loop, tmp_path):
    out = sh_output(loop, 'echo "$X"; pwd; cut -d" " -f6 /proc/$$/stat; echo $$', start_new_session=True,
                    cwd=tmp_path, env={"X": "value", "PATH": os.defpath})
    x, cwd, sid, pid = out.splitlines()
    assert (x, cwd, sid) == ("value", os.path.realpath(tmp_path), pid)


def test_executable_argument(loop):
    # argv[0] is what the child is told; executable is what runs.
    assert sh_output(loop, 'echo "$0"', executable="/bin/sh") == "sh"

    async def main():
        proc = await asyncio.create_subprocess_exec("fake-name", "-c", 'echo "$0"', executable="/bin/sh",
                                                    stdout=PIPE)
        return (await proc.communicate())[0]

    assert run(loop, main()) == b"fake-name\n"


def signal_masks(loop, **kwargs):
    out = sh_output(loop, "grep -E '^Sig(Blk|Ign):' /proc/self/status", **kwargs)
    return {line.split(":")[0]: int(line.split()[1], 16) for line in out.splitlines()}


def bit(signum):
    return 1 << (signum - 1)


def test_child_signals(loop):
    # A Python handler is not inherited; an ignored signal stays ignored;
    # SIGPIPE (ignored by Python itself) is restored; nothing is blocked.
    old_usr1 = signal.signal(signal.SIGUSR1, lambda *a: None)
    old_usr2 = signal.signal(signal.SIGUSR2, signal.SIG_IGN)
    try:
        masks = signal_masks(loop)
        kept = signal_masks(loop, restore_signals=False)
    finally:
        signal.signal(signal.SIGUSR1, old_usr1)
        signal.signal(signal.SIGUSR2, old_usr2)
    assert masks["SigBlk"] == sum(bit(s) for s in signal.pthread_sigmask(signal.SIG_BLOCK, []))
    assert not masks["SigIgn"] & bit(signal.SIGUSR1)
    assert masks["SigIgn"] & bit(signal.SIGUSR2)
    assert not masks["SigIgn"] & bit(signal.SIGPIPE)
    assert kept["SigIgn"] & bit(signal.SIGPIPE)


# ------------------------------------------------- arguments that need Popen's own start


def test_preexec_fn_keeps_popens_start(loop, monkeypatch):
    if is_shardloop(loop):
        from shardloop import _core

        def refuse(*args):
            raise AssertionError("preexec_fn must not go through the engine's start")

        monkeypatch.setattr(_core, "_spawn", refuse)
    assert sh_output(loop, "echo $X", preexec_fn=lambda: os.environ.__setitem__("X", "set in child")) \
        == "set in child"


def test_user_group_and_extra_groups(loop):
    groups = sorted(set(os.getgroups()))
    uid, gid, all_groups = sh_output(loop, "id -u; id -g; id -G", user=os.getuid(), group=os.getgid(),
                                     extra_groups=groups).split("\n")
    assert (uid, gid) == (str(os.getuid()), str(os.getgid()))
    assert set(map(int, all_groups.split())) == {os.getgid(), *groups}


@pytest.mark.skipif(os.geteuid() != 0, reason="changing the child's user needs root")
def test_user_group_and_extra_groups_change_identity(loop):
    # 65534 is nobody/nogroup; the child must run with exactly those ids.
    assert sh_output(loop, "id -u; id -g; id -G", user=65534, group=65534, extra_groups=[]).split() == [
        "65534", "65534", "65534"]


@pytest.mark.skipif(os.geteuid() == 0, reason="root may set any user")
def test_user_change_refused(loop):
    async def main():
        with pytest.raises(PermissionError):
            await asyncio.create_subprocess_exec("true", user=os.getuid() + 1)

    run(loop, main())
    assert zombie_children() == []


def test_user_and_group_start_under_blockbuster(loop):
    blockbuster = pytest.importorskip("blockbuster")
    # anyio's test_user_group_arguments: shardloop started children with
    # user/group through Popen, whose os.read of its error pipe blocked the
    # loop thread ("BlockingError: Blocking call to os.read"). asyncio's
    # loop passes because blockbuster allows its subprocess_exec.
    with blockbuster.blockbuster_ctx():
        assert sh_output(loop, "id -u", user=os.getuid(), group=os.getgid(), extra_groups=[os.getgid()]) \
            == str(os.getuid())
    assert zombie_children() == []


def test_preexec_fn_error(loop):
    def fail():
        raise RuntimeError("boom")

    async def main():
        with pytest.raises(subprocess.SubprocessError, match="^Exception occurred in preexec_fn.$"):
            await asyncio.create_subprocess_exec("true", preexec_fn=fail)

    run(loop, main())
    assert zombie_children() == []


# ------------------------------------------------- reaping


def test_no_zombie_after_exit_kill_and_failure(loop, tmp_path):
    async def main():
        pids = []
        for args in (["true"], ["sh", "-c", "exit 9"], ["sleep", "30"]):
            proc = await asyncio.create_subprocess_exec(*args)
            pids.append(proc.pid)
            if args[0] == "sleep":
                proc.kill()
            await proc.wait()
        with pytest.raises(FileNotFoundError):
            await asyncio.create_subprocess_exec(str(tmp_path / "missing"))
        return pids

    for pid in run(loop, main()):
        with pytest.raises(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)
    assert zombie_children() == []


def test_child_reaped_after_the_loop_closes(loop):
    # The child outlives its loop, then exits: whoever watched it must still
    # reap it (asyncio's watcher thread does).
    r, w = os.pipe()

    async def main():
        return await loop.subprocess_exec(asyncio.SubprocessProtocol, "cat", stdin=r, stdout=DEVNULL,
                                          stderr=DEVNULL)

    try:
        transport, _ = run(loop, main())  # held: its __del__ would kill the child
        os.close(r)
        r = -1
        pid = transport.get_pid()
        loop.close()
        os.close(w)  # the child reads EOF and exits
        w = -1
        # Bounded wait for the reaper: until then it is our child, running
        # or a zombie.
        for _ in range(1000):
            if not is_our_child(pid):
                break
            time.sleep(0.01)
        assert not is_our_child(pid)
        transport.close()
    finally:
        for fd in (r, w):
            if fd >= 0:
                os.close(fd)


def spawn_with_pid(pid):
    """Another child of ours that gets `pid` (blocked reading its stdin), or
    None when this process may not choose the next pid."""
    for _ in range(50):
        try:
            with open("/proc/sys/kernel/ns_last_pid", "w") as f:
                f.write(str(pid - 1))
        except OSError:
            return None
        child = subprocess.Popen(["cat"], stdin=subprocess.PIPE, stdout=subprocess.DEVNULL)
        if child.pid == pid:
            return child
        # Another process of this machine took it first.
        child.stdin.close()
        child.wait()
    return None


def test_pid_reused_after_someone_else_reaped(loop, caplog):
    shardloop_only(loop)  # asyncio's watcher thread reaps the child itself

    async def main():
        transport, proto = await loop.subprocess_exec(Exited, "sleep", "60", stdin=None, stdout=None,
                                                      stderr=None)
        pid = transport.get_pid()
        # Someone else kills and reaps it before the loop looks (nothing
        # here yields to the loop), and a new child of ours gets its pid.
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        other = spawn_with_pid(pid)
        if other is None:
            transport.close()
            pytest.skip("cannot choose the next pid (needs root: /proc/sys/kernel/ns_last_pid)")
        # Waiting on the pid would block the loop until `other` ends, and
        # report its status: end it later from a thread so such a failure
        # is a failed assertion, not a hang.
        watchdog = threading.Timer(20, other.stdin.close)
        watchdog.start()
        try:
            code = await proto.exited
            assert other.poll() is None  # still running, and not reaped by the loop
        finally:
            watchdog.cancel()
            other.stdin.close()
            other.wait()
        transport.close()
        return pid, code

    with caplog.at_level(logging.WARNING, logger="asyncio"):
        pid, code = run(loop, main(), 30)
    assert code == 255
    assert f"Unknown child process pid {pid}, will report returncode 255" in caplog.text


def test_popen_wait_in_another_thread_agrees(loop):
    # The loop and Popen.wait() both try to collect the status; whoever
    # loses must still see the real exit code, not a made-up 0 or 255.
    # asyncio's watcher thread does lose that race (measured: it reported
    # 255 and "Unknown child process"), so this is shardloop's behaviour.
    shardloop_only(loop)
    async def main():
        transport, proto = await loop.subprocess_exec(asyncio.SubprocessProtocol, "sh", "-c", "read x; exit 3",
                                                      stdout=None, stderr=None)
        popen = transport.get_extra_info("subprocess")
        result = {}
        thread = threading.Thread(target=lambda: result.setdefault("code", popen.wait()))
        thread.start()
        transport.get_pipe_transport(0).close()
        code = await transport._wait()
        await loop.run_in_executor(None, thread.join)
        transport.close()
        return code, result["code"]

    assert run(loop, main()) == (3, 3)


def test_waitid_not_ready_is_retried(loop, monkeypatch):
    shardloop_only(loop)  # shardloop's reaping through the pidfd
    real_waitid = os.waitid
    answers = []

    def waitid(idtype, id, options):
        # The first answer says "not waitable yet", as WNOHANG may.
        answers.append(idtype)
        if len(answers) == 1:
            return None
        return real_waitid(idtype, id, options)

    monkeypatch.setattr(os, "waitid", waitid)

    async def main():
        proc = await asyncio.create_subprocess_exec("sh", "-c", "exit 5")
        return await proc.wait()

    assert run(loop, main()) == 5
    assert answers[:2] == [os.P_PIDFD, os.P_PIDFD]
    assert zombie_children() == []
