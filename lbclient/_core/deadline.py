"""A call's one deadline: every attempt, wait and backoff of the call shares it."""

from __future__ import annotations

import time


def deadline_from(timeout: float | None, default: float | None,
                  now: float | None = None) -> float | None:
    """The call's deadline (``time.monotonic()`` based): the caller's timeout, or the
    method config's default, the shorter of the two when both are given."""
    if default is not None and (timeout is None or default < timeout):
        timeout = default
    if timeout is None:
        return None
    return (time.monotonic() if now is None else now) + timeout


def remaining(deadline: float | None) -> float | None:
    """Seconds left before ``deadline`` (may be negative), None without a deadline."""
    return None if deadline is None else deadline - time.monotonic()
