"""Run a fake backend fleet in its own process.

    python -m lbclient.testing serve --count 3 [--latency-ms 5] [--ports-file F]

Prints one ``127.0.0.1:PORT`` per line on stdout once every backend is serving (and writes
the same lines atomically to ``--ports-file``), then one more line, the ready target for
lbclient (``ipv4:127.0.0.1:PORT,...``, e.g. ``lbclient probe "$(tail -n1 out)"``), then
serves until SIGTERM or SIGINT. grpc's C core logs errors only unless ``GRPC_VERBOSITY``
or ``GRPC_TRACE`` is set (as for the ``lbclient`` command).
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import tempfile
import threading
from collections.abc import Sequence
from types import FrameType

from lbclient.cli._grpc_env import quiet_grpc
from lbclient.testing._fleet import Fleet


def _write_atomically(path: str, text: str) -> None:
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".ports-")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m lbclient.testing")
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="run a fleet of fake Echo backends")
    serve.add_argument("--count", type=int, default=3, help="number of backends (default 3)")
    serve.add_argument("--latency-ms", type=float, default=0.0, help="latency before replies")
    serve.add_argument("--error-rate", type=float, default=0.0, help="fraction of calls failing")
    serve.add_argument("--seed", type=int, default=None, help="seed of the error draws")
    serve.add_argument("--no-health", action="store_true", help="do not serve grpc.health.v1")
    serve.add_argument("--max-workers", type=int, default=32, help="threads per backend")
    serve.add_argument("--ports-file", default=None, help="also write the addresses here")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the exit status. ``argv=None`` (run as a program) quiets
    grpc's C core first, which may re-execute the process once."""
    if argv is None:
        quiet_grpc()
    args = _parser().parse_args(argv)
    done = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        done.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    fleet = Fleet(
        args.count,
        latency=args.latency_ms / 1000.0,
        health=not args.no_health,
        seed=args.seed,
        max_workers=args.max_workers,
    )
    try:
        if args.error_rate:
            for backend in fleet:
                backend.set_error_rate(args.error_rate)
        text = "".join(f"{address}\n" for address in fleet.addresses)
        if args.ports_file:
            _write_atomically(args.ports_file, text)
        sys.stdout.write(text + fleet.target + "\n")
        sys.stdout.flush()
        while not done.wait(1.0):
            pass
    finally:
        fleet.stop(grace=1.0)
    return 0


if __name__ == "__main__":
    sys.exit(main())
