"""The chaos soak's faults, each briefly against real backends (the long form is
``benchmarks/bench_chaos_soak.py``): a child-process backend frozen with SIGSTOP, an
address that accepts TCP but never speaks HTTP/2, and an etcd cluster losing its quorum.
The traffic is the soak's own (``benchmarks._soak.Load``: unary calls, futures, streams
read to the end, streams dropped or cancelled after 1-3 replies) and so is the rule: no
call may fail, every call ends exactly once, in-flight counts come back to 0. Then the
soak's smoke form, and the accounting's own checks (that it can fail)."""

from __future__ import annotations

import gc
import logging
import pathlib
import socket
import threading
import time
from collections import Counter
from typing import Any

import grpc
import pytest
from helpers import wait_ready, wait_until

import lbclient
import lbclient.etcd
from benchmarks import _soak, bench_chaos_soak
from benchmarks._soak import Failure, Load
from lbclient.testing import Fleet, ProcessBackend, SilentServer, echo_pb2_grpc
from lbclient.testing.etcd import EtcdCluster

CONFIG = bench_chaos_soak.CONFIG
OPTIONS = bench_chaos_soak.OPTIONS


class Attempts:
    """Attempts per (address, code), from the channel's call listener."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.counts: Counter[tuple[str, str]] = Counter()

    def __call__(self, address: str, outcome: lbclient.CallOutcome) -> None:
        with self.lock:
            self.counts[(address, outcome.code)] += 1

    def on(self, address: str, code: str | None = None) -> int:
        with self.lock:
            return sum(n for (a, c), n in self.counts.items()
                       if a == address and code in (None, c))


def _finish(load: Load, ch: Any) -> list[Failure]:
    """Stop the load; check every call ended once and in-flight counts came back; the
    failures."""
    assert load.join(30) == 0, "a load thread is stuck in a call"
    started = sum((st.started for st in load.stats), Counter())
    ended = sum((st.ended for st in load.stats), Counter())
    assert started == ended and sum(ended.values()) == load.calls
    assert set(started) == set(_soak.CALL_KINDS), started     # every kind was made
    wait_until(lambda: load.callbacks_once == load.futures, 10, message="done-callbacks")
    assert load.callbacks_extra == 0

    def settled() -> bool:
        gc.collect()
        return all(e.in_flight == 0 for e in ch.endpoints())
    wait_until(settled, 10, message="in-flight back to 0")
    return [f for st in load.stats for f in st.failures]


@pytest.mark.timeout(120)
def test_a_frozen_backend_costs_no_call() -> None:
    """SIGSTOP a child-process backend under load: unary attempts on it are cut by
    perAttemptRecvTimeout and retried elsewhere, streams on it wait for the thaw
    (their deadline is longer than the freeze); no call fails."""
    with Fleet(2) as fleet, ProcessBackend(1, ["--max-workers", "8"]) as child:
        target = "ipv4:" + ",".join([*fleet.addresses, child.address])
        with lbclient.insecure_channel(target, service_config=CONFIG, options=OPTIONS) as ch:
            attempts = Attempts()
            ch.add_call_listener(attempts)
            wait_ready(ch, 3, timeout=30)
            wait_until(lambda: all(e.health == "healthy" for e in ch.endpoints()), 30,
                       message="every endpoint healthy")
            load = Load(echo_pb2_grpc.EchoStub(ch), 4, seed=3)
            load.start()
            try:
                wait_until(lambda: attempts.on(child.address, "OK") >= 10, 30,
                           message="the child serving calls")
                child.freeze()
                frozen = time.monotonic()
                # The freeze lasts 2 to 5 s (until an attempt on it was cut): well within
                # the streams' 10 s deadline however loaded the machine is (a longer one
                # would time streams out on it, which is no longer this test's case).
                deadline = frozen + 5.0
                while (time.monotonic() < deadline and
                       attempts.on(child.address, "DEADLINE_EXCEEDED") < 1):
                    time.sleep(0.05)
                time.sleep(max(frozen + 2.0 - time.monotonic(), 0.0))
                child.thaw()
                served = attempts.on(child.address, "OK")
                wait_until(lambda: attempts.on(child.address, "OK") >= served + 5, 30,
                           message="the thawed backend serving again")
            finally:
                child.thaw()
                failures = _finish(load, ch)
            assert failures == [], failures[:5]
            assert attempts.on(child.address, "DEADLINE_EXCEEDED") >= 1


def test_silent_server_accepts_reads_and_never_writes() -> None:
    with SilentServer() as silent:
        with socket.create_connection(("127.0.0.1", silent.port), timeout=5) as s:
            s.sendall(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
            wait_until(lambda: silent.bytes_read == 24, 5, message="the preface read")
            s.settimeout(0.2)
            with pytest.raises(TimeoutError):
                s.recv(1)                                   # not a byte back
            assert silent.connections == 1 and silent.open_connections == 1
        wait_until(lambda: silent.open_connections == 0, 5, message="the close seen")
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", silent.port), timeout=1).close()


@pytest.mark.timeout(60)
def test_an_address_that_never_speaks_http2_gets_no_call() -> None:
    """It stays CONNECTING and gets no call. grpc gives up on a handshake after its
    minimum connect timeout (``grpc.min_reconnect_backoff_ms``, default 20 s), also
    after the channel closed: 1 s here, so the closed channels' connections go soon."""
    options = [*OPTIONS, ("grpc.min_reconnect_backoff_ms", 1000)]
    with Fleet(2) as fleet, SilentServer() as silent:
        target = "ipv4:" + ",".join([*fleet.addresses, silent.address])
        with lbclient.insecure_channel(target, service_config=CONFIG, options=options) as ch:
            attempts = Attempts()
            ch.add_call_listener(attempts)
            wait_ready(ch, 2, timeout=30)
            wait_until(lambda: silent.connections >= 1, 10, message="a connection tried")
            load = Load(echo_pb2_grpc.EchoStub(ch), 3, seed=5)
            load.start()
            try:
                wait_until(lambda: load.calls >= 300, 60, message="300 calls")
            finally:
                failures = _finish(load, ch)
            assert failures == [], failures[:5]
            [info] = [e for e in ch.endpoints() if e.address == silent.address]
            assert info.connectivity in ("CONNECTING", "TRANSIENT_FAILURE") and \
                not info.eligible, info
            assert attempts.on(silent.address) == 0
        # Alone, it makes a waiting call end by its deadline, not hang.
        with lbclient.insecure_channel(f"ipv4:{silent.address}", options=options) as ch:
            t0 = time.monotonic()
            with pytest.raises(grpc.RpcError) as err:
                echo_pb2_grpc.EchoStub(ch).Unary(_soak.UNARY, timeout=0.5,
                                                 wait_for_ready=True)
            assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED   # type: ignore[attr-defined]
            assert time.monotonic() - t0 < 2.0
        wait_until(lambda: silent.open_connections == 0, 10,
                   message="the closed channels' connections closed")


@pytest.mark.timeout(120)
def test_etcd_quorum_loss_keeps_the_endpoints(tmp_path: pathlib.Path,
                                              caplog: pytest.LogCaptureFixture) -> None:
    """2 of 3 etcd members down: the resolver fails (logged), the channel keeps its
    endpoints and every call succeeds; once they are back, a new endpoint arrives."""
    caplog.set_level(logging.WARNING, logger="lbclient.resolver.etcd")
    with Fleet(3) as fleet, EtcdCluster(tmp_path / "etcd", 3) as etcd:
        a, b, c = fleet.addresses
        for address in (a, b):
            lbclient.etcd.add_endpoint(etcd.endpoints, "svc", address)
        with lbclient.insecure_channel(etcd.target("svc"), service_config=CONFIG,
                                       options=OPTIONS,
                                       resolver_options=bench_chaos_soak.RESOLVER) as ch:
            changes: list[str] = []
            ch.add_event_listener(lambda e: changes.append(f"{e.kind} {e.address}")
                                  if e.kind in ("added", "removed") else None)
            wait_ready(ch, 2, timeout=30)
            load = Load(echo_pb2_grpc.EchoStub(ch), 3, seed=7)
            load.start()
            try:
                seen = len(changes)
                etcd.kill(1)
                etcd.kill(2)
                lost = time.monotonic()
                wait_until(lambda: any("no leader" in r.getMessage() or "refused" in
                                       r.getMessage() for r in caplog.records), 30,
                           message="the resolver to see the outage")
                calls = load.calls
                time.sleep(max(lost + 3.0 - time.monotonic(), 0.0))    # the outage
                wait_until(lambda: load.calls >= calls + 20, 30, message="calls go on")
                assert changes[seen:] == []
                assert {e.address for e in ch.endpoints()} == {a, b}
                etcd.restart(1)
                etcd.restart(2)
                lbclient.etcd.add_endpoint(etcd.endpoints, "svc", c)
                wait_until(lambda: c in {e.address for e in ch.endpoints()}, 30,
                           message="the change after the quorum came back")
            finally:
                failures = _finish(load, ch)
            assert failures == [], failures[:5]


@pytest.mark.timeout(240)
def test_the_soak_smoke_form_runs_every_fault_and_loses_nothing() -> None:
    s = bench_chaos_soak.SMOKE
    r = bench_chaos_soak.run_soak(s)
    section = bench_chaos_soak.section(s, r)
    print("\n" + section.to_markdown())
    assert all(r.faults[k] >= 1 for k in _soak.FAULTS), r.faults
    assert r.unexpected_total == 0, r.unexpected.most_common(5)
    assert r.lost == 0 and r.stuck_threads == 0 and not r.repair_problem
    assert r.outage_changes == 0 and len(r.quorum_outages) == 1
    assert r.calls >= 300 and sum(r.abandoned.values()) >= 50
    assert r.threads_end <= r.threads_base, r.thread_diff
    assert r.threads_closed <= r.threads_pre_channel
    assert sum(n for (f, _), n in r.attempts.items() if f == "silent") == 0
    assert r.silent_connections >= 1
    assert len(r.samples) >= 4 and section.metrics["unexpected"] == 0.0


# ----------------------------------------------------------------------------- accounting


def test_classify_follows_the_rules() -> None:
    history = {"A": [["crash", 10.0, None]], "K": [["kill", 10.0, 11.0]],
               "F": [["freeze", 10.0, 13.0]]}

    def f(kind: str, code: str, replies: int, address: str, start: float = 9.0,
          end: float = 12.0) -> str:
        return _soak.classify(Failure(kind, code, "", start, end, replies, address),
                              history)

    assert f("stream", "UNAVAILABLE", 2, "A") == "stream-cut-by-crash"
    assert f("drop", "CANCELLED", 1, "K") == "stream-cut-by-kill"
    assert f("cancel", "DEADLINE_EXCEEDED", 1, "F") == "deadline-on-frozen"
    # not committed, not a stream, not that backend, not then, not that code: unexpected
    assert f("stream", "UNAVAILABLE", 0, "") == "unexpected"
    assert f("unary", "UNAVAILABLE", 0, "A") == "unexpected"
    assert f("stream", "UNAVAILABLE", 2, "K2") == "unexpected"
    assert f("stream", "UNAVAILABLE", 2, "A", start=10.5, end=11.0) == "unexpected"
    assert f("stream", "DEADLINE_EXCEEDED", 2, "A") == "unexpected"
    assert f("stream", "DEADLINE_EXCEEDED", 2, "F", start=14.0, end=20.0) == "unexpected"
    assert f("stream", "bad-stream", 2, "A") == "unexpected"


def test_the_load_counts_every_failure_once(fleet: Fleet) -> None:
    """The accounting can fail: on a closed channel every call of every kind ends once,
    CANCELLED, and is classified unexpected."""
    ch = lbclient.insecure_channel(fleet.target)
    ch.close()
    load = Load(echo_pb2_grpc.EchoStub(ch), 2, seed=1)
    load.start()
    wait_until(lambda: load.calls >= 50, 10, message="50 calls")
    failures = _finish(load, ch)
    assert len(failures) == load.calls
    assert {f.code for f in failures} == {"CANCELLED"}
    assert {_soak.classify(f, {}) for f in failures} == {"unexpected"}
    assert not [t for t in threading.enumerate() if t.name.startswith("chaos-load")]


def test_memory_rule_sees_growth() -> None:
    flat = _soak.Report(samples=[_soak.Sample(t, 0, 100 * _soak.MIB, 10 * _soak.MIB, 1)
                                 for t in range(8)])
    assert _soak.memory_flat(flat) == (True, True)
    grow = _soak.Report(samples=[_soak.Sample(t, 0, (100 + 3 * t) * _soak.MIB,
                                              (10 + t) * _soak.MIB, 1) for t in range(8)])
    assert _soak.memory_flat(grow) == (False, False)
    assert _soak.slope([0, 1, 2], [1, 3, 5]) == pytest.approx(2.0)
