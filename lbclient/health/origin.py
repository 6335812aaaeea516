"""Local-origin vs upstream failures (Envoy's ``split_external_local_origin_errors``;
pure, stdlib only).

A failed attempt is **local-origin** when the server did not choose its status: the
connection could not be made, was reset or closed under the call (GOAWAY, RST_STREAM, a
broken socket, keepalive timeout, TLS handshake), or the call timed out on the client's
clock (DEADLINE_EXCEEDED). Everything else that is not OK is **upstream**: a status the
server chose (its UNAVAILABLE, INTERNAL, RESOURCE_EXHAUSTED...). grpc tells the two apart
only in words, so this reads the status details grpc core writes for transport failures;
a server that writes such words into its own details would be counted local-origin.
"""

from __future__ import annotations

# Lower-case fragments of grpc core's details for transport failures.
_TRANSPORT_WORDS = (
    "failed to connect", "connection refused", "connection reset", "connection closed",
    "connection aborted", "socket closed", "broken pipe", "cancelling all calls", "goaway",
    "rst_stream", "stream removed", "transport closed", "endpoint closing",
    "keepalive watchdog", "handshake", "failed to receive", "timed out",
    "no route to host", "network is unreachable", "end of tcp stream",
)
_TRANSPORT_CODES = frozenset({"UNAVAILABLE", "INTERNAL", "UNKNOWN"})


def local_origin(code: str, details: str | None) -> bool:
    """True when a failed attempt's status comes from the client side or the transport,
    not from the server (see the module doc). OK and CANCELLED are never local-origin
    failures (CANCELLED is the caller's own doing)."""
    if code == "DEADLINE_EXCEEDED":
        return True
    if code not in _TRANSPORT_CODES or not details:
        return False
    text = details.lower()
    return any(word in text for word in _TRANSPORT_WORDS)
