"""``lbclient probe`` tells apart why an endpoint could not be asked: a refused port, a
port that accepts TCP but never speaks HTTP/2 (timed out), a TLS failure (wrong CA,
plaintext server, TLS server probed in plaintext) and a NOT_SERVING backend, with real
sockets and servers on 127.0.0.1; and, run as a program, it prints no grpc C-core lines."""

from __future__ import annotations

import json
import os
import pathlib
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator

import grpc
import pytest
from _certs import Pki

from lbclient.cli import main
from lbclient.cli.probe import connection_problem
from lbclient.testing import NOT_SERVING, Backend, Fleet
from lbclient.testing.pytest_plugin import FleetFactory


def rows(out: str) -> dict[str, str]:
    return {line.split()[0]: line for line in out.splitlines() if line.startswith("127.0.0.1:")}


def notes(out: str) -> dict[str, str]:
    """address -> the explanation line under the table."""
    return {line.split(": ", 1)[0].strip(): line.split(": ", 1)[1]
            for line in out.splitlines() if line.startswith("  127.0.0.1:")}


@pytest.fixture
def refused_address() -> str:
    """A port nothing listens on (bound, then closed: the kernel refuses connections)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{s.getsockname()[1]}"


@pytest.fixture
def silent_address() -> Iterator[str]:
    """A plain TCP server that accepts connections and never says a byte."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(16)
    server.settimeout(0.1)
    stop = threading.Event()
    held: list[socket.socket] = []

    def accept() -> None:
        while not stop.is_set():
            try:
                conn, _ = server.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            held.append(conn)          # keep it open: no reset, just silence

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield f"127.0.0.1:{server.getsockname()[1]}"
    stop.set()
    thread.join(5)
    for conn in held:
        conn.close()
    server.close()


def test_refused_timed_out_not_serving_and_healthy_told_apart(
        fleet_factory: FleetFactory, refused_address: str, silent_address: str,
        capsys: pytest.CaptureFixture[str]) -> None:
    fleet = fleet_factory(2)
    fleet[1].set_health(NOT_SERVING)
    target = "ipv4:" + ",".join([fleet[0].address, fleet[1].address, refused_address,
                                 silent_address])
    started = time.monotonic()
    assert main(["probe", target, "--timeout", "1"]) == 0
    elapsed = time.monotonic() - started
    out = capsys.readouterr().out
    table, why = rows(out), notes(out)
    health = {a: r.split()[2] for a, r in table.items()}
    assert health == {fleet[0].address: "SERVING", fleet[1].address: "NOT_SERVING",
                      refused_address: "REFUSED", silent_address: "TIMED_OUT"}, out
    assert why[refused_address] == "connection refused (nothing listens there)"
    assert why[silent_address].startswith(
        "TCP connected, but no HTTP/2 handshake within 1s"), out
    assert why[fleet[1].address] == "the health service reports NOT_SERVING"
    assert fleet[0].address not in why
    assert "1/4 endpoints healthy" in out
    assert elapsed < 5, f"probing took {elapsed:.1f}s with a 1s timeout"


def test_a_refused_port_answers_at_once(refused_address: str,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    started = time.monotonic()
    assert main(["probe", f"ipv4:{refused_address}", "--timeout", "10", "--json"]) == 1
    assert time.monotonic() - started < 5            # not the 10 s deadline
    (line,) = capsys.readouterr().out.splitlines()
    record = json.loads(line)
    assert record["health"] == "REFUSED" and record["healthy"] is False
    assert record["error"] == "connection refused (nothing listens there)"


# ------------------------------------------------------------------ TLS
@pytest.fixture(scope="module")
def pki() -> Pki:
    return Pki()


@pytest.fixture(scope="module")
def tls_backend(pki: Pki) -> Iterator[Backend]:
    pair = pki.server("localhost", ips=("127.0.0.1",))
    creds = grpc.ssl_server_credentials([(pair.key, pair.cert)])
    with Fleet(1, server_credentials=creds) as fleet:
        yield fleet[0]


def _probe_program(*argv: str) -> subprocess.CompletedProcess[str]:
    """``python -m lbclient probe ...`` as a user runs it (GRPC_VERBOSITY not set)."""
    env = {k: v for k, v in os.environ.items() if k not in ("GRPC_VERBOSITY", "GRPC_TRACE")}
    return subprocess.run([sys.executable, "-m", "lbclient", "probe", *argv],
                          capture_output=True, text=True, timeout=60, env=env)


def test_tls_with_the_wrong_ca_and_the_right_one(
        pki: Pki, tls_backend: Backend, tmp_path: pathlib.Path) -> None:
    wrong, right = tmp_path / "wrong.pem", tmp_path / "right.pem"
    wrong.write_bytes(Pki("an unrelated CA").ca_pem)
    right.write_bytes(pki.ca_pem)
    target = f"ipv4:{tls_backend.address}"
    bad = _probe_program(target, "--ca-file", str(wrong), "--timeout", "3")
    assert bad.returncode == 1, bad.stdout + bad.stderr
    assert rows(bad.stdout)[tls_backend.address].split()[2] == "TLS_FAILED"
    assert notes(bad.stdout)[tls_backend.address] == (
        "TLS handshake failed: CERTIFICATE_VERIFY_FAILED (unable to get local issuer "
        "certificate)")
    # Run as a program, the CLI quiets grpc's C core: no "ssl_transport_security.cc ...
    # Handshake failed" line (test_cli_quiet.py shows that line appears otherwise).
    assert bad.stderr == ""
    good = _probe_program(target, "--ca-file", str(right), "--timeout", "3")
    assert good.returncode == 0, good.stdout + good.stderr
    assert " SERVING " in rows(good.stdout)[tls_backend.address]


def test_tls_with_the_system_roots_and_in_plaintext(
        tls_backend: Backend, capsys: pytest.CaptureFixture[str]) -> None:
    target = f"ipv4:{tls_backend.address}"
    assert main(["probe", target, "--tls", "--timeout", "3"]) == 1
    out = capsys.readouterr().out
    assert " TLS_FAILED " in rows(out)[tls_backend.address]
    assert "CERTIFICATE_VERIFY_FAILED" in notes(out)[tls_backend.address]
    assert main(["probe", target, "--timeout", "3"]) == 1      # plaintext to a TLS server
    out = capsys.readouterr().out
    assert " UNREACHABLE " in rows(out)[tls_backend.address]
    assert notes(out)[tls_backend.address].endswith("(does it want TLS? try --tls)")


def test_tls_to_a_plaintext_server(fleet_factory: FleetFactory,
                                   capsys: pytest.CaptureFixture[str]) -> None:
    fleet = fleet_factory(1)
    assert main(["probe", fleet.target, "--tls", "--timeout", "3"]) == 1
    out = capsys.readouterr().out
    assert " TLS_FAILED " in rows(out)[fleet[0].address]
    assert notes(out)[fleet[0].address] == ("TLS handshake failed: WRONG_VERSION_NUMBER: "
                                            "the server does not speak TLS (try without --tls)")


def test_tls_to_a_silent_port_times_out(silent_address: str,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["probe", f"ipv4:{silent_address}", "--tls", "--timeout", "1"]) == 1
    out = capsys.readouterr().out
    assert " TIMED_OUT " in rows(out)[silent_address]
    assert notes(out)[silent_address].startswith(
        "TCP connected, but no TLS + HTTP/2 handshake within 1s")


def test_unreadable_ca_file_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["probe", "ipv4:127.0.0.1:1", "--ca-file", "/nonexistent/ca.pem"]) == 2
    assert capsys.readouterr().err.startswith("error: cannot read /nonexistent/ca.pem")


def test_connection_problem_reads_grpcs_details() -> None:
    """Details strings as grpc 1.85 words them (the tests above meet the real ones)."""
    peer = ("failed to connect to all addresses; last error: UNKNOWN: ipv4:10.0.0.1:443: "
            "Peer name 10.0.0.1 is not in peer certificate")
    assert connection_problem(peer, tls=True) == (
        "TLS_FAILED", "TLS handshake failed: Peer name 10.0.0.1 is not in peer certificate")
    other = ("failed to connect to all addresses; last error: UNAVAILABLE: "
             "ipv4:10.0.0.1:443: No route to host")
    assert connection_problem(other, tls=False) == ("UNREACHABLE", "No route to host")
