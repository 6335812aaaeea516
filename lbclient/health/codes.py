"""Which gRPC status codes speak of the endpoint (stdlib only).

lbclient counts a call as an *endpoint failure* only when its status says something about
the server rather than about the request. gRPC's own outlier detection (gRFC A50) counts
every non-OK status; list every code in ``failureStatusCodes`` to get that behaviour.
"""

from __future__ import annotations

from typing import Any

from .._validate import expect_list, join
from ..errors import ServiceConfigError

# The 17 gRPC status code names, in numeric order.
STATUS_CODES = (
    "OK", "CANCELLED", "UNKNOWN", "INVALID_ARGUMENT", "DEADLINE_EXCEEDED", "NOT_FOUND",
    "ALREADY_EXISTS", "PERMISSION_DENIED", "RESOURCE_EXHAUSTED", "FAILED_PRECONDITION",
    "ABORTED", "OUT_OF_RANGE", "UNIMPLEMENTED", "INTERNAL", "UNAVAILABLE", "DATA_LOSS",
    "UNAUTHENTICATED",
)

# The default: codes that speak of the server, not the request.
SERVER_FAILURE_CODES = frozenset({"UNAVAILABLE", "DEADLINE_EXCEEDED", "INTERNAL", "UNKNOWN",
                                  "RESOURCE_EXHAUSTED", "DATA_LOSS"})

# Every non-OK code: what gRPC's outlier detection counts as a failure.
ALL_FAILURE_CODES = frozenset(STATUS_CODES[1:])


def parse_status_codes(value: Any, path: str) -> frozenset[str]:
    """A JSON list of status code names (``"UNAVAILABLE"``, case-insensitive) or numbers
    (``14``). OK cannot be a failure; the list must not be empty."""
    items = expect_list(value, path)
    if not items:
        raise ServiceConfigError(path, "must list at least one status code")
    codes: set[str] = set()
    for i, item in enumerate(items):
        p = join(path, i)
        if isinstance(item, bool):
            raise ServiceConfigError(p, f"must be a status code name or number, got {item!r}")
        if isinstance(item, int):
            if not 0 <= item < len(STATUS_CODES):
                raise ServiceConfigError(p, f"unknown status code number {item}")
            name = STATUS_CODES[item]
        elif isinstance(item, str) and item.upper() in STATUS_CODES:
            name = item.upper()
        else:
            raise ServiceConfigError(p, f"unknown status code {item!r} "
                                        f"(known: {', '.join(STATUS_CODES)})")
        if name == "OK":
            raise ServiceConfigError(p, "OK cannot count as a failure")
        codes.add(name)
    return frozenset(codes)


def classify(code: str, failure_codes: frozenset[str]) -> bool | None:
    """True: a failure; False: a success (the server answered); None: not counted
    (CANCELLED is the client's own doing unless listed as a failure)."""
    if code in failure_codes:
        return True
    if code == "CANCELLED":
        return None
    return False
