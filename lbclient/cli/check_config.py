"""``lbclient check-config FILE|-``: validate a service config and say what lbclient will do.

Output on success (stdout, exit 0): the chosen policy (and the child chain of wrapper
policies), any ``loadBalancingConfig`` entries skipped because lbclient does not know them
(gRPC's rule), the ``"lbclient"`` block's settings (panic threshold, slow start, circuit
breakers, retry budget) in words, then the effective settings with every default filled
in, as JSON.
On error (stderr, exit 1): ``error at <JSON path>: <rule>``, one line per problem found.

Stricter than a channel in one way: a channel ignores unknown top-level fields (gRPC's
rule; it logs a warning), check-config reports each one with the nearest known field,
since a misspelled ``loadBalancingconfig`` would otherwise silently mean round_robin. A
file that is no service config at all (e.g. a map of named configs, such as
``examples/policies.json``) is rejected as such.
"""

from __future__ import annotations

import argparse
import dataclasses
import enum
import json
import shlex
import sys
from collections.abc import Mapping
from typing import Any, TextIO

from ..balancer.policy import LbChoice, PolicySpec, get_policy
from ..config import (
    KNOWN_FIELDS,
    ServiceConfig,
    decode_service_config,
    nearest_field,
    parse_service_config,
    unknown_fields,
)
from ..errors import ServiceConfigError
from ..health.options import BalancingOptions, ConcurrencyBudgetConfig, RetryBudgetConfig


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
        "lbclient": describe_options(config.options),
    }


def _budget_kind(budget: RetryBudgetConfig) -> str:
    return "concurrency" if isinstance(budget, ConcurrencyBudgetConfig) else "rate"


def describe_options(options: BalancingOptions) -> dict[str, Any]:
    """The ``"lbclient"`` block as JSON-ready data; the retry budget as ``{kind:
    settings}`` (``concurrency``: Envoy's, ``rate``: Finagle's), None without one."""
    out: dict[str, Any] = to_plain(options)
    budget = options.retry_budget
    out["retry_budget"] = None if budget is None else {_budget_kind(budget): to_plain(budget)}
    return out


def _num(value: float) -> str:
    return f"{value:g}"


def options_lines(config: ServiceConfig) -> list[str]:
    """The ``"lbclient"`` block's settings in words (defaults included), one per line."""
    o = config.options
    lines = [f"panic threshold: {_num(o.panic_threshold)}%" if o.panic_threshold > 0
             else "panic threshold: off"]
    slow = o.slow_start
    lines.append("slow start: off" if slow is None else
                 f"slow start: {_num(slow.window)}s window, aggression "
                 f"{_num(slow.aggression)}, min weight {_num(slow.min_weight_percent)}%")
    breakers = []
    if o.max_requests is not None:
        breakers.append(f"maxRequests {o.max_requests} (channel)")
    if o.max_concurrent_requests is not None:
        breakers.append(f"maxConcurrentRequests {o.max_concurrent_requests} (per endpoint)")
    lines.append(f"circuit breakers: {', '.join(breakers) or 'off'}")
    budget, throttling = o.retry_budget, config.retry_throttling
    if isinstance(budget, ConcurrencyBudgetConfig):
        text = (f"Envoy's concurrency budget: {_num(budget.budget_percent)}% of the "
                f"requests in flight, at least {budget.min_retry_concurrency} retries")
    elif budget is not None:
        text = (f"Finagle's rate budget: over {_num(budget.ttl)}s, "
                f"{budget.min_retries_per_sec} retries/s + "
                f"{_num(budget.percent_can_retry * 100)}% of calls")
    else:
        text = "none"
    if throttling is not None:
        text += ("; retryThrottling is ignored" if budget is not None else
                 f"; retryThrottling applies (maxTokens {_num(throttling.max_tokens)}, "
                 f"tokenRatio {_num(throttling.token_ratio)})")
    lines.append(f"retry budget: {text}")
    return lines


def _read(path: str, stdin: TextIO) -> str:
    if path == "-":
        return stdin.read()
    with open(path, encoding="utf-8") as f:
        return f.read()


def not_a_config(obj: Mapping[str, Any], file: str = "FILE") -> str | None:
    """Why the JSON object ``obj`` (read from ``file``) is not a service config at all,
    or None.

    It is not one when none of its keys is a service config field and either most of
    its values are service configs themselves (a map of named configs) or no key is a
    likely misspelling of a field (those are reported as unknown fields instead)."""
    keys = list(obj)
    if not keys or any(k in KNOWN_FIELDS for k in keys):
        return None
    configs = sum(1 for v in obj.values()
                  if isinstance(v, Mapping) and any(k in KNOWN_FIELDS for k in v))
    a_map = 2 * configs >= len(keys)
    if not a_map and any(nearest_field(k) for k in keys):
        return None
    found = f"found {len(keys)} key{'s' if len(keys) > 1 else ''}"
    if a_map:
        like = ", ".join(repr(k) for k in keys[:3])
        one = shlex.quote(f".[{json.dumps(keys[0])}]")
        return (f"not a service config: it has no service config fields ({found} like "
                f"{like} whose values are service configs: is it a map of configs? Check "
                f"one at a time, e.g. jq {one} {file} | lbclient check-config -)")
    shown = ", ".join(repr(k) for k in keys[:5]) + (", ..." if len(keys) > 5 else "")
    return (f"not a service config: it has no service config fields ({found}: {shown}; "
            f"the fields are {', '.join(KNOWN_FIELDS)})")


def check(text: str, file: str | None = None) -> tuple[ServiceConfig | None, list[str]]:
    """Validate service config JSON text read from ``file`` (None: standard input): the
    parsed config when it is valid, else ``(None, problems)``, one ``error ...`` line
    each."""
    try:
        obj = decode_service_config(text)
    except ServiceConfigError as exc:
        return None, [f"error at {exc.path or '<root>'}: {exc.reason}"]
    reason = not_a_config(obj, "FILE" if file is None else shlex.quote(file))
    if reason is not None:
        return None, [f"error: {file or 'stdin'}: {reason}"]
    errors = []
    for field in unknown_fields(obj):
        hint = (f'; did you mean "{field.nearest}"?' if field.nearest
                else f" (known: {', '.join(KNOWN_FIELDS)})")
        errors.append(f"error at {field.name}: unknown field{hint}")
    # The known fields are checked too (without the channel's unknown-field warning).
    known = {k: v for k, v in obj.items() if k in KNOWN_FIELDS}
    try:
        config = parse_service_config(known)
    except ServiceConfigError as exc:
        errors.append(f"error at {exc.path or '<root>'}: {exc.reason}")
    if errors:
        return None, errors
    return config, []


def run(args: argparse.Namespace, stdin: TextIO | None = None) -> int:
    try:
        text = _read(args.file, stdin or sys.stdin)
    except OSError as exc:
        print(f"error: cannot read {args.file}: {exc.strerror or exc}", file=sys.stderr)
        return 1
    config, errors = check(text, None if args.file == "-" else args.file)
    if config is None:
        for line in errors:
            print(line, file=sys.stderr)
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
    for line in options_lines(config):
        print(line)
    print("effective settings (defaults filled in):")
    print(json.dumps(settings, indent=2, sort_keys=True))
    return 0
