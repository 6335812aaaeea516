"""Connectivity states of one endpoint connection and of the whole channel (stdlib only).

The names and meanings are gRPC's (``grpc.ChannelConnectivity``); ``channel.py`` maps
between the two so that the balancer never imports grpc.
"""

from __future__ import annotations

import enum


class Connectivity(enum.Enum):
    IDLE = "IDLE"
    CONNECTING = "CONNECTING"
    READY = "READY"
    TRANSIENT_FAILURE = "TRANSIENT_FAILURE"
    SHUTDOWN = "SHUTDOWN"


def aggregate(states: list[Connectivity]) -> Connectivity:
    """The channel's state from its endpoints' (gRPC's aggregation rule).

    READY if any endpoint is READY, else CONNECTING if any is connecting, else IDLE if any
    is idle, else TRANSIENT_FAILURE; with no endpoints at all: TRANSIENT_FAILURE.
    """
    for wanted in (Connectivity.READY, Connectivity.CONNECTING, Connectivity.IDLE):
        if wanted in states:
            return wanted
    return Connectivity.TRANSIENT_FAILURE
