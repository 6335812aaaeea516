"""What ``ring_hash`` and ``maglev`` share: the key rules, the layout over *every*
endpoint, and the picker that walks to the next eligible endpoint.

Key rules (gRFC A76): the key is the value of the ``requestHashHeader`` metadata header
(several values joined with ","), hashed with XXH64 (seed 0). A call without the header
(or with an empty value, or with no header configured) gets a random hash, so it goes to
a random endpoint, in proportion to the endpoints' shares of the layout.

Layout: slots (ring points or Maglev table entries) are laid out over every endpoint the
resolver reported (``Policy.endpoints_changed``), eligible or not, plus any candidate the
policy was not told about. An endpoint's slot positions come from its hash key: the
endpoint attribute ``hash_key`` when set (gRFC A76), else its address. An ineligible
endpoint keeps its slots; a key that lands on one moves to the next slot owned by an
eligible endpoint, and every other key stays where it was (gRFC A42's picker). The
layout is rebuilt only when the set of endpoints or their weights change, and is cached.

Bounded load (``hashBalanceFactor``, Envoy's ``hash_balance_factor``): when set, an
endpoint whose in-flight calls (plus this one) would exceed ``factor/100`` times its
weighted share of all in-flight calls (plus this one) is skipped like an ineligible one.
This reads every candidate's counter, so it costs O(n) per pick.

Threading: the policy hooks run under the balancer lock; pickers are immutable.
"""

from __future__ import annotations

import bisect
import operator
import random
from collections.abc import Iterator, Mapping, Sequence
from typing import Any, Protocol

from .._validate import get_int
from ..balancer.picker import Candidate, PickInfo, PickResult
from ..balancer.policy import Policy, PolicyContext
from ..endpoint import Endpoint
from ._common import header_value, weight_of
from ._hashing import key_hash

HASH_KEY_ATTRIBUTE = "hash_key"


class Layout(Protocol):
    """Slots over members: ``owners[slot]`` is an index into ``members`` (addresses)."""

    @property
    def members(self) -> tuple[str, ...]: ...

    @property
    def owners(self) -> Sequence[int]: ...

    def slot(self, h: int) -> int:
        """The slot a 64-bit key hash lands on."""


def parse_balance_factor(obj: Mapping[str, Any], path: str) -> int | None:
    """Envoy's ``hash_balance_factor``: an integer percentage, at least 100."""
    if obj.get("hashBalanceFactor") is None:
        return None
    return get_int(obj, "hashBalanceFactor", path, 0, minimum=100)


def hash_key(endpoint: Endpoint) -> str:
    """The string an endpoint's slots are derived from (gRFC A76)."""
    key = endpoint.attributes.get(HASH_KEY_ATTRIBUTE)
    return key if isinstance(key, str) and key else endpoint.address


class HashPicker:
    """Immutable: the layout, the eligible candidate of each member (or None), and the
    eligible slots in order (only when fewer than half of the members are eligible;
    otherwise a pick steps forward from its slot to the first eligible owner)."""

    __slots__ = ("_layout", "_owners", "_elig", "_elig_slots", "_candidates", "_header",
                 "_rng", "_factor", "_share", "_direct")

    def __init__(self, layout: Layout, candidates: Sequence[Candidate], header: str | None,
                 rng: random.Random, balance_factor: int | None,
                 weights: Mapping[str, float]) -> None:
        by_address = {c.address: c for c in candidates}
        self._layout = layout
        self._owners = layout.owners
        self._elig = tuple(map(by_address.get, layout.members))
        self._candidates = tuple(candidates)
        eligible = len(self._elig) - self._elig.count(None)
        self._elig_slots: list[int] | None = None
        if 2 * eligible < len(self._elig):   # mostly ineligible: bisect eligible slots
            elig = self._elig
            self._elig_slots = [s for s, m in enumerate(self._owners) if elig[m] is not None]
        self._header = header
        self._rng = rng
        self._factor = balance_factor / 100.0 if balance_factor is not None else None
        # a pick may take its slot's owner at once when eligible (no balance factor)
        self._direct = self._factor is None and len(self._owners) > 0
        self._share: dict[str, float] = {}
        if self._factor is not None:
            total = sum(weight_of(weights, c) for c in self._candidates)
            self._share = {c.address: weight_of(weights, c) / total
                           for c in self._candidates}

    def pick(self, info: PickInfo) -> PickResult:
        value = header_value(info, self._header)
        h = key_hash(value) if value is not None else self._rng.getrandbits(64)
        slot = self._layout.slot(h)
        if self._direct and not info.exclude:
            owner = self._elig[self._owners[slot]]     # the common case: eligible owner
            if owner is not None:
                return owner.result
        walk = self._walk(slot)
        first = next(walk, None)
        if first is None:  # no eligible endpoint owns a slot (zero-point members)
            return PickResult(self._candidates[int(self._rng.random() * len(
                self._candidates)) % len(self._candidates)])
        if not info.exclude and self._factor is None:
            return first.result
        limit = self._limit()
        c: Candidate | None = first
        seen: set[str] = set()
        while c is not None and len(seen) < len(self._candidates):
            if c.address not in seen:
                seen.add(c.address)
                if c.address not in info.exclude and (limit is None or limit(c)):
                    return c.result
            c = next(walk, None)
        return first.result

    def _walk(self, slot: int) -> Iterator[Candidate]:
        """Eligible owners from ``slot`` on, once around the layout."""
        owners, elig = self._owners, self._elig
        slots = self._elig_slots
        if slots is None:
            n = len(owners)
            for k in range(n):
                c = elig[owners[(slot + k) % n]]
                if c is not None:
                    yield c
            return
        if not slots:
            return
        j = bisect.bisect_left(slots, slot)
        for k in range(len(slots)):
            c = elig[owners[slots[(j + k) % len(slots)]]]
            assert c is not None
            yield c

    def _limit(self) -> Any:
        """Envoy's bounded-load test (None when ``hashBalanceFactor`` is unset)."""
        if self._factor is None:
            return None
        total = sum(c.stats.in_flight for c in self._candidates) + 1
        factor, share = self._factor, self._share

        def fits(c: Candidate) -> bool:
            return c.stats.in_flight + 1 <= total * factor * share[c.address]
        return fits


class LayoutJob(Protocol):
    """A layout computed in slices (see :meth:`HashPolicy.start_layout`)."""

    def step(self) -> Layout | None:
        """Do one slice of a few milliseconds; the layout once it is complete."""


_ADDRESS = operator.attrgetter("address")


class HashPolicy(Policy):
    """Base of ``ring_hash`` and ``maglev``: subclasses implement ``make_layout`` (and
    may implement ``start_layout`` to compute large layouts off the balancer's lock).

    The members (every endpoint the resolver reported, sorted by hash key) are computed
    when the resolver's list changes, not per picker build; the layout is rebuilt only
    when they change. A subclass whose layout takes long to compute returns a
    :class:`LayoutJob` from ``start_layout``: when a layout is already published and the
    channel has a scheduler, the new one is then computed in slices on the scheduler
    while pickers keep using the old one (endpoints that left are skipped at once, new
    ones get their keys when the new layout is published with a rebuild request)."""

    def __init__(self, config: Any, ctx: PolicyContext) -> None:
        super().__init__(config, ctx)
        self._weights: dict[str, float] = dict(config.weights)
        self._all: tuple[Endpoint, ...] = ()
        self._known: frozenset[str] = frozenset()
        self._members: list[tuple[str, str, float]] | None = None   # of _all
        self._last_members: list[tuple[str, str, float]] = []
        self._last_ids: dict[int, Endpoint] = {}        # id -> the endpoints behind them
        self._member_of: dict[str, tuple[str, str, float]] = {}   # address -> member
        self._layout_key: tuple[Any, ...] | None = None
        self._layout: Layout | None = None
        self._laid_out: list[tuple[str, str, float]] | None = None  # members of _layout
        self._job: tuple[tuple[Any, ...], LayoutJob] | None = None  # key, job
        # A layout a job finished (set on the scheduler's thread, adopted by the next
        # build, which runs under the balancer's lock like every other change here).
        self._ready: tuple[tuple[Any, ...], Layout] | None = None
        self._closed = False

    def endpoint_weight(self, candidate: Candidate) -> float:
        return weight_of(self._weights, candidate)

    def endpoints_changed(self, endpoints: Sequence[Endpoint]) -> None:
        self._all = tuple(endpoints)
        self._known = frozenset(map(_ADDRESS, endpoints))
        self._members = None

    def members(self, candidates: Sequence[Candidate]) -> list[tuple[str, str, float]]:
        """(hash key, address, weight) of every endpoint known, sorted by hash key then
        address (layouts are independent of resolver order, like gRPC's)."""
        if self._known.issuperset(map(_ADDRESS, candidates)):
            if self._members is None:
                self._members = self._compute_members(self._all, ())
            return self._members
        return self._compute_members(self._all, candidates)

    def _compute_members(self, known: Sequence[Endpoint], extra: Sequence[Candidate]
                         ) -> list[tuple[str, str, float]]:
        endpoints = dict(zip(map(_ADDRESS, known), known, strict=True))
        for c in extra:
            endpoints.setdefault(c.address, c.endpoint)
        # Unchanged endpoints (the same Endpoint objects) keep their members: the
        # changed ones are found with set operations on object ids and edited into the
        # last sorted list with bisect, so a small change costs O(n) in C, not in Python.
        by_id = dict(zip(map(id, endpoints.values()), endpoints.values(), strict=True))
        last, last_ids = self._last_members, self._last_ids
        gone, new = last_ids.keys() - by_id.keys(), by_id.keys() - last_ids.keys()
        if last and 8 * (len(gone) + len(new)) < len(endpoints):
            out = list(last)
            member_of = self._member_of
            for i in gone:
                m = member_of.pop(last_ids[i].address)
                del out[bisect.bisect_left(out, m)]
            for i in new:
                e = by_id[i]
                m = member_of[e.address] = self._member(e)
                bisect.insort(out, m)
        else:
            member_of = {a: self._member(e) for a, e in endpoints.items()}
            out = sorted(member_of.values())
        self._member_of, self._last_members, self._last_ids = member_of, out, by_id
        return out

    def _member(self, e: Endpoint) -> tuple[str, str, float]:
        return (hash_key(e), e.address, float(self._weights.get(e.address, e.weight)))

    def layout_for(self, candidates: Sequence[Candidate]) -> Layout:
        ready = self._ready
        if ready is not None:
            self._ready = None
            if self._job is not None and self._job[0] == ready[0]:
                self._job = None
            self._layout_key, self._layout = ready
            self._laid_out = None
        members = self.members(candidates)
        if members is self._laid_out and self._layout is not None:
            return self._layout
        key = tuple(members)
        if self._layout is not None and key == self._layout_key:
            self._laid_out = members
            return self._layout
        job = self._job
        if self._layout is not None and self.ctx.scheduler is not None:
            if job is not None and job[0] == key:
                return self._layout                    # already being computed
            started = self.start_layout(members)
            if started is not None:
                self._job = (key, started)
                self._schedule_step(key, started)
                return self._layout
        self._job = None
        self._layout = self.make_layout(members)
        self._layout_key = key
        self._laid_out = members
        return self._layout

    def make_layout(self, members: list[tuple[str, str, float]]) -> Layout:
        raise NotImplementedError

    def start_layout(self, members: list[tuple[str, str, float]]) -> LayoutJob | None:
        """A job computing the layout in slices, or None to compute it at once."""
        return None

    def _schedule_step(self, key: tuple[Any, ...], job: LayoutJob) -> None:
        scheduler = self.ctx.scheduler
        if scheduler is None or self._closed:
            return

        def step() -> None:
            current = self._job
            if self._closed or current is None or current[1] is not job:
                return                                  # superseded or closed
            layout = job.step()
            if layout is None:
                self._schedule_step(key, job)
                return
            self._ready = (key, layout)
            self.ctx.request_rebuild()
        scheduler.call_later(0.0, step)

    def finish_layout(self) -> bool:
        """Complete a layout being computed in slices now, on this thread (tests,
        benchmarks); True if there was one. The next ``build_picker`` uses it."""
        current = self._job
        if current is None:
            return False
        key, job = current
        layout = job.step()
        while layout is None:
            layout = job.step()
        self._ready = (key, layout)
        return True

    @property
    def layout_pending(self) -> bool:
        """A new layout is being computed; pickers use the previous one meanwhile."""
        return self._job is not None

    def build_picker(self, candidates: Sequence[Candidate]) -> HashPicker:
        cfg = self.config
        return HashPicker(self.layout_for(candidates), candidates, cfg.request_hash_header,
                          self.ctx.rng, cfg.hash_balance_factor, self._weights)

    def close(self) -> None:
        self._closed = True
        self._job = None
