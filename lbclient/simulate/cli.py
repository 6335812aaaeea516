"""``lbclient simulate SCENARIO.json [--policy a,b] [--seed N] [--plot out.png] [--json]``.

Prints the report (per-variant tables and a comparison) or, with ``--json``, the report
as one JSON object. Exit status: 0 success; 1 a bad scenario (``error at <JSON path>:
<rule>`` on stderr) or a plot that could not be written; 2 bad usage, an unreadable
file or an unknown ``--policy`` name. The ``lbclient`` loggers are set to ERROR: the
simulated ejections and health changes are in the report, not on stderr.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from typing import Any

from ..errors import ServiceConfigError


def add_parser(sub: Any) -> None:
    p = sub.add_parser(
        "simulate", help="simulate policies on a scenario (virtual clock, no network)",
        description="Run a load-balancing scenario (JSON, see docs/simulate.md) through the "
                    "SDK's real balancer, policies and health code on a virtual clock, and "
                    "compare the policies it names.")
    p.add_argument("scenario", help="the scenario JSON file")
    p.add_argument("--policy", metavar="A,B",
                   help="only these variants (labels), or these policies with their "
                        "default config, comma-separated")
    p.add_argument("--seed", type=int, help="random seed (default: the scenario's, else 1)")
    p.add_argument("--plot", metavar="PNG",
                   help="write per-backend concurrency over time (needs matplotlib)")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from . import run as simulate
    policies = [p.strip() for p in args.policy.split(",") if p.strip()] if args.policy else None
    logging.getLogger("lbclient").setLevel(logging.ERROR)   # events are in the report
    try:
        report = simulate(args.scenario, seed=args.seed, policies=policies)
    except ServiceConfigError as exc:
        where = f"error at {exc.path}: {exc.reason}" if exc.path else f"error: {exc}"
        print(where, file=sys.stderr)
        return 2 if exc.path.startswith("--policy") else 1
    except OSError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(report.to_dict(timing=True), indent=2))
    else:
        sys.stdout.write(report.format_text())
    if args.plot:
        from .plot import plot_concurrency
        try:
            plot_concurrency(report, args.plot)
        except (RuntimeError, OSError) as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
        print(f"plot written to {args.plot}", file=sys.stderr)
    return 0
