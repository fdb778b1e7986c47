"""OS signals: add_signal_handler / remove_signal_handler."""

from __future__ import annotations


class SignalMixin:
    pass
