"""The grpc prober on its own: real health servers, a real timer thread, and the reports it
produces (no balancer)."""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import grpc
import pytest
from helpers import wait_until

from lbclient._sync.health import (
    READMIT_PROBE_INTERVAL,
    GrpcHealthCheckerFactory,
    PollChecker,
    WatchChecker,
)
from lbclient._sync.scheduler import ThreadScheduler
from lbclient.config import HealthCheckConfig
from lbclient.health.tracker import HealthReport
from lbclient.testing import Backend


@dataclass
class Handle:
    """What the prober needs from a subchannel: grpc's own channel and the address."""

    raw: grpc.Channel
    address: str


class Reports:
    def __init__(self) -> None:
        self.items: list[tuple[float, HealthReport]] = []
        self.lock = threading.Lock()

    def __call__(self, report: HealthReport) -> None:
        with self.lock:
            self.items.append((time.monotonic(), report))

    def kinds(self) -> list[str]:
        with self.lock:
            return [r.kind for _, r in self.items]

    def of(self, kind: str) -> list[tuple[float, HealthReport]]:
        with self.lock:
            return [(t, r) for t, r in self.items if r.kind == kind]


@pytest.fixture
def backend() -> Iterator[Backend]:
    with Backend() as b:
        yield b


@pytest.fixture
def setup(backend: Backend) -> Iterator[tuple[Backend, Handle, GrpcHealthCheckerFactory]]:
    scheduler = ThreadScheduler()
    channel = grpc.insecure_channel(f"ipv4:{backend.address}")
    try:
        yield backend, Handle(channel, backend.address), GrpcHealthCheckerFactory(
            scheduler, random.Random(5))
    finally:
        channel.close()
        scheduler.close()


def test_watch_reports_every_change_on_one_stream(setup: Any) -> None:
    backend, handle, factory = setup
    reports = Reports()
    checker = factory.start(handle, HealthCheckConfig(), reports)
    assert isinstance(checker, WatchChecker)
    try:
        wait_until(lambda: len(reports.of("watch")) == 1, 10, message="first answer")
        backend.set_health(False)
        wait_until(lambda: len(reports.of("watch")) == 2, 10, message="NOT_SERVING")
        backend.set_health(True)
        wait_until(lambda: len(reports.of("watch")) == 3, 10, message="SERVING")
        assert [(r.serving, r.detail) for _, r in reports.of("watch")] == [
            (True, "SERVING"), (False, "NOT_SERVING"), (True, "SERVING")]
        assert backend.health_calls == 1
    finally:
        checker.stop()
    checker.join(5)
    assert not checker.alive
    n = len(reports.kinds())
    backend.set_health(False)
    time.sleep(0.2)
    assert len(reports.kinds()) == n                 # nothing after stop


def test_watch_mode_probes_only_while_probing(setup: Any) -> None:
    backend, handle, factory = setup
    reports = Reports()
    cfg = HealthCheckConfig(interval=0.05, jitter=0.0)
    checker = factory.start(handle, cfg, reports)
    try:
        wait_until(lambda: reports.of("watch"), 10, message="first answer")
        time.sleep(0.2)
        assert reports.of("probe") == []
        checker.set_probing(True)
        checker.set_probing(True)                    # idempotent: one poller
        wait_until(lambda: len(reports.of("probe")) >= 3, 10, message="probes")
        times = [t for t, _ in reports.of("probe")]
        gaps = [b - a for a, b in zip(times, times[1:], strict=False)]
        assert min(gaps) >= 0.05 * 0.9, gaps         # min(interval, 1 s) apart
        assert all(r.serving and r.detail == "SERVING" for _, r in reports.of("probe"))
        checker.set_probing(False)
        time.sleep(0.1)
        n = len(reports.of("probe"))
        time.sleep(0.3)
        assert len(reports.of("probe")) <= n + 1     # at most one already on the wire
    finally:
        checker.stop()
        checker.join(5)
    assert READMIT_PROBE_INTERVAL == 1.0


def test_poll_interval_jitter_and_unknown_service(setup: Any) -> None:
    backend, handle, factory = setup
    reports = Reports()
    cfg = HealthCheckConfig(mode="poll", interval=0.1, jitter=0.5, timeout=2.0)
    checker = factory.start(handle, cfg, reports)
    assert isinstance(checker, PollChecker)
    try:
        wait_until(lambda: len(reports.of("probe")) >= 6, 10, message="6 probes")
    finally:
        checker.stop()
    times = [t for t, _ in reports.of("probe")]
    gaps = [b - a for a, b in zip(times, times[1:], strict=False)]
    assert min(gaps) >= 0.1 * 0.5 * 0.9, gaps        # never closer than interval x (1 - j)
    unknown = Reports()
    other = factory.start(handle, HealthCheckConfig(mode="poll", service_name="nope",
                                                    interval=0.05), unknown)
    try:
        wait_until(lambda: unknown.of("probe"), 10, message="a probe")
    finally:
        other.stop()
    report = unknown.of("probe")[0][1]
    assert not report.serving and report.detail.startswith("probe failed: NOT_FOUND")


def test_poll_on_a_stopped_backend_reports_failures(setup: Any) -> None:
    backend, handle, factory = setup
    reports = Reports()
    cfg = HealthCheckConfig(mode="poll", interval=0.05, timeout=0.5)
    checker = factory.start(handle, cfg, reports)
    try:
        wait_until(lambda: reports.of("probe"), 10, message="first probe")
        backend.stop()
        wait_until(lambda: any(not r.serving for _, r in reports.of("probe")), 10,
                   message="a failed probe")
        failed = next(r for _, r in reports.of("probe") if not r.serving)
        assert failed.detail.startswith(("probe failed: UNAVAILABLE", "probe timed out"))
    finally:
        checker.stop()


def test_unimplemented_ends_both_modes() -> None:
    scheduler = ThreadScheduler()
    with Backend(health=False) as plain:
        channel = grpc.insecure_channel(f"ipv4:{plain.address}")
        factory = GrpcHealthCheckerFactory(scheduler)
        try:
            for mode in ("watch", "poll"):
                reports = Reports()
                checker = factory.start(Handle(channel, plain.address),
                                        HealthCheckConfig(mode=mode, interval=0.05), reports)
                wait_until(lambda r=reports: r.kinds() == ["unimplemented"], 10,
                           message=f"{mode}: UNIMPLEMENTED")
                time.sleep(0.2)
                assert reports.kinds() == ["unimplemented"]      # no retries
                assert reports.of("unimplemented")[0][1].serving
                checker.stop()
                if isinstance(checker, WatchChecker):
                    checker.join(5)
                    assert not checker.alive
        finally:
            channel.close()
            scheduler.close()


def test_watch_checker_exits_when_the_channel_closes(backend: Backend) -> None:
    scheduler = ThreadScheduler()
    channel = grpc.insecure_channel(f"ipv4:{backend.address}")
    reports = Reports()
    checker = GrpcHealthCheckerFactory(scheduler).start(
        Handle(channel, backend.address), HealthCheckConfig(), reports)
    assert isinstance(checker, WatchChecker)
    try:
        wait_until(lambda: reports.of("watch"), 10, message="first answer")
        channel.close()                  # the stream dies with its connection
        wait_until(lambda: not checker.alive or reports.of("stream_error"), 10,
                   message="the stream noticed")
        checker.stop()
        checker.join(5)
        assert not checker.alive
    finally:
        scheduler.close()
