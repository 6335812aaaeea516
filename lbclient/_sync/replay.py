"""Request streams of retried sync calls: a thread-safe :class:`ReplayCore`.

grpc reads each attempt's requests on a thread of its own. The caller's iterator is
advanced by whichever attempt's thread needs the next message first, **outside the
lock**: a ping-pong caller's iterator blocks until it has read a response, and the
response path (commit on the first message) takes the lock too, so reading under it
would deadlock. Other threads wanting the same message wait on the condition until it
is delivered (or their view is closed by a newer attempt, or the call released).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable
from typing import Any

from .._core.replay import END, PULL, ReplayBudget, ReplayCore, ReplayView


class SyncReplay:
    def __init__(self, source: Iterable[Any], limit: int,
                 serializer: Callable[[Any], bytes] | None = None,
                 budget: ReplayBudget | None = None) -> None:
        self._core = ReplayCore(limit, serializer, budget)
        self._source = iter(source)
        self._cond = threading.Condition()
        self._pulling = False          # a thread is reading the source (no lock held)
        self._released = False

    @property
    def committed(self) -> bool:
        with self._cond:
            return self._core.committed

    @property
    def buffered_bytes(self) -> int:
        with self._cond:
            return self._core.buffered_bytes

    def view(self) -> SyncReplayView | None:
        """The request iterator of a new attempt (closing older ones), or None once the
        call is committed."""
        with self._cond:
            view = self._core.new_view()
            self._cond.notify_all()      # older views waiting for a message: closed now
        return None if view is None else SyncReplayView(self, view)

    def commit(self, view: SyncReplayView | None) -> None:
        with self._cond:
            self._core.commit(None if view is None else view.core)

    def release(self) -> None:
        """The call is over: waiting attempts' iterators end."""
        with self._cond:
            self._released = True
            self._cond.notify_all()

    def next_for(self, view: ReplayView) -> Any:
        core, cond = self._core, self._cond
        while True:
            with cond:
                while True:
                    if self._released:
                        raise StopIteration
                    message = core.take(view)     # raises the source's error, if any
                    if message is END:
                        raise StopIteration
                    if message is not PULL:
                        return message
                    if not self._pulling:
                        self._pulling = True
                        break
                    cond.wait()
            try:
                message = next(self._source)      # no lock held: it may block
            except StopIteration:
                with cond:
                    self._pulling = False
                    core.source_ended()
                    cond.notify_all()
            except Exception as exc:
                with cond:
                    self._pulling = False
                    core.source_ended(exc)
                    cond.notify_all()
            else:
                with cond:
                    self._pulling = False
                    core.accept(message)
                    cond.notify_all()


class SyncReplayView:
    """One attempt's request iterator."""

    __slots__ = ("_replay", "core")

    def __init__(self, replay: SyncReplay, core: ReplayView) -> None:
        self._replay = replay
        self.core = core

    def __iter__(self) -> SyncReplayView:
        return self

    def __next__(self) -> Any:
        return self._replay.next_for(self.core)
