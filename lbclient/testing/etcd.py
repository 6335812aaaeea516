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

TLS and auth, for testing secure setups::

    tls = ServerTLS(cert_file=..., key_file=..., trusted_ca_file=..., client_cert_auth=True)
    client = {"ca_file": ..., "cert_file": ..., "key_file": ...}   # resolver_options keys
    with EtcdCluster(workdir, tls=tls, client=client) as etcd:      # https:// client URLs
        etcd.add_user("alice", "pw", "services/")    # a role with readwrite on the prefix
        etcd.enable_auth("root-pw")                  # root user, then `auth enable`
        channel = lbclient.insecure_channel(etcd.target("services/x"), resolver_options={
            **client, "username": "alice", "password": "pw"})

``client`` is how the cluster's own helpers (health checks, ``connection()``,
``etcdctl``) connect; after ``enable_auth`` they log in as root. ``args`` adds etcd flags
(e.g. ``["--auth-token-ttl", "1"]``). Passwords go to etcdctl on stdin, not its argv.

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
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import grpc

from lbclient.resolver._etcd_client import EtcdAccessError, EtcdConnection
from lbclient.resolver._etcd_security import EtcdSecurity, Secret, parse_security

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


@dataclass(frozen=True)
class ServerTLS:
    """TLS on the members' client port (PEM files). With ``client_cert_auth``, clients
    must present a certificate signed by a CA in ``trusted_ca_file``."""

    cert_file: pathlib.Path
    key_file: pathlib.Path
    trusted_ca_file: pathlib.Path | None = None
    client_cert_auth: bool = False


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
    def __init__(self, workdir: pathlib.Path, size: int = 1, *,
                 tls: ServerTLS | None = None, client: Mapping[str, Any] | None = None,
                 args: Sequence[str] = ()) -> None:
        require_etcd()
        self.tls = tls
        self.client = dict(client or {})
        self._client_security = parse_security({**self.client, "env": False}, "client")
        self._args = list(args)
        self._root_password: str | None = None
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
    @property
    def scheme(self) -> str:
        return "https" if self.tls else "http"

    def _spawn(self, m: Member, state: str) -> None:
        url = f"{self.scheme}://127.0.0.1:{m.client_port}"
        tls: list[str] = []
        if self.tls is not None:
            tls = ["--cert-file", str(self.tls.cert_file), "--key-file",
                   str(self.tls.key_file)]
            if self.tls.trusted_ca_file is not None:
                tls += ["--trusted-ca-file", str(self.tls.trusted_ca_file)]
            if self.tls.client_cert_auth:
                tls.append("--client-cert-auth")
        cmd = [ETCD, "--name", m.name, "--data-dir", str(m.data_dir),
               "--listen-client-urls", url, "--advertise-client-urls", url, *tls,
               "--listen-peer-urls", f"http://127.0.0.1:{m.peer_port}",
               "--initial-advertise-peer-urls", f"http://127.0.0.1:{m.peer_port}",
               "--initial-cluster", self._initial, "--initial-cluster-state", state,
               "--initial-cluster-token", f"lbclient-{os.getpid()}-{id(self)}",
               "--heartbeat-interval", "100", "--election-timeout", "1000",
               "--bcrypt-cost", "4",          # the cheapest password hashing: fast tests
               "--logger", "zap", "--log-level", "warn", "--log-outputs", "stderr",
               *self._args]
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
                conn = self.connection(self.members.index(m))
                try:
                    conn.range_prefix(b"health/", timeout=1.0)
                    break
                except (grpc.RpcError, EtcdAccessError):
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

    @property
    def security(self) -> EtcdSecurity:
        """How the cluster's helpers connect (``client``, and root once auth is on)."""
        if self._root_password is None:
            return self._client_security
        s = self._client_security
        return EtcdSecurity(tls=s.tls, ca=s.ca, cert=s.cert, key=s.key,
                            server_name=s.server_name, username="root",
                            password=Secret(self._root_password))

    def connection(self, index: int | None = None) -> EtcdConnection:
        """A client connection to a running member (the first by default), over the
        cluster's TLS and, once auth is enabled, logged in as root."""
        if index is None:
            index = next(i for i, m in enumerate(self.members) if m.proc is not None)
        security = self.security
        return EtcdConnection(self.members[index].address, security=security,
                              auth=security.new_auth())

    def etcdctl(self, *args: str, timeout: float = 20.0, stdin: str | None = None) -> str:
        live = ",".join(f"{self.scheme}://{m.address}" for m in self.members
                        if m.proc is not None)
        env = {**os.environ, "ETCDCTL_API": "3"}
        for var in ("ETCDCTL_USER", "ETCDCTL_PASSWORD", "ETCDCTL_CACERT", "ETCDCTL_CERT",
                    "ETCDCTL_KEY"):
            env.pop(var, None)
        flags = []
        for option, flag in (("ca_file", "--cacert"), ("cert_file", "--cert"),
                             ("key_file", "--key")):
            if self.client.get(option) is not None:
                flags.append(f"{flag}={os.fspath(self.client[option])}")
        if self._root_password is not None:
            env["ETCDCTL_USER"] = f"root:{self._root_password}"     # not in argv
        proc = subprocess.run([ETCDCTL, f"--endpoints={live}", *flags, *args], env=env,
                              input=stdin, capture_output=True, text=True, timeout=timeout)
        if proc.returncode != 0:
            raise AssertionError(f"etcdctl {args} failed: {proc.stderr}")
        return proc.stdout

    # ----------------------------------------------------------------- auth
    def add_user(self, name: str, password: str, prefix: str | None = None,
                 permission: str = "readwrite") -> None:
        """Create user ``name``; with ``prefix``, also a role ``<name>-role`` with
        ``permission`` (read, write, readwrite) on every key under it, granted to it."""
        self.etcdctl("user", "add", name, "--interactive=false", stdin=password + "\n")
        if prefix is not None:
            role = f"{name}-role"
            self.etcdctl("role", "add", role)
            self.etcdctl("role", "grant-permission", role, permission, "--prefix=true",
                         prefix)
            self.etcdctl("user", "grant-role", name, role)

    def set_password(self, name: str, password: str) -> None:
        """Change a user's password (etcd also revokes that user's tokens)."""
        self.etcdctl("user", "passwd", name, "--interactive=false", stdin=password + "\n")

    def enable_auth(self, root_password: str) -> None:
        """Create the root user (with the root role) and turn authentication on; the
        cluster's helpers log in as root from then on."""
        self.add_user("root", root_password)
        self.etcdctl("user", "grant-role", "root", "root")
        self.etcdctl("auth", "enable")
        self._root_password = root_password
