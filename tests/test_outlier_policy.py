"""The ``outlier_detection`` policy object: delegation to its child, counting through
``on_done``, and attach/detach with its host (no balancer, no network)."""

from __future__ import annotations

import random
import time
from collections.abc import Sequence
from typing import Any

from lbclient.balancer.picker import CallOutcome, Candidate, EndpointStats, PickInfo, PickResult
from lbclient.balancer.policy import PolicyContext, get_policy
from lbclient.endpoint import Endpoint
from lbclient.health.outlier import HOST_OPTION, OutlierConfig, OutlierDetector
from lbclient.policies.outlier_detection import CountingPicker, OutlierDetection


class Host:
    def __init__(self) -> None:
        self.detectors: list[OutlierDetector] = []
        self.detached: list[OutlierDetector] = []
        self.configs: list[OutlierConfig] = []

    def attach_outlier_detection(self, config: OutlierConfig) -> OutlierDetector:
        self.configs.append(config)
        det = OutlierDetector(config, time.monotonic, random.Random(1))
        det.set_addresses(["a:1", "b:1"])
        self.detectors.append(det)
        return det

    def detach_outlier_detection(self, detector: OutlierDetector) -> None:
        self.detached.append(detector)


def candidates() -> list[Candidate]:
    return [Candidate(Endpoint(a), 1.0, EndpointStats(time.monotonic), None)
            for a in ("a:1", "b:1")]


def build(raw: dict[str, Any], host: Host | None) -> OutlierDetection:
    spec = get_policy("outlier_detection")
    assert spec is not None
    cfg = spec.parse_config({"childPolicy": [{"round_robin": {}}], **raw}, "od")
    ctx = PolicyContext(clock=time.monotonic, rng=random.Random(2),
                        options={HOST_OPTION: host} if host is not None else {})
    policy = spec.create(cfg, ctx)
    assert isinstance(policy, OutlierDetection)
    return policy


def test_counting_picker_counts_then_runs_the_childs_callback() -> None:
    host = Host()
    policy = build({"consecutiveFailures": 2}, host)
    assert host.configs[0].consecutive_failures == 2
    picker = policy.build_picker(candidates())
    assert isinstance(picker, CountingPicker)
    det = host.detectors[0]
    trips: list[str] = []
    det.on_trip = lambda address, reason: trips.append(address)
    for _ in range(4):
        res = picker.pick(PickInfo("/s/m"))
        assert res.on_done is not None
        res.on_done(CallOutcome("UNAVAILABLE", 0.01))
    assert sorted(trips) == ["a:1", "b:1"]           # 2 failures each, round robin
    policy.close()
    assert host.detached == [det]


def test_inner_on_done_still_runs() -> None:
    host = Host()
    seen: list[str] = []

    class Child:
        def pick(self, info: PickInfo) -> PickResult:
            c = candidates()[0]
            return PickResult(c, lambda o: seen.append(o.code), counted=True)

    picker = CountingPicker(Child(), host.attach_outlier_detection(
        OutlierConfig(consecutive_failures=5)))
    res = picker.pick(PickInfo("/s/m"))
    assert res.counted and res.candidate.address == "a:1"
    assert res.on_done is not None
    res.on_done(CallOutcome("INTERNAL", 0.1))
    assert seen == ["INTERNAL"]
    assert host.detectors[0].last_interval("a:1") == (0, 0)   # still in the active bucket
    host.detectors[0].sweep()
    assert host.detectors[0].last_interval("a:1") == (0, 1)


def test_noop_config_and_no_host_only_delegate() -> None:
    host = Host()
    noop = build({}, host)                         # no algorithm: A50's no-op config
    assert not isinstance(noop.build_picker(candidates()), CountingPicker)
    alone = build({"consecutiveFailures": 1}, None)
    assert alone.detector is None
    assert not isinstance(alone.build_picker(candidates()), CountingPicker)
    alone.close()                                   # nothing to detach


def test_child_hooks_are_forwarded() -> None:
    calls: list[Any] = []
    policy = build({"consecutiveFailures": 1}, Host())

    class Child:
        def build_picker(self, cands: Sequence[Candidate]) -> Any:
            calls.append(("build", len(cands)))
            return object()

        def endpoint_weight(self, c: Candidate) -> float:
            calls.append(("weight", c.address))
            return 7.0

        def endpoints_changed(self, endpoints: Sequence[Endpoint]) -> None:
            calls.append(("changed", len(endpoints)))

        def close(self) -> None:
            calls.append(("close",))

    policy.child = Child()  # type: ignore[assignment]
    c = candidates()
    assert policy.endpoint_weight(c[0]) == 7.0
    policy.endpoints_changed([Endpoint("a:1")])
    policy.build_picker(c)
    policy.close()
    assert calls == [("weight", "a:1"), ("changed", 1), ("build", 2), ("close",)]


def test_grpc_alias_builds_the_same_policy() -> None:
    assert get_policy("outlier_detection_experimental") is get_policy("outlier_detection")
