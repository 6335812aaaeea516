"""Service config JSON -> frozen, validated config objects.

Accepts gRPC's service config (a dict or a JSON string). Every error is a
:class:`ServiceConfigError` naming the JSON path, e.g.
``loadBalancingConfig: no supported policy in ["foo", "bar"]``.

Unknown top-level fields are ignored (gRPC's rule, so configs written for newer clients
still work), with one WARNING on the ``lbclient.config`` logger per parsed config naming
them and the nearest known field, since a misspelled ``loadBalancingconfig`` silently
means round_robin otherwise (a channel parses a resolver's config again only when its
content changes, so that is once per distinct config). ``lbclient check-config`` rejects
them instead.
"""

from __future__ import annotations

import difflib
import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from ._validate import (
    expect_list,
    expect_object,
    get_bool,
    get_duration,
    get_int,
    get_number,
    get_str,
    join,
    parse_duration,
    reject_unknown,
)
from .balancer.policy import LbChoice, get_policy, parse_lb_config_list
from .errors import ServiceConfigError
from .health.options import DEFAULT_OPTIONS, BalancingOptions, parse_balancing_options
from .health.options import FIELD as OPTIONS_FIELD
from .method_config import MethodConfig, RetryThrottling, parse_method_config

DEFAULT_POLICY = "round_robin"
# Every top-level field parse_service_config reads: gRPC's ServiceConfig message
# (grpc/service_config/service_config.proto) plus lbclient's own block.
KNOWN_FIELDS = ("healthCheckConfig", "loadBalancingConfig", "loadBalancingPolicy",
                "methodConfig", "retryThrottling", OPTIONS_FIELD)

log = logging.getLogger("lbclient.config")


@dataclass(frozen=True)
class HealthCheckConfig:
    """``healthCheckConfig`` (gRFC A17) plus lbclient's polling fields."""

    service_name: str = ""
    mode: str = "watch"             # "watch" (Health/Watch stream) or "poll" (Health/Check)
    interval: float = 10.0          # poll mode: seconds between probes
    timeout: float = 5.0            # poll mode: a probe slower than this is a failure
    unhealthy_threshold: int = 3    # poll mode: consecutive failures to mark unhealthy
    healthy_threshold: int = 2      # both modes: consecutive successes to readmit after ejection
    jitter: float = 0.2             # poll mode: +-fraction of interval, so clients don't align


@dataclass(frozen=True)
class ServiceConfig:
    lb: LbChoice
    method_configs: tuple[MethodConfig, ...] = ()
    health_check: HealthCheckConfig | None = None
    retry_throttling: RetryThrottling | None = None
    raw: Mapping[str, Any] = field(default_factory=dict, compare=False)
    # the top-level "lbclient" block (panic threshold, slow start): lbclient.health.options
    options: BalancingOptions = DEFAULT_OPTIONS


class UnknownField(NamedTuple):
    name: str
    nearest: str | None     # the closest known field name, if any is close


def nearest_field(name: str) -> str | None:
    """The known top-level field ``name`` most likely misspells (case-insensitive
    :mod:`difflib` match), or None."""
    by_lower = {known.lower(): known for known in KNOWN_FIELDS}
    close = difflib.get_close_matches(name.lower(), list(by_lower), n=1, cutoff=0.6)
    return by_lower[close[0]] if close else None


def unknown_fields(obj: Mapping[str, Any]) -> list[UnknownField]:
    """The top-level fields of a service config object that are not service config
    fields, in their order, each with its nearest known name."""
    return [UnknownField(str(k), nearest_field(str(k))) for k in obj if k not in KNOWN_FIELDS]


def describe_unknown(unknown: list[UnknownField]) -> str:
    """``"loadBalancingconfig" (did you mean "loadBalancingConfig"?), "foo"``."""
    return ", ".join(f'"{u.name}"' + (f' (did you mean "{u.nearest}"?)' if u.nearest else "")
                     for u in unknown)


def decode_service_config(value: str | bytes | Mapping[str, Any] | None) -> Mapping[str, Any]:
    """The JSON object of a service config given as a dict, JSON text or UTF-8 bytes;
    ``None`` or blank text is ``{}``. Raises :class:`ServiceConfigError` (path ``<root>``)
    for invalid UTF-8 or JSON, or JSON that is not an object."""
    if value is None:
        value = {}
    if isinstance(value, bytes | bytearray):
        try:
            value = value.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise ServiceConfigError("<root>", f"invalid UTF-8: {exc}") from None
    if isinstance(value, str):
        try:
            value = json.loads(value) if value.strip() else {}
        except json.JSONDecodeError as exc:
            raise ServiceConfigError("<root>", f"invalid JSON: {exc}") from None
        except RecursionError:
            raise ServiceConfigError("<root>", "invalid JSON: nested too deeply") from None
    return expect_object(value, "")


def parse_service_config(value: str | bytes | Mapping[str, Any] | None) -> ServiceConfig:
    """Parse a whole service config. ``None`` means the defaults (round_robin).

    Unknown top-level fields are ignored with one warning (see the module docstring)."""
    obj = decode_service_config(value)
    unknown = unknown_fields(obj)
    if unknown:
        known = "" if all(u.nearest for u in unknown) else \
            f" (known fields: {', '.join(KNOWN_FIELDS)})"
        log.warning("service config: ignoring unknown top-level field%s %s%s",
                    "s" if len(unknown) > 1 else "", describe_unknown(unknown), known)
    lb = _parse_lb(obj)
    methods = tuple(
        parse_method_config(m, join("methodConfig", i))
        for i, m in enumerate(expect_list(_or_empty(obj.get("methodConfig")), "methodConfig")))
    _check_unique_names(methods)
    hc = obj.get("healthCheckConfig")
    health = parse_health_check(hc, "healthCheckConfig") if hc is not None else None
    rt = obj.get("retryThrottling")
    throttling = RetryThrottling.parse(rt, "retryThrottling") if rt is not None else None
    options = parse_balancing_options(obj.get(OPTIONS_FIELD))
    return ServiceConfig(lb, methods, health, throttling, dict(obj), options)


def _parse_lb(obj: Mapping[str, Any]) -> LbChoice:
    if obj.get("loadBalancingConfig") is not None:
        return parse_lb_config_list(obj["loadBalancingConfig"], "loadBalancingConfig")
    legacy = get_str(obj, "loadBalancingPolicy", "", None)
    if legacy is not None:
        spec = get_policy(legacy.lower())
        if spec is None:
            raise ServiceConfigError("loadBalancingPolicy", f"unknown policy {legacy!r}")
        return LbChoice(spec, spec.parse_config({}, f"loadBalancingPolicy[{legacy}]"))
    spec = get_policy(DEFAULT_POLICY)
    assert spec is not None
    return LbChoice(spec, spec.parse_config({}, DEFAULT_POLICY))


def parse_health_check(value: Any, path: str) -> HealthCheckConfig:
    obj = expect_object(value, path)
    reject_unknown(obj, path, {"serviceName", "mode", "interval", "timeout",
                               "unhealthyThreshold", "healthyThreshold", "jitter"})
    mode = get_str(obj, "mode", path, "watch")
    if mode not in ("watch", "poll"):
        raise ServiceConfigError(join(path, "mode"), f'must be "watch" or "poll", got {mode!r}')
    interval = get_duration(obj, "interval", path, 10.0, positive=True)
    timeout = get_duration(obj, "timeout", path, 5.0, positive=True)
    assert interval is not None and timeout is not None
    return HealthCheckConfig(
        service_name=get_str(obj, "serviceName", path, "") or "",
        mode=mode,
        interval=interval,
        timeout=timeout,
        unhealthy_threshold=get_int(obj, "unhealthyThreshold", path, 3, minimum=1),
        healthy_threshold=get_int(obj, "healthyThreshold", path, 2, minimum=1),
        jitter=get_number(obj, "jitter", path, 0.2, minimum=0.0, maximum=1.0),
    )


def _or_empty(value: Any) -> Any:
    return [] if value is None else value


def _check_unique_names(methods: tuple[MethodConfig, ...]) -> None:
    seen: dict[tuple[str, str], int] = {}
    for i, mc in enumerate(methods):
        for name in mc.names:
            if name in seen:
                raise ServiceConfigError(
                    join(join("methodConfig", i), "name"),
                    f"duplicate name {{service: {name[0]!r}, method: {name[1]!r}}} "
                    f"(already in methodConfig[{seen[name]}])")
            seen[name] = i


__all__ = ["KNOWN_FIELDS", "HealthCheckConfig", "LbChoice", "ServiceConfig", "UnknownField",
           "decode_service_config", "describe_unknown", "get_bool", "nearest_field",
           "parse_duration", "parse_lb_config_list", "parse_service_config",
           "unknown_fields"]
