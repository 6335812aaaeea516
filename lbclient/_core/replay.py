"""Request-stream buffering so a retried client-streaming or bidi call can be replayed.

gRFC A6 "Memory Management (Buffering)": the messages a call has sent are kept so a new
attempt can resend them; once they exceed the per-call limit (gRPC's default: 256 KiB)
the call is *committed*: the current attempt goes on unbuffered and no further attempt is
made. A request source that raises also commits the call (replaying it would raise
again). A channel's calls together hold at most :data:`CHANNEL_LIMIT` (gRPC's
``grpc.retry_buffer_size`` default, 256 MiB) through a shared :class:`ReplayBudget`.

:class:`ReplayCore` is only the bookkeeping. It never reads the caller's request source:
when :meth:`~ReplayCore.take` answers :data:`PULL`, the driver reads the next message
itself - outside any lock, since a caller's iterator may block until a response arrives
(ping-pong) - and hands it over with :meth:`~ReplayCore.accept` or
:meth:`~ReplayCore.source_ended`. Drivers serialise their calls into the core (the sync
one with a lock it never holds while reading the source; the asyncio one on its loop).
Only the newest view (the current attempt) may read on; a new view closes the older
ones, and after a commit only the owner reads.
"""

from __future__ import annotations

import threading
import weakref
from collections import deque
from collections.abc import Callable
from typing import Any

DEFAULT_LIMIT = 256 * 1024
CHANNEL_LIMIT = 256 * 1024 * 1024
PULL: Any = object()   # take(): "read the source first"
END: Any = object()    # take(): the view has no more messages


def message_size(message: Any, serializer: Callable[[Any], bytes] | None) -> int:
    """Serialized size of a request: protobuf ``ByteSize()``, bytes length, or the
    serializer's output length."""
    size = getattr(message, "ByteSize", None)
    if callable(size):
        return int(size())
    if isinstance(message, bytes | bytearray | memoryview):
        return len(message)
    if serializer is not None:
        return len(serializer(message))
    return 0


class ReplayBudget:
    """Bytes buffered for replay by all the calls of one channel, at most ``limit``.
    A call takes its share message by message and gives all of it back when it commits
    or is garbage-collected. Thread-safe (its own small lock)."""

    def __init__(self, limit: int = CHANNEL_LIMIT) -> None:
        self.limit = limit
        self.used = 0
        self._lock = threading.Lock()

    def take(self, n: int) -> bool:
        with self._lock:
            if self.used + n > self.limit:
                return False
            self.used += n
            return True

    def give(self, n: int) -> None:
        with self._lock:
            self.used -= n


def _give_back(budget: ReplayBudget, held: list[int]) -> None:
    budget.give(held[0])
    held[0] = 0


class ReplayView:
    """One attempt's position in the request stream."""

    __slots__ = ("index", "closed", "__weakref__")

    def __init__(self) -> None:
        self.index = 0
        self.closed = False


class ReplayCore:
    def __init__(self, limit: int = DEFAULT_LIMIT,
                 serializer: Callable[[Any], bytes] | None = None,
                 budget: ReplayBudget | None = None) -> None:
        self._budget = budget
        self._held = [0]          # bytes taken from the budget (a list: the finalizer's)
        if budget is not None:
            weakref.finalize(self, _give_back, budget, self._held)
        self._limit = limit
        self._serializer = serializer
        self._buf: deque[Any] = deque()
        self._base = 0            # index (in the request stream) of _buf[0]
        self._size = 0
        self._exhausted = False
        self._error: BaseException | None = None
        self._owner: ReplayView | None = None
        self._current: ReplayView | None = None

    @property
    def committed(self) -> bool:
        """True once replay is impossible (over the limit, committed, or source failed)."""
        return self._owner is not None or self._error is not None

    @property
    def buffered_bytes(self) -> int:
        return self._size

    def new_view(self) -> ReplayView | None:
        """The request stream of a new attempt (closing the previous attempts' views), or
        None once committed."""
        if self.committed:
            return None
        if self._current is not None:
            self._current.closed = True
        view = self._current = ReplayView()
        return view

    def commit(self, view: ReplayView | None) -> None:
        """Only ``view`` goes on; messages it has read are dropped."""
        if self._owner is not None or view is None:
            return
        self._owner = view
        while self._buf and self._base < view.index:
            self._buf.popleft()
            self._base += 1
        self._size = 0
        if self._budget is not None:
            _give_back(self._budget, self._held)

    def take(self, view: ReplayView) -> Any:
        """``view``'s next message, :data:`PULL` when the source must be read first, or
        :data:`END`; raises the source's error once the source raised."""
        if view.closed or (self._owner is not None and view is not self._owner):
            return END
        k = view.index - self._base
        if k < len(self._buf):
            message = self._buf[k]
            view.index += 1
            if view is self._owner:   # committed: nobody will replay it
                self._buf.popleft()
                self._base += 1
            return message
        if self._exhausted:
            if self._error is not None:
                raise self._error
            return END
        return PULL

    def source_ended(self, error: BaseException | None = None) -> None:
        """The source is exhausted (or raised ``error``, which commits the call)."""
        self._exhausted = True
        if error is not None:
            self._error = error
            self.commit(self._current)

    def accept(self, message: Any) -> None:
        """Buffer a message read from the source."""
        self._buf.append(message)
        if self._owner is None:
            size = message_size(message, self._serializer)
            self._size += size
            if self._size > self._limit or not self._charge(size):
                self.commit(self._current)

    def _charge(self, size: int) -> bool:
        if self._budget is None:
            return True
        if not self._budget.take(size):
            return False
        self._held[0] += size
        return True
