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
    (or :meth:`record`) exactly once when it finishes, so ``in_flight`` is exact and
    returns to 0. ``latency_ewma`` is an exponentially weighted mean of call latency in
    seconds (None until the first call). ``peak_ewma`` is the peak-sensitive variant
    (jumps up at once, decays over ``decay_time``) used by latency-aware policies: it is
    kept only once a policy asks for it (:meth:`track_peak`), so other channels don't pay
    for it. ``retiring`` becomes True when :meth:`when_idle` is called, i.e. the endpoint
    was removed: a call that begins afterwards must not start on its closing connection.

    Threading: the per-call methods take no lock. In-flight calls are tokens in a list
    and counters are ``itertools.count`` objects, whose appends, pops and increments are
    atomic in CPython; the latency averages are plain stores, so two calls ending at the
    same instant may each count as the last sample (harmless for an average).
    :meth:`try_begin` and :meth:`when_idle` take a small lock.

    Cost: :meth:`begin` and :meth:`record` do the counting every endpoint needs, and check
    one flag (``_extra``) for the rest: in-flight watchers, the channel's circuit-breaker
    tokens, peak EWMA tracking, a pending idle callback. The flag is set before (and
    cleared only after) what it guards, so a call never skips work it owes.

    In-flight watchers (:meth:`watch_in_flight`): a policy that keeps its own index of
    in-flight counts (``least_connections``) is called after every change of
    ``in_flight``, on the thread that changed it, with no lock held. The counter changes
    first and the watcher is read after it, while :meth:`watch_in_flight` stores the
    watcher before the policy reads the count, so no change can be missed. Endpoints
    nobody watches pay nothing for it.
    """

    __slots__ = ("_lock", "_active", "_picks", "_calls", "_failures", "latency_ewma",
                 "peak_ewma", "_peak_stamp", "decay_time", "clock", "_idle_callback",
                 "_on_end", "has_end_listeners", "retiring", "window", "_shared",
                 "overflows", "_local_failures", "_watcher", "_watchers", "_track_peak",
                 "_extra", "__weakref__")

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
        self._track_peak = False
        self.clock = clock
        self._idle_callback: Callable[[], None] | None = None
        self._on_end: tuple[Callable[[CallOutcome], None], ...] = ()
        self.has_end_listeners = False        # True once an end listener was added
        self.retiring = False
        # Recent calls and failures (``RecentWindow``-like: ``add(failed)``), if any.
        self.window: Any = None
        # The channel's in-flight tokens (circuit breakers), when a limit is set.
        self._shared: list[None] | None = None
        self.overflows = itertools.count()   # picks that skipped it: it was full
        self._local_failures = itertools.count()   # failures of local origin
        self._watcher: Callable[[], None] | None = None
        self._watchers: tuple[Callable[[], None], ...] = ()
        self._extra = False                   # any of: watcher, shared, peak, idle callback

    def _refresh(self) -> None:
        """Recompute ``_extra`` (under ``_lock``); setters set it True first themselves."""
        self._extra = (self._watcher is not None or self._shared is not None
                       or self._track_peak or self._idle_callback is not None)

    @property
    def shared(self) -> list[None] | None:
        return self._shared

    @shared.setter
    def shared(self, tokens: list[None] | None) -> None:
        """Count this endpoint's calls in the channel's in-flight tokens too (None: no
        circuit breaker)."""
        with self._lock:
            self._extra = True
            self._shared = tokens
            self._refresh()

    def track_peak(self, decay_time: float) -> None:
        """Keep ``peak_ewma`` from now on, decaying over ``decay_time`` seconds (a
        latency-aware policy asks; idempotent). It starts from ``latency_ewma``, the best
        estimate of the calls before."""
        with self._lock:
            self.decay_time = decay_time
            self._extra = True
            if not self._track_peak:
                self._track_peak = True
                if self.peak_ewma is None and self.latency_ewma is not None:
                    self.peak_ewma = self.latency_ewma
                    self._peak_stamp = self.clock()

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
        if self._extra:
            shared = self._shared
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
        shared = self._shared
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
        shared = self._shared
        if shared is not None:
            shared.append(None)
        watcher = self._watcher
        if watcher is not None:
            watcher()
        return True

    def peak_ewma_at(self, now: float) -> float | None:
        """``peak_ewma`` decayed toward 0 over the time since its last sample (tower's
        read-time decay: an endpoint that got no call for a while is tried again); None
        before the first call (or before :meth:`track_peak`)."""
        peak, stamp = self.peak_ewma, self._peak_stamp
        if peak is None:
            return None
        return peak * math.exp(-max(now - stamp, 0.0) / self.decay_time)

    def end(self, outcome: CallOutcome, failure: bool) -> None:
        """Record a finished call. ``failure`` is the caller's classification. A
        CANCELLED call (the caller's choice, mostly) is no latency sample."""
        self.record(outcome.latency if outcome.code != "CANCELLED" else None, failure)
        for fn in self._on_end:
            fn(outcome)

    def record(self, latency: float | None, failure: bool) -> None:
        """:meth:`end` without an outcome for the end listeners (the channel's path when
        nobody listens). ``latency`` None: count the call but take no latency sample."""
        self._active.pop()
        next(self._calls)
        if failure:
            next(self._failures)
        if latency is not None:
            ewma = self.latency_ewma
            self.latency_ewma = latency if ewma is None else ewma + 0.2 * (latency - ewma)
        window = self.window
        if window is not None:
            window.add(failure)
        if self._extra:
            self._record_extra(latency)

    def _record_extra(self, latency: float | None) -> None:
        self._ended_extra()
        if self._track_peak and latency is not None:
            if latency < 0.0:
                latency = 0.0
            now = self.clock()
            peak = self.peak_ewma
            if peak is None or latency > peak:
                self.peak_ewma = latency
            else:
                elapsed = now - self._peak_stamp
                w = math.exp(-elapsed / self.decay_time) if elapsed > 0.0 else 1.0
                self.peak_ewma = latency + w * (peak - latency)
            self._peak_stamp = now
        if self._idle_callback is not None:
            self._run_idle()

    def _ended_extra(self) -> None:
        """After a call left ``_active``: the watchers and the breaker token."""
        watcher = self._watcher
        if watcher is not None:
            watcher()
        shared = self._shared
        if shared is not None:
            try:
                shared.pop()
            except IndexError:   # breakers were switched on while this call ran
                pass

    def discard(self) -> None:
        """Undo a :meth:`begin` whose call never started (a pick counted at pick time
        and then not used); the pick itself stays counted."""
        self._active.pop()
        if self._extra:
            self._ended_extra()
            if self._idle_callback is not None:
                self._run_idle()

    def _run_idle(self) -> None:
        with self._lock:
            idle = self._idle_callback if not self._active else None
            if idle is not None:
                self._idle_callback = None
                self._refresh()
        if idle is not None:
            idle()

    def when_idle(self, callback: Callable[[], None]) -> None:
        """Run ``callback`` once no call is in flight (now, if none is)."""
        with self._lock:
            self.retiring = True
            busy = bool(self._active)
            if busy:
                self._extra = True
                self._idle_callback = callback
        if not busy:
            callback()
        elif not self._active:
            # A call that ended between the check above and the store may have missed
            # the callback: look again (``_run_idle`` runs it at most once).
            self._run_idle()

    def add_end_listener(self, fn: Callable[[CallOutcome], None]) -> None:
        """``fn(outcome)`` after every call that ends on this endpoint (any thread)."""
        with self._lock:
            self._on_end = (*self._on_end, fn)
            self.has_end_listeners = True

    def watch_in_flight(self, fn: Callable[[], None]) -> None:
        """Call ``fn()`` after every change of ``in_flight`` (a call begun, ended or
        discarded), on the thread that made it, with no lock held; ``fn`` must be quick
        and must not raise. Read ``in_flight`` after this returns: every change after
        that read is followed by a call of ``fn``. :meth:`unwatch_in_flight` takes the
        same object."""
        with self._lock:
            self._extra = True
            watchers = self._watchers = (*self._watchers, fn)
            self._watcher = fn if len(watchers) == 1 else _chain(watchers)

    def unwatch_in_flight(self, fn: Callable[[], None]) -> None:
        """Stop calling ``fn`` (no-op if it is not watching)."""
        with self._lock:
            self._watchers = tuple(w for w in self._watchers if w is not fn)
            self._watcher = _chain(self._watchers)
            self._refresh()


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
