"""The demo's fake backends, each with a character, and the script that plays them.

Characters (latencies in seconds):
  fast        1 ms, always well
  slow        40 ms (about 20x the others)
  flaky       2 ms, 30% of calls fail UNAVAILABLE
  flapping    2 ms, reports NOT_SERVING from 25% to 65% of each phase
  restarting  2 ms, killed at 35% of each phase and restarted at 70%

Threading: :class:`Script` runs one phase's timeline on its own thread; ``stop()`` ends it
(bounded) and :meth:`DemoFleet.reset` puts every backend back to its starting state.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from ..testing import NOT_SERVING, SERVING, Backend, Fleet

log = logging.getLogger("lbclient.demo")


@dataclass(frozen=True)
class Character:
    name: str
    latency: float
    error_rate: float
    description: str
    weight: int          # the weight given to weighted policies


CHARACTERS = (
    Character("fast", 0.001, 0.0, "1ms", 5),
    Character("slow", 0.040, 0.0, "40ms", 1),
    Character("flaky", 0.002, 0.3, "30% errors", 2),
    Character("flapping", 0.002, 0.0, "NOT_SERVING 25-65%", 2),
    Character("restarting", 0.002, 0.0, "killed 35-70%", 2),
)


class DemoFleet:
    """Five running backends named after their characters."""

    def __init__(self, seed: int = 7) -> None:
        self.fleet = Fleet(len(CHARACTERS), names=[c.name for c in CHARACTERS], seed=seed)
        self.characters = {c.name: c for c in CHARACTERS}
        self.reset()

    @property
    def target(self) -> str:
        return self.fleet.target

    def backend(self, name: str) -> Backend:
        return self.fleet.by_name(name)

    def by_address(self) -> dict[str, Character]:
        return {self.backend(c.name).address: c for c in CHARACTERS}

    def weights(self) -> dict[str, int]:
        return {self.backend(c.name).address: c.weight for c in CHARACTERS}

    def state_of(self, name: str) -> str:
        """What the backend is doing right now (the ground truth shown in the table)."""
        b = self.backend(name)
        if not b.running:
            return "stopped"
        if b.health_status() == NOT_SERVING:
            return "NOT_SERVING"
        if b.error_rate:
            return f"{b.error_rate:.0%} errors"
        return "up"

    def reset(self) -> None:
        """Every backend running, with its character's settings, SERVING."""
        for c in CHARACTERS:
            b = self.backend(c.name)
            if not b.running:
                try:
                    b.start()
                except RuntimeError as exc:   # its port was taken meanwhile
                    log.warning("cannot restart %s: %s", c.name, exc)
            b.set_latency(c.latency)
            b.set_error_rate(c.error_rate)
            b.set_health(SERVING)

    def stop(self) -> None:
        self.fleet.stop()

    def script(self, duration: float) -> Script:
        """The timeline of one phase of ``duration`` seconds."""
        flapping, restarting = self.backend("flapping"), self.backend("restarting")
        steps: list[tuple[float, Callable[[], object]]] = [
            (0.25, lambda: flapping.set_health(NOT_SERVING)),
            (0.35, lambda: restarting.stop()),
            (0.65, lambda: flapping.set_health(SERVING)),
            (0.70, lambda: restarting.start()),
        ]
        return Script([(f * duration, fn) for f, fn in steps])


class Script:
    """Runs ``(offset_seconds, action)`` steps on a thread, in order, until stopped."""

    def __init__(self, steps: list[tuple[float, Callable[[], object]]]) -> None:
        self._steps = sorted(steps, key=lambda s: s[0])
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="lbclient-demo-script",
                                        daemon=True)

    def start(self) -> Script:
        self._thread.start()
        return self

    def _run(self) -> None:
        t0 = time.monotonic()
        for offset, action in self._steps:
            if self._stop.wait(max(0.0, t0 + offset - time.monotonic())):
                return
            try:
                action()
            except Exception as exc:   # e.g. the old port was taken: say so, carry on
                log.warning("demo script step failed: %s", exc)

    def stop(self, timeout: float = 15.0) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout)
