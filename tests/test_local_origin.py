"""Local-origin failures (connection failures, resets, timeouts) counted apart from the
statuses servers choose (Envoy's split_external_local_origin_errors; issue "Resilience",
deliverable 5)."""

from __future__ import annotations

import time
from typing import Any

import grpc
import pytest
from helpers import wait_ready, wait_until

import lbclient
from lbclient.health.origin import local_origin
from lbclient.health.outlier import OutlierConfig, OutlierDetector
from lbclient.testing import Fleet, echo_pb2, echo_pb2_grpc

# (code, details as grpc or a server writes them, local-origin?)
ORIGIN_TABLE = [
    ("UNAVAILABLE", "failed to connect to all addresses; last error: UNKNOWN: "
                    "ipv4:127.0.0.1:1: Failed to connect to remote host: Connection refused",
     True),
    ("UNAVAILABLE", "Cancelling all calls", True),                         # GOAWAY / reset
    ("UNAVAILABLE", "Socket closed", True),
    ("INTERNAL", "Received RST_STREAM with error code 2", True),
    ("UNAVAILABLE", "keepalive watchdog timeout", True),
    ("DEADLINE_EXCEEDED", "Deadline Exceeded", True),                      # the client's clock
    ("UNAVAILABLE", "backend overloaded, try later", False),               # the server's choice
    ("INTERNAL", "database error", False),
    ("RESOURCE_EXHAUSTED", "quota", False),
    ("UNKNOWN", "Exception calling application: boom", False),
    ("CANCELLED", "Locally cancelled by application!", False),            # the caller's doing
    ("OK", "", False),
]


@pytest.mark.parametrize(("code", "details", "local"), ORIGIN_TABLE)
def test_what_counts_as_local_origin(code: str, details: str, local: bool) -> None:
    assert local_origin(code, details) is local


def _detector(**kw: Any) -> tuple[OutlierDetector, list[tuple[str, str]]]:
    det = OutlierDetector(OutlierConfig(**kw), time.monotonic)
    det.set_addresses(["a", "b", "c"])
    trips: list[tuple[str, str]] = []
    det.on_trip = lambda address, reason: trips.append((address, reason))
    return det, trips


def test_split_mode_has_its_own_consecutive_threshold() -> None:
    det, trips = _detector(consecutive_failures=5, split_local=True,
                           consecutive_local_failures=3)
    for _ in range(2):
        det.record("a", "UNAVAILABLE", local=True)
    det.record("a", "OK")                        # the server answered: run broken
    for _ in range(2):
        det.record("a", "UNAVAILABLE", local=True)
    assert trips == []
    det.record("a", "DEADLINE_EXCEEDED", local=True)
    assert trips == [("a", "3 consecutive local-origin failures "
                           "(connection failures, resets, timeouts)")]
    for _ in range(4):                           # server-chosen failures: their own count
        det.record("b", "UNAVAILABLE")
    det.record("b", "UNAVAILABLE", local=True)   # does not break nor extend that run
    det.record("b", "UNAVAILABLE")
    assert trips[-1] == ("b", "5 consecutive failures")


def test_without_split_every_failure_counts_together() -> None:
    det, trips = _detector(consecutive_failures=3)
    det.record("a", "UNAVAILABLE", local=True)
    det.record("a", "UNAVAILABLE")
    det.record("a", "DEADLINE_EXCEEDED", local=True)
    assert trips == [("a", "3 consecutive failures")]


def test_the_local_threshold_needs_split_mode() -> None:
    with pytest.raises(lbclient.ServiceConfigError,
                       match=r"consecutiveLocalOriginFailure: needs splitExternal"):
        lbclient.parse_service_config({"loadBalancingConfig": [{"outlier_detection": {
            "consecutiveLocalOriginFailure": 3, "childPolicy": [{"round_robin": {}}]}}]})


def _config(split: bool) -> dict[str, Any]:
    od: dict[str, Any] = {"consecutiveFailures": 50, "maxEjectionPercent": 100,
                          "baseEjectionTime": "30s", "childPolicy": [{"round_robin": {}}]}
    if split:
        od.update(splitExternalLocalOriginErrors=True, consecutiveLocalOriginFailure=3)
    return {"loadBalancingConfig": [{"outlier_detection": od}]}


def test_a_dying_host_and_an_application_error_rate_are_told_apart() -> None:
    with Fleet(3) as fleet:
        errors, hung = fleet[0], fleet[1]
        with lbclient.insecure_channel(fleet.target, service_config=_config(True)) as ch:
            events: list[Any] = []
            ch.add_event_listener(events.append)
            wait_ready(ch, 3)
            stub = echo_pb2_grpc.EchoStub(ch)
            errors.set_error_rate(1.0)           # the application answers UNAVAILABLE
            hung.hang(True)                      # accepts calls, never answers
            outcomes: dict[str, int] = {}
            for _ in range(30):
                try:
                    stub.Unary(echo_pb2.EchoRequest(message="o"), timeout=0.2)
                    outcomes["OK"] = outcomes.get("OK", 0) + 1
                except grpc.RpcError as exc:
                    outcomes[exc.code().name] = outcomes.get(exc.code().name, 0) + 1
            hung.hang(False)
            wait_until(lambda: any(e.kind == "ejected" for e in events), 5)
            ejected = [e for e in events if e.kind == "ejected"]
            assert [e.address for e in ejected] == [hung.address], ejected
            assert "local-origin" in ejected[0].reason
            info = {e.address: e for e in ch.endpoints()}
            assert info[hung.address].local_failures >= 3
            assert info[errors.address].local_failures == 0     # the server chose those
            assert info[errors.address].failures >= 5 and not info[errors.address].ejected
            assert outcomes.get("DEADLINE_EXCEEDED", 0) >= 3, outcomes
