"""UDP: create_datagram_endpoint and its DatagramTransport."""

from __future__ import annotations


class DatagramMixin:
    pass
