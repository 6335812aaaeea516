"""One grpc.aio channel per endpoint, with a task reporting its connectivity.

A :class:`AioSubchannel` is the balancer's ``Connection`` for one endpoint. grpc.aio
pushes connectivity changes (``wait_for_state_change`` runs on grpc's own poller, no
thread per channel), so a task per endpoint delivers every change as it happens and
``poll()`` has nothing to do. When the connection enters TRANSIENT_FAILURE, a
``wait_for_ready=False`` call made on it ends at once with grpc's account of why
(refused, TLS...), kept as :meth:`AioSubchannel.connection_error` until the state
changes (the sync twin does the same). The factory hands the balancer the changes of one
turn of the loop together (one picker rebuild, as the sync channel's sweep).

Contract: created and used on the channel's event loop only. ``shutdown()`` is sync (the
balancer calls it) and schedules the close; ``wait_closed()`` awaits every close.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Sequence
from typing import Any

import grpc
import grpc.aio

from .._core.kinds import CallSite
from .._core.transport import TO_LBCLIENT, grpc_target
from ..connectivity import Connectivity
from ..endpoint import Endpoint
from .intercept import raw_view, tag_spans

log = logging.getLogger("lbclient.channel")
_DIAGNOSE = "/lbclient.diagnostics.v1.Connection/LastError"


class AioSubchannel:
    def __init__(self, factory: AioSubchannelFactory, endpoint: Endpoint,
                 on_state: Callable[[Connectivity], None]) -> None:
        self.endpoint = endpoint
        self.address = endpoint.address
        self._factory = factory
        target = grpc_target(endpoint.address)
        kwargs: dict[str, Any] = {"options": list(factory.options),
                                  "compression": factory.compression}
        if factory.interceptors:
            kwargs["interceptors"] = list(factory.interceptors)
        if factory.credentials is None:
            self.channel = grpc.aio.insecure_channel(target, **kwargs)
        else:
            self.channel = grpc.aio.secure_channel(target, factory.credentials, **kwargs)
        # Health probes and the connection-error probe: the same connection, none of the
        # channel's interceptors (the user's, an instrumentation's); see .intercept.
        self.raw = raw_view(self.channel)
        tag_spans(self.channel, endpoint.address)
        self.calls: dict[CallSite, Any] = {}
        self._on_state = on_state
        self._closed = False
        self._last: Connectivity | None = None
        self._error: str | None = None
        self._diagnosis: asyncio.Task[None] | None = None
        self._monitor = asyncio.get_running_loop().create_task(self._watch())

    async def _watch(self) -> None:
        state = self.channel.get_state(try_to_connect=True)
        while not self._closed:
            self._last, self._error = TO_LBCLIENT[state], None
            self._factory.deliver(self._on_state, self._last)
            if state is grpc.ChannelConnectivity.SHUTDOWN:
                return
            if state is grpc.ChannelConnectivity.TRANSIENT_FAILURE:
                self._diagnose()
            await self.channel.wait_for_state_change(state)
            state = self.channel.get_state(try_to_connect=False)

    def _diagnose(self) -> None:
        if self._diagnosis is None or self._diagnosis.done():
            self._diagnosis = asyncio.get_running_loop().create_task(self._diagnosed())

    async def _diagnosed(self) -> None:
        probe: Any = self.raw.unary_unary(_DIAGNOSE)    # bytes in, bytes out
        try:
            await probe(b"", timeout=0.5, wait_for_ready=False)
        except grpc.aio.AioRpcError as exc:
            if exc.code() is grpc.StatusCode.UNAVAILABLE and exc.details() and \
                    self._last is Connectivity.TRANSIENT_FAILURE:
                self._error = exc.details()
        except Exception:   # closed meanwhile, cancelled
            pass

    # ------------------------------------------------------------ Connection
    def poll(self) -> bool:
        """Nothing to do: grpc.aio pushes every change to the watching task."""
        return False

    def connection_error(self) -> str | None:
        if self._last is not Connectivity.TRANSIENT_FAILURE:
            return None
        return self._error

    def callable(self, site: CallSite) -> Any:
        """This connection's grpc.aio multicallable for ``site`` (made once)."""
        mc = self.calls.get(site)
        if mc is None:
            mc = self.calls[site] = getattr(self.channel, site.kind.value)(
                site.method, request_serializer=site.ser, response_deserializer=site.deser,
                _registered_method=site.registered)
        return mc

    def request_connection(self) -> None:
        if not self._closed:
            self.channel.get_state(try_to_connect=True)

    @property
    def closed(self) -> bool:
        return self._closed

    def shutdown(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._monitor.cancel()
        if self._diagnosis is not None:
            self._diagnosis.cancel()
        self._factory.closing(self._close())

    async def _close(self) -> None:
        with contextlib.suppress(asyncio.CancelledError):
            await self._monitor
        await self.channel.close(self._factory.grace)


class AioSubchannelFactory:
    def __init__(self, credentials: grpc.ChannelCredentials | None,
                 options: Sequence[tuple[str, Any]], interceptors: Sequence[Any] | None,
                 compression: grpc.Compression | None = None) -> None:
        self.credentials = credentials
        self.options = list(options)
        self.interceptors = list(interceptors or [])
        self.compression = compression
        self.grace: float | None = None
        self._closing: set[asyncio.Task[None]] = set()
        # Connectivity changes waiting for the end of this turn of the loop (see deliver).
        self._batch: Callable[[], Any] = contextlib.nullcontext
        self._pending: list[tuple[Callable[[Connectivity], None], Connectivity]] = []
        self._flush_handle: asyncio.Handle | None = None

    def create(self, endpoint: Endpoint,
               on_state: Callable[[Connectivity], None]) -> AioSubchannel:
        return AioSubchannel(self, endpoint, on_state)

    def set_batcher(self, batch: Callable[[], Any]) -> None:
        """The balancer's ``batch`` context manager, used around each delivery."""
        self._batch = batch

    def deliver(self, on_state: Callable[[Connectivity], None], state: Connectivity) -> None:
        """Hand a connectivity change to the balancer at the end of this turn of the
        loop, with every other change that arrived in the same turn: one picker rebuild
        for all of them (grpc.aio wakes the endpoints' watching tasks one by one, often
        hundreds in a turn when many endpoints connect or fail at once). Changes of one
        endpoint keep their order."""
        self._pending.append((on_state, state))
        if self._flush_handle is None:
            self._flush_handle = asyncio.get_running_loop().call_soon(self._flush)

    def _flush(self) -> None:
        self._flush_handle = None
        pending, self._pending = self._pending, []
        with self._batch():
            for on_state, state in pending:
                try:
                    on_state(state)
                except Exception:
                    log.exception("delivering a connectivity change failed")

    def closing(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    async def wait_closed(self) -> None:
        while self._closing:
            await asyncio.gather(*list(self._closing), return_exceptions=True)
