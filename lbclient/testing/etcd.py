"""A real etcd for tests and benchmarks: Debian's etcd-server on free 127.0.0.1 ports.

    from lbclient.testing.etcd import EtcdCluster
    with EtcdCluster(tmp_path / "etcd", size=1) as etcd:
        lbclient.etcd.register(etcd.endpoints, "services/echo", backend.address)
        channel = lbclient.insecure_channel(etcd.target("services/echo"))

``EtcdCluster(workdir, size)`` starts ``size`` members (1 for most tests, 3 for the
failover test), waits until the cluster serves linearizable reads, and ``close()`` kills
every member and removes their data dirs. ``kill(i)`` kills one member (SIGKILL: a crash);
``restart(i)`` brings it back with its data. ``etcdctl(...)`` runs the real etcdctl
against the cluster (interop with the Go client tools).

Needs the ``etcd`` and ``etcdctl`` binaries (``$PATH`` or /usr/bin); a missing one raises
``AssertionError`` so that tests fail rather than skip (lbclient's CI installs them).
"""

from __future__ import annotations

import os
import pathlib
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass

import grpc

from lbclient.resolver._etcd_client import EtcdConnection

ETCD = shutil.which("etcd") or "/usr/bin/etcd"
ETCDCTL = shutil.which("etcdctl") or "/usr/bin/etcdctl"


def require_etcd() -> None:
    for binary in (ETCD, ETCDCTL):
        if not os.access(binary, os.X_OK):
            raise AssertionError(
                f"{binary} not found: install Debian's etcd-server and etcd-client "
                "(scripts/test.sh does) - the etcd tests need a real etcd")


def _free_ports(n: int) -> list[int]:
    socks = []
    try:
        for _ in range(n):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


@dataclass
class Member:
    name: str
    client_port: int
    peer_port: int
    data_dir: pathlib.Path
    log_path: pathlib.Path
    proc: subprocess.Popen[bytes] | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.client_port}"


class EtcdCluster:
    def __init__(self, workdir: pathlib.Path, size: int = 1) -> None:
        require_etcd()
        self.dir = workdir
        self.dir.mkdir(parents=True, exist_ok=True)
        ports = _free_ports(2 * size)
        self.members = [
            Member(f"m{i}", ports[2 * i], ports[2 * i + 1], self.dir / f"m{i}.etcd",
                   self.dir / f"m{i}.log") for i in range(size)]
        self._initial = ",".join(f"{m.name}=http://127.0.0.1:{m.peer_port}"
                                 for m in self.members)
        try:
            for member in self.members:
                self._spawn(member, "new")
            self.wait_healthy()
        except BaseException:
            self.close()
            raise

    # ----------------------------------------------------------------- lifecycle
    def _spawn(self, m: Member, state: str) -> None:
        cmd = [ETCD, "--name", m.name, "--data-dir", str(m.data_dir),
               "--listen-client-urls", f"http://127.0.0.1:{m.client_port}",
               "--advertise-client-urls", f"http://127.0.0.1:{m.client_port}",
               "--listen-peer-urls", f"http://127.0.0.1:{m.peer_port}",
               "--initial-advertise-peer-urls", f"http://127.0.0.1:{m.peer_port}",
               "--initial-cluster", self._initial, "--initial-cluster-state", state,
               "--initial-cluster-token", f"lbclient-{os.getpid()}-{id(self)}",
               "--heartbeat-interval", "100", "--election-timeout", "1000",
               "--logger", "zap", "--log-level", "warn", "--log-outputs", "stderr"]
        log = m.log_path.open("ab")
        try:
            m.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
        finally:
            log.close()

    def wait_healthy(self, timeout: float = 30.0) -> None:
        """Until every running member answers a linearizable Range (a leader exists)."""
        deadline = time.monotonic() + timeout
        for m in self.members:
            if m.proc is None:
                continue
            while True:
                if m.proc.poll() is not None:
                    raise AssertionError(f"etcd {m.name} exited:\n{m.log_path.read_text()}")
                conn = EtcdConnection(m.address)
                try:
                    conn.range_prefix(b"health/", timeout=1.0)
                    break
                except grpc.RpcError:
                    if time.monotonic() > deadline:
                        raise AssertionError(f"etcd {m.name} not healthy after {timeout}s:"
                                             f"\n{m.log_path.read_text()[-3000:]}") from None
                    time.sleep(0.05)
                finally:
                    conn.close()

    def kill(self, index: int) -> None:
        m = self.members[index]
        if m.proc is not None:
            m.proc.kill()
            m.proc.wait(10)
            m.proc = None

    def restart(self, index: int, client_port: int | None = None) -> None:
        """Start a killed member again with its data (on another client port if given:
        clients that only know the old port cannot reach it)."""
        m = self.members[index]
        if m.proc is None:
            if client_port is not None:
                m.client_port = client_port
            self._spawn(m, "existing")
        self.wait_healthy()

    @staticmethod
    def free_port() -> int:
        return _free_ports(1)[0]

    def close(self) -> None:
        """Kill every member and remove their data dirs (logs stay in ``workdir``)."""
        for i in range(len(self.members)):
            self.kill(i)
        for m in self.members:
            shutil.rmtree(m.data_dir, ignore_errors=True)

    def __enter__(self) -> EtcdCluster:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ----------------------------------------------------------------- access
    @property
    def endpoints(self) -> str:
        """``"127.0.0.1:p1,127.0.0.1:p2"`` (the authority of an etcd:// target)."""
        return ",".join(m.address for m in self.members)

    def target(self, prefix: str) -> str:
        return f"etcd://{self.endpoints}/{prefix}"

    def index_of(self, address: str) -> int:
        return [m.address for m in self.members].index(address)

    def connection(self, index: int | None = None) -> EtcdConnection:
        """A client connection to a running member (the first by default)."""
        if index is None:
            index = next(i for i, m in enumerate(self.members) if m.proc is not None)
        return EtcdConnection(self.members[index].address)

    def etcdctl(self, *args: str, timeout: float = 20.0) -> str:
        live = ",".join(m.address for m in self.members if m.proc is not None)
        env = {**os.environ, "ETCDCTL_API": "3"}
        proc = subprocess.run([ETCDCTL, f"--endpoints={live}", *args], env=env,
                              capture_output=True, text=True, timeout=timeout)
        if proc.returncode != 0:
            raise AssertionError(f"etcdctl {args} failed: {proc.stderr}")
        return proc.stdout
