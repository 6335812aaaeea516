"""Fake gRPC backends for testing and benchmarking lbclient (real servers, no mocks).

``Fleet(n)`` starts ``n`` :class:`Backend` servers on 127.0.0.1 ephemeral ports; each serves
the ``lbclient.testing.echo.v1.Echo`` service (``echo_pb2`` / ``echo_pb2_grpc``) and, unless
``health=False``, grpc.health.v1 Health. Pytest fixtures: ``lbclient.testing.pytest_plugin``.
A fleet in a separate process: ``python -m lbclient.testing serve --count 3``.

Faults a fake backend cannot play by itself (``lbclient.testing.faults``):
:class:`SilentServer` accepts TCP but never speaks HTTP/2; :class:`ProcessBackend` serves
fake backends from a child process that can be frozen (SIGSTOP), thawed and crashed.

``InteropFleet(n)`` starts ``n`` gRPC interop test servers (``grpc.testing.TestService``,
``lbclient.testing.interop``); their stubs and messages are ``interop_test_pb2_grpc``,
``interop_messages_pb2`` and ``interop_empty_pb2``.
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
from lbclient.testing._proto.interop import empty_pb2 as interop_empty_pb2
from lbclient.testing._proto.interop import messages_pb2 as interop_messages_pb2
from lbclient.testing._proto.interop import test_pb2_grpc as interop_test_pb2_grpc
from lbclient.testing.faults import ProcessBackend, SilentServer
from lbclient.testing.interop import InteropFleet, InteropServer

__all__ = [
    "NOT_SERVING",
    "SERVICE_UNKNOWN",
    "SERVING",
    "Backend",
    "Fleet",
    "HealthStatus",
    "InteropFleet",
    "InteropServer",
    "ProcessBackend",
    "SilentServer",
    "echo_pb2",
    "echo_pb2_grpc",
    "interop_empty_pb2",
    "interop_messages_pb2",
    "interop_test_pb2_grpc",
]
