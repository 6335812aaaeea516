"""The half of a ``LoadBalancedChannel`` that the sync and asyncio flavours share.

:class:`ChannelBase` parses the target and the service config (the ``service_config``
argument or grpc's ``grpc.service_config`` channel option), builds the
:class:`~lbclient._core.context.CallContext` its call drivers read, applies service
configs to the balancer and the context, is the resolver's listener, and offers the
visibility API (``endpoints()``, endpoint events, call and resolver listeners) and
grpc's four multicallable factories.

A flavour calls :meth:`_init_base` first, then creates ``_balancer`` and calls
:meth:`_init_context` (which applies the first service config); it provides
``_multicallables`` (its four classes). Threading: the sync channel receives resolver
results on the resolver's thread; the asyncio one hands them to its loop first. Listener
lists are immutable tuples replaced under ``_listeners_lock``; delivering takes no lock.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from ..balancer.balancer import Balancer, EndpointInfo
from ..balancer.picker import CallOutcome
from ..config import ServiceConfig, parse_service_config
from ..errors import ServiceConfigError
from ..health.events import EndpointEvent
from ..method_config import MethodConfigTable
from ..resolver import ResolverState, Target, parse_target, validate_target
from .budget import retry_gate
from .context import CallContext
from .kinds import CallKind
from .observe import CallObserver, Observers

ServiceConfigInput = str | bytes | Mapping[str, Any] | None
ResolverListener = Callable[[ResolverState | None, Exception | None], None]
CallListener = Callable[[str, CallOutcome], None]

_KINDS = (CallKind.UNARY_UNARY, CallKind.UNARY_STREAM, CallKind.STREAM_UNARY,
          CallKind.STREAM_STREAM)


def _config_text(value: ServiceConfigInput) -> Any:
    """A service config input as JSON-comparable data (for "given twice" checks)."""
    if isinstance(value, bytes | bytearray):
        value = value.decode("utf-8", "replace")
    if isinstance(value, str):
        try:
            return json.loads(value)
        except ValueError:
            return value
    return value


def channel_config(service_config: ServiceConfigInput,
                   options: Sequence[tuple[str, Any]] | None) -> tuple[ServiceConfigInput, bool]:
    """The channel's own service config and whether the resolver's is ignored, from the
    ``service_config`` argument and grpc's ``grpc.service_config`` /
    ``grpc.service_config_disable_resolution`` options. Raises TypeError for options
    that are not grpc's (name, value) pairs (e.g. a service config passed where grpc's
    positional ``options`` go) and ServiceConfigError for two different configs."""
    if options is not None and (isinstance(options, str | bytes | Mapping) or not all(
            isinstance(o, tuple | list) and len(o) == 2 and isinstance(o[0], str)
            for o in options)):
        raise TypeError(
            "options must be a sequence of (name, value) pairs, as in grpc; "
            f"got {type(options).__name__}. lbclient's channels take grpc's positional "
            "arguments (target, options, compression); pass a service config as "
            "service_config=...")
    from_option = None
    disable = False
    for key, value in options or ():
        if key == "grpc.service_config":
            from_option = value
        elif key == "grpc.service_config_disable_resolution":
            disable = bool(value)
    if from_option is not None and service_config is not None:
        if _config_text(from_option) != _config_text(service_config):
            raise ServiceConfigError(
                "", "a service config was given twice with different content: "
                    "service_config=... and the grpc.service_config option; give one")
    chosen = service_config if service_config is not None else from_option
    return chosen, disable


class ChannelBase:
    _log: logging.Logger
    _target: Target
    _user_config: ServiceConfig | None
    _config: ServiceConfig | None
    _ignore_resolver_config: bool
    _balancer: Balancer
    _ctx: CallContext
    _closed: bool
    _listeners_lock: threading.Lock
    _call_listeners: tuple[CallListener, ...] = ()
    _resolver_listeners: tuple[ResolverListener, ...] = ()
    _resolver: Any = None
    _resolver_config_seen: Any = None   # the resolver's last service config (_config_text)
    _host: Any          # what the flavour's drivers get: .ctx plus its way of waiting

    # The four multicallable classes of the flavour (sync or grpc.aio), in the order
    # unary-unary, unary-stream, stream-unary, stream-stream: cls(host, site).
    _multicallables: tuple[Any, Any, Any, Any]

    def _init_base(self, target: str, service_config: ServiceConfigInput,
                   options: Sequence[tuple[str, Any]] | None, log: logging.Logger) -> None:
        """Parse and check the target and the service config (raising before anything is
        started), and set the shared state."""
        self._log = log
        self._target = parse_target(target)
        validate_target(self._target)
        chosen, self._ignore_resolver_config = channel_config(service_config, options)
        self._user_config = parse_service_config(chosen) if chosen is not None else None
        self._config = None
        self._closed = False
        self._listeners_lock = threading.Lock()

    def _init_context(self) -> None:
        """Create the call context over ``_balancer`` and apply the first config."""
        self._ctx = CallContext(self._balancer)
        self._apply_config(self._user_config or parse_service_config(None))

    # ------------------------------------------------------------ grpc's factories
    def _multicallable(self, index: int, method: str, ser: Any, deser: Any,
                       registered: bool | None) -> Any:
        site = self._ctx.site(_KINDS[index], method, ser, deser, bool(registered))
        return self._multicallables[index](self._host, site)

    def unary_unary(self, method: str, request_serializer: Any = None,
                    response_deserializer: Any = None,
                    _registered_method: bool | None = False) -> Any:
        return self._multicallable(0, method, request_serializer, response_deserializer,
                                   _registered_method)

    def unary_stream(self, method: str, request_serializer: Any = None,
                     response_deserializer: Any = None,
                     _registered_method: bool | None = False) -> Any:
        return self._multicallable(1, method, request_serializer, response_deserializer,
                                   _registered_method)

    def stream_unary(self, method: str, request_serializer: Any = None,
                     response_deserializer: Any = None,
                     _registered_method: bool | None = False) -> Any:
        return self._multicallable(2, method, request_serializer, response_deserializer,
                                   _registered_method)

    def stream_stream(self, method: str, request_serializer: Any = None,
                      response_deserializer: Any = None,
                      _registered_method: bool | None = False) -> Any:
        return self._multicallable(3, method, request_serializer, response_deserializer,
                                   _registered_method)

    # ------------------------------------------------------------ configuration
    def _apply_config(self, config: ServiceConfig) -> None:
        if self._config is not None and config.raw == self._config.raw:
            return
        self._config = config
        self._balancer.set_options(config.options)
        self._balancer.set_health_check(config.health_check)
        self._balancer.set_policy(config.lb.spec, config.lb.config)
        ctx = self._ctx
        balancer = self._balancer
        # The retry gate: the "lbclient" block's retryBudget (it wins over
        # retryThrottling), else A6 throttling, else none. Envoy's budget reads the
        # channel's attempts in flight (only when a retry is due).
        gate = retry_gate(config.retry_throttling, config.options.retry_budget, ctx.throttle,
                          active=lambda: sum(r.stats.in_flight for r in balancer.records()),
                          counts=ctx.retry_counts)
        ctx.set_methods(MethodConfigTable(config.method_configs), gate,
                        self._balancer.failure_codes)
        self._log.info("service config applied: policy %s", config.lb.name)

    @property
    def service_config(self) -> ServiceConfig | None:
        """The service config in use (the channel's own, else the resolver's, else the
        default: round_robin)."""
        return self._config

    # ------------------------------------------------------------ resolver listener
    def on_resolved(self, state: ResolverState) -> None:
        if self._closed:
            return
        if (self._user_config is None and not self._ignore_resolver_config
                and state.service_config is not None):
            # Resolvers repeat their config with every update: parse (and log about) each
            # distinct one once.
            seen = _config_text(state.service_config)
            if seen != self._resolver_config_seen:
                self._resolver_config_seen = seen
                try:
                    self._apply_config(parse_service_config(state.service_config))
                except ServiceConfigError as exc:
                    # gRPC keeps the previous config when the resolver sends a bad one.
                    self._log.warning("ignoring the resolver's service config: %s", exc)
        if not state.endpoints and not state.authoritative:
            self.on_resolver_error(ValueError("resolver returned no endpoints"))
            return
        self._balancer.update_endpoints(state.endpoints)
        self._deliver_resolver(state, None)

    def on_resolver_error(self, error: Exception) -> None:
        if self._closed:
            return
        self._log.warning("resolver error for %s: %s (keeping %d endpoints)",
                          self._target.raw, error, len(self._balancer.records()))
        self._balancer.resolver_error(str(error))
        self._deliver_resolver(None, error)

    def _on_endpoint_failure(self, address: str) -> None:
        resolver = self._resolver
        if resolver is not None and not self._closed:
            resolver.resolve_now()

    # ------------------------------------------------------------ visibility
    def endpoints(self) -> list[EndpointInfo]:
        """An immutable snapshot of every endpoint (address, weight, connectivity,
        health, ejection, in-flight, calls, failures, recent window, latency EWMA,
        slow start); see :class:`lbclient.EndpointInfo`."""
        return self._balancer.snapshot()

    def add_event_listener(self, fn: Callable[[EndpointEvent], None]) -> None:
        """``fn(event)`` for every :class:`lbclient.EndpointEvent` (added, removed,
        health_changed, ejected, readmitted), in order and one at a time, on the thread
        that caused it (the event loop for ``lbclient.aio``), never under a channel
        lock. Events are also logged on ``lbclient.events``."""
        self._balancer.add_event_listener(fn)

    def remove_event_listener(self, fn: Callable[[EndpointEvent], None]) -> None:
        self._balancer.remove_event_listener(fn)

    @property
    def target(self) -> str:
        return self._target.raw

    @property
    def circuit_breaker_rejections(self) -> int:
        """Calls refused at once because ``maxRequests`` attempts were in flight (the
        ``"lbclient"`` block's circuit breaker; per endpoint, ``EndpointInfo.overflows``
        counts the picks that skipped a full endpoint)."""
        return self._balancer.breaker.rejected

    @property
    def retries_granted(self) -> int:
        """Retries and hedges (past the first attempt) the channel's retry gate - the
        ``"lbclient"`` block's ``retryBudget``, else ``retryThrottling`` - let through,
        since the channel was created (0 without a gate)."""
        return self._ctx.retry_counts.granted

    @property
    def retries_refused(self) -> int:
        """Retries and hedges the retry gate refused (each such call ended with the
        failed attempt's error instead, or waited for the hedges already sent)."""
        return self._ctx.retry_counts.refused

    # ------------------------------------------------------------ call listeners
    def add_call_listener(self, fn: CallListener) -> None:
        """``fn(address, outcome)`` once per finished attempt (sync channel: any thread,
        a caller's or grpc's callback thread; ``lbclient.aio``: the event loop). It must
        be quick and should not raise (errors are logged). The outcome's metadata is
        empty for successful calls unless the pick asked for it. ``lbclient.metrics``
        uses it; a channel without call listeners builds no outcome for them."""
        with self._listeners_lock:
            self._call_listeners = (*self._call_listeners, fn)
            self._ctx.set_call_listener(self._deliver_call)

    def remove_call_listener(self, fn: CallListener) -> None:
        with self._listeners_lock:
            rest = list(self._call_listeners)
            if fn in rest:
                rest.remove(fn)
            self._call_listeners = tuple(rest)
            if not rest:
                self._ctx.set_call_listener(None)

    def _deliver_call(self, address: str, outcome: CallOutcome) -> None:
        for fn in self._call_listeners:
            try:
                fn(address, outcome)
            except Exception:
                self._log.exception("call listener failed")

    # ------------------------------------------------------------ call observers
    def add_call_observer(self, observer: CallObserver) -> None:
        """Report every attempt's start and end and every whole call's end to
        ``observer`` (see :mod:`lbclient._core.observe`; the gRFC A66/A96 metrics of
        ``lbclient.metrics.opentelemetry`` use it). Calls started before keep going
        unobserved."""
        with self._listeners_lock:
            current = self._ctx.observer.members if self._ctx.observer else ()
            self._ctx.set_observer(Observers((*current, observer)))

    def remove_call_observer(self, observer: CallObserver) -> None:
        with self._listeners_lock:
            current = self._ctx.observer.members if self._ctx.observer else ()
            rest = tuple(m for m in current if m is not observer)
            self._ctx.set_observer(Observers(rest) if rest else None)

    # ------------------------------------------------------------ resolver listeners
    def add_resolver_listener(self, fn: ResolverListener) -> None:
        """``fn(state, None)`` after each resolver update is applied, ``fn(None, error)``
        after each resolver failure (on the resolver's thread; ``lbclient.aio``: on the
        event loop; quick, should not raise). ``lbclient.metrics`` uses it."""
        with self._listeners_lock:
            self._resolver_listeners = (*self._resolver_listeners, fn)

    def remove_resolver_listener(self, fn: ResolverListener) -> None:
        with self._listeners_lock:
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
                self._log.exception("resolver listener failed")
