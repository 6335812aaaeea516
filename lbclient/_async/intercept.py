"""Interceptors on an asyncio endpoint connection: what they see and what they learn.

An endpoint's grpc.aio channel carries the interceptors of the user (``interceptors=``)
and of whatever wraps ``grpc.aio.insecure_channel`` / ``secure_channel`` (OpenTelemetry's
``GrpcAioInstrumentorClient`` adds its own there). Two things follow:

* :func:`raw_view` - lbclient's own calls on the connection (health probes, the
  connection-error probe) must meet none of them, as grpc.aio's own internal calls never
  meet a channel's interceptors: they go through a view of the same grpc.aio channel (the
  same connection) with no interceptors.
* :func:`tag_spans` - when the connection has interceptors and OpenTelemetry is
  installed, one more goes innermost: it names the endpoint (``server.address``,
  ``server.port``, ``network.peer.*``) on the attempt's client span, i.e. the current
  span when it is a recording CLIENT span named after the call's method.

Both use grpc.aio's ``Channel`` internals (its four interceptor lists); when a channel is
not grpc.aio's own (some wrapper object), :func:`raw_view` returns the channel itself and
:func:`tag_spans` does nothing.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, cast

import grpc.aio
from grpc.aio import _channel as _aio_channel

_LISTS = ("_unary_unary_interceptors", "_unary_stream_interceptors",
          "_stream_unary_interceptors", "_stream_stream_interceptors")


class _View(_aio_channel.Channel):
    """A grpc.aio Channel sharing another's grpc core channel (never closes it)."""

    def __del__(self) -> None:
        """The viewed channel owns the connection: dropping the view closes nothing."""


def _interceptor_lists(channel: Any) -> list[list[Any]] | None:
    if not isinstance(channel, _aio_channel.Channel):
        return None
    lists = [getattr(channel, name, None) for name in _LISTS]
    if not all(isinstance(lst, list) for lst in lists):
        return None
    return lists  # type: ignore[return-value]


def has_interceptors(channel: Any) -> bool:
    lists = _interceptor_lists(channel)
    return bool(lists and any(lists))


def raw_view(channel: grpc.aio.Channel) -> grpc.aio.Channel:
    """``channel`` without its interceptors: a grpc.aio Channel on the same connection
    whose calls meet none (``channel`` itself when it has none, or is not grpc.aio's).
    Closing ``channel`` ends the view's calls too; the view itself is never closed."""
    if not has_interceptors(channel):
        return channel
    view: Any = _View.__new__(_View)
    view.__dict__.update(channel.__dict__)
    for name in _LISTS:
        setattr(view, name, [])
    return cast(grpc.aio.Channel, view)


def tag_spans(channel: grpc.aio.Channel, address: str) -> None:
    """Put the endpoint-naming interceptor innermost on ``channel`` (see the module doc).
    Call before any multicallable of ``channel`` is made."""
    lists = _interceptor_lists(channel)
    if not lists or not any(lists):
        return
    try:
        from opentelemetry import trace
    except ImportError:
        return
    host, _, port = address.rpartition(":")
    host = host.strip("[]")
    attributes: dict[str, Any] = {"server.address": host, "network.peer.address": host}
    if port.isdigit():
        attributes["server.port"] = attributes["network.peer.port"] = int(port)
    client = trace.SpanKind.CLIENT
    current = trace.get_current_span

    def tag(details: Any) -> None:
        span = current()
        if not span.is_recording() or getattr(span, "kind", None) is not client:
            return
        method = details.method
        if isinstance(method, bytes):
            method = method.decode("utf-8", "replace")
        if getattr(span, "name", None) == method:
            span.set_attributes(attributes)

    for lst, kind in zip(lists, (_UnaryUnary, _UnaryStream, _StreamUnary, _StreamStream),
                         strict=True):
        lst.append(kind(tag))   # grpc.aio files an interceptor under one kind only


class _Tagger:
    def __init__(self, tag: Callable[[Any], None]) -> None:
        self._tag = tag


class _UnaryUnary(_Tagger, grpc.aio.UnaryUnaryClientInterceptor):
    async def intercept_unary_unary(self, continuation: Any, details: Any,
                                    request: Any) -> Any:
        self._tag(details)
        return await continuation(details, request)


class _UnaryStream(_Tagger, grpc.aio.UnaryStreamClientInterceptor):
    async def intercept_unary_stream(self, continuation: Any, details: Any,
                                     request: Any) -> Any:
        self._tag(details)
        return await continuation(details, request)


class _StreamUnary(_Tagger, grpc.aio.StreamUnaryClientInterceptor):
    async def intercept_stream_unary(self, continuation: Any, details: Any,
                                     request_iterator: Any) -> Any:
        self._tag(details)
        return await continuation(details, request_iterator)


class _StreamStream(_Tagger, grpc.aio.StreamStreamClientInterceptor):
    async def intercept_stream_stream(self, continuation: Any, details: Any,
                                      request_iterator: Any) -> Any:
        self._tag(details)
        return await continuation(details, request_iterator)
