"""Request-stream buffering so a retried client-streaming or bidi call can be replayed.

gRFC A6 "Memory Management (Buffering)": the messages a call has sent are kept so a new
attempt can resend them; once they exceed the per-call limit (gRPC's default is 256 KiB)
the call is *committed*: the current attempt goes on unbuffered and no further attempt is
made. A request iterator that raises also commits the call (replaying it would raise
again). A channel's calls together hold at most :data:`CHANNEL_LIMIT` (gRPC's
``grpc.retry_buffer_size`` default, 256 MiB) through a shared :class:`ReplayBudget`: a
call whose next message would go past it is committed too.

Threading: grpc reads each attempt's requests on a thread of its own, so every method
takes the lock; the user's iterator is advanced under it, one message at a time, so
attempts never race for a message. Only the newest view (the current attempt) reads on;
creating a view closes the older ones, and after a commit only the owner may read.
"""

from __future__ import annotations

import threading
import weakref
from collections import deque
from collections.abc import Callable, Iterator
from typing import Any

DEFAULT_LIMIT = 256 * 1024
CHANNEL_LIMIT = 256 * 1024 * 1024
PULL: Any = object()   # RequestReplay._take: "read the source first"


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
    or is garbage-collected. Thread-safe."""

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


class RequestReplay:
    """Buffers ``source`` for replay up to ``limit`` serialized bytes (and within the
    channel's ``budget``, when given)."""

    def __init__(self, source: Iterator[Any], limit: int = DEFAULT_LIMIT,
                 serializer: Callable[[Any], bytes] | None = None,
                 budget: ReplayBudget | None = None) -> None:
        self._budget = budget
        self._held = [0]          # bytes taken from the budget (a list: the finalizer's)
        if budget is not None:
            weakref.finalize(self, _give_back, budget, self._held)
        self._source = iter(source)
        self._limit = limit
        self._serializer = serializer
        self._lock = threading.Lock()
        self._buf: deque[Any] = deque()
        self._base = 0           # index (in the request stream) of _buf[0]
        self._size = 0
        self._exhausted = False
        self._error: BaseException | None = None
        self._owner: ReplayView | None = None
        self._current: ReplayView | None = None

    @property
    def committed(self) -> bool:
        """True once replay is impossible (over the limit, committed, or source failed)."""
        with self._lock:
            return self._owner is not None or self._error is not None

    @property
    def buffered_bytes(self) -> int:
        with self._lock:
            return self._size

    def view(self) -> ReplayView | None:
        """The request iterator for a new attempt (closing the previous attempts' views),
        or None once committed. Atomic, so a retry decided on a ``view()`` can't lose
        its messages to an older attempt's reader committing meanwhile."""
        with self._lock:
            if self._owner is not None or self._error is not None:
                return None
            if self._current is not None:
                self._current.closed = True
            view = self._new_view()
            self._current = view
            return view

    def _new_view(self) -> ReplayView:
        return ReplayView(self)

    def commit(self, view: ReplayView) -> None:
        """Only ``view`` goes on; messages it has already read are dropped."""
        with self._lock:
            self._commit(view)

    def _commit(self, view: ReplayView | None) -> None:
        if self._owner is not None or view is None:
            return
        self._owner = view
        while self._buf and self._base < view.index:
            self._buf.popleft()
            self._base += 1
        self._size = 0
        if self._budget is not None:
            _give_back(self._budget, self._held)

    def next_for(self, view: ReplayView) -> Any:
        with self._lock:
            while True:
                message = self._take(view)
                if message is not PULL:
                    return message
                self._pull()

    def _take(self, view: ReplayView) -> Any:
        """Under the lock: ``view``'s next message, or :data:`PULL` when the source must
        be read first. Raises StopIteration at the end (or the source's error)."""
        if view.closed or (self._owner is not None and view is not self._owner):
            raise StopIteration
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
            raise StopIteration
        return PULL

    def _pull(self) -> None:
        try:
            message = next(self._source)
        except StopIteration:
            self._source_ended(None)
            return
        except Exception as exc:
            self._source_ended(exc)
            return
        self._accept(message)

    def _source_ended(self, error: Exception | None) -> None:
        """Under the lock: the source is exhausted (or raised ``error``, which commits)."""
        self._exhausted = True
        if error is not None:
            self._error = error
            self._commit(self._current)

    def _accept(self, message: Any) -> None:
        """Under the lock: buffer a message read from the source."""
        self._buf.append(message)
        if self._owner is None:
            size = message_size(message, self._serializer)
            self._size += size
            if self._size > self._limit or not self._charge(size):
                self._commit(self._current)

    def _charge(self, size: int) -> bool:
        """Take ``size`` bytes from the channel's budget (False: it is spent)."""
        if self._budget is None:
            return True
        if not self._budget.take(size):
            return False
        self._held[0] += size
        return True


class ReplayView:
    """One attempt's request iterator."""

    __slots__ = ("_replay", "index", "closed")

    def __init__(self, replay: RequestReplay) -> None:
        self._replay = replay
        self.index = 0
        self.closed = False

    def __iter__(self) -> ReplayView:
        return self

    def __next__(self) -> Any:
        return self._replay.next_for(self)
