"""The picker contract (no grpc, no I/O).

A :class:`Picker` is an immutable snapshot published by the balancer. ``pick()`` runs
concurrently on caller threads: it must not block, take long locks or do I/O. State that
outlives a picker (in-flight counts, latency EWMA, session tables) lives in
:class:`EndpointStats` or in the policy object, and each picker holds it by reference.
"""

from __future__ import annotations

import itertools
import math
import threading
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple, Protocol

from ..endpoint import Endpoint
from ..errors import LbclientError

Metadata = Sequence[tuple[str, str | bytes]]


class PickError(LbclientError):
    """No endpoint can take this call. The channel turns it into UNAVAILABLE with
    ``str(error)`` as the details (e.g. "no ready endpoints: 2 connecting, 1 failed").
    ``queue`` true means "not yet": the channel makes the call wait for the next picker
    (within its deadline) even without ``wait_for_ready``, as gRPC queues calls while
    connecting."""

    def __init__(self, message: str, queue: bool = False, fail_fast: bool = False) -> None:
        super().__init__(message)
        self.queue = queue
        self.fail_fast = fail_fast   # fail at once, even with wait_for_ready (breakers)


class PickInfo(NamedTuple):
    """What a picker may look at: the full method name, the call's metadata, and the
    addresses already tried by earlier attempts of the same call (to be avoided when
    another eligible endpoint exists). An immutable tuple (cheap to make per call)."""

    method: str
    metadata: Metadata = ()
    exclude: frozenset[str] = frozenset()

    def header(self, key: str) -> str | None:
        """The first value of a metadata key (case-insensitive), or None."""
        key = key.lower()
        for k, v in self.metadata:
            if k.lower() == key:
                return v.decode("utf-8", "replace") if isinstance(v, bytes) else v
        return None


class CallOutcome(NamedTuple):
    """How one RPC attempt ended. ``code`` is the gRPC status code name ("OK",
    "UNAVAILABLE", "CANCELLED", ...); ``latency`` is seconds from pick to end.

    Metadata is read (it costs a lock per call in grpc) only when the pick asked for it
    with :attr:`PickResult.wants_metadata`, and for failed attempts; otherwise both are
    empty. An immutable tuple (cheap to make once per call)."""

    code: str
    latency: float
    trailing_metadata: Metadata = ()
    initial_metadata: Metadata = ()
    # A failure the server did not choose: the connection failed or was reset, or the
    # call timed out (``lbclient.health.origin``).
    local_origin: bool = False

    @property
    def ok(self) -> bool:
        return self.code == "OK"


def _count_of(counter: itertools.count[int]) -> int:
    """The next value of an ``itertools.count`` without advancing it (visibility only)."""
    text = repr(counter)             # "count(42)"
    return int(text[6:-1])


class EndpointStats:
    """Per-endpoint counters shared by every picker and the channel.

    The channel calls :meth:`begin` when a call is placed on the endpoint and :meth:`end`
    exactly once when it finishes, so ``in_flight`` is exact and returns to 0.
    ``latency_ewma`` is an exponentially weighted mean of call latency in seconds
    (None until the first call); ``peak_ewma`` is the peak-sensitive variant (jumps up
    at once, decays over ``decay_time``) used by latency-aware policies. ``retiring``
    becomes True when :meth:`when_idle` is called, i.e. the endpoint was removed: a call
    that begins afterwards must not start on its closing connection.

    Threading: the per-call methods take no lock. In-flight calls are tokens in a list
    and counters are ``itertools.count`` objects, whose appends, pops and increments are
    atomic in CPython; the latency averages are plain stores, so two calls ending at the
    same instant may each count as the last sample (harmless for an average).
    :meth:`try_begin` and :meth:`when_idle` take a small lock.

    In-flight watchers (:meth:`watch_in_flight`): a policy that keeps its own index of
    in-flight counts (``least_connections``) is called after every change of
    ``in_flight``, on the thread that changed it, with no lock held. The counter changes
    first and the watcher is read after it, while :meth:`watch_in_flight` stores the
    watcher before the policy reads the count, so no change can be missed. Endpoints
    nobody watches pay one attribute check per begin and end.
    """

    __slots__ = ("_lock", "_active", "_picks", "_calls", "_failures", "latency_ewma",
                 "peak_ewma", "_peak_stamp", "decay_time", "clock", "_idle_callback",
                 "_on_end", "retiring", "window", "shared", "overflows", "_local_failures",
                 "_watcher", "_watchers", "__weakref__")

    def __init__(self, clock: Callable[[], float], decay_time: float = 10.0) -> None:
        self._lock = threading.Lock()
        self._active: list[None] = []
        self._picks = itertools.count()
        self._calls = itertools.count()
        self._failures = itertools.count()
        self.latency_ewma: float | None = None
        self.peak_ewma: float | None = None
        self._peak_stamp = 0.0
        self.decay_time = decay_time
        self.clock = clock
        self._idle_callback: Callable[[], None] | None = None
        self._on_end: tuple[Callable[[CallOutcome], None], ...] = ()
        self.retiring = False
        # Recent calls and failures (``RecentWindow``-like: ``add(failed, now)``), if any.
        self.window: Any = None
        # The channel's in-flight tokens (circuit breakers), when a limit is set.
        self.shared: list[None] | None = None
        self.overflows = itertools.count()   # picks that skipped it: it was full
        self._local_failures = itertools.count()   # failures of local origin
        # Called after every change of in_flight (see watch_in_flight); None: nobody.
        self._watcher: Callable[[], None] | None = None
        self._watchers: tuple[Callable[[], None], ...] = ()

    @property
    def in_flight(self) -> int:
        return len(self._active)

    @property
    def picks(self) -> int:
        return _count_of(self._picks)

    @property
    def calls(self) -> int:
        return _count_of(self._calls)

    @property
    def failures(self) -> int:
        return _count_of(self._failures)

    @property
    def local_failures(self) -> int:
        """Failed calls whose status the server did not choose (connection failures,
        resets, timeouts), whether or not they count as endpoint failures."""
        return _count_of(self._local_failures)

    def local_failure(self) -> None:
        next(self._local_failures)

    def begin(self) -> None:
        self._active.append(None)
        next(self._picks)
        shared = self.shared
        if shared is not None:
            shared.append(None)
        watcher = self._watcher
        if watcher is not None:
            watcher()

    def begin_unwatched(self) -> None:
        """:meth:`begin` without calling the in-flight watchers: for a watcher's owner,
        which counts the call in its own index under its own lock, then calls
        :meth:`notify_in_flight` (without that lock) for any other watcher."""
        self._active.append(None)
        next(self._picks)
        shared = self.shared
        if shared is not None:
            shared.append(None)

    def notify_in_flight(self, skip: Callable[[], None] | None = None) -> None:
        """Call every in-flight watcher but ``skip`` (after :meth:`begin_unwatched`)."""
        watcher = self._watcher
        if watcher is None or watcher is skip:
            return
        for fn in self._watchers:
            if fn is not skip:
                fn()

    def try_begin(self, expected_in_flight: int) -> bool:
        """:meth:`begin`, but only if ``in_flight`` still equals ``expected_in_flight``
        (an atomic compare-and-increment for pickers that count at pick time, so two
        concurrent picks cannot both take the endpoint they saw least loaded; every
        begin of such an endpoint goes through here)."""
        with self._lock:
            if len(self._active) != expected_in_flight:
                return False
            self._active.append(None)
        next(self._picks)
        shared = self.shared
        if shared is not None:
            shared.append(None)
        watcher = self._watcher
        if watcher is not None:
            watcher()
        return True

    def peak_ewma_at(self, now: float) -> float | None:
        """``peak_ewma`` decayed toward 0 over the time since its last sample (tower's
        read-time decay: an endpoint that got no call for a while is tried again); None
        before the first call."""
        peak, stamp = self.peak_ewma, self._peak_stamp
        if peak is None:
            return None
        return peak * math.exp(-max(now - stamp, 0.0) / self.decay_time)

    def end(self, outcome: CallOutcome, failure: bool) -> None:
        """Record a finished call. ``failure`` is the caller's classification."""
        self.record(outcome.latency, failure)
        for fn in self._on_end:
            fn(outcome)

    def record(self, latency: float, failure: bool) -> None:
        """:meth:`end` without an outcome for the end listeners (the channel's path when
        nobody listens)."""
        self._active.pop()
        watcher = self._watcher
        if watcher is not None:
            watcher()
        shared = self.shared
        if shared is not None:
            try:
                shared.pop()
            except IndexError:   # breakers were switched on while this call ran
                pass
        next(self._calls)
        if failure:
            next(self._failures)
        if latency < 0.0:
            latency = 0.0
        ewma = self.latency_ewma
        self.latency_ewma = latency if ewma is None else ewma + 0.2 * (latency - ewma)
        now = self.clock()
        peak = self.peak_ewma
        if peak is None or latency > peak:
            self.peak_ewma = latency
        else:
            elapsed = now - self._peak_stamp
            w = math.exp(-elapsed / self.decay_time) if elapsed > 0.0 else 1.0
            self.peak_ewma = latency + w * (peak - latency)
        self._peak_stamp = now
        window = self.window
        if window is not None:
            window.add(failure, now)
        if self._idle_callback is not None:
            self._run_idle()

    def discard(self) -> None:
        """Undo a :meth:`begin` whose call never started (a pick counted at pick time
        and then not used); the pick itself stays counted."""
        self._active.pop()
        watcher = self._watcher
        if watcher is not None:
            watcher()
        shared = self.shared
        if shared is not None:
            try:
                shared.pop()
            except IndexError:   # breakers were switched on while this call ran
                pass
        if self._idle_callback is not None:
            self._run_idle()

    def _run_idle(self) -> None:
        with self._lock:
            idle = self._idle_callback if not self._active else None
            if idle is not None:
                self._idle_callback = None
        if idle is not None:
            idle()

    @property
    def has_end_listeners(self) -> bool:
        return bool(self._on_end)

    def when_idle(self, callback: Callable[[], None]) -> None:
        """Run ``callback`` once no call is in flight (now, if none is)."""
        with self._lock:
            self.retiring = True
            if self._active:
                self._idle_callback = callback
                return
        callback()

    def add_end_listener(self, fn: Callable[[CallOutcome], None]) -> None:
        """``fn(outcome)`` after every call that ends on this endpoint (any thread)."""
        with self._lock:
            self._on_end = (*self._on_end, fn)

    def watch_in_flight(self, fn: Callable[[], None]) -> None:
        """Call ``fn()`` after every change of ``in_flight`` (a call begun, ended or
        discarded), on the thread that made it, with no lock held; ``fn`` must be quick
        and must not raise. Read ``in_flight`` after this returns: every change after
        that read is followed by a call of ``fn``. :meth:`unwatch_in_flight` takes the
        same object."""
        with self._lock:
            watchers = self._watchers = (*self._watchers, fn)
            self._watcher = fn if len(watchers) == 1 else _chain(watchers)

    def unwatch_in_flight(self, fn: Callable[[], None]) -> None:
        """Stop calling ``fn`` (no-op if it is not watching)."""
        with self._lock:
            self._watchers = tuple(w for w in self._watchers if w is not fn)
            self._watcher = _chain(self._watchers)


def _chain(fns: tuple[Callable[[], None], ...]) -> Callable[[], None] | None:
    """One callable for the watchers (None for none, the function itself for one)."""
    if not fns:
        return None
    if len(fns) == 1:
        return fns[0]

    def call_all() -> None:
        for fn in fns:
            fn()
    return call_all


class Candidate:
    """An endpoint a picker may choose, as of one picker snapshot.

    ``weight`` is the effective weight (discovery weight, policy overrides and slow start
    applied). ``handle`` is opaque to policies: the channel's connection for the endpoint.
    """

    __slots__ = ("endpoint", "address", "weight", "stats", "handle", "result")

    def __init__(self, endpoint: Endpoint, weight: float, stats: EndpointStats,
                 handle: Any) -> None:
        self.endpoint = endpoint
        self.address = endpoint.address
        self.weight = weight
        self.stats = stats
        self.handle = handle
        self.result = PickResult(self)   # the plain pick of this candidate, made once

    def with_weight(self, weight: float) -> Candidate:
        return Candidate(self.endpoint, weight, self.stats, self.handle)

    def __repr__(self) -> str:
        return f"Candidate({self.address!r}, weight={self.weight:g})"


class PickResult(NamedTuple):
    """The chosen endpoint, and an optional callback fired exactly once when the RPC
    ends (success, error, cancellation, deadline; streams included). An immutable tuple
    (cheap to make per pick; plain picks reuse ``Candidate.result``)."""

    candidate: Candidate
    on_done: Callable[[CallOutcome], None] | None = None
    # True when the picker already called ``candidate.stats.begin()`` itself (policies
    # that must count the call at pick time, e.g. least connections); the channel then
    # does not call it again. ``end()`` is always the channel's.
    counted: bool = False
    # True when ``on_done`` reads the outcome's metadata (load reports, affinity
    # headers): the channel then reads it for successful calls too, at some cost.
    wants_metadata: bool = False


class Picker(Protocol):
    def pick(self, info: PickInfo) -> PickResult: ...


class FailingPicker:
    """Raises :class:`PickError` with a fixed reason; published when nothing is eligible.
    ``queue`` is passed on to the error (see :class:`PickError`)."""

    __slots__ = ("reason", "queue")

    def __init__(self, reason: str, queue: bool = False) -> None:
        self.reason = reason
        self.queue = queue

    def pick(self, info: PickInfo) -> PickResult:
        raise PickError(self.reason, self.queue)


def prefer_untried(candidates: Sequence[Candidate], info: PickInfo) -> Sequence[Candidate]:
    """The candidates not in ``info.exclude``, or all of them if that would leave none."""
    if not info.exclude:
        return candidates
    rest = [c for c in candidates if c.address not in info.exclude]
    return rest or candidates
