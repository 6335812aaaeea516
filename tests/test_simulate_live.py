"""The simulator decides like the live channel: the same ordered failure script, fed to a
simulated balancer and to a real channel against fake gRPC backends, ejects the same
endpoint after the same number of calls, with the same calls per endpoint.

Routing is made deterministic on both sides by ring_hash over the same addresses (the
simulated backends are named after the fleet's ``127.0.0.1:port`` addresses) and keys
sent in order, so both sides see the same ordered outcome sequence per endpoint. Calls
are sequential on both sides (the simulated ones are 10 ms apart and take 1 ms).
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import grpc
import pytest
from helpers import wait_until

import lbclient
from lbclient import simulate
from lbclient.testing import Fleet, echo_pb2, echo_pb2_grpc

HEADER = "x-key"
KEYS = 30
RATE = 100.0
OFFSET = 0.005          # call i arrives at OFFSET + i / RATE
REQ = echo_pb2.EchoRequest(message="x")


def outlier_config(od: dict[str, Any]) -> dict[str, Any]:
    return {"loadBalancingConfig": [{"outlier_detection": {
        **od, "childPolicy": [{"ring_hash": {"requestHashHeader": HEADER}}]}}]}


def simulated(addresses: list[str], failing: int, fail_from: int, calls: int,
              od: dict[str, Any]) -> simulate.RunReport:
    backends: list[dict[str, Any]] = [{"name": a, "serviceTime": 0.001} for a in addresses]
    backends[failing]["faults"] = [{"kind": "errors",
                                    "start": OFFSET + (fail_from - 0.5) / RATE}]
    report = simulate.run({
        "backends": backends,
        "requests": {"rate": RATE, "count": calls, "arrivals": "uniform", "start": OFFSET,
                     "keys": {"header": HEADER, "count": KEYS, "order": "sequential",
                              "prefix": "k"}},
        "serviceConfig": outlier_config(od)}, seed=3)
    return report.runs[0]


class Live:
    """Sequential calls on a real channel; records ejections and per-endpoint outcomes."""

    def __init__(self, fleet: Fleet, od: dict[str, Any]) -> None:
        self.fleet = fleet
        self.channel = lbclient.insecure_channel(fleet.target, service_config=outlier_config(od))
        self.done = 0
        self.ejections: list[tuple[str, int]] = []
        self.calls: Counter[str] = Counter()
        self.failures: Counter[str] = Counter()
        self.channel.add_event_listener(self._event)
        self.channel.add_call_listener(self._call)

    def _event(self, event: lbclient.EndpointEvent) -> None:
        if event.kind == "ejected":
            self.ejections.append((event.address, self.done))

    def _call(self, address: str, outcome: Any) -> None:
        self.calls[address] += 1
        if outcome.code != "OK":
            self.failures[address] += 1

    def run(self, failing: int, fail_from: int, calls: int, sweep_every: int | None = None
            ) -> None:
        ch = self.channel
        wait_until(lambda: sum(e.eligible for e in ch.endpoints()) == len(self.fleet), 10,
                   message="every endpoint eligible")
        stub = echo_pb2_grpc.EchoStub(ch)
        for i in range(calls):
            if sweep_every and i and i % sweep_every == 0:
                ch._balancer.sweep()     # the interval timer, at the simulated call count
            if i == fail_from:
                self.fleet[failing].set_error_rate(1.0)
            try:
                stub.Unary(REQ, metadata=((HEADER, f"k{i % KEYS}"),), timeout=5)
            except grpc.RpcError as exc:
                assert exc.code() is grpc.StatusCode.UNAVAILABLE, exc
            self.done += 1


def sim_ejections(run: simulate.RunReport) -> list[tuple[str, int]]:
    return [(e["address"], e["finished_calls"]) for e in run.events if e["kind"] == "ejected"]


def per_endpoint(run: simulate.RunReport) -> tuple[dict[str, int], dict[str, int]]:
    return ({b.name: b.requests for b in run.backends if b.requests},
            {b.name: b.failed for b in run.backends if b.failed})


def test_consecutive_failures_eject_after_the_same_call(fleet: Fleet) -> None:
    od = {"consecutiveFailures": 5, "baseEjectionTime": "300s"}
    failing, fail_from, calls = 1, 40, 120
    sim = simulated(fleet.addresses, failing, fail_from, calls, od)
    assert sim.ok + sim.failed == calls
    [(address, at)] = sim_ejections(sim)
    assert address == fleet[failing].address
    assert fail_from + 5 <= at < calls           # five of its calls failed first
    live = Live(fleet, od)
    with live.channel:
        live.run(failing, fail_from, calls)
    assert live.ejections == sim_ejections(sim)
    assert (dict(live.calls), dict(live.failures)) == per_endpoint(sim)
    assert live.failures[fleet[failing].address] == 5


def test_failure_percentage_ejects_at_the_same_sweep(fleet: Fleet) -> None:
    """The simulated interval is 1 s (100 calls); the live channel's timer is pushed
    out of the way and its sweep is run after every 100 calls instead."""
    fpe = {"threshold": 50, "requestVolume": 10, "minimumHosts": 3}
    failing, fail_from, calls = 2, 120, 260
    sim = simulated(fleet.addresses, failing, fail_from, calls,
                    {"interval": "1s", "failurePercentageEjection": fpe})
    [(address, at)] = sim_ejections(sim)
    assert (address, at) == (fleet[failing].address, 200)   # the sweep after call 199
    live = Live(fleet, {"interval": "3600s", "failurePercentageEjection": fpe})
    with live.channel:
        live.run(failing, fail_from, calls, sweep_every=100)
    assert live.ejections == sim_ejections(sim)
    assert (dict(live.calls), dict(live.failures)) == per_endpoint(sim)
    reason = next(e["reason"] for e in sim.events if e["kind"] == "ejected")
    assert "above 50%" in reason


@pytest.mark.parametrize("fail_from", [0, 7])
def test_no_failures_before_the_script_starts(fleet: Fleet, fail_from: int) -> None:
    """Sanity of the script itself: with the failing endpoint failing from call
    ``fail_from``, nothing fails earlier on either side."""
    od = {"consecutiveFailures": 3, "baseEjectionTime": "300s"}
    sim = simulated(fleet.addresses, 0, fail_from, 40, od)
    live = Live(fleet, od)
    with live.channel:
        live.run(0, fail_from, 40)
    assert live.ejections == sim_ejections(sim) and len(live.ejections) == 1
    assert (dict(live.calls), dict(live.failures)) == per_endpoint(sim)
    assert sum(live.failures.values()) == 3


# ---------------------------------------------------------------------------- health


def test_poll_health_thresholds_count_the_same_probes(fleet_factory: Any) -> None:
    """Poll health checks with unhealthyThreshold 3 / healthyThreshold 2: a live channel
    and the simulator both mark the endpoint unhealthy at the third failed probe after it
    turned NOT_SERVING, and healthy again at the second good one."""
    fleet = fleet_factory(2)
    hc = {"mode": "poll", "interval": "0.1s", "unhealthyThreshold": 3,
          "healthyThreshold": 2, "jitter": 0}
    config = {"loadBalancingConfig": [{"round_robin": {}}], "healthCheckConfig": hc,
              "lbclient": {"panicThreshold": 0}}
    # simulated: NOT_SERVING from t=1.05 to t=2.05
    sc = simulate.parse_scenario({
        "backends": [{"name": a, "faults": [{"kind": "notServing", "start": 1.05,
                                             "end": 2.05}]} if i == 0 else {"name": a}
                     for i, a in enumerate(fleet.addresses)],
        "requests": {"rate": 10, "until": 3},
        "serviceConfig": config})
    sim = simulate.Simulation(sc, sc.variants[0], 1)
    sim.run()
    probes = sim.backends[0].probes
    marks = [(t, fit) for t, fit, _ in sim.backends[0].transitions if t > 0]
    assert [fit for _, fit in marks] == [False, True]
    (down, _), (up, _) = marks
    assert [s for t, s in probes if 1.05 <= t <= down] == [False] * 3
    assert [s for t, s in probes if 2.05 <= t <= up] == [True] * 2
    # live
    events: list[tuple[bool | None, int]] = []
    with lbclient.insecure_channel(fleet.target, service_config=config) as ch:
        ch.add_event_listener(lambda e: e.kind == "health_changed" and e.address ==
                              fleet[0].address and events.append((e.healthy,
                                                                  fleet[0].health_calls)))
        wait_until(lambda: sum(e.eligible for e in ch.endpoints()) == 2, 10,
                   message="both endpoints eligible")
        before = fleet[0].health_calls
        fleet[0].set_health(False)
        wait_until(lambda: bool(events) and events[-1][0] is False, 10, message="unhealthy")
        failed_probes = events[-1][1] - before
        before = fleet[0].health_calls
        fleet[0].set_health(True)
        wait_until(lambda: events[-1][0] is True, 10, message="healthy again")
        good_probes = events[-1][1] - before
    # a probe already on the wire when the status changed may be answered either way
    assert failed_probes in (3, 4) and good_probes in (2, 3)
