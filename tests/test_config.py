"""Service config parsing: gRPC's documented configs parse; bad ones name their path."""

from __future__ import annotations

import json
import logging
import pathlib
from typing import Any

import pytest
from helpers import wait_until

import lbclient
from lbclient import ServiceConfigError, config
from lbclient.config import parse_service_config

VALID = [
    ({}, "round_robin"),
    (None, "round_robin"),
    ("", "round_robin"),
    ({"loadBalancingConfig": [{"round_robin": {}}]}, "round_robin"),
    ({"loadBalancingConfig": [{"pick_first": {}}]}, "pick_first"),
    ({"loadBalancingConfig": [{"pick_first": {"shuffleAddressList": True}}]}, "pick_first"),
    ({"loadBalancingConfig": [{"grpclb": {}}, {"xds_wrr_locality_experimental": {}},
                              {"round_robin": {}}]}, "round_robin"),
    ({"loadBalancingPolicy": "ROUND_ROBIN"}, "round_robin"),
    ({"loadBalancingPolicy": "pick_first"}, "pick_first"),
    # From gRPC's service config documentation (doc/service_config.md).
    ({"loadBalancingConfig": [{"round_robin": {}}],
      "methodConfig": [{"name": [{"service": "foo", "method": "bar"}, {"service": "baz"}],
                        "timeout": "1.000000001s"}]}, "round_robin"),
    # gRFC A6 example.
    ({"methodConfig": [{"name": [{"service": "grpc.testing.TestService"}],
                        "retryPolicy": {"maxAttempts": 4, "initialBackoff": "0.1s",
                                        "maxBackoff": "1s", "backoffMultiplier": 2,
                                        "retryableStatusCodes": ["UNAVAILABLE"]}}],
      "retryThrottling": {"maxTokens": 10, "tokenRatio": 0.1}}, "round_robin"),
    ({"methodConfig": [{"name": [{}], "waitForReady": True, "timeout": "2s",
                        "hedgingPolicy": {"maxAttempts": 3, "hedgingDelay": "0.5s",
                                          "nonFatalStatusCodes": ["UNAVAILABLE", 4]}}]},
     "round_robin"),
    ({"healthCheckConfig": {"serviceName": "orders"}}, "round_robin"),
    ({"healthCheckConfig": {"serviceName": "", "mode": "poll", "interval": "2s",
                            "timeout": "1s", "unhealthyThreshold": 3,
                            "healthyThreshold": 2}}, "round_robin"),
]


@pytest.mark.parametrize(("raw", "policy"), VALID)
def test_valid_configs_parse(raw: object, policy: str) -> None:
    cfg = parse_service_config(raw)  # type: ignore[arg-type]
    assert cfg.lb.name == policy
    if isinstance(raw, dict):
        assert parse_service_config(json.dumps(raw)).lb.name == policy


def test_defaults_are_filled() -> None:
    cfg = parse_service_config({
        "healthCheckConfig": {"serviceName": "s"},
        "methodConfig": [{"name": [{"service": "a.B"}],
                          "retryPolicy": {"maxAttempts": 9, "initialBackoff": "0.1s",
                                          "maxBackoff": "1s", "backoffMultiplier": 2,
                                          "retryableStatusCodes": ["unavailable"]}}]})
    assert cfg.health_check is not None
    assert (cfg.health_check.mode, cfg.health_check.interval) == ("watch", 10.0)
    rp = cfg.method_configs[0].retry_policy
    assert rp is not None
    assert rp.max_attempts == 5  # gRFC A6: capped at 5
    assert rp.retryable_status_codes == frozenset({"UNAVAILABLE"})


BAD = [
    ("not json", "<root>", "invalid JSON"),
    ([], "<root>", "must be a JSON object"),
    ({"loadBalancingConfig": [{"foo": {}}, {"bar": {}}]}, "loadBalancingConfig",
     'no supported policy in ["foo", "bar"]'),
    ({"loadBalancingConfig": {}}, "loadBalancingConfig", "must be a JSON array"),
    ({"loadBalancingConfig": [{"round_robin": {}, "pick_first": {}}]},
     "loadBalancingConfig[0]", "exactly one key"),
    ({"loadBalancingConfig": ["round_robin"]}, "loadBalancingConfig[0]",
     "must be a JSON object"),
    ({"loadBalancingConfig": [{"pick_first": {"shuffleAddressList": "yes"}}]},
     "loadBalancingConfig[0].pick_first.shuffleAddressList", "must be a boolean"),
    ({"loadBalancingConfig": [{"round_robin": {"x": 1}}]},
     "loadBalancingConfig[0].round_robin.x", "unknown field"),
    ({"loadBalancingPolicy": "nope"}, "loadBalancingPolicy", "unknown policy"),
    ({"loadBalancingPolicy": 3}, "loadBalancingPolicy", "must be a string"),
    ({"methodConfig": {}}, "methodConfig", "must be a JSON array"),
    ({"methodConfig": [{"name": [{"method": "Get"}]}]}, "methodConfig[0].name[0].method",
     "needs a service"),
    ({"methodConfig": [{"name": [{}], "timeout": "soon"}]}, "methodConfig[0].timeout",
     "duration"),
    ({"methodConfig": [{"name": [{}], "timeout": "-1s"}]}, "methodConfig[0].timeout",
     "greater than 0"),
    ({"methodConfig": [{"name": [{}], "waitForReady": "true"}]},
     "methodConfig[0].waitForReady", "must be a boolean"),
    ({"methodConfig": [{"name": [{}]}, {"name": [{}]}]}, "methodConfig[1].name",
     "duplicate name"),
    ({"methodConfig": [{"name": [{}], "retryPolicy": {"maxAttempts": 1,
                                                       "initialBackoff": "1s",
                                                       "maxBackoff": "1s",
                                                       "backoffMultiplier": 2,
                                                       "retryableStatusCodes": [14]}}]},
     "methodConfig[0].retryPolicy.maxAttempts", "at least 2"),
    ({"methodConfig": [{"name": [{}], "retryPolicy": {"maxAttempts": 3,
                                                       "initialBackoff": "1s",
                                                       "maxBackoff": "1s",
                                                       "backoffMultiplier": 2}}]},
     "methodConfig[0].retryPolicy.retryableStatusCodes", "is required"),
    ({"methodConfig": [{"name": [{}], "retryPolicy": {"maxAttempts": 3,
                                                       "initialBackoff": "1s",
                                                       "maxBackoff": "1s",
                                                       "backoffMultiplier": 2,
                                                       "retryableStatusCodes": ["NOPE"]}}]},
     "methodConfig[0].retryPolicy.retryableStatusCodes[0]", "unknown status code"),
    ({"methodConfig": [{"name": [{}], "retryPolicy": {"maxAttempts": 3,
                                                       "initialBackoff": "0s",
                                                       "maxBackoff": "1s",
                                                       "backoffMultiplier": 2,
                                                       "retryableStatusCodes": [14]}}]},
     "methodConfig[0].retryPolicy.initialBackoff", "greater than 0"),
    ({"retryThrottling": {"maxTokens": 0, "tokenRatio": 1}}, "retryThrottling.maxTokens",
     "greater than 0"),
    ({"retryThrottling": {"maxTokens": 10}}, "retryThrottling.tokenRatio", "is required"),
    ({"healthCheckConfig": {"serviceName": 5}}, "healthCheckConfig.serviceName",
     "must be a string"),
    ({"healthCheckConfig": {"mode": "push"}}, "healthCheckConfig.mode", '"watch" or "poll"'),
    ({"healthCheckConfig": {"unhealthyThreshold": 0}},
     "healthCheckConfig.unhealthyThreshold", "at least 1"),
    ({"lbclient": {"panicThreshold": 300}}, "lbclient.panicThreshold", "at most 100"),
    ({"lbclient": []}, "lbclient", "must be a JSON object"),
]


@pytest.mark.parametrize(("raw", "path", "words"), BAD)
def test_bad_configs_name_their_path(raw: object, path: str, words: str) -> None:
    with pytest.raises(ServiceConfigError) as info:
        parse_service_config(raw)  # type: ignore[arg-type]
    assert info.value.path == path
    assert words in str(info.value)
    assert str(info.value).startswith(path)
    assert isinstance(info.value, ValueError)


def test_channel_rejects_bad_config_before_connecting() -> None:
    with pytest.raises(ServiceConfigError, match="no supported policy"):
        lbclient.insecure_channel("ipv4:127.0.0.1:1",
                                  service_config={"loadBalancingConfig": [{"nope": {}}]})


# ------------------------------------------------------ unknown top-level fields (gRPC rule)
def _config_warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records
            if r.name == "lbclient.config" and r.levelno == logging.WARNING]


UNKNOWN = [
    # (config, the policy the channel really uses, words the one warning line contains)
    ({"loadBalancingconfig": [{"pick_first": {}}]}, "round_robin",
     ['ignoring unknown top-level field "loadBalancingconfig" '
      '(did you mean "loadBalancingConfig"?)']),
    ({"load_balancing_config": [{"pick_first": {}}]}, "round_robin",
     ['"load_balancing_config" (did you mean "loadBalancingConfig"?)']),
    ({"loadBalancingConfig": [{"pick_first": {}}], "methodconfig": [], "retry_throttling": {}},
     "pick_first",
     ['fields "methodconfig" (did you mean "methodConfig"?), '
      '"retry_throttling" (did you mean "retryThrottling"?)']),
    ({"loadBalancingPolicy": "pick_first", "healthCheck": {"serviceName": "x"}}, "pick_first",
     ['"healthCheck" (did you mean "healthCheckConfig"?)']),
    ({"loadBalancingConfig": [{"pick_first": {}}], "fooBar": 1}, "pick_first",
     ['field "fooBar" (known fields: healthCheckConfig, loadBalancingConfig, '
      "loadBalancingPolicy, methodConfig, retryThrottling, lbclient)"]),
    ({"LBClient": {"panicThreshold": 10}}, "round_robin",
     ['"LBClient" (did you mean "lbclient"?)']),
]


@pytest.mark.parametrize(("raw", "policy", "words"), UNKNOWN)
@pytest.mark.parametrize("form", ["dict", "json", "bytes"])
def test_unknown_top_level_fields_are_ignored_with_one_warning(
        caplog: pytest.LogCaptureFixture, raw: dict[str, Any], policy: str,
        words: list[str], form: str) -> None:
    value: Any = {"dict": raw, "json": json.dumps(raw), "bytes": json.dumps(raw).encode()}[form]
    with caplog.at_level(logging.WARNING, logger="lbclient.config"):
        cfg = parse_service_config(value)
    assert cfg.lb.name == policy           # ignored: the misspelled field did nothing
    (line,) = _config_warnings(caplog)
    for w in words:
        assert w in line, line
    assert line.startswith("service config: ignoring unknown top-level field")


@pytest.mark.parametrize(("raw", "policy"), VALID)
def test_known_fields_log_nothing(caplog: pytest.LogCaptureFixture, raw: object,
                                  policy: str) -> None:
    with caplog.at_level(logging.DEBUG, logger="lbclient.config"):
        parse_service_config(raw)  # type: ignore[arg-type]
        parse_service_config({"lbclient": {"panicThreshold": 20},
                              "loadBalancingPolicy": "round_robin"})
    assert _config_warnings(caplog) == []


def test_every_known_field_is_read_by_the_parser() -> None:
    """KNOWN_FIELDS is exactly what parse_service_config reads: each field, given a bad
    value, makes parsing fail at that field."""
    bad = {"healthCheckConfig": [], "loadBalancingConfig": {}, "loadBalancingPolicy": 3,
           "methodConfig": {}, "retryThrottling": [], "lbclient": []}
    assert set(bad) == set(config.KNOWN_FIELDS)
    for name, value in bad.items():
        with pytest.raises(ServiceConfigError) as info:
            parse_service_config({name: value})
        assert info.value.path.startswith(name)


@pytest.mark.parametrize(("name", "nearest"), [
    ("loadBalancingconfig", "loadBalancingConfig"), ("LOADBALANCINGPOLICY", "loadBalancingPolicy"),
    ("methodConfigs", "methodConfig"), ("health_check_config", "healthCheckConfig"),
    ("retrythrottle", "retryThrottling"), ("lb_client", "lbclient"),
    ("round_robin", None), ("timeout", None), ("", None),
])
def test_nearest_field(name: str, nearest: str | None) -> None:
    assert config.nearest_field(name) == nearest


def test_channel_ignores_unknown_fields_with_one_warning(
        caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="lbclient.config"):
        channel = lbclient.insecure_channel(
            "ipv4:127.0.0.1:1", service_config={"loadBalancingconfig": [{"pick_first": {}}]})
        try:
            assert channel.service_config is not None
            assert channel.service_config.lb.name == "round_robin"
        finally:
            channel.close()
    (line,) = _config_warnings(caplog)
    assert 'did you mean "loadBalancingConfig"?' in line


def test_a_resolvers_config_is_parsed_and_logged_once_per_distinct_content(
        caplog: pytest.LogCaptureFixture, tmp_path: pathlib.Path) -> None:
    """The file resolver sends its config with every update: the unknown-field warning
    (and the warning for a bad config) comes once per distinct config, not per update."""
    path = tmp_path / "endpoints.json"
    misspelled = {"loadBalancingconfig": [{"pick_first": {}}]}

    def write(addresses: list[str], service_config: Any) -> None:
        doc = {"endpoints": [{"address": a} for a in addresses],
               "serviceConfig": service_config}
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(doc))
        tmp.replace(path)

    def addresses(ch: lbclient.LoadBalancedChannel) -> list[str]:
        return sorted(e.address for e in ch.endpoints())

    def channel_warnings() -> list[str]:
        return [r.getMessage() for r in caplog.records
                if r.name == "lbclient.channel" and r.levelno == logging.WARNING]

    write(["127.0.0.1:1"], misspelled)
    with caplog.at_level(logging.WARNING, logger="lbclient"), lbclient.insecure_channel(
            f"file://{path}", resolver_options={"poll_interval": 0.02}) as ch:
        wait_until(lambda: addresses(ch) == ["127.0.0.1:1"], 10, message="the first list")
        for listed in (["127.0.0.1:1", "127.0.0.1:2"], ["127.0.0.1:2"]):   # endpoints change
            write(listed, misspelled)
            wait_until(lambda listed=listed: addresses(ch) == listed, 10,  # type: ignore[misc]
                       message=f"{listed}")
        assert len(_config_warnings(caplog)) == 1, _config_warnings(caplog)
        write(["127.0.0.1:2"], {**misspelled, "methodconfig": []})       # new content
        wait_until(lambda: len(_config_warnings(caplog)) == 2, 10, message="a second warning")
        assert "methodconfig" in _config_warnings(caplog)[1]
        # a bad config: kept out, said once however many updates repeat it
        bad = {"loadBalancingConfig": [{"nope": {}}]}
        for listed in (["127.0.0.1:3"], ["127.0.0.1:4"], ["127.0.0.1:5"]):
            write(listed, bad)
            wait_until(lambda listed=listed: addresses(ch) == listed, 10,  # type: ignore[misc]
                       message=f"{listed}")
        bad_lines = [w for w in channel_warnings() if "resolver's service config" in w]
        assert len(bad_lines) == 1, bad_lines
        assert ch.service_config is not None and ch.service_config.lb.name == "round_robin"
    assert len(_config_warnings(caplog)) == 2
