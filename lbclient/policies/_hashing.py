"""Deterministic hashing shared by the hash-based policies (stdlib only, pure Python).

``xxhash64(data, seed)`` is XXH64 as specified by the xxHash project: the hash gRFC A42
names for ring_hash (ring points and request keys) and that Envoy uses for both ring hash
and Maglev. Python's own ``hash()`` is salted per process, and hashlib digests are slower
and differ from what Envoy and gRPC compute, so a pure-Python XXH64 is used: rings and
Maglev tables are identical in every process, and the same addresses give the same ring
as Envoy/gRPC given the same point counts. Contract: the result is an int in [0, 2**64).

``request_key(info, header)`` is the key rule of the hash policies (gRFC A76): the hash
of the named metadata header's value, or None when the call has no such header.
"""

from __future__ import annotations

import struct

from ..balancer.picker import PickInfo

_M = 0xFFFFFFFFFFFFFFFF
P1 = 0x9E3779B185EBCA87
P2 = 0xC2B2AE3D27D4EB4F
P3 = 0x165667B19E3779F9
P4 = 0x85EBCA77C2B2AE63
P5 = 0x27D4EB2F165667C5

_LANES = struct.Struct("<4Q")
_U64 = struct.Struct("<Q")
_U32 = struct.Struct("<I")


def _rotl(x: int, r: int) -> int:
    return ((x << r) | (x >> (64 - r))) & _M


def _round(acc: int, lane: int) -> int:
    acc = (acc + lane * P2) & _M
    return (_rotl(acc, 31) * P1) & _M


def _merge(acc: int, val: int) -> int:
    acc ^= _round(0, val)
    return (acc * P1 + P4) & _M


def xxhash64(data: bytes | str, seed: int = 0) -> int:
    """XXH64 of ``data`` (str is encoded as UTF-8) with a 64-bit ``seed``."""
    if isinstance(data, str):
        data = data.encode("utf-8")
    n = len(data)
    seed &= _M
    i = 0
    if n >= 32:
        v1 = (seed + P1 + P2) & _M
        v2 = (seed + P2) & _M
        v3 = seed
        v4 = (seed - P1) & _M
        limit = n - 32
        while i <= limit:
            a, b, c, d = _LANES.unpack_from(data, i)
            v1, v2, v3, v4 = _round(v1, a), _round(v2, b), _round(v3, c), _round(v4, d)
            i += 32
        h = (_rotl(v1, 1) + _rotl(v2, 7) + _rotl(v3, 12) + _rotl(v4, 18)) & _M
        h = _merge(_merge(_merge(_merge(h, v1), v2), v3), v4)
    else:
        h = (seed + P5) & _M
    h = (h + n) & _M
    while i + 8 <= n:
        (k,) = _U64.unpack_from(data, i)
        h ^= _round(0, k)
        h = (_rotl(h, 27) * P1 + P4) & _M
        i += 8
    if i + 4 <= n:
        (k,) = _U32.unpack_from(data, i)
        h ^= (k * P1) & _M
        h = (_rotl(h, 23) * P2 + P3) & _M
        i += 4
    while i < n:
        h ^= (data[i] * P5) & _M
        h = (_rotl(h, 11) * P1) & _M
        i += 1
    h ^= h >> 33
    h = (h * P2) & _M
    h ^= h >> 29
    h = (h * P3) & _M
    h ^= h >> 32
    return h


def request_key(info: PickInfo, header: str | None) -> int | None:
    """The 64-bit hash of ``header``'s value in the call metadata, or None (no header
    configured, or the call does not carry it)."""
    if not header:
        return None
    value = info.header(header)
    if value is None:
        return None
    return xxhash64(value)


KEY_CACHE_SIZE = 4096
_key_hashes: dict[str, int] = {}


def key_hash(value: str) -> int:
    """``xxhash64(value)`` of a request's hash key, remembered for the last few thousand
    distinct keys (keys repeat: users, sessions; a pure-Python XXH64 costs more than the
    rest of a pick). Thread-safe without a lock: dict reads and stores are atomic, and a
    full cache is simply emptied."""
    h = _key_hashes.get(value)
    if h is None:
        h = xxhash64(value)
        if len(_key_hashes) >= KEY_CACHE_SIZE:
            _key_hashes.clear()
        _key_hashes[value] = h
    return h
