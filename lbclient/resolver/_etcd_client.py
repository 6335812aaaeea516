"""A minimal etcd v3 client over grpcio: one connection to one member at a time.

Only what the etcd resolver and :mod:`lbclient.etcd` need: prefix Range, Put,
DeleteRange, Watch, and the lease calls. Messages come from the private proto module
``lbclient._proto.etcd.etcd_v3_pb2`` (a field-for-field subset of etcd's own protos); the
RPC paths below are etcd's (``etcdserverpb`` package), so any etcd >= 3.4 server works.

Contract: :class:`EtcdConnection` methods raise ``grpc.RpcError`` on failure; unary calls
take a timeout; streams are returned as grpc calls (iterate them; ``cancel()`` them).
``close()`` cancels every RPC still running on the connection. Thread-safe as grpcio is.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import grpc

from .._proto.etcd import etcd_v3_pb2 as pb
from ..errors import InvalidTargetError
from .address import split_host_port

DEFAULT_PORT = 2379
RANGE = "/etcdserverpb.KV/Range"
PUT = "/etcdserverpb.KV/Put"
DELETE_RANGE = "/etcdserverpb.KV/DeleteRange"
WATCH = "/etcdserverpb.Watch/Watch"
LEASE_GRANT = "/etcdserverpb.Lease/LeaseGrant"
LEASE_REVOKE = "/etcdserverpb.Lease/LeaseRevoke"
LEASE_KEEPALIVE = "/etcdserverpb.Lease/LeaseKeepAlive"

# clientv3's WithRequireLeader: a member cut off from the raft leader ends the stream
# (UNAVAILABLE "no leader") instead of silently serving nothing.
REQUIRE_LEADER = (("hasleader", "true"),)

pb2 = pb  # re-exported for the resolver and lbclient.etcd


def parse_members(text: str | Sequence[str], where: str) -> list[str]:
    """``"h1:2379,h2"`` (or a list) -> ``["h1:2379", "h2:2379"]`` (port 2379 by default)."""
    items = text.split(",") if isinstance(text, str) else list(text)
    members: list[str] = []
    for item in items:
        if not isinstance(item, str) or not item.strip():
            raise InvalidTargetError(f"{where}: empty etcd member address")
        host, port = split_host_port(item, where, DEFAULT_PORT)
        member = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        if member not in members:
            members.append(member)
    if not members:
        raise InvalidTargetError(f"{where}: no etcd member address")
    return members


def prefix_range_end(prefix: bytes) -> bytes:
    """etcd's ``WithPrefix`` range end: the prefix with its last byte below 0xff
    incremented (``b"a/"`` -> ``b"a0"``); ``b"\\0"`` (every key) if there is none."""
    end = bytearray(prefix)
    for i in range(len(end) - 1, -1, -1):
        if end[i] < 0xFF:
            end[i] += 1
            return bytes(end[: i + 1])
    return b"\0"


def channel_options(keepalive_time: float, keepalive_timeout: float) -> list[tuple[str, Any]]:
    # Pings detect a member that vanished without closing its sockets; etcd's default
    # enforcement (--grpc-keepalive-min-time=5s, no pings without streams) allows these.
    return [
        ("grpc.keepalive_time_ms", int(keepalive_time * 1000)),
        ("grpc.keepalive_timeout_ms", int(keepalive_timeout * 1000)),
        ("grpc.keepalive_permit_without_calls", 0),
        ("grpc.http2.max_pings_without_data", 0),
        ("grpc.max_receive_message_length", 64 * 1024 * 1024),
        ("grpc.use_local_subchannel_pool", 1),
    ]


class EtcdConnection:
    """One grpc channel to one etcd member."""

    def __init__(self, member: str, credentials: grpc.ChannelCredentials | None = None, *,
                 keepalive_time: float = 10.0, keepalive_timeout: float = 5.0) -> None:
        self.member = member
        options = channel_options(keepalive_time, keepalive_timeout)
        target = member
        if credentials is None:
            self.channel = grpc.insecure_channel(target, options=options)
        else:
            self.channel = grpc.secure_channel(target, credentials, options=options)
        ch = self.channel
        self._range = ch.unary_unary(RANGE, pb.RangeRequest.SerializeToString,
                                     pb.RangeResponse.FromString)
        self._put = ch.unary_unary(PUT, pb.PutRequest.SerializeToString,
                                   pb.PutResponse.FromString)
        self._delete = ch.unary_unary(DELETE_RANGE, pb.DeleteRangeRequest.SerializeToString,
                                      pb.DeleteRangeResponse.FromString)
        self._watch = ch.stream_stream(WATCH, pb.WatchRequest.SerializeToString,
                                       pb.WatchResponse.FromString)
        self._grant = ch.unary_unary(LEASE_GRANT, pb.LeaseGrantRequest.SerializeToString,
                                     pb.LeaseGrantResponse.FromString)
        self._revoke = ch.unary_unary(LEASE_REVOKE, pb.LeaseRevokeRequest.SerializeToString,
                                      pb.LeaseRevokeResponse.FromString)
        self._keepalive = ch.stream_stream(LEASE_KEEPALIVE,
                                           pb.LeaseKeepAliveRequest.SerializeToString,
                                           pb.LeaseKeepAliveResponse.FromString)

    def range_prefix(self, prefix: bytes, timeout: float) -> Any:
        """Every key under ``prefix`` (linearizable read, sorted by key)."""
        return self._range(pb.RangeRequest(key=prefix, range_end=prefix_range_end(prefix)),
                           timeout=timeout, metadata=REQUIRE_LEADER)

    def put(self, key: bytes, value: bytes, timeout: float, lease: int = 0) -> Any:
        return self._put(pb.PutRequest(key=key, value=value, lease=lease), timeout=timeout)

    def delete(self, key: bytes, timeout: float, prefix: bool = False) -> Any:
        end = prefix_range_end(key) if prefix else b""
        return self._delete(pb.DeleteRangeRequest(key=key, range_end=end), timeout=timeout)

    def watch(self, requests: Iterator[Any]) -> Any:
        """The Watch stream (a grpc call: iterate for WatchResponses, ``cancel()``)."""
        return self._watch(requests, metadata=REQUIRE_LEADER)

    def lease_grant(self, ttl: int, timeout: float) -> Any:
        return self._grant(pb.LeaseGrantRequest(TTL=ttl), timeout=timeout)

    def lease_revoke(self, lease_id: int, timeout: float) -> Any:
        return self._revoke(pb.LeaseRevokeRequest(ID=lease_id), timeout=timeout)

    def lease_keepalive(self, requests: Iterator[Any]) -> Any:
        return self._keepalive(requests, metadata=REQUIRE_LEADER)

    def close(self) -> None:
        self.channel.close()


def describe(exc: BaseException) -> str:
    """A short text for an etcd failure (status code and details for grpc errors)."""
    if isinstance(exc, grpc.RpcError) and isinstance(exc, grpc.Call):
        return f"{exc.code().name}: {exc.details()}"
    return str(exc) or type(exc).__name__
