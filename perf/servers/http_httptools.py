"""Minimal HTTP/1.1 server: httptools parses, a Protocol answers every
request with a fixed plain-text body; keep-alive unless the client asks to
close."""

import asyncio

import httptools

import _serve

BODY = b"Hello, World!"
RESPONSE = (b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: %d\r\n\r\n" % len(BODY)) + BODY


class HttpProtocol(asyncio.Protocol):
    def connection_made(self, transport):
        self.transport = transport
        self.parser = httptools.HttpRequestParser(self)

    def data_received(self, data):
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            self.transport.write(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
            self.transport.close()

    # httptools callback, once per complete request (pipelined ones included).
    def on_message_complete(self):
        self.transport.write(RESPONSE)
        if not self.parser.should_keep_alive():
            self.transport.close()


async def serve(loop, host, port):
    await _serve.announce_and_serve(await loop.create_server(HttpProtocol, host, port))


if __name__ == "__main__":
    _serve.run(__doc__, serve)
