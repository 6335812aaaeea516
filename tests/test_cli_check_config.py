"""``lbclient check-config``: valid configs print the effective settings, bad ones the
JSON path of the error (exit 1)."""

from __future__ import annotations

import io
import json
import pathlib
import subprocess
import sys
from typing import Any

import pytest

from lbclient.balancer.policy import get_policy
from lbclient.cli import check_config as cc
from lbclient.cli import main
from lbclient.config import parse_service_config


def write(tmp_path: pathlib.Path, config: Any, name: str = "sc.json") -> str:
    path = tmp_path / name
    path.write_text(config if isinstance(config, str) else json.dumps(config))
    return str(path)


def test_good_file_prints_policy_and_defaults(tmp_path: pathlib.Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    path = write(tmp_path, {
        "loadBalancingConfig": [{"not_a_policy": {}}, {"round_robin": {}}],
        "healthCheckConfig": {"serviceName": "orders"},
        "methodConfig": [{"name": [{"service": "pkg.Orders"}], "timeout": "1.5s",
                          "retryPolicy": {"maxAttempts": 7, "initialBackoff": "0.1s",
                                          "maxBackoff": "1s", "backoffMultiplier": 2,
                                          "retryableStatusCodes": ["unavailable"]}}]})
    assert main(["check-config", path]) == 0
    out = capsys.readouterr().out
    assert "policy: round_robin" in out
    assert "skipped (not known to lbclient): not_a_policy" in out
    assert "active health checking: on (service 'orders', mode watch)" in out
    settings = json.loads(out[out.index("{"):])
    hc = settings["healthCheckConfig"]
    assert hc["interval"] == 10.0 and hc["unhealthy_threshold"] == 3     # defaults filled
    (mc,) = settings["methodConfig"]
    assert mc["names"] == [{"service": "pkg.Orders", "method": ""}]
    assert mc["timeout"] == 1.5
    assert mc["retry_policy"]["max_attempts"] == 5                       # gRFC A6 cap
    assert mc["retry_policy"]["retryable_status_codes"] == ["UNAVAILABLE"]
    assert settings["policy"] == {"round_robin": {}}


def test_json_mode_is_only_json(tmp_path: pathlib.Path,
                                capsys: pytest.CaptureFixture[str]) -> None:
    path = write(tmp_path, {"loadBalancingConfig": [{"pick_first": {}}]})
    assert main(["check-config", "--json", path]) == 0
    settings = json.loads(capsys.readouterr().out)
    assert settings["policy"] == {"pick_first": {"shuffle_address_list": False}}
    assert settings["healthCheckConfig"] is None and settings["methodConfig"] == []


def test_wrapper_policy_chain_and_child_defaults(tmp_path: pathlib.Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    if get_policy("outlier_detection") is None:
        pytest.skip("outlier_detection is not registered")
    path = write(tmp_path, {"loadBalancingConfig": [{"outlier_detection": {
        "childPolicy": [{"round_robin": {}}]}}]})
    assert main(["check-config", path]) == 0
    out = capsys.readouterr().out
    assert "policy: outlier_detection -> round_robin" in out
    settings = json.loads(out[out.index("{"):])
    od = settings["policy"]["outlier_detection"]
    assert json.dumps(od).count('"round_robin"') == 1                   # child named once
    assert "300.0" in json.dumps(od)                                     # maxEjectionTime default


@pytest.mark.parametrize(("config", "path"), [
    ({"loadBalancingConfig": [{"round_robin": {"x": 1}}]}, "loadBalancingConfig[0].round_robin.x"),
    ({"loadBalancingConfig": [{"nope": {}}]}, "loadBalancingConfig"),
    ({"methodConfig": [{"name": [{}], "timeout": "abc"}]}, "methodConfig[0].timeout"),
    ({"healthCheckConfig": {"mode": "sometimes"}}, "healthCheckConfig.mode"),
    ("{not json", "<root>"),
    ([1, 2], "<root>"),
])
def test_bad_file_names_the_json_path(tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str],
                                      config: Any, path: str) -> None:
    file = write(tmp_path, config)
    assert main(["check-config", file]) == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.startswith(f"error at {path}: "), captured.err


def test_missing_file(tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check-config", str(tmp_path / "absent.json")]) == 1
    assert "cannot read" in capsys.readouterr().err


def test_stdin(capsys: pytest.CaptureFixture[str]) -> None:
    import argparse

    args = argparse.Namespace(file="-", json=False)
    assert cc.run(args, stdin=io.StringIO('{"loadBalancingPolicy": "round_robin"}')) == 0
    assert "OK: stdin is a valid service config" in capsys.readouterr().out
    assert cc.run(args, stdin=io.StringIO('{"loadBalancingPolicy": "nope"}')) == 1
    assert "error at loadBalancingPolicy: unknown policy 'nope'" in capsys.readouterr().err


def test_every_example_policy_checks(capsys: pytest.CaptureFixture[str]) -> None:
    """examples/policies.json: each registered policy's entry is valid and is chosen."""
    examples = json.loads((pathlib.Path(__file__).parent.parent / "examples" /
                           "policies.json").read_text())
    for name, config in examples.items():
        if get_policy(name) is None:
            continue
        parsed = parse_service_config(config)
        assert parsed.lb.name == name
        settings = cc.describe(parsed)
        assert name in settings["policy"]
        json.dumps(settings)          # JSON-ready all the way down


def test_to_plain_handles_sets_enums_and_unknowns() -> None:
    import enum

    class Color(enum.Enum):
        RED = 1

    assert cc.to_plain({"a": frozenset({"b", "a"}), "c": (Color.RED, 1.5)}) == {
        "a": ["a", "b"], "c": ["RED", 1.5]}
    assert cc.to_plain(object()).startswith("<object")


def test_stdin_dash_through_the_real_entry_point() -> None:
    proc = subprocess.run([sys.executable, "-m", "lbclient", "check-config", "-"],
                          input='{"loadBalancingConfig": [{"round_robin": {"bad": 1}}]}',
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1
    assert "error at loadBalancingConfig[0].round_robin.bad" in proc.stderr


# ------------------------------------------------------------------ per-policy defaults
def _settings(tmp_path: pathlib.Path, config: Any, capsys: pytest.CaptureFixture[str]
              ) -> dict[str, Any]:
    assert main(["check-config", "--json", write(tmp_path, config)]) == 0
    return json.loads(capsys.readouterr().out)


@pytest.mark.parametrize(("policy", "field", "default"), [
    ("ring_hash", "min_ring_size", 4096),
    ("ring_hash", "max_ring_size", 4096),
    ("maglev", "table_size", 65537),
    ("least_request", "choice_count", 2),
    ("peak_ewma", "decay_time", 10.0),
    ("pick_first", "shuffle_address_list", False),
])
def test_policy_defaults_are_filled_in(tmp_path: pathlib.Path,
                                       capsys: pytest.CaptureFixture[str],
                                       policy: str, field: str, default: Any) -> None:
    if get_policy(policy) is None:
        pytest.skip(f"{policy} is not registered")
    settings = _settings(tmp_path, {"loadBalancingConfig": [{policy: {}}]}, capsys)
    (name,) = settings["policy"]
    assert settings["policy"][name][field] == default


def test_nested_wrappers_show_the_whole_chain(tmp_path: pathlib.Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    for name in ("outlier_detection", "sticky", "least_request"):
        if get_policy(name) is None:
            pytest.skip(f"{name} is not registered")
    path = write(tmp_path, {"loadBalancingConfig": [{"outlier_detection": {
        "childPolicy": [{"sticky": {"sessionHeader": "x-session",
                                    "childPolicy": [{"least_request": {}}]}}]}}]})
    assert main(["check-config", path]) == 0
    out = capsys.readouterr().out
    assert "policy: outlier_detection -> sticky -> least_request" in out
    config = parse_service_config(json.loads(pathlib.Path(path).read_text()))
    assert cc.policy_chain(config.lb) == ["outlier_detection", "sticky", "least_request"]


def test_skipped_policies_stop_at_the_chosen_one() -> None:
    raw = {"loadBalancingConfig": [{"grpclb": {}}, {"xds": {}}, {"round_robin": {}},
                                   {"later_unknown": {}}]}
    assert cc.skipped_policies(raw) == ["grpclb", "xds"]
    assert cc.skipped_policies({}) == []


def test_legacy_policy_name_and_empty_config(tmp_path: pathlib.Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    assert _settings(tmp_path, {"loadBalancingPolicy": "ROUND_ROBIN"}, capsys)["policy"] == \
        {"round_robin": {}}
    settings = _settings(tmp_path, "", capsys)           # empty file: all defaults
    assert settings == {"policy": {"round_robin": {}}, "healthCheckConfig": None,
                        "methodConfig": [], "retryThrottling": None,
                        "lbclient": {"panic_threshold": 50.0, "slow_start": None,
                                     "max_requests": None, "max_concurrent_requests": None,
                                     "retry_budget": None}}


def test_retry_throttling_and_hedging(tmp_path: pathlib.Path,
                                      capsys: pytest.CaptureFixture[str]) -> None:
    settings = _settings(tmp_path, {
        "retryThrottling": {"maxTokens": 10, "tokenRatio": 0.1234},
        "methodConfig": [{"name": [{"service": "a.B", "method": "C"}],
                          "hedgingPolicy": {"maxAttempts": 3, "hedgingDelay": "0.5s"}}]},
        capsys)
    assert settings["retryThrottling"] == {"max_tokens": 10, "token_ratio": 0.123}
    (mc,) = settings["methodConfig"]
    assert mc["names"] == [{"service": "a.B", "method": "C"}]
    assert mc["hedging_policy"]["hedging_delay"] == 0.5
    assert mc["hedging_policy"]["non_fatal_status_codes"] == []


# ------------------------------------------------------------ the "lbclient" block
def _lines(tmp_path: pathlib.Path, config: Any, capsys: pytest.CaptureFixture[str]
           ) -> tuple[list[str], dict[str, Any]]:
    """check-config's text lines before the JSON, and the JSON's "lbclient" settings."""
    assert main(["check-config", write(tmp_path, config)]) == 0
    out = capsys.readouterr().out
    head, _, _ = out.partition("effective settings")
    return head.splitlines(), json.loads(out[out.index("{"):])["lbclient"]


def test_lbclient_block_defaults_are_printed(tmp_path: pathlib.Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    lines, settings = _lines(tmp_path, {"loadBalancingConfig": [{"round_robin": {}}]},
                             capsys)
    assert lines[-4:] == ["panic threshold: 50%", "slow start: off",
                          "circuit breakers: off", "retry budget: none"]
    assert settings == {"panic_threshold": 50.0, "slow_start": None, "max_requests": None,
                        "max_concurrent_requests": None, "retry_budget": None}


def test_lbclient_block_settings_are_printed(tmp_path: pathlib.Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    lines, settings = _lines(tmp_path, {
        "retryThrottling": {"maxTokens": 10, "tokenRatio": 0.1},
        "lbclient": {"panicThreshold": 30,
                     "slowStartConfig": {"slowStartWindow": "30s", "aggression": 2},
                     "maxRequests": 100, "maxConcurrentRequests": 8,
                     "retryBudget": {"ttl": "5s", "percentCanRetry": 0.1}}}, capsys)
    assert lines[-4:] == [
        "panic threshold: 30%",
        "slow start: 30s window, aggression 2, min weight 10%",      # default filled in
        "circuit breakers: maxRequests 100 (channel), maxConcurrentRequests 8 "
        "(per endpoint)",
        "retry budget: Finagle's rate budget: over 5s, 10 retries/s + 10% of calls; "
        "retryThrottling is ignored"]
    assert settings == {
        "panic_threshold": 30.0,
        "slow_start": {"window": 30.0, "aggression": 2.0, "min_weight_percent": 10.0},
        "max_requests": 100, "max_concurrent_requests": 8,
        "retry_budget": {"rate": {"ttl": 5.0, "min_retries_per_sec": 10,
                                  "percent_can_retry": 0.1}}}


def test_lbclient_block_concurrency_budget_and_throttling(
        tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str]) -> None:
    lines, settings = _lines(tmp_path, {"lbclient": {"panicThreshold": 0,
                                                     "retryBudget": {"budgetPercent": 25}}},
                             capsys)
    assert lines[-4] == "panic threshold: off"
    assert lines[-1] == ("retry budget: Envoy's concurrency budget: 25% of the requests "
                         "in flight, at least 3 retries")
    assert settings["retry_budget"] == {"concurrency": {"budget_percent": 25.0,
                                                        "min_retry_concurrency": 3}}
    lines, _ = _lines(tmp_path, {"retryThrottling": {"maxTokens": 10, "tokenRatio": 0.1}},
                      capsys)
    assert lines[-1] == ("retry budget: none; retryThrottling applies (maxTokens 10, "
                         "tokenRatio 0.1)")


def test_lbclient_block_errors_name_the_path(tmp_path: pathlib.Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    path = write(tmp_path, {"lbclient": {"retryBudget": {"ttl": "0.5s"}}})
    assert main(["check-config", path]) == 1
    assert capsys.readouterr().err.strip() == \
        "error at lbclient.retryBudget.ttl: must be between 1s and 60s, got '0.5s'"


# ------------------------------------------------- not a config, unknown top-level fields
EXAMPLES = pathlib.Path(__file__).resolve().parent.parent / "examples"
KNOWN = ("healthCheckConfig, loadBalancingConfig, loadBalancingPolicy, methodConfig, "
         "retryThrottling, lbclient")


@pytest.mark.parametrize("json_mode", [False, True])
def test_a_map_of_configs_is_not_a_config(capsys: pytest.CaptureFixture[str],
                                          caplog: pytest.LogCaptureFixture,
                                          json_mode: bool) -> None:
    """examples/policies.json is a map of named configs: every value is a config, the
    file is not (it used to print OK and mean round_robin)."""
    path = str(EXAMPLES / "policies.json")
    count = len(json.loads(pathlib.Path(path).read_text()))
    assert main(["check-config", *(["--json"] if json_mode else []), path]) == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    (line,) = captured.err.splitlines()
    assert line.startswith(f"error: {path}: not a service config: it has no service config "
                           f"fields (found {count} keys like 'round_robin', 'pick_first', "
                           "'weighted_round_robin' whose values are service configs: "
                           "is it a map of configs?"), line
    assert f"""jq '.["round_robin"]' {path} | lbclient check-config -""" in line
    assert not [r for r in caplog.records if r.name == "lbclient.config"]


NOT_CONFIGS = [
    ({"a": {"loadBalancingConfig": [{"round_robin": {}}]}, "b": {"methodConfig": []}},
     "found 2 keys like 'a', 'b' whose values are service configs: is it a map of configs?"),
    ({"orders": {"loadBalancingPolicy": "pick_first"}, "billing": 3},
     "found 2 keys like 'orders', 'billing' whose values are service configs"),
    ({"foo": 1}, f"found 1 key: 'foo'; the fields are {KNOWN})"),
    ({"name": "x", "timeout": "1s", "a": 1, "b": 2, "c": 3, "d": 4},
     "found 6 keys: 'name', 'timeout', 'a', 'b', 'c', ...; the fields are"),
]


@pytest.mark.parametrize(("config", "words"), NOT_CONFIGS)
@pytest.mark.parametrize("json_mode", [False, True])
def test_not_a_service_config(tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str],
                              config: Any, words: str, json_mode: bool) -> None:
    file = write(tmp_path, config)
    assert main(["check-config", *(["--json"] if json_mode else []), file]) == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    (line,) = captured.err.splitlines()
    assert line.startswith(f"error: {file}: not a service config: it has no service config "
                           "fields ("), line
    assert words in line, line


UNKNOWN_FIELDS = [
    ({"loadBalancingconfig": [{"pick_first": {}}]},
     ['error at loadBalancingconfig: unknown field; did you mean "loadBalancingConfig"?']),
    ({"load_balancing_policy": "pick_first"},
     ['error at load_balancing_policy: unknown field; did you mean "loadBalancingPolicy"?']),
    ({"loadBalancingConfig": [{"pick_first": {}}], "methodconfig": [], "foo": 1},
     ['error at methodconfig: unknown field; did you mean "methodConfig"?',
      f"error at foo: unknown field (known: {KNOWN})"]),
    # the known fields are still checked, after the unknown ones are reported
    ({"loadBalancingconfig": [], "methodConfig": 3},
     ['error at loadBalancingconfig: unknown field; did you mean "loadBalancingConfig"?',
      "error at methodConfig: must be a JSON array, got number 3"]),
    ({"retryThrottling": {"maxTokens": 1, "tokenRatio": 1}, "healthcheckconfig": {}},
     ['error at healthcheckconfig: unknown field; did you mean "healthCheckConfig"?']),
]


@pytest.mark.parametrize(("config", "errors"), UNKNOWN_FIELDS)
@pytest.mark.parametrize("json_mode", [False, True])
def test_unknown_top_level_fields_are_errors(tmp_path: pathlib.Path,
                                             capsys: pytest.CaptureFixture[str],
                                             caplog: pytest.LogCaptureFixture,
                                             config: Any, errors: list[str],
                                             json_mode: bool) -> None:
    file = write(tmp_path, config)
    assert main(["check-config", *(["--json"] if json_mode else []), file]) == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.splitlines() == errors
    # reported once, as errors: not also as the channel's unknown-field warning
    assert not [r for r in caplog.records if r.name == "lbclient.config"]


@pytest.mark.parametrize("config", [
    {}, {"lbclient": {"panicThreshold": 50}},
    {"loadBalancingPolicy": "round_robin", "retryThrottling": {"maxTokens": 5,
                                                              "tokenRatio": 0.5}},
    {"loadBalancingConfig": [{"unknown_policy": {}}, {"round_robin": {}}],
     "healthCheckConfig": {"serviceName": ""}, "methodConfig": []},
])
def test_configs_with_known_fields_only_are_ok(tmp_path: pathlib.Path,
                                               capsys: pytest.CaptureFixture[str],
                                               config: Any) -> None:
    assert main(["check-config", write(tmp_path, config)]) == 0
    captured = capsys.readouterr()
    assert captured.out.startswith("OK: ") and captured.err == ""


def test_unknown_field_through_the_real_entry_point() -> None:
    proc = subprocess.run([sys.executable, "-m", "lbclient", "check-config", "--json", "-"],
                          input='{"loadBalancingconfig": [{"pick_first": {}}]}',
                          capture_output=True, text=True, timeout=60)
    assert (proc.returncode, proc.stdout) == (1, "")
    assert proc.stderr == ('error at loadBalancingconfig: unknown field; '
                           'did you mean "loadBalancingConfig"?\n')


def test_docs_show_the_real_output_for_a_map_of_configs(
        capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    """docs/cli.md quotes check-config's answer for examples/policies.json verbatim (its
    key count goes stale when a policy is added)."""
    root = EXAMPLES.parent
    monkeypatch.chdir(root)
    assert main(["check-config", "examples/policies.json"]) == 1
    (line,) = capsys.readouterr().err.splitlines()
    assert line in (root / "docs" / "cli.md").read_text(), line
