"""The exception tree (stdlib only).

Bad input is a ``ValueError`` subclass whose message names the part that is wrong:
the JSON path of a service config field, or the piece of a target.
"""

from __future__ import annotations


class LbclientError(Exception):
    """Base of every exception lbclient raises on its own."""


class InvalidTargetError(LbclientError, ValueError):
    """A target string that cannot be parsed; the message says which part is wrong."""


class ServiceConfigError(LbclientError, ValueError):
    """A malformed service config. ``path`` is the JSON path of the offending value."""

    def __init__(self, path: str, message: str) -> None:
        self.path = path
        self.reason = message
        super().__init__(f"{path}: {message}" if path else message)


class ResolverError(LbclientError):
    """A resolver could not produce endpoints (the balancer keeps the last good ones)."""


class ChannelClosedError(LbclientError, RuntimeError):
    """Raised when a closed channel is asked to do something other than close."""
