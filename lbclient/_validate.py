"""Small JSON validation helpers shared by config, policy and resolver parsers (stdlib only).

Every helper takes the JSON path of the value it checks and raises
:class:`~lbclient.errors.ServiceConfigError` naming that path and the rule broken.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from typing import Any, TypeVar

from .errors import ServiceConfigError

T = TypeVar("T")

_MISSING: Any = object()
_DURATION_RE = re.compile(r"^(-?\d+(?:\.\d{1,9})?)s$")


def join(path: str, key: str | int) -> str:
    """``join("a", "b") == "a.b"``; ``join("a", 0) == "a[0]"``."""
    if isinstance(key, int):
        return f"{path}[{key}]"
    return f"{path}.{key}" if path else key


def expect_object(value: Any, path: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise ServiceConfigError(path or "<root>", f"must be a JSON object, got {_kind(value)}")
    for key in value:
        if not isinstance(key, str):
            raise ServiceConfigError(path or "<root>", f"keys must be strings, got {key!r}")
    return value


def expect_list(value: Any, path: str) -> list[Any]:
    if not isinstance(value, list | tuple):
        raise ServiceConfigError(path, f"must be a JSON array, got {_kind(value)}")
    return list(value)


def reject_unknown(obj: Mapping[str, Any], path: str, known: set[str]) -> None:
    """Unknown fields are rejected so that typos do not silently fall back to defaults."""
    for key in obj:
        if key not in known:
            allowed = ", ".join(sorted(known))
            # an empty key still needs a visible path
            raise ServiceConfigError(join(path, key or '""'),
                                     f"unknown field (known: {allowed})")


def get_bool(obj: Mapping[str, Any], key: str, path: str, default: bool) -> bool:
    value = obj.get(key, _MISSING)
    if value is _MISSING or value is None:
        return default
    if not isinstance(value, bool):
        raise ServiceConfigError(join(path, key), f"must be a boolean, got {_kind(value)}")
    return value


def get_str(obj: Mapping[str, Any], key: str, path: str, default: str | None) -> str | None:
    value = obj.get(key, _MISSING)
    if value is _MISSING or value is None:
        return default
    if not isinstance(value, str):
        raise ServiceConfigError(join(path, key), f"must be a string, got {_kind(value)}")
    return value


def get_number(obj: Mapping[str, Any], key: str, path: str, default: float, *,
               minimum: float | None = None, maximum: float | None = None,
               exclusive_minimum: bool = False) -> float:
    value = obj.get(key, _MISSING)
    if value is _MISSING or value is None:
        return default
    return check_number(value, join(path, key), minimum=minimum, maximum=maximum,
                        exclusive_minimum=exclusive_minimum)


def check_number(value: Any, path: str, *, minimum: float | None = None,
                 maximum: float | None = None, exclusive_minimum: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ServiceConfigError(path, f"must be a finite number, got {_kind(value)}")
    if minimum is not None:
        if exclusive_minimum and value <= minimum:
            raise ServiceConfigError(path, f"must be greater than {minimum:g}, got {value!r}")
        if not exclusive_minimum and value < minimum:
            raise ServiceConfigError(path, f"must be at least {minimum:g}, got {value!r}")
    if maximum is not None and value > maximum:
        raise ServiceConfigError(path, f"must be at most {maximum:g}, got {value!r}")
    return float(value)


def get_int(obj: Mapping[str, Any], key: str, path: str, default: int, *,
            minimum: int | None = None, maximum: int | None = None) -> int:
    """An integer field; JSON numbers like ``5.0`` and decimal strings (proto3 JSON
    uint64 encoding) are accepted."""
    value = obj.get(key, _MISSING)
    if value is _MISSING or value is None:
        return default
    p = join(path, key)
    if isinstance(value, str) and re.fullmatch(r"-?\d+", value):
        value = int(value)
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise ServiceConfigError(p, f"must be an integer, got {_kind(value)}")
    if minimum is not None and value < minimum:
        raise ServiceConfigError(p, f"must be at least {minimum}, got {value}")
    if maximum is not None and value > maximum:
        raise ServiceConfigError(p, f"must be at most {maximum}, got {value}")
    return value


def get_duration(obj: Mapping[str, Any], key: str, path: str, default: float | None, *,
                 positive: bool = False) -> float | None:
    """A protobuf JSON Duration (``"1.5s"``) in seconds; a bare number of seconds is also
    accepted. ``positive`` rejects zero and negative durations."""
    value = obj.get(key, _MISSING)
    if value is _MISSING or value is None:
        return default
    return parse_duration(value, join(path, key), positive=positive)


def parse_duration(value: Any, path: str, *, positive: bool = False) -> float:
    if isinstance(value, str):
        m = _DURATION_RE.match(value.strip())
        if not m:
            raise ServiceConfigError(path, f'must be a duration like "1.5s", got {value!r}')
        seconds = float(m.group(1))
    elif isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
        seconds = float(value)
    else:
        raise ServiceConfigError(path, f'must be a duration like "1.5s", got {_kind(value)}')
    if seconds < 0 or (positive and seconds == 0):
        rule = "greater than 0" if positive else "non-negative"
        raise ServiceConfigError(path, f"must be {rule}, got {value!r}")
    return seconds


def get_object(obj: Mapping[str, Any], key: str, path: str) -> Mapping[str, Any] | None:
    value = obj.get(key, _MISSING)
    if value is _MISSING or value is None:
        return None
    return expect_object(value, join(path, key))


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return f"boolean {str(value).lower()}"
    if isinstance(value, str):
        return f"string {value!r}"
    if isinstance(value, int | float):
        return f"number {value!r}"
    if isinstance(value, Mapping):
        return "an object"
    if isinstance(value, list | tuple):
        return "an array"
    return type(value).__name__
