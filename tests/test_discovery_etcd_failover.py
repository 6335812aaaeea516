"""A 3-member etcd cluster loses the member that both the resolver and a registration are
using: the channel keeps its endpoints, calls keep working, the registration's lease stays
alive through another member, and later updates still arrive."""

from __future__ import annotations

import collections
import pathlib
import time

from _discovery import Recorder
from _etcd import EtcdCluster
from helpers import wait_ready, wait_until

import lbclient
import lbclient.etcd
from lbclient.resolver import parse_target
from lbclient.resolver.etcd import EtcdResolver
from lbclient.testing import Fleet, echo_pb2, echo_pb2_grpc

REQ = echo_pb2.EchoRequest(message="x")
FAST = {"backoff_initial": 0.05, "backoff_max": 0.5, "dial_timeout": 2.0}


def test_losing_the_watched_member(tmp_path: pathlib.Path, fleet_factory: object) -> None:
    fleet: Fleet = fleet_factory(4)  # type: ignore[operator]
    a, b, c, d = fleet.addresses
    with EtcdCluster(tmp_path / "etcd", 3) as etcd:
        first = etcd.members[0].address
        lbclient.etcd.add_endpoint(etcd.endpoints, "svc", a)
        lbclient.etcd.add_endpoint(etcd.endpoints, "svc", b)
        registration = lbclient.etcd.register(etcd.endpoints, "svc", c, ttl=2,
                                              backoff_initial=0.05, backoff_max=0.5)
        rec = Recorder()
        resolver = EtcdResolver(parse_target(etcd.target("svc")), rec, FAST)
        resolver.start()
        try:
            with lbclient.insecure_channel(etcd.target("svc"), resolver_options=FAST) as ch:
                wait_ready(ch, 3)
                rec.wait_addresses({a, b, c})
                wait_until(lambda: resolver.member == first, 5, message="watching member 0")
                # The channel's resolver starts on the first listed member too (its
                # endpoints come from the Range; it is watching once the watch is created).
                wait_until(lambda: ch._resolver.member == first, 5,  # noqa: SLF001
                           message="the channel's resolver watching member 0")
                stub = echo_pb2_grpc.EchoStub(ch)

                etcd.kill(0)                          # the member everyone is using
                counts = collections.Counter(stub.Unary(REQ, timeout=5).address
                                             for _ in range(30))
                assert set(counts) == {a, b, c}       # nothing lost meanwhile
                wait_until(lambda: resolver.member not in (None, first), 15,
                           message="the resolver to move to another member")
                assert {e.address for e in ch.endpoints()} == {a, b, c}
                assert rec.errors and first in str(rec.errors[0])

                lbclient.etcd.add_endpoint(etcd.endpoints, "svc", d)      # later updates
                lbclient.etcd.remove_endpoint(etcd.endpoints, "svc", a)
                rec.wait_addresses({b, c, d}, timeout=10)
                wait_until(lambda: {e.address for e in ch.endpoints()} == {b, c, d}, 10,
                           message="the channel to follow updates after the failover")
                # Each state exactly once: the watch resumed without loss or replay.
                assert [{e.address for e in s.endpoints} for s in rec.states] == [
                    {a, b, c}, {a, b, c, d}, {b, c, d}]

                # The registration outlives its TTL by keeping the lease on another member.
                wait_until(lambda: registration.member not in (None, first), 10,
                           message="the registration to move to another member")
                assert registration.last_error is not None and first in registration.last_error
                answers = registration.keepalives
                time.sleep(3.0)                        # > ttl
                assert registration.keepalives > answers
                assert registration.grants == 1
                assert c in {e.address for e in ch.endpoints()}
                wait_ready(ch, 3)
                assert {stub.Unary(REQ, timeout=5).address for _ in range(30)} == {b, c, d}
        finally:
            resolver.close()
            registration.close()
