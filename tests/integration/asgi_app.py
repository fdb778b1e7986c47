"""A small ASGI app for test_uvicorn.py: it reports which loop serves it."""

import asyncio
import json

state = {}


def loop_kind():
    loop = asyncio.get_running_loop()
    return f"{type(loop).__module__}.{type(loop).__qualname__}"


async def app(scope, receive, send):
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                state["startup_loop"] = loop_kind()
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    elif scope["type"] == "http":
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        if scope["path"] == "/echo":
            payload = body[::-1]
            content_type = b"application/octet-stream"
        else:
            # A sleep makes the response go through the loop's timers.
            await asyncio.sleep(0.001)
            payload = json.dumps({"loop": loop_kind(), "startup_loop": state.get("startup_loop"),
                                  "path": scope["path"]}).encode()
            content_type = b"application/json"
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", content_type)]})
        await send({"type": "http.response.body", "body": payload})
    elif scope["type"] == "websocket":
        await receive()  # websocket.connect
        await send({"type": "websocket.accept"})
        while True:
            message = await receive()
            if message["type"] == "websocket.disconnect":
                return
            if message.get("text") is not None:
                await send({"type": "websocket.send", "text": message["text"] + " from " + loop_kind()})
            else:
                await send({"type": "websocket.send", "bytes": message["bytes"][::-1]})
