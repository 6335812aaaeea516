"""One Echo backend reachable at any number of loopback addresses, in a child process.

    python -m benchmarks._wildcard PORTS_FILE

It listens on ``0.0.0.0:PORT``, so ``127.a.b.c:PORT`` reaches it for every a, b, c (Linux
routes all of 127.0.0.0/8 to the loopback device): 10,000 distinct endpoint addresses that
all accept connections, served by one process (the fake backends of
``lbclient.testing`` bind 127.0.0.1 only). It serves Echo's ``Unary`` and grpc.health.v1,
writes its port to PORTS_FILE once serving, and stops on SIGTERM.
:class:`WildcardBackend` runs it from a benchmark (a context manager).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import threading
from concurrent import futures
from typing import Any

from lbclient.testing import _child

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class WildcardBackend:
    """The child process; ``port`` once entered; ``address(i)`` is the i-th distinct
    loopback address of it (i >= 0; 127.0.0.1 is 0)."""

    def __init__(self, start_timeout: float = 60.0) -> None:
        self.start_timeout = start_timeout
        self.port = 0
        self._proc: subprocess.Popen[bytes] | None = None
        self._dir: tempfile.TemporaryDirectory[str] | None = None

    def address(self, i: int) -> str:
        i += 1
        return f"127.{(i >> 16) & 255}.{(i >> 8) & 255}.{i & 255}:{self.port}"

    def __enter__(self) -> WildcardBackend:
        self._dir = tempfile.TemporaryDirectory(prefix="lbclient-wildcard-")
        ports = os.path.join(self._dir.name, "port")
        try:
            self._proc, text = _child.spawn(
                "wildcard backend", [sys.executable, "-m", "benchmarks._wildcard", ports],
                ports, self.start_timeout, cwd=REPO_ROOT)
        except BaseException:
            self.close()
            raise
        self.port = int(text.strip())
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        proc, self._proc = self._proc, None
        if proc is not None:
            _child.stop(proc)
        if self._dir is not None:
            self._dir.cleanup()
            self._dir = None


def _serve(ports_file: str) -> None:
    import grpc
    from grpc_health.v1 import health, health_pb2_grpc

    from lbclient.testing import echo_pb2, echo_pb2_grpc

    class Echo(echo_pb2_grpc.EchoServicer):
        def Unary(self, request: Any, context: Any) -> Any:   # noqa: N802 - grpc's name
            return echo_pb2.EchoReply(message=request.message)

    done = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: done.set())
    signal.signal(signal.SIGINT, lambda *_: done.set())
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=16))
    echo_pb2_grpc.add_EchoServicer_to_server(Echo(), server)
    health_pb2_grpc.add_HealthServicer_to_server(health.HealthServicer(), server)
    port = server.add_insecure_port("0.0.0.0:0")
    server.start()
    tmp = ports_file + ".tmp"
    with open(tmp, "w") as f:
        f.write(str(port))
    os.replace(tmp, ports_file)
    while not done.wait(1.0):
        pass
    server.stop(1.0)


if __name__ == "__main__":
    _serve(sys.argv[1])
