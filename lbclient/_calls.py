"""The four grpc multicallables of :class:`LoadBalancedChannel`.

Each call: look up the method config (default deadline, waitForReady, retry policy),
then either run one attempt through the :class:`Invoker` or hand the call to the retry
layer (``_retry.Retrier``: ``blocking``/``future``/``stream`` take the call's own
arguments and build every attempt themselves). Responses, errors, metadata and
``grpc.Call`` objects are grpc's own (the retry layer returns look-alikes that also
report ``grpc-previous-rpc-attempts``), so callers and interceptors see what a plain
grpc channel gives them.

Deadline: the caller's timeout, or the method config's ``timeout`` when that is shorter
or the caller gave none; it is fixed here, once, and every attempt shares it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import grpc

from ._invoke import CallArgs, deadline_from

if TYPE_CHECKING:
    from .channel import LoadBalancedChannel


class _Base:
    __slots__ = ("_ch", "_args")

    def __init__(self, channel: LoadBalancedChannel, kind: str, method: str, ser: Any,
                 deser: Any, registered: bool) -> None:
        self._ch = channel
        self._args = CallArgs(kind, method, ser, deser, registered)

    def _settings(self, timeout: float | None,
                  wait_for_ready: bool | None) -> tuple[float | None, bool, Any]:
        mc = self._ch._method_config(self._args.method)
        deadline = deadline_from(timeout, mc.timeout if mc is not None else None)
        if wait_for_ready is None and mc is not None:
            wait_for_ready = mc.wait_for_ready
        return deadline, bool(wait_for_ready), mc


class _UnaryLike(_Base):
    """unary-unary and stream-unary: a blocking call, ``with_call`` and ``future``."""

    __slots__ = ()

    def _blocking(self, request: Any, timeout: float | None, metadata: Any, credentials: Any,
                  wait_for_ready: bool | None, compression: Any) -> tuple[Any, Any]:
        deadline, wfr, mc = self._settings(timeout, wait_for_ready)

        def call(multicallable: Any, t: float | None) -> tuple[Any, Any]:
            return multicallable.with_call(request, timeout=t, metadata=metadata,
                                           credentials=credentials, wait_for_ready=wfr,
                                           compression=compression)

        retry = self._ch._retrier
        if retry is not None and mc is not None and (mc.retry_policy or mc.hedging_policy):
            return retry.blocking(self._args, mc, request, deadline, metadata, wfr,
                                  credentials, compression)
        return self._ch._invoker.run(self._args, metadata, deadline, wfr, frozenset(), call)

    def __call__(self, request: Any, timeout: float | None = None, metadata: Any = None,
                 credentials: Any = None, wait_for_ready: bool | None = None,
                 compression: Any = None) -> Any:
        return self._blocking(request, timeout, metadata, credentials, wait_for_ready,
                              compression)[0]

    def with_call(self, request: Any, timeout: float | None = None, metadata: Any = None,
                  credentials: Any = None, wait_for_ready: bool | None = None,
                  compression: Any = None) -> tuple[Any, Any]:
        return self._blocking(request, timeout, metadata, credentials, wait_for_ready,
                              compression)

    def future(self, request: Any, timeout: float | None = None, metadata: Any = None,
               credentials: Any = None, wait_for_ready: bool | None = None,
               compression: Any = None) -> Any:
        deadline, wfr, mc = self._settings(timeout, wait_for_ready)

        def call(multicallable: Any, t: float | None) -> Any:
            return multicallable.future(request, timeout=t, metadata=metadata,
                                        credentials=credentials, wait_for_ready=wfr,
                                        compression=compression)

        retry = self._ch._retrier
        if retry is not None and mc is not None and (mc.retry_policy or mc.hedging_policy):
            return retry.future(self._args, mc, request, deadline, metadata, wfr,
                                credentials, compression)
        try:
            return self._ch._invoker.start_async(self._args, metadata, deadline, wfr,
                                                 frozenset(), call)
        except grpc.RpcError as exc:
            return exc  # a LocalRpcError: a completed, failed future and grpc.Call


class _StreamResponse(_Base):
    """unary-stream and stream-stream: returns grpc's own response iterator/Call."""

    __slots__ = ()

    def __call__(self, request: Any, timeout: float | None = None, metadata: Any = None,
                 credentials: Any = None, wait_for_ready: bool | None = None,
                 compression: Any = None) -> Any:
        deadline, wfr, mc = self._settings(timeout, wait_for_ready)

        def call(multicallable: Any, t: float | None) -> Any:
            return multicallable(request, timeout=t, metadata=metadata,
                                 credentials=credentials, wait_for_ready=wfr,
                                 compression=compression)

        retry = self._ch._retrier
        if retry is not None and mc is not None and mc.retry_policy:
            return retry.stream(self._args, mc, request, deadline, metadata, wfr,
                                credentials, compression)
        try:
            return self._ch._invoker.start_async(self._args, metadata, deadline, wfr,
                                                 frozenset(), call)
        except grpc.RpcError as exc:
            return exc  # iterating it raises it, as with grpc's own failed streams


class UnaryUnary(_UnaryLike, grpc.UnaryUnaryMultiCallable):
    __slots__ = ()


class StreamUnary(_UnaryLike, grpc.StreamUnaryMultiCallable):
    __slots__ = ()


class UnaryStream(_StreamResponse, grpc.UnaryStreamMultiCallable):
    __slots__ = ()


class StreamStream(_StreamResponse, grpc.StreamStreamMultiCallable):
    __slots__ = ()
