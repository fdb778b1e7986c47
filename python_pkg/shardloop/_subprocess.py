"""Child processes: subprocess_exec / subprocess_shell."""

from __future__ import annotations


class SubprocessMixin:
    pass
