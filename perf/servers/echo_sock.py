"""Echo server on the loop's low-level socket coroutines (sock_accept,
sock_recv, sock_sendall) over plain non-blocking sockets."""

import asyncio
import socket

import _serve

READ_SIZE = 256 * 1024


async def echo(loop, conn):
    with conn:
        try:
            while data := await loop.sock_recv(conn, READ_SIZE):
                await loop.sock_sendall(conn, data)
        except ConnectionError:
            pass


async def accept_forever(loop, listener):
    tasks = set()
    while True:
        conn, _ = await loop.sock_accept(listener)
        conn.setblocking(False)
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        task = loop.create_task(echo(loop, conn))
        tasks.add(task)  # the loop holds tasks weakly
        task.add_done_callback(tasks.discard)


async def serve(loop, host, port):
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind((host, port))
    listener.listen(1024)
    listener.setblocking(False)
    acceptor = loop.create_task(accept_forever(loop, listener))
    # Let the acceptor reach its first sock_accept before announcing READY,
    # so a loop without sock_* fails here rather than under load.
    await asyncio.sleep(0)
    if acceptor.done():
        acceptor.result()
    _serve.ready(_serve.bound_port(listener))
    await acceptor


if __name__ == "__main__":
    _serve.run(__doc__, serve)
