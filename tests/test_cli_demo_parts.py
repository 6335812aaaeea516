"""The demo's parts on their own: the fleet and its script, the phase plan, the tables,
the event feed, and one in-process phase with real traffic."""

from __future__ import annotations

import argparse
import io
import json
import logging
import pathlib
import re
import time
from collections.abc import Iterator
from contextlib import redirect_stdout
from types import SimpleNamespace
from typing import Any

import pytest
from helpers import wait_until

from lbclient import EndpointEvent
from lbclient.balancer.policy import get_policy
from lbclient.cli._demo_events import EventFeed, TakenOut, describe
from lbclient.cli._demo_fleet import CHARACTERS, DemoFleet, Script
from lbclient.cli._demo_policies import (
    KEY_HEADER,
    candidates,
    outlier_wrappers,
    service_config_for,
)
from lbclient.cli._demo_traffic import EndpointCalls
from lbclient.cli._demo_view import (
    COMPARE_HEADERS,
    ENDPOINT_HEADERS,
    PhaseResult,
    compare_rows,
    endpoint_rows,
    plain_comparison,
    plain_endpoints,
    rich_comparison,
    rich_endpoints,
)
from lbclient.cli.demo import Phase, plan, run_phase
from lbclient.config import parse_service_config
from lbclient.testing import NOT_SERVING


@pytest.fixture(scope="module")
def demo_fleet() -> Iterator[DemoFleet]:
    fleet = DemoFleet()
    yield fleet
    fleet.stop()


def args(**kw: Any) -> argparse.Namespace:
    base = {"policy": None, "config": None, "duration": 1.0, "threads": 2, "rate": 100.0,
            "no_health": False, "plain": True, "list": False}
    return argparse.Namespace(**{**base, **kw})


def info(address: str, **kw: Any) -> SimpleNamespace:
    base = {"address": address, "in_flight": 0, "connectivity": "READY", "healthy": None,
            "ejected_until": None}
    return SimpleNamespace(**{**base, **kw})


# ------------------------------------------------------------------ fleet and script
def test_fleet_characters_and_reset(demo_fleet: DemoFleet) -> None:
    assert [b.name for b in demo_fleet.fleet] == [c.name for c in CHARACTERS]
    assert demo_fleet.backend("slow").latency == pytest.approx(0.040)
    assert demo_fleet.backend("flaky").error_rate == pytest.approx(0.3)
    assert demo_fleet.state_of("fast") == "up"
    assert demo_fleet.state_of("flaky") == "30% errors"
    weights = demo_fleet.weights()
    assert weights[demo_fleet.backend("fast").address] == 5
    assert set(demo_fleet.by_address()) == set(demo_fleet.fleet.addresses)
    demo_fleet.backend("flapping").set_health(NOT_SERVING)
    demo_fleet.backend("restarting").stop()
    assert demo_fleet.state_of("flapping") == "NOT_SERVING"
    assert demo_fleet.state_of("restarting") == "stopped"
    demo_fleet.reset()
    assert demo_fleet.state_of("flapping") == "up"
    assert demo_fleet.state_of("restarting") == "up"


def test_script_plays_the_timeline(demo_fleet: DemoFleet) -> None:
    demo_fleet.reset()
    seen: list[tuple[str, str]] = []
    script = demo_fleet.script(2.0).start()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and (len(seen) < 2 or seen[-1] != ("up", "up")):
        state = (demo_fleet.state_of("flapping"), demo_fleet.state_of("restarting"))
        if not seen or seen[-1] != state:
            seen.append(state)
        time.sleep(0.005)
    script.stop()
    # The timeline, in order: flapping NOT_SERVING (25%), restarting killed (35%),
    # flapping back (65%), restarting back (70%).
    # Polling can miss a short state on a loaded machine, so: what was seen is the
    # expected path with at most some middle states skipped, and both faults showed.
    expected = [("up", "up"), ("NOT_SERVING", "up"), ("NOT_SERVING", "stopped"),
                ("up", "stopped"), ("up", "up")]
    positions = [expected.index(state, 1 if i else 0) for i, state in enumerate(seen)]
    assert positions == sorted(positions) and positions[0] == 0 and positions[-1] == 4, seen
    assert any(f == "NOT_SERVING" for f, _ in seen) and any(r == "stopped" for _, r in seen)
    demo_fleet.reset()


def test_a_failing_step_is_logged_and_the_script_goes_on(
        caplog: pytest.LogCaptureFixture) -> None:
    done: list[str] = []

    def boom() -> None:
        raise RuntimeError("port taken")

    with caplog.at_level(logging.WARNING, logger="lbclient.demo"):
        script = Script([(0.0, boom), (0.01, lambda: done.append("next"))]).start()
        wait_until(lambda: done == ["next"], 10, message="the next step")
        script.stop()
    assert "demo script step failed: port taken" in caplog.text


# ------------------------------------------------------------------ plan and configs
def test_plan_from_policies_and_from_a_file(tmp_path: pathlib.Path) -> None:
    weights = {"127.0.0.1:1": 1}
    phases = plan(args(policy=["round_robin,pick_first", "random"]), weights)
    assert [p.policy for p in phases] == ["round_robin", "pick_first", "random"]
    file = tmp_path / "sc.json"
    file.write_text(json.dumps({"loadBalancingPolicy": "pick_first"}))
    (phase,) = plan(args(config=str(file)), weights)
    assert phase == Phase("pick_first", {"loadBalancingPolicy": "pick_first"})
    with pytest.raises(ValueError, match="not registered"):
        plan(args(policy=["nope"]), weights)
    with pytest.raises(OSError):
        plan(args(config=str(tmp_path / "absent.json")), weights)
    bare = plan(args(policy=["round_robin"], no_health=True), weights)
    assert bare[0].config == {"loadBalancingConfig": [{"round_robin": {}}]}


def test_configs_wrap_in_outlier_detection_when_registered() -> None:
    config = service_config_for("least_request", {}, health=True)
    assert config is not None
    parsed = parse_service_config(config)
    assert config["healthCheckConfig"] == {"serviceName": ""}
    if get_policy("outlier_detection") is None:
        assert parsed.lb.name == "least_request"
    else:
        assert parsed.lb.name == "outlier_detection"
        assert parsed.lb.config.child.name == "least_request"
    assert candidates("ring_hash", {})[0]["requestHashHeader"] == KEY_HEADER
    assert candidates("anything_else", {}) == [{}]
    child: dict[str, Any] = {"round_robin": {}}
    for wrapper in outlier_wrappers(child):
        assert wrapper["outlier_detection"]["childPolicy"] == [child]


# ------------------------------------------------------------------ tables
def test_endpoint_rows_show_every_backend(demo_fleet: DemoFleet) -> None:
    demo_fleet.reset()
    fast, flaky = demo_fleet.backend("fast").address, demo_fleet.backend("flaky").address
    now = 100.0
    infos = [info(fast, in_flight=2, healthy=True),
             info(flaky, ejected_until=102.5, healthy=False)]
    calls = {fast: EndpointCalls({"OK": 3}, [0.001, 0.002, 0.004]),
             flaky: EndpointCalls({"OK": 1, "UNAVAILABLE": 1}, [0.002, 0.003])}
    rows = endpoint_rows(demo_fleet, infos, calls, now=now)
    assert [r[0] for r in rows] == [c.name for c in CHARACTERS]
    by_name = {r[0]: dict(zip(ENDPOINT_HEADERS, r, strict=True)) for r in rows}
    assert by_name["fast"]["calls"] == "3" and by_name["fast"]["share"] == "60.0%"
    assert by_name["fast"]["in-flight"] == "2" and by_name["fast"]["p50"] == "2.0ms"
    assert by_name["fast"]["health"] == "healthy" and by_name["fast"]["ejected"] == "-"
    assert by_name["flaky"]["errors"] == "1" and by_name["flaky"]["ejected"] == "yes (2.5s)"
    assert by_name["flaky"]["health"] == "UNHEALTHY"
    assert by_name["slow"]["calls"] == "0" and by_name["slow"]["state"] == "-"
    text = plain_endpoints("title", rows)
    assert text.splitlines()[0] == "title" and all(r[1] in text for r in rows)
    rendered = _render(rich_endpoints("", rows))
    assert "fast :" in rendered and "unhealthy" in rendered and "yes (2.5s)" in rendered


def _render(renderable: Any) -> str:
    from rich.console import Console

    out = io.StringIO()
    Console(file=out, width=140, color_system=None).print(renderable)
    return out.getvalue()


def test_comparison_rows() -> None:
    client = EndpointCalls({"OK": 90, "UNAVAILABLE": 10}, sorted([0.001] * 50 + [0.05] * 50))
    result = PhaseResult("round_robin", {}, 2.0, client, {"fast": 0.5, "slow": 0.25},
                         taken_out={"flapping": {"unhealthy": (1, "NOT_SERVING")},
                                    "flaky": {"ejected": (2, "failure percentage 40%")}},
                         interrupted=True)
    (row,) = compare_rows([result])
    cells = dict(zip(COMPARE_HEADERS, row, strict=True))
    assert cells["policy"] == "round_robin (cut short)"
    assert cells["calls"] == "100" and cells["calls/s"] == "50" and cells["errors"] == "10.0%"
    assert cells["p50"] == "1.0ms" and cells["p99"] == "50.0ms"
    assert cells["fast"] == "50%" and cells["slow"] == "25%" and cells["flaky"] == "0%"
    assert cells["taken out"] == "flaky, flapping"              # fleet order
    text = plain_comparison([result])
    assert "round_robin (cut short)" in text
    assert text.splitlines()[-3:] == [
        "taken out, and why:",
        "  round_robin: flaky: ejected 2x (failure percentage 40%)",
        "  round_robin: flapping: unhealthy (NOT_SERVING)"]
    assert "round_robin" in _render(rich_comparison([result]))


# ------------------------------------------------------------------ taken out
def test_rich_comparison_is_followed_by_why(capsys: pytest.CaptureFixture[str]) -> None:
    from lbclient.cli.demo import _print_comparison

    result = PhaseResult("random", {}, 1.0, EndpointCalls({"OK": 4}, [0.001] * 4),
                         {"fast": 1.0},
                         taken_out={"restarting": {"unhealthy": (1, "NOT_SERVING"),
                                                   "connection failed": (1, "")}})
    _print_comparison([result], live=True)
    out = capsys.readouterr().out
    assert "taken out, and why:" in out
    assert "  random: restarting: unhealthy (NOT_SERVING); connection failed" in out


def test_taken_out_records_every_event_and_failed_connections() -> None:
    taken = TakenOut({"127.0.0.1:1": "flaky", "127.0.0.1:2": "restarting"})
    taken.on_event(EndpointEvent("ejected", "127.0.0.1:1", 1.0, "failure percentage 40%"))
    taken.on_event(EndpointEvent("ejected", "127.0.0.1:1", 5.0, "failure percentage 30%"))
    taken.on_event(EndpointEvent("health_changed", "127.0.0.1:2", 2.0, "NOT_SERVING",
                                 healthy=False))
    taken.on_event(EndpointEvent("health_changed", "127.0.0.1:1", 2.0, "SERVING",
                                 healthy=True))                      # not a take-out
    taken.on_event(EndpointEvent("readmitted", "127.0.0.1:1", 4.0))
    for _ in range(3):
        taken.observe([info("127.0.0.1:2", connectivity="TRANSIENT_FAILURE"),
                       info("127.0.0.1:1")])
    assert taken.copy() == {
        "flaky": {"ejected": (2, "failure percentage 40%")},
        "restarting": {"unhealthy": (1, "NOT_SERVING"), "connection failed": (1, "")}}
    assert describe(taken.copy()["restarting"]) == "unhealthy (NOT_SERVING); connection failed"
    assert describe(taken.copy()["flaky"]) == "ejected 2x (failure percentage 40%)"


# ------------------------------------------------------------------ event feed
def test_event_feed_names_backends_and_restores_the_logger() -> None:
    logger = logging.getLogger("lbclient")
    before = (logger.level, logger.propagate, list(logger.handlers))
    out = io.StringIO()
    with redirect_stdout(out), EventFeed({"127.0.0.1:5": "flaky"}, echo=True, keep=2) as feed:
        logging.getLogger("lbclient.events").warning("endpoint %s: ejected", "127.0.0.1:5")
        logging.getLogger("lbclient.events").info("two")
        logging.getLogger("lbclient.events").info("three")
        logging.getLogger("lbclient.events").debug("not shown")
        assert len(feed.lines) == 2 and feed.lines[-1].endswith("three")
    assert "endpoint flaky: ejected" in out.getvalue()
    assert "not shown" not in out.getvalue()
    assert (logger.level, logger.propagate, list(logger.handlers)) == before


# ------------------------------------------------------------------ one real phase
def test_one_phase_in_process(demo_fleet: DemoFleet,
                              capsys: pytest.CaptureFixture[str]) -> None:
    demo_fleet.reset()
    phase = plan(args(policy=["round_robin"]), demo_fleet.weights())[0]
    with EventFeed({}, echo=False) as feed:
        result = run_phase(demo_fleet, phase, "[1/1] round_robin",
                           args(duration=1.5, rate=150.0), False, feed)
    assert not result.interrupted and result.seconds >= 1.5
    assert result.client.calls > 20
    assert set(result.shares) <= {c.name for c in CHARACTERS}
    assert sum(result.shares.values()) == pytest.approx(1.0)
    assert result.shares["fast"] > 0 and result.shares["slow"] > 0
    assert [r[0] for r in result.rows] == [c.name for c in CHARACTERS]
    assert all(r[6] == "0" for r in result.rows)                   # nothing left in flight
    out = capsys.readouterr().out
    assert out.startswith("\n== [1/1] round_robin")
    assert "[1/1] round_robin after" in out
    # The script ran, and the channel took out both faulty backends, saying why:
    # flapping went NOT_SERVING; restarting said NOT_SERVING (graceful shutdown) just
    # before its connection dropped, which only the event stream catches.
    if "healthCheckConfig" in phase.config:
        assert result.taken_out["flapping"]["unhealthy"][1] == "NOT_SERVING"
        assert result.taken_out["restarting"]["unhealthy"][1] == "NOT_SERVING"


def test_one_live_phase_renders_with_rich(demo_fleet: DemoFleet,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    """The rich path (normally a terminal): the live table and the event lines."""
    demo_fleet.reset()
    phase = plan(args(policy=["round_robin"]), demo_fleet.weights())[0]
    with EventFeed({a: c.name for a, c in demo_fleet.by_address().items()},
                   echo=False) as feed:
        result = run_phase(demo_fleet, phase, "[1/1] round_robin",
                           args(duration=1.0, rate=100.0), True, feed)
    assert not result.interrupted and result.client.calls > 10
    out = capsys.readouterr().out
    assert "[1/1] round_robin:" in out and "calls" in out
    for c in CHARACTERS:
        assert f"{c.name} :" in out                       # the compact backend cell
    # the event lines under the table name backends, not addresses
    assert re.search(r"\+\s*\d+\.\ds endpoint (fast|slow|flaky|flapping|restarting): ", out)


def test_rich_is_used_only_on_a_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    from lbclient.cli import demo

    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    monkeypatch.setattr("sys.stdout", io.StringIO())
    assert demo._use_rich(args(plain=False)) is False       # a pipe
    monkeypatch.setattr("sys.stdout", Tty())
    assert demo._use_rich(args(plain=False)) is True
    assert demo._use_rich(args(plain=True)) is False        # --plain wins
    monkeypatch.setitem(__import__("sys").modules, "rich", None)
    assert demo._use_rich(args(plain=False)) is False       # rich not installed


def test_run_prints_a_comparison_of_every_phase(capsys: pytest.CaptureFixture[str]) -> None:
    from lbclient.cli import main

    assert main(["demo", "--plain", "--duration", "0.5", "--rate", "80", "--threads", "2",
                 "--no-health", "--policy", "round_robin,pick_first"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("fleet: fast (1ms), slow (40ms)")
    comparison = out[out.index("comparison"):].splitlines()
    assert comparison[3].startswith("round_robin") and comparison[4].startswith("pick_first")
    # pick_first keeps one backend; round robin spreads over several
    pick_first_shares = [c for c in comparison[4].split() if c.endswith("%")][1:]
    assert "100%" in pick_first_shares or "99%" in pick_first_shares
