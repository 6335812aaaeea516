"""gRPC interop conformance (asyncio): the cases of test_conformance through grpc.aio's own
round_robin channel (the reference) and lbclient.aio channels (round_robin and the
production-shaped config), against a 3-server grpc.aio InteropFleet. Every call object
must be the grpc.aio call kind, and cancelled calls must behave as grpc.aio's. Cases run
as tasks on one loop thread per module, each bounded by CASE_TIMEOUT.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from _interop_cases_aio import AIO_CASES
from _interop_support import AIO_VARIANTS, AioChannels, AioLoop, CaseHang

from lbclient.testing import InteropFleet

PARAMS = [pytest.param(case, variant, id=f"{case}-{variant}")
          for variant in AIO_VARIANTS for case in AIO_CASES]


@pytest.fixture(scope="module")
def fleet() -> Iterator[InteropFleet]:
    with InteropFleet(3, aio=True) as fleet:
        yield fleet


@pytest.fixture(scope="module")
def loop() -> Iterator[AioLoop]:
    loop = AioLoop()
    yield loop
    loop.stop()


@pytest.fixture(scope="module")
def channels(fleet: InteropFleet, loop: AioLoop) -> Iterator[AioChannels]:
    cache = AioChannels(loop, fleet.target)
    yield cache
    cache.close_all()


@pytest.mark.parametrize(("case", "variant"), PARAMS)
def test_interop_case(case: str, variant: str, loop: AioLoop, channels: AioChannels) -> None:
    channel = channels.get(variant)
    try:
        loop.run_case(f"{case}-{variant}", lambda cleanup: AIO_CASES[case](channel, cleanup))
    except CaseHang:
        channels.poison(variant)
        raise
