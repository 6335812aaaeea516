"""The ``lbclient`` command line.

    lbclient demo [--policy NAME | --config FILE] [--duration S] [--threads N] [--plain]
    lbclient probe TARGET [--service-config JSON|@FILE] [--health-service NAME]
                          [--method /pkg.Svc/Method] [--calls N] [--timeout S] [--json]
    lbclient check-config FILE|-
    lbclient simulate SCENARIO.json [--policy A,B] [--seed N] [--plot PNG] [--json]

Exit status: 0 success; 1 the command's own failure (no healthy endpoint, invalid
config); 2 bad usage; 130 interrupted (Ctrl-C).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from ..simulate import cli as simulate
from . import check_config, demo, probe


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
    """Run the command line; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.run(args))
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


__all__ = ["build_parser", "main"]
