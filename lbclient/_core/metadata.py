"""gRFC A6 metadata: attempt counts and server pushback.

* Retried and hedged attempts carry ``lbclient-previous-rpc-attempts: N`` in their request
  metadata (gRPC's own ``grpc-previous-rpc-attempts`` request header is reserved: grpc
  core drops it from application metadata before it reaches the wire); a call's result
  reports ``grpc-previous-rpc-attempts: N`` in its trailing metadata, as gRFC A6 says.
* ``grpc-retry-pushback-ms`` in an attempt's trailers (gRFC A6 "Pushback").
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

PREVIOUS_ATTEMPTS = "grpc-previous-rpc-attempts"
REQUEST_PREVIOUS_ATTEMPTS = "lbclient-previous-rpc-attempts"
PUSHBACK = "grpc-retry-pushback-ms"

_PUSHBACK_RE = re.compile(r"0|[1-9][0-9]{0,9}")
_INT32_MAX = 2**31 - 1


def attempt_metadata(metadata: Any, previous: int) -> Any:
    """The request metadata of the attempt that follows ``previous`` attempts."""
    if previous <= 0:
        return metadata
    return (*tuple(metadata or ()), (REQUEST_PREVIOUS_ATTEMPTS, str(previous)))


def add_attempts_trailer(trailing: Iterable[Any] | None, previous: int) -> tuple[Any, ...]:
    """Trailing metadata reporting ``previous`` earlier attempts (unchanged if none)."""
    items = tuple(trailing or ())
    if previous <= 0:
        return items
    return (*items, (PREVIOUS_ATTEMPTS, str(previous)))


def parse_pushback(trailing: Iterable[Any] | None) -> tuple[bool, float | None]:
    """``(stop, delay)`` from an attempt's ``grpc-retry-pushback-ms`` trailer: a
    non-negative 32-bit integer of milliseconds means "retry after exactly that delay";
    a negative or unparseable value means "do not retry". ``(False, None)`` without it."""
    for key, value in trailing or ():
        if key != PUSHBACK:
            continue
        if isinstance(value, bytes):
            value = value.decode("ascii", "replace")
        text = str(value).strip()
        if not _PUSHBACK_RE.fullmatch(text) or int(text) > _INT32_MAX:
            return True, None
        return False, int(text) / 1000.0
    return False, None
