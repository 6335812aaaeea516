"""The asyncio ``LoadBalancedChannel``: a ``grpc.aio.Channel`` over the shared balancer.

It reuses the sync channel's resolver, balancer, policies, config, retry decisions and
visibility code (:class:`~lbclient._channel_common.ChannelCommon`); only the edges
differ: endpoint connections are grpc.aio channels watched by tasks, timers run on the
loop (:class:`LoopScheduler`), and resolver results (which may arrive on resolver
threads) are handed to the loop with ``call_soon_threadsafe``, so every balancer event is
applied on the loop, one at a time, and nothing blocks it. Listeners (events, calls,
resolver) are called on the loop.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import grpc
import grpc.aio

from .._channel_common import ChannelCommon, ServiceConfigInput
from .._invoke import SERVER_FAILURE_CODES, remaining
from .._subchannel import TO_GRPC, with_authority
from .._throttle import RetryThrottle
from ..balancer.balancer import Balancer
from ..balancer.picker import CallOutcome, PickError, PickInfo, PickResult
from ..config import ServiceConfig, parse_service_config
from ..connectivity import Connectivity
from ..metrics._auto import channel_created as metrics_channel_created
from ..resolver.base import ResolverState, create_resolver
from ._attempt import CLOSED, aio_error
from ._calls import StreamStream, StreamUnary, UnaryStream, UnaryUnary
from ._health import AioHealthCheckerFactory
from ._scheduler import LoopScheduler
from ._subchannel import AioSubchannelFactory

log = logging.getLogger("lbclient.aio")


class LoadBalancedChannel(ChannelCommon, grpc.aio.Channel):
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
        self._init_common(target, service_config, log)
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
        self._throttle: RetryThrottle | None = None
        self._retry_rng = random.Random()
        self._closing: asyncio.Future[None] = self._loop.create_future()
        self._changed = asyncio.Event()
        self._balancer.add_listener(self._on_balancer_change)
        self._apply_config(self._user_config or parse_service_config(None))
        metrics_channel_created(self)   # LBCLIENT_METRICS auto-instrumentation (no-op unset)
        self._resolver = create_resolver(self._target, self, resolver_options)
        # A resolver's start() and close() may block (a host name lookup, joining its
        # thread): run them off the loop; results come back through on_resolved.
        self._resolver_started = self._loop.run_in_executor(None, self._resolver.start)
        self._resolver_started.add_done_callback(self._resolver_start_done)

    # ------------------------------------------------------------ ChannelCommon hooks
    def _config_applied(self, config: ServiceConfig) -> None:
        throttling = config.retry_throttling
        self._throttle = (RetryThrottle.from_config(throttling, self._throttle)
                          if throttling is not None else None)
        self._failure_codes = self._balancer.failure_codes

    def _set_call_listener(self, fn: Callable[[str, CallOutcome], None] | None) -> None:
        self._call_listener = fn

    # ------------------------------------------------------------ resolver listener
    # Called from any thread: everything is handed to the loop.
    def on_resolved(self, state: ResolverState) -> None:
        self._post(ChannelCommon.on_resolved, state)

    def on_resolver_error(self, error: Exception) -> None:
        self._post(ChannelCommon.on_resolver_error, error)

    def _post(self, fn: Callable[..., None], arg: Any) -> None:
        if self._closed or self._loop.is_closed():
            return
        try:
            self._loop.call_soon_threadsafe(fn, self, arg)
        except RuntimeError:   # the loop closed meanwhile
            pass

    # ------------------------------------------------------------ waiting (on the loop)
    def _on_balancer_change(self) -> None:
        # Wake every waiter (queued picks, channel_ready, state changes).
        self._changed.set()
        self._changed = asyncio.Event()

    async def _wait_change(self, timeout: float | None) -> None:
        event = self._changed
        try:
            await asyncio.wait_for(event.wait(), timeout)
        except TimeoutError:
            pass

    async def _wait_for_pick(self, info: PickInfo, deadline: float | None, reason: str,
                             wait_for_ready: bool = True) -> PickResult:
        """Wait (within ``deadline``) for a picker that can place the call; the first
        pick failed with ``reason``. Raises the call's ``AioRpcError`` otherwise."""
        self._balancer.request_connections()
        while True:
            if self._closed:
                raise aio_error(grpc.StatusCode.CANCELLED, CLOSED)
            left = remaining(deadline)
            if left is not None and left <= 0:
                raise aio_error(grpc.StatusCode.DEADLINE_EXCEEDED,
                                f"deadline exceeded while waiting for an endpoint ({reason})")
            await self._wait_change(left)
            if self._closed:
                raise aio_error(grpc.StatusCode.CANCELLED, CLOSED)
            try:
                return self._balancer.picker.pick(info)
            except PickError as exc:
                if not wait_for_ready and not exc.queue:
                    raise aio_error(grpc.StatusCode.UNAVAILABLE, str(exc)) from None
                reason = str(exc)

    async def _backoff_sleep(self, delay: float) -> None:
        """A retry backoff: ``delay`` seconds, cut short when the channel closes."""
        if delay > 0 and not self._closing.done():
            await asyncio.wait([self._closing], timeout=delay)

    # ------------------------------------------------------------ grpc.aio.Channel
    _multicallables = (UnaryUnary, UnaryStream, StreamUnary, StreamStream)

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
        as grpc.aio), the resolver and the timers; retries waiting for their backoff
        stop at once. Idempotent."""
        resolver_closed = None
        if not self._closed:
            self._closed = True
            self._factory.grace = grace
            resolver_closed = self._loop.create_task(self._close_resolver())
            self._balancer.close()
            self._scheduler.close()
            if not self._closing.done():
                self._closing.set_result(None)
            self._on_balancer_change()
        await self._factory.wait_closed()
        if resolver_closed is not None:
            await resolver_closed

    async def _close_resolver(self) -> None:
        """Close the resolver (off the loop) once its start() has returned."""
        await asyncio.wait([self._resolver_started])
        await self._loop.run_in_executor(None, self._resolver.close)

    def _resolver_start_done(self, started: asyncio.Future[None]) -> None:
        if not started.cancelled() and started.exception() is not None:
            self.on_resolver_error(started.exception())  # type: ignore[arg-type]

    async def __aenter__(self) -> LoadBalancedChannel:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


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
