"""What the sync and asyncio ``LoadBalancedChannel`` share: target and service config
handling, the resolver listener, and the visibility API (``endpoints()``, endpoint event,
call and resolver listeners).

:class:`ChannelCommon` is a mixin. A channel calls :meth:`_init_common` first, then sets
``_balancer`` (and whatever its hooks need) before the first :meth:`_apply_config`; it
provides two hooks:

* ``_config_applied(config)`` - after a new service config reached the balancer (the
  sync channel configures its retrier there, the asyncio one its retry throttle);
* ``_set_call_listener(fn)`` - where finished attempts are reported (``None``: nowhere,
  so a channel without call listeners pays nothing per call).

Threading: the sync channel calls ``on_resolved``/``on_resolver_error`` on the resolver's
thread; the asyncio channel overrides them to hand the work to its loop first. Listener
lists are immutable tuples replaced under ``_listeners_lock``, so delivering never takes
a lock.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Mapping
from typing import Any

from .balancer.balancer import Balancer, EndpointInfo
from .balancer.picker import CallOutcome
from .config import ServiceConfig, parse_service_config
from .errors import ServiceConfigError
from .health.events import EndpointEvent
from .method_config import MethodConfig, MethodConfigTable
from .resolver.base import ResolverState, Target, parse_target, validate_target

ServiceConfigInput = str | bytes | Mapping[str, Any] | None
ResolverListener = Callable[[ResolverState | None, Exception | None], None]
CallListener = Callable[[str, CallOutcome], None]


class ChannelCommon:
    _log: logging.Logger
    _target: Target
    _user_config: ServiceConfig | None
    _config: ServiceConfig | None
    _methods: MethodConfigTable
    _balancer: Balancer
    _closed: bool
    _listeners_lock: threading.Lock
    _call_listeners: tuple[CallListener, ...] = ()
    _resolver_listeners: tuple[ResolverListener, ...] = ()

    # The four multicallable classes of the channel's flavour (sync or grpc.aio), in the
    # order unary-unary, unary-stream, stream-unary, stream-stream.
    _multicallables: tuple[Any, Any, Any, Any]

    def unary_unary(self, method: str, request_serializer: Any = None,
                    response_deserializer: Any = None,
                    _registered_method: bool | None = False) -> Any:
        return self._multicallables[0](self, "unary_unary", method, request_serializer,
                                       response_deserializer, bool(_registered_method))

    def unary_stream(self, method: str, request_serializer: Any = None,
                     response_deserializer: Any = None,
                     _registered_method: bool | None = False) -> Any:
        return self._multicallables[1](self, "unary_stream", method, request_serializer,
                                       response_deserializer, bool(_registered_method))

    def stream_unary(self, method: str, request_serializer: Any = None,
                     response_deserializer: Any = None,
                     _registered_method: bool | None = False) -> Any:
        return self._multicallables[2](self, "stream_unary", method, request_serializer,
                                       response_deserializer, bool(_registered_method))

    def stream_stream(self, method: str, request_serializer: Any = None,
                      response_deserializer: Any = None,
                      _registered_method: bool | None = False) -> Any:
        return self._multicallables[3](self, "stream_stream", method, request_serializer,
                                       response_deserializer, bool(_registered_method))

    def _init_common(self, target: str, service_config: ServiceConfigInput,
                     log: logging.Logger) -> None:
        """Parse and check the target and the user's service config (raising before
        anything is started), and set the shared state."""

        self._log = log
        self._target = parse_target(target)
        validate_target(self._target)
        self._user_config = (parse_service_config(service_config)
                             if service_config is not None else None)
        self._config = None
        self._methods = MethodConfigTable(())
        self._closed = False
        self._listeners_lock = threading.Lock()

    # ------------------------------------------------------------ hooks
    def _config_applied(self, config: ServiceConfig) -> None:
        """Called after ``config`` reached the balancer."""

    def _set_call_listener(self, fn: CallListener | None) -> None:
        raise NotImplementedError

    # ------------------------------------------------------------ configuration
    def _apply_config(self, config: ServiceConfig) -> None:
        if self._config is not None and config.raw == self._config.raw:
            return
        options = config.options
        self._config = config
        self._methods = MethodConfigTable(config.method_configs)
        self._balancer.set_options(options)
        self._balancer.set_health_check(config.health_check)
        self._balancer.set_policy(config.lb.spec, config.lb.config)
        self._config_applied(config)
        self._log.info("service config applied: policy %s", config.lb.name)

    def _method_config(self, method: str) -> MethodConfig | None:
        return self._methods.lookup(method) if self._methods else None

    @property
    def service_config(self) -> ServiceConfig | None:
        """The service config in use (the channel's own, else the resolver's, else the
        default: round_robin)."""
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
        resolver = getattr(self, "_resolver", None)
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

    # ------------------------------------------------------------ call listeners
    def add_call_listener(self, fn: CallListener) -> None:
        """``fn(address, outcome)`` once per finished attempt (sync channel: any thread,
        a caller's or grpc's callback thread; ``lbclient.aio``: the event loop). It must
        be quick and should not raise (errors are logged). ``lbclient.metrics`` uses it."""
        with self._listeners_lock:
            self._call_listeners = (*self._call_listeners, fn)
            self._set_call_listener(self._deliver_call)

    def remove_call_listener(self, fn: CallListener) -> None:
        with self._listeners_lock:
            rest = list(self._call_listeners)
            if fn in rest:
                rest.remove(fn)
            self._call_listeners = tuple(rest)
            if not rest:
                self._set_call_listener(None)

    def _deliver_call(self, address: str, outcome: CallOutcome) -> None:
        for fn in self._call_listeners:
            try:
                fn(address, outcome)
            except Exception:
                self._log.exception("call listener failed")

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
