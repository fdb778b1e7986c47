"""The runner behind test_differential.py: plays one list of operations on
one event loop and returns what it saw, so that asyncio's loop and
shardloop can be compared.

The scene: a TCP connection made by ``loop.create_connection(sock=...)``
whose far end (the *peer*) is a plain non-blocking socket the runner drives
itself, a second connected socket pair for the ``sock_*`` coroutines, and
the loop's own callbacks and timers. Each operation is one step; after it
the runner waits for quiescence (nothing new in the trace, the peer has
read all it will read, every short timer has run), so the trace of a step
depends on what the loops do, not on when the kernel does it.

Where the kernel's buffering could decide an outcome, the operations are
shaped so it cannot: the kernel buffers are fixed small (no autotuning),
a "big" write is far larger than they hold plus any high-water mark, and
small writes to a peer that is not reading stay far below what they hold.
"""

from __future__ import annotations

import asyncio
import errno
import socket
import struct
import time

SMALL_BUF = 32 * 1024      # SO_RCVBUF of the peer, SO_SNDBUF of the client: about 80 KiB in flight
BIG = 1 << 20              # a big write: always leaves far more than 64 KiB queued
UNREAD_LIMIT = 16 * 1024   # small writes to a peer that is not reading stay under this
SETTLE_ROUNDS = 3          # consecutive unchanged rounds that count as quiescence
STEP_BOUND = 10.0          # seconds a step may take to settle before the run fails


def payload(tag: int, n: int) -> bytes:
    """n bytes that say where they came from (tag) and where in it they are."""
    unit = b"%d:" % tag
    return (unit * (n // len(unit) + 1))[:n]


class _Proto:
    """Writes every protocol call into the runner's trace; data calls are
    merged (how the bytes are split is the kernel's business)."""

    def __init__(self, run: "Run") -> None:
        self.run = run

    def connection_made(self, transport):
        self.run.event("made")

    def _data(self, data):
        self.run.client_bytes += data
        self.run.event("data")

    def eof_received(self):
        self.run.event("eof")
        return self.run.keep_open

    def connection_lost(self, exc):
        self.run.event("lost", None if exc is None else type(exc).__name__)
        self.run.lost = True

    def pause_writing(self):
        self.run.event("pause_writing")

    def resume_writing(self):
        self.run.event("resume_writing")


class PlainProto(_Proto, asyncio.Protocol):
    def data_received(self, data):
        self._data(data)


class BufferedProto(_Proto, asyncio.BufferedProtocol):
    def __init__(self, run, size):
        super().__init__(run)
        self.buf = bytearray(size)

    def get_buffer(self, sizehint):
        return self.buf

    def buffer_updated(self, nbytes):
        self._data(bytes(self.buf[:nbytes]))


class Run:
    """One play of an operation list on one loop."""

    def __init__(self, loop, keep_open: bool, buffered: int) -> None:
        self.loop = loop
        self.keep_open = keep_open
        self.buffered = buffered  # 0: a plain Protocol, else BufferedProtocol buffer size
        self.steps: list[list] = []
        self.current: list = []
        self.client_bytes = bytearray()
        self.written = bytearray()      # what the client asked the transport to send
        self.peer_bytes = bytearray()
        self.peer_sent = bytearray()
        self.peer_reading = True
        self.peer_end = None            # None, "eof" or the error's name
        self.peer_closed = False
        self.unread = 0                 # small bytes written since the peer stopped reading
        self.big_pending = False        # a big write the peer has not drained yet
        self.lossy = False              # abort() dropped queued bytes: the peer holds a prefix
        self.lost = False
        self.eof_written = False
        self.handles: list = []
        self.timers_due = 0             # short timers scheduled and neither run nor cancelled
        self.sock_task = None           # the one sock_* coroutine in flight
        self.sock_peer_bytes = bytearray()
        self.sock_sent = bytearray()
        self.tag = 0

    # -- trace ---------------------------------------------------------

    def event(self, *what) -> None:
        if what == ("data",) and self.current[-1:] == [("data",)]:
            return
        self.current.append(what)

    def _end_step(self, op) -> None:
        state = (self.transport.is_closing(), self.transport.is_reading(), self.peer_end)
        self.steps.append([op, *self.current, ("state",) + state])
        self.current = []

    # -- setup and teardown --------------------------------------------

    def setup(self) -> None:
        loop = self.loop
        loop.set_exception_handler(lambda lp, ctx: self.event(
            "handler", ctx.get("message"), type(ctx.get("exception")).__name__))
        lst = socket.socket()
        lst.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, SMALL_BUF)
        lst.bind(("127.0.0.1", 0))
        lst.listen(1)
        client = socket.socket()
        client.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SMALL_BUF)
        client.setblocking(False)
        loop.run_until_complete(loop.sock_connect(client, lst.getsockname()))
        self.peer, _ = lst.accept()
        self.peer.setblocking(False)
        lst.close()
        factory = (lambda: BufferedProto(self, self.buffered)) if self.buffered else (lambda: PlainProto(self))
        self.transport, _ = loop.run_until_complete(loop.create_connection(factory, sock=client))
        self.sock_a, self.sock_b = socket.socketpair()
        self.sock_a.setblocking(False)
        self.sock_b.setblocking(False)
        self.settle()
        self._end_step(("setup",))

    def teardown(self) -> None:
        """Let everything finish: the peer reads again, the client aborts,
        pending timers and the sock_* coroutine are cancelled."""
        for h in self.handles:
            h.cancel()
        self.timers_due = 0
        if self.sock_task is not None and not self.sock_task.done():
            self.sock_task.cancel()
        self.peer_reading = True
        self.settle()
        self._end_step(("drain",))
        self.transport.abort()
        self.settle()
        self._end_step(("abort-at-end",))
        self.peer.close()
        self.sock_a.close()
        self.sock_b.close()

    def result(self):
        return {
            "steps": self.steps,
            "client_bytes": bytes(self.client_bytes),
            "peer_bytes": bytes(self.peer_bytes),
            "sock_peer_bytes": bytes(self.sock_peer_bytes),
            "lossy": self.lossy,
            "written": bytes(self.written),
            "sock_sent": bytes(self.sock_sent),
        }

    # -- quiescence ----------------------------------------------------

    def _pump_peer(self) -> None:
        # The peer of the sock_* pair always reads.
        while True:
            try:
                chunk = self.sock_b.recv(1 << 20)
            except BlockingIOError:
                break
            if not chunk:
                break
            self.sock_peer_bytes += chunk
        if not self.peer_reading or self.peer_end is not None or self.peer_closed:
            return
        while True:
            try:
                chunk = self.peer.recv(1 << 20)
            except BlockingIOError:
                return
            except OSError as exc:
                self.peer_end = type(exc).__name__
                self.event("peer_end", self.peer_end)
                return
            if not chunk:
                self.peer_end = "eof"
                self.event("peer_end", "eof")
                return
            self.peer_bytes += chunk

    def _snapshot(self):
        tr = self.transport
        return (len(self.current), len(self.client_bytes), len(self.peer_bytes), len(self.sock_peer_bytes), self.peer_end,
                tr.get_write_buffer_size(), self.timers_due,
                None if self.sock_task is None else self.sock_task.done())

    def _pending(self) -> bool:
        """What quiescence must wait for whatever the snapshots say."""
        if self.timers_due:
            return True
        if self.peer_reading and not self.peer_closed and self.peer_end is None \
                and not self.lost and self.transport.get_write_buffer_size():
            return True
        return False

    def settle(self) -> None:
        deadline = time.monotonic() + STEP_BOUND
        last, stable = None, 0
        while stable < SETTLE_ROUNDS:
            if time.monotonic() > deadline:
                raise AssertionError("no quiescence within %ss; trace so far %r" % (STEP_BOUND, self.current))
            # One poll that may block briefly (the kernel's loopback work
            # lands in it), then a few iterations for what it scheduled.
            self.loop.run_until_complete(self._rounds())
            self._pump_peer()
            snap = self._snapshot()
            if snap == last and not self._pending():
                stable += 1
            else:
                stable = 0
            last = snap
        if self.big_pending and self.peer_reading and self.transport.get_write_buffer_size() == 0:
            self.big_pending = False

    @staticmethod
    async def _rounds():
        await asyncio.sleep(0.001)
        for _ in range(4):
            await asyncio.sleep(0)

    # -- operations ----------------------------------------------------

    def play(self, op) -> None:
        name, *args = op
        try:
            getattr(self, "op_" + name)(*args)
        except Exception as exc:  # the loop's answer to a bad call is part of the trace
            self.event("raised", type(exc).__name__, str(exc))
        self.settle()
        self._end_step(op)

    def _write_allowed(self, n: int) -> bool:
        if self.peer_reading or self.big_pending:
            return True
        return self.unread + n <= UNREAD_LIMIT

    def _next(self, n: int) -> bytes:
        self.tag += 1
        return payload(self.tag, n)

    def op_write(self, n):
        if not self._write_allowed(n):
            self.event("skipped")
            return
        data = self._next(n)
        eof_before, closing = self.eof_written, self.transport.is_closing()
        self.transport.write(data)
        if not (eof_before or closing or self.lost):
            self.written += data
            if not self.peer_reading:
                self.unread += n

    def op_write_big(self):
        data = self._next(BIG)
        eof_before, closing = self.eof_written, self.transport.is_closing()
        self.transport.write(data)
        if not (eof_before or closing or self.lost):
            self.written += data
            self.big_pending = True

    def op_writelines(self, sizes):
        if not self._write_allowed(sum(sizes)):
            self.event("skipped")
            return
        chunks = [self._next(n) for n in sizes]
        eof_before, closing = self.eof_written, self.transport.is_closing()
        self.transport.writelines(chunks)
        if not (eof_before or closing or self.lost):
            self.written += b"".join(chunks)
            if not self.peer_reading:
                self.unread += sum(sizes)

    def op_write_bad(self, kind):
        self.transport.write({"str": "text", "int": 7, "list": [b"x"]}[kind])

    def op_write_eof(self):
        self.transport.write_eof()
        if not self.transport.is_closing():
            self.eof_written = True

    def op_pause_reading(self):
        self.transport.pause_reading()

    def op_resume_reading(self):
        self.transport.resume_reading()

    def op_limits(self, high, low):
        self.transport.set_write_buffer_limits(high=high, low=low)
        self.event("limits", self.transport.get_write_buffer_limits())

    def op_close(self):
        self.transport.close()

    def op_abort(self):
        if self.transport.get_write_buffer_size():
            self.lossy = True
        self.transport.abort()

    def op_peer_send(self, n):
        if self.peer_closed:
            self.event("skipped")
            return
        data = self._next(n)
        try:
            self.peer.send(data)
        except OSError as exc:
            self.event("peer_send_failed", type(exc).__name__)
        else:
            self.peer_sent += data

    def op_peer_eof(self):
        if self.peer_closed:
            self.event("skipped")
            return
        try:
            self.peer.shutdown(socket.SHUT_WR)
        except OSError as exc:
            self.event("peer_shutdown_failed", errno.errorcode.get(exc.errno, exc.errno))

    def op_peer_close(self, reset):
        """The peer closes its socket: a FIN, or with SO_LINGER 0 a RST."""
        if self.peer_closed:
            self.event("skipped")
            return
        if reset:
            self.peer.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.peer.close()
        self.peer_closed = True

    def op_peer_reading(self, on):
        if on and not self.peer_reading:
            self.unread = 0
        self.peer_reading = on

    def op_callbacks(self, batch):
        made = []    # handles in the order scheduled
        short = []   # their indices that are short timers
        for kind, arg in batch:
            if kind == "soon":
                made.append(self.loop.call_soon(self._fire, ("soon", len(made))))
            elif kind == "later":
                short.append(len(made))
                made.append(self.loop.call_later(arg, self._fire_timer, ("later", len(made), arg)))
                self.timers_due += 1
            elif kind == "far":
                made.append(self.loop.call_later(3600, self._fire, ("far", len(made))))
            elif kind == "cancel" and made:
                # Nothing of this batch has run yet: a short timer cancelled
                # here for the first time is one fewer to wait for. (Not
                # isinstance(h, asyncio.TimerHandle): shardloop's handles are
                # native types, as uvloop's are; docs/differences.md.)
                i = arg % len(made)
                if i in short and not made[i].cancelled():
                    self.timers_due -= 1
                made[i].cancel()
                self.event("cancelled", i, made[i].cancelled())
        self.handles.extend(made)

    def _fire(self, what):
        self.event("cb", *what)

    def _fire_timer(self, what):
        self.timers_due -= 1
        self.event("cb", *what)

    def _sock_op(self, coro_fn, *args) -> bool:
        # One sock_* call at a time: two readers of one socket are a misuse
        # asyncio itself answers differently from version to version.
        if self.sock_task is not None and not self.sock_task.done():
            self.event("skipped")
            return False
        task = self.loop.create_task(coro_fn(*args))
        task.add_done_callback(self._sock_done)
        self.sock_task = task
        return True

    def _sock_done(self, task):
        if task.cancelled():
            self.event("sock_cancelled")
        elif task.exception() is not None:
            exc = task.exception()
            self.event("sock_raised", type(exc).__name__, str(exc))
        else:
            self.event("sock_result", task.result())

    def op_sock_sendall(self, n):
        data = self._next(n)
        if self._sock_op(self.loop.sock_sendall, self.sock_a, data):
            self.sock_sent += data

    def op_sock_recv(self, n):
        self._sock_op(self.loop.sock_recv, self.sock_a, n)

    def op_sock_recv_into(self, n):
        buf = bytearray(n)

        async def recv_into():
            got = await self.loop.sock_recv_into(self.sock_a, buf)
            return got, bytes(buf[:got])

        self._sock_op(recv_into)

    def op_sock_peer_send(self, n):
        self.sock_b.send(self._next(n))


def play(loop, ops, keep_open: bool, buffered: int):
    """Play *ops* on *loop* (closed afterwards); returns Run.result()."""
    run = Run(loop, keep_open, buffered)
    try:
        run.setup()
        for op in ops:
            run.play(op)
        run.teardown()
    finally:
        loop.run_until_complete(asyncio.sleep(0))
        loop.close()
    return run.result()
