"""The four grpc.aio multicallables of the asyncio ``LoadBalancedChannel``.

When the published picker places the call at once (the common case), the caller gets
grpc.aio's own call object, so awaiting, iterating, ``read()``/``write()``/
``done_writing()``, metadata and status behave exactly as with grpc.aio. Otherwise (no
ready endpoint yet, ``wait_for_ready``, the channel closed) a
:class:`~lbclient._async.future.DeferredCall` of the same kind waits for an endpoint
within the deadline or fails with the reason. Methods whose method config has a retry
or hedging policy get a retried call (``retry.retried_call``).

Deadline: the caller's timeout, or the method config's ``timeout`` when that is shorter
or the caller gave none; fixed once, and shared by every attempt.
"""

from __future__ import annotations

import time
import weakref
from typing import Any

import grpc.aio

from .._core.deadline import remaining
from .._core.kinds import CallSite, Invocation, invocation
from .._core.observe import call_end
from .._core.picking import CLOSED, fail_now
from ..balancer.picker import PickError
from ..method_config import MethodConfig
from .attempt import pick_info, start
from .errors import aio_error
from .future import DEFERRED
from .picking import AioPlacement
from .retry import retried_call
from .status import Status, when_done


class _MultiCallable:
    __slots__ = ("_host", "_site")

    def __init__(self, host: AioPlacement, site: CallSite) -> None:
        self._host = host
        self._site = site

    def __call__(self, request: Any = None, *, timeout: float | None = None,
                 metadata: Any = None, credentials: Any = None,
                 wait_for_ready: bool | None = None, compression: Any = None) -> Any:
        if self._host.ctx.observer is None:
            return self._call(request, timeout, metadata, credentials, wait_for_ready,
                              compression)
        t0 = time.perf_counter()
        call = self._call(request, timeout, metadata, credentials, wait_for_ready,
                          compression)
        observe(self._host, self._site, call, t0)
        return call

    def _call(self, request: Any, timeout: float | None, metadata: Any, credentials: Any,
              wait_for_ready: bool | None, compression: Any) -> Any:
        host, site = self._host, self._site
        ctx = host.ctx
        config: MethodConfig | None = (site.config if site.generation == ctx.generation
                                       else ctx.config_for(site))
        if config is not None:
            inv = self._invocation(config, request, timeout, metadata, credentials,
                                   wait_for_ready, compression)
            if ctx.closed:
                return DEFERRED[site.kind.value](host, inv, aio_error("CANCELLED", CLOSED))
            if config.retry_policy is not None or config.hedging_policy is not None:
                call = retried_call(host, inv, config)
                if call is not None:
                    return call
            return self._single(inv)
        if ctx.closed:
            inv = self._invocation(None, request, timeout, metadata, credentials,
                                   wait_for_ready, compression)
            return DEFERRED[site.kind.value](host, inv, aio_error("CANCELLED", CLOSED))
        try:
            result = ctx.balancer.picker.pick(pick_info(site, metadata))
        except PickError as exc:
            inv = self._invocation(None, request, timeout, metadata, credentials,
                                   wait_for_ready, compression)
            return self._deferred(inv, exc)
        call = start(host, site, result, request, timeout, metadata, credentials,
                     wait_for_ready, compression)
        if call is not None:
            return call
        inv = self._invocation(None, request, timeout, metadata, credentials, wait_for_ready,
                               compression)
        return DEFERRED[site.kind.value](host, inv, repicked=1)   # endpoint removed: pick again

    def _invocation(self, config: MethodConfig | None, request: Any, timeout: float | None,
                    metadata: Any, credentials: Any, wait_for_ready: bool | None,
                    compression: Any) -> Invocation:
        return invocation(self._site, config, request, timeout, metadata, credentials,
                          wait_for_ready, compression)

    def _single(self, inv: Invocation) -> Any:
        """One attempt of a call with a method config (deadline, waitForReady)."""
        host, site = self._host, self._site
        try:
            result = host.ctx.balancer.picker.pick(pick_info(site, inv.metadata))
        except PickError as exc:
            return self._deferred(inv, exc)
        call = start(host, site, result, inv.request, remaining(inv.deadline), inv.metadata,
                     inv.credentials, inv.wait_for_ready, inv.compression)
        if call is not None:
            return call
        return DEFERRED[site.kind.value](self._host, inv, repicked=1)   # removed: pick again

    def _deferred(self, inv: Invocation, error: PickError) -> Any:
        failed = fail_now(self._host.ctx, error, inv.wait_for_ready)
        cls = DEFERRED[self._site.kind.value]
        if failed is not None:
            return cls(self._host, inv, aio_error(*failed))
        return cls(self._host, inv, error)


def observe(host: AioPlacement, site: CallSite, call: Any, t0: float) -> None:
    """Report ``call``'s end to the channel's call observer (metrics). Holds the call
    weakly: an abandoned call is still collected (and cancelled)."""
    observer = host.ctx.observer
    if observer is None:
        return
    ref = weakref.ref(call)

    def ended(status: Status) -> None:
        observer.call_ended(call_end(site, status.code, time.perf_counter() - t0,
                                     ref()))

    when_done(call, ended)


class UnaryUnary(_MultiCallable, grpc.aio.UnaryUnaryMultiCallable[Any, Any]):
    __slots__ = ()


class UnaryStream(_MultiCallable, grpc.aio.UnaryStreamMultiCallable[Any, Any]):
    __slots__ = ()


class StreamUnary(_MultiCallable, grpc.aio.StreamUnaryMultiCallable[Any, Any]):
    __slots__ = ()

    def __call__(self, request_iterator: Any = None, **kwargs: Any) -> Any:  # type: ignore[override]
        return super().__call__(request_iterator, **kwargs)


class StreamStream(_MultiCallable, grpc.aio.StreamStreamMultiCallable[Any, Any]):
    __slots__ = ()

    def __call__(self, request_iterator: Any = None, **kwargs: Any) -> Any:  # type: ignore[override]
        return super().__call__(request_iterator, **kwargs)
