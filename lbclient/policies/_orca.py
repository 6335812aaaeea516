"""Reading ORCA per-call load reports (gRFC A51) and turning them into weights (A58).

A backend that reports load attaches an ``xds.data.orca.v3.OrcaLoadReport`` in binary
form to the ``endpoint-load-metrics-bin`` trailer of each response. ``load_report``
decodes it from a finished call's outcome; ``orca_weight`` applies A58's formula::

    weight = qps / (utilization + eps / qps * error_utilization_penalty)

where ``qps`` is ``rps_fractional`` and ``utilization`` is ``application_utilization``
when set, else ``cpu_utilization`` (gRPC's choice). A report without positive qps and
utilization gives no weight (None) and is ignored, as in gRPC.
"""

from __future__ import annotations

from .._proto.orca_load_report_pb2 import OrcaLoadReport
from ..balancer.picker import CallOutcome

ORCA_TRAILER = "endpoint-load-metrics-bin"
# grpcio never shows ORCA_TRAILER to applications: gRPC core parses it for its own LB
# policies and marks it "not published to the app". Backends that want grpcio-based
# clients such as lbclient to see their reports send the same bytes under this key too
# (lbclient.testing's fake backends send both).
ORCA_TRAILER_VISIBLE = "x-endpoint-load-metrics-bin"
_KEYS = (ORCA_TRAILER, ORCA_TRAILER_VISIBLE)


def load_report(outcome: CallOutcome) -> OrcaLoadReport | None:
    """The ORCA report in the call's trailing metadata (either key), or None (absent or
    undecodable)."""
    for key, value in outcome.trailing_metadata:
        if key.lower() not in _KEYS:
            continue
        data = value if isinstance(value, bytes) else value.encode("latin-1", "replace")
        try:
            return OrcaLoadReport.FromString(data)
        except Exception:  # a malformed report is ignored, like a missing one
            return None
    return None


def orca_weight(report: OrcaLoadReport, error_utilization_penalty: float) -> float | None:
    """A58's weight for one report, or None when the report carries no usable load."""
    utilization = report.application_utilization or report.cpu_utilization
    qps = report.rps_fractional
    if utilization <= 0.0 or qps <= 0.0:
        return None
    return qps / (utilization + report.eps / qps * error_utilization_penalty)
