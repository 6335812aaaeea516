"""Active health state of one endpoint, from probe reports (pure; stdlib only).

The channels' checkers (``lbclient._sync.health``, ``lbclient._async.health``) turn
grpc.health.v1 answers into :class:`HealthReport` values; a :class:`HealthTracker` turns
reports into a state with the thresholds of ``healthCheckConfig``. The same tracker
serves the sync and the asyncio channel. Not thread-safe: its owner (the balancer)
serialises reports.

States: ``pending`` (connected, no answer yet: not usable, as gRFC A17 keeps such a
subchannel CONNECTING), ``healthy``, ``unhealthy``, ``disabled`` (the server does not
implement the health service: usable, as A17 says).

Watch mode: the stream is authoritative. SERVING -> healthy; NOT_SERVING or
SERVICE_UNKNOWN -> unhealthy at once; a broken stream -> unhealthy until a new stream
answers. Poll mode: from healthy, ``unhealthy_threshold`` failed probes in a row ->
unhealthy; from unhealthy, ``healthy_threshold`` good probes in a row -> healthy; while
pending, the first answer decides (one good probe is enough, as in Envoy).

``streak`` counts good probes in a row since the last :meth:`reset_streak` (the balancer
resets it when it ejects the endpoint; readmission needs ``healthy_threshold`` of them).
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any, Literal

ReportKind = Literal["watch", "probe", "stream_error", "unimplemented"]
State = Literal["pending", "healthy", "unhealthy", "disabled"]


@dataclass(frozen=True, slots=True)
class HealthReport:
    """One observation. ``watch``: a Watch message (``serving`` tells SERVING);
    ``probe``: a Check answer, ``serving`` False for NOT_SERVING, an error or a timeout;
    ``stream_error``: the Watch stream ended; ``unimplemented``: no health service."""

    kind: ReportKind
    serving: bool = False
    detail: str = ""


class HealthTracker:
    __slots__ = ("mode", "healthy_threshold", "unhealthy_threshold", "state", "reason",
                 "streak", "_fails", "_oks")

    def __init__(self, config: Any) -> None:
        self.mode: str = config.mode
        self.healthy_threshold: int = config.healthy_threshold
        self.unhealthy_threshold: int = config.unhealthy_threshold
        self.state: State = "pending"
        self.reason = "waiting for the first health answer"
        self.streak = 0
        self._fails = 0
        self._oks = 0

    @property
    def healthy(self) -> bool | None:
        """True (healthy or disabled), False (unhealthy), None (pending)."""
        if self.state == "pending":
            return None
        return self.state != "unhealthy"

    def reset(self) -> None:
        """A new connection: back to pending (A17 waits for the first answer)."""
        self.state, self.reason = "pending", "waiting for the first health answer"
        self.streak = self._fails = self._oks = 0

    def reset_streak(self) -> None:
        self.streak = 0

    def readmit_ok(self) -> bool:
        """May an ejected endpoint come back? Health checking says healthy and the last
        ``healthy_threshold`` probes were good (always, once disabled)."""
        if self.state == "disabled":
            return True
        return self.state == "healthy" and self.streak >= self.healthy_threshold

    def apply(self, report: HealthReport) -> bool:
        """Apply one report; returns True when ``state`` changed."""
        before = self.state
        if report.kind == "unimplemented":
            self.state, self.reason = "disabled", report.detail or "health service unimplemented"
        elif self.state == "disabled":
            return False
        elif report.kind == "watch":
            self._set(report.serving, report.detail)
        elif report.kind == "stream_error":
            self._set(False, report.detail or "health stream failed")
        else:
            self._probe(report)
        return self.state != before

    def _set(self, serving: bool, detail: str) -> None:
        self.state = "healthy" if serving else "unhealthy"
        self.reason = detail

    def _probe(self, report: HealthReport) -> None:
        if report.serving:
            self.streak += 1
            self._oks, self._fails = self._oks + 1, 0
        else:
            self.streak = 0
            self._oks, self._fails = 0, self._fails + 1
        if self.mode != "poll":
            return  # watch mode: probes only feed the readmission streak
        if self.state == "pending":
            self._set(report.serving, report.detail)
        elif self.state == "healthy" and self._fails >= self.unhealthy_threshold:
            self._set(False, f"{self._fails} failed probes in a row: {report.detail}")
        elif self.state == "unhealthy" and self._oks >= self.healthy_threshold:
            self._set(True, f"{self._oks} good probes in a row")


class Backoff:
    """gRPC's connection backoff (initial 1 s, x1.6, max 120 s, +-20% jitter), used
    between broken health streams. ``reset()`` after any message (A17)."""

    __slots__ = ("initial", "multiplier", "maximum", "jitter", "_rng", "_next")

    def __init__(self, rng: random.Random | None = None, *, initial: float = 1.0,
                 multiplier: float = 1.6, maximum: float = 120.0, jitter: float = 0.2) -> None:
        self.initial, self.multiplier = initial, multiplier
        self.maximum, self.jitter = maximum, jitter
        self._rng = rng or random.Random()
        self._next = initial

    def reset(self) -> None:
        self._next = self.initial

    def next_delay(self) -> float:
        base = self._next
        self._next = min(self._next * self.multiplier, self.maximum)
        return base * (1.0 + self._rng.uniform(-self.jitter, self.jitter))


# Watch mode: Check probes while an endpoint is ejected run every min(interval, this)
# seconds, so readmission can count good probes (both flavours' checkers).
READMIT_PROBE_INTERVAL = 1.0

# grpc.health.v1 ServingStatus names by number (no grpc import here).
_SERVING_STATUS = {0: "UNKNOWN", 1: "SERVING", 2: "NOT_SERVING", 3: "SERVICE_UNKNOWN"}


def status_detail(status: int) -> str:
    """A health answer's ServingStatus as its name ("NOT_SERVING")."""
    return _SERVING_STATUS.get(status, f"status {status}")
