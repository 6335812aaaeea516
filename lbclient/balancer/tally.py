"""Counts over a balancer's endpoint records, kept up to date one change at a time
(stdlib only).

The balancer needs, after every control-plane event: the channel's aggregate
connectivity, whether calls should wait, why no endpoint is ready, and the connected
endpoints (those READY and past their first health answer: the candidates, with the fit
ones among them). Walking every record for that costs O(n) per event, which after a grow
to 10,000 endpoints (most of them connecting and failing) is most of the client's CPU.
:class:`RecordTally` keeps them instead: the balancer calls :meth:`RecordTally.account`
after any change to a record (it compares the record's :meth:`classify` with what was
counted last, so calling it when nothing changed is harmless) and
:meth:`RecordTally.forget` when a record is removed. :meth:`account` says whether the
record's connected or fit status changed: only then can the eligible set (and the panic
decision) have changed, so only then does the picker need rebuilding.

Threading: guarded by the balancer lock, like the records.
"""

from __future__ import annotations

import operator
from collections.abc import Iterable

from ..connectivity import Connectivity
from .record import Classification, EndpointRecord

# The order the reasons appear in "no ready endpoints: 2 connecting, 1 failed".
REASON_ORDER = ("connecting", "idle", "failed", "waiting for health", "unhealthy", "ejected",
                "shut down", "not ready")
_NOT_COUNTED = Classification(Connectivity.SHUTDOWN, False, "", False, False)
_by_index = operator.attrgetter("index")


class RecordTally:
    __slots__ = ("_states", "queueing", "_reasons", "connected", "fit", "_peak")

    def __init__(self) -> None:
        self._states: dict[Connectivity, int] = dict.fromkeys(Connectivity, 0)
        self.queueing = 0                       # records that make calls wait
        self._reasons: dict[str, int] = {}      # unfit reason -> records
        self.connected: set[EndpointRecord] = set()
        self.fit = 0                            # connected records that are fit
        self._peak = 0      # len(connected) at most since last compacted (sets never shrink)

    def account(self, rec: EndpointRecord) -> bool:
        """Count ``rec`` as it is now (after any change to it); True when its connected
        or fit status changed."""
        new = rec.classify()
        old = rec.accounted
        if new == old:
            return False
        rec.accounted = new
        if old is None:
            old = _NOT_COUNTED
        else:
            self._add(old, -1)
        self._add(new, 1)
        if new.connected != old.connected:
            if new.connected:
                self.connected.add(rec)
                self._peak = max(self._peak, len(self.connected))
            else:
                self._discard(rec)
        return new.connected != old.connected or new.fit != old.fit

    def forget(self, rec: EndpointRecord) -> bool:
        """``rec`` was removed; True if it was connected."""
        old = rec.accounted
        if old is None:
            return False
        rec.accounted = None
        self._add(old, -1)
        self._discard(rec)
        return old.connected

    def _discard(self, rec: EndpointRecord) -> None:
        self.connected.discard(rec)
        if self._peak > 64 and len(self.connected) * 4 < self._peak:
            # after a large shrink of the endpoint set, give the table's memory back
            self.connected = set(self.connected)
            self._peak = len(self.connected)

    def _add(self, c: Classification, n: int) -> None:
        self._states[c.connectivity] += n
        if c.queueing:
            self.queueing += n
        if c.fit:
            self.fit += n
        left = self._reasons.get(c.reason, 0) + n
        if left:
            self._reasons[c.reason] = left
        else:
            del self._reasons[c.reason]

    # ------------------------------------------------------------------ reading
    def aggregate(self) -> Connectivity:
        """gRPC's aggregation rule (:func:`lbclient.connectivity.aggregate`) over the
        counted records: READY if any is READY, else CONNECTING, else IDLE, else
        TRANSIENT_FAILURE."""
        states = self._states
        for wanted in (Connectivity.READY, Connectivity.CONNECTING, Connectivity.IDLE):
            if states[wanted]:
                return wanted
        return Connectivity.TRANSIENT_FAILURE

    def connected_in_order(self) -> list[EndpointRecord]:
        """The connected records in the resolver's order (``EndpointRecord.index``)."""
        return sorted(self.connected, key=_by_index)

    def reasons(self) -> list[tuple[str, int]]:
        """(unfit reason, records) in :data:`REASON_ORDER`, then any other reason (fit
        records, whose reason is "", are left out)."""
        counts = self._reasons
        known = [(k, counts[k]) for k in REASON_ORDER if k in counts]
        return known + [(k, n) for k, n in counts.items() if k and k not in REASON_ORDER]

    def summary(self) -> tuple[dict[Connectivity, int], int, dict[str, int], frozenset[str],
                               int]:
        """Everything counted, comparable with another tally's (tests recount)."""
        return ({k: v for k, v in self._states.items() if v}, self.queueing,
                dict(self._reasons), frozenset(r.address for r in self.connected), self.fit)

    @classmethod
    def recount(cls, records: Iterable[EndpointRecord]) -> RecordTally:
        """A tally counted from scratch (for tests; leaves the records' ``accounted``
        as it found them)."""
        tally = cls()
        for rec in records:
            saved, rec.accounted = rec.accounted, None
            tally.account(rec)
            rec.accounted = saved
        return tally
