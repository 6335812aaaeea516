"""One grpc.aio channel per endpoint, with a task reporting its connectivity.

Contract: created and used on the channel's event loop only. ``shutdown()`` is sync
(the balancer calls it) and schedules the close; ``wait_closed()`` awaits every close.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Sequence
from typing import Any

import grpc
import grpc.aio

from .._subchannel import grpc_target
from ..connectivity import Connectivity
from ..endpoint import Endpoint

_STATES = {
    grpc.ChannelConnectivity.IDLE: Connectivity.IDLE,
    grpc.ChannelConnectivity.CONNECTING: Connectivity.CONNECTING,
    grpc.ChannelConnectivity.READY: Connectivity.READY,
    grpc.ChannelConnectivity.TRANSIENT_FAILURE: Connectivity.TRANSIENT_FAILURE,
    grpc.ChannelConnectivity.SHUTDOWN: Connectivity.SHUTDOWN,
}


class AioSubchannel:
    def __init__(self, factory: AioSubchannelFactory, endpoint: Endpoint,
                 on_state: Callable[[Connectivity], None]) -> None:
        self.endpoint = endpoint
        self.address = endpoint.address
        self._factory = factory
        target = grpc_target(endpoint.address)
        kwargs: dict[str, Any] = {"options": list(factory.options)}
        if factory.interceptors:
            kwargs["interceptors"] = list(factory.interceptors)
        if factory.credentials is None:
            self.channel = grpc.aio.insecure_channel(target, **kwargs)
        else:
            self.channel = grpc.aio.secure_channel(target, factory.credentials, **kwargs)
        self._callables: dict[tuple[Any, ...], Any] = {}
        self._on_state = on_state
        self.closed = False
        self._monitor = asyncio.get_running_loop().create_task(self._watch())

    async def _watch(self) -> None:
        state = self.channel.get_state(try_to_connect=True)
        while not self.closed:
            self._on_state(_STATES[state])
            if state is grpc.ChannelConnectivity.SHUTDOWN:
                return
            await self.channel.wait_for_state_change(state)
            state = self.channel.get_state(try_to_connect=False)

    def callable(self, kind: str, method: str, ser: Any, deser: Any, registered: bool) -> Any:
        key = (kind, method, ser, deser)
        mc = self._callables.get(key)
        if mc is None:
            mc = getattr(self.channel, kind)(method, request_serializer=ser,
                                              response_deserializer=deser,
                                              _registered_method=registered)
            self._callables[key] = mc
        return mc

    def request_connection(self) -> None:
        if not self.closed:
            self.channel.get_state(try_to_connect=True)

    def shutdown(self) -> None:
        if self.closed:
            return
        self.closed = True
        self._monitor.cancel()
        self._factory.closing(self._close())

    async def _close(self) -> None:
        with contextlib.suppress(asyncio.CancelledError):
            await self._monitor
        await self.channel.close(self._factory.grace)


class AioSubchannelFactory:
    def __init__(self, credentials: grpc.ChannelCredentials | None,
                 options: Sequence[tuple[str, Any]], interceptors: Sequence[Any] | None) -> None:
        self.credentials = credentials
        self.options = list(options)
        self.interceptors = list(interceptors or [])
        self.grace: float | None = None
        self._closing: set[asyncio.Task[None]] = set()

    def create(self, endpoint: Endpoint,
               on_state: Callable[[Connectivity], None]) -> AioSubchannel:
        return AioSubchannel(self, endpoint, on_state)

    def closing(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    async def wait_closed(self) -> None:
        while self._closing:
            await asyncio.gather(*list(self._closing), return_exceptions=True)
