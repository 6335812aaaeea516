"""``lbclient check-config FILE|-``: validate a service config and say what lbclient will do.

Output on success (stdout, exit 0): the chosen policy (and the child chain of wrapper
policies), any ``loadBalancingConfig`` entries skipped because lbclient does not know them
(gRPC's rule), then the effective settings with every default filled in, as JSON.
On error (stderr, exit 1): ``error at <JSON path>: <rule>``.
"""

from __future__ import annotations

import argparse
import dataclasses
import enum
import json
import sys
from collections.abc import Mapping
from typing import Any, TextIO

from ..balancer.policy import LbChoice, PolicySpec, get_policy
from ..config import ServiceConfig, parse_service_config
from ..errors import ServiceConfigError


def add_parser(sub: Any) -> None:
    p = sub.add_parser("check-config", help="validate a service config JSON file",
                       description="Validate a gRPC service config JSON file and print the "
                                   "policy lbclient will use with its effective settings.")
    p.add_argument("file", help="the JSON file, or - for standard input")
    p.add_argument("--json", action="store_true",
                   help="print only the effective settings as JSON")
    p.set_defaults(run=run)


def to_plain(value: Any) -> Any:
    """A parsed config object as JSON-ready data: dataclasses by field (the way
    ``dataclasses.asdict`` does), a chosen policy as ``{name: settings}``."""
    if isinstance(value, LbChoice):
        return {value.name: to_plain(value.config)}
    if isinstance(value, PolicySpec):
        return value.name
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: to_plain(getattr(value, f.name)) for f in dataclasses.fields(value)
                if f.name != "raw"}
    if isinstance(value, enum.Enum):
        return value.name
    if isinstance(value, Mapping):
        return {str(k): to_plain(v) for k, v in value.items()}
    if isinstance(value, frozenset | set):
        return sorted(to_plain(v) for v in value)
    if isinstance(value, list | tuple):
        return [to_plain(v) for v in value]
    if isinstance(value, float | int | str | bool) or value is None:
        return value
    return repr(value)


def policy_chain(choice: LbChoice) -> list[str]:
    """``["outlier_detection", "round_robin"]`` for a wrapper and its child."""
    chain = [choice.name]
    seen = 0
    config = choice.config
    while seen < 8:   # wrappers nest a few levels at most
        child = next((getattr(config, f.name) for f in dataclasses.fields(config)
                      if isinstance(getattr(config, f.name), LbChoice)), None) \
            if dataclasses.is_dataclass(config) else None
        if child is None:
            break
        chain.append(child.name)
        config = child.config
        seen += 1
    return chain


def skipped_policies(raw: Mapping[str, Any]) -> list[str]:
    """Names in ``loadBalancingConfig`` before the chosen one that lbclient skipped."""
    out = []
    for entry in raw.get("loadBalancingConfig") or []:
        if isinstance(entry, Mapping) and len(entry) == 1:
            (name,) = entry
            if get_policy(name) is not None:
                break
            out.append(name)
    return out


def describe(config: ServiceConfig) -> dict[str, Any]:
    return {
        "policy": to_plain(config.lb),
        "healthCheckConfig": to_plain(config.health_check),
        "methodConfig": [{**to_plain(mc), "names": [
            {"service": svc, "method": meth} for svc, meth in mc.names]}
            for mc in config.method_configs],
        "retryThrottling": to_plain(config.retry_throttling),
    }


def _read(path: str, stdin: TextIO) -> str:
    if path == "-":
        return stdin.read()
    with open(path, encoding="utf-8") as f:
        return f.read()


def run(args: argparse.Namespace, stdin: TextIO | None = None) -> int:
    try:
        text = _read(args.file, stdin or sys.stdin)
    except OSError as exc:
        print(f"error: cannot read {args.file}: {exc.strerror or exc}", file=sys.stderr)
        return 1
    try:
        config = parse_service_config(text)
    except ServiceConfigError as exc:
        print(f"error at {exc.path or '<root>'}: {exc.reason}", file=sys.stderr)
        return 1
    settings = describe(config)
    if args.json:
        print(json.dumps(settings, indent=2, sort_keys=True))
        return 0
    source = "stdin" if args.file == "-" else args.file
    print(f"OK: {source} is a valid service config")
    print(f"policy: {' -> '.join(policy_chain(config.lb))}")
    skipped = skipped_policies(config.raw)
    if skipped:
        print(f"skipped (not known to lbclient): {', '.join(skipped)}")
    if config.health_check is not None:
        print(f"active health checking: on (service {config.health_check.service_name!r}, "
              f"mode {config.health_check.mode})")
    print(f"method configs: {len(config.method_configs)}")
    print("effective settings (defaults filled in):")
    print(json.dumps(settings, indent=2, sort_keys=True))
    return 0
