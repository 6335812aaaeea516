"""One attempt of a sync call on a picked endpoint, and how its end is reported.

* :func:`unary` - the hot path: a unary-response blocking call of a method without a
  method config on a channel without call observers or listeners (``CallSite.fast``).
  Pick, begin, call the endpoint's grpc multicallable on the caller's thread, record the
  attempt, return; anything out of the ordinary (no pick yet, the pick wants metadata,
  the endpoint was removed meanwhile) goes to :func:`blocking`.
* :func:`blocking` - unary-response blocking calls in general: pick (or wait), begin,
  call, end the attempt, return. It uses grpc's plain ``__call__`` (no rendezvous object,
  no metadata read) unless the caller asked for ``with_call`` or the pick wants metadata.
* :func:`start` - a future or a response stream on an already picked endpoint: returns
  what grpc (or an interceptor wrapping the endpoint channel) returned, and ends the
  attempt from its completion callback (``add_done_callback`` for futures; for streams
  ``add_callback``, holding the call only weakly so an abandoned stream is still
  collected, which is how grpc cancels it). A response stream that is not a grpc call
  (an interceptor's generator, say) is wrapped in :class:`TrackedStream`.

Both pick again (at most ``REPICKS`` times) when the endpoint was removed between the
pick and the start (its connection is closing). See ``lbclient._core.attempt`` for the
accounting contract.
"""

from __future__ import annotations

import time
import weakref
from collections.abc import Callable, Iterator
from typing import Any

import grpc

from .._core.attempt import REPICKS, Attempt, end_attempt
from .._core.kinds import CallSite
from ..balancer.picker import PickError, PickInfo, PickResult
from .errors import code_of, details_of, metadata_of
from .picking import Placement

_clock = time.perf_counter


def pick_info(site: CallSite, metadata: Any, exclude: frozenset[str] = frozenset()) -> PickInfo:
    """What the picker sees of a call (the site's shared one when there is nothing)."""
    if not metadata and not exclude:
        return site.info
    return PickInfo(site.method, metadata or (), exclude)


def unary(host: Placement, site: CallSite, request: Any, timeout: float | None,
          metadata: Any, credentials: Any, wait_for_ready: bool | None, compression: Any,
          with_call: bool = False, *, deadline: float | None = None,
          cap: float | None = None, tried: list[str] | None = None) -> Any:
    """The hot path (see the module docstring): the response, or ``(response, call)``
    with ``with_call``; or grpc's RpcError. The first attempt of a retried call passes
    its ``deadline`` (instead of ``timeout``), ``cap`` (``perAttemptRecvTimeout``) and
    ``tried`` (the endpoint is appended to it)."""
    ctx = host.ctx
    info = PickInfo(site.method, metadata) if metadata else site.info
    try:
        result = ctx.balancer.picker.pick(info)
    except PickError as exc:   # not yet, or no endpoint: wait (or fail), then go on
        if deadline is None and timeout is not None:
            deadline = time.monotonic() + timeout
        first = host.wait(info, exc, deadline, bool(wait_for_ready))
        return _general(host, site, request, metadata, credentials, wait_for_ready,
                        compression, with_call, None, deadline, cap, tried, first)
    candidate, on_done, counted, wants_metadata = result
    stats = candidate.stats
    if wants_metadata:
        return _general(host, site, request, metadata, credentials, wait_for_ready,
                        compression, with_call, timeout, deadline, cap, tried, result)
    if not counted:
        stats.begin()
    handle = candidate.handle
    if stats.retiring:         # removed meanwhile (read after the begin): pick again
        stats.discard()
        return _general(host, site, request, metadata, credentials, wait_for_ready,
                        compression, with_call, timeout, deadline, cap, tried)
    if deadline is not None:
        timeout = deadline - time.monotonic()
    if cap is not None and (timeout is None or cap < timeout):
        timeout = cap
    if tried is not None:
        tried.append(candidate.address)
    mc = handle.calls.get(site) or handle.callable(site)
    t0 = _clock()
    try:
        if with_call:
            out = mc.with_call(request, timeout=timeout, metadata=metadata,
                               credentials=credentials, wait_for_ready=wait_for_ready,
                               compression=compression)
        else:
            out = mc(request, timeout=timeout, metadata=metadata, credentials=credentials,
                     wait_for_ready=wait_for_ready, compression=compression)
    except grpc.RpcError as exc:
        end_attempt(ctx, result, _clock() - t0, code_of(exc), *metadata_of(exc),
                    details_of(exc))
        raise
    except ValueError:         # grpc: the endpoint's channel was closed meanwhile
        end_attempt(ctx, result, _clock() - t0, "CANCELLED")
        if not handle.closed:
            raise
        if tried is not None:
            tried.pop()
        return _general(host, site, request, metadata, credentials, wait_for_ready,
                        compression, with_call, timeout, deadline, cap, tried)
    except BaseException:
        end_attempt(ctx, result, _clock() - t0, "CANCELLED")
        raise
    if on_done is None and not stats.has_end_listeners:
        stats.record(_clock() - t0, False)
    else:
        end_attempt(ctx, result, _clock() - t0, "OK")
    return out


def _general(host: Placement, site: CallSite, request: Any, metadata: Any, credentials: Any,
             wait_for_ready: bool | None, compression: Any, with_call: bool,
             timeout: float | None, deadline: float | None, cap: float | None,
             tried: list[str] | None, first: PickResult | None = None) -> Any:
    """What :func:`unary` hands over to :func:`blocking` (same return convention)."""
    out = blocking(host, site, request, metadata, credentials, wait_for_ready, compression,
                   with_call, timeout=timeout, deadline=deadline, cap=cap, first=first,
                   placed=None if tried is None else tried.append)
    return out if with_call else out[0]


def blocking(host: Placement, site: CallSite, request: Any, metadata: Any, credentials: Any,
             wait_for_ready: bool | None, compression: Any, with_call: bool, *,
             timeout: float | None = None, deadline: float | None = None,
             cap: float | None = None, exclude: frozenset[str] = frozenset(),
             placed: Callable[[str], None] | None = None,
             repicks: list[str] | None = None,
             first: PickResult | None = None) -> tuple[Any, Any]:
    """One blocking attempt: ``(response, grpc.Call or None)``, or grpc's RpcError.

    ``timeout`` is the caller's (a call without a deadline of its own yet); ``deadline``
    a monotonic deadline shared with other attempts; ``cap`` shortens this attempt's
    timeout (``perAttemptRecvTimeout``); ``placed(address)`` is told where it went;
    ``repicks`` gets the address of every endpoint picked but removed before the
    attempt could start (it picks again: a transparent retry); ``first``: a pick made
    already (not yet begun)."""
    ctx = host.ctx
    info = pick_info(site, metadata, exclude)
    for repick in range(REPICKS):
        try:
            if first is not None:
                result, first = first, None
            else:
                result = ctx.balancer.picker.pick(info)
        except PickError as exc:
            if deadline is None and timeout is not None:
                deadline = time.monotonic() + timeout
            result = host.wait(info, exc, deadline, bool(wait_for_ready))
        candidate = result.candidate
        stats = candidate.stats
        if not result.counted:
            stats.begin()
        if stats.retiring and repick < REPICKS - 1:
            end_attempt(ctx, result, 0.0, "CANCELLED")   # removed meanwhile: pick again
            if repicks is not None:
                repicks.append(candidate.address)
            continue
        observer = ctx.observer
        observed = None
        if observer is not None:
            observed = site
            observer.attempt_started(site)
        if placed is not None:
            placed(candidate.address)
        t = timeout if deadline is None else deadline - time.monotonic()
        if cap is not None and (t is None or cap < t):
            t = cap
        handle = candidate.handle
        mc = handle.calls.get(site) or handle.callable(site)
        t0 = _clock()
        try:
            if with_call or result.wants_metadata:
                response, call = mc.with_call(request, timeout=t, metadata=metadata,
                                              credentials=credentials,
                                              wait_for_ready=wait_for_ready,
                                              compression=compression)
            else:
                response = mc(request, timeout=t, metadata=metadata, credentials=credentials,
                              wait_for_ready=wait_for_ready, compression=compression)
                call = None
        except grpc.RpcError as exc:
            end_attempt(ctx, result, _clock() - t0, code_of(exc), *metadata_of(exc),
                        details_of(exc), observed)
            raise
        except ValueError:        # grpc: the endpoint's channel was closed meanwhile
            end_attempt(ctx, result, _clock() - t0, "CANCELLED", site=observed)
            if repick == REPICKS - 1 or not handle.closed:
                raise
            if repicks is not None:
                repicks.append(candidate.address)
            continue
        except BaseException:
            end_attempt(ctx, result, _clock() - t0, "CANCELLED", site=observed)
            raise
        latency = _clock() - t0
        if result.on_done is None and ctx.call_listener is None and \
                not stats.has_end_listeners and observer is None:
            stats.record(latency, False)
        elif call is not None and result.wants_metadata:
            end_attempt(ctx, result, latency, "OK", *metadata_of(call), site=observed)
        else:
            end_attempt(ctx, result, latency, "OK", site=observed)
        return response, call
    raise AssertionError("unreachable")


def start(host: Placement, site: CallSite, result: PickResult, how: str, request: Any,
          timeout: float | None, metadata: Any, credentials: Any, wait_for_ready: bool | None,
          compression: Any) -> tuple[Any, Attempt] | None:
    """Start a future (``how`` "future") or a response stream ("stream") on the picked
    endpoint; None when the endpoint was removed meanwhile (pick again). Raises what
    grpc raises when it cannot start the call."""
    attempt = Attempt(host.ctx, result, site)
    if attempt.retired:
        attempt.end("CANCELLED")
        return None
    handle = result.candidate.handle
    mc = handle.calls.get(site) or handle.callable(site)
    try:
        if how == "future":
            rpc = mc.future(request, timeout=timeout, metadata=metadata,
                            credentials=credentials, wait_for_ready=wait_for_ready,
                            compression=compression)
        else:
            rpc = mc(request, timeout=timeout, metadata=metadata, credentials=credentials,
                     wait_for_ready=wait_for_ready, compression=compression)
    except ValueError:
        attempt.end("CANCELLED")
        if handle.closed:
            return None
        raise
    except BaseException:
        attempt.end("CANCELLED")
        raise
    if how == "future":
        rpc.add_done_callback(_FutureDone(attempt))
        return rpc, attempt
    if not isinstance(rpc, grpc.RpcContext):
        return TrackedStream(rpc, attempt), attempt
    finish_when_done(rpc, attempt)
    return rpc, attempt


class _FutureDone:
    """A future's done callback: ends the attempt with the future's status."""

    __slots__ = ("_attempt",)

    def __init__(self, attempt: Attempt) -> None:
        self._attempt = attempt

    def __call__(self, future: Any) -> None:
        try:
            end_with(self._attempt, future)
        except Exception:   # never raise into grpc's callback thread
            pass


def end_with(attempt: Attempt, call: Any) -> None:
    """End ``attempt`` with a finished grpc call's status (metadata only when wanted or
    failed)."""
    code = "CANCELLED" if call is None else code_of(call)
    if call is None or (code == "OK" and not attempt.wants_metadata):
        attempt.end(code)
    else:
        attempt.end(code, *metadata_of(call), details_of(call))


def finish_when_done(rpc: Any, attempt: Attempt) -> None:
    """End ``attempt`` when the grpc call ``rpc`` terminates (at once if it has). The
    callback holds ``rpc`` weakly: grpc keeps callbacks while the call runs, and a strong
    reference would keep an abandoned stream from being collected (and so cancelled). A
    collected call ended CANCELLED."""
    ref = weakref.ref(rpc)

    def on_terminated() -> None:
        try:
            end_with(attempt, ref())
        except Exception:   # never raise into grpc's callback thread
            pass

    if not rpc.add_callback(on_terminated):
        on_terminated()


class TrackedStream:
    """A response stream that is not a grpc call (e.g. an interceptor's generator),
    with its attempt ended when iteration ends or raises, when it is cancelled, or when
    it is collected (an abandoned stream: CANCELLED). Everything else is delegated."""

    def __init__(self, stream: Any, attempt: Attempt) -> None:
        self._stream = stream
        self._it: Iterator[Any] = iter(stream)
        self._attempt = attempt
        weakref.finalize(self, attempt.end, "CANCELLED")

    def __iter__(self) -> TrackedStream:
        return self

    def __next__(self) -> Any:
        try:
            return next(self._it)
        except StopIteration:
            self._attempt.end("OK")
            raise
        except grpc.RpcError as exc:
            self._attempt.end(code_of(exc), *metadata_of(exc), details_of(exc))
            raise

    def cancel(self) -> bool:
        cancel = getattr(self._stream, "cancel", None)
        if cancel is not None:
            done = bool(cancel())
        else:
            close = getattr(self._stream, "close", None)
            if close is not None:
                close()
            done = True
        self._attempt.end("CANCELLED")
        return done

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)
