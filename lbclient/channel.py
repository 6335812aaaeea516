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
from ._channel_common import ChannelCommon, ServiceConfigInput
from ._invoke import Invoker
from ._retry import configure_retrier
from ._scheduler import ThreadScheduler
from ._subchannel import TO_GRPC, SubchannelFactory
from .balancer.balancer import Balancer
from .balancer.picker import CallOutcome
from .config import ServiceConfig, parse_service_config
from .health.prober import GrpcHealthCheckerFactory
from .metrics._auto import channel_created as metrics_channel_created
from .resolver.base import create_resolver

log = logging.getLogger("lbclient.channel")

class LoadBalancedChannel(ChannelCommon, grpc.Channel):
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
        self._init_common(target, service_config, log)
        self._close_lock = threading.Lock()
        self._scheduler = ThreadScheduler(clock=clock)
        self._factory = SubchannelFactory(credentials, _subchannel_options(options),
                                          self._scheduler, target=self._target)
        self._clock = clock
        self._balancer = Balancer(
            self._factory, clock=clock,
            rng=rng or random.Random(), scheduler=self._scheduler,
            on_endpoint_failure=self._on_endpoint_failure,
            health_factory=GrpcHealthCheckerFactory(self._scheduler))
        self._invoker = Invoker(self._balancer)
        self._retrier: Any = None
        self._subscribers: list[list[Any]] = []      # [callback, last delivered state]
        self._subscribers_lock = threading.Lock()
        self._balancer.add_listener(self._on_balancer_change)
        self._apply_config(self._user_config or parse_service_config(None))
        metrics_channel_created(self)   # LBCLIENT_METRICS auto-instrumentation (no-op unset)
        self._resolver = create_resolver(self._target, self, resolver_options)
        self._resolver.start()

    # ------------------------------------------------------------ ChannelCommon hooks
    def _config_applied(self, config: ServiceConfig) -> None:
        self._retrier = configure_retrier(self._retrier, config, self._invoker,
                                          self._balancer, self._scheduler)
        self._invoker.failure_codes = self._balancer.failure_codes

    def _set_call_listener(self, fn: Callable[[str, CallOutcome], None] | None) -> None:
        self._invoker.call_listener = fn

    # ------------------------------------------------------------ grpc.Channel
    _multicallables = (UnaryUnary, UnaryStream, StreamUnary, StreamStream)

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
