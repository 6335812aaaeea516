"""The ``lbclient`` command line.

    lbclient demo [--policy NAME | --config FILE] [--duration S] [--threads N] [--plain]
    lbclient probe TARGET [--service-config JSON|@FILE] [--health-service NAME]
                          [--method /pkg.Svc/Method] [--calls N] [--timeout S] [--json]
    lbclient check-config FILE|-
    lbclient simulate SCENARIO.json [--policy A,B] [--seed N] [--plot PNG] [--json]

Exit status: 0 success; 1 the command's own failure (no healthy endpoint, invalid
config); 2 bad usage; 130 interrupted (Ctrl-C).

Run as a program (``main()`` with no arguments), it first quiets grpc's C core
(``GRPC_VERBOSITY=ERROR`` unless the user set it or ``GRPC_TRACE``; see ``_grpc_env``).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from ..simulate import cli as simulate
from . import check_config, demo, probe
from ._grpc_env import quiet_grpc


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lbclient", description="Client-side load balancing for gRPC: tools.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    demo.add_parser(sub)
    probe.add_parser(sub)
    check_config.add_parser(sub)
    simulate.add_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status. ``argv=None`` (a program's entry
    point: the ``lbclient`` script, ``python -m lbclient``) reads ``sys.argv`` and quiets
    grpc's C core first, which may re-execute the process once."""
    if argv is None:
        quiet_grpc()
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.run(args))
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


__all__ = ["build_parser", "main"]
