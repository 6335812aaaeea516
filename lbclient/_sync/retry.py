"""gRFC A6 retries and hedging for sync calls: which driver a call gets, and the
blocking retry loop.

A method whose config has a ``retryPolicy`` gets a :class:`RetryPlan` per call (a
request stream also gets a :class:`SyncReplay`); a unary-unary method with a
``hedgingPolicy`` is hedged (other kinds run as a single attempt, as in gRPC). A unary
request larger than the replay buffer is sent once, unretried, as gRPC does.

* :func:`blocking_unary` - unary-unary blocking calls: the first attempt is the plain
  hot path (:func:`lbclient._sync.attempt.blocking`); only when it fails is the plan
  made, and it decides, the backoff sleeps on the caller's thread and the next attempt
  starts. :func:`blocking` does the same for every other unary-response case.
* :func:`future` - :class:`~lbclient._sync.future.RetryingFuture` or
  :class:`~lbclient._sync.hedge.HedgingFuture`.
* :func:`stream` - :class:`~lbclient._sync.stream.ResponseStream` with the plan.

Calls that took more than one attempt report ``grpc-previous-rpc-attempts`` in their
trailing metadata (and ``previous_rpc_attempts`` and ``retry_delay``, gRFC A96's time
between attempts, as attributes). The blocking drivers take ``repicks``, a list given by
a caller that counts transparent retries (the call observer's): every endpoint picked
but removed before the attempt could start is appended to it.
"""

from __future__ import annotations

import time
from typing import Any

import grpc

from .._core.deadline import deadline_from, remaining
from .._core.kinds import CallKind, CallSite, Invocation
from .._core.replay import DEFAULT_LIMIT, message_size
from .._core.retry_plan import RetryPlan
from ..method_config import MethodConfig
from . import attempt
from .errors import code_of, metadata_of
from .future import RetryingFuture, with_attempts
from .hedge import HedgingFuture
from .picking import Placement
from .replay import SyncReplay
from .stream import ResponseStream


def plan_for(host: Placement, inv: Invocation,
             config: MethodConfig) -> tuple[RetryPlan | None, SyncReplay | None]:
    """The call's retry plan and request replay, or ``(None, None)`` when it is sent
    once (no retryPolicy, or a unary request too large to keep for replay)."""
    policy = config.retry_policy
    if policy is None:
        return None, None
    ctx = host.ctx
    replay = None
    if inv.site.kind.streams_requests:
        replay = SyncReplay(inv.request, DEFAULT_LIMIT, inv.site.ser, ctx.replay_budget)
    elif message_size(inv.request, inv.site.ser) > DEFAULT_LIMIT:
        return None, None
    return RetryPlan(policy, inv.deadline, throttle=ctx.throttle, rng=ctx.rng), replay


def hedges(inv: Invocation, config: MethodConfig) -> bool:
    return (config.hedging_policy is not None and inv.site.kind is CallKind.UNARY_UNARY
            and message_size(inv.request, inv.site.ser) <= DEFAULT_LIMIT)


def blocking(host: Placement, inv: Invocation, config: MethodConfig, with_call: bool,
             repicks: list[str] | None = None) -> tuple[Any, Any]:
    """A unary-response blocking call with this method config: ``(response, call)``."""
    site = inv.site
    if hedges(inv, config):
        assert config.hedging_policy is not None
        return HedgingFuture(host, inv, config.hedging_policy,
                             repicks).start().blocking_result()
    plan, replay = plan_for(host, inv, config)
    if plan is None:
        return attempt.blocking(host, site, inv.request, inv.metadata, inv.credentials,
                                inv.wait_for_ready, inv.compression, with_call,
                                deadline=inv.deadline, repicks=repicks)
    return _retry(host, inv, plan, replay, None, with_call, repicks)


def blocking_unary(host: Placement, site: CallSite, config: MethodConfig, request: Any,
                   timeout: float | None, metadata: Any, credentials: Any,
                   wait_for_ready: bool | None, compression: Any, with_call: bool,
                   repicks: list[str] | None = None) -> tuple[Any, Any]:
    """A unary-unary blocking call with a ``retryPolicy``: the first attempt is the plain
    hot path, and only when it fails is the call's retry plan made (a call that succeeds
    at once pays for nothing but its deadline)."""
    policy = config.retry_policy
    assert policy is not None
    now = time.monotonic()
    deadline = deadline_from(timeout, config.timeout, now)
    if wait_for_ready is None:
        wait_for_ready = config.wait_for_ready
    cap = policy.per_attempt_recv_timeout
    tried: list[str] = []
    try:
        if repicks is None:        # the hot path's code (no call observer to tell)
            out = attempt.unary(host, site, request, None, metadata, credentials,
                                wait_for_ready, compression, with_call,
                                deadline=deadline, cap=cap, tried=tried)
            response, call = out if with_call else (out, None)
        else:
            response, call = attempt.blocking(host, site, request, metadata, credentials,
                                              wait_for_ready, compression, with_call,
                                              deadline=deadline, cap=cap,
                                              placed=tried.append, repicks=repicks)
    except grpc.RpcError as exc:
        inv = Invocation(site, request, deadline, metadata, bool(wait_for_ready),
                         credentials, compression)
        if message_size(request, site.ser) > DEFAULT_LIMIT:
            raise                          # too large to keep for replay: sent once
        ctx = host.ctx
        plan = RetryPlan(policy, deadline, throttle=ctx.throttle, rng=ctx.rng)
        plan.start_attempt(metadata)       # the attempt that just failed
        plan.tried = tried
        plan.cut = cap is not None and (deadline is None or cap < deadline - now)
        return _retry(host, inv, plan, None, exc, with_call, repicks)
    throttle = host.ctx.throttle
    if throttle is not None:
        throttle.record_call()             # the call (retry budgets count calls; the
        throttle.record_success()          # failure path's RetryPlan books it instead)
    return response, call


def _retry(host: Placement, inv: Invocation, plan: RetryPlan, replay: SyncReplay | None,
           failed: grpc.RpcError | None, with_call: bool,
           repicks: list[str] | None = None) -> tuple[Any, Any]:
    """The retry loop of a blocking call, on the caller's thread: after ``failed`` (the
    attempt that just failed, or None before the first one), the plan decides, the
    backoff sleeps here, and the next attempt starts."""
    site, ctx = inv.site, host.ctx
    last: grpc.RpcError | None = None
    try:
        while True:
            if failed is not None:
                delay = plan.failed(code_of(failed), metadata_of(failed)[0],
                                    closed=ctx.closed,
                                    replayable=replay is None or not replay.committed)
                if delay is None:
                    wrapped = with_attempts(failed, plan.previous, plan.retry_delay)
                    if wrapped is failed:
                        raise failed
                    raise wrapped from None
                last, failed = failed, None
                host.sleep(delay)
            request = inv.request
            if replay is not None:
                view = replay.view()
                if view is None and last is not None:   # committed: the last one stands
                    raise with_attempts(last, plan.previous, plan.retry_delay)
                request = view
            metadata = plan.start_attempt(inv.metadata)
            try:
                response, call = attempt.blocking(
                    host, site, request, metadata, inv.credentials, inv.wait_for_ready,
                    inv.compression, with_call, deadline=inv.deadline,
                    cap=plan.attempt_timeout(remaining(inv.deadline)),
                    exclude=plan.exclude(), placed=plan.placed, repicks=repicks)
            except grpc.RpcError as exc:
                failed = exc
                continue
            plan.succeeded()
            return response, with_attempts(call, plan.previous, plan.retry_delay)
    finally:
        plan.ended()                       # give back a retry still held (retry budgets)
        if replay is not None:
            replay.release()


def future(host: Placement, inv: Invocation, config: MethodConfig) -> Any:
    """A unary-response future with this method config."""
    if hedges(inv, config):
        assert config.hedging_policy is not None
        return HedgingFuture(host, inv, config.hedging_policy).start()
    plan, replay = plan_for(host, inv, config)
    return RetryingFuture(host, inv, plan, replay).start()


def stream(host: Placement, inv: Invocation, config: MethodConfig) -> Any:
    """A response stream (server-streaming or bidi) with this method config."""
    plan, replay = plan_for(host, inv, config)
    return ResponseStream(host, inv, plan, replay).start()
