"""A recording resolver listener for the resolver tests (thread-safe, bounded waits)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from lbclient.resolver import ResolverState


class Recorder:
    """Collects what a resolver delivers; ``wait_for`` polls with a deadline."""

    def __init__(self) -> None:
        self.states: list[ResolverState] = []
        self.errors: list[Exception] = []
        self._cv = threading.Condition()

    def on_resolved(self, state: ResolverState) -> None:
        with self._cv:
            self.states.append(state)
            self._cv.notify_all()

    def on_resolver_error(self, error: Exception) -> None:
        with self._cv:
            self.errors.append(error)
            self._cv.notify_all()

    @property
    def last(self) -> ResolverState | None:
        with self._cv:
            return self.states[-1] if self.states else None

    def addresses(self) -> list[str]:
        last = self.last
        return [e.address for e in last.endpoints] if last else []

    def wait_for(self, predicate: Callable[[Recorder], bool], timeout: float = 10.0,
                 what: str = "condition") -> None:
        deadline = time.monotonic() + timeout
        with self._cv:
            while not predicate(self):
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(
                        f"timed out after {timeout}s waiting for {what}; states="
                        f"{[[e.address for e in s.endpoints] for s in self.states[-3:]]} "
                        f"errors={self.errors[-3:]}")
                self._cv.wait(min(left, 0.1))

    def wait_addresses(self, want: set[str], timeout: float = 10.0) -> None:
        self.wait_for(lambda r: set(r.addresses()) == want, timeout, f"addresses {want}")
