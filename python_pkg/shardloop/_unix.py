"""Unix-domain sockets: create_unix_connection / create_unix_server."""

from __future__ import annotations


class UnixMixin:
    pass
