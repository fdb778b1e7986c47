"""UDP echo server on asyncio's DatagramProtocol (loop.create_datagram_endpoint):
each datagram goes back to its sender with transport.sendto(data, addr)."""

import asyncio

import _serve


class Echo(asyncio.DatagramProtocol):
    def connection_made(self, transport):
        self.transport = transport

    def datagram_received(self, data, addr):
        self.transport.sendto(data, addr)


async def serve(loop, host, port):
    transport, _ = await loop.create_datagram_endpoint(Echo, local_addr=(host, port))
    _serve.ready(transport.get_extra_info("sockname")[1])
    await asyncio.Event().wait()  # serve until the driver stops the process


if __name__ == "__main__":
    _serve.run(__doc__, serve)
