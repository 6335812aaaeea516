"""The endpoints file format of ``file:`` targets (pure; stdlib only).

::

    {"endpoints": [{"address": "10.0.0.1:50051", "weight": 3, "metadata": {"zone": "a"}},
                   {"address": "10.0.0.2:50051"}],
     "serviceConfig": {"loadBalancingConfig": [{"round_robin": {}}]}}

* ``endpoints`` (required): a list; each ``address`` is ``host:port`` (IPv6 in brackets),
  unique in the file; ``weight`` an integer >= 1 (default 1); ``metadata`` an object that
  becomes the endpoint's attributes.
* ``serviceConfig`` (optional): a service config object, validated by the channel.
* Unknown fields are errors. An empty ``endpoints`` list is taken as meant (the file is the
  source of truth), so calls then fail with "the resolver returned an empty list".

Errors are :class:`ServiceConfigError` with the JSON path of the bad value
(``endpoints[2].weight``).
"""

from __future__ import annotations

import json
from typing import Any

from .._validate import expect_list, expect_object, get_int, get_object, join, reject_unknown
from ..endpoint import Endpoint
from ..errors import InvalidTargetError, ServiceConfigError
from .address import join_host_port, split_host_port
from .base import ResolverState

_TOP = {"endpoints", "serviceConfig"}
_ENDPOINT = {"address", "weight", "metadata"}


def parse_endpoints_json(text: str | bytes) -> ResolverState:
    try:
        raw = json.loads(text)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ServiceConfigError("<root>", f"is not valid JSON: {exc}") from None
    except RecursionError:
        raise ServiceConfigError("<root>", "is not valid JSON: nested too deeply") from None
    return parse_endpoints_document(raw)


def parse_endpoints_document(raw: Any) -> ResolverState:
    doc = expect_object(raw, "")
    reject_unknown(doc, "", _TOP)
    if "endpoints" not in doc:
        raise ServiceConfigError("endpoints", "is required")
    endpoints: list[Endpoint] = []
    first_seen: dict[str, int] = {}
    for i, item in enumerate(expect_list(doc["endpoints"], "endpoints")):
        path = join("endpoints", i)
        endpoint = _parse_endpoint(item, path)
        if endpoint.address in first_seen:
            raise ServiceConfigError(
                join(path, "address"),
                f"{endpoint.address} is already endpoints[{first_seen[endpoint.address]}]")
        first_seen[endpoint.address] = i
        endpoints.append(endpoint)
    config = get_object(doc, "serviceConfig", "")
    return ResolverState(endpoints=tuple(endpoints),
                         service_config=dict(config) if config is not None else None,
                         authoritative=True)


def _parse_endpoint(item: Any, path: str) -> Endpoint:
    obj = expect_object(item, path)
    reject_unknown(obj, path, _ENDPOINT)
    address = obj.get("address")
    if not isinstance(address, str):
        raise ServiceConfigError(join(path, "address"),
                                 "is required and must be a \"host:port\" string")
    try:
        host, port = split_host_port(address, "address")
    except InvalidTargetError as exc:
        raise ServiceConfigError(join(path, "address"), str(exc)) from None
    weight = get_int(obj, "weight", path, 1, minimum=1)
    metadata = get_object(obj, "metadata", path) or {}
    return Endpoint(join_host_port(host, port), weight, dict(metadata))
