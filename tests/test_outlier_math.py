"""gRFC A50 outlier math against hand-computed examples (injected clock, seeded rng)."""

from __future__ import annotations

import math
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lbclient.health.codes import ALL_FAILURE_CODES
from lbclient.health.outlier import (
    FailurePercentageEjection,
    OutlierConfig,
    OutlierDetector,
    SuccessRateEjection,
    mean_stdev,
)


class Clock:
    def __init__(self, t: float = 1000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


ADDRS = [f"10.0.0.{i}:80" for i in range(1, 11)]


def detector(cfg: OutlierConfig, n: int = 5, seed: int = 1) -> tuple[OutlierDetector, Clock]:
    clock = Clock()
    det = OutlierDetector(cfg, clock, random.Random(seed))
    det.set_addresses(ADDRS[:n])
    assert det.reconfigure(cfg) == cfg.interval
    return det, clock


def feed(det: OutlierDetector, address: str, ok: int, failed: int,
         code: str = "UNAVAILABLE") -> None:
    for _ in range(ok):
        det.record(address, "OK")
    for _ in range(failed):
        det.record(address, code)


SR = OutlierConfig(success_rate=SuccessRateEjection(request_volume=10), max_ejection_percent=100)


def test_mean_and_population_stdev_by_hand() -> None:
    # rates 1,1,1,1,0.5: mean 0.9; squared deviations 4*0.01 + 0.16 = 0.2; /5 = 0.04
    mean, stdev = mean_stdev([1, 1, 1, 1, 0.5])
    assert mean == pytest.approx(0.9)
    assert stdev == pytest.approx(0.2)


def test_success_rate_ejects_below_mean_minus_factor_stdev() -> None:
    # threshold = 0.9 - 0.2 * 1.9 = 0.52; the 50% host is below it.
    det, _ = detector(SR)
    for a in ADDRS[:4]:
        feed(det, a, 10, 0)
    feed(det, ADDRS[4], 5, 5)
    result = det.sweep()
    assert [e.address for e in result.ejected] == [ADDRS[4]]
    assert "success rate 50.0% below 52.0%" in result.ejected[0].reason
    assert det.is_ejected(ADDRS[4])


def test_success_rate_keeps_a_host_just_above_the_threshold() -> None:
    # rates 1,1,1,0.9,0.8: mean 0.94, stdev 0.08, threshold 0.94 - 0.152 = 0.788 < 0.8
    det, _ = detector(SR)
    for a in ADDRS[:3]:
        feed(det, a, 10, 0)
    feed(det, ADDRS[3], 9, 1)
    feed(det, ADDRS[4], 8, 2)
    assert det.sweep().ejected == ()
    # a smaller factor (1.0) lowers the bar: threshold 0.94 - 0.08 = 0.86 > 0.8
    det2, _ = detector(OutlierConfig(success_rate=SuccessRateEjection(
        stdev_factor=1000, request_volume=10), max_ejection_percent=100))
    for a in ADDRS[:3]:
        feed(det2, a, 10, 0)
    feed(det2, ADDRS[3], 9, 1)
    feed(det2, ADDRS[4], 8, 2)
    assert [e.address for e in det2.sweep().ejected] == [ADDRS[4]]


def test_success_rate_needs_minimum_hosts_with_request_volume() -> None:
    det, _ = detector(SR)
    for a in ADDRS[:3]:
        feed(det, a, 10, 0)
    feed(det, ADDRS[3], 9, 0)          # 9 < requestVolume 10: not a candidate
    feed(det, ADDRS[4], 0, 10)
    assert det.sweep().ejected == ()   # only 4 candidates < minimumHosts 5


def test_failure_percentage_is_strictly_greater_than_threshold() -> None:
    cfg = OutlierConfig(failure_percentage=FailurePercentageEjection(
        threshold=85, minimum_hosts=3, request_volume=20), max_ejection_percent=100)
    det, _ = detector(cfg, n=3)
    feed(det, ADDRS[0], 3, 17)   # 85% failures: not greater than 85
    feed(det, ADDRS[1], 2, 18)   # 90%: ejected
    feed(det, ADDRS[2], 0, 19)   # 100% but 19 < requestVolume 20: skipped
    result = det.sweep()
    assert [e.address for e in result.ejected] == [ADDRS[1]]
    assert "failure percentage 90.0% above 85% (18/20)" in result.ejected[0].reason


def test_failure_percentage_minimum_hosts_counts_every_address() -> None:
    # A50: "If the number of addresses is less than minimum_hosts, stop" (all addresses,
    # with or without traffic).
    cfg = OutlierConfig(failure_percentage=FailurePercentageEjection(
        minimum_hosts=3, request_volume=5))
    det, _ = detector(cfg, n=3)
    feed(det, ADDRS[0], 0, 10)
    assert [e.address for e in det.sweep().ejected] == [ADDRS[0]]
    det2, _ = detector(cfg, n=2)
    feed(det2, ADDRS[0], 0, 10)
    assert det2.sweep().ejected == ()


def test_only_the_last_interval_counts() -> None:
    cfg = OutlierConfig(failure_percentage=FailurePercentageEjection(
        minimum_hosts=2, request_volume=10))
    det, _ = detector(cfg, n=2)
    feed(det, ADDRS[0], 0, 9)
    assert det.sweep().ejected == ()          # 9 calls: below the volume
    feed(det, ADDRS[0], 0, 9)
    assert det.sweep().ejected == ()          # the earlier 9 were swapped out
    assert det.last_interval(ADDRS[0]) == (0, 9)


def test_enforcement_percentage_zero_never_ejects_and_fifty_sometimes() -> None:
    def run(pct: int, seed: int) -> bool:
        cfg = OutlierConfig(failure_percentage=FailurePercentageEjection(
            minimum_hosts=2, request_volume=1, enforcement_percentage=pct))
        det, _ = detector(cfg, n=2, seed=seed)
        feed(det, ADDRS[0], 0, 5)
        return bool(det.sweep().ejected)

    assert not any(run(0, s) for s in range(50))
    hits = sum(run(50, s) for s in range(200))
    assert 60 < hits < 140, hits
    assert all(run(100, s) for s in range(50))


def test_max_ejection_percent_stops_ejecting() -> None:
    # 10 failing hosts, max 30%: ejections at 0%, 10%, 20% -> 3, then 30% is not < 30.
    cfg = OutlierConfig(failure_percentage=FailurePercentageEjection(
        minimum_hosts=5, request_volume=1), max_ejection_percent=30)
    det, _ = detector(cfg, n=10)
    for a in ADDRS:
        feed(det, a, 0, 3)
    assert len(det.sweep().ejected) == 3


def test_one_ejection_always_fits_but_never_the_last_endpoint() -> None:
    cfg = OutlierConfig(failure_percentage=FailurePercentageEjection(
        minimum_hosts=1, request_volume=1), max_ejection_percent=0)
    det, _ = detector(cfg, n=3)
    for a in ADDRS[:3]:
        feed(det, a, 0, 3)
    assert len(det.sweep().ejected) == 1      # "will eject at least one address"
    full = OutlierConfig(failure_percentage=cfg.failure_percentage, max_ejection_percent=100)
    det2, _ = detector(full, n=2)
    for a in ADDRS[:2]:
        feed(det2, a, 0, 3)
    assert len(det2.sweep().ejected) == 1     # the other one stays
    det1, _ = detector(full, n=1)
    feed(det1, ADDRS[0], 0, 3)
    assert det1.sweep().ejected == ()          # a single endpoint is never ejected


def test_ejection_time_grows_with_each_ejection_and_shrinks_while_healthy() -> None:
    cfg = OutlierConfig(interval=10, base_ejection_time=30, max_ejection_time=75,
                        consecutive_failures=1)
    det, clock = detector(cfg, n=3)
    e1 = det.eject(ADDRS[0], "x")
    assert e1 is not None and e1.until == 1030 and det.multiplier(ADDRS[0]) == 1
    clock.t = 1029
    assert det.sweep().expired == ()
    clock.t = 1030
    assert det.sweep().expired == (ADDRS[0],)
    det.uneject(ADDRS[0])
    e2 = det.eject(ADDRS[0], "x")             # multiplier 2: 60 s
    assert e2 is not None and e2.until == 1030 + 60
    det.uneject(ADDRS[0])
    e3 = det.eject(ADDRS[0], "x")             # 3 * 30 = 90, capped at max(30, 75) = 75
    assert e3 is not None and e3.until == 1030 + 75 and det.multiplier(ADDRS[0]) == 3
    det.uneject(ADDRS[0])
    for expected in (2, 1, 0, 0):             # each sweep while not ejected: -1
        det.sweep()
        assert det.multiplier(ADDRS[0]) == expected
    e4 = det.eject(ADDRS[0], "x")
    assert e4 is not None and e4.until == clock.t + 30


def test_max_ejection_time_below_base_uses_base() -> None:
    cfg = OutlierConfig(base_ejection_time=30, max_ejection_time=10)
    assert cfg.ejection_duration(1) == 30 and cfg.ejection_duration(5) == 30


def test_consecutive_failures_trip_once_and_success_resets() -> None:
    cfg = OutlierConfig(consecutive_failures=3)
    det, _ = detector(cfg, n=3)
    trips: list[str] = []
    det.on_trip = lambda address, reason: trips.append(address)
    feed(det, ADDRS[0], 0, 2)
    det.record(ADDRS[0], "OK")
    feed(det, ADDRS[0], 0, 2)
    assert trips == []
    det.record(ADDRS[0], "CANCELLED")          # the client's doing: not counted
    det.record(ADDRS[0], "INVALID_ARGUMENT")   # the server answered: a success
    feed(det, ADDRS[0], 0, 2)
    assert trips == []
    det.record(ADDRS[0], "DEADLINE_EXCEEDED")
    assert trips == [ADDRS[0]]
    assert det.eject(ADDRS[0], "3 consecutive failures") is not None
    det.record(ADDRS[0], "INTERNAL")            # already ejected: no second trip
    assert trips == [ADDRS[0]]


def test_failure_codes_are_configurable() -> None:
    cfg = OutlierConfig(consecutive_failures=2, failure_codes=ALL_FAILURE_CODES)
    det, _ = detector(cfg, n=2)
    trips: list[str] = []
    det.on_trip = lambda address, reason: trips.append(address)
    feed(det, ADDRS[1], 0, 2, code="NOT_FOUND")   # counts only with gRPC's rule
    feed(det, ADDRS[0], 0, 2, code="NOT_FOUND")
    assert trips == [ADDRS[1], ADDRS[0]]
    det2, _ = detector(OutlierConfig(consecutive_failures=2), n=2)
    det2.on_trip = lambda address, reason: trips.append(address)
    feed(det2, ADDRS[0], 0, 5, code="NOT_FOUND")
    assert trips == [ADDRS[1], ADDRS[0]]


def test_reconfigure_keeps_the_timer_phase_and_noop_config_unejects() -> None:
    cfg = OutlierConfig(interval=10, consecutive_failures=1)
    det, clock = detector(cfg, n=3)
    clock.t += 4
    assert det.reconfigure(OutlierConfig(interval=10, consecutive_failures=2)) == 6
    clock.t += 20
    assert det.reconfigure(cfg) == 0
    det.sweep()
    assert det.eject(ADDRS[0], "x") is not None
    assert det.reconfigure(OutlierConfig()) is None      # no algorithm: A50 no-op
    assert not det.is_ejected(ADDRS[0]) and det.multiplier(ADDRS[0]) == 0
    assert det.reconfigure(cfg) == 10                    # timer restarts from scratch


def test_removed_addresses_are_forgotten() -> None:
    det, _ = detector(OutlierConfig(consecutive_failures=1), n=3)
    det.eject(ADDRS[0], "x")
    det.set_addresses(ADDRS[1:3])
    assert det.addresses() == ADDRS[1:3]
    assert not det.is_ejected(ADDRS[0]) and det.ejected_until(ADDRS[0]) is None
    det.record(ADDRS[0], "UNAVAILABLE")                  # ignored, no error
    det.set_addresses(ADDRS[:3])
    assert det.multiplier(ADDRS[0]) == 0                 # a fresh entry


@settings(max_examples=150, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 40), st.integers(0, 40)), min_size=1, max_size=10),
       st.integers(0, 100), st.integers(0, 3))
def test_limits_hold_for_any_traffic(traffic: list[tuple[int, int]], max_pct: int,
                                     seed: int) -> None:
    cfg = OutlierConfig(success_rate=SuccessRateEjection(minimum_hosts=1, request_volume=1),
                        failure_percentage=FailurePercentageEjection(
                            threshold=10, minimum_hosts=1, request_volume=1),
                        max_ejection_percent=max_pct)
    det, _ = detector(cfg, n=len(traffic), seed=seed)
    for (ok, failed), a in zip(traffic, ADDRS, strict=False):
        feed(det, a, ok, failed)
    ejected = det.sweep().ejected
    n = len(traffic)
    assert len(ejected) < n or n == 0                    # never the last endpoint
    allowed = max(1, math.ceil(n * max_pct / 100))       # at least one always fits
    assert len(ejected) <= allowed
    for e in ejected:                                    # only endpoints with failures
        ok, failed = traffic[ADDRS.index(e.address)]
        assert failed > 0
