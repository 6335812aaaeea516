"""methodConfig / retryPolicy / hedgingPolicy / retryThrottling parsing (gRFC A6 validation
rules) and method matching (exact > service-wide > default), table-driven."""

from __future__ import annotations

from typing import Any

import pytest

from lbclient import ServiceConfigError
from lbclient.config import parse_service_config
from lbclient.method_config import (
    HedgingPolicy,
    MethodConfig,
    MethodConfigTable,
    RetryPolicy,
    RetryThrottling,
    parse_method_config,
)

RETRY = {"maxAttempts": 4, "initialBackoff": "0.1s", "maxBackoff": "1s",
         "backoffMultiplier": 2, "retryableStatusCodes": ["UNAVAILABLE"]}


def _retry(**changes: Any) -> dict[str, Any]:
    out = dict(RETRY, **changes)
    return {k: v for k, v in out.items() if v is not None}


# (retryPolicy JSON, expected RetryPolicy fields)
RETRY_OK = [
    (RETRY, dict(max_attempts=4, initial_backoff=0.1, max_backoff=1.0, backoff_multiplier=2.0,
                 retryable_status_codes=frozenset({"UNAVAILABLE"}))),
    (_retry(maxAttempts=5), dict(max_attempts=5)),
    (_retry(maxAttempts=6), dict(max_attempts=5)),          # "treated as 5"
    (_retry(maxAttempts=1000), dict(max_attempts=5)),
    (_retry(maxAttempts=2), dict(max_attempts=2)),
    (_retry(maxAttempts=3.0), dict(max_attempts=3)),         # a JSON number that is integral
    (_retry(initialBackoff="0.5s"), dict(initial_backoff=0.5)),
    (_retry(maxBackoff="120s"), dict(max_backoff=120.0)),
    (_retry(backoffMultiplier=0.5), dict(backoff_multiplier=0.5)),
    (_retry(backoffMultiplier=1.6), dict(backoff_multiplier=1.6)),
    (_retry(retryableStatusCodes=[14, "unavailable", "Internal"]),
     dict(retryable_status_codes=frozenset({"UNAVAILABLE", "INTERNAL"}))),
    (_retry(retryableStatusCodes=["RESOURCE_EXHAUSTED", 4]),
     dict(retryable_status_codes=frozenset({"RESOURCE_EXHAUSTED", "DEADLINE_EXCEEDED"}))),
    (_retry(perAttemptRecvTimeout="0.25s"), dict(per_attempt_recv_timeout=0.25)),
]


@pytest.mark.parametrize(("raw", "expected"), RETRY_OK)
def test_retry_policy_parses(raw: dict[str, Any], expected: dict[str, Any]) -> None:
    policy = RetryPolicy.parse(raw, "rp")
    for field, value in expected.items():
        assert getattr(policy, field) == value, field


RETRY_BAD = [
    (_retry(maxAttempts=None), "rp.maxAttempts", "is required"),
    (_retry(maxAttempts=1), "rp.maxAttempts", "at least 2"),
    (_retry(maxAttempts=0), "rp.maxAttempts", "at least 2"),
    (_retry(maxAttempts=2.5), "rp.maxAttempts", "must be an integer"),
    (_retry(maxAttempts=True), "rp.maxAttempts", "must be an integer"),
    (_retry(initialBackoff=None), "rp.initialBackoff", "is required"),
    (_retry(initialBackoff="0s"), "rp.initialBackoff", "greater than 0"),
    (_retry(initialBackoff="-1s"), "rp.initialBackoff", "greater than 0"),
    (_retry(initialBackoff="1 second"), "rp.initialBackoff", "duration"),
    (_retry(maxBackoff=None), "rp.maxBackoff", "is required"),
    (_retry(maxBackoff="0s"), "rp.maxBackoff", "greater than 0"),
    (_retry(backoffMultiplier=None), "rp.backoffMultiplier", "is required"),
    (_retry(backoffMultiplier=0), "rp.backoffMultiplier", "greater than 0"),
    (_retry(backoffMultiplier=-2), "rp.backoffMultiplier", "greater than 0"),
    (_retry(backoffMultiplier="2"), "rp.backoffMultiplier", "finite number"),
    (_retry(retryableStatusCodes=None), "rp.retryableStatusCodes", "is required"),
    (_retry(retryableStatusCodes=[]), "rp.retryableStatusCodes", "must not be empty"),
    (_retry(retryableStatusCodes="UNAVAILABLE"), "rp.retryableStatusCodes", "JSON array"),
    (_retry(retryableStatusCodes=["UNAVAILABLE", "NOPE"]), "rp.retryableStatusCodes[1]",
     "unknown status code"),
    (_retry(retryableStatusCodes=[17]), "rp.retryableStatusCodes[0]", "unknown status code"),
    (_retry(retryableStatusCodes=[True]), "rp.retryableStatusCodes[0]", "unknown status code"),
    (_retry(perAttemptRecvTimeout="0s"), "rp.perAttemptRecvTimeout", "greater than 0"),
    (_retry(maxattempts=3), "rp.maxattempts", "unknown field"),
    ([], "rp", "JSON object"),
]


@pytest.mark.parametrize(("raw", "path", "words"), RETRY_BAD)
def test_bad_retry_policy_names_its_path(raw: Any, path: str, words: str) -> None:
    with pytest.raises(ServiceConfigError) as info:
        RetryPolicy.parse(raw, "rp")
    assert info.value.path == path
    assert words in str(info.value)
    assert str(info.value).startswith(path)


HEDGE_OK = [
    ({"maxAttempts": 4, "hedgingDelay": "0.5s", "nonFatalStatusCodes": ["UNAVAILABLE",
                                                                       "INTERNAL", "ABORTED"]},
     HedgingPolicy(4, 0.5, frozenset({"UNAVAILABLE", "INTERNAL", "ABORTED"}))),
    ({"maxAttempts": 4, "hedgingDelay": "0s", "nonFatalStatusCodes": [14]},
     HedgingPolicy(4, 0.0, frozenset({"UNAVAILABLE"}))),
    ({"maxAttempts": 2}, HedgingPolicy(2, 0.0, frozenset())),        # both optional
    ({"maxAttempts": 9, "nonFatalStatusCodes": []}, HedgingPolicy(5, 0.0, frozenset())),
    ({"maxAttempts": 3, "hedgingDelay": "0.05s"}, HedgingPolicy(3, 0.05, frozenset())),
]


@pytest.mark.parametrize(("raw", "expected"), HEDGE_OK)
def test_hedging_policy_parses(raw: dict[str, Any], expected: HedgingPolicy) -> None:
    assert HedgingPolicy.parse(raw, "hp") == expected


HEDGE_BAD = [
    ({}, "hp.maxAttempts", "is required"),
    ({"maxAttempts": 1}, "hp.maxAttempts", "at least 2"),
    ({"maxAttempts": "many"}, "hp.maxAttempts", "must be an integer"),
    ({"maxAttempts": 2, "hedgingDelay": "-0.1s"}, "hp.hedgingDelay", "non-negative"),
    ({"maxAttempts": 2, "hedgingDelay": "soon"}, "hp.hedgingDelay", "duration"),
    ({"maxAttempts": 2, "nonFatalStatusCodes": ["MAYBE"]}, "hp.nonFatalStatusCodes[0]",
     "unknown status code"),
    ({"maxAttempts": 2, "nonFatalStatusCodes": {}}, "hp.nonFatalStatusCodes", "JSON array"),
    ({"maxAttempts": 2, "delay": "1s"}, "hp.delay", "unknown field"),
]


@pytest.mark.parametrize(("raw", "path", "words"), HEDGE_BAD)
def test_bad_hedging_policy_names_its_path(raw: Any, path: str, words: str) -> None:
    with pytest.raises(ServiceConfigError) as info:
        HedgingPolicy.parse(raw, "hp")
    assert info.value.path == path
    assert words in str(info.value)


THROTTLE_OK = [
    ({"maxTokens": 10, "tokenRatio": 0.1}, RetryThrottling(10, 0.1)),
    ({"maxTokens": 1000, "tokenRatio": 1}, RetryThrottling(1000, 1.0)),
    ({"maxTokens": 1, "tokenRatio": 0.001}, RetryThrottling(1, 0.001)),
    ({"maxTokens": 10, "tokenRatio": 0.5466}, RetryThrottling(10, 0.546)),  # A6's example
    ({"maxTokens": 10, "tokenRatio": 1.001}, RetryThrottling(10, 1.001)),
    ({"maxTokens": 10.0, "tokenRatio": 2}, RetryThrottling(10, 2.0)),
]


@pytest.mark.parametrize(("raw", "expected"), THROTTLE_OK)
def test_retry_throttling_parses(raw: dict[str, Any], expected: RetryThrottling) -> None:
    assert RetryThrottling.parse(raw, "retryThrottling") == expected


THROTTLE_BAD = [
    ({"tokenRatio": 0.1}, "rt.maxTokens", "is required"),
    ({"maxTokens": 10}, "rt.tokenRatio", "is required"),
    ({"maxTokens": 0, "tokenRatio": 0.1}, "rt.maxTokens", "greater than 0"),
    ({"maxTokens": -1, "tokenRatio": 0.1}, "rt.maxTokens", "greater than 0"),
    ({"maxTokens": 1001, "tokenRatio": 0.1}, "rt.maxTokens", "at most 1000"),
    ({"maxTokens": 10.5, "tokenRatio": 0.1}, "rt.maxTokens", "must be an integer"),
    ({"maxTokens": 10, "tokenRatio": 0}, "rt.tokenRatio", "greater than 0"),
    ({"maxTokens": 10, "tokenRatio": -0.5}, "rt.tokenRatio", "greater than 0"),
    ({"maxTokens": 10, "tokenRatio": 0.0004}, "rt.tokenRatio", "at least 0.001"),
    ({"maxTokens": 10, "tokenRatio": "0.1"}, "rt.tokenRatio", "finite number"),
    ({"maxTokens": 10, "tokenRatio": 0.1, "burst": 3}, "rt.burst", "unknown field"),
]


@pytest.mark.parametrize(("raw", "path", "words"), THROTTLE_BAD)
def test_bad_retry_throttling_names_its_path(raw: Any, path: str, words: str) -> None:
    with pytest.raises(ServiceConfigError) as info:
        RetryThrottling.parse(raw, "rt")
    assert info.value.path == path
    assert words in str(info.value)


METHOD_BAD = [
    ({"name": [{}], "retryPolicy": RETRY, "hedgingPolicy": {"maxAttempts": 2}},
     "mc", "cannot both be set"),
    ({"name": [{"method": "Get"}]}, "mc.name[0].method", "needs a service"),
    ({"name": [{"service": "a.B", "methods": "Get"}]}, "mc.name[0].methods", "unknown field"),
    ({"name": {"service": "a.B"}}, "mc.name", "JSON array"),
    ({"name": ["a.B"]}, "mc.name[0]", "JSON object"),
    ({"name": [{"service": 3}]}, "mc.name[0].service", "must be a string"),
    ({"name": [{}], "timeout": "0s"}, "mc.timeout", "greater than 0"),
    ({"name": [{}], "timeout": "1m"}, "mc.timeout", "duration"),
    ({"name": [{}], "waitForReady": 1}, "mc.waitForReady", "must be a boolean"),
    ({"name": [{}], "retryPolicy": _retry(maxAttempts=1)}, "mc.retryPolicy.maxAttempts",
     "at least 2"),
    ({"name": [{}], "hedgingPolicy": {"maxAttempts": 0}}, "mc.hedgingPolicy.maxAttempts",
     "at least 2"),
    ({"name": [{}], "retry": {}}, "mc.retry", "unknown field"),
]


@pytest.mark.parametrize(("raw", "path", "words"), METHOD_BAD)
def test_bad_method_config_names_its_path(raw: Any, path: str, words: str) -> None:
    with pytest.raises(ServiceConfigError) as info:
        parse_method_config(raw, "mc")
    assert info.value.path == path
    assert words in str(info.value)


def test_whole_service_config_errors_carry_the_full_path() -> None:
    raw = {"methodConfig": [{"name": [{"service": "a.B"}]},
                            {"name": [{"service": "c.D"}],
                             "retryPolicy": _retry(retryableStatusCodes=["OOPS"])}],
           "retryThrottling": {"maxTokens": 10, "tokenRatio": 0.1}}
    with pytest.raises(ServiceConfigError) as info:
        parse_service_config(raw)
    assert info.value.path == "methodConfig[1].retryPolicy.retryableStatusCodes[0]"
    with pytest.raises(ServiceConfigError) as info:
        parse_service_config({"retryThrottling": {"maxTokens": 5000, "tokenRatio": 1}})
    assert info.value.path == "retryThrottling.maxTokens"


def test_method_config_fields() -> None:
    mc = parse_method_config({"name": [{"service": "a.B", "method": "Get"}, {"service": "c.D"}],
                              "timeout": "1.5s", "waitForReady": True,
                              "retryPolicy": RETRY}, "mc")
    assert mc.names == (("a.B", "Get"), ("c.D", ""))
    assert (mc.timeout, mc.wait_for_ready) == (1.5, True)
    assert mc.retry_policy is not None and mc.retry_policy.max_attempts == 4
    assert mc.hedging_policy is None
    unset = parse_method_config({"name": [{}]}, "mc")
    assert (unset.timeout, unset.wait_for_ready, unset.retry_policy) == (None, None, None)
    explicit_false = parse_method_config({"name": [{}], "waitForReady": False}, "mc")
    assert explicit_false.wait_for_ready is False


def _table(*entries: tuple[tuple[tuple[str, str], ...], float]) -> MethodConfigTable:
    return MethodConfigTable(tuple(MethodConfig(names=names, timeout=t) for names, t in entries))


# (method, expected timeout): exact 1.0 > service 2.0 > default 3.0
MATCHING = [
    ("/pkg.Svc/Get", 1.0),
    ("/pkg.Svc/List", 2.0),
    ("/pkg.Other/Get", 3.0),
    ("/other.Svc/Get", 3.0),
    ("pkg.Svc/Get", 1.0),                 # a missing leading slash is tolerated
    ("/pkg.Svc/get", 2.0),                # method names are case-sensitive
    ("/pkg.Sv/Get", 3.0),
]


@pytest.mark.parametrize(("method", "timeout"), MATCHING)
def test_most_specific_entry_wins(method: str, timeout: float) -> None:
    table = _table(((("", ""),), 3.0), ((("pkg.Svc", "Get"),), 1.0), ((("pkg.Svc", ""),), 2.0))
    found = table.lookup(method)
    assert found is not None and found.timeout == timeout
    assert table.lookup(method) is found  # cached lookups agree


def test_no_default_entry_means_no_config() -> None:
    table = _table(((("pkg.Svc", "Get"),), 1.0))
    assert table.lookup("/pkg.Svc/List") is None
    assert table.lookup("/pkg.Svc/Get") is not None
    assert not MethodConfigTable(())
    assert table


def test_order_of_entries_does_not_matter() -> None:
    a = _table(((("pkg.Svc", ""),), 2.0), ((("pkg.Svc", "Get"),), 1.0))
    b = _table(((("pkg.Svc", "Get"),), 1.0), ((("pkg.Svc", ""),), 2.0))
    for table in (a, b):
        found = table.lookup("/pkg.Svc/Get")
        assert found is not None and found.timeout == 1.0


def test_service_config_matching_end_to_end() -> None:
    cfg = parse_service_config({"methodConfig": [
        {"name": [{}], "timeout": "3s"},
        {"name": [{"service": "pkg.Svc"}], "timeout": "2s", "retryPolicy": RETRY},
        {"name": [{"service": "pkg.Svc", "method": "Get"}], "timeout": "1s",
         "hedgingPolicy": {"maxAttempts": 3, "hedgingDelay": "0.1s"}},
    ]})
    table = MethodConfigTable(cfg.method_configs)
    get, lst, other = (table.lookup(m) for m in ("/pkg.Svc/Get", "/pkg.Svc/List", "/x.Y/Z"))
    assert get is not None and get.hedging_policy is not None and get.retry_policy is None
    assert lst is not None and lst.retry_policy is not None and lst.timeout == 2.0
    assert other is not None and other.retry_policy is None and other.timeout == 3.0
