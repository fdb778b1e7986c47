"""Pipes: connect_read_pipe / connect_write_pipe."""

from __future__ import annotations


class PipeMixin:
    pass
