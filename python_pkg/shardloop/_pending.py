"""AbstractEventLoop methods that later shardloop issues deliver: until then
they raise NotImplementedError saying which part of the work they belong to."""

from __future__ import annotations

import inspect
from asyncio import AbstractEventLoop
from typing import Any

_AREAS = {
    "networking (TCP, Unix, UDP, pipes, sock_*, sendfile)": (
        "sendfile", "create_unix_connection", "create_unix_server", "create_datagram_endpoint",
        "connect_read_pipe", "connect_write_pipe", "sock_sendfile",
    ),
    "TLS, subprocesses and signals": (
        "start_tls", "subprocess_exec", "subprocess_shell", "add_signal_handler",
        "remove_signal_handler",
    ),
}


def _pending(name: str, area: str) -> Any:
    message = f"shardloop does not implement loop.{name}() yet: it is part of the {area} work"
    if inspect.iscoroutinefunction(getattr(AbstractEventLoop, name, None)):
        async def method(self: Any, *args: Any, **kwargs: Any) -> Any:
            raise NotImplementedError(message)
    else:
        def method(self: Any, *args: Any, **kwargs: Any) -> Any:
            raise NotImplementedError(message)
    method.__name__ = method.__qualname__ = name
    return method


def install_pending_methods(cls: type) -> None:
    for area, names in _AREAS.items():
        for name in names:
            if not any(name in klass.__dict__ for klass in cls.__mro__
                       if klass is not AbstractEventLoop):
                setattr(cls, name, _pending(name, area))
