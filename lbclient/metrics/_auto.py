"""Metrics without code: ``LBCLIENT_METRICS`` instruments every new channel.

``LBCLIENT_METRICS`` is a comma-separated list of exporters: ``prometheus`` (the default
prometheus_client REGISTRY; with ``LBCLIENT_PROMETHEUS_PORT=N`` also served over HTTP on
127.0.0.1:N, or on ``LBCLIENT_PROMETHEUS_ADDR``) and ``opentelemetry`` (the global OTel
meter provider). Read when each channel is created. A missing client library or a bad
value is logged once and never breaks channel creation.
"""

from __future__ import annotations

import logging
import os
from typing import Any

log = logging.getLogger("lbclient.metrics")

ENV = "LBCLIENT_METRICS"
PORT_ENV = "LBCLIENT_PROMETHEUS_PORT"
ADDR_ENV = "LBCLIENT_PROMETHEUS_ADDR"
_warned: set[str] = set()


def _warn_once(key: str, message: str, *args: Any) -> None:
    if key not in _warned:
        _warned.add(key)
        log.warning(message, *args)


def channel_created(channel: Any) -> None:
    """Called by every new channel; does nothing unless ``LBCLIENT_METRICS`` is set."""
    spec = os.environ.get(ENV, "")
    if not spec.strip():
        return
    for name in (n.strip().lower() for n in spec.split(",")):
        if not name:
            continue
        try:
            if name == "prometheus":
                from . import prometheus

                prometheus.enable(channel)
                port = os.environ.get(PORT_ENV, "").strip()
                if port:
                    prometheus.serve(int(port), os.environ.get(ADDR_ENV, "127.0.0.1"))
            elif name in ("opentelemetry", "otel"):
                from . import opentelemetry

                opentelemetry.enable(channel)
            else:
                _warn_once(name, "%s: unknown exporter %r (known: prometheus, opentelemetry)",
                           ENV, name)
        except ImportError as exc:
            _warn_once(name, "%s=%s needs lbclient[%s]: %s", ENV, name, name, exc)
        except Exception as exc:
            _warn_once(name, "%s=%s: metrics not enabled: %s", ENV, name, exc)
