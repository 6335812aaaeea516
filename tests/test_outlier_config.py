"""Parsing ``outlier_detection`` and the ``"lbclient"`` block: defaults, aliases, and errors
that name the JSON path and the rule."""

from __future__ import annotations

from typing import Any

import pytest

import lbclient
from lbclient.health.codes import ALL_FAILURE_CODES, SERVER_FAILURE_CODES, parse_status_codes
from lbclient.health.options import SlowStartConfig, parse_balancing_options
from lbclient.health.outlier import FailurePercentageEjection, SuccessRateEjection
from lbclient.policies.outlier_detection import Config


def parse(od: dict[str, Any], name: str = "outlier_detection") -> Config:
    body = {"childPolicy": [{"round_robin": {}}], **od}
    cfg = lbclient.parse_service_config({"loadBalancingConfig": [{name: body}]})
    assert cfg.lb.name == "outlier_detection"
    assert isinstance(cfg.lb.config, Config)
    return cfg.lb.config


def test_defaults_are_a50s() -> None:
    c = parse({}).outlier
    assert (c.interval, c.base_ejection_time, c.max_ejection_time) == (10, 30, 300)
    assert c.max_ejection_percent == 10
    assert c.success_rate is None and c.failure_percentage is None
    assert c.consecutive_failures is None and not c.counting
    assert c.failure_codes == SERVER_FAILURE_CODES
    full = parse({"successRateEjection": {}, "failurePercentageEjection": {}}).outlier
    assert full.success_rate == SuccessRateEjection(1900, 100, 5, 100)
    assert full.failure_percentage == FailurePercentageEjection(85, 100, 5, 50)
    assert full.counting


def test_grpc_name_is_an_alias_and_child_is_parsed() -> None:
    c = parse({"interval": "1.5s", "baseEjectionTime": "2s", "maxEjectionPercent": 50,
               "consecutiveFailures": 4,
               "childPolicy": [{"no_such_policy": {}}, {"pick_first": {}}]},
              name="outlier_detection_experimental")
    assert c.outlier.interval == 1.5 and c.outlier.base_ejection_time == 2
    assert c.outlier.max_ejection_time == 300 and c.outlier.max_ejection_percent == 50
    assert c.outlier.consecutive_failures == 4 and c.outlier.counting
    assert c.child.name == "pick_first"


def test_max_ejection_time_default_is_at_least_base() -> None:
    assert parse({"baseEjectionTime": "400s"}).outlier.max_ejection_time == 400
    assert parse({"baseEjectionTime": "400s",
                  "maxEjectionTime": "5s"}).outlier.max_ejection_time == 5


def test_failure_codes_by_name_or_number() -> None:
    c = parse({"failureStatusCodes": ["unavailable", 4, "INTERNAL"]}).outlier
    assert c.failure_codes == {"UNAVAILABLE", "DEADLINE_EXCEEDED", "INTERNAL"}
    assert parse_status_codes(list(range(1, 17)), "x") == ALL_FAILURE_CODES


P = "loadBalancingConfig[0].outlier_detection"


@pytest.mark.parametrize(("body", "path", "rule"), [
    ({"interval": "-1s"}, f"{P}.interval", "non-negative"),
    ({"baseEjectionTime": "soon"}, f"{P}.baseEjectionTime", "duration"),
    ({"maxEjectionTime": -3}, f"{P}.maxEjectionTime", "non-negative"),
    ({"maxEjectionPercent": 101}, f"{P}.maxEjectionPercent", "at most 100"),
    ({"maxEjectionPercent": -1}, f"{P}.maxEjectionPercent", "at least 0"),
    ({"successRateEjection": {"enforcementPercentage": 101}},
     f"{P}.successRateEjection.enforcementPercentage", "at most 100"),
    ({"successRateEjection": {"stdevFactor": 1.5}},
     f"{P}.successRateEjection.stdevFactor", "integer"),
    ({"successRateEjection": {"minimumHost": 3}},
     f"{P}.successRateEjection.minimumHost", "unknown field"),
    ({"failurePercentageEjection": {"threshold": 150}},
     f"{P}.failurePercentageEjection.threshold", "at most 100"),
    ({"failurePercentageEjection": {"enforcementPercentage": 200}},
     f"{P}.failurePercentageEjection.enforcementPercentage", "at most 100"),
    ({"failurePercentageEjection": []}, f"{P}.failurePercentageEjection", "JSON object"),
    ({"consecutiveFailures": 0}, f"{P}.consecutiveFailures", "at least 1"),
    ({"failureStatusCodes": ["OK"]}, f"{P}.failureStatusCodes[0]", "OK cannot"),
    ({"failureStatusCodes": ["NOPE"]}, f"{P}.failureStatusCodes[0]", "unknown status code"),
    ({"failureStatusCodes": [99]}, f"{P}.failureStatusCodes[0]", "unknown status code"),
    ({"failureStatusCodes": []}, f"{P}.failureStatusCodes", "at least one"),
    ({"childPolicy": None}, f"{P}.childPolicy", "is required"),
    ({"childPolicy": [{"nope": {}}]}, f"{P}.childPolicy", "no supported policy"),
    ({"intervall": "1s"}, f"{P}.intervall", "unknown field"),
])
def test_bad_configs_name_the_path_and_rule(body: dict[str, Any], path: str,
                                            rule: str) -> None:
    with pytest.raises(lbclient.ServiceConfigError) as info:
        parse(body)
    message = str(info.value)
    assert message.startswith(path), message
    assert rule in message, message


def test_lbclient_block_defaults_and_values() -> None:
    assert parse_balancing_options(None).panic_threshold == 50
    assert parse_balancing_options(None).slow_start is None
    opts = parse_balancing_options({"panicThreshold": 0, "slowStartConfig": {
        "slowStartWindow": "30s", "aggression": 2, "minWeightPercent": 5}})
    assert opts.panic_threshold == 0
    assert opts.slow_start == SlowStartConfig(30.0, 2.0, 5.0)
    assert parse_balancing_options({"slowStartConfig": {
        "slowStartWindow": "1s"}}).slow_start == SlowStartConfig(1.0, 1.0, 10.0)


@pytest.mark.parametrize(("block", "path", "rule"), [
    ({"panicThreshold": 101}, "lbclient.panicThreshold", "at most 100"),
    ({"panicThreshold": "half"}, "lbclient.panicThreshold", "number"),
    ({"slowStartConfig": {}}, "lbclient.slowStartConfig.slowStartWindow", "required"),
    ({"slowStartConfig": {"slowStartWindow": "0s"}},
     "lbclient.slowStartConfig.slowStartWindow", "greater than 0"),
    ({"slowStartConfig": {"slowStartWindow": "1s", "aggression": 0}},
     "lbclient.slowStartConfig.aggression", "greater than 0"),
    ({"slowStartConfig": {"slowStartWindow": "1s", "minWeightPercent": 120}},
     "lbclient.slowStartConfig.minWeightPercent", "at most 100"),
    ({"panic": 1}, "lbclient.panic", "unknown field"),
    ([], "lbclient", "JSON object"),
])
def test_bad_lbclient_block_names_the_path(block: Any, path: str, rule: str) -> None:
    with pytest.raises(lbclient.ServiceConfigError) as info:
        parse_balancing_options(block)
    assert str(info.value).startswith(path) and rule in str(info.value), str(info.value)


def test_a_bad_lbclient_block_fails_channel_creation() -> None:
    with pytest.raises(lbclient.ServiceConfigError, match="lbclient.panicThreshold"):
        lbclient.insecure_channel("ipv4:127.0.0.1:1",
                                  service_config={"lbclient": {"panicThreshold": -5}})


def test_slow_start_factor_follows_envoys_formula() -> None:
    s = SlowStartConfig(window=10.0, aggression=1.0, min_weight_percent=10.0)
    assert s.factor(0.0) == pytest.approx(0.1)       # max(0, 1 s)/10 = 0.1
    assert s.factor(5.0) == pytest.approx(0.5)
    assert s.factor(10.0) == 1.0
    a2 = SlowStartConfig(window=10.0, aggression=2.0, min_weight_percent=10.0)
    assert a2.factor(4.0) == pytest.approx(0.4 ** 0.5)
    floor = SlowStartConfig(window=100.0, aggression=1.0, min_weight_percent=25.0)
    assert floor.factor(10.0) == pytest.approx(0.25)  # min weight wins over 0.1
    assert floor.factor(50.0) == pytest.approx(0.5)
