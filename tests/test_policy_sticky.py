"""sticky: sessions stay on their endpoint, fail over through the child policy, move
back gradually over returnWindow, honour a backend-named endpoint; unit tests on a manual
clock and integration tests on real backends."""

from __future__ import annotations

import collections
import time

import pytest
from helpers import wait_until
from test_policy_support import (
    REQ,
    ManualClock,
    candidates,
    channel,
    info,
    make_policy,
)

from lbclient.balancer.picker import CallOutcome
from lbclient.testing import Fleet, echo_pb2_grpc

H = "x-session"


def sticky(clock: ManualClock, **cfg: object) -> object:
    return make_policy("sticky", {"sessionHeader": H, **cfg}, clock=clock)


def s(key: str, exclude: tuple[str, ...] = ()) -> object:
    return info(key, H, exclude)


def test_session_stays_and_new_sessions_follow_the_child() -> None:
    clock = ManualClock()
    policy = sticky(clock)
    cands = candidates(3)
    picker = policy.build_picker(cands)  # type: ignore[attr-defined]
    first = {f"s{i}": picker.pick(s(f"s{i}")).candidate.address for i in range(30)}
    assert collections.Counter(first.values()) == {c.address: 10 for c in cands}  # RR child
    for _ in range(1000):
        clock.advance(0.01)
        for key in ("s0", "s1", "s2"):
            assert picker.pick(s(key)).candidate.address == first[key]
    # No header: the child decides and nothing is remembered.
    assert len({picker.pick(info()).candidate.address for _ in range(3)}) == 3
    assert len(policy.sessions) == 30  # type: ignore[attr-defined]


def test_failover_then_gradual_return(capsys: pytest.CaptureFixture[str]) -> None:
    clock = ManualClock()
    policy = sticky(clock, returnWindow="10s")
    cands = candidates(3)
    picker = policy.build_picker(cands)  # type: ignore[attr-defined]
    keys = [f"user-{i}" for i in range(600)]
    home = {k: picker.pick(s(k)).candidate.address for k in keys}
    a = cands[0].address
    on_a = [k for k in keys if home[k] == a]
    assert len(on_a) == 200

    clock.advance(1)
    failed = policy.build_picker(cands[1:])  # type: ignore[attr-defined]  # A ejected
    moved = {k: failed.pick(s(k)).candidate.address for k in keys}
    assert all(moved[k] != a for k in on_a)
    assert all(moved[k] == home[k] for k in keys if k not in on_a)  # others stay
    clock.advance(1)
    assert all(failed.pick(s(k)).candidate.address == moved[k] for k in keys)

    clock.advance(5)
    back = policy.build_picker(cands)  # type: ignore[attr-defined]  # A returns now
    fractions = []
    for _ in range(11):  # every second over the 10 s window
        at_home = sum(back.pick(s(k)).candidate.address == a for k in on_a)
        fractions.append(at_home / len(on_a))
        clock.advance(1)
    with capsys.disabled():
        print("\nsticky: fraction of failed-over sessions back home, each second of a 10 s "
              "returnWindow: " + " ".join(f"{f:.2f}" for f in fractions))
    assert fractions == sorted(fractions) and fractions[-1] == 1.0
    for t, f in enumerate(fractions):
        assert abs(f - t / 10) <= 0.1, (t, f)  # linear over the window
    others = [k for k in keys if k not in on_a]
    assert all(back.pick(s(k)).candidate.address == home[k] for k in others)


def test_return_window_zero_moves_back_at_once() -> None:
    clock = ManualClock()
    policy = sticky(clock, returnWindow="0s")
    cands = candidates(2)
    picker = policy.build_picker(cands)  # type: ignore[attr-defined]
    assert picker.pick(s("k")).candidate is cands[0]
    assert policy.build_picker(cands[1:]).pick(s("k")).candidate is cands[1]  # type: ignore
    assert policy.build_picker(cands).pick(s("k")).candidate is cands[0]  # type: ignore


def test_ttl_and_max_sessions() -> None:
    clock = ManualClock()
    policy = sticky(clock, ttl="60s", maxSessions=3)
    picker = policy.build_picker(candidates(3))  # type: ignore[attr-defined]
    for key in ("a", "b", "c"):
        picker.pick(s(key))
    picker.pick(s("a"))                       # a is now the most recently used
    picker.pick(s("d"))                       # the table is full: b (least recent) goes
    assert set(policy.sessions) == {"c", "a", "d"}  # type: ignore[attr-defined]
    where = policy.session_endpoint("a")  # type: ignore[attr-defined]
    clock.advance(61)                         # idle longer than ttl: forgotten, re-placed
    picker.pick(s("a"))
    assert policy.session_endpoint("a") is not None  # type: ignore[attr-defined]
    assert policy.sessions["a"].last_used == clock()  # type: ignore[attr-defined]
    assert where is not None


def test_backend_named_endpoint_is_honoured() -> None:
    clock = ManualClock()
    policy = sticky(clock, endpointHeader="x-lb-endpoint")
    cands = candidates(3)
    picker = policy.build_picker(cands)  # type: ignore[attr-defined]
    r = picker.pick(s("k"))
    target = next(c for c in cands if c is not r.candidate)
    r.on_done(CallOutcome("OK", 0.01, initial_metadata=(("x-lb-endpoint", target.address),)))
    assert all(picker.pick(s("k")).candidate is target for _ in range(10))
    # A name that is no eligible endpoint is ignored; trailers (trailers-only) also count.
    r = picker.pick(s("k"))
    r.on_done(CallOutcome("OK", 0.01, initial_metadata=(("x-lb-endpoint", "1.2.3.4:5"),)))
    assert picker.pick(s("k")).candidate is target
    r.on_done(CallOutcome("OK", 0.01, trailing_metadata=(("x-lb-endpoint", cands[0].address),)))
    assert picker.pick(s("k")).candidate is cands[0]


def test_retry_goes_elsewhere_without_moving_the_session() -> None:
    policy = sticky(ManualClock())
    cands = candidates(3)
    picker = policy.build_picker(cands)  # type: ignore[attr-defined]
    where = picker.pick(s("k")).candidate.address
    assert picker.pick(s("k", (where,))).candidate.address != where
    assert picker.pick(s("k")).candidate.address == where


def test_child_results_pass_through() -> None:
    policy = make_policy("sticky", {"sessionHeader": H,
                                    "childPolicy": [{"least_connections": {}}]})
    cands = candidates(2)
    r = policy.build_picker(cands).pick(s("k"))
    assert r.counted and r.candidate.stats.in_flight == 1  # the child counted it


# ------------------------------------------------------------------ real backends
def _stub_call(stub: echo_pb2_grpc.EchoStub, key: str, **md: str) -> str:
    metadata = ((H, key), *((k.replace("_", "-"), v) for k, v in md.items()))
    return stub.Unary(REQ, timeout=10, metadata=metadata).address


def test_session_on_real_backends_stays_fails_over_and_returns(
        fleet: Fleet, capsys: pytest.CaptureFixture[str]) -> None:
    with channel(fleet, {"sticky": {"sessionHeader": H, "returnWindow": "2s"}}) as ch:
        stub = echo_pb2_grpc.EchoStub(ch)
        assert len({_stub_call(stub, "alice") for _ in range(1000)}) == 1
        keys = ["alice"] + [f"user-{i}" for i in range(90)]
        home = {k: _stub_call(stub, k) for k in keys}
        victim = fleet.by_address(home["alice"])
        on_victim = [k for k in keys if home[k] == victim.address]
        assert len(on_victim) >= 20
        index = fleet.addresses.index(victim.address)

        victim.stop()
        wait_until(lambda: ch.endpoints()[index].connectivity != "READY", 10,
                   message="stopped backend leaves READY")
        failed_over = {k: _stub_call(stub, k) for k in keys}
        assert all(failed_over[k] != victim.address for k in keys)
        assert all(failed_over[k] == home[k] for k in keys if k not in on_victim)
        assert {_stub_call(stub, "alice") for _ in range(20)} == {failed_over["alice"]}

        victim.restart()
        wait_until(lambda: ch.endpoints()[index].connectivity == "READY", 20,
                   message="restarted backend READY again")
        t0 = time.monotonic()
        samples: list[tuple[float, float]] = []
        while True:
            back = sum(_stub_call(stub, k) == victim.address for k in on_victim)
            samples.append((time.monotonic() - t0, back / len(on_victim)))
            if back == len(on_victim) or time.monotonic() - t0 > 15:
                break
            time.sleep(0.15)
    with capsys.disabled():
        print("\nsticky on real backends: fraction moved back (seconds after READY): "
              + " ".join(f"{t:.1f}s:{f:.2f}" for t, f in samples))
    fractions = [f for _, f in samples]
    assert fractions[-1] == 1.0
    assert fractions == sorted(fractions)
    assert any(0.0 < f < 1.0 for f in fractions), "moved back all at once"


def test_backend_named_endpoint_on_real_backends(fleet: Fleet) -> None:
    # The fake backend echoes x-echo-* request headers in its trailers: a stand-in for a
    # backend that names the session's endpoint in a response header.
    cfg = {"sticky": {"sessionHeader": H, "endpointHeader": "x-echo-route"}}
    with channel(fleet, cfg) as ch:
        stub = echo_pb2_grpc.EchoStub(ch)
        first = _stub_call(stub, "bob")
        target = next(a for a in fleet.addresses if a != first)
        _stub_call(stub, "bob", x_echo_route=target)
        assert {_stub_call(stub, "bob") for _ in range(20)} == {target}
