"""The four grpc multicallables of the sync ``LoadBalancedChannel``.

A call without a method config (the common case) goes straight to the hot path: one
attempt on the picked endpoint with the caller's own arguments (``attempt.blocking``),
or, for futures and response streams, grpc's own future/stream started on it
(``attempt.start``) - queued only when no endpoint can take it yet. A call whose method
config sets a timeout, ``waitForReady``, a ``retryPolicy`` or a ``hedgingPolicy`` gets
its one deadline fixed here (the caller's timeout, or the config's when shorter) and is
handed to ``retry``.

Responses, errors, metadata and ``grpc.Call`` objects are grpc's own wherever one attempt
is the whole call, so callers and interceptors see what a plain grpc channel gives them.
"""

from __future__ import annotations

import time
import weakref
from typing import TYPE_CHECKING, Any

import grpc

from .._core.deadline import remaining
from .._core.kinds import CallKind, CallSite, Invocation, invocation
from .._core.observe import call_end
from ..balancer.picker import PickError
from ..method_config import MethodConfig
from . import attempt, retry
from .errors import code_of
from .future import RetryingFuture
from .picking import Placement
from .stream import ResponseStream


class _MultiCallable:
    __slots__ = ("_host", "_site", "_ctx")

    def __init__(self, host: Placement, site: CallSite) -> None:
        self._host = host
        self._site = site
        self._ctx = host.ctx

    def _config(self) -> MethodConfig | None:
        site, ctx = self._site, self._host.ctx
        if site.generation == ctx.generation:
            config: MethodConfig | None = site.config
            return config
        return ctx.config_for(site)

    def _invocation(self, config: MethodConfig | None, request: Any, timeout: float | None,
                    metadata: Any, credentials: Any, wait_for_ready: bool | None,
                    compression: Any) -> Invocation:
        return invocation(self._site, config, request, timeout, metadata, credentials,
                          wait_for_ready, compression)

    def _start(self, request: Any, timeout: float | None, metadata: Any, credentials: Any,
               wait_for_ready: bool | None, compression: Any, how: str) -> Any:
        """A single-attempt future or response stream without a method config: grpc's
        own object when an endpoint takes it now, else ours, queued for one."""
        host, site = self._host, self._site
        info = attempt.pick_info(site, metadata)
        try:
            result = host.ctx.balancer.picker.pick(info)
        except PickError:
            result = None
        if result is not None:
            started = attempt.start(host, site, result, how, request, timeout, metadata,
                                    credentials, wait_for_ready, compression)
            if started is not None:
                return started[0]
        inv = self._invocation(None, request, timeout, metadata, credentials,
                               wait_for_ready, compression)
        return _queued(host, inv, how, result is not None)   # picked a removed endpoint

    def _single(self, inv: Invocation, how: str) -> Any:
        """:meth:`_start` for a call with a method config (deadline, waitForReady)."""
        host, site = self._host, self._site
        try:
            result = host.ctx.balancer.picker.pick(attempt.pick_info(site, inv.metadata))
        except PickError:
            result = None
        if result is not None:
            started = attempt.start(host, site, result, how, inv.request,
                                    remaining(inv.deadline), inv.metadata, inv.credentials,
                                    inv.wait_for_ready, inv.compression)
            if started is not None:
                return started[0]
        return _queued(host, inv, how, result is not None)   # picked a removed endpoint


def call_ended(host: Placement, site: CallSite, call: Any, t0: float,
               code: str | None = None, transparent: int = 0) -> None:
    """Tell the call observer how a whole call ended (``call``: its grpc call, future or
    error; lbclient's retried ones say how many attempts they made)."""
    observer = host.ctx.observer
    if observer is None:
        return
    end = call_end(site, code or code_of(call), time.perf_counter() - t0, call)
    if transparent:
        end = end._replace(transparent_retries=end.transparent_retries + transparent)
    observer.call_ended(end)


def observe_stream(host: Placement, site: CallSite, stream: Any, t0: float) -> None:
    """Report a response stream's end to the call observer (when the stream offers a
    completion callback; an interceptor's plain generator does not)."""
    add_callback = getattr(stream, "add_callback", None)
    if add_callback is None:
        return
    ref = weakref.ref(stream)      # an abandoned stream must stay collectable

    def ended() -> None:
        live = ref()
        call_ended(host, site, live, t0, None if live is not None else "CANCELLED")

    if not add_callback(ended):
        ended()


def _queued(host: Placement, inv: Invocation, how: str, repicked: bool = False) -> Any:
    """``repicked``: the caller's pick went to an endpoint removed meanwhile (a
    transparent retry, reported to the call observer)."""
    if how == "future":
        return RetryingFuture(host, inv, repicked=int(repicked)).start()
    return ResponseStream(host, inv, repicked=int(repicked)).start()


class _UnaryResponse(_MultiCallable):
    """unary-unary and stream-unary: a blocking call, ``with_call`` and ``future``."""

    __slots__ = ()

    def __call__(self, request: Any, timeout: float | None = None, metadata: Any = None,
                 credentials: Any = None, wait_for_ready: bool | None = None,
                 compression: Any = None) -> Any:
        if self._site.fast == self._ctx.generation:          # the hot path
            return attempt.unary(self._host, self._site, request, timeout, metadata,
                                 credentials, wait_for_ready, compression)
        config = self._config()
        if self._host.ctx.observer is not None:
            return self._observed(config, request, timeout, metadata, credentials,
                                  wait_for_ready, compression)[0]
        if config is None:
            return attempt.blocking(self._host, self._site, request, metadata, credentials,
                                    wait_for_ready, compression, False, timeout=timeout)[0]
        return self._blocking(config, request, timeout, metadata, credentials,
                              wait_for_ready, compression, False)[0]

    def with_call(self, request: Any, timeout: float | None = None, metadata: Any = None,
                  credentials: Any = None, wait_for_ready: bool | None = None,
                  compression: Any = None) -> tuple[Any, Any]:
        if self._site.fast == self._ctx.generation:          # the hot path
            out: tuple[Any, Any] = attempt.unary(self._host, self._site, request, timeout,
                                                 metadata, credentials, wait_for_ready,
                                                 compression, True)
            return out
        config = self._config()
        if self._host.ctx.observer is not None:
            return self._observed(config, request, timeout, metadata, credentials,
                                  wait_for_ready, compression)
        if config is None:
            return attempt.blocking(self._host, self._site, request, metadata, credentials,
                                    wait_for_ready, compression, True, timeout=timeout)
        return self._blocking(config, request, timeout, metadata, credentials,
                              wait_for_ready, compression, True)

    def _observed(self, config: MethodConfig | None, request: Any, timeout: float | None,
                  metadata: Any, credentials: Any, wait_for_ready: bool | None,
                  compression: Any) -> tuple[Any, Any]:
        """A blocking call reported to the channel's call observer (metrics)."""
        t0 = time.perf_counter()
        repicks: list[str] = []
        try:
            if config is None:
                out = attempt.blocking(self._host, self._site, request, metadata,
                                       credentials, wait_for_ready, compression, True,
                                       timeout=timeout, repicks=repicks)
            else:
                out = self._blocking(config, request, timeout, metadata, credentials,
                                     wait_for_ready, compression, True, repicks)
        except grpc.RpcError as exc:
            call_ended(self._host, self._site, exc, t0, transparent=len(repicks))
            raise
        call_ended(self._host, self._site, out[1], t0, "OK", len(repicks))
        return out

    def _blocking(self, config: MethodConfig, request: Any, timeout: float | None,
                  metadata: Any, credentials: Any, wait_for_ready: bool | None,
                  compression: Any, with_call: bool,
                  repicks: list[str] | None = None) -> tuple[Any, Any]:
        """``repicks``: see ``retry`` (the observed path counts transparent retries)."""
        if (config.retry_policy is not None and config.hedging_policy is None
                and self._site.kind is CallKind.UNARY_UNARY):
            return retry.blocking_unary(self._host, self._site, config, request, timeout,
                                        metadata, credentials, wait_for_ready, compression,
                                        with_call, repicks)
        inv = self._invocation(config, request, timeout, metadata, credentials,
                               wait_for_ready, compression)
        return retry.blocking(self._host, inv, config, with_call, repicks)

    def future(self, request: Any, timeout: float | None = None, metadata: Any = None,
               credentials: Any = None, wait_for_ready: bool | None = None,
               compression: Any = None) -> Any:
        config = self._config()
        t0 = time.perf_counter()
        if config is None:
            future = self._start(request, timeout, metadata, credentials, wait_for_ready,
                                 compression, "future")
        else:
            inv = self._invocation(config, request, timeout, metadata, credentials,
                                   wait_for_ready, compression)
            if config.retry_policy is None and config.hedging_policy is None:
                future = self._single(inv, "future")
            else:
                future = retry.future(self._host, inv, config)
        if self._host.ctx.observer is not None:
            future.add_done_callback(lambda f: call_ended(self._host, self._site, f, t0))
        return future


class _StreamResponse(_MultiCallable):
    """unary-stream and stream-stream: grpc's own response iterator/Call when one attempt
    is the whole call."""

    __slots__ = ()

    def __call__(self, request: Any, timeout: float | None = None, metadata: Any = None,
                 credentials: Any = None, wait_for_ready: bool | None = None,
                 compression: Any = None) -> Any:
        config = self._config()
        t0 = time.perf_counter()
        if config is None:
            stream = self._start(request, timeout, metadata, credentials, wait_for_ready,
                                 compression, "stream")
        else:
            inv = self._invocation(config, request, timeout, metadata, credentials,
                                   wait_for_ready, compression)
            if config.retry_policy is not None:
                stream = retry.stream(self._host, inv, config)
            else:
                stream = self._single(inv, "stream")
        if self._host.ctx.observer is not None:
            observe_stream(self._host, self._site, stream, t0)
        return stream


# grpc's ABCs are generic in their type stubs only (not subscriptable at run time).
if TYPE_CHECKING:
    _UU = grpc.UnaryUnaryMultiCallable[Any, Any]
    _SU = grpc.StreamUnaryMultiCallable[Any, Any]
    _US = grpc.UnaryStreamMultiCallable[Any, Any]
    _SS = grpc.StreamStreamMultiCallable[Any, Any]
else:
    _UU, _SU = grpc.UnaryUnaryMultiCallable, grpc.StreamUnaryMultiCallable
    _US, _SS = grpc.UnaryStreamMultiCallable, grpc.StreamStreamMultiCallable


class UnaryUnary(_UnaryResponse, _UU):
    __slots__ = ()


class StreamUnary(_UnaryResponse, _SU):
    __slots__ = ()


class UnaryStream(_StreamResponse, _US):
    __slots__ = ()


class StreamStream(_StreamResponse, _SS):
    __slots__ = ()

