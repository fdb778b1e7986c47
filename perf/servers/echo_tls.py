"""TLS echo server: echo_protocol's Protocol (loop.create_server(..., ssl=))
or echo_streams' handler (asyncio.start_server(..., ssl=)) behind a server
SSLContext made from --cert/--key. The rest of the command line is
_serve's (--loop, --port, --host)."""

import argparse
import asyncio
import functools
import ssl
import sys

import _serve
import echo_protocol
import echo_streams


async def serve_protocol(loop, host, port, *, context):
    await _serve.announce_and_serve(await loop.create_server(echo_protocol.Echo, host, port, ssl=context))


async def serve_streams(loop, host, port, *, context):
    await _serve.announce_and_serve(await asyncio.start_server(echo_streams.echo, host, port, ssl=context))


APIS = {"protocol": serve_protocol, "streams": serve_streams}


def main():
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--api", choices=APIS, required=True)
    p.add_argument("--cert", required=True, help="PEM certificate chain")
    p.add_argument("--key", required=True, help="PEM private key")
    args, rest = p.parse_known_args()
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(args.cert, args.key)
    sys.argv[1:] = rest  # what is left is _serve's
    _serve.run(__doc__, functools.partial(APIS[args.api], context=context))


if __name__ == "__main__":
    main()
