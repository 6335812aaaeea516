"""Scenario tables shared by the sync and asyncio channel tests (no tests here).

* :data:`DISTRIBUTIONS` - each policy's call distribution on three backends, with the
  predicate its sync test asserts (test_channel_balancing, test_policy_load_aware,
  test_policy_wrr, test_policy_hashing, test_policy_sticky);
* :data:`HEALTH` - the active health checking scenarios of test_health_active as steps;
* :func:`run_health` - plays a :class:`HealthScenario` through a :class:`Client`.

A :class:`Client` is whatever channel kind is under test (``test_aio_scenarios`` has a
sync and an asyncio one); its methods are coroutines so one interpreter serves both.
"""

from __future__ import annotations

import collections
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from test_policy_support import POLICY_CONFIGS

from lbclient.testing import NOT_SERVING, Fleet

Routes = list[tuple[str | None, str]]     # (key sent, address that answered) per call
Check = Callable[[Routes, list[str]], None]


# ------------------------------------------------------------------ distributions
@dataclass(frozen=True)
class Distribution:
    """``calls`` unary calls, ``batch`` at a time, under the policy ``lb(addresses)``;
    call i carries ``header: key-(i % keys)`` when ``header`` is set. ``check(routes,
    addresses)`` raises AssertionError when the distribution is wrong. Load-aware
    policies run one call at a time, as their sync tests do (concurrency changes what
    they see)."""

    name: str
    lb: Callable[[list[str]], dict[str, Any]]
    calls: int
    check: Check
    header: str | None = None
    keys: int = 0
    batch: int = 10

    def key(self, i: int) -> str | None:
        return f"key-{i % self.keys}" if self.header else None


def _counts(routes: Routes) -> collections.Counter[str]:
    return collections.Counter(address for _, address in routes)


def exact_shares(*weights: int, slack: int = 0) -> Check:
    """Backend i gets exactly ``weights[i] / sum`` of the calls (within ``slack``)."""
    def check(routes: Routes, addresses: list[str]) -> None:
        got, n = _counts(routes), len(routes)
        want = [n * w // sum(weights) for w in weights]
        assert all(abs(got[a] - w) <= slack for a, w in zip(addresses, want, strict=True)), (
            got, want)
    return check


def only(index: int) -> Check:
    def check(routes: Routes, addresses: list[str]) -> None:
        assert set(_counts(routes)) == {addresses[index]}, _counts(routes)
    return check


def every_backend(more_than: int = 0) -> Check:
    def check(routes: Routes, addresses: list[str]) -> None:
        got = _counts(routes)
        assert set(got) == set(addresses) and min(got.values()) > more_than, got
    return check


def share_of(index: int, low: float, high: float) -> Check:
    def check(routes: Routes, addresses: list[str]) -> None:
        share = _counts(routes)[addresses[index]] / len(routes)
        assert low < share < high, (share, _counts(routes))
    return check


def keys_stick(routes: Routes, addresses: list[str]) -> None:
    """Every key always reaches the same backend, and the keys cover every backend."""
    by_key: dict[str | None, set[str]] = collections.defaultdict(set)
    for key, address in routes:
        by_key[key].add(address)
    assert all(len(v) == 1 for v in by_key.values()), by_key
    assert set().union(*by_key.values()) == set(addresses), by_key


def _cfg(name: str, **extra: Any) -> Callable[[list[str]], dict[str, Any]]:
    return lambda addresses: {name: {**POLICY_CONFIGS.get(name, {}), **extra}}


def _weights(name: str, *w: float) -> Callable[[list[str]], dict[str, Any]]:
    return lambda a: {name: {"weights": dict(zip(a, w, strict=True))}}


DISTRIBUTIONS: tuple[Distribution, ...] = (
    Distribution("round_robin", _cfg("round_robin"), 300, exact_shares(1, 1, 1)),
    Distribution("pick_first", _cfg("pick_first"), 60, only(0)),
    Distribution("random", _cfg("random"), 300, every_backend(60)),
    *(Distribution(n, _cfg(n), 300, every_backend(60), batch=1)
      for n in ("least_connections", "least_request")),
    Distribution("peak_ewma", _cfg("peak_ewma"), 300, every_backend(), batch=1),
    *(Distribution(f"{n}_weights_map", _weights(n, 1, 1, 4), 450, share_of(2, 0.55, 0.78),
                   batch=10 if n == "random" else 1)
      for n in ("random", "least_request", "least_connections")),
    Distribution("weighted_round_robin_5_3_2", _weights("weighted_round_robin", 5, 3, 2),
                 500, exact_shares(5, 3, 2, slack=3)),
    Distribution("ring_hash", _cfg("ring_hash"), 300, keys_stick, "x-key", 30),
    Distribution("maglev", _cfg("maglev"), 300, keys_stick, "x-key", 30),
    Distribution("sticky", _cfg("sticky"), 200, keys_stick, "x-session", 20),
)


# ------------------------------------------------------------------ health
class Client(Protocol):
    """A channel under test, seen the same way whatever its kind."""

    events: list[tuple[float, Any]]    # (monotonic time, lbclient.EndpointEvent)

    async def calls(self, n: int) -> list[str]:
        """``n`` unary calls, one at a time: the answering addresses."""

    def endpoints(self) -> list[Any]: ...

    async def sleep(self, seconds: float) -> None: ...


@dataclass(frozen=True)
class HealthScenario:
    """``config`` is the channel's service config (round_robin plus health checking);
    ``backends`` the per-backend kwargs of the fleet; ``steps`` are played in order by
    :func:`run_health` (see its docstring for the step kinds)."""

    name: str
    config: dict[str, Any]
    steps: tuple[tuple[Any, ...], ...]
    backends: Sequence[dict[str, Any]] = field(default=({}, {}, {}))


RR = [{"round_robin": {}}]
_POLL = {"mode": "poll", "interval": "0.1s", "timeout": "2s", "jitter": 0,
         "unhealthyThreshold": 3, "healthyThreshold": 2}

HEALTH: tuple[HealthScenario, ...] = (
    HealthScenario("watch_not_serving_then_serving",
                   {"loadBalancingConfig": RR, "healthCheckConfig": {"serviceName": ""}}, (
                       ("eligible", {0, 1, 2}),
                       ("set_health", 0, False),
                       ("eligible", {1, 2}),
                       ("info", 0, "health_reason", "NOT_SERVING"),
                       ("calls_avoid", 0, 60),
                       ("set_health", 0, True),
                       ("eligible", {0, 1, 2}),
                       ("calls_reach", {0, 1, 2}, 60),
                       ("health_calls", 0, 1))),           # one Watch stream, no polling
    HealthScenario("poll_thresholds", {"loadBalancingConfig": RR, "healthCheckConfig": _POLL}, (
        ("eligible", {0, 1, 2}),
        ("mark",),
        ("set_health", 2, False),
        # three failed probes 0.1 s apart: at least two intervals after the change
        ("event", 2, False, "3 failed probes in a row: NOT_SERVING", 0.18),
        ("eligible", {0, 1}),
        ("mark",),
        ("set_health", 2, True),
        ("event", 2, True, "2 good probes in a row", 0.09),
        ("eligible", {0, 1, 2}))),
    HealthScenario("named_service",
                   {"loadBalancingConfig": RR, "healthCheckConfig": {"serviceName": "orders"}},
                   (("health_known",),
                    ("eligible", {0, 2}),
                    ("info", 1, "health", "unhealthy"))),
    HealthScenario("unimplemented_stays_in_use",
                   {"loadBalancingConfig": RR, "healthCheckConfig": {}}, (
                       ("eligible", {0, 1, 2}),
                       ("info", 2, "health", "disabled"),
                       ("calls_reach", {0, 1, 2}, 30)),
                   backends=({}, {}, {"health": False})),
    HealthScenario("stop_and_restart", {"loadBalancingConfig": RR, "healthCheckConfig": {}}, (
        ("eligible", {0, 1, 2}),
        ("stop", 1),
        ("eligible", {0, 2}),
        ("calls_reach", {0, 2}, 20),
        ("start", 1),
        ("eligible", {0, 1, 2}))),
)


def prepare_health(scenario: HealthScenario, fleet: Fleet) -> None:
    """Backend state the scenario needs before its channel exists."""
    if scenario.name == "named_service":
        for backend in fleet:
            backend.set_health(True, service="orders")
        fleet[1].set_health(NOT_SERVING, service="orders")


async def _until(client: Client, predicate: Callable[[], bool], what: str,
                 timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await client.sleep(0.005)


async def run_health(scenario: HealthScenario, fleet: Fleet, client: Client) -> None:
    """Play the steps: ``("eligible", {i..})`` wait until exactly those backends are
    eligible; ``("set_health", i, status)``; ``("stop", i)`` / ``("start", i)``;
    ``("health_known",)`` wait until no endpoint's health is pending;
    ``("calls_avoid", i, n)`` n calls, none reaching backend i; ``("calls_reach", {i..},
    n)`` n calls reaching exactly those; ``("info", i, field, value)`` an EndpointInfo
    field; ``("health_calls", i, n)``; ``("mark",)`` note the time; ``("event", i,
    healthy, reason_prefix, min_seconds)`` wait for that health_changed event, at least
    ``min_seconds`` after the mark."""
    addresses = fleet.addresses
    mark = time.monotonic()

    def eligible() -> set[str]:
        return {e.address for e in client.endpoints() if e.eligible}

    def info(i: int) -> Any:
        return next(e for e in client.endpoints() if e.address == addresses[i])

    for op, *args in scenario.steps:
        if op == "eligible":
            want = {addresses[i] for i in args[0]}
            await _until(client, lambda want=want: eligible() == want,
                         f"eligible == {sorted(args[0])}")
        elif op == "health_known":
            await _until(client, lambda: all(e.health != "pending"
                                             for e in client.endpoints()), "health reports")
        elif op == "set_health":
            fleet[args[0]].set_health(args[1])
        elif op == "stop":
            fleet[args[0]].stop()
        elif op == "start":
            fleet[args[0]].start()
        elif op == "calls_avoid":
            before = fleet[args[0]].calls
            seen = await client.calls(args[1])
            assert addresses[args[0]] not in seen and fleet[args[0]].calls == before, seen
        elif op == "calls_reach":
            seen = await client.calls(args[1])
            assert set(seen) == {addresses[i] for i in args[0]}, collections.Counter(seen)
        elif op == "info":
            assert getattr(info(args[0]), args[1]) == args[2], info(args[0])
        elif op == "health_calls":
            assert fleet[args[0]].health_calls == args[1], fleet[args[0]].health_calls
        elif op == "mark":
            mark = time.monotonic()
        elif op == "event":
            i, healthy, reason, at_least = args

            def found(i: int = i, healthy: bool = healthy,
                      since: float = mark) -> tuple[float, Any] | None:
                return next(((t, e) for t, e in client.events
                             if t >= since and e.kind == "health_changed"
                             and e.address == addresses[i] and e.healthy is healthy), None)

            await _until(client, lambda: found() is not None, f"{op} {args}")
            t, event = found()  # type: ignore[misc]
            assert event.reason.startswith(reason), event.reason
            assert t - mark >= at_least, t - mark
        else:
            raise AssertionError(f"unknown step {op!r}")
