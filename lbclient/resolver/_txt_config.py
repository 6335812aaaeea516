"""gRFC A2: a service config published in DNS TXT records (pure; stdlib only).

The TXT record ``_grpc_config.<host>`` holds ``grpc_config=<JSON>``, where the JSON is a
list of *choices*::

    [{"clientLanguage": ["python"], "percentage": 50, "clientHostname": ["a"],
      "serviceConfig": {...}}]

The first choice whose criteria all match this client is used. ``clientLanguage``
matches "python" (case-insensitive); ``percentage`` (0-100) matches when a random draw
from 1..100 is at most it (grpc-go's rule); ``clientHostname`` matches this host's name.
Unknown fields and wrong types make the whole record invalid (grpc-go rejects them too).
"""

from __future__ import annotations

import json
import random
from collections.abc import Mapping
from typing import Any

from .._validate import expect_list, expect_object, get_int, join, reject_unknown
from ..errors import ServiceConfigError

PREFIX = "grpc_config="
LANGUAGE = "python"
_FIELDS = {"clientLanguage", "percentage", "clientHostname", "serviceConfig"}


def txt_name(host: str) -> str:
    return f"_grpc_config.{host}"


def choose_service_config(records: list[str], *, hostname: str,
                          rng: random.Random) -> Mapping[str, Any] | None:
    """The service config this client should use, or None if no record carries one or no
    choice matches. Raises :class:`ServiceConfigError` (path ``grpc_config[i].field``)
    for a malformed record."""
    texts = [r for r in records if r.startswith(PREFIX)]
    if not texts:
        return None
    try:
        choices_raw = json.loads(texts[0][len(PREFIX):])
    except json.JSONDecodeError as exc:
        raise ServiceConfigError("grpc_config", f"is not valid JSON: {exc}") from None
    choices = expect_list(choices_raw, "grpc_config")
    parsed = [_parse_choice(c, join("grpc_config", i)) for i, c in enumerate(choices)]
    for languages, percentage, hostnames, config in parsed:
        if languages is not None and LANGUAGE not in {lang.lower() for lang in languages}:
            continue
        if percentage is not None and rng.randint(1, 100) > percentage:
            continue
        if hostnames is not None and hostname not in hostnames:
            continue
        return config
    return None


def _parse_choice(raw: Any, path: str) -> tuple[list[str] | None, int | None,
                                                 list[str] | None, Mapping[str, Any]]:
    choice = expect_object(raw, path)
    reject_unknown(choice, path, _FIELDS)
    languages = _strings(choice, "clientLanguage", path)
    hostnames = _strings(choice, "clientHostname", path)
    percentage = None
    if choice.get("percentage") is not None:
        percentage = get_int(choice, "percentage", path, 100, minimum=0, maximum=100)
    if "serviceConfig" not in choice:
        raise ServiceConfigError(join(path, "serviceConfig"), "is required")
    config = expect_object(choice["serviceConfig"], join(path, "serviceConfig"))
    return languages, percentage, hostnames, config


def _strings(choice: Mapping[str, Any], key: str, path: str) -> list[str] | None:
    if choice.get(key) is None:
        return None
    items = expect_list(choice[key], join(path, key))
    for i, item in enumerate(items):
        if not isinstance(item, str):
            raise ServiceConfigError(join(join(path, key), i), f"must be a string, got {item!r}")
    return items
