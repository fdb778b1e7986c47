"""One fault-injection run: started by tests/python/test_fault_injection.py
(and `make fault-soak`) with libshardloop_fault.so preloaded.

argv: soft|hard  CERT_FILE  KEY_FILE. The backend comes from
SHARDLOOP_IO_URING. Runs a TCP echo (streams and protocols), a Unix-socket
echo, a pipe echo (connect_read_pipe/connect_write_pipe) and a subprocess
echo through cat, a UDP exchange with retries, a TLS echo and an echo over
the sock_* calls, each on a new
shardloop loop, and prints one JSON line: what each scenario moved or
raised, the loop's exception-handler reports, the fds open before and after,
and the shim's fault counts.

soft: the shim injects EINTR, EAGAIN and short counts only, so every byte
must arrive and nothing may fail. hard: ECONNRESET, EPIPE, ENOMEM and EMFILE
too; a scenario may then end early, and only what it raised is reported.
"""

import asyncio
import ctypes
import gc
import json
import os
import socket
import ssl
import sys
import tempfile
import traceback

import shardloop

MODE, CERT, KEY = sys.argv[1], sys.argv[2], sys.argv[3]
SCENARIO_TIMEOUT = 60.0
SHIM = ctypes.CDLL(os.environ["SHARDLOOP_FAULT_SHIM"])
SHIM.shardloop_fault_count.restype = ctypes.c_long
SHIM.shardloop_fault_count_of.restype = ctypes.c_long
SHIM.shardloop_fault_count_of.argtypes = [ctypes.c_char_p]
CALLS = ("read", "write", "readv", "writev", "recv", "recvfrom", "recvmsg", "send", "sendto", "sendmsg",
         "recvmmsg", "sendmmsg",
         "accept", "accept4", "connect", "epoll_wait", "epoll_pwait", "io_uring_enter")


def payload(n, salt):
    # Not random.randbytes: the data must differ between positions, so a
    # reordering or a duplicated chunk shows, and be the same on every run.
    block = bytes((i * 131 + salt) & 0xFF for i in range(65521))  # prime length
    return (block * (n // len(block) + 1))[:n]


async def drain_into(reader, n):
    return await reader.readexactly(n)


SERVING = []  # the echo servers' handler tasks, awaited before a scenario ends


async def serve_echo(reader, writer):
    SERVING.append(asyncio.current_task())
    try:
        while True:
            data = await reader.read(65536)
            if not data:
                break
            writer.write(data)
            await writer.drain()
        if writer.can_write_eof():
            writer.write_eof()
    except Exception as exc:  # reported, not raised: the client's side says the rest
        ERRORS.append(("server", exception_names(exc)))
    finally:
        writer.close()
        try:
            await writer.wait_closed()
        except OSError:
            pass


async def handlers_done():
    # Python 3.11's Server.wait_closed() does not wait for the handlers.
    tasks, SERVING[:] = list(SERVING), []
    if not tasks:
        return
    done, pending = await asyncio.wait(tasks, timeout=SCENARIO_TIMEOUT / 2)
    if pending:
        import io
        out = io.StringIO()
        for t in pending:
            t.print_stack(file=out)
        raise AssertionError("echo handler stuck: " + out.getvalue())


async def stream_exchange(reader, writer, data, use_eof):
    async def send():
        view = memoryview(data)
        for i in range(0, len(data), 50_000):
            writer.write(view[i:i + 50_000])
            await writer.drain()
        if use_eof:
            writer.write_eof()

    sender = asyncio.ensure_future(send())
    try:
        got = await reader.readexactly(len(data))
        if use_eof and await reader.read() != b"":
            raise AssertionError("bytes after the echo")
        await sender
    finally:
        sender.cancel()
        writer.close()
        try:
            await writer.wait_closed()
        except OSError:
            pass
    return got


async def tcp_streams():
    data = payload(3 << 20, 1)
    server = await asyncio.start_server(serve_echo, "127.0.0.1", 0)
    try:
        port = server.sockets[0].getsockname()[1]
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        got = await stream_exchange(reader, writer, data, True)
    finally:
        server.close()
        await server.wait_closed()
        await handlers_done()
    return got == data, len(got)


class EchoServerProtocol(asyncio.Protocol):
    def connection_made(self, transport):
        self.transport = transport

    def data_received(self, data):
        self.transport.write(data)

    def eof_received(self):
        self.transport.write_eof()
        return True

    def connection_lost(self, exc):
        self.transport.close()


class CollectProtocol(asyncio.Protocol):
    def __init__(self, data):
        self.data = data
        self.got = bytearray()
        self.done = asyncio.get_running_loop().create_future()
        self.paused = False
        self.resumed = None

    def connection_made(self, transport):
        self.transport = transport
        asyncio.ensure_future(self.send())

    async def send(self):
        view = memoryview(self.data)
        for i in range(0, len(self.data), 64_000):
            self.transport.write(view[i:i + 64_000])
            if self.transport.get_write_buffer_size() > 1 << 20:
                self.resumed = asyncio.get_running_loop().create_future()
                self.transport.pause_reading()  # exercise pause/resume on the read side too
                self.transport.resume_reading()
                if self.paused:
                    await self.resumed
        self.transport.write_eof()

    def pause_writing(self):
        self.paused = True

    def resume_writing(self):
        self.paused = False
        if self.resumed is not None and not self.resumed.done():
            self.resumed.set_result(None)

    def data_received(self, data):
        self.got += data

    def eof_received(self):
        return False

    def connection_lost(self, exc):
        if exc is not None:
            self.done.set_exception(exc)
        else:
            self.done.set_result(bytes(self.got))


async def tcp_protocol():
    loop = asyncio.get_running_loop()
    data = payload(2 << 20, 2)
    server = await loop.create_server(EchoServerProtocol, "127.0.0.1", 0)
    try:
        port = server.sockets[0].getsockname()[1]
        _, proto = await loop.create_connection(lambda: CollectProtocol(data), "127.0.0.1", port)
        got = await proto.done
    finally:
        server.close()
        await server.wait_closed()
    return got == data, len(got)


async def unix_streams():
    data = payload(1 << 20, 3)
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "echo.sock")
        server = await asyncio.start_unix_server(serve_echo, path)
        try:
            reader, writer = await asyncio.open_unix_connection(path)
            got = await stream_exchange(reader, writer, data, True)
        finally:
            server.close()
            await server.wait_closed()
            await handlers_done()
    return got == data, len(got)


async def pipe_pair():
    loop = asyncio.get_running_loop()
    data = payload(1 << 20, 4)
    rfd, wfd = os.pipe()
    rfile, wfile = os.fdopen(rfd, "rb", 0), os.fdopen(wfd, "wb", 0)
    reader = asyncio.StreamReader()
    rtransport, _ = await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), rfile)
    wtransport, wproto = await loop.connect_write_pipe(asyncio.streams.FlowControlMixin, wfile)
    writer = asyncio.StreamWriter(wtransport, wproto, None, loop)
    try:
        async def send():
            view = memoryview(data)
            for i in range(0, len(data), 30_000):
                writer.write(view[i:i + 30_000])
                await writer.drain()
            writer.close()

        sender = asyncio.ensure_future(send())
        got = await reader.read()
        await sender
    finally:
        wtransport.close()
        rtransport.close()
    return got == data, len(got)


async def subprocess_cat():
    data = payload(1 << 20, 5)
    # cat itself runs without the shim: its faults are not ours to judge.
    env = {k: v for k, v in os.environ.items() if k != "LD_PRELOAD"}
    proc = await asyncio.create_subprocess_exec("cat", stdin=asyncio.subprocess.PIPE,
                                                stdout=asyncio.subprocess.PIPE, env=env)
    out, _ = await proc.communicate(data)
    if proc.returncode != 0:
        raise AssertionError("cat exited with %r" % proc.returncode)
    return out == data, len(out)


class UdpEcho(asyncio.DatagramProtocol):
    def connection_made(self, transport):
        self.transport = transport

    def datagram_received(self, data, addr):
        self.transport.sendto(data, addr)

    def error_received(self, exc):
        ERRORS.append(("udp-server", exception_names(exc)))


class UdpClient(asyncio.DatagramProtocol):
    def __init__(self):
        self.replies = {}
        self.waiters = {}

    def connection_made(self, transport):
        self.transport = transport

    def datagram_received(self, data, addr):
        key = data[:8]
        self.replies[key] = data
        w = self.waiters.pop(key, None)
        if w is not None and not w.done():
            w.set_result(None)

    def error_received(self, exc):
        ERRORS.append(("udp-client", exception_names(exc)))


async def udp_exchange():
    loop = asyncio.get_running_loop()
    server, _ = await loop.create_datagram_endpoint(UdpEcho, local_addr=("127.0.0.1", 0))
    port = server.get_extra_info("sockname")[1]
    client, proto = await loop.create_datagram_endpoint(UdpClient, remote_addr=("127.0.0.1", port))
    sent = {}
    retries = 0
    try:
        for i in range(200):
            key = b"%08d" % i
            msg = key + payload(100 + i * 37, i)
            sent[key] = msg
            for attempt in range(50):
                proto.waiters[key] = loop.create_future()
                client.sendto(msg)
                try:
                    await asyncio.wait_for(proto.waiters[key], 0.2)
                    break
                except asyncio.TimeoutError:
                    retries += 1
            else:
                break
    finally:
        client.close()
        server.close()
    ok = len(proto.replies) == len(sent) == 200 and all(proto.replies[k] == v for k, v in sent.items())
    return ok, len(proto.replies), retries


async def tls_streams():
    data = payload(1 << 20, 6)
    sctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    sctx.load_cert_chain(CERT, KEY)
    cctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=CERT)
    server = await asyncio.start_server(serve_echo, "127.0.0.1", 0, ssl=sctx)
    try:
        port = server.sockets[0].getsockname()[1]
        reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=cctx, server_hostname="localhost")
        got = await stream_exchange(reader, writer, data, False)
    finally:
        server.close()
        await server.wait_closed()
        await handlers_done()
    return got == data, len(got)


async def sock_echo():
    # The low-level calls (native in shardloop): a "later" the shim makes
    # up, with data waiting, must be retried, and short sends continued.
    loop = asyncio.get_running_loop()
    data = payload(1 << 20, 7)
    lst = socket.create_server(("127.0.0.1", 0))
    lst.setblocking(False)
    client = socket.socket()
    client.setblocking(False)

    # A side that fails closes its socket, as a transport would: an error
    # the shim made up must not leave the other side waiting forever.
    async def serve():
        try:
            conn, _ = await loop.sock_accept(lst)
        except BaseException:
            lst.close()  # resets the client's connection, still in the backlog
            raise
        with conn:
            while chunk := await loop.sock_recv(conn, 65536):
                await loop.sock_sendall(conn, chunk)
            conn.shutdown(socket.SHUT_WR)

    async def send():
        try:
            view = memoryview(data)
            for i in range(0, len(data), 50_000):
                await loop.sock_sendall(client, view[i:i + 50_000])
            client.shutdown(socket.SHUT_WR)
        except BaseException:
            client.shutdown(socket.SHUT_RDWR)  # the reader below sees its end too
            raise

    server = asyncio.ensure_future(serve())
    sender = None
    try:
        await loop.sock_connect(client, lst.getsockname())
        sender = asyncio.ensure_future(send())
        got = bytearray()
        buf = bytearray(65536)
        while n := await loop.sock_recv_into(client, buf):
            got += buf[:n]
        await sender
        await server
    finally:
        for task in (server, sender):
            if task is not None:
                task.cancel()
        client.close()
        lst.close()
    return bytes(got) == data, len(got)


SCENARIOS = [tcp_streams, tcp_protocol, unix_streams, pipe_pair, subprocess_cat, udp_exchange, tls_streams,
             sock_echo]
ERRORS = []      # (where, exception type) from protocol callbacks
HANDLER = []     # what reached the loop's exception handler


def exception_names(exc):
    return [c.__name__ for c in type(exc).__mro__]


def run_scenario(fn):
    loop = shardloop.new_event_loop()
    backend = loop.io_backend

    def handler(loop, context):
        exc = context.get("exception")
        HANDLER.append({"scenario": fn.__name__, "message": str(context.get("message")),
                        "exception": exception_names(exc) if exc is not None else None})

    loop.set_exception_handler(handler)
    result = {"name": fn.__name__, "backend": backend}
    try:
        out = loop.run_until_complete(asyncio.wait_for(fn(), SCENARIO_TIMEOUT))
        result["ok"], result["bytes"] = out[0], out[1]
        if len(out) > 2:
            result["retries"] = out[2]
    except asyncio.TimeoutError:
        result["hang"] = True
    except BaseException as exc:
        result["raised"] = exception_names(exc)
        result["detail"] = "".join(traceback.format_exception_only(type(exc), exc)).strip()
    finally:
        try:
            loop.run_until_complete(loop.shutdown_asyncgens())
        finally:
            loop.close()
    return result


def open_fds():
    return sorted(int(x) for x in os.listdir("/proc/self/fd"))


def main():
    # libuv opens a process-wide pipe (its signal lock) with the first loop
    # and keeps it: made here, before the count.
    warm = shardloop.new_event_loop()
    warm.run_until_complete(asyncio.sleep(0))
    warm.close()
    gc.collect()
    before = open_fds()
    faults_before = SHIM.shardloop_fault_count()
    results = [run_scenario(fn) for fn in SCENARIOS]
    gc.collect()
    after = open_fds()
    report = {
        "mode": MODE,
        "results": results,
        "errors": ERRORS,
        "handler": HANDLER,
        "fds_before": before,
        "fds_after": after,
        "faults": SHIM.shardloop_fault_count() - faults_before,
        "faults_of": {c: SHIM.shardloop_fault_count_of(c.encode()) for c in CALLS},
    }
    print("FAULT-REPORT " + json.dumps(report), flush=True)


if __name__ == "__main__":
    main()
