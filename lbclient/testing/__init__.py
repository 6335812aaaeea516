"""Fake gRPC backends for testing and benchmarking lbclient (real servers, no mocks).

``Fleet(n)`` starts ``n`` :class:`Backend` servers on 127.0.0.1 ephemeral ports; each serves
the ``lbclient.testing.echo.v1.Echo`` service (``echo_pb2`` / ``echo_pb2_grpc``) and, unless
``health=False``, grpc.health.v1 Health. Pytest fixtures: ``lbclient.testing.pytest_plugin``.
A fleet in a separate process: ``python -m lbclient.testing serve --count 3``.
"""

from lbclient.testing._backend import (
    NOT_SERVING,
    SERVICE_UNKNOWN,
    SERVING,
    Backend,
    HealthStatus,
)
from lbclient.testing._fleet import Fleet
from lbclient.testing._proto import echo_pb2, echo_pb2_grpc

__all__ = [
    "NOT_SERVING",
    "SERVICE_UNKNOWN",
    "SERVING",
    "Backend",
    "Fleet",
    "HealthStatus",
    "echo_pb2",
    "echo_pb2_grpc",
]
