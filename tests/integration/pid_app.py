"""The ASGI app test_process_managers.py serves from several worker
processes: it says which process (and loop, and shard) answered.

GET /pid    {"pid", "loop", "shards", "other_shard_thread"}: with a sharded
            shardloop, the last is the thread of shard 1, reached with
            shardloop.submit_to (null on a single loop)
GET /slow   SLOW_BODY after SLOW_SECONDS; touches $PID_APP_STARTED/<pid>
            first, so the test knows the request is in flight
"""

import asyncio
import json
import os
import threading
from pathlib import Path

SLOW_SECONDS = 2.0
SLOW_BODY = b"".join(b"%07d\n" % i for i in range(100_000))  # 800 KB, every line numbered


def sharded_loop():
    """uvicorn --loop pid_app:sharded_loop: a shardloop loop of 2 shards."""
    import shardloop
    return shardloop.new_event_loop(shards=2)


def loop_kind(loop):
    return f"{type(loop).__module__}.{type(loop).__qualname__}"


async def shard_info():
    try:
        import shardloop
    except ImportError:
        return 1, None
    if not isinstance(asyncio.get_running_loop(), shardloop.Loop) or shardloop.shard_count() < 2:
        return 1, None
    return shardloop.shard_count(), await shardloop.submit_to(1, threading.get_ident)


async def app(scope, receive, send):
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            kind = message["type"].rsplit(".", 1)[1]
            await send({"type": f"lifespan.{kind}.complete"})
            if kind == "shutdown":
                return
    assert scope["type"] == "http"
    while (await receive()).get("more_body"):
        pass
    if scope["path"] == "/slow":
        started = os.environ.get("PID_APP_STARTED")
        if started:
            Path(started, str(os.getpid())).touch()
        await asyncio.sleep(SLOW_SECONDS)
        body, kind = SLOW_BODY, b"application/octet-stream"
    else:
        shards, other = await shard_info()
        body = json.dumps({"pid": os.getpid(), "loop": loop_kind(asyncio.get_running_loop()),
                           "thread": threading.get_ident(), "shards": shards,
                           "other_shard_thread": other}).encode()
        kind = b"application/json"
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", kind), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})
