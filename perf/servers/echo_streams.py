"""Echo server on asyncio streams (asyncio.start_server, StreamReader/Writer)."""

import asyncio

import _serve

READ_SIZE = 256 * 1024


async def echo(reader, writer):
    try:
        while data := await reader.read(READ_SIZE):
            writer.write(data)
            # drain() is what a well-behaved streams server does; it is part
            # of what this benchmark measures.
            await writer.drain()
    except ConnectionError:
        pass
    finally:
        writer.close()


async def serve(loop, host, port):
    await _serve.announce_and_serve(await asyncio.start_server(echo, host, port))


if __name__ == "__main__":
    _serve.run(__doc__, serve)
