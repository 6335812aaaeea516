"""One attempt of an asyncio call on a picked endpoint: start grpc.aio's call on the
endpoint's connection and report how it ended (see ``lbclient._core.attempt`` for the
contract).

The attempt ends from the call's done callback, registered on grpc.aio's C-layer call
(``status.finish_when_done``), which does not keep the call alive: cancellation,
deadlines and abandoned streams are included. Runs on the loop and never blocks it.
"""

from __future__ import annotations

from typing import Any

from .._core.attempt import Attempt
from .._core.kinds import CallSite
from ..balancer.picker import PickInfo, PickResult
from .picking import AioPlacement
from .status import finish_when_done


def pick_info(site: CallSite, metadata: Any, exclude: frozenset[str] = frozenset()) -> PickInfo:
    """What the picker sees of a call (the site's shared one when there is nothing)."""
    if not metadata and not exclude:
        return site.info
    return PickInfo(site.method, tuple(metadata or ()), exclude)


def start(host: AioPlacement, site: CallSite, result: PickResult, request: Any,
          timeout: float | None, metadata: Any, credentials: Any, wait_for_ready: bool | None,
          compression: Any) -> Any | None:
    """grpc.aio's call on the picked endpoint, or None when the endpoint was removed
    meanwhile (pick again). ``request`` None on a request-streaming method means the
    caller will ``write()``."""
    attempt = Attempt(host.ctx, result, site)
    if attempt.retired:
        attempt.end("CANCELLED")
        return None
    handle = result.candidate.handle
    mc = handle.calls.get(site) or handle.callable(site)
    try:
        if request is None and site.kind.streams_requests:
            call = mc(timeout=timeout, metadata=metadata, credentials=credentials,
                      wait_for_ready=wait_for_ready, compression=compression)
        else:
            call = mc(request, timeout=timeout, metadata=metadata, credentials=credentials,
                      wait_for_ready=wait_for_ready, compression=compression)
    except BaseException:
        attempt.end("CANCELLED")
        raise
    finish_when_done(call, attempt)
    return call
