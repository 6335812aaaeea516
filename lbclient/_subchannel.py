"""One grpc.Channel per endpoint address, with its connectivity reported to the balancer.

Contract: ``create()`` never blocks; connectivity changes arrive on grpc's delivery
threads. Multicallables are cached per (kind, method, serializers), so the per-call cost
is one dict lookup. ``shutdown()`` is idempotent.
"""

from __future__ import annotations

import contextlib
import ipaddress
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

import grpc
from grpc import _common

from .connectivity import Connectivity
from .endpoint import Endpoint
from .resolver.address import split_host_port
from .resolver.base import Target

_STATES = {
    grpc.ChannelConnectivity.IDLE: Connectivity.IDLE,
    grpc.ChannelConnectivity.CONNECTING: Connectivity.CONNECTING,
    grpc.ChannelConnectivity.READY: Connectivity.READY,
    grpc.ChannelConnectivity.TRANSIENT_FAILURE: Connectivity.TRANSIENT_FAILURE,
    grpc.ChannelConnectivity.SHUTDOWN: Connectivity.SHUTDOWN,
}
TO_GRPC = {v: k for k, v in _STATES.items()}

ChannelOptions = Sequence[tuple[str, Any]]


def grpc_target(address: str) -> str:
    """An address as a single-endpoint grpc target (IP literals skip DNS)."""
    try:
        host, port = split_host_port(address, "endpoint")
        ip = ipaddress.ip_address(host)
    except ValueError:
        return address
    return f"ipv4:{host}:{port}" if ip.version == 4 else f"ipv6:[{host}]:{port}"


# The method of connection_error()'s local call (never served: it fails before sending).
_DIAGNOSE = "/lbclient.diagnostics.v1.Connection/LastError"

# Options naming the server a connection presents and verifies TLS against; if the user
# gives either, lbclient adds neither.
AUTHORITY_OPTIONS = frozenset({"grpc.default_authority", "grpc.ssl_target_name_override"})


def logical_authority(target: Target) -> str | None:
    """The authority every endpoint connection of ``target`` should use: the target's
    ``host[:port]`` for ``dns:`` targets and for ``static:`` targets naming one host
    (what a plain grpc channel to that target would send and verify TLS against), None
    for the others (``ipv4:``/``ipv6:``, ``file:``, ``etcd:``..., or a ``static:`` list
    of several hosts): endpoints are IP addresses, so without it TLS would check the
    certificate against each IP."""
    if target.scheme == "dns":
        return target.endpoint.strip() or None
    if target.scheme == "static":
        try:
            pairs = [split_host_port(p, "static") for p in target.endpoint.split(",")]
        except ValueError:
            return None
        if pairs and len({host for host, _ in pairs}) == 1:
            return target.endpoint.split(",")[0].strip()
    return None


def with_authority(options: ChannelOptions, target: Target | None) -> list[tuple[str, Any]]:
    """``options`` plus ``("grpc.default_authority", logical_authority(target))`` unless
    the user set the authority or ``grpc.ssl_target_name_override`` (grpc core checks
    the server certificate against the default authority)."""
    opts = list(options)
    if target is not None and not any(k in AUTHORITY_OPTIONS for k, _ in opts):
        authority = logical_authority(target)
        if authority:
            opts.append(("grpc.default_authority", authority))
    return opts


def _noop(_: grpc.ChannelConnectivity) -> None:
    pass


class ConnectivityMonitor:
    """Watches every endpoint connection of one channel by polling grpc core's
    ``check_connectivity_state(False)`` (about 0.5 us each) on the channel's scheduler.

    Why not ``grpc.Channel.subscribe``: grpcio runs one polling thread per subscribed
    channel, waking five times a second, so a 10,000-endpoint channel would hold 10,000
    threads, and each close waits for its poller. One sweep per ``interval`` (stretched to
    20x the sweep's own cost for very large sets, at most ``max_interval``) serves any
    number of endpoints; a call that fails with UNAVAILABLE also re-checks its endpoint at
    once (:meth:`Subchannel.poll`), so detection does not wait for the next sweep.
    """

    def __init__(self, scheduler: Any, interval: float = 0.05, max_interval: float = 1.0) -> None:
        self._scheduler = scheduler
        self._interval = interval
        self._max_interval = max_interval
        self._subs: dict[int, Subchannel] = {}
        self._lock = threading.Lock()
        self._timer: Any = None
        self._closed = False
        self.batch: Callable[[], Any] = contextlib.nullcontext

    def add(self, sub: Subchannel) -> None:
        with self._lock:
            if self._closed:
                return
            self._subs[id(sub)] = sub
            if self._timer is None:
                self._timer = self._scheduler.call_later(self._interval, self._sweep)
        self._scheduler.call_later(0.0, sub.poll)

    def remove(self, sub: Subchannel) -> None:
        with self._lock:
            self._subs.pop(id(sub), None)

    def _sweep(self) -> None:
        t0 = time.perf_counter()
        with self._lock:
            subs = list(self._subs.values())
        with self.batch():   # one picker rebuild per sweep, however many changed
            for sub in subs:
                sub.poll()
        cost = time.perf_counter() - t0
        with self._lock:
            if self._closed or not self._subs:
                self._timer = None
                return
            delay = min(max(self._interval, 20 * cost), self._max_interval)
            self._timer = self._scheduler.call_later(delay, self._sweep)

    def close(self) -> None:
        with self._lock:
            self._closed = True
            self._subs.clear()
            timer, self._timer = self._timer, None
        if timer is not None:
            timer.cancel()


class Subchannel:
    """One endpoint's grpc.Channel. Connectivity changes reach ``on_state`` in order
    (deliveries are serialised per endpoint), from the monitor's sweep or from a caller
    whose call just failed."""

    __slots__ = ("endpoint", "address", "channel", "_callables", "_on_state", "_closed",
                 "_lock", "_deliver_lock", "_check", "_last", "_monitor", "_factory",
                 "_error", "__weakref__")

    def __init__(self, endpoint: Endpoint, credentials: grpc.ChannelCredentials | None,
                 options: ChannelOptions, on_state: Callable[[Connectivity], None],
                 monitor: ConnectivityMonitor | None = None,
                 factory: SubchannelFactory | None = None) -> None:
        self.endpoint = endpoint
        self._factory = factory
        self.address = endpoint.address
        target = grpc_target(endpoint.address)
        if credentials is None:
            self.channel = grpc.insecure_channel(target, options=list(options))
        else:
            self.channel = grpc.secure_channel(target, credentials, options=list(options))
        self._callables: dict[tuple[Any, ...], Any] = {}
        self._on_state = on_state
        self._closed = False
        self._lock = threading.Lock()
        self._deliver_lock = threading.Lock()
        self._last: Connectivity | None = None
        self._error: str | None = None   # connection_error(), kept until the state changes
        self._monitor = monitor
        # grpc core's channel, reached through a private attribute; without it (a future
        # grpcio), fall back to the public subscribe() with its thread per channel.
        core = getattr(self.channel, "_channel", None)
        self._check: Callable[[bool], Any] | None = getattr(core, "check_connectivity_state",
                                                            None)
        if self._check is not None and monitor is not None:
            self._check(True)  # start connecting now; the first state arrives from the
            monitor.add(self)  # scheduler, never from inside create()
        else:
            self._check = None
            self.channel.subscribe(self._deliver, try_to_connect=True)

    def poll(self) -> None:
        """Read the connection's state now and deliver it if it changed."""
        check = self._check
        if self._closed or check is None:
            return
        with self._deliver_lock:
            try:
                raw = check(False)
            except ValueError:  # closed meanwhile
                return
            state = _STATES[_common.CYGRPC_CONNECTIVITY_STATE_TO_CHANNEL_CONNECTIVITY[raw]]
            if state is self._last or self._closed:
                return
            self._last, self._error = state, None
            self._on_state(state)

    def connection_error(self) -> str | None:
        """grpc's own account of why this endpoint's connection failed (refused, TLS
        handshake or certificate verification...), or None unless it is in
        TRANSIENT_FAILURE. grpc tells it only to a call: one made with
        ``wait_for_ready=False`` on a failed connection ends at once, locally, with it
        (if the connection recovered meanwhile, the server answers UNIMPLEMENTED, which
        is ignored). Kept until the state changes; blocks at most 0.5 s."""
        check = self._check
        if self._closed or check is None or self._last is not Connectivity.TRANSIENT_FAILURE:
            return None
        if self._error is None:
            try:
                self.channel.unary_unary(_DIAGNOSE)(b"", timeout=0.5, wait_for_ready=False)
            except grpc.RpcError as exc:
                if isinstance(exc, grpc.Call) and exc.code() is grpc.StatusCode.UNAVAILABLE:
                    self._error = exc.details() or None
            except ValueError:  # closed meanwhile
                return None
        return self._error

    def _deliver(self, state: grpc.ChannelConnectivity) -> None:
        if not self._closed:
            self._on_state(_STATES[state])

    def callable(self, kind: str, method: str, ser: Any, deser: Any, registered: bool) -> Any:
        key = (kind, method, ser, deser)
        mc = self._callables.get(key)
        if mc is None:
            factory = getattr(self.channel, kind)
            mc = factory(method, request_serializer=ser, response_deserializer=deser,
                         _registered_method=registered)
            self._callables[key] = mc
        return mc

    def request_connection(self) -> None:
        if self._closed:
            return
        if self._check is not None:
            try:
                self._check(True)
            except ValueError:  # closed meanwhile
                pass
            return
        # The public way: a subscription with try_to_connect=True makes grpc's poller
        # thread ask the core to connect on its next turn.
        self.channel.subscribe(_noop, try_to_connect=True)
        self.channel.unsubscribe(_noop)

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
        if self._monitor is not None:
            self._monitor.remove(self)
        if self._factory is not None:
            self._factory.close_later(self)
        else:
            self.close_now()

    def close_now(self) -> None:
        if self._check is None:
            self.channel.unsubscribe(self._deliver)
        self.channel.close()


class SubchannelFactory:
    """Creates :class:`Subchannel` objects with the channel's credentials and options,
    all watched by one :class:`ConnectivityMonitor` on ``scheduler`` (if given), and
    closes the connections of removed endpoints off grpc's threads."""

    def __init__(self, credentials: grpc.ChannelCredentials | None,
                 options: ChannelOptions, scheduler: Any = None, *,
                 target: Target | None = None) -> None:
        self.credentials = credentials
        self.options = with_authority(options, target)  # TLS names for IP endpoints
        self._scheduler = scheduler
        self.monitor = ConnectivityMonitor(scheduler) if scheduler is not None else None
        self._lock = threading.Lock()
        self._pending: dict[int, Subchannel] = {}
        self._closing = False

    def create(self, endpoint: Endpoint,
               on_state: Callable[[Connectivity], None]) -> Subchannel:
        return Subchannel(endpoint, self.credentials, self.options, on_state, self.monitor,
                          self)

    def set_batcher(self, batch: Callable[[], Any]) -> None:
        """The balancer's ``batch`` context manager, used around each sweep."""
        if self.monitor is not None:
            self.monitor.batch = batch

    def close_later(self, sub: Subchannel) -> None:
        """Close ``sub``'s connection on the scheduler thread (at once while closing)."""
        with self._lock:
            now = self._closing or self._scheduler is None
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
        with self._lock:
            self._closing = True
            pending = list(self._pending.values())
            self._pending.clear()
        for sub in pending:
            sub.close_now()
        if self.monitor is not None:
            self.monitor.close()
