"""64 MiB echoed byte-exact through each stream transport kind: TCP, Unix
socket, and the pipes of a child process (`cat`), on both loops."""

import asyncio
import hashlib
import os
import shutil
import sys

import pytest

from _support import run

TOTAL = 64 * 1024 * 1024
CHUNK = 1024 * 1024


def chunks():
    # Distinct chunks, so a lost, repeated or reordered one changes the digest.
    for i in range(TOTAL // CHUNK):
        yield hashlib.sha256(b"%d" % i).digest() * (CHUNK // 32)


def expected_digest():
    h = hashlib.sha256()
    for chunk in chunks():
        h.update(chunk)
    return h.hexdigest()


async def echo(reader, writer):
    while data := await reader.read(256 * 1024):
        writer.write(data)
        await writer.drain()
    writer.close()


async def pump(writer, reader):
    async def send():
        for chunk in chunks():
            writer.write(chunk)
            await writer.drain()
        if writer.can_write_eof():
            writer.write_eof()
        else:
            writer.close()

    async def receive():
        h = hashlib.sha256()
        n = 0
        while data := await reader.read(256 * 1024):
            h.update(data)
            n += len(data)
        return n, h.hexdigest()

    _, got = await asyncio.gather(send(), receive())
    return got


@pytest.mark.parametrize("kind", ["tcp", "unix", "pipes"])
def test_64_mib_echo_is_byte_exact(loop, kind, tmp_path):
    if kind == "pipes" and not shutil.which("cat"):
        pytest.skip("needs cat")

    async def main():
        if kind == "pipes":
            proc = await asyncio.create_subprocess_exec("cat", stdin=asyncio.subprocess.PIPE,
                                                        stdout=asyncio.subprocess.PIPE)
            got = await pump(proc.stdin, proc.stdout)
            await proc.wait()
            return got
        if kind == "tcp":
            server = await asyncio.start_server(echo, "127.0.0.1", 0)
            reader, writer = await asyncio.open_connection("127.0.0.1", server.sockets[0].getsockname()[1])
        else:
            path = os.path.join(str(tmp_path), "echo.sock")
            server = await asyncio.start_unix_server(echo, path)
            reader, writer = await asyncio.open_unix_connection(path)
        try:
            return await pump(writer, reader)
        finally:
            writer.close()
            server.close()
            await server.wait_closed()

    timeout = 240 if os.environ.get("SHARDLOOP_SANITIZED") else 120
    assert run(loop, main(), timeout) == (TOTAL, expected_digest())
