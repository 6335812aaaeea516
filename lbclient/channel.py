"""``LoadBalancedChannel``: a ``grpc.Channel`` that balances every call over endpoints.

Flow: target -> resolver -> ``ResolverState`` -> balancer (one grpc channel per endpoint,
connectivity, health, ejection) -> immutable picker -> the multicallables in ``_calls``.
Threading: resolver, connectivity and timer events arrive on their own threads and are
applied by the balancer one at a time; calls only read the published picker.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import grpc

from ._calls import StreamStream, StreamUnary, UnaryStream, UnaryUnary
from ._invoke import Invoker
from ._retry import configure_retrier
from ._scheduler import ThreadScheduler
from ._subchannel import TO_GRPC, SubchannelFactory
from .balancer.balancer import Balancer, EndpointInfo
from .balancer.picker import CallOutcome
from .config import ServiceConfig, parse_service_config
from .errors import ServiceConfigError
from .health.events import EndpointEvent
from .health.options import FIELD as LBCLIENT_FIELD
from .health.options import parse_balancing_options
from .health.prober import GrpcHealthCheckerFactory
from .method_config import MethodConfig, MethodConfigTable
from .metrics._auto import channel_created as metrics_channel_created
from .resolver.base import ResolverState, create_resolver, parse_target, validate_target

log = logging.getLogger("lbclient.channel")

ServiceConfigInput = str | bytes | Mapping[str, Any] | None


class LoadBalancedChannel(grpc.Channel):
    """A client-side load-balanced channel. Use :func:`lbclient.insecure_channel` or
    :func:`lbclient.secure_channel` to make one.

    ``service_config`` given here wins over one delivered by the resolver; without
    either, the policy is ``round_robin`` (grpcio defaults to ``pick_first``).
    """

    def __init__(self, target: str, credentials: grpc.ChannelCredentials | None = None,
                 service_config: ServiceConfigInput = None,
                 options: Sequence[tuple[str, Any]] | None = None, *,
                 resolver_options: Mapping[str, Any] | None = None,
                 rng: random.Random | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._target = parse_target(target)
        validate_target(self._target)
        self._user_config = (parse_service_config(service_config)
                             if service_config is not None else None)
        self._closed = False
        self._close_lock = threading.Lock()
        self._scheduler = ThreadScheduler(clock=clock)
        self._factory = SubchannelFactory(credentials, _subchannel_options(options),
                                          self._scheduler)
        self._clock = clock
        self._balancer = Balancer(
            self._factory, clock=clock,
            rng=rng or random.Random(), scheduler=self._scheduler,
            on_endpoint_failure=self._on_endpoint_failure,
            health_factory=GrpcHealthCheckerFactory(self._scheduler))
        self._invoker = Invoker(self._balancer)
        self._retrier: Any = None
        self._methods = MethodConfigTable(())
        self._config: ServiceConfig | None = None
        self._subscribers: list[list[Any]] = []      # [callback, last delivered state]
        self._subscribers_lock = threading.Lock()
        self._balancer.add_listener(self._on_balancer_change)
        self._apply_config(self._user_config or parse_service_config(None))
        metrics_channel_created(self)   # LBCLIENT_METRICS auto-instrumentation (no-op unset)
        self._resolver = create_resolver(self._target, self, resolver_options)
        self._resolver.start()

    # ------------------------------------------------------------ configuration
    def _apply_config(self, config: ServiceConfig) -> None:
        if self._config is not None and config.raw == self._config.raw:
            return
        options = parse_balancing_options(config.raw.get(LBCLIENT_FIELD))  # may raise
        self._config = config
        self._methods = MethodConfigTable(config.method_configs)
        self._retrier = configure_retrier(self._retrier, config, self._invoker,
                                          self._balancer, self._scheduler)
        self._balancer.set_options(options)
        self._balancer.set_health_check(config.health_check)
        self._balancer.set_policy(config.lb.spec, config.lb.config)
        self._invoker.failure_codes = self._balancer.failure_codes
        log.info("service config applied: policy %s", config.lb.name)

    def _method_config(self, method: str) -> MethodConfig | None:
        return self._methods.lookup(method) if self._methods else None

    @property
    def service_config(self) -> ServiceConfig | None:
        return self._config

    # ------------------------------------------------------------ resolver listener
    def on_resolved(self, state: ResolverState) -> None:
        if self._closed:
            return
        if self._user_config is None and state.service_config is not None:
            try:
                self._apply_config(parse_service_config(state.service_config))
            except ServiceConfigError as exc:
                # gRPC keeps the previous config when the resolver sends a bad one.
                log.warning("ignoring the resolver's service config: %s", exc)
        if not state.endpoints and not state.authoritative:
            self.on_resolver_error(ValueError("resolver returned no endpoints"))
            return
        self._balancer.update_endpoints(state.endpoints)
        self._deliver_resolver(state, None)

    def on_resolver_error(self, error: Exception) -> None:
        if self._closed:
            return
        log.warning("resolver error for %s: %s (keeping %d endpoints)", self._target.raw,
                    error, len(self._balancer.records()))
        self._balancer.resolver_error(str(error))
        self._deliver_resolver(None, error)

    def _on_endpoint_failure(self, address: str) -> None:
        resolver = getattr(self, "_resolver", None)
        if resolver is not None and not self._closed:
            resolver.resolve_now()

    # ------------------------------------------------------------ grpc.Channel
    def unary_unary(self, method: str, request_serializer: Any = None,
                    response_deserializer: Any = None,
                    _registered_method: bool | None = False) -> UnaryUnary:
        return UnaryUnary(self, "unary_unary", method, request_serializer,
                          response_deserializer, bool(_registered_method))

    def unary_stream(self, method: str, request_serializer: Any = None,
                     response_deserializer: Any = None,
                     _registered_method: bool | None = False) -> UnaryStream:
        return UnaryStream(self, "unary_stream", method, request_serializer,
                           response_deserializer, bool(_registered_method))

    def stream_unary(self, method: str, request_serializer: Any = None,
                     response_deserializer: Any = None,
                     _registered_method: bool | None = False) -> StreamUnary:
        return StreamUnary(self, "stream_unary", method, request_serializer,
                           response_deserializer, bool(_registered_method))

    def stream_stream(self, method: str, request_serializer: Any = None,
                      response_deserializer: Any = None,
                      _registered_method: bool | None = False) -> StreamStream:
        return StreamStream(self, "stream_stream", method, request_serializer,
                            response_deserializer, bool(_registered_method))

    def subscribe(self, callback: Callable[[grpc.ChannelConnectivity], None],
                  try_to_connect: bool = False) -> None:
        """``callback`` gets the aggregate connectivity now and on every change: READY
        if any endpoint is READY, else CONNECTING, IDLE or TRANSIENT_FAILURE."""
        entry = [callback, None]
        with self._subscribers_lock:
            self._subscribers.append(entry)
        if try_to_connect:
            self._balancer.request_connections()
        self._deliver_state()

    def unsubscribe(self, callback: Callable[[grpc.ChannelConnectivity], None]) -> None:
        with self._subscribers_lock:
            for entry in self._subscribers:
                if entry[0] == callback:
                    self._subscribers.remove(entry)
                    break

    def _on_balancer_change(self) -> None:
        if self._subscribers:
            self._deliver_state()

    def _deliver_state(self) -> None:
        state = TO_GRPC[self._balancer.state]
        with self._subscribers_lock:
            due = [e for e in self._subscribers if e[1] is not state]
            for e in due:
                e[1] = state
        for entry in due:
            try:
                entry[0](state)
            except Exception:
                log.exception("connectivity callback failed")

    def get_state(self) -> grpc.ChannelConnectivity:
        return TO_GRPC[self._balancer.state]

    def close(self) -> None:
        """Close every endpoint connection, the resolver and the timers. Idempotent.
        In-flight calls end with CANCELLED; later calls fail with CANCELLED
        "lbclient channel is closed"."""
        with self._close_lock:
            if self._closed:
                return
            self._closed = True
        self._invoker.closed = True
        self._resolver.close()
        self._factory.close()
        self._balancer.close()
        self._scheduler.close()

    def __enter__(self) -> LoadBalancedChannel:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            if not self._closed:
                self.close()
        except Exception:
            pass

    # ------------------------------------------------------------ visibility
    def endpoints(self) -> list[EndpointInfo]:
        """An immutable snapshot of every endpoint (address, weight, connectivity,
        health, ejection, in-flight, calls, failures, recent window, latency EWMA,
        slow start); see :class:`lbclient.EndpointInfo`."""
        return self._balancer.snapshot()

    def add_event_listener(self, fn: Callable[[EndpointEvent], None]) -> None:
        """``fn(event)`` for every :class:`lbclient.EndpointEvent` (added, removed,
        health_changed, ejected, readmitted), in order and one at a time, on the thread
        that caused it, never under a channel lock. Events are also logged on
        ``lbclient.events``."""
        self._balancer.add_event_listener(fn)

    def remove_event_listener(self, fn: Callable[[EndpointEvent], None]) -> None:
        self._balancer.remove_event_listener(fn)

    @property
    def target(self) -> str:
        return self._target.raw

    # ------------------------------------------------------------ call listeners
    _call_listeners: tuple[Callable[[str, CallOutcome], None], ...] = ()

    def add_call_listener(self, fn: Callable[[str, CallOutcome], None]) -> None:
        """``fn(address, outcome)`` once per finished attempt (any thread: a caller's or
        grpc's callback thread). It must be quick and should not raise (errors are
        logged). ``lbclient.metrics`` uses it."""
        with self._subscribers_lock:
            self._call_listeners = (*self._call_listeners, fn)
            self._invoker.call_listener = self._deliver_call

    def remove_call_listener(self, fn: Callable[[str, CallOutcome], None]) -> None:
        with self._subscribers_lock:
            rest = list(self._call_listeners)
            if fn in rest:
                rest.remove(fn)
            self._call_listeners = tuple(rest)
            if not rest:
                self._invoker.call_listener = None

    def _deliver_call(self, address: str, outcome: CallOutcome) -> None:
        for fn in self._call_listeners:
            try:
                fn(address, outcome)
            except Exception:
                log.exception("call listener failed")

    _resolver_listeners: tuple[Callable[[ResolverState | None, Exception | None], None],
                               ...] = ()

    def add_resolver_listener(
            self, fn: Callable[[ResolverState | None, Exception | None], None]) -> None:
        """``fn(state, None)`` after each resolver update is applied, ``fn(None, error)``
        after each resolver failure (on the resolver's thread; quick, should not raise).
        ``lbclient.metrics`` uses it."""
        with self._subscribers_lock:
            self._resolver_listeners = (*self._resolver_listeners, fn)

    def remove_resolver_listener(
            self, fn: Callable[[ResolverState | None, Exception | None], None]) -> None:
        with self._subscribers_lock:
            rest = list(self._resolver_listeners)
            if fn in rest:
                rest.remove(fn)
            self._resolver_listeners = tuple(rest)

    def _deliver_resolver(self, state: ResolverState | None,
                          error: Exception | None) -> None:
        for fn in self._resolver_listeners:
            try:
                fn(state, error)
            except Exception:
                log.exception("resolver listener failed")


def _subchannel_options(options: Sequence[tuple[str, Any]] | None) -> list[tuple[str, Any]]:
    opts = list(options or [])
    names = {k for k, _ in opts}
    # Each endpoint connection has its own subchannel, so two channels to the same
    # backend don't share (and don't close) each other's connection.
    if "grpc.use_local_subchannel_pool" not in names:
        opts.append(("grpc.use_local_subchannel_pool", 1))
    return opts


def insecure_channel(target: str, service_config: ServiceConfigInput = None,
                     options: Sequence[tuple[str, Any]] | None = None,
                     **kwargs: Any) -> LoadBalancedChannel:
    """A load-balanced plaintext channel (grpc.insecure_channel's signature plus the
    service config)."""
    return LoadBalancedChannel(target, None, service_config, options, **kwargs)


def secure_channel(target: str, credentials: grpc.ChannelCredentials,
                   service_config: ServiceConfigInput = None,
                   options: Sequence[tuple[str, Any]] | None = None,
                   **kwargs: Any) -> LoadBalancedChannel:
    """A load-balanced TLS channel: every endpoint connection uses ``credentials``."""
    if credentials is None:
        raise ValueError("secure_channel needs credentials; use insecure_channel for plaintext")
    return LoadBalancedChannel(target, credentials, service_config, options, **kwargs)
