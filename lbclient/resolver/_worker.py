"""The thread and delivery discipline shared by the polling resolvers (DNS, file, etcd).

Contract:
  * ``start()`` starts one daemon thread running ``body(worker)``; ``body`` loops until
    ``worker.stopped`` and waits only through ``worker.wait(seconds)``, which returns early
    on ``wake()`` or ``stop()``.
  * ``deliver(state)`` / ``fail(exc)`` call the listener unless the worker was stopped;
    they hold a lock that ``stop()`` also takes, so once ``stop()`` has returned nothing
    more is delivered (``stop()`` called from inside a delivery, on the worker thread,
    does not deadlock: the lock is re-entrant).
  * ``stop()`` is idempotent and joins the thread for at most ``join_timeout`` seconds (a
    thread stuck in a blocking system call, e.g. ``getaddrinfo``, is left to finish on its
    own; it delivers nothing afterwards).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from .base import ResolverListener, ResolverState

log = logging.getLogger("lbclient.resolver")


class Worker:
    def __init__(self, name: str, listener: ResolverListener,
                 body: Callable[[Worker], None], join_timeout: float = 2.0) -> None:
        self._name = name
        self._listener = listener
        self._body = body
        self._join_timeout = join_timeout
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._lock = threading.RLock()
        self._thread: threading.Thread | None = None
        self.on_stop: list[Callable[[], None]] = []  # run by stop() (e.g. cancel a call)

    @property
    def stopped(self) -> bool:
        return self._stop.is_set()

    def start(self) -> None:
        with self._lock:
            if self._thread is not None or self.stopped:
                return
            self._thread = threading.Thread(target=self._run, name=self._name, daemon=True)
            self._thread.start()

    def _run(self) -> None:
        try:
            self._body(self)
        except Exception:  # a bug must not die silently; the channel keeps its endpoints
            log.exception("%s: resolver thread failed", self._name)

    def wait(self, seconds: float) -> bool:
        """Sleep up to ``seconds``; True if woken early by ``wake()`` (not by ``stop()``)."""
        if self.stopped:
            return False
        woke = self._wake.wait(max(0.0, seconds))
        self._wake.clear()
        return woke and not self.stopped

    def wake(self) -> None:
        self._wake.set()

    def deliver(self, state: ResolverState) -> bool:
        with self._lock:
            if self.stopped:
                return False
            self._listener.on_resolved(state)
            return True

    def fail(self, error: Exception) -> bool:
        with self._lock:
            if self.stopped:
                return False
            self._listener.on_resolver_error(error)
            return True

    def stop(self) -> None:
        if self._stop.is_set():
            return
        self._stop.set()
        self._wake.set()
        for fn in self.on_stop:
            try:
                fn()
            except Exception:
                log.debug("%s: stop hook failed", self._name, exc_info=True)
        with self._lock:  # waits for a delivery in progress
            thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(self._join_timeout)
