"""Child processes: asyncio.create_subprocess_exec/_shell, Process.communicate
and wait, loop.subprocess_exec/_shell with a SubprocessProtocol, argument
checks, signals, reaping -- with real programs (cat, sh, sleep, true and the
running interpreter).

Every test runs on asyncio's own loop (the reference) and on shardloop;
the few that look at how shardloop reaps its children say so. "The reader
stays paused" is checked against how much the child could have written,
not against time.
"""

import asyncio
import os
import signal
import subprocess
import sys
import threading

import pytest

from _support import is_shardloop, run

PIPE = asyncio.subprocess.PIPE
PY = sys.executable
BIG = 30.0  # bound for runs that start interpreters (2 shared cores, ASan)


def open_fds():
    return set(os.listdir("/proc/self/fd"))


class Recorder(asyncio.SubprocessProtocol):
    def __init__(self):
        self.calls = []
        self.out = {1: bytearray(), 2: bytearray()}
        self.transport = None
        loop = asyncio.get_running_loop()
        self.exited = loop.create_future()
        self.lost = loop.create_future()

    def connection_made(self, transport):
        self.transport = transport
        self.calls.append("made")

    def pipe_data_received(self, fd, data):
        self.out[fd] += data

    def pipe_connection_lost(self, fd, exc):
        self.calls.append(("pipe_lost", fd, exc))

    def process_exited(self):
        self.calls.append("exited")
        self.exited.set_result(self.transport.get_returncode())

    def connection_lost(self, exc):
        self.calls.append("lost")
        self.lost.set_result(exc)


# ---------------------------------------------------------------- streams API


def test_cat_echoes_megabytes(loop):
    async def main():
        proc = await asyncio.create_subprocess_exec("cat", stdin=PIPE, stdout=PIPE)
        data = os.urandom(3 * 1024 * 1024 + 7)
        out, err = await proc.communicate(data)
        assert out == data and err is None
        assert proc.returncode == 0

    run(loop, main(), BIG)


def test_communicate_all_three_pipes(loop):
    script = ("import sys; data = sys.stdin.buffer.read();"
              "sys.stdout.buffer.write(data.upper()); sys.stderr.buffer.write(b'err:' + data)")

    async def main():
        proc = await asyncio.create_subprocess_exec(PY, "-c", script, stdin=PIPE, stdout=PIPE, stderr=PIPE)
        out, err = await proc.communicate(b"hello")
        assert (out, err, proc.returncode) == (b"HELLO", b"err:hello", 0)

    run(loop, main(), BIG)


def test_stderr_to_stdout(loop):
    async def main():
        proc = await asyncio.create_subprocess_shell("echo out; echo err >&2", stdout=PIPE,
                                                     stderr=asyncio.subprocess.STDOUT)
        out, err = await proc.communicate()
        assert sorted(out.split()) == [b"err", b"out"] and err is None

    run(loop, main())


def test_devnull_and_inherited(loop):
    async def main():
        proc = await asyncio.create_subprocess_exec("cat", stdin=asyncio.subprocess.DEVNULL, stdout=PIPE,
                                                    stderr=asyncio.subprocess.DEVNULL)
        assert proc.stdin is None and proc.stderr is None
        assert await proc.communicate() == (b"", None)
        # No pipes at all: only the exit is watched.
        proc = await asyncio.create_subprocess_exec("true")
        assert await proc.wait() == 0

    run(loop, main())


def test_exit_status(loop):
    async def main():
        proc = await asyncio.create_subprocess_shell("exit 3")
        assert await proc.wait() == 3
        assert proc.returncode == 3

    run(loop, main())


@pytest.mark.parametrize("how, signum", [
    ("kill", signal.SIGKILL),
    ("terminate", signal.SIGTERM),
    ("send_signal", signal.SIGUSR1),
])
def test_signals_give_negative_returncode(loop, how, signum):
    async def main():
        proc = await asyncio.create_subprocess_exec("sleep", "30", stdout=PIPE)
        if how == "send_signal":
            proc.send_signal(signum)
        else:
            getattr(proc, how)()
        assert await proc.wait() == -signum
        assert await proc.stdout.read() == b""

    run(loop, main())


def test_env_and_cwd(loop, tmp_path):
    async def main():
        proc = await asyncio.create_subprocess_shell(
            'echo "$SHARDLOOP_TEST"; pwd', stdout=PIPE, cwd=tmp_path,
            env={"SHARDLOOP_TEST": "value 1", "PATH": os.environ.get("PATH", "/bin:/usr/bin")})
        out, _ = await proc.communicate()
        assert out.decode().splitlines() == ["value 1", os.path.realpath(tmp_path)]

    run(loop, main())


def test_pass_fds(loop):
    async def main():
        r, w = os.pipe()
        try:
            proc = await asyncio.create_subprocess_exec(PY, "-c", f"import os; os.write({w}, b'through')",
                                                        pass_fds=(w,))
            os.close(w)
            w = -1
            assert await proc.wait() == 0
            assert os.read(r, 100) == b"through"
        finally:
            os.close(r)
            if w >= 0:
                os.close(w)

    run(loop, main(), BIG)


def test_start_new_session(loop):
    async def main():
        proc = await asyncio.create_subprocess_exec(PY, "-c", "import os; print(os.getsid(0) == os.getpid())",
                                                    stdout=PIPE, start_new_session=True)
        out, _ = await proc.communicate()
        assert out.strip() == b"True"

    run(loop, main(), BIG)


def test_child_exits_without_reading_stdin(loop):
    async def main():
        proc = await asyncio.create_subprocess_exec("true", stdin=PIPE)
        # communicate() swallows the broken pipe, as it does for asyncio.
        assert await proc.communicate(b"x" * (1 << 20)) == (None, None)
        assert proc.returncode == 0

    run(loop, main())


def test_program_not_found(loop):
    async def main():
        # First use may open fds for good (asyncio's child watcher): not a leak.
        await (await asyncio.create_subprocess_exec("true")).wait()
        before = open_fds()
        with pytest.raises(FileNotFoundError):
            await asyncio.create_subprocess_exec("/nonexistent/shardloop-test", stdin=PIPE, stdout=PIPE)
        with pytest.raises(FileNotFoundError):
            await loop.subprocess_exec(asyncio.SubprocessProtocol, "/nonexistent/shardloop-test")
        assert open_fds() == before

    run(loop, main())


EXEC_ERRORS = [
    ({"universal_newlines": True}, "universal_newlines must be False"),
    ({"shell": True}, "shell must be False"),
    ({"bufsize": 1}, "bufsize must be 0"),
    ({"text": True}, "text must be False"),
    ({"encoding": "utf-8"}, "encoding must be None"),
    ({"errors": "strict"}, "errors must be None"),
    ({"universal_newlines": True, "bufsize": 1}, "universal_newlines must be False"),
]

SHELL_ERRORS = [
    ({"universal_newlines": True}, "universal_newlines must be False"),
    ({"shell": False}, "shell must be True"),
    ({"bufsize": 4096}, "bufsize must be 0"),
    ({"text": True}, "text must be False"),
    ({"encoding": "utf-8"}, "encoding must be None"),
    ({"errors": "strict"}, "errors must be None"),
    ({"shell": False, "text": True}, "shell must be True"),
]


@pytest.mark.parametrize("method, kwargs, message",
                         [("subprocess_exec", *case) for case in EXEC_ERRORS]
                         + [("subprocess_shell", *case) for case in SHELL_ERRORS])
def test_argument_errors(loop, method, kwargs, message):
    made = []

    async def main():
        with pytest.raises(ValueError) as info:
            await getattr(loop, method)(lambda: made.append(1), "true", **kwargs)
        assert str(info.value) == message
        assert made == []  # checked before the protocol is made

    run(loop, main())


@pytest.mark.parametrize("cmd", [["true"], None, 42])
def test_shell_cmd_must_be_string(loop, cmd):
    async def main():
        with pytest.raises(ValueError, match="^cmd must be a string$"):
            await loop.subprocess_shell(asyncio.SubprocessProtocol, cmd)

    run(loop, main())


def test_exec_bad_program_type(loop):
    async def main():
        with pytest.raises(TypeError):
            await loop.subprocess_exec(asyncio.SubprocessProtocol, 42)

    run(loop, main())


# ---------------------------------------------------------------- protocol API


def test_protocol_calls_and_transport(loop):
    async def main():
        transport, proto = await loop.subprocess_exec(
            Recorder, "sh", "-c", "read x; echo out:$x; echo err:$x >&2; exit 5")
        assert proto.calls == ["made"]
        pid = transport.get_pid()
        assert pid == transport.get_extra_info("subprocess").pid
        assert transport.get_returncode() is None
        stdin = transport.get_pipe_transport(0)
        stdin.write(b"abc\n")
        assert await asyncio.wait_for(proto.exited, 5) == 5
        assert await asyncio.wait_for(proto.lost, 5) is None
        assert bytes(proto.out[1]) == b"out:abc\n" and bytes(proto.out[2]) == b"err:abc\n"
        assert proto.calls[-1] == "lost"
        assert {c[1] for c in proto.calls if isinstance(c, tuple)} == {0, 1, 2}
        assert transport.get_returncode() == 5
        transport.close()
        with pytest.raises(ProcessLookupError):
            transport.kill()

    run(loop, main())


def test_transport_close_kills_running_child(loop):
    async def main():
        transport, proto = await loop.subprocess_exec(Recorder, "sleep", "30")
        transport.close()
        assert transport.is_closing()
        assert await asyncio.wait_for(proto.exited, 5) == -signal.SIGKILL
        assert await asyncio.wait_for(proto.lost, 5) is None

    run(loop, main())


def test_paused_reader_holds_the_child_back(loop):
    total = 32 * 1024 * 1024
    script = f"import sys; sys.stdout.buffer.write(b'x' * {total})"

    class Pausing(Recorder):
        def pipe_data_received(self, fd, data):
            super().pipe_data_received(fd, data)
            stdout = self.transport.get_pipe_transport(1)
            if stdout.is_closing():
                return
            stdout.pause_reading()

    async def main():
        transport, proto = await loop.subprocess_exec(Pausing, PY, "-c", script, stdin=None, stderr=None)
        while not proto.out[1]:
            await asyncio.sleep(0.001)
        # Whatever the timing, a paused reader lets through at most what was
        # read before the pause took effect plus what the pipe holds.
        for _ in range(10):
            await asyncio.sleep(0.02)
        held = len(proto.out[1])
        assert held < total // 4
        assert transport.get_returncode() is None  # the child is blocked writing
        proto.pipe_data_received = Recorder.pipe_data_received.__get__(proto)
        transport.get_pipe_transport(1).resume_reading()
        assert await asyncio.wait_for(proto.exited, BIG) == 0
        await asyncio.wait_for(proto.lost, 5)
        assert len(proto.out[1]) == total
        transport.close()

    run(loop, main(), BIG)


# ---------------------------------------------------------------- reaping


def test_many_children_all_reaped(loop):
    async def main():
        procs = await asyncio.gather(*[asyncio.create_subprocess_exec("true") for _ in range(50)])
        codes = await asyncio.gather(*[p.wait() for p in procs])
        assert codes == [0] * 50
        for p in procs:
            with pytest.raises(ChildProcessError):
                os.waitpid(p.pid, os.WNOHANG)  # already reaped: no zombie left

    run(loop, main(), BIG)


def test_other_threads_children_are_left_alone(loop):
    result = {}

    def other_thread():
        child = subprocess.Popen(["sh", "-c", "sleep 0.2; exit 7"])
        result["code"] = child.wait()

    async def main():
        thread = threading.Thread(target=other_thread)
        thread.start()
        try:
            for _ in range(5):
                proc = await asyncio.create_subprocess_exec("sh", "-c", "sleep 0.05")
                assert await proc.wait() == 0
        finally:
            await loop.run_in_executor(None, thread.join)
        assert result["code"] == 7

    run(loop, main())


def test_child_reaped_by_popen_first(loop):
    if not is_shardloop(loop):
        pytest.skip("asyncio's child watcher thread races the Popen here")

    async def main():
        transport, proto = await loop.subprocess_exec(Recorder, "sh", "-c", "exit 4", stdin=None,
                                                      stdout=None, stderr=None)
        assert transport.get_extra_info("subprocess").wait() == 4
        assert await asyncio.wait_for(proto.exited, 5) == 4
        transport.close()

    run(loop, main())


def test_without_pidfd_a_thread_reaps(loop, monkeypatch):
    if not is_shardloop(loop):
        pytest.skip("shardloop's fallback when os.pidfd_open is missing")
    monkeypatch.delattr(os, "pidfd_open", raising=False)

    async def main():
        proc = await asyncio.create_subprocess_shell("exit 6", stdout=PIPE)
        assert await proc.communicate() == (b"", None)
        assert proc.returncode == 6
        with pytest.raises(ChildProcessError):
            os.waitpid(proc.pid, os.WNOHANG)

    run(loop, main())
