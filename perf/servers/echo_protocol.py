"""Echo server on asyncio's Protocol/Transport API (loop.create_server)."""

import asyncio

import _serve


class Echo(asyncio.Protocol):
    def connection_made(self, transport):
        self.transport = transport

    def data_received(self, data):
        self.transport.write(data)


async def serve(loop, host, port):
    await _serve.announce_and_serve(await loop.create_server(Echo, host, port))


if __name__ == "__main__":
    _serve.run(__doc__, serve)
