"""``lbclient probe`` against real fake backends: one row per endpoint with its health,
exit 0 while any endpoint is healthy, 1 when none is, 2 for bad input."""

from __future__ import annotations

import json
import pathlib
import time

import pytest

import lbclient
from lbclient.cli import main
from lbclient.cli.probe import ProbeResult, probe_endpoint, render, resolve
from lbclient.endpoint import Endpoint
from lbclient.testing import NOT_SERVING, Backend
from lbclient.testing.pytest_plugin import FleetFactory

ECHO_UNARY = "/lbclient.testing.echo.v1.Echo/Unary"


def rows(out: str) -> dict[str, str]:
    """address -> its table row."""
    return {line.split()[0]: line for line in out.splitlines() if line.startswith("127.0.0.1:")}


def test_marks_the_not_serving_backend(fleet_factory: FleetFactory,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    fleet = fleet_factory(3)
    fleet[1].set_health(NOT_SERVING)
    assert main(["probe", fleet.target, "--timeout", "5"]) == 0
    out = capsys.readouterr().out
    table = rows(out)
    assert set(table) == set(fleet.addresses)
    assert " NOT_SERVING " in table[fleet[1].address]
    for b in (fleet[0], fleet[2]):
        assert " SERVING " in table[b.address] and "NOT_SERVING" not in table[b.address]
        assert "ms" in table[b.address]                        # connect time measured
    assert "2/3 endpoints healthy" in out


def test_none_healthy_exits_1(fleet_factory: FleetFactory,
                              capsys: pytest.CaptureFixture[str]) -> None:
    fleet = fleet_factory(2)
    for b in fleet:
        b.set_health(NOT_SERVING)
    assert main(["probe", fleet.target, "--timeout", "5"]) == 1
    assert "0/2 endpoints healthy" in capsys.readouterr().out


def test_stopped_backend_is_refused(fleet_factory: FleetFactory,
                                    capsys: pytest.CaptureFixture[str]) -> None:
    fleet = fleet_factory(2)
    fleet[1].stop()
    assert main(["probe", fleet.target, "--timeout", "1"]) == 0
    out = capsys.readouterr().out
    assert " REFUSED " in rows(out)[fleet[1].address]
    assert f"{fleet[1].address}: connection refused (nothing listens there)" in out


def test_method_calls_with_empty_requests(fleet_factory: FleetFactory,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    fleet = fleet_factory(2)
    fleet[1].set_error_rate(1.0)
    assert main(["probe", fleet.target, "--method", ECHO_UNARY, "--calls", "4",
                 "--timeout", "5"]) == 0
    table = rows(capsys.readouterr().out)
    assert table[fleet[0].address].endswith("OK:4")
    assert table[fleet[1].address].endswith("UNAVAILABLE:4")
    assert fleet[0].calls == 4 and fleet[1].calls == 4          # the calls really happened


def test_health_service_from_the_service_config(fleet_factory: FleetFactory,
                                                tmp_path: pathlib.Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    fleet = fleet_factory(2)
    fleet[0].set_health(True, service="orders")
    fleet[1].set_health(NOT_SERVING, service="orders")
    config = tmp_path / "sc.json"
    config.write_text(json.dumps({"healthCheckConfig": {"serviceName": "orders"}}))
    assert main(["probe", fleet.target, "--service-config", f"@{config}",
                 "--timeout", "5"]) == 0
    out = capsys.readouterr().out
    assert "policy: round_robin" in out
    assert " NOT_SERVING " in rows(out)[fleet[1].address]
    # --health-service wins over the config; an unknown name is unhealthy everywhere.
    assert main(["probe", fleet.target, "--service-config", f"@{config}",
                 "--health-service", "billing", "--timeout", "5"]) == 1
    assert all("SERVICE_UNKNOWN" in r for r in rows(capsys.readouterr().out).values())


def test_backend_without_health_service_is_assumed_healthy(
        capsys: pytest.CaptureFixture[str]) -> None:
    with Backend(health=False) as backend:
        assert main(["probe", f"ipv4:{backend.address}", "--timeout", "5"]) == 0
        assert "UNIMPLEMENTED (assumed healthy)" in capsys.readouterr().out


@pytest.mark.parametrize("argv", [
    ["probe", "ipv4:not-an-ip:1"],
    ["probe", "ipv4:127.0.0.1:1", "--service-config", '{"loadBalancingConfig": 3}'],
    ["probe", "ipv4:127.0.0.1:1", "--service-config", "@/nonexistent/sc.json"],
])
def test_bad_input_exits_2(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    assert main(argv) == 2
    assert capsys.readouterr().err.startswith("error")


def test_resolve_and_probe_endpoint_directly(fleet_factory: FleetFactory) -> None:
    fleet = fleet_factory(2)
    endpoints = resolve(fleet.target, 5.0)
    assert [e.address for e in endpoints] == fleet.addresses
    result = probe_endpoint(Endpoint(fleet[0].address, 3), "", ECHO_UNARY, 2, 5.0)
    assert result.healthy and result.weight == 3
    assert result.codes == {"OK": 2} and len(result.latencies) == 2
    assert result.connect_time is not None and result.connect_time > 0


# ------------------------------------------------------------------ resolution paths
class _OneShot(lbclient.Resolver):
    """Answers ``start()`` the way the target's path says: endpoints, empty, error, or
    nothing at all (registered as ``probetest``)."""

    def start(self) -> None:
        kind = self.target.endpoint
        if kind == "empty":
            self.listener.on_resolved(lbclient.ResolverState((), authoritative=True))
        elif kind == "error":
            self.listener.on_resolver_error(lbclient.ResolverError("no such service"))
        elif kind != "silent":
            self.listener.on_resolved(lbclient.ResolverState(
                tuple(lbclient.Endpoint(a, weight=7) for a in kind.split(","))))


lbclient.register_resolver("probetest", _OneShot)


@pytest.mark.parametrize(("target", "message"), [
    ("probetest:empty", "the resolver returned no endpoints"),
    ("probetest:error", "no such service"),
    ("probetest:silent", "no result from the resolver within 0.2s"),
])
def test_resolution_failures_exit_2(target: str, message: str,
                                    capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["probe", target, "--timeout", "0.2"]) == 2
    assert message in capsys.readouterr().err
    with pytest.raises(lbclient.ResolverError, match=message):
        resolve(target, 0.2)


def test_weights_come_from_the_resolver(fleet_factory: FleetFactory,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    fleet = fleet_factory(2)
    assert main(["probe", "probetest:" + ",".join(fleet.addresses), "--timeout", "5"]) == 0
    table = rows(capsys.readouterr().out)
    assert [r.split()[1] for r in table.values()] == ["7", "7"]


def test_host_names_resolve(fleet_factory: FleetFactory,
                            capsys: pytest.CaptureFixture[str]) -> None:
    fleet = fleet_factory(1)
    assert main(["probe", f"static:///localhost:{fleet[0].port}", "--timeout", "5"]) == 0
    out = capsys.readouterr().out
    assert f"127.0.0.1:{fleet[0].port}" in out and " SERVING " in out


def test_dead_endpoints_are_probed_in_parallel(fleet_factory: FleetFactory,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    fleet = fleet_factory(8)
    fleet.stop()
    started = time.monotonic()
    assert main(["probe", fleet.target, "--timeout", "1"]) == 1
    elapsed = time.monotonic() - started
    out = capsys.readouterr().out
    assert sum(" REFUSED " in r for r in rows(out).values()) == 8
    assert elapsed < 6.0, f"8 dead endpoints took {elapsed:.1f}s with a 1s timeout"


def test_tls_against_a_plaintext_server_fails_the_handshake(
        fleet_factory: FleetFactory, capsys: pytest.CaptureFixture[str]) -> None:
    fleet = fleet_factory(1)
    assert main(["probe", fleet.target, "--tls", "--timeout", "1"]) == 1
    assert "TLS_FAILED" in capsys.readouterr().out


def test_render_formats_every_column() -> None:
    ok = ProbeResult("10.0.0.1:5", 2, connect_time=0.0123, health="SERVING", healthy=True,
                     latencies=[0.003, 0.001, 0.002], codes={"OK": 2, "UNAVAILABLE": 1})
    dead = ProbeResult("10.0.0.2:5", 1, health="UNREACHABLE")
    lines = render([ok, dead], with_calls=True).splitlines()
    assert lines[0].split() == ["address", "weight", "health", "connect", "p50", "max",
                                "calls"]
    assert lines[2].split() == ["10.0.0.1:5", "2", "SERVING", "12.3ms", "2.0ms", "3.0ms",
                                "OK:2", "UNAVAILABLE:1"]
    assert lines[3].split() == ["10.0.0.2:5", "1", "UNREACHABLE", "-", "-", "-", "-"]
    assert "calls" not in render([ok], with_calls=False)


def test_json_lines_for_scripts(fleet_factory: FleetFactory,
                                capsys: pytest.CaptureFixture[str]) -> None:
    fleet = fleet_factory(2)
    fleet[0].set_health(NOT_SERVING)
    assert main(["probe", fleet.target, "--json", "--method", ECHO_UNARY, "--calls", "2",
                 "--timeout", "5"]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["address"] for r in lines] == fleet.addresses
    assert [(r["health"], r["healthy"]) for r in lines] == [("NOT_SERVING", False),
                                                           ("SERVING", True)]
    assert all(r["codes"] == {"OK": 2} and len(r["latencies"]) == 2 for r in lines)
    fleet[1].set_health(NOT_SERVING)
    assert main(["probe", fleet.target, "--json", "--timeout", "5"]) == 1
