"""``methodConfig`` entries of a service config (gRPC's schema, gRFC A6) as frozen values.

Matching rule (gRPC's): an exact ``{service, method}`` beats a service-wide ``{service}``
entry, which beats the default entry ``{}``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ._validate import (
    expect_list,
    expect_object,
    get_bool,
    get_duration,
    get_int,
    get_number,
    get_str,
    join,
    reject_unknown,
)
from .errors import ServiceConfigError

# gRPC status codes by name and number (no grpc import in the config layer).
STATUS_CODES: dict[str, int] = {
    "OK": 0, "CANCELLED": 1, "UNKNOWN": 2, "INVALID_ARGUMENT": 3, "DEADLINE_EXCEEDED": 4,
    "NOT_FOUND": 5, "ALREADY_EXISTS": 6, "PERMISSION_DENIED": 7, "RESOURCE_EXHAUSTED": 8,
    "FAILED_PRECONDITION": 9, "ABORTED": 10, "OUT_OF_RANGE": 11, "UNIMPLEMENTED": 12,
    "INTERNAL": 13, "UNAVAILABLE": 14, "DATA_LOSS": 15, "UNAUTHENTICATED": 16,
}
_NAMES_BY_NUMBER = {v: k for k, v in STATUS_CODES.items()}

MAX_ATTEMPTS_CAP = 5  # gRFC A6: larger values are treated as 5


def parse_status_codes(value: Any, path: str, *, allow_empty: bool) -> frozenset[str]:
    """A list of status codes given by name ("UNAVAILABLE", any case) or number (14)."""
    codes = set()
    items = expect_list(value, path)
    if not items and not allow_empty:
        raise ServiceConfigError(path, "must not be empty")
    for i, item in enumerate(items):
        if isinstance(item, str) and item.upper() in STATUS_CODES:
            codes.add(item.upper())
        elif isinstance(item, int) and not isinstance(item, bool) and item in _NAMES_BY_NUMBER:
            codes.add(_NAMES_BY_NUMBER[item])
        else:
            raise ServiceConfigError(join(path, i), f"unknown status code {item!r}")
    return frozenset(codes)


@dataclass(frozen=True)
class RetryPolicy:
    max_attempts: int
    initial_backoff: float
    max_backoff: float
    backoff_multiplier: float
    retryable_status_codes: frozenset[str]
    per_attempt_recv_timeout: float | None = None

    @classmethod
    def parse(cls, value: Any, path: str) -> RetryPolicy:
        obj = expect_object(value, path)
        reject_unknown(obj, path, {"maxAttempts", "initialBackoff", "maxBackoff",
                                   "backoffMultiplier", "retryableStatusCodes",
                                   "perAttemptRecvTimeout"})
        for key in ("maxAttempts", "initialBackoff", "maxBackoff", "backoffMultiplier",
                    "retryableStatusCodes"):
            if obj.get(key) is None:
                raise ServiceConfigError(join(path, key), "is required")
        attempts = get_int(obj, "maxAttempts", path, 0, minimum=2)
        initial = get_duration(obj, "initialBackoff", path, None, positive=True)
        maximum = get_duration(obj, "maxBackoff", path, None, positive=True)
        assert initial is not None and maximum is not None
        return cls(
            max_attempts=min(attempts, MAX_ATTEMPTS_CAP),
            initial_backoff=initial,
            max_backoff=maximum,
            backoff_multiplier=get_number(obj, "backoffMultiplier", path, 0.0, minimum=0.0,
                                          exclusive_minimum=True),
            retryable_status_codes=parse_status_codes(
                obj["retryableStatusCodes"], join(path, "retryableStatusCodes"),
                allow_empty=False),
            per_attempt_recv_timeout=get_duration(obj, "perAttemptRecvTimeout", path, None,
                                                  positive=True),
        )


@dataclass(frozen=True)
class HedgingPolicy:
    max_attempts: int
    hedging_delay: float
    non_fatal_status_codes: frozenset[str]

    @classmethod
    def parse(cls, value: Any, path: str) -> HedgingPolicy:
        obj = expect_object(value, path)
        reject_unknown(obj, path, {"maxAttempts", "hedgingDelay", "nonFatalStatusCodes"})
        if obj.get("maxAttempts") is None:
            raise ServiceConfigError(join(path, "maxAttempts"), "is required")
        attempts = get_int(obj, "maxAttempts", path, 0, minimum=2)
        delay = get_duration(obj, "hedgingDelay", path, 0.0)
        assert delay is not None
        codes = obj.get("nonFatalStatusCodes")
        return cls(
            max_attempts=min(attempts, MAX_ATTEMPTS_CAP),
            hedging_delay=delay,
            non_fatal_status_codes=parse_status_codes(
                codes, join(path, "nonFatalStatusCodes"), allow_empty=True)
            if codes is not None else frozenset(),
        )


@dataclass(frozen=True)
class RetryThrottling:
    """gRFC A6 ``retryThrottling``: ``maxTokens`` an integer in (0, 1000], ``tokenRatio`` a
    number > 0 of which only three decimal places count (0.5466 is 0.546)."""

    max_tokens: int
    token_ratio: float

    @classmethod
    def parse(cls, value: Any, path: str) -> RetryThrottling:
        obj = expect_object(value, path)
        reject_unknown(obj, path, {"maxTokens", "tokenRatio"})
        for key in ("maxTokens", "tokenRatio"):
            if obj.get(key) is None:
                raise ServiceConfigError(join(path, key), "is required")
        max_tokens = get_int(obj, "maxTokens", path, 0)
        if not 0 < max_tokens <= 1000:
            raise ServiceConfigError(join(path, "maxTokens"),
                                     f"must be greater than 0 and at most 1000, got {max_tokens}")
        ratio = get_number(obj, "tokenRatio", path, 0, minimum=0, exclusive_minimum=True)
        # gRFC A6: "Decimal places beyond 3 are ignored" (truncated, as gRPC core does).
        milli = int(round(ratio * 1000, 6))  # round() first: 1.001 * 1000 is 1000.999...
        if milli <= 0:
            raise ServiceConfigError(join(path, "tokenRatio"),
                                     f"must be at least 0.001 (three decimal places count), "
                                     f"got {ratio!r}")
        return cls(max_tokens, milli / 1000)


@dataclass(frozen=True)
class MethodConfig:
    names: tuple[tuple[str, str], ...]   # (service, method); "" means "any"
    timeout: float | None = None
    wait_for_ready: bool | None = None
    retry_policy: RetryPolicy | None = None
    hedging_policy: HedgingPolicy | None = None
    max_request_message_bytes: int | None = None
    max_response_message_bytes: int | None = None


def parse_method_config(value: Any, path: str) -> MethodConfig:
    obj = expect_object(value, path)
    reject_unknown(obj, path, {"name", "timeout", "waitForReady", "retryPolicy",
                               "hedgingPolicy", "maxRequestMessageBytes",
                               "maxResponseMessageBytes"})
    names = []
    for i, raw in enumerate(expect_list(obj.get("name") or [], join(path, "name"))):
        npath = join(join(path, "name"), i)
        n = expect_object(raw, npath)
        reject_unknown(n, npath, {"service", "method"})
        service = get_str(n, "service", npath, "") or ""
        method = get_str(n, "method", npath, "") or ""
        if method and not service:
            raise ServiceConfigError(join(npath, "method"), "a method needs a service")
        names.append((service, method))
    if obj.get("retryPolicy") is not None and obj.get("hedgingPolicy") is not None:
        raise ServiceConfigError(path, "retryPolicy and hedgingPolicy cannot both be set")
    wfr = get_bool(obj, "waitForReady", path, False) if "waitForReady" in obj else None
    return MethodConfig(
        names=tuple(names),
        timeout=get_duration(obj, "timeout", path, None, positive=True),
        wait_for_ready=wfr,
        retry_policy=RetryPolicy.parse(obj["retryPolicy"], join(path, "retryPolicy"))
        if obj.get("retryPolicy") is not None else None,
        hedging_policy=HedgingPolicy.parse(obj["hedgingPolicy"], join(path, "hedgingPolicy"))
        if obj.get("hedgingPolicy") is not None else None,
        max_request_message_bytes=get_int(obj, "maxRequestMessageBytes", path, 0, minimum=0)
        or None,
        max_response_message_bytes=get_int(obj, "maxResponseMessageBytes", path, 0, minimum=0)
        or None,
    )


class MethodConfigTable:
    """Looks up the method config for a full method name ("/pkg.Svc/Method")."""

    def __init__(self, configs: tuple[MethodConfig, ...]) -> None:
        self._exact: dict[tuple[str, str], MethodConfig] = {}
        self._service: dict[str, MethodConfig] = {}
        self._default: MethodConfig | None = None
        for mc in configs:
            for service, method in mc.names:
                if service and method:
                    self._exact[(service, method)] = mc
                elif service:
                    self._service[service] = mc
                else:
                    self._default = mc
        self._cache: dict[str, MethodConfig | None] = {}

    def lookup(self, full_method: str) -> MethodConfig | None:
        try:
            return self._cache[full_method]
        except KeyError:
            pass
        service, _, method = full_method.lstrip("/").partition("/")
        found = (self._exact.get((service, method)) or self._service.get(service)
                 or self._default)
        if len(self._cache) < 10_000:  # bounded: method names come from stubs
            self._cache[full_method] = found
        return found

    def __bool__(self) -> bool:
        return bool(self._exact or self._service or self._default)


def as_mapping(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}
