"""Validation of ``resolver_options`` (the mapping a channel passes to its resolver).

Every error is a :class:`~lbclient.errors.ServiceConfigError` whose path is
``resolver_options.<key>``, so a typo or a bad value fails when the channel is created.
Unknown keys are rejected (a misspelled option must not silently fall back to a default).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .._validate import check_number, join
from ..errors import ServiceConfigError

ROOT = "resolver_options"


def check_known(options: Mapping[str, Any], scheme: str, known: set[str]) -> None:
    for key in options:
        if key not in known:
            allowed = ", ".join(sorted(known)) or "none"
            raise ServiceConfigError(
                join(ROOT, str(key)),
                f"unknown option for {scheme}: targets (known: {allowed})")


def seconds(options: Mapping[str, Any], key: str, default: float, *,
            positive: bool = True, maximum: float | None = None) -> float:
    """A number of seconds: > 0 when ``positive``, else >= 0."""
    value = options.get(key)
    if value is None:
        return default
    return check_number(value, join(ROOT, key), minimum=0.0, exclusive_minimum=positive,
                        maximum=maximum)


def flag(options: Mapping[str, Any], key: str, default: bool) -> bool:
    value = options.get(key)
    if value is None:
        return default
    if not isinstance(value, bool):
        raise ServiceConfigError(join(ROOT, key), f"must be true or false, got {value!r}")
    return value


def value(options: Mapping[str, Any], key: str, default: Any = None) -> Any:
    """An option taken as is (objects such as credentials or a random generator)."""
    return options.get(key, default)
