"""What every benchmark server shares: `--loop NAME --port P`, a fresh loop
from NAME.new_event_loop(), and one "READY <port>" line on stdout once it
accepts connections (port 0 picks a free port, so the driver never races
another process for one).

A loop that lacks what the server needs raises NotImplementedError before
READY; the process then dies with that traceback on stderr, which is how the
driver tells "cannot serve yet" apart from a crash.
"""

import argparse
import asyncio
import importlib
import os
import socket
import sys

# perf/ holds loop modules of its own (shardloop_uring.py).
sys.path.insert(1, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def parse_args(description):
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--loop", required=True, help="module with new_event_loop(): shardloop, uvloop, asyncio")
    p.add_argument("--port", type=int, default=0, help="0 picks a free port (printed after READY)")
    p.add_argument("--host", default="127.0.0.1")
    return p.parse_args()


def ready(port):
    print(f"READY {port}", flush=True)


def bound_port(server_or_sock):
    sock = server_or_sock if isinstance(server_or_sock, socket.socket) else server_or_sock.sockets[0]
    return sock.getsockname()[1]


async def announce_and_serve(server):
    """READY for an asyncio Server that already listens, then serve."""
    ready(bound_port(server))
    await server.serve_forever()


def run(description, serve):
    """Run `await serve(loop, host, port)` forever on the chosen loop; serve
    calls ready() itself once it listens."""
    args = parse_args(description)
    loop = importlib.import_module(args.loop).new_event_loop()
    asyncio.set_event_loop(loop)
    try:
        loop.run_until_complete(serve(loop, args.host, args.port))
    except KeyboardInterrupt:
        pass
    finally:
        loop.close()
    sys.exit(0)
