"""How a grpc.aio call ended, learned from its done callback without keeping it alive.

grpc.aio's ``Call.add_done_callback(cb)`` stores ``partial(cb, call)`` on the C-layer call
object, which grpc holds while the RPC runs: such a callback keeps the Python call alive,
and grpc.aio cancels an abandoned call only when that object is collected. So
:func:`when_done` registers on the C-layer call itself and reads the status from it
(code, details, trailing and initial metadata are all there once it finished: no
coroutine and no Metadata copies, which is also the cheapest read at thousands of calls
per second). Calls that are not grpc.aio's own (e.g. intercepted calls), or a grpc whose
C layer differs, fall back to the public API: its status coroutines, driven without a
task (a finished call's never suspend).

Everything runs on the event loop; ``fn`` is called at most once per :func:`when_done`.
"""

from __future__ import annotations

import asyncio
import logging
import weakref
from collections.abc import Callable, Coroutine
from typing import Any, NamedTuple

import grpc
import grpc.aio

from .._core.deadline import remaining

log = logging.getLogger("lbclient.aio")

# Status code names by number (grpc.aio's C layer reports codes as int enums).
_CODE_NAMES: dict[Any, str] = {code.value[0]: code.name for code in grpc.StatusCode}
_SEND_FAILED = "Internal error from Core"   # grpc.aio's details for a failed local send
_PEER_STATUS_WAIT = 1.0                     # bound on waiting for the peer's real status


class Status(NamedTuple):
    code: str                # status code name ("OK", "UNAVAILABLE", ...)
    details: str
    trailing: tuple[Any, ...]
    initial: tuple[Any, ...]

    def error(self) -> grpc.aio.AioRpcError | None:
        """This status as the ``AioRpcError`` grpc.aio raises (None when OK)."""
        if self.code == "OK":
            return None
        return grpc.aio.AioRpcError(grpc.StatusCode[self.code],
                                    grpc.aio.Metadata(*self.initial),
                                    grpc.aio.Metadata(*self.trailing), self.details)


CANCELLED = Status("CANCELLED", "Locally cancelled by application!", (), ())


_READABLE: dict[type, bool] = {}   # C-layer call type -> has what _c_status reads


def _c_call(call: Any) -> Any:
    """grpc.aio's C-layer call behind ``call`` if its status can be read, else None."""
    c = getattr(call, "_cython_call", None)
    if c is None:
        return None
    readable = _READABLE.get(type(c))
    if readable is None:
        readable = _READABLE[type(c)] = all(
            hasattr(c, name) for name in ("_status", "_initial_metadata", "add_done_callback"))
    return c if readable else None


def _c_status(c: Any) -> Status | None:
    status = c._status
    if status is None:
        return None
    return Status(_CODE_NAMES.get(status.code(), "UNKNOWN"), status.details() or "",
                  tuple(status.trailing_metadata() or ()), tuple(c._initial_metadata or ()))


def _drive(coro: Coroutine[Any, Any, Any]) -> tuple[bool, Any]:
    """Run a coroutine that is expected not to suspend (a finished call's status getter).
    Returns (True, value), or (False, None) after closing it if it would suspend."""
    try:
        coro.send(None)
    except StopIteration as stop:
        return True, stop.value
    coro.close()
    return False, None


def status_now(call: Any) -> Status | None:
    """A finished call's status, read without suspending; None if not available yet."""
    c = _c_call(call)
    if c is not None:
        return _c_status(c)
    ok, code = _drive(call.code())
    if not ok:
        return None
    return Status(code.name, _drive(call.details())[1] or "",
                  tuple(_drive(call.trailing_metadata())[1] or ()),
                  tuple(_drive(call.initial_metadata())[1] or ()))


class _Fire:
    """A done callback on the C-layer call ``c``: ``fn(status)``, once (grpc.aio may set
    a call's status twice: a failed send). It drops ``c`` when it fires, so the cycle
    C-layer call -> its callbacks -> this -> C-layer call ends with the call and the
    call's objects are freed at once, not by the cycle collector."""

    __slots__ = ("_c", "_fn")

    def __init__(self, c: Any, fn: Callable[[Status], None]) -> None:
        self._c: Any = c
        self._fn: Callable[[Status], None] | None = fn

    def __call__(self) -> None:
        c, fn = self._c, self._fn
        if c is None or fn is None:
            return
        self._c = self._fn = None
        try:
            fn(_c_status(c) or CANCELLED)
        except Exception:   # never raise into grpc
            log.exception("a call's done callback failed")


class _Finish:
    """:func:`finish_when_done`'s callback: the attempt gets the status straight from the
    C layer (the per-call path: no Status object). It drops ``c`` when it fires (see
    :class:`_Fire`)."""

    __slots__ = ("_c", "_done")

    def __init__(self, c: Any, done: Any) -> None:
        self._c: Any = c
        self._done: Any = done

    def __call__(self) -> None:
        c, done = self._c, self._done
        if c is None or done is None:
            return
        self._c = self._done = None
        try:
            status = c._status
            if status is None:
                done.end("CANCELLED")
                return
            code = _CODE_NAMES.get(status.code(), "UNKNOWN")
            if code == "OK" and not done.wants_metadata:
                done.end(code)
            else:
                done.end(code, status.trailing_metadata() or (), c._initial_metadata or (),
                         status.details())
        except Exception:   # never raise into grpc
            log.exception("finishing an attempt failed")


def when_done(call: Any, fn: Callable[[Status], None]) -> None:
    """``fn(status)`` once ``call`` has finished (at once if it has). ``fn`` must not hold
    the call strongly either (see :func:`weakly`). Never raises into grpc."""
    c = _c_call(call)
    if c is not None:
        c.add_done_callback(_Fire(c, fn))
        return
    fired: list[bool] = []

    def fire(status: Status) -> None:
        if not fired:
            fired.append(True)
            try:
                fn(status)
            except Exception:
                log.exception("a call's done callback failed")

    call.add_done_callback(lambda done_call: _public_status(done_call, fire))


def finish_when_done(call: Any, done: Any) -> None:
    """``done.end(code, trailing, initial)`` once ``call`` has finished (``done`` is the
    attempt's ``lbclient._core.attempt.Attempt``; metadata only when it wants it or the
    attempt failed)."""
    c = _c_call(call)
    if c is not None:
        c.add_done_callback(_Finish(c, done))
    else:
        when_done(call, lambda status: done.end(status.code, status.trailing,
                                                status.initial, status.details))


def _public_status(call: Any, fire: Callable[[Status], None]) -> None:
    try:
        status = status_now(call)
    except asyncio.CancelledError:
        status = CANCELLED
    except Exception:
        log.debug("reading a finished call's status failed", exc_info=True)
        status = CANCELLED if call.cancelled() else None
    if status is not None:
        fire(status)
        return

    async def later() -> None:  # rare: the status was not ready yet
        try:
            code = await call.code()
            fire(Status(code.name, await call.details() or "",
                        tuple(await call.trailing_metadata() or ()),
                        tuple(await call.initial_metadata() or ())))
        except BaseException:
            fire(CANCELLED)

    asyncio.get_running_loop().create_task(later())


def weakly(method: Callable[[Status], None]) -> Callable[[Status], None]:
    """``method`` (a bound method) called only while its object is alive."""
    ref = weakref.WeakMethod(method)

    def call(status: Status) -> None:
        live = ref()
        if live is not None:
            live(status)
    return call


class FirstStatus:
    """Keeps the first status grpc.aio reports for a call: a later INTERNAL "Internal
    error from Core" (a write that failed because the call had already ended) replaces
    it in the call itself."""

    __slots__ = ("status", "__weakref__")

    def __init__(self, rpc: Any) -> None:
        self.status: Status | None = None
        when_done(rpc, weakly(self._seen))

    def _seen(self, status: Status) -> None:
        self.status = status


async def peer_status(rpc: Any, first: FirstStatus, error: grpc.aio.AioRpcError,
                      deadline: float | None) -> grpc.aio.AioRpcError:
    """The real outcome of a request-streaming attempt that failed writing.

    grpc.aio reports a write that failed because the server had already ended the call
    as INTERNAL "Internal error from Core", before or after the server's own status
    (UNAVAILABLE, say). A retry must judge the server's status: the one seen first, or
    the one that replaces the INTERNAL shortly (waited for, bounded). Anything else is
    returned unchanged."""
    if error.code() is not grpc.StatusCode.INTERNAL or error.details() != _SEND_FAILED:
        return error
    seen = first.status
    if seen is not None and seen.details != _SEND_FAILED and seen.error() is not None:
        return seen.error()  # type: ignore[return-value]
    loop = asyncio.get_running_loop()
    left = remaining(deadline)
    end = loop.time() + min(_PEER_STATUS_WAIT, _PEER_STATUS_WAIT if left is None else left)
    while loop.time() < end:
        await asyncio.sleep(0.005)
        now = status_now(rpc)
        if now is not None and now.details != _SEND_FAILED and now.error() is not None:
            return now.error()  # type: ignore[return-value]
    return error
