"""Placing one RPC attempt on a picked endpoint and reporting how it ended.

Contract: for every placed attempt, ``EndpointStats.begin()`` runs before the call starts
and ``EndpointStats.end()`` plus the pick's ``on_done`` run exactly once when it ends
(unary: before returning/raising; futures and streams: from grpc's completion callback,
so cancellation, deadlines and abandoned streams are included).
"""

from __future__ import annotations

import logging
import threading
import time
import weakref
from collections.abc import Callable
from typing import Any

import grpc

from ._rpc_error import LocalRpcError
from .balancer.balancer import Balancer
from .balancer.picker import CallOutcome, PickError, PickInfo, PickResult
from .health.codes import SERVER_FAILURE_CODES as _SERVER_FAILURE_CODES

log = logging.getLogger("lbclient.channel")

# Status codes that speak of the server rather than the request: what lbclient counts as
# an endpoint failure by default (gRPC's outlier detection counts every non-OK status).
# Defined in lbclient.health.codes (pure) so the balancer can share it.
SERVER_FAILURE_CODES = _SERVER_FAILURE_CODES

# How many times a call is re-picked when its endpoint was closed between pick and start.
_REPICKS = 3


class CallArgs:
    """What a multicallable knows about its method."""

    __slots__ = ("kind", "method", "ser", "deser", "registered")

    def __init__(self, kind: str, method: str, ser: Any, deser: Any, registered: bool) -> None:
        self.kind, self.method, self.ser, self.deser = kind, method, ser, deser
        self.registered = registered


def remaining(deadline: float | None) -> float | None:
    return None if deadline is None else deadline - time.monotonic()


class Completion:
    """Ends one attempt exactly once (thread-safe; extra calls are ignored)."""

    __slots__ = ("_result", "_t0", "_done", "_lock", "failure_codes", "listener")

    def endpoint_closed(self) -> bool:
        return bool(getattr(self._result.candidate.handle, "closed", False))

    def endpoint_retiring(self) -> bool:
        """The endpoint was removed before this attempt began: its connection closes
        once its calls end, maybe before this one starts (read after ``begin()``, so a
        removal ordered after the begin waits for this attempt instead)."""
        return self._result.candidate.stats.retiring

    @property
    def address(self) -> str:
        """The endpoint this attempt was placed on."""
        return self._result.candidate.address

    def __init__(self, result: PickResult, failure_codes: frozenset[str],
                 listener: Callable[[str, CallOutcome], None] | None = None) -> None:
        self._result = result
        self._t0 = time.perf_counter()
        self._done = False
        self._lock = threading.Lock()
        self.failure_codes = failure_codes
        self.listener = listener
        if not result.counted:
            result.candidate.stats.begin()

    def finish(self, code: grpc.StatusCode, call: Any = None) -> None:
        """End the attempt with ``code``; metadata is read from the sync ``call``."""
        trailing = initial = ()
        if call is not None and not self._done:
            try:
                trailing = call.trailing_metadata() or ()
                initial = call.initial_metadata() or ()
            except Exception:  # a call that never started has no metadata
                pass
        self.finish_with(code.name, trailing, initial)

    def finish_with(self, code: str, trailing: Any = (), initial: Any = ()) -> None:
        """End the attempt with a status code name and metadata already in hand (the
        asyncio channel's path, whose metadata getters are coroutines)."""
        with self._lock:
            if self._done:
                return
            self._done = True
        outcome = CallOutcome(code, time.perf_counter() - self._t0, tuple(trailing),
                              tuple(initial))
        if code == "UNAVAILABLE":
            # The connection may have just gone down: re-check it now rather than at the
            # next connectivity sweep, so the next pick already avoids it.
            poll = getattr(self._result.candidate.handle, "poll", None)
            if poll is not None:
                poll()
        result = self._result
        result.candidate.stats.end(outcome, code in self.failure_codes)
        if result.on_done is not None:
            try:
                result.on_done(outcome)
            except Exception:
                log.exception("on_done callback of the picker failed")
        if self.listener is not None:
            try:
                self.listener(result.candidate.address, outcome)
            except Exception:
                log.exception("call listener failed")


class Invoker:
    """Picks endpoints for calls and starts attempts on their connections."""

    def __init__(self, balancer: Balancer) -> None:
        self.balancer = balancer
        self.closed = False
        self.failure_codes = SERVER_FAILURE_CODES
        self.call_listener: Callable[[str, CallOutcome], None] | None = None

    def pick(self, method: str, metadata: Any, deadline: float | None,
             wait_for_ready: bool, exclude: frozenset[str] = frozenset()) -> PickResult:
        """Ask the current picker; with ``wait_for_ready`` wait (within the deadline) for a
        picker that can place the call, else fail at once with UNAVAILABLE."""
        if self.closed:
            raise LocalRpcError(grpc.StatusCode.CANCELLED, "lbclient channel is closed")
        info = PickInfo(method, metadata or (), exclude)
        bal = self.balancer
        generation = bal.generation
        try:
            return bal.picker.pick(info)
        except PickError as exc:
            if not wait_for_ready and not exc.queue:
                raise LocalRpcError(grpc.StatusCode.UNAVAILABLE, self._explain(exc)) from None
            reason = str(exc)
        bal.request_connections()
        while True:
            left = remaining(deadline)
            if left is not None and left <= 0:
                raise LocalRpcError(grpc.StatusCode.DEADLINE_EXCEEDED,
                                    f"deadline exceeded while waiting for an endpoint ({reason})")
            generation = bal.wait_for_change(generation, 1.0 if left is None else min(left, 1.0))
            if self.closed:
                raise LocalRpcError(grpc.StatusCode.CANCELLED, "lbclient channel is closed")
            try:
                return bal.picker.pick(info)
            except PickError as exc:
                if not wait_for_ready and not exc.queue:
                    raise LocalRpcError(grpc.StatusCode.UNAVAILABLE,
                                        self._explain(exc)) from None
                reason = str(exc)

    def _explain(self, error: PickError) -> str:
        """A failed pick's reason plus grpc's last connection error of one failed
        endpoint (e.g. a server certificate that does not verify), if there is one."""
        for rec in self.balancer.records():
            explain = getattr(rec.handle, "connection_error", None)
            detail = explain() if explain is not None else None
            if detail:
                return f"{error}; last connection error: {detail}"
        return str(error)

    def place(self, args: CallArgs, metadata: Any, deadline: float | None,
              wait_for_ready: bool, exclude: frozenset[str] = frozenset(),
              ) -> tuple[Any, Completion]:
        """Pick an endpoint and return its multicallable for this method plus the
        attempt's :class:`Completion` (begun, not finished: the caller must finish it)."""
        result = self.pick(args.method, metadata, deadline, wait_for_ready, exclude)
        sub = result.candidate.handle
        mc = sub.callable(args.kind, args.method, args.ser, args.deser, args.registered)
        return mc, Completion(result, self.failure_codes, self.call_listener)

    def run(self, args: CallArgs, metadata: Any, deadline: float | None,
            wait_for_ready: bool, exclude: frozenset[str],
            call: Callable[[Any, float | None], tuple[Any, Any]],
            on_placed: Callable[[str], None] | None = None) -> tuple[Any, Any]:
        """One blocking attempt: ``call(multicallable, timeout) -> (response, grpc.Call)``.
        Re-picks (bounded) when the endpoint was closed between pick and start, which
        grpc reports as ValueError. ``on_placed(address)`` runs for every placement (the
        retry layer uses it to avoid endpoints already tried)."""
        for attempt in range(_REPICKS):
            mc, done = self.place(args, metadata, deadline, wait_for_ready, exclude)
            if done.endpoint_retiring() and attempt < _REPICKS - 1:
                done.finish(grpc.StatusCode.CANCELLED)   # removed meanwhile: pick again
                continue
            if on_placed is not None:
                on_placed(done.address)
            try:
                response, rpc = call(mc, remaining(deadline))
            except grpc.RpcError as exc:
                done.finish(status_of(exc), exc)
                raise
            except ValueError:
                done.finish(grpc.StatusCode.CANCELLED)
                if attempt == _REPICKS - 1 or not done.endpoint_closed():
                    raise
                continue
            except BaseException:
                done.finish(grpc.StatusCode.CANCELLED)
                raise
            done.finish(grpc.StatusCode.OK, rpc)
            return response, rpc
        raise AssertionError("unreachable")

    def start_async(self, args: CallArgs, metadata: Any, deadline: float | None,
                    wait_for_ready: bool, exclude: frozenset[str],
                    call: Callable[[Any, float | None], Any],
                    on_placed: Callable[[str], None] | None = None) -> Any:
        """Start a future or a response stream: ``call(multicallable, timeout)`` returns a
        grpc rendezvous; the attempt finishes from grpc's completion callback.
        ``on_placed`` is as in :meth:`run`."""
        for attempt in range(_REPICKS):
            mc, done = self.place(args, metadata, deadline, wait_for_ready, exclude)
            if done.endpoint_retiring() and attempt < _REPICKS - 1:
                done.finish(grpc.StatusCode.CANCELLED)   # removed meanwhile: pick again
                continue
            if on_placed is not None:
                on_placed(done.address)
            try:
                rpc = call(mc, remaining(deadline))
            except ValueError:
                done.finish(grpc.StatusCode.CANCELLED)
                if attempt == _REPICKS - 1 or not done.endpoint_closed():
                    raise
                continue
            except BaseException:
                done.finish(grpc.StatusCode.CANCELLED)
                raise
            finish_when_done(rpc, done)
            return rpc
        raise AssertionError("unreachable")


def status_of(call: Any) -> grpc.StatusCode:
    try:
        code = call.code()
    except Exception:
        code = None
    return code if isinstance(code, grpc.StatusCode) else grpc.StatusCode.UNKNOWN


def finish_when_done(rpc: Any, done: Completion) -> None:
    """Finish ``done`` when the grpc call/future ``rpc`` terminates (at once if it has).

    The callback holds ``rpc`` only weakly: grpc keeps callbacks alive while the call is
    in flight, and a strong reference would stop an abandoned response stream from being
    garbage-collected (which is how grpc cancels it). A collected call ended CANCELLED.
    """
    ref = weakref.ref(rpc)

    def on_terminated() -> None:
        live = ref()
        try:
            if live is None:
                done.finish(grpc.StatusCode.CANCELLED)
            else:
                done.finish_with(status_of(live).name, live.trailing_metadata() or (),
                                 _initial_metadata_now(live))
        except Exception:  # never raise into grpc's callback thread
            log.exception("finishing a call failed")

    if not rpc.add_callback(on_terminated):
        on_terminated()


def _initial_metadata_now(call: Any) -> Any:
    """The call's initial metadata if grpc already has it, without waiting. On grpc's
    callback thread ``initial_metadata()`` can deadlock: a trailers-only response (a
    stream failed before any message) completes its status batch first, and the
    initial-metadata batch would be handled by that very thread. Such a response has
    no initial metadata anyway."""
    state = getattr(call, "_state", None)   # grpc's _RPCState (private; absent: assume none)
    if state is None:
        try:
            return call.initial_metadata() or ()   # not a grpc rendezvous (e.g. LocalRpcError)
        except Exception:
            return ()
    return getattr(state, "initial_metadata", None) or ()


def deadline_from(timeout: float | None, default: float | None) -> float | None:
    """The call's deadline: the caller's timeout, or the method config's default, the
    shorter of the two when both are given."""
    if default is not None and (timeout is None or default < timeout):
        timeout = default
    return None if timeout is None else time.monotonic() + timeout
