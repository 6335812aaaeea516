"""``sticky``: session affinity on top of a child policy.

Config::

    {"sessionHeader": "x-session-id",      # required: the metadata header naming the session
     "childPolicy": [{"round_robin": {}}], # places new sessions (loadBalancingConfig list)
     "maxSessions": 10000,                 # remembered sessions (least recently used go)
     "ttl": "1800s",                       # a session idle this long is forgotten
     "returnWindow": "30s",                # gradual move back after a failover; "0s": at once
     "endpointHeader": "x-lb-endpoint"}    # optional: a response header naming the endpoint

* A call without the session header is placed by the child policy and not remembered.
* The first call of a session is placed by the child policy and the endpoint is
  remembered; later calls of the session go to it while it is eligible.
* If it is not eligible (ejected, unhealthy, not connected, removed) the call fails over
  through the child policy and the session is remembered on the new endpoint, keeping the
  original one as its *home*.
* When the home endpoint is eligible again, failed-over sessions move back gradually:
  a session moves on its first call after ``f x returnWindow`` has passed since the home
  came back, where ``f`` in [0, 1) is a fixed hash of the session key. So the fraction
  moved grows linearly over the window instead of all sessions stampeding back at once.
* Cookie style: when ``endpointHeader`` is set and a response carries that header (in
  its initial metadata, or its trailers for trailers-only responses) naming an eligible
  endpoint's ``host:port``, the session is bound to that endpoint from the next call on.
  Values naming no known endpoint are ignored.
* Retries (addresses in ``PickInfo.exclude``) go through the child policy without
  changing the session.

Threading: the session table lives on the policy (it outlives pickers) and is changed by
pick and call-completion threads using only single operations on an ``OrderedDict`` and
attribute assignments, which are atomic under the GIL. Two concurrent first calls of the
same new session may be placed on different endpoints; the last one is remembered.
"""

from __future__ import annotations

import collections
import operator
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from .._validate import expect_object, get_duration, get_int, join, reject_unknown
from ..balancer.picker import CallOutcome, Candidate, Metadata, Picker, PickInfo, PickResult
from ..balancer.policy import (
    LbChoice,
    Policy,
    PolicyContext,
    PolicySpec,
    parse_lb_config_list,
    register_policy,
)
from ..endpoint import Endpoint
from ._common import header_value, parse_header
from ._hashing import xxhash64

NAME = "sticky"
_ADDRESS = operator.attrgetter("address")
DEFAULT_CHILD: list[dict[str, Any]] = [{"round_robin": {}}]


@dataclass(frozen=True)
class Config:
    session_header: str
    child: LbChoice
    max_sessions: int = 10000
    ttl: float = 1800.0
    return_window: float = 30.0
    endpoint_header: str | None = None


def parse_config(raw: Any, path: str) -> Config:
    obj = expect_object(raw if raw is not None else {}, path)
    reject_unknown(obj, path, {"sessionHeader", "childPolicy", "maxSessions", "ttl",
                               "returnWindow", "endpointHeader"})
    header = parse_header(obj, "sessionHeader", path, required=True)
    assert header is not None
    child_raw = obj.get("childPolicy")
    child = parse_lb_config_list(DEFAULT_CHILD if child_raw is None else child_raw,
                                 join(path, "childPolicy"))
    ttl = get_duration(obj, "ttl", path, 1800.0, positive=True)
    window = get_duration(obj, "returnWindow", path, 30.0)
    assert ttl is not None and window is not None
    return Config(header, child, get_int(obj, "maxSessions", path, 10000, minimum=1),
                  ttl, window, parse_header(obj, "endpointHeader", path))


class _Session:
    __slots__ = ("address", "home", "last_used", "frac")

    def __init__(self, address: str, now: float, frac: float) -> None:
        self.address = address          # where calls go now
        self.home: str | None = None    # where they went before a failover
        self.last_used = now
        self.frac = frac                # in [0, 1): when to move back within the window


def _first(metadata: Metadata, key: str) -> str | None:
    for k, v in metadata:
        if k.lower() == key:
            return v.decode("utf-8", "replace") if isinstance(v, bytes) else v
    return None


class StickyPicker:
    """The child's picker plus this snapshot's eligible endpoints by address."""

    __slots__ = ("_policy", "_child", "_by_address")

    def __init__(self, policy: Sticky, child: Picker, candidates: Sequence[Candidate]) -> None:
        self._policy = policy
        self._child = child
        self._by_address = dict(zip(map(_ADDRESS, candidates), candidates, strict=True))

    def pick(self, info: PickInfo) -> PickResult:
        p = self._policy
        key = header_value(info, p.config.session_header)
        if key is None:
            return self._child.pick(info)
        now = p.ctx.clock()
        s = p.sessions.get(key)
        if s is not None and now - s.last_used > p.config.ttl:
            p.sessions.pop(key, None)
            s = None
        if s is not None:
            home = s.home
            if (home is not None and home in self._by_address and home not in info.exclude
                    and p.may_return(home, s.frac, now)):
                s.address, s.home = home, None
            c = self._by_address.get(s.address)
            if c is not None:
                if c.address in info.exclude:  # a retry: elsewhere, session unchanged
                    return self._child.pick(info)
                s.last_used = now
                p.touch(key)
                return PickResult(c, p.done_callback(key, None),
                                  wants_metadata=p.reads_metadata)
        r = self._child.pick(info)
        address = r.candidate.address
        if s is None:
            p.remember(key, _Session(address, now, xxhash64(key) / 2.0**64))
        else:  # its endpoint is not eligible: fail over
            if s.home is None:
                s.home = s.address          # fail over, remembering the original
            s.address, s.last_used = address, now
            if s.home == address:
                s.home = None
        return PickResult(r.candidate, p.done_callback(key, r.on_done), r.counted,
                          r.wants_metadata or p.reads_metadata)


class Sticky(Policy):
    config: Config

    def __init__(self, config: Config, ctx: PolicyContext) -> None:
        super().__init__(config, ctx)
        self.child = config.child.create(ctx)
        self.sessions: OrderedDict[str, _Session] = OrderedDict()
        self.returned_at: dict[str, float] = {}
        self._returns: collections.deque[tuple[float, str]] = collections.deque()
        self._present: frozenset[str] = frozenset()

    # ------------------------------------------------------------ policy hooks
    def endpoint_weight(self, candidate: Candidate) -> float:
        return self.child.endpoint_weight(candidate)

    def endpoints_changed(self, endpoints: Sequence[Endpoint]) -> None:
        self.child.endpoints_changed(endpoints)

    def build_picker(self, candidates: Sequence[Candidate]) -> StickyPicker:
        now = self.ctx.clock()
        present = frozenset(map(_ADDRESS, candidates))
        returned_at, returns = self.returned_at, self._returns
        for address in self._present - present:
            returned_at.pop(address, None)
        for address in present - self._present:
            returned_at[address] = now      # (re)joined: the return window starts
            returns.append((now, address))
        window = self.config.return_window
        while returns and now - returns[0][0] > window:   # oldest first: O(expired)
            since, address = returns.popleft()
            if returned_at.get(address) == since:
                del returned_at[address]
        self._present = present
        return StickyPicker(self, self.child.build_picker(candidates), candidates)

    def close(self) -> None:
        self.child.close()

    # ------------------------------------------------------------ session table
    def may_return(self, home: str, frac: float, now: float) -> bool:
        """Whether a failed-over session may go back to ``home`` at ``now``."""
        since = self.returned_at.get(home)
        window = self.config.return_window
        if since is None or window <= 0:
            return True
        return now - since >= frac * window

    def remember(self, key: str, session: _Session) -> None:
        self.sessions[key] = session
        for _ in range(len(self.sessions) - self.config.max_sessions):
            try:
                self.sessions.popitem(last=False)
            except KeyError:  # emptied by another thread meanwhile
                break

    def touch(self, key: str) -> None:
        try:
            self.sessions.move_to_end(key)
        except KeyError:  # evicted by another thread meanwhile
            pass

    def session_endpoint(self, key: str) -> str | None:
        """Where the session's calls go now (None: not remembered)."""
        s = self.sessions.get(key)
        return s.address if s is not None else None

    @property
    def reads_metadata(self) -> bool:
        """``endpointHeader`` is read from the responses."""
        return self.config.endpoint_header is not None

    def done_callback(self, key: str, inner: Callable[[CallOutcome], None] | None
                      ) -> Callable[[CallOutcome], None] | None:
        """``inner``, plus reading ``endpointHeader`` from the response when set."""
        header = self.config.endpoint_header
        if header is None:
            return inner

        def done(outcome: CallOutcome) -> None:
            if inner is not None:
                inner(outcome)
            named = _first(outcome.initial_metadata, header)
            if named is None:
                named = _first(outcome.trailing_metadata, header)
            if not named or named not in self._present:
                return
            s = self.sessions.get(key)
            if s is None:
                self.remember(key, _Session(named, self.ctx.clock(), xxhash64(key) / 2.0**64))
            elif s.address != named:
                s.address, s.home = named, None
        return done


SPEC = PolicySpec(NAME, parse_config, Sticky)
register_policy(SPEC)
