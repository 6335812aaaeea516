"""A channel's connection counts (gRFC A94's subchannel metrics), from the connectivity
changes the balancer sees (stdlib only).

grpcio does not tell a Python client its transport events, so a connection attempt is
read from the states lbclient polls: entering READY is a connection that succeeded,
entering TRANSIENT_FAILURE from anything but READY one that failed, leaving READY a
disconnection. Why a connection ended is known only when lbclient closed it (the
endpoint was removed: "subchannel shutdown"); otherwise it is "unknown".

Threading: mutated under the balancer lock; readers copy with :meth:`snapshot`.
"""

from __future__ import annotations

import collections
from collections.abc import Mapping
from typing import Any, NamedTuple

from ..connectivity import Connectivity

SHUTDOWN = "subchannel shutdown"
UNKNOWN = "unknown"


def locality_of(attributes: Mapping[str, Any]) -> str:
    """An endpoint's locality as a label value: its ``locality`` attribute (a string, or
    ``{"region", "zone"}``), else its ``region``/``zone`` attributes, joined by "/";
    "" when it has none."""
    value = attributes.get("locality")
    if isinstance(value, str):
        return value
    source = value if isinstance(value, Mapping) else attributes
    parts = [source.get("region", ""), source.get("zone", "")]
    return "/".join(p for p in parts if isinstance(p, str) and p)


class ConnectionCounts(NamedTuple):
    """Totals since the channel started, by locality (``disconnections`` by locality
    and reason); ``open``: READY connections now."""

    succeeded: dict[str, int]
    failed: dict[str, int]
    disconnections: dict[tuple[str, str], int]
    open: dict[str, int]


class ConnectionTally:
    __slots__ = ("_succeeded", "_failed", "_disconnections", "_open", "_opened_in", "_peak")

    def __init__(self) -> None:
        self._succeeded: collections.Counter[str] = collections.Counter()
        self._failed: collections.Counter[str] = collections.Counter()
        self._disconnections: collections.Counter[tuple[str, str]] = collections.Counter()
        self._open: collections.Counter[str] = collections.Counter()
        # address -> the locality its open connection was counted in (an endpoint's
        # attributes may change while it is connected)
        self._opened_in: dict[str, str] = {}
        self._peak = 0       # its largest size since last compacted (dicts never shrink)

    def changed(self, address: str, locality: str, previous: Connectivity,
                state: Connectivity) -> None:
        """An endpoint's connectivity went from ``previous`` to ``state``."""
        if state is Connectivity.READY:
            self._succeeded[locality] += 1
            self._open[locality] += 1
            self._opened_in[address] = locality
            self._peak = max(self._peak, len(self._opened_in))
        elif previous is Connectivity.READY:
            opened = self._pop(address)
            if opened is None:
                opened = locality
            self._disconnections[opened, UNKNOWN] += 1
            self._open[opened] -= 1
            if state is Connectivity.TRANSIENT_FAILURE:
                self._failed[locality] += 1      # lost, and the reconnect failed too
        elif state is Connectivity.TRANSIENT_FAILURE:
            self._failed[locality] += 1

    def closed(self, address: str) -> None:
        """lbclient closed an endpoint's connection (the endpoint was removed)."""
        opened = self._pop(address)
        if opened is not None:
            self._disconnections[opened, SHUTDOWN] += 1
            self._open[opened] -= 1

    def _pop(self, address: str) -> str | None:
        opened = self._opened_in.pop(address, None)
        if self._peak > 64 and len(self._opened_in) * 4 < self._peak:
            # after a large shrink of the endpoint set, give the table's memory back
            self._opened_in = dict(self._opened_in)
            self._peak = len(self._opened_in)
        return opened

    def snapshot(self) -> ConnectionCounts:
        return ConnectionCounts(dict(self._succeeded), dict(self._failed),
                                dict(self._disconnections), dict(self._open))
