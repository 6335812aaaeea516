"""What a failed pick means for a call: fail now (and why), or wait for the next picker.

gRPC's rules: a picker that says "not yet" (``PickError.queue``: endpoints still
connecting, waiting for a first health answer, no resolution yet) makes the call wait
within its deadline; otherwise the call fails at once with UNAVAILABLE, unless it is
``wait_for_ready``. A failure names its reason and, when an endpoint's connection failed,
grpc's own account of why (refused, TLS verification...).
"""

from __future__ import annotations

from ..balancer.balancer import Balancer
from ..balancer.picker import PickError
from .context import CallContext

CLOSED = "lbclient channel is closed"


def explain(balancer: Balancer, error: PickError) -> str:
    """A failed pick's reason plus the last connection error of one failed endpoint."""
    for rec in balancer.records():
        detail = rec.handle.connection_error() if rec.handle is not None else None
        if detail:
            return f"{error}; last connection error: {detail}"
    return str(error)


def fail_now(ctx: CallContext, error: PickError,
             wait_for_ready: bool) -> tuple[str, str] | None:
    """``(code, details)`` when the call must fail at once (CANCELLED once the channel
    closed, else UNAVAILABLE with the reason), None when it should wait."""
    if ctx.closed:
        return "CANCELLED", CLOSED
    if error.fail_fast:                     # a circuit breaker: never waits
        return "UNAVAILABLE", str(error)
    if wait_for_ready or error.queue:
        return None
    return "UNAVAILABLE", explain(ctx.balancer, error)


def wait_expired(reason: str) -> tuple[str, str]:
    """The status of a call whose deadline passed while it waited for an endpoint."""
    return "DEADLINE_EXCEEDED", f"deadline exceeded while waiting for an endpoint ({reason})"
