"""etcd discovery with self-registration: servers publish themselves, clients follow.

    python examples/etcd_registration.py        # needs the etcd binary (etcd-server)

Starts a local etcd (``lbclient.testing.etcd.EtcdCluster``) and three fake backends.
Each backend registers itself with ``lbclient.etcd.register`` (a key under a lease that a
background thread keeps alive; Go's ``endpoints.Manager`` naming convention, so Go
clients and servers interoperate). The client channel's target is
``etcd://host:port/services/echo``: it watches the prefix, so a backend that registers
starts receiving calls and one that deregisters (or dies, when its lease expires) stops.
"""

from __future__ import annotations

import collections
import shutil
import tempfile
import time
from pathlib import Path

import lbclient
import lbclient.etcd
from lbclient.testing import Fleet, echo_pb2, echo_pb2_grpc

PREFIX = "services/echo"


def spread(stub: echo_pb2_grpc.EchoStub, n: int) -> dict[str, int]:
    counts: collections.Counter[str] = collections.Counter()
    for i in range(n):
        reply = stub.Unary(echo_pb2.EchoRequest(message=str(i)), timeout=5,
                           wait_for_ready=True)
        counts[reply.backend] += 1
    return dict(sorted(counts.items()))


def wait_for(channel: lbclient.LoadBalancedChannel, n: int) -> bool:
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        ready = [e for e in channel.endpoints() if e.connectivity == "READY"]
        if len(channel.endpoints()) == n and len(ready) == n:
            return True
        time.sleep(0.02)
    return False


def main() -> int:
    if shutil.which("etcd") is None and not Path("/usr/bin/etcd").exists():
        print("etcd is not installed (Debian: apt-get install etcd-server); skipping")
        return 0
    from lbclient.testing.etcd import EtcdCluster

    with tempfile.TemporaryDirectory() as workdir, \
            EtcdCluster(Path(workdir) / "etcd", size=1) as etcd, \
            Fleet(3, names=["echo-a", "echo-b", "echo-c"]) as fleet:
        # Server side: each backend registers itself (lease ttl 5 s, kept alive).
        registrations = [lbclient.etcd.register(etcd.endpoints, PREFIX, b.address, ttl=5)
                         for b in fleet[:2]]
        print(f"registered {[r.address for r in registrations]} under {PREFIX}")

        # Client side: an etcd:// target; no addresses in the client's config.
        with lbclient.insecure_channel(etcd.target(PREFIX)) as channel:
            stub = echo_pb2_grpc.EchoStub(channel)
            ok = wait_for(channel, 2)
            print(f"2 endpoints discovered: {ok}; calls: {spread(stub, 20)}")

            third = lbclient.etcd.register(etcd.endpoints, PREFIX, fleet[2].address, ttl=5)
            ok = ok and wait_for(channel, 3)
            print(f"echo-c registered -> 3 endpoints: {ok}; calls: {spread(stub, 30)}")

            registrations[0].close()             # deregister echo-a (its key is deleted)
            ok = ok and wait_for(channel, 2)
            calls = spread(stub, 20)
            print(f"echo-a deregistered -> 2 endpoints: {ok}; calls: {calls}")
            ok = ok and "echo-a" not in calls

            third.close()
            registrations[1].close()
        return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
