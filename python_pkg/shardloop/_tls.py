"""TLS: start_tls and the SSL layer under ssl= transports."""

from __future__ import annotations


class TlsMixin:
    pass
