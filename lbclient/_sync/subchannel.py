"""One grpc.Channel per endpoint address, with its connectivity reported to the balancer.

A :class:`Subchannel` is the balancer's ``Connection`` for one endpoint. It is made with
``grpc.insecure_channel``/``grpc.secure_channel``, so whatever wraps those (OpenTelemetry's
auto-instrumentation, say) wraps every attempt; health probes, connectivity checks and
the connection-error probe use grpc's own channel underneath (:func:`raw_channel`), so
they make no spans and never meet an interceptor.

Connectivity is polled, not subscribed to: grpcio's ``subscribe`` runs a thread per
channel. :class:`ConnectivityMonitor` reads grpc core's state (about a µs an endpoint)
on the channel's scheduler: endpoints that are still settling (idle or connecting) every
millisecond, backing off to the sweep interval, and the others a fixed number per sweep
(``budget`` every ``interval``, in turn), so the background cost does not grow with the
number of idle endpoints: with up to ``budget`` endpoints each is read every sweep, with
more a full turn takes ``n / budget`` sweeps. A call that fails UNAVAILABLE re-checks
its endpoint at once, so endpoints in use learn of a lost connection from their calls.
A fresh channel sees each endpoint become READY within a millisecond or so, as grpc's
own round_robin does.

The grpc channel itself is made soon after ``create()``, on the scheduler, by the
factory's :class:`~lbclient._sync.pacing.Opener` (a large update's connections are opened
a slice at a time, so they do not starve the calls in flight); until then the endpoint is
IDLE. Connection-error probes are bounded by a token bucket (8 a second).

Contract: ``create()`` never blocks; state changes reach ``on_state`` in order (one
delivery at a time per endpoint), from the scheduler or a caller's thread.
``shutdown()`` is idempotent; the close itself runs off grpc's threads.
"""

from __future__ import annotations

import contextlib
import itertools
import threading
from collections.abc import Callable, Sequence
from typing import Any

import grpc
from grpc import _common

from .._core.kinds import CallSite
from .._core.transport import TO_LBCLIENT, ChannelOptions, grpc_target
from ..connectivity import Connectivity
from ..endpoint import Endpoint
from .pacing import Opener, TokenBucket
from .scheduler import ThreadScheduler

# The method of the connection-error probe (never served: it fails before sending).
_DIAGNOSE = "/lbclient.diagnostics.v1.Connection/LastError"
# grpc core's connectivity numbers (what check_connectivity_state returns) -> ours.
_CORE_STATES = {raw: TO_LBCLIENT[state] for raw, state in
                _common.CYGRPC_CONNECTIVITY_STATE_TO_CHANNEL_CONNECTIVITY.items()}
_SETTLED = (Connectivity.READY, Connectivity.TRANSIENT_FAILURE, Connectivity.SHUTDOWN)


def _inner_wrapper(channel: Any, raw: Any) -> Any:
    """The wrapper whose ``_channel`` is ``raw`` (None if ``channel`` is ``raw``)."""
    outer = channel
    for _ in range(8):
        inner = getattr(outer, "_channel", None)
        if inner is raw:
            return outer
        if not isinstance(inner, grpc.Channel):
            return None
        outer = inner
    return None


def raw_channel(channel: Any) -> grpc.Channel:
    """grpc's own channel beneath interceptor wrappers (``grpc.intercept_channel`` and
    look-alikes keep the wrapped channel as ``_channel``), else ``channel`` itself."""
    raw = channel
    for _ in range(8):
        if type(raw).__module__ == "grpc._channel":
            return raw  # type: ignore[no-any-return]
        inner = getattr(raw, "_channel", None)
        if not isinstance(inner, grpc.Channel):
            break
        raw = inner
    return channel  # type: ignore[no-any-return]


class ConnectivityMonitor:
    """Polls the connectivity of a channel's endpoint connections (see the module doc)."""

    FAST_FIRST = 0.001
    FAST_BUDGET = 256         # settling endpoints read per fast sweep, in turn

    def __init__(self, scheduler: ThreadScheduler, interval: float = 0.05,
                 budget: int = 64) -> None:
        self._scheduler = scheduler
        self._interval = interval
        self._budget = budget
        self._subs: dict[int, Subchannel] = {}
        self._ring: list[Subchannel] = []     # the sweep's turn order (closed ones dropped)
        self._cursor = 0
        self._settling: dict[int, Subchannel] = {}
        self._lock = threading.Lock()
        self._sweep_timer: Any = None
        self._fast_timer: Any = None
        self._fast_delay = self.FAST_FIRST
        self._closed = False
        self.batch: Callable[[], Any] = contextlib.nullcontext

    def add(self, sub: Subchannel) -> None:
        with self._lock:
            if self._closed:
                return
            self._subs[id(sub)] = sub
            self._ring.append(sub)
            self._settling[id(sub)] = sub
            if self._sweep_timer is None:
                self._sweep_timer = self._scheduler.call_later(self._interval, self._sweep)
        self.kick()

    def remove(self, sub: Subchannel) -> None:
        with self._lock:      # (its ring entry goes at the next compaction; closed subs
            self._subs.pop(id(sub), None)        # read nothing meanwhile)
            self._settling.pop(id(sub), None)

    def settling(self, sub: Subchannel, state: Connectivity) -> None:
        """``sub`` is now in ``state`` (called by its poll, under its delivery lock)."""
        key = id(sub)
        with self._lock:
            if state in _SETTLED:
                self._settling.pop(key, None)
            elif key in self._subs:
                self._settling[key] = sub

    def kick(self) -> None:
        """Something may change soon (a new endpoint, a connection requested, a state
        change): poll the settling endpoints at once and then more and more slowly."""
        with self._lock:
            if self._closed:
                return
            self._fast_delay = self.FAST_FIRST
            if self._fast_timer is None:
                self._fast_timer = self._scheduler.call_later(0.0, self._fast_sweep)

    def _fast_sweep(self) -> None:
        with self._lock:
            if len(self._settling) <= self.FAST_BUDGET:
                subs = list(self._settling.values())
            else:          # many connecting at once: a share per run, oldest first
                subs = list(itertools.islice(self._settling.values(), self.FAST_BUDGET))
                for sub in subs:       # to the back of the line
                    del self._settling[id(sub)]
                    self._settling[id(sub)] = sub
        changed = False
        with self.batch():
            for sub in subs:
                changed = sub.poll() or changed
        with self._lock:
            if self._closed or not self._settling:
                self._fast_timer = None
                return
            self._fast_delay = self.FAST_FIRST if changed else self._fast_delay * 2
            if self._fast_delay > self._interval / 2:
                self._fast_timer = None        # the sweep watches it from now on
                return
            self._fast_timer = self._scheduler.call_later(self._fast_delay, self._fast_sweep)

    def _sweep(self) -> None:
        with self._lock:
            subs = self._next_turn()
        changed = [sub for sub in subs if sub.changed()]
        if changed:
            with self.batch():   # one picker rebuild per sweep, however many changed
                for sub in changed:
                    sub.poll()
        with self._lock:
            if self._closed or not self._subs:
                self._sweep_timer = None
                return
            self._sweep_timer = self._scheduler.call_later(self._interval, self._sweep)

    def _next_turn(self) -> list[Subchannel]:
        """The next ``budget`` endpoints of the ring, in turn (under the lock)."""
        ring = self._ring
        if len(ring) > 2 * len(self._subs) + 16:       # drop the removed ones now and then
            ring[:] = [sub for sub in ring if id(sub) in self._subs]
            self._cursor = 0
        n = len(ring)
        if n <= self._budget:
            return list(ring)
        start = self._cursor % n
        end = start + self._budget
        self._cursor = end % n
        return ring[start:end] if end <= n else ring[start:] + ring[:end - n]

    def close(self) -> None:
        with self._lock:
            self._closed = True
            self._subs.clear()
            self._settling.clear()
            timers = (self._sweep_timer, self._fast_timer)
            self._sweep_timer = self._fast_timer = None
        for timer in timers:
            if timer is not None:
                timer.cancel()


class Subchannel:
    """One endpoint's grpc channel (the balancer's ``Connection``)."""

    __slots__ = ("endpoint", "address", "channel", "raw", "calls", "_on_state", "_closed",
                 "_lock", "_deliver_lock", "_check", "_last", "_last_core", "_monitor",
                 "_factory", "_error", "_diagnosing", "__weakref__")

    def __init__(self, endpoint: Endpoint, factory: SubchannelFactory,
                 on_state: Callable[[Connectivity], None]) -> None:
        self.endpoint = endpoint
        self.address = endpoint.address
        self._factory = factory
        # grpc's channel, made by open() (soon after, on the scheduler: see Opener);
        # the balancer uses them only once the endpoint is READY, so after open().
        self.channel: Any = None
        self.raw: Any = None
        # grpc multicallables of this connection, one per call site (see CallSite).
        self.calls: dict[CallSite, Any] = {}
        self._on_state = on_state
        self._closed = False
        self._lock = threading.Lock()
        self._deliver_lock = threading.Lock()
        self._last: Connectivity | None = None
        self._last_core: Any = None        # grpc core's number for _last
        self._error: str | None = None     # connection_error(), until the state changes
        self._diagnosing = False
        self._monitor = factory.monitor
        self._check: Callable[[bool], Any] | None = None
        factory.opener.add(self)

    def open(self) -> None:
        """Make the grpc channel and start connecting (once; not after shutdown)."""
        factory = self._factory
        with self._lock:
            if self._closed or self.channel is not None:
                return
            target = grpc_target(self.address)
            options = list(factory.options)
            if factory.credentials is None:
                channel = grpc.insecure_channel(target, options, factory.compression)
            else:
                channel = grpc.secure_channel(target, factory.credentials, options,
                                              factory.compression)
            raw = raw_channel(channel)
            if raw is not channel:
                tag_spans(channel, raw, self.address)
            self.raw, self.channel = raw, channel
            # grpc core's channel, reached through a private attribute; without it (a
            # future grpcio), fall back to the public subscribe() with its thread per
            # channel.
            core = getattr(raw, "_channel", None)
            check: Callable[[bool], Any] | None = getattr(core, "check_connectivity_state",
                                                          None)
            self._check = check
            if check is not None:
                check(True)                 # start connecting now; the first state arrives
                self._monitor.add(self)     # from the scheduler (never inside create())
            else:
                raw.subscribe(self._deliver, try_to_connect=True)

    # ------------------------------------------------------------ connectivity
    def poll(self) -> bool:
        """Read the connection's state now and deliver it if it changed (True then).
        Unchanged (the common case) costs one read of grpc core's state, no lock."""
        check = self._check
        if self._closed or check is None:
            return False
        try:
            if check(False) == self._last_core:
                return False
        except ValueError:  # closed meanwhile
            return False
        with self._deliver_lock:
            try:
                raw = check(False)
            except ValueError:
                return False
            state = _CORE_STATES[raw]
            if state is self._last or self._closed:
                return False
            self._last, self._last_core, self._error = state, raw, None
            self._monitor.settling(self, state)
            self._on_state(state)
        if state is Connectivity.TRANSIENT_FAILURE:
            self._diagnose()
        return True

    def changed(self) -> bool:
        """Whether grpc core's state differs from the last one delivered (no lock)."""
        check = self._check
        if self._closed or check is None:
            return False
        try:
            return bool(check(False) != self._last_core)
        except ValueError:
            return False

    def _deliver(self, state: grpc.ChannelConnectivity) -> None:
        if not self._closed:
            self._on_state(TO_LBCLIENT[state])

    def request_connection(self) -> None:
        if self._closed or self.channel is None:   # not open yet: it connects when it is
            return
        if self._check is not None:
            try:
                self._check(True)
            except ValueError:  # closed meanwhile
                return
            self._monitor.kick()
            return
        # The public way: a subscription with try_to_connect=True makes grpc's poller
        # thread ask the core to connect on its next turn.
        self.raw.subscribe(_noop, try_to_connect=True)
        self.raw.unsubscribe(_noop)

    # ------------------------------------------------------------ connection errors
    def connection_error(self) -> str | None:
        """grpc's own account of why this endpoint's connection failed (refused, TLS
        handshake or certificate verification...), or None. Never blocks: it is fetched
        in the background each time the connection enters TRANSIENT_FAILURE (grpc tells
        it only to a call: one made with ``wait_for_ready=False`` on a failed
        connection ends at once, locally, with it) and kept until the state changes."""
        if self._last is not Connectivity.TRANSIENT_FAILURE:
            return None
        if self._error is None:
            self._diagnose()     # skipped when it failed (the budget): try again now
        return self._error

    def _diagnose(self) -> None:
        """Fetch grpc's account of the failure, within the factory's budget: a probe
        costs a call and a grpc thread (~0.5 ms of CPU), and only one failed endpoint's
        account is ever shown (:func:`lbclient._core.picking.explain`), so a grow to
        10,000 refusing endpoints must not probe each of them."""
        if self._diagnosing or self._closed or self.raw is None:
            return
        if not self._factory.diagnoses.take():
            return
        self._diagnosing = True
        probe: Any = self.raw.unary_unary(_DIAGNOSE)        # bytes in, bytes out
        try:
            future = probe.future(b"", timeout=0.5, wait_for_ready=False)
        except ValueError:    # closed meanwhile
            self._diagnosing = False
            return
        future.add_done_callback(self._diagnosed)

    def _diagnosed(self, future: Any) -> None:
        self._diagnosing = False
        try:
            code, details = future.code(), future.details()
        except Exception:
            return
        if code is grpc.StatusCode.UNAVAILABLE and details and \
                self._last is Connectivity.TRANSIENT_FAILURE:
            self._error = details

    # ------------------------------------------------------------ calls
    def callable(self, site: CallSite) -> Any:
        """This connection's grpc multicallable for ``site`` (made once, then cached)."""
        mc = self.calls.get(site)
        if mc is None:
            factory = getattr(self.channel, site.kind.value)
            mc = self.calls[site] = factory(site.method, request_serializer=site.ser,
                                            response_deserializer=site.deser,
                                            _registered_method=site.registered)
        return mc

    # ------------------------------------------------------------ closing
    @property
    def closed(self) -> bool:
        return self._closed

    def shutdown(self) -> None:
        """Stop using the connection and close it. Called by the balancer once the
        endpoint's in-flight calls have ended, which can be on grpc's own completion
        thread: closing a grpc channel there would wait for that very thread, so the
        close itself is handed to the factory (done on the scheduler, or at once while
        the whole channel is closing)."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            opened = self.channel is not None
        if opened:        # (one never opened is dropped by the opener)
            self._monitor.remove(self)
            self._factory.close_later(self)

    def close_now(self) -> None:
        if self._check is None:
            self.raw.unsubscribe(self._deliver)
        self.channel.close()


def _noop(_: grpc.ChannelConnectivity) -> None:
    pass


class SubchannelFactory:
    """Creates :class:`Subchannel` objects with the channel's credentials, options and
    compression, all watched by one :class:`ConnectivityMonitor` on ``scheduler``, and
    closes the connections of removed endpoints off grpc's threads. Their grpc channels
    are made a slice at a time on the scheduler (:class:`~lbclient._sync.pacing.Opener`),
    and connection-error probes are bounded (``diagnoses``: 8 a second)."""

    def __init__(self, credentials: grpc.ChannelCredentials | None, options: ChannelOptions,
                 scheduler: ThreadScheduler, compression: grpc.Compression | None = None,
                 ) -> None:
        self.credentials = credentials
        self.options: Sequence[tuple[str, Any]] = list(options)
        self.compression = compression
        self._scheduler = scheduler
        self.monitor = ConnectivityMonitor(scheduler)
        self.opener = Opener(scheduler)
        self.diagnoses = TokenBucket(8.0, 8)
        self._lock = threading.Lock()
        self._pending: dict[int, Subchannel] = {}
        self._closing = False

    def create(self, endpoint: Endpoint,
               on_state: Callable[[Connectivity], None]) -> Subchannel:
        return Subchannel(endpoint, self, on_state)

    def set_batcher(self, batch: Callable[[], Any]) -> None:
        """The balancer's ``batch`` context manager, used around each sweep."""
        self.monitor.batch = batch

    def kick(self) -> None:
        """Poll the settling endpoints now (a call is waiting for one)."""
        self.monitor.kick()

    def close_later(self, sub: Subchannel) -> None:
        """Close ``sub``'s connection on the scheduler thread (at once while closing)."""
        with self._lock:
            now = self._closing
            if not now:
                self._pending[id(sub)] = sub
        if now:
            sub.close_now()
            return

        def run() -> None:
            with self._lock:
                mine = self._pending.pop(id(sub), None) is not None
            if mine:
                sub.close_now()

        self._scheduler.call_later(0.0, run)

    def close(self) -> None:
        """The channel is closing: from now on connections close at once, and those
        waiting for the scheduler are closed here."""
        self.opener.close()
        with self._lock:
            self._closing = True
            pending = list(self._pending.values())
            self._pending.clear()
        for sub in pending:
            sub.close_now()
        self.monitor.close()


def tag_spans(channel: Any, raw: Any, address: str) -> None:
    """``channel`` wraps grpc's own channel ``raw`` (e.g. OpenTelemetry's instrumentation
    wrapped ``grpc.insecure_channel``): put an interceptor right above ``raw`` - inside the
    wrapper's client span - that names the endpoint on that span (``server.address``,
    ``server.port``, ``network.peer.address``, ``network.peer.port``). Nothing happens
    without OpenTelemetry, or when the wrapper keeps its channel otherwise."""
    try:
        from opentelemetry import trace
    except ImportError:
        return
    parent = _inner_wrapper(channel, raw)
    if parent is None:
        return
    host, _, port = address.rpartition(":")
    host = host.strip("[]")
    attributes = {"server.address": host, "network.peer.address": host}
    if port.isdigit():
        attributes["server.port"] = attributes["network.peer.port"] = int(port)  # type: ignore[assignment]
    tagger = _EndpointSpans(trace.get_current_span, attributes)
    try:
        parent._channel = grpc.intercept_channel(raw, tagger)
    except AttributeError:     # a wrapper that does not let its channel be replaced
        return


class _EndpointSpans(grpc.UnaryUnaryClientInterceptor, grpc.UnaryStreamClientInterceptor,
                     grpc.StreamUnaryClientInterceptor, grpc.StreamStreamClientInterceptor):
    """Sets the endpoint's attributes on the current span (the attempt's client span)."""

    def __init__(self, current_span: Callable[[], Any], attributes: dict[str, Any]) -> None:
        self._current_span = current_span
        self._attributes = attributes

    def _tag(self) -> None:
        span = self._current_span()
        if span.is_recording():
            span.set_attributes(self._attributes)

    def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        self._tag()
        return continuation(details, request)

    def intercept_unary_stream(self, continuation: Any, details: Any, request: Any) -> Any:
        self._tag()
        return continuation(details, request)

    def intercept_stream_unary(self, continuation: Any, details: Any, requests: Any) -> Any:
        self._tag()
        return continuation(details, requests)

    def intercept_stream_stream(self, continuation: Any, details: Any, requests: Any) -> Any:
        self._tag()
        return continuation(details, requests)
