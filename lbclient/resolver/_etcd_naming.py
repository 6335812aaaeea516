"""etcd's gRPC naming convention (Go ``go.etcd.io/etcd/client/v3/naming/endpoints``), pure.

Each endpoint of service ``<prefix>`` is a key ``<prefix>/<anything, usually the addr>``
whose value is the JSON of Go's ``internal.Update``::

    {"Op":0,"Addr":"10.0.0.1:50051","Metadata":{"weight":3,"zone":"a"}}

As in Go's resolver, every put is an addition whatever its ``Op`` (a deletion is a delete
of the key), and a value that does not parse is logged and skipped, leaving what that key
had before. ``Metadata`` becomes the endpoint's attributes (a non-object is kept under
``"metadata"``); an integer ``weight >= 1`` in it is the endpoint's weight.

:class:`NamingTable` is the resolver's state: key -> endpoint, applied event by event.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable
from typing import Any

from ..endpoint import Endpoint
from ..errors import InvalidTargetError
from .address import join_host_port, split_host_port

log = logging.getLogger("lbclient.resolver.etcd")

ADD, DELETE = 0, 1


def encode_update(address: str, metadata: Any = None) -> bytes:
    """The value Go's ``endpoints.Manager.AddEndpoint`` stores (compact JSON)."""
    return json.dumps({"Op": ADD, "Addr": address, "Metadata": metadata},
                      separators=(",", ":")).encode()


def endpoint_key(prefix: str, address: str) -> str:
    return f"{prefix}/{address}"


def parse_update(key: str, value: bytes) -> Endpoint:
    """The endpoint a stored value describes; ``ValueError`` saying why it cannot be used."""
    try:
        doc = json.loads(value)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"value is not JSON: {exc}") from None
    except RecursionError:
        raise ValueError("value is not JSON: nested too deeply") from None
    if not isinstance(doc, dict):
        raise ValueError("value is not a JSON object")
    addr = doc.get("Addr")
    if not isinstance(addr, str) or not addr:
        raise ValueError('"Addr" is missing or not a non-empty string')
    try:
        host, port = split_host_port(addr, f"etcd key {key!r}")
    except InvalidTargetError as exc:
        raise ValueError(str(exc)) from None
    metadata = doc.get("Metadata")
    weight = 1
    if isinstance(metadata, dict):
        attributes = dict(metadata)
        raw_weight = metadata.get("weight")
        if raw_weight is not None:
            if isinstance(raw_weight, int) and not isinstance(raw_weight, bool) \
                    and raw_weight >= 1:
                weight = raw_weight
            else:
                log.warning("etcd key %r: Metadata.weight %r is not an integer >= 1; "
                            "using 1", key, raw_weight)
    elif metadata is None:
        attributes = {}
    else:
        attributes = {"metadata": metadata}
    return Endpoint(join_host_port(host, port), weight, attributes)


class NamingTable:
    """key -> endpoint for one prefix. Not thread-safe (the resolver thread owns it)."""

    def __init__(self) -> None:
        self._by_key: dict[str, Endpoint] = {}

    def reset(self, kvs: Iterable[tuple[bytes, bytes]]) -> None:
        """Replace everything with a Range result."""
        self._by_key = {}
        for key, value in kvs:
            self.put(key, value)

    def put(self, key_bytes: bytes, value: bytes) -> None:
        key = key_bytes.decode("utf-8", "replace")
        try:
            self._by_key[key] = parse_update(key, value)
        except ValueError as exc:
            log.warning("etcd key %r: ignoring the value (%s)%s", key, exc,
                        "; keeping its previous endpoint" if key in self._by_key else "")

    def delete(self, key_bytes: bytes) -> None:
        self._by_key.pop(key_bytes.decode("utf-8", "replace"), None)

    def endpoints(self) -> tuple[Endpoint, ...]:
        """Sorted by key; an address under two keys appears once (the first key's)."""
        out: dict[str, Endpoint] = {}
        for key in sorted(self._by_key):
            endpoint = self._by_key[key]
            out.setdefault(endpoint.address, endpoint)
        return tuple(out.values())

    def __len__(self) -> int:
        return len(self._by_key)


def fingerprint(endpoints: tuple[Endpoint, ...]) -> tuple[tuple[str, int, str], ...]:
    """What must differ for a new snapshot to be worth delivering (attributes included)."""
    return tuple((e.address, e.weight, json.dumps(dict(e.attributes), sort_keys=True,
                                                  default=str)) for e in endpoints)
