"""The channel's retry layer: gRFC A6 retries, hedging and retry throttling.

``LoadBalancedChannel`` keeps one :class:`Retrier` (made by :func:`configure_retrier`
once a service config has a ``retryPolicy``, ``hedgingPolicy`` or ``retryThrottling``).
The multicallables in ``_calls`` hand it every call whose method config has a policy:

* :meth:`Retrier.blocking` - unary and client-streaming blocking calls: a
  ``tenacity.Retrying`` (see ``_retry_state``) around one attempt through the invoker;
  the backoff sleeps on the caller's thread. Hedged unary calls wait on a
  :class:`~lbclient._hedge.HedgingFuture`.
* :meth:`Retrier.future` - :class:`~lbclient._retry_future.RetryingFuture` or
  :class:`~lbclient._hedge.HedgingFuture`.
* :meth:`Retrier.stream` - :class:`~lbclient._retry_stream.RetryingStream`.

Every attempt is one ``Invoker`` placement: the picker is asked again with the addresses
this call already tried in ``PickInfo.exclude``, and the attempt's outcome feeds that
endpoint's stats and the picker's ``on_done`` (passive failure tracking), as any call.
Calls that were retried or hedged report ``grpc-previous-rpc-attempts`` in their
trailing metadata (``_retry_call``). Hedging applies to unary-unary calls only; a
client-streaming method with a ``hedgingPolicy`` runs as a single attempt. A unary
request larger than the replay buffer (256 KiB) is sent once, unretried, as in gRPC.

Threading: the Retrier is shared by all calls; ``throttle`` is replaced atomically on
config changes; timers run on the channel's scheduler and ``schedule`` aborts pending
ones when the balancer closes (channel close), so no retried future is left waiting.
"""

from __future__ import annotations

import itertools
import random
import threading
import time
from collections.abc import Callable
from typing import Any

import grpc

from ._hedge import HedgingFuture
from ._invoke import CallArgs, Invoker
from ._replay import DEFAULT_LIMIT, ReplayBudget, RequestReplay, message_size
from ._retry_call import with_attempts
from ._retry_future import RetryingFuture
from ._retry_state import CallRetry, Invocation
from ._retry_stream import RetryingStream
from ._scheduler import ThreadScheduler
from ._throttle import RetryThrottle
from .balancer.balancer import Balancer
from .config import ServiceConfig
from .method_config import MethodConfig, RetryThrottling


class Retrier:
    def __init__(self, invoker: Invoker, balancer: Balancer, scheduler: ThreadScheduler, *,
                 clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] = time.sleep,
                 rng: random.Random | None = None,
                 buffer_limit: int = DEFAULT_LIMIT) -> None:
        self.invoker = invoker
        self.scheduler = scheduler
        self.clock = clock
        self.sleep = sleep
        self.rng = rng or random.Random()
        self.buffer_limit = buffer_limit
        self.replay_budget = ReplayBudget()   # every call's replay buffers together
        self.throttle: RetryThrottle | None = None
        self._balancer = balancer
        self._lock = threading.Lock()
        self._ids = itertools.count()
        self._pending: dict[int, tuple[Any, Callable[[], None]]] = {}
        balancer.add_listener(self._on_balancer_change)

    # ------------------------------------------------------------------ config
    def configure(self, throttling: RetryThrottling | None) -> None:
        self.throttle = (RetryThrottle.from_config(throttling, self.throttle)
                         if throttling is not None else None)

    @property
    def closed(self) -> bool:
        return self.invoker.closed or self._balancer.closed

    # ------------------------------------------------------------------ entry points
    def blocking(self, args: CallArgs, mc: MethodConfig, request: Any,
                 deadline: float | None, metadata: Any, wait_for_ready: bool,
                 credentials: Any, compression: Any) -> tuple[Any, Any]:
        """A unary-response blocking call: ``(response, grpc.Call)`` or raise."""
        inv = Invocation(args, request, deadline, metadata, wait_for_ready, credentials,
                         compression)
        if self._hedges(args, mc, request):
            assert mc.hedging_policy is not None
            return HedgingFuture(self, inv, mc.hedging_policy).start().blocking_result()
        ctl = self._call_retry(args, mc, request, deadline)
        if ctl is None:
            return self.invoker.run(args, metadata, deadline, wait_for_ready, frozenset(),
                                    inv.attempt("with_call", request, metadata))

        def attempt() -> tuple[Any, Any]:
            md = ctl.begin_attempt(metadata)
            call = inv.attempt("with_call", ctl.request(request), md, ctl.attempt_timeout)
            return self.invoker.run(args, md, deadline, wait_for_ready, ctl.exclude(), call,
                                    ctl.tried.append)

        try:
            response, rpc = ctl.retrying(attempt)
        except grpc.RpcError as exc:
            wrapped = with_attempts(exc, ctl.previous)
            if wrapped is exc:
                raise
            raise wrapped from None
        return response, with_attempts(rpc, ctl.previous)

    def future(self, args: CallArgs, mc: MethodConfig, request: Any, deadline: float | None,
               metadata: Any, wait_for_ready: bool, credentials: Any, compression: Any) -> Any:
        """A unary-response future (a ``grpc.Future`` and ``grpc.Call``)."""
        inv = Invocation(args, request, deadline, metadata, wait_for_ready, credentials,
                         compression)
        if self._hedges(args, mc, request):
            assert mc.hedging_policy is not None
            return HedgingFuture(self, inv, mc.hedging_policy).start()
        ctl = self._call_retry(args, mc, request, deadline)
        if ctl is None:
            try:
                return self.invoker.start_async(args, metadata, deadline, wait_for_ready,
                                                frozenset(), inv.attempt("future", request,
                                                                         metadata))
            except grpc.RpcError as exc:
                return exc
        return RetryingFuture(self, inv, ctl).start()

    def stream(self, args: CallArgs, mc: MethodConfig, request: Any, deadline: float | None,
               metadata: Any, wait_for_ready: bool, credentials: Any, compression: Any) -> Any:
        """A response stream (server-streaming or bidi) with a retryPolicy."""
        inv = Invocation(args, request, deadline, metadata, wait_for_ready, credentials,
                         compression)
        ctl = self._call_retry(args, mc, request, deadline)
        if ctl is None:
            try:
                return self.invoker.start_async(args, metadata, deadline, wait_for_ready,
                                                frozenset(), inv.attempt("__call__", request,
                                                                         metadata))
            except grpc.RpcError as exc:
                return exc
        return RetryingStream(self, inv, ctl).start()

    # ------------------------------------------------------------------ helpers
    def _hedges(self, args: CallArgs, mc: MethodConfig, request: Any) -> bool:
        return (mc.hedging_policy is not None and args.kind == "unary_unary"
                and message_size(request, args.ser) <= self.buffer_limit)

    def _call_retry(self, args: CallArgs, mc: MethodConfig, request: Any,
                    deadline: float | None) -> CallRetry | None:
        """The call's retry state, or None when it is sent once (no retryPolicy, or a
        unary request too large to keep for replay)."""
        policy = mc.retry_policy
        if policy is None:
            return None
        replay = None
        if args.kind.startswith("stream_"):
            replay = RequestReplay(request, self.buffer_limit, args.ser,
                                   budget=self.replay_budget)
        elif message_size(request, args.ser) > self.buffer_limit:
            return None
        return CallRetry(policy, deadline, throttle=self.throttle, closed=lambda: self.closed,
                         clock=self.clock, sleep=self.sleep, rng=self.rng, replay=replay)

    def schedule(self, delay: float, run: Callable[[], None], abort: Callable[[], None], *,
                 may_block: bool = False) -> Callable[[], None]:
        """Run ``run()`` after ``delay`` seconds on the timer thread (on a thread of its
        own when it ``may_block``, e.g. a waitForReady pick); ``abort()`` instead if the
        channel closes first. Returns a function that cancels it (runs neither)."""
        key = next(self._ids)

        def fire() -> None:
            with self._lock:
                if self._pending.pop(key, None) is None:
                    return
            if may_block:
                threading.Thread(target=run, name="lbclient-retry", daemon=True).start()
            else:
                run()

        with self._lock:
            handle = None if self.closed else self.scheduler.call_later(delay, fire)
            if handle is not None and not handle.cancelled:
                self._pending[key] = (handle, abort)
        if handle is None or handle.cancelled:
            abort()

        def cancel() -> None:
            with self._lock:
                entry = self._pending.pop(key, None)
            if entry is not None:
                entry[0].cancel()
        return cancel

    def _on_balancer_change(self) -> None:
        if not self._balancer.closed:
            return
        with self._lock:
            entries = list(self._pending.values())
            self._pending.clear()
        for handle, abort in entries:
            handle.cancel()
            abort()


def configure_retrier(previous: Retrier | None, config: ServiceConfig, invoker: Invoker,
                      balancer: Balancer, scheduler: ThreadScheduler) -> Retrier | None:
    """The channel's retrier for a newly applied service config: None while no config
    asked for retries, hedging or throttling; once made it is kept (its throttle is
    updated) so calls in flight and pending timers stay valid."""
    wanted = config.retry_throttling is not None or any(
        mc.retry_policy is not None or mc.hedging_policy is not None
        for mc in config.method_configs)
    if previous is None and not wanted:
        return None
    retrier = previous or Retrier(invoker, balancer, scheduler)
    retrier.configure(config.retry_throttling)
    return retrier
