"""A real DNS server for tests: Debian's dnsmasq on a free 127.0.0.1 UDP/TCP port.

``DnsServer(tmp_path)`` answers for names under ``.test`` from a hosts file the test
rewrites (``set_hosts`` sends SIGHUP and waits until dnsmasq serves the new records);
other ``.test`` names get NXDOMAIN. TXT records come from a config file read at start
(dnsmasq does not reload them on SIGHUP), so ``restart(txt=...)`` changes them.

The tests FAIL (not skip) when dnsmasq is missing: CI installs it (scripts/test.sh).
Also: small Echo servers on other loopback addresses (127.0.0.2, ...), since a DNS name
maps to IPs that share one port.
"""

from __future__ import annotations

import os
import pathlib
import pwd
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterable, Mapping, Sequence
from concurrent import futures

import dns.exception
import dns.resolver
import grpc

from lbclient.testing import echo_pb2, echo_pb2_grpc

DNSMASQ = shutil.which("dnsmasq") or "/usr/sbin/dnsmasq"


def require_dnsmasq() -> str:
    if not os.access(DNSMASQ, os.X_OK):
        raise AssertionError(
            f"dnsmasq not found at {DNSMASQ}: install Debian's dnsmasq-base "
            "(scripts/test.sh does) - the DNS resolver tests need a real DNS server")
    return DNSMASQ


def free_port(kind: int = socket.SOCK_STREAM) -> int:
    """A port free for both TCP and UDP on 127.0.0.1 (dnsmasq binds both)."""
    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        try:
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u:
                u.bind(("127.0.0.1", port))
        except OSError:
            continue
        return port
    raise RuntimeError("no free port")


class DnsServer:
    """dnsmasq serving ``hosts`` (name -> IPs) and ``txt`` (name -> one TXT string)."""

    def __init__(self, workdir: pathlib.Path, hosts: Mapping[str, Sequence[str]],
                 txt: Mapping[str, str] | None = None) -> None:
        require_dnsmasq()
        self.dir = workdir
        self.dir.mkdir(parents=True, exist_ok=True)
        self.dir.chmod(0o755)           # dnsmasq may re-read files as another user
        self.hosts_file = self.dir / "hosts"
        self.conf_file = self.dir / "dnsmasq.conf"
        self.log_file = self.dir / "dnsmasq.log"
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self._hosts = {k: list(v) for k, v in hosts.items()}
        self._write_hosts()
        self.start(txt or {})

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def target(self, name: str, port: int) -> str:
        return f"dns://{self.address}/{name}:{port}"

    # ----------------------------------------------------------------- lifecycle
    def start(self, txt: Mapping[str, str]) -> None:
        lines = [f'txt-record={name},"{_conf_escape(text)}"' for name, text in txt.items()]
        self.conf_file.write_text("\n".join(lines) + "\n")
        user = pwd.getpwuid(os.getuid()).pw_name
        cmd = [DNSMASQ, "--no-daemon", f"--port={self.port}", "--listen-address=127.0.0.1",
               "--bind-interfaces", "--no-resolv", "--no-hosts", "--local=/test/",
               f"--addn-hosts={self.hosts_file}", f"--conf-file={self.conf_file}",
               f"--user={user}", "--pid-file=", "--local-ttl=0", "--log-queries"]
        self.log = self.log_file.open("ab")
        self.proc = subprocess.Popen(cmd, stdout=self.log, stderr=subprocess.STDOUT)
        probe = next(iter(self._hosts), "probe.test")
        self._wait(lambda: self._answers(probe, lifetime=0.05) is not None, "dnsmasq to answer")

    def stop(self) -> None:
        """Stop dnsmasq (lookups then time out or are refused)."""
        if self.proc is None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)
        self.proc = None
        self.log.close()

    def restart(self, txt: Mapping[str, str] | None = None) -> None:
        self.stop()
        self.start(txt or {})

    def close(self) -> None:
        self.stop()

    def __enter__(self) -> DnsServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ----------------------------------------------------------------- records
    def set_hosts(self, name: str, ips: Iterable[str]) -> None:
        """Replace the records of ``name`` (no IPs: remove it) and wait until served."""
        ips = list(ips)
        if ips:
            self._hosts[name] = ips
        else:
            self._hosts.pop(name, None)
        self._write_hosts()
        assert self.proc is not None
        self.proc.send_signal(signal.SIGHUP)
        want = sorted(ips)
        self._wait(lambda: sorted(self._answers(name) or []) == want, f"{name} -> {want}")

    def _write_hosts(self) -> None:
        tmp = self.hosts_file.with_suffix(".tmp")
        tmp.write_text("".join(f"{ip} {name}\n" for name, ips in self._hosts.items()
                               for ip in ips))
        tmp.chmod(0o644)
        tmp.replace(self.hosts_file)

    def _answers(self, name: str, lifetime: float = 0.5) -> list[str] | None:
        """A + AAAA answers as dnsmasq serves them now; None if it does not answer."""
        r = dns.resolver.Resolver(configure=False)
        r.nameservers, r.port, r.lifetime = ["127.0.0.1"], self.port, lifetime
        out: list[str] = []
        for rdtype in ("A", "AAAA"):
            try:
                out += [rr.to_text() for rr in r.resolve(name, rdtype)]
            except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer):
                pass
            except dns.exception.DNSException:
                return None
        return out

    def _wait(self, predicate: object, what: str, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise AssertionError(f"dnsmasq exited: {self.log_file.read_text()[-2000:]}")
            if predicate():  # type: ignore[operator]
                return
            time.sleep(0.02)
        raise AssertionError(f"timed out waiting for {what}")


def _conf_escape(text: str) -> str:
    return text.replace("\\", "\\\\").replace('"', '\\"')


# --------------------------------------------------------------------- loopback servers
class _Echo(echo_pb2_grpc.EchoServicer):
    def __init__(self, address: str) -> None:
        self.address = address
        self.calls = 0

    def Unary(self, request: echo_pb2.EchoRequest,  # noqa: N802 - grpc method name
              context: grpc.ServicerContext) -> echo_pb2.EchoReply:
        self.calls += 1
        return echo_pb2.EchoReply(message=request.message, backend=self.address,
                                  address=self.address)


class LoopbackEcho:
    """Echo servers on ``127.0.0.N:port`` for several N, all on one port (what a DNS
    name with several A records looks like)."""

    def __init__(self, hosts: Sequence[str], port: int | None = None) -> None:
        self.port = port or free_port()
        self.servers: dict[str, grpc.Server] = {}
        self.servicers: dict[str, _Echo] = {}
        try:
            for host in hosts:
                self.add(host)
        except BaseException:
            self.close()
            raise

    def add(self, host: str) -> str:
        address = f"{host}:{self.port}"
        server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
        servicer = _Echo(address)
        echo_pb2_grpc.add_EchoServicer_to_server(servicer, server)
        if server.add_insecure_port(address) == 0:
            raise RuntimeError(f"cannot bind {address}")
        server.start()
        self.servers[address], self.servicers[address] = server, servicer
        return address

    def stop(self, address: str) -> None:
        self.servers.pop(address).stop(None).wait(5)

    def close(self) -> None:
        for server in self.servers.values():
            server.stop(None).wait(5)
        self.servers.clear()
