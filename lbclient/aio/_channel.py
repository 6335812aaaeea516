"""The asyncio ``LoadBalancedChannel``: a ``grpc.aio.Channel`` over the shared balancer.

It reuses the sync channel's resolver, balancer, policies and config code; only the
edges differ: endpoint connections are grpc.aio channels watched by tasks, timers run on
the loop (:class:`LoopScheduler`), and resolver results (which may arrive on resolver
threads) are handed to the loop with ``call_soon_threadsafe``, so every balancer event is
applied on the loop, one at a time, and nothing blocks it.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import grpc
import grpc.aio

from .._invoke import SERVER_FAILURE_CODES
from .._subchannel import TO_GRPC, with_authority
from ..balancer.balancer import Balancer, EndpointInfo
from ..balancer.picker import CallOutcome, PickError, PickInfo, PickResult
from ..config import ServiceConfig, parse_service_config
from ..connectivity import Connectivity
from ..errors import ServiceConfigError
from ..health.options import FIELD as LBCLIENT_FIELD
from ..health.options import parse_balancing_options
from ..method_config import MethodConfig, MethodConfigTable
from ..resolver.base import ResolverState, create_resolver, parse_target, validate_target
from ._calls import StreamStream, StreamUnary, UnaryStream, UnaryUnary, _error
from ._health import AioHealthCheckerFactory
from ._scheduler import LoopScheduler
from ._subchannel import AioSubchannelFactory

log = logging.getLogger("lbclient.aio")

ServiceConfigInput = str | bytes | Mapping[str, Any] | None


class LoadBalancedChannel(grpc.aio.Channel):
    """Create with :func:`lbclient.aio.insecure_channel` / :func:`secure_channel`, inside
    a running event loop. ``interceptors`` (grpc.aio client interceptors) run on every
    attempt, on the endpoint's own connection."""

    def __init__(self, target: str, credentials: grpc.ChannelCredentials | None = None,
                 service_config: ServiceConfigInput = None,
                 options: Sequence[tuple[str, Any]] | None = None, *,
                 interceptors: Sequence[Any] | None = None,
                 resolver_options: Mapping[str, Any] | None = None,
                 rng: random.Random | None = None) -> None:
        self._loop = asyncio.get_running_loop()
        self._target = parse_target(target)
        validate_target(self._target)
        self._user_config = (parse_service_config(service_config)
                             if service_config is not None else None)
        self._closed = False
        self._scheduler = LoopScheduler(self._loop)
        opts = list(options or [])
        if "grpc.use_local_subchannel_pool" not in {k for k, _ in opts}:
            opts.append(("grpc.use_local_subchannel_pool", 1))
        # the target's logical authority (TLS names for IP endpoints), as the sync channel
        self._factory = AioSubchannelFactory(credentials, with_authority(opts, self._target),
                                             interceptors)
        self._balancer = Balancer(self._factory, clock=self._loop.time,
                                  rng=rng or random.Random(), scheduler=self._scheduler,
                                  on_endpoint_failure=self._on_endpoint_failure,
                                  health_factory=AioHealthCheckerFactory())
        self._failure_codes = SERVER_FAILURE_CODES
        self._call_listener: Callable[[str, CallOutcome], None] | None = None
        self._methods = MethodConfigTable(())
        self._config: ServiceConfig | None = None
        self._changed = asyncio.Event()
        self._balancer.add_listener(self._on_balancer_change)
        self._apply_config(self._user_config or parse_service_config(None))
        self._resolver = create_resolver(self._target, self, resolver_options)
        self._resolver.start()

    # ------------------------------------------------------------ configuration
    def _apply_config(self, config: ServiceConfig) -> None:
        if self._config is not None and config.raw == self._config.raw:
            return
        options = parse_balancing_options(config.raw.get(LBCLIENT_FIELD))  # may raise
        self._config = config
        self._methods = MethodConfigTable(config.method_configs)
        self._balancer.set_options(options)
        self._balancer.set_health_check(config.health_check)
        self._balancer.set_policy(config.lb.spec, config.lb.config)
        self._failure_codes = self._balancer.failure_codes

    def _method_config(self, method: str) -> MethodConfig | None:
        return self._methods.lookup(method) if self._methods else None

    @property
    def service_config(self) -> ServiceConfig | None:
        return self._config

    # ------------------------------------------------------------ resolver listener
    # Called from any thread: everything is handed to the loop.
    def on_resolved(self, state: ResolverState) -> None:
        self._post(self._resolved, state)

    def on_resolver_error(self, error: Exception) -> None:
        self._post(self._resolver_failed, error)

    def _post(self, fn: Callable[..., None], arg: Any) -> None:
        if self._closed or self._loop.is_closed():
            return
        self._loop.call_soon_threadsafe(fn, arg)

    def _resolved(self, state: ResolverState) -> None:
        if self._closed:
            return
        if self._user_config is None and state.service_config is not None:
            try:
                self._apply_config(parse_service_config(state.service_config))
            except ServiceConfigError as exc:
                log.warning("ignoring the resolver's service config: %s", exc)
        if not state.endpoints and not state.authoritative:
            self._resolver_failed(ValueError("resolver returned no endpoints"))
            return
        self._balancer.update_endpoints(state.endpoints)

    def _resolver_failed(self, error: Exception) -> None:
        if self._closed:
            return
        log.warning("resolver error for %s: %s", self._target.raw, error)
        self._balancer.resolver_error(str(error))

    def _on_endpoint_failure(self, address: str) -> None:
        resolver = getattr(self, "_resolver", None)
        if resolver is not None and not self._closed:
            resolver.resolve_now()

    def _on_balancer_change(self) -> None:
        # Wake every waiter (wait_for_ready picks, channel_ready, state changes).
        self._changed.set()
        self._changed = asyncio.Event()

    async def _wait_change(self, timeout: float | None) -> None:
        event = self._changed
        try:
            await asyncio.wait_for(event.wait(), timeout)
        except TimeoutError:
            pass

    async def _wait_and_start(self, info: PickInfo, deadline: float | None,
                              start: Callable[[PickResult], Any], reason: str,
                              wait_for_ready: bool = True) -> Any:
        from .._invoke import remaining

        self._balancer.request_connections()
        while True:
            if self._closed:
                raise _error(grpc.StatusCode.CANCELLED, "lbclient channel is closed")
            left = remaining(deadline)
            if left is not None and left <= 0:
                raise _error(grpc.StatusCode.DEADLINE_EXCEEDED,
                             f"deadline exceeded while waiting for an endpoint ({reason})")
            await self._wait_change(None if left is None else left)
            try:
                return start(self._balancer.picker.pick(info))
            except PickError as exc:
                if not wait_for_ready and not exc.queue:
                    raise _error(grpc.StatusCode.UNAVAILABLE, str(exc)) from None
                reason = str(exc)

    # ------------------------------------------------------------ grpc.aio.Channel
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

    def get_state(self, try_to_connect: bool = False) -> grpc.ChannelConnectivity:
        if try_to_connect and not self._closed:
            self._balancer.request_connections()
        return TO_GRPC[self._balancer.state]

    async def wait_for_state_change(self, last_observed_state: grpc.ChannelConnectivity) -> None:
        while TO_GRPC[self._balancer.state] == last_observed_state and not self._closed:
            await self._wait_change(None)

    async def channel_ready(self) -> None:
        self._balancer.request_connections()
        while self._balancer.state is not Connectivity.READY:
            if self._closed:
                raise RuntimeError("channel closed before it was ready")
            await self._wait_change(None)

    async def close(self, grace: float | None = None) -> None:
        """Close every endpoint connection (with ``grace`` seconds for in-flight calls,
        as grpc.aio), the resolver and the timers. Idempotent."""
        if not self._closed:
            self._closed = True
            self._factory.grace = grace
            self._resolver.close()
            self._balancer.close()
            self._scheduler.close()
            self._on_balancer_change()
        await self._factory.wait_closed()

    async def __aenter__(self) -> LoadBalancedChannel:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # ------------------------------------------------------------ visibility
    def endpoints(self) -> list[EndpointInfo]:
        return self._balancer.snapshot()

    @property
    def target(self) -> str:
        return self._target.raw


def insecure_channel(target: str, service_config: ServiceConfigInput = None,
                     options: Sequence[tuple[str, Any]] | None = None,
                     **kwargs: Any) -> LoadBalancedChannel:
    """A load-balanced plaintext grpc.aio channel (call inside a running event loop)."""
    return LoadBalancedChannel(target, None, service_config, options, **kwargs)


def secure_channel(target: str, credentials: grpc.ChannelCredentials,
                   service_config: ServiceConfigInput = None,
                   options: Sequence[tuple[str, Any]] | None = None,
                   **kwargs: Any) -> LoadBalancedChannel:
    """A load-balanced TLS grpc.aio channel: every endpoint connection uses
    ``credentials``."""
    if credentials is None:
        raise ValueError("secure_channel needs credentials; use insecure_channel for plaintext")
    return LoadBalancedChannel(target, credentials, service_config, options, **kwargs)
