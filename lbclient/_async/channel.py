"""The asyncio ``LoadBalancedChannel``: a ``grpc.aio.Channel`` over the shared balancer.

It shares the sync channel's resolver, balancer, policies, config, call pieces and
visibility code (``lbclient._core``); only the edges differ: endpoint connections are
grpc.aio channels watched by tasks, timers run on the loop, and resolver results (which
arrive on resolver threads) are handed to the loop with ``call_soon_threadsafe``, so every
balancer event is applied on the loop, one at a time, and nothing blocks it. Listeners
(events, calls, resolver) are called on the loop.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import grpc
import grpc.aio

from .._core.channel_base import ChannelBase, ServiceConfigInput
from .._core.transport import TO_GRPC, endpoint_options
from ..balancer.balancer import Balancer
from ..connectivity import Connectivity
from ..metrics._auto import channel_created as metrics_channel_created
from ..resolver import ResolverState, create_resolver
from .calls import StreamStream, StreamUnary, UnaryStream, UnaryUnary
from .health import AioHealthCheckerFactory
from .picking import AioPlacement
from .scheduler import LoopScheduler
from .subchannel import AioSubchannelFactory

log = logging.getLogger("lbclient.aio")


class LoadBalancedChannel(ChannelBase, grpc.aio.Channel):
    """Create with :func:`lbclient.aio.insecure_channel` / :func:`secure_channel`, inside
    a running event loop. ``interceptors`` (grpc.aio client interceptors) run on every
    attempt, on the endpoint's own connection; ``options`` and ``compression`` apply to
    every endpoint connection."""

    _multicallables = (UnaryUnary, UnaryStream, StreamUnary, StreamStream)

    def __init__(self, target: str, options: Sequence[tuple[str, Any]] | None = None,
                 compression: grpc.Compression | None = None,
                 interceptors: Sequence[Any] | None = None, *,
                 credentials: grpc.ChannelCredentials | None = None,
                 service_config: ServiceConfigInput = None,
                 resolver_options: Mapping[str, Any] | None = None,
                 rng: random.Random | None = None) -> None:
        self._loop = asyncio.get_running_loop()
        self._init_base(target, service_config, options, log)
        self._scheduler = LoopScheduler(self._loop)
        self._factory = AioSubchannelFactory(credentials, endpoint_options(options, self._target),
                                             interceptors, compression)
        self._balancer = Balancer(self._factory, clock=self._loop.time,
                                  rng=rng or random.Random(), scheduler=self._scheduler,
                                  on_endpoint_failure=self._on_endpoint_failure,
                                  health_factory=AioHealthCheckerFactory())
        self._init_context()
        self._host = AioPlacement(self._ctx, self._loop)
        self._balancer.add_listener(self._host.changed)
        metrics_channel_created(self)   # LBCLIENT_METRICS auto-instrumentation (no-op unset)
        self._resolver = create_resolver(self._target, self, resolver_options)
        # A resolver's start() and close() may block (a host name lookup, joining its
        # thread): run them off the loop; results come back through on_resolved.
        self._resolver_started = self._loop.run_in_executor(None, self._resolver.start)
        self._resolver_started.add_done_callback(self._resolver_start_done)

    # ------------------------------------------------------------ resolver listener
    # Called from any thread: everything is handed to the loop.
    def on_resolved(self, state: ResolverState) -> None:
        self._post(ChannelBase.on_resolved, state)

    def on_resolver_error(self, error: Exception) -> None:
        self._post(ChannelBase.on_resolver_error, error)

    def _post(self, fn: Callable[..., None], arg: Any) -> None:
        if self._closed or self._loop.is_closed():
            return
        try:
            self._loop.call_soon_threadsafe(fn, self, arg)
        except RuntimeError:   # the loop closed meanwhile
            pass

    # ------------------------------------------------------------ grpc.aio.Channel
    def get_state(self, try_to_connect: bool = False) -> grpc.ChannelConnectivity:
        if try_to_connect and not self._closed:
            self._balancer.request_connections()
        return TO_GRPC[self._balancer.state]

    async def wait_for_state_change(self, last_observed_state: grpc.ChannelConnectivity) -> None:
        while TO_GRPC[self._balancer.state] == last_observed_state and not self._closed:
            await self._host.wait_state_change()

    async def channel_ready(self) -> None:
        self._balancer.request_connections()
        while self._balancer.state is not Connectivity.READY:
            if self._closed:
                raise RuntimeError("channel closed before it was ready")
            await self._host.wait_state_change()

    async def close(self, grace: float | None = None) -> None:
        """Close every endpoint connection (with ``grace`` seconds for in-flight calls,
        as grpc.aio), the resolver and the timers; waiting calls and retries waiting for
        their backoff end at once. Idempotent."""
        resolver_closed = None
        if not self._closed:
            self._closed = True
            self._ctx.closed = True
            self._factory.grace = grace
            resolver_closed = self._loop.create_task(self._close_resolver())
            self._balancer.close()
            self._scheduler.close()
            self._host.close()
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


def insecure_channel(target: str, options: Sequence[tuple[str, Any]] | None = None,
                     compression: grpc.Compression | None = None,
                     interceptors: Sequence[Any] | None = None, *,
                     service_config: ServiceConfigInput = None,
                     **kwargs: Any) -> LoadBalancedChannel:
    """A load-balanced plaintext grpc.aio channel (``grpc.aio.insecure_channel``'s
    signature plus ``service_config``; call inside a running event loop)."""
    return LoadBalancedChannel(target, options, compression, interceptors,
                               service_config=service_config, **kwargs)


def secure_channel(target: str, credentials: grpc.ChannelCredentials,
                   options: Sequence[tuple[str, Any]] | None = None,
                   compression: grpc.Compression | None = None,
                   interceptors: Sequence[Any] | None = None, *,
                   service_config: ServiceConfigInput = None,
                   **kwargs: Any) -> LoadBalancedChannel:
    """A load-balanced TLS grpc.aio channel: every endpoint connection uses
    ``credentials``."""
    if credentials is None:
        raise ValueError("secure_channel needs credentials; use insecure_channel for plaintext")
    return LoadBalancedChannel(target, options, compression, interceptors,
                               credentials=credentials, service_config=service_config,
                               **kwargs)
