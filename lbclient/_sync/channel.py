"""The sync ``LoadBalancedChannel``: a ``grpc.Channel`` that balances every call.

Flow: target -> resolver -> ``ResolverState`` -> balancer (one grpc channel per endpoint,
connectivity, health, ejection) -> immutable picker -> the multicallables in ``calls``.
Threading: resolver, connectivity and timer events arrive on their own threads and are
applied by the balancer one at a time; calls only read the published picker, and calls
waiting for an endpoint are woken (and queued ones placed) after each change.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import grpc

from .._core.channel_base import ChannelBase, ServiceConfigInput
from .._core.transport import TO_GRPC, endpoint_options
from ..balancer.balancer import Balancer
from ..metrics._auto import channel_created as metrics_channel_created
from ..resolver import create_resolver
from .calls import StreamStream, StreamUnary, UnaryStream, UnaryUnary
from .health import GrpcHealthCheckerFactory
from .picking import Placement
from .scheduler import ThreadScheduler
from .subchannel import SubchannelFactory

log = logging.getLogger("lbclient.channel")


class LoadBalancedChannel(ChannelBase, grpc.Channel):
    """A client-side load-balanced channel. Use :func:`lbclient.insecure_channel` or
    :func:`lbclient.secure_channel` to make one.

    The service config (``service_config=`` or grpc's ``grpc.service_config`` option)
    wins over one delivered by the resolver; without either, the policy is
    ``round_robin`` (grpcio defaults to ``pick_first``). ``options`` and
    ``compression`` apply to every endpoint connection.
    """

    _multicallables = (UnaryUnary, UnaryStream, StreamUnary, StreamStream)

    def __init__(self, target: str, options: Sequence[tuple[str, Any]] | None = None,
                 compression: grpc.Compression | None = None, *,
                 credentials: grpc.ChannelCredentials | None = None,
                 service_config: ServiceConfigInput = None,
                 resolver_options: Mapping[str, Any] | None = None,
                 rng: random.Random | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._init_base(target, service_config, options, log)
        self._close_lock = threading.Lock()
        self._scheduler = ThreadScheduler(clock=clock)
        self._factory = SubchannelFactory(credentials, endpoint_options(options, self._target),
                                          self._scheduler, compression)
        self._balancer = Balancer(
            self._factory, clock=clock, rng=rng or random.Random(), scheduler=self._scheduler,
            on_endpoint_failure=self._on_endpoint_failure,
            health_factory=GrpcHealthCheckerFactory(self._scheduler))
        self._subscribers: list[list[Any]] = []      # [callback, last delivered state]
        self._subscribers_lock = threading.Lock()
        self._init_context()
        self._host = Placement(self._ctx, self._scheduler, self._factory.kick)
        self._balancer.add_listener(self._on_balancer_change)
        metrics_channel_created(self)   # LBCLIENT_METRICS auto-instrumentation (no-op unset)
        self._resolver = create_resolver(self._target, self, resolver_options)
        self._resolver.start()

    # ------------------------------------------------------------ grpc.Channel
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
        self._host.changed()
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
        In-flight and queued calls end with CANCELLED; later calls fail with CANCELLED
        "lbclient channel is closed"."""
        with self._close_lock:
            if self._closed:
                return
            self._closed = True
        self._ctx.closed = True
        self._host.close()
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


def insecure_channel(target: str, options: Sequence[tuple[str, Any]] | None = None,
                     compression: grpc.Compression | None = None, *,
                     service_config: ServiceConfigInput = None,
                     **kwargs: Any) -> LoadBalancedChannel:
    """A load-balanced plaintext channel: ``grpc.insecure_channel``'s signature, plus
    ``service_config`` (a dict or JSON; grpc's ``grpc.service_config`` option works too)
    and ``resolver_options``."""
    return LoadBalancedChannel(target, options, compression, service_config=service_config,
                               **kwargs)


def secure_channel(target: str, credentials: grpc.ChannelCredentials,
                   options: Sequence[tuple[str, Any]] | None = None,
                   compression: grpc.Compression | None = None, *,
                   service_config: ServiceConfigInput = None,
                   **kwargs: Any) -> LoadBalancedChannel:
    """A load-balanced TLS channel (``grpc.secure_channel``'s signature, plus
    ``service_config``): every endpoint connection uses ``credentials``."""
    if credentials is None:
        raise ValueError("secure_channel needs credentials; use insecure_channel for plaintext")
    return LoadBalancedChannel(target, options, compression, credentials=credentials,
                               service_config=service_config, **kwargs)
