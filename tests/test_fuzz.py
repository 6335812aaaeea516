"""Fuzzing the parsers with hypothesis (bounded, derandomized: the same examples each run).

Every input must give a valid configuration or a ``ValueError`` subclass that says where
(``ServiceConfigError.path`` / ``InvalidTargetError``'s message) - never another
exception, a hang, or a channel that breaks when a resolver delivers it:

* service config JSON: random JSON, and mutations of every valid config of
  examples/policies.json and the docs (health, retries, hedging, throttling, slow start);
  each config that parses is also delivered to a live channel by its "resolver";
* targets (``parse_target`` + the scheme's validation; no channel is made: a fuzzed
  address must never be dialled);
* the file resolver's endpoints JSON and the etcd resolver's stored values.
"""

from __future__ import annotations

import copy
import json
import math
import pathlib
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest
from helpers import ConnectionStub, FactoryStub
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import lbclient
from lbclient import (
    CallOutcome,
    Connectivity,
    Endpoint,
    InvalidTargetError,
    PickError,
    PickInfo,
    ResolverState,
)
from lbclient.balancer.balancer import Balancer
from lbclient.config import ServiceConfig, parse_service_config
from lbclient.errors import ServiceConfigError
from lbclient.health.options import parse_balancing_options
from lbclient.resolver import parse_target, validate_target
from lbclient.resolver._etcd_naming import NamingTable, fingerprint, parse_update
from lbclient.resolver._file_format import parse_endpoints_json

ROOT = pathlib.Path(__file__).resolve().parent.parent
POLICIES: dict[str, Any] = json.loads((ROOT / "examples" / "policies.json").read_text())
SERVICE = "lbclient.testing.echo.v1.Echo"
EXTRA_CONFIGS: list[dict[str, Any]] = [
    {"healthCheckConfig": {"serviceName": "", "mode": "poll", "interval": "1s",
                           "timeout": "0.5s", "unhealthyThreshold": 2,
                           "healthyThreshold": 1, "jitter": 0.1},
     "lbclient": {"panicThreshold": 50, "slowStartConfig": {
         "slowStartWindow": "30s", "aggression": 1.5, "minWeightPercent": 10}}},
    {"methodConfig": [
        {"name": [{"service": SERVICE}], "timeout": "2s", "retryPolicy": {
            "maxAttempts": 4, "initialBackoff": "0.05s", "maxBackoff": "1s",
            "backoffMultiplier": 2, "retryableStatusCodes": ["UNAVAILABLE", 14],
            "perAttemptRecvTimeout": "0.5s"}},
        {"name": [{"service": SERVICE, "method": "Unary"}], "hedgingPolicy": {
            "maxAttempts": 3, "hedgingDelay": "0.03s", "nonFatalStatusCodes": ["UNAVAILABLE"]}},
        {"name": [{}], "waitForReady": True}],
     "retryThrottling": {"maxTokens": 10, "tokenRatio": 0.1},
     "loadBalancingPolicy": "round_robin"},
]
VALID = [*POLICIES.values(), *EXTRA_CONFIGS]


def _keys(value: Any, out: set[str]) -> set[str]:
    if isinstance(value, dict):
        out.update(value)
        for v in value.values():
            _keys(v, out)
    elif isinstance(value, list):
        for v in value:
            _keys(v, out)
    return out


KNOWN_KEYS = sorted(_keys(VALID, set()) | {"outlier_detection_experimental",
                                           "ring_hash_experimental", "xds", "grpclb"})
ODD_STRINGS = ["", "0s", "-1s", "1e9s", "NaNs", ".5s", "1.0000000001s", "99999999999999999999s",
               "UNAVAILABLE", "unavailable", "OK", "x-header", ":authority", "grpc-x", "é",
               "10.0.0.1:50051", "[::1]:1", "1", "true", "\x00", "s" * 300]
ODD_NUMBERS = [0, -1, 1, 2, 5, 100, 101, 1000, 2**31, 2**63, 2**64 + 1, 10**30, 0.5, -0.0,
               1e-9, 1e308, math.inf, -math.inf, math.nan]

scalars = (st.none() | st.booleans() | st.sampled_from(ODD_NUMBERS) | st.sampled_from(ODD_STRINGS)
           | st.integers(-10**20, 10**20) | st.floats() | st.text(max_size=10))
json_values = st.recursive(
    scalars,
    lambda inner: (st.lists(inner, max_size=4)
                   | st.dictionaries(st.sampled_from(KNOWN_KEYS) | st.text(max_size=8), inner,
                                     max_size=4)),
    max_leaves=16)

# Bounded, deterministic, and generous per example on a loaded 2-core machine.
FUZZ = settings(max_examples=300, derandomize=True, deadline=timedelta(seconds=5),
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


def _containers(value: Any, path: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    """Paths of every dict/list inside ``value`` (the root included)."""
    if isinstance(value, dict | list):
        yield path
        items = value.items() if isinstance(value, dict) else enumerate(value)
        for k, v in items:
            yield from _containers(v, (*path, k))


def _at(value: Any, path: tuple[Any, ...]) -> Any:
    for k in path:
        value = value[k]
    return value


@st.composite
def mutated_configs(draw: st.DrawFn) -> Any:
    """A valid config with 1-3 random edits: replace, delete, add, duplicate."""
    config = copy.deepcopy(draw(st.sampled_from(VALID)))
    for _ in range(draw(st.integers(1, 3))):
        paths = list(_containers(config))
        if not paths:
            break
        node = _at(config, draw(st.sampled_from(paths)))
        action = draw(st.sampled_from(["replace", "delete", "add", "duplicate"]))
        keys = list(node) if isinstance(node, dict) else list(range(len(node)))
        if action == "add" or not keys:
            if isinstance(node, dict):
                node[draw(st.sampled_from(KNOWN_KEYS))] = draw(json_values)
            else:
                node.append(draw(json_values))
            continue
        key = draw(st.sampled_from(keys))
        if action == "replace":
            node[key] = draw(json_values)
        elif action == "delete":
            del node[key]
        elif isinstance(node, list):
            node.append(copy.deepcopy(node[key]))
        else:
            node[draw(st.sampled_from(KNOWN_KEYS))] = copy.deepcopy(node[key])
    return config


def _parse_or_path_error(raw: Any) -> Any:
    """The parsed config, or None after checking the error names a path."""
    try:
        return parse_service_config(raw)
    except ServiceConfigError as exc:
        assert isinstance(exc, ValueError) and exc.path and str(exc), repr(exc)
        return None


# --------------------------------------------------------------------------- service config


@pytest.fixture(scope="module")
def channel() -> Iterator[lbclient.LoadBalancedChannel]:
    """A channel whose "resolver" is the test: configs arrive through on_resolved."""
    with lbclient.insecure_channel("ipv4:127.0.0.1:1") as ch:
        yield ch


class _Handle(ConnectionStub):
    def __init__(self, on_state: Any) -> None:
        self.on_state = on_state

    def request_connection(self) -> None:
        pass

    def shutdown(self) -> None:
        pass


class _Factory(FactoryStub):
    """Connections that exist only as handles (the test makes them READY)."""

    def __init__(self) -> None:
        self.handles: list[_Handle] = []

    def create(self, endpoint: Endpoint, on_state: Any) -> _Handle:
        self.handles.append(_Handle(on_state))
        return self.handles[-1]


class _NoTimers:
    class _Timer:
        def cancel(self) -> None:
            pass

    def call_later(self, delay: float, fn: Any) -> Any:
        return self._Timer()


ENDPOINTS = tuple(Endpoint(f"10.0.0.{i}:50051", i, {"zone": "ab"[i % 2], "locality": "l"})
                  for i in range(1, 5))
METADATA = [(), (("x-user-id", "u1"),), (("x-session-id", "s1"), ("x-user-id", "u2"))]


def _pick_with(config: ServiceConfig) -> int:
    """The parsed config drives a balancer over READY endpoints: pickers are built,
    pick, and take call outcomes; only PickError may come out. Returns the picks made."""
    factory = _Factory()
    picked = 0
    bal = Balancer(factory, scheduler=_NoTimers())
    try:
        bal.set_options(parse_balancing_options(config.raw.get("lbclient")))
        bal.set_policy(config.lb.spec, config.lb.config)
        bal.update_endpoints(ENDPOINTS)
        for handle in factory.handles:
            handle.on_state(Connectivity.READY)
        for i, md in enumerate(METADATA * 3):
            try:
                result = bal.picker.pick(PickInfo("/svc/M", md, frozenset(
                    [ENDPOINTS[0].address] if i % 2 else [])))
            except PickError:
                continue
            picked += 1
            if result.on_done is not None:
                result.on_done(CallOutcome("UNAVAILABLE" if i % 3 else "OK", 0.01))
        bal.update_endpoints(ENDPOINTS[:1])
    finally:
        bal.close()
    return picked


def _deliver(ch: lbclient.LoadBalancedChannel, raw: Any) -> None:
    """A resolver delivers ``raw``: the channel applies it or keeps its config, and its
    picker still answers (a PickResult or a PickError, nothing else)."""
    ch.on_resolved(ResolverState((Endpoint("127.0.0.1:1"), Endpoint("127.0.0.1:2")),
                                 service_config=raw, authoritative=True))
    try:
        ch._balancer.picker.pick(PickInfo("/svc/Method", (("x-user-id", "u"),)))
    except PickError:
        pass


@FUZZ
@given(raw=json_values)
def test_random_json_is_a_config_or_a_path_error(raw: Any) -> None:
    _parse_or_path_error(raw)
    _parse_or_path_error(json.dumps(raw))
    _parse_or_path_error({"loadBalancingConfig": raw})
    _parse_or_path_error({"methodConfig": raw})


@FUZZ
@given(raw=mutated_configs())
def test_mutated_configs_parse_or_name_a_path_and_never_break_a_channel(
        raw: Any, channel: lbclient.LoadBalancedChannel) -> None:
    config = _parse_or_path_error(raw)
    assert (_parse_or_path_error(json.dumps(raw)) is None) == (config is None)
    if config is not None:
        _deliver(channel, raw)
        _pick_with(config)


def test_every_valid_config_applies_to_a_channel(channel: lbclient.LoadBalancedChannel) -> None:
    for raw in VALID:
        config = _parse_or_path_error(raw)
        assert config is not None, raw
        _deliver(channel, raw)
        assert channel.service_config is not None and channel.service_config.raw == raw
        assert _pick_with(config) > 0, raw


@pytest.mark.parametrize("text", [
    b"\xff\xfe{", b'{"loadBalancingConfig": [{"round_robin": {}}]}\xff', "[" * 100_000,
    '{"a":' * 100_000, "{" + '"methodConfig": [' * 50_000, "1e999", "\ud800",
])
def test_malformed_text_is_a_root_error(text: str | bytes) -> None:
    assert _parse_or_path_error(text) is None


def test_deeply_nested_child_policies_are_an_error_not_a_crash() -> None:
    lb: Any = [{"round_robin": {}}]
    for _ in range(5_000):
        lb = [{"outlier_detection": {"childPolicy": lb}}]
    assert _parse_or_path_error({"loadBalancingConfig": lb}) is None


# --------------------------------------------------------------------------- targets


SCHEMES = ["ipv4", "ipv6", "dns", "static", "file", "etcd", "unix", "xds", "IPV4", "Dns"]
target_text = (st.text(max_size=40)
               | st.builds(lambda s, sep, a, e: f"{s}:{sep}{a}/{e}", st.sampled_from(SCHEMES),
                           st.sampled_from(["", "/", "//"]), st.text(max_size=15),
                           st.text(max_size=25))
               | st.builds(lambda s, parts: f"{s}:{','.join(parts)}", st.sampled_from(SCHEMES),
                           st.lists(st.sampled_from(ODD_STRINGS + ["127.0.0.1:80", "[::1]:0",
                                                                   "1.2.3.4:65536", "h:1"]),
                                    max_size=4)))


@FUZZ
@given(raw=target_text)
def test_targets_parse_or_say_what_is_wrong(raw: str) -> None:
    try:
        target = parse_target(raw)
        validate_target(target)
    except ValueError as exc:
        assert isinstance(exc, InvalidTargetError | ServiceConfigError), repr(exc)
        assert str(exc)
    else:
        assert target.scheme and target.raw == raw.strip()


# --------------------------------------------------------------------------- file resolver


def _valid_file_doc() -> dict[str, Any]:
    return {"endpoints": [{"address": "10.0.0.1:50051", "weight": 3,
                           "metadata": {"zone": "a"}}, {"address": "[::1]:50052"}],
            "serviceConfig": POLICIES["sticky"]}


@st.composite
def file_docs(draw: st.DrawFn) -> Any:
    doc = _valid_file_doc()
    endpoint = draw(st.sampled_from(doc["endpoints"]))
    key = draw(st.sampled_from(["address", "weight", "metadata", "extra"]))
    endpoint[key] = draw(json_values)
    if draw(st.booleans()):
        doc[draw(st.sampled_from(["endpoints", "serviceConfig", "other"]))] = draw(json_values)
    return doc


DEEP = ["[" * 100_000, '{"a":' * 100_000, b"\xff\xfe{"]


@FUZZ
@given(content=st.binary(max_size=64) | st.builds(json.dumps, json_values | file_docs())
       | st.sampled_from(DEEP))
def test_endpoints_file_contents_parse_or_name_a_path(content: bytes | str) -> None:
    try:
        state = parse_endpoints_json(content)
    except ServiceConfigError as exc:
        assert exc.path and str(exc)
    else:
        assert len({e.address for e in state.endpoints}) == len(state.endpoints)
        assert all(e.weight >= 1 for e in state.endpoints)


# --------------------------------------------------------------------------- etcd values


@st.composite
def etcd_values(draw: st.DrawFn) -> bytes:
    doc: dict[str, Any] = {"Op": 0, "Addr": "10.0.0.7:50051", "Metadata": {"weight": 2}}
    key = draw(st.sampled_from(["Op", "Addr", "Metadata", "Extra"]))
    doc[key] = draw(json_values)
    return json.dumps(doc).encode()


@FUZZ
@given(key=st.text(max_size=20),
       value=st.binary(max_size=64) | st.sampled_from([d.encode() if isinstance(d, str)
                                                       else d for d in DEEP])
       | etcd_values() | st.builds(
           lambda v: json.dumps(v).encode(), json_values))
def test_etcd_values_give_an_endpoint_or_a_reason(key: str, value: bytes) -> None:
    try:
        endpoint = parse_update(key, value)
    except ValueError as exc:
        assert str(exc)
    else:
        assert endpoint.weight >= 1 and endpoint.address
    table = NamingTable()                    # the resolver's path: never raises
    table.put(f"svc/{key}".encode(), value)
    fingerprint(table.endpoints())
