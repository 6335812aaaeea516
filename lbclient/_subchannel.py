"""One grpc.Channel per endpoint address, with its connectivity reported to the balancer.

Contract: ``create()`` never blocks; connectivity changes arrive on grpc's delivery
threads. Multicallables are cached per (kind, method, serializers), so the per-call cost
is one dict lookup. ``shutdown()`` is idempotent.
"""

from __future__ import annotations

import ipaddress
import threading
from collections.abc import Callable, Sequence
from typing import Any

import grpc

from .connectivity import Connectivity
from .endpoint import Endpoint
from .resolver.address import split_host_port

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


def _noop(_: grpc.ChannelConnectivity) -> None:
    pass


class Subchannel:
    __slots__ = ("endpoint", "address", "channel", "_callables", "_on_state", "_closed",
                 "_lock", "__weakref__")

    def __init__(self, endpoint: Endpoint, credentials: grpc.ChannelCredentials | None,
                 options: ChannelOptions, on_state: Callable[[Connectivity], None]) -> None:
        self.endpoint = endpoint
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
        self.channel.subscribe(self._deliver, try_to_connect=True)

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
        # grpc has no public connect(). Its core channel's check_connectivity_state(True)
        # starts connecting synchronously; it is reached through a private attribute, so
        # fall back to the public way (a subscription with try_to_connect=True, which its
        # poller thread honours on its next turn) if that ever changes.
        core = getattr(self.channel, "_channel", None)
        check = getattr(core, "check_connectivity_state", None)
        if check is not None:
            try:
                check(True)
                return
            except ValueError:  # closed meanwhile
                return
        self.channel.subscribe(_noop, try_to_connect=True)
        self.channel.unsubscribe(_noop)

    @property
    def closed(self) -> bool:
        return self._closed

    def shutdown(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
        self.channel.unsubscribe(self._deliver)
        self.channel.close()


class SubchannelFactory:
    """Creates :class:`Subchannel` objects with the channel's credentials and options."""

    def __init__(self, credentials: grpc.ChannelCredentials | None,
                 options: ChannelOptions) -> None:
        self.credentials = credentials
        self.options = list(options)

    def create(self, endpoint: Endpoint,
               on_state: Callable[[Connectivity], None]) -> Subchannel:
        return Subchannel(endpoint, self.credentials, self.options, on_state)
