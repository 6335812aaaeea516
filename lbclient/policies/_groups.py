"""Shared machinery of the endpoint-group policies: ``priority``, ``weighted_target`` and
``zone_aware`` (no grpc, no threads, no I/O).

Endpoint attributes (the contract with resolvers; documented in docs/groups.md):

* ``attributes["priority"]``: an integer >= 0, 0 = primary (a decimal string is accepted);
  absent means 0.
* ``attributes["locality"]``: ``{"region": str, "zone": str}`` (either key may be left
  out), or a ``"region/zone"`` string, or a plain ``"zone"`` string (no slash).
* ``attributes["region"]`` / ``attributes["zone"]``: the flat form, read when
  ``"locality"`` is absent.

A resolver value that breaks these rules is ignored (read as absent), so one bad entry
cannot break picking; the per-address map in a policy config (``"endpoints"``) is checked
strictly when the config is parsed, and its values win over the resolver's.

Threading: a group policy's hooks (``endpoints_changed``, ``endpoint_weight``,
``build_picker``, ``close``) are called by the balancer one at a time with its lock held,
so the policy state here needs no lock. Pickers are immutable and lock-free.
"""

from __future__ import annotations

import functools
import itertools
import random
import re
from bisect import bisect_right
from collections.abc import Callable, Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from .._validate import expect_object, get_int, get_number, get_str, join, reject_unknown
from ..balancer.picker import (
    Candidate,
    FailingPicker,
    Picker,
    PickError,
    PickInfo,
    PickResult,
)
from ..balancer.policy import LbChoice, Policy, PolicyContext, parse_lb_config_list
from ..endpoint import Endpoint
from ..errors import ServiceConfigError

DEFAULT_OVERPROVISIONING_FACTOR = 1.4  # Envoy's default (140%)
DEFAULT_CHILD: list[dict[str, Any]] = [{"round_robin": {}}]

_ADDRESS_RE = re.compile(r"^.+:\d{1,5}$")
_GOLDEN64 = 0x9E3779B97F4A7C15  # 2**64 / golden ratio, odd: a full-period Weyl step
_MASK64 = (1 << 64) - 1


# ------------------------------------------------------------------ attributes
@dataclass(frozen=True, slots=True)
class Locality:
    """Where an endpoint runs. Empty strings mean "not known"."""

    region: str = ""
    zone: str = ""

    @property
    def key(self) -> str:
        """``"region/zone"`` when both are known, else whichever is known, else ``""``."""
        if self.region and self.zone:
            return f"{self.region}/{self.zone}"
        return self.zone or self.region


@functools.lru_cache(maxsize=4096)
def locality_from_string(value: str) -> Locality:
    """``"region/zone"`` -> both; ``"zone"`` (no slash) -> a zone only (cached: a fleet
    has few localities and a Locality is immutable)."""
    region, sep, zone = value.strip().partition("/")
    if not sep:
        return Locality(zone=region)
    return Locality(region.strip(), zone.strip())


@functools.lru_cache(maxsize=4096)
def _locality(region: str, zone: str) -> Locality:
    return Locality(region, zone)


@dataclass(frozen=True, slots=True)
class EndpointOverride:
    """Per-address attributes from a policy config (None: keep the resolver's value)."""

    priority: int | None = None
    locality: Locality | None = None


Overrides = tuple[tuple[str, EndpointOverride], ...]


def _lenient_priority(value: Any) -> int | None:
    if isinstance(value, str) and value.strip().isdigit():
        return int(value.strip())
    if isinstance(value, float) and value.is_integer() and value >= 0:
        return int(value)
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    return None


def _lenient_locality(attributes: Mapping[str, Any]) -> Locality:
    value = attributes.get("locality")
    if value is None:                 # the common case first (Mapping checks are slow)
        region, zone = attributes.get("region", ""), attributes.get("zone", "")
    elif isinstance(value, str):
        return locality_from_string(value)
    elif isinstance(value, Mapping):
        region, zone = value.get("region", ""), value.get("zone", "")
    else:
        region, zone = attributes.get("region", ""), attributes.get("zone", "")
    return _locality(region if isinstance(region, str) else "",
                     zone if isinstance(zone, str) else "")


class EndpointAttributes:
    """Reads priority and locality of endpoints: the config's per-address overrides
    first, then the resolver's attributes."""

    __slots__ = ("_overrides",)

    def __init__(self, overrides: Overrides) -> None:
        self._overrides = dict(overrides)

    def priority(self, endpoint: Endpoint) -> int:
        o = self._overrides.get(endpoint.address)
        if o is not None and o.priority is not None:
            return o.priority
        p = _lenient_priority(endpoint.attributes.get("priority"))
        return 0 if p is None else p

    def locality(self, endpoint: Endpoint) -> Locality:
        o = self._overrides.get(endpoint.address)
        if o is not None and o.locality is not None:
            return o.locality
        return _lenient_locality(endpoint.attributes)


# ------------------------------------------------------------------ config parsing
def _key_path(path: str, key: str) -> str:
    return f'{path}["{key}"]'


def parse_locality(value: Any, path: str) -> Locality:
    """A config locality: ``"region/zone"``, ``"zone"`` or ``{"region", "zone"}``."""
    if isinstance(value, str):
        loc = locality_from_string(value)
    else:
        obj = expect_object(value, path)
        reject_unknown(obj, path, {"region", "zone"})
        loc = Locality(get_str(obj, "region", path, "") or "",
                       get_str(obj, "zone", path, "") or "")
    if not loc.key:
        raise ServiceConfigError(path, "must name a region or a zone")
    return loc


def parse_overrides(raw: Any, path: str) -> Overrides:
    """``{"host:port": {"priority": int, "locality": ..., "region": str, "zone": str}}``."""
    if raw is None:
        return ()
    obj = expect_object(raw, path)
    out: list[tuple[str, EndpointOverride]] = []
    for address, value in obj.items():
        p = _key_path(path, address)
        if not _ADDRESS_RE.match(address):
            raise ServiceConfigError(p, "keys must be endpoint addresses like "
                                     '"10.0.0.1:50051" (as the resolver reports them)')
        entry = expect_object(value, p)
        reject_unknown(entry, p, {"priority", "locality", "region", "zone"})
        priority = get_int(entry, "priority", p, -1, minimum=0)
        locality: Locality | None = None
        flat = [k for k in ("region", "zone") if entry.get(k) is not None]
        if entry.get("locality") is not None:
            if flat:
                raise ServiceConfigError(join(p, flat[0]),
                                         'give either "locality" or "region"/"zone", not both')
            locality = parse_locality(entry["locality"], join(p, "locality"))
        elif flat:
            locality = parse_locality({k: entry[k] for k in flat}, p)
        out.append((address, EndpointOverride(None if priority < 0 else priority, locality)))
    return tuple(out)


def parse_factor(obj: Mapping[str, Any], path: str, default: float | None) -> float | None:
    """``overprovisioningFactor``: a number > 0 (Envoy's 140% is 1.4 here)."""
    if obj.get("overprovisioningFactor") is None:
        return default
    return get_number(obj, "overprovisioningFactor", path, 0.0, minimum=0.0,
                      exclusive_minimum=True, maximum=100.0)


def parse_child(obj: Mapping[str, Any], path: str) -> LbChoice:
    """``childPolicy``: a loadBalancingConfig-style list; round_robin when absent."""
    raw = obj.get("childPolicy")
    if raw is None:
        return parse_lb_config_list(DEFAULT_CHILD, join(path, "childPolicy"))
    return parse_lb_config_list(raw, join(path, "childPolicy"))


# ------------------------------------------------------------------ share arithmetic
def group_health(eligible: int, total: int, factor: float) -> float:
    """Envoy's health score of a group as a fraction: eligible share x overprovisioning
    factor, capped at 1 (so with 1.4, >= 71.4% eligible counts as fully healthy)."""
    if total <= 0 or eligible <= 0:
        return 0.0
    return min(1.0, factor * eligible / total)


def priority_loads(health: Sequence[float]) -> list[float]:
    """Envoy's priority load, as exact fractions (Envoy rounds to integer percents).

    Groups are in preference order. Each takes its health score of the traffic, scaled
    up when the scores sum to less than 1 (the "normalized total health"), until the
    traffic is used up: ``[0.35, 1.0] -> [0.35, 0.65]``, ``[0.2, 0.3] -> [0.4, 0.6]``.
    All zero -> all zero (the caller has nothing to pick from).
    """
    total = min(1.0, sum(health))
    if total <= 0.0:
        return [0.0] * len(health)
    loads: list[float] = []
    left = 1.0
    for h in health:
        load = max(0.0, min(left, h / total))
        loads.append(load)
        left -= load
    return loads


# ------------------------------------------------------------------ picker
class SplitPicker:
    """Splits picks over child pickers in proportion to their shares.

    Pick ``k`` draws ``u = frac(start + k * 0.618...)`` (a golden-ratio Weyl sequence,
    in exact 64-bit integer arithmetic) and uses the child whose slice of [0, 1)
    contains ``u``. Unlike independent random draws, any run of ``n`` picks is within
    a few picks of the exact split; ``start`` is random per picker so that clients do
    not move in lockstep. Immutable; the counter is ``itertools.count`` (atomic under
    the GIL), so ``pick`` takes no lock.

    ``parts`` are in preference order; a part with share 0 gets no traffic of its own
    but stays a fallback for retries: when the chosen child returns an endpoint in
    ``info.exclude`` (every endpoint of its group was tried), the other parts are asked
    in order and the first untried endpoint wins. So a retry during a failover reaches
    the standby even while the picker still gives the primary 100%. A result is only
    discarded when it is not ``counted`` and has no ``on_done`` (discarding one that is
    would leak an in-flight count or a callback).
    """

    __slots__ = ("_bounds", "_index", "_pickers", "_start", "_next", "shares")

    def __init__(self, parts: Sequence[tuple[float, Picker]], start: int) -> None:
        total = sum(s for s, _ in parts if s > 0.0)
        if total <= 0.0:
            raise ValueError("SplitPicker needs at least one part with a positive share")
        acc, bounds, index = 0.0, [], []
        for i, (s, _) in enumerate(parts):
            if s > 0.0:
                acc += s / total
                bounds.append(acc)
                index.append(i)
        bounds[-1] = 1.0
        self._bounds = tuple(bounds)
        self._index = tuple(index)            # slice -> position in _pickers
        self._pickers = tuple(p for _, p in parts)
        self._start = start & _MASK64
        self._next = itertools.count()
        self.shares = tuple(max(s, 0.0) / total for s, _ in parts)

    def pick(self, info: PickInfo) -> PickResult:
        k = next(self._next)
        u = ((self._start + k * _GOLDEN64) & _MASK64) / 2.0**64
        i = self._index[min(bisect_right(self._bounds, u), len(self._index) - 1)]
        result = self._pickers[i].pick(info)
        if (not info.exclude or result.candidate.address not in info.exclude
                or result.counted or result.on_done is not None):
            return result
        for j, picker in enumerate(self._pickers):
            if j == i:
                continue
            try:
                alt = picker.pick(info)
            except PickError:
                continue
            if alt.candidate.address not in info.exclude or alt.counted or alt.on_done:
                return alt
        return result


# ------------------------------------------------------------------ child policies
class ChildGroup:
    """Child policies keyed by group, each with its own :class:`PolicyContext`: the
    parent's clock, scheduler, options (plus ``options_for(key)``) and rebuild request,
    and its own ``rng`` seeded from the parent's. A child is created when its group first
    appears, closed when its group disappears from the endpoint list (that ``close()``
    runs with the balancer's lock held, so a child's ``close`` must only cancel timers),
    and all are closed with the parent."""

    def __init__(self, ctx: PolicyContext, choice_for: Callable[[Hashable], LbChoice],
                 options_for: Callable[[Hashable], Mapping[str, Any]] | None = None
                 ) -> None:
        self._ctx = ctx
        self._choice_for = choice_for
        self._options_for = options_for
        self._children: dict[Hashable, Policy] = {}
        self._closed = False

    def child(self, key: Hashable) -> Policy:
        policy = self._children.get(key)
        if policy is None:
            if self._closed:
                raise RuntimeError("group policy is closed")
            ctx = self._ctx
            options = dict(ctx.options)
            if self._options_for is not None:
                options.update(self._options_for(key))
            sub = PolicyContext(clock=ctx.clock, rng=random.Random(ctx.rng.getrandbits(64)),
                                scheduler=ctx.scheduler, request_rebuild=ctx.request_rebuild,
                                options=options)
            policy = self._children[key] = self._choice_for(key).create(sub)
        return policy

    def sync(self, groups: Mapping[Hashable, Sequence[Endpoint]]) -> None:
        """Give each group's child its endpoints; close children of vanished groups."""
        for key in [k for k in self._children if k not in groups]:
            self._children.pop(key).close()
        for key, endpoints in groups.items():
            self.child(key).endpoints_changed(endpoints)

    def close(self) -> None:
        self._closed = True
        children, self._children = list(self._children.values()), {}
        for policy in children:
            policy.close()


def group_by(items: Iterable[Any],
             key: Callable[[Any], Hashable | None]) -> dict[Hashable, list[Any]]:
    """Items grouped by ``key(item)`` (first-seen order; a None key drops the item)."""
    out: dict[Hashable, list[Any]] = {}
    for item in items:
        k = key(item)
        if k is not None:
            out.setdefault(k, []).append(item)
    return out


class GroupedPolicy(Policy):
    """Base of the group policies: endpoints are put in groups by :meth:`group_of`, each
    group is balanced by its own child policy, and :meth:`shares` says how much traffic
    each group gets (given each group's eligible candidates and total size).

    An endpoint's group is computed once per endpoint object and cached by address
    (:meth:`group`), so a rebuild over 10,000 endpoints is dictionary lookups."""

    def __init__(self, config: Any, ctx: PolicyContext, attributes: EndpointAttributes) -> None:
        super().__init__(config, ctx)
        self.attributes = attributes
        self.children = ChildGroup(ctx, self.child_choice, self.child_options)
        self._rng = random.Random(ctx.rng.getrandbits(64))  # picker start offsets
        self._known: dict[Hashable, frozenset[str]] = {}
        self._groups: dict[str, tuple[Endpoint, Hashable | None]] = {}

    # -- hooks for subclasses
    def group_of(self, endpoint: Endpoint) -> Hashable | None:
        raise NotImplementedError

    def child_choice(self, key: Hashable) -> LbChoice:
        raise NotImplementedError

    def shares(self, groups: Sequence[tuple[Hashable, int, int]]) -> list[float]:
        """``groups``: ``(key, eligible, total)`` in :meth:`order`; returns a share each."""
        raise NotImplementedError

    def order(self, keys: Iterable[Hashable]) -> list[Hashable]:
        return list(keys)

    def no_group_reason(self) -> str:
        return "no eligible endpoint belongs to a group"

    def child_options(self, key: Hashable) -> Mapping[str, Any]:
        """Options added to the context of the child of group ``key``."""
        return {}

    def group(self, endpoint: Endpoint) -> Hashable | None:
        """:meth:`group_of`, cached per address while the endpoint object is the same."""
        cached = self._groups.get(endpoint.address)
        if cached is not None and cached[0] is endpoint:
            return cached[1]
        key = self.group_of(endpoint)
        self._groups[endpoint.address] = (endpoint, key)
        return key

    # -- Policy
    def endpoints_changed(self, endpoints: Sequence[Endpoint]) -> None:
        groups = group_by(endpoints, self.group)
        if len(self._groups) > 2 * len(endpoints) + 64:   # forget departed addresses
            present = {e.address for e in endpoints}
            self._groups = {a: v for a, v in self._groups.items() if a in present}
        self._known = {k: frozenset(e.address for e in v) for k, v in groups.items()}
        self.children.sync(groups)

    def endpoint_weight(self, candidate: Candidate) -> float:
        key = self.group(candidate.endpoint)
        return candidate.weight if key is None else self.children.child(key).endpoint_weight(
            candidate)

    def build_picker(self, candidates: Sequence[Candidate]) -> Picker:
        group = self.group
        by_group = group_by(candidates, lambda c: group(c.endpoint))
        keys = self.order(set(self._known) | set(by_group))
        stats = []
        for key in keys:
            mine = by_group.get(key, [])
            known = self._known.get(key, frozenset())
            total = len(known) + sum(1 for c in mine if c.address not in known)
            stats.append((key, len(mine), total))
        shares = self.shares(stats)
        # Groups with eligible endpoints but no share stay in as retry fallbacks.
        parts = [(share, self.children.child(key).build_picker(by_group[key]))
                 for (key, _, _), share in zip(stats, shares, strict=True)
                 if by_group.get(key)]
        if not any(share > 0.0 for share, _ in parts):
            return FailingPicker(self.no_group_reason())
        return SplitPicker(parts, self._rng.getrandbits(64))

    def close(self) -> None:
        self.children.close()
