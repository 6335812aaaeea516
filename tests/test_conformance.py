"""gRPC interop conformance (sync): every non-credential case of gRPC's
doc/interop-test-descriptions.md against a 3-server InteropFleet, through grpcio's own
round_robin channel (the reference) and lbclient channels with the round_robin,
production-shaped and hedging configs. Ids are ``<case>-<variant>``; a hang fails its case
within CASE_TIMEOUT (with every thread's stack) instead of hanging the suite.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from _interop_cases import CASES
from _interop_support import SYNC_VARIANTS, CaseHang, SyncChannels, run_sync_case

from lbclient.testing import InteropFleet

PARAMS = [pytest.param(case, variant, id=f"{case}-{variant}")
          for variant in SYNC_VARIANTS for case in CASES]


@pytest.fixture(scope="module")
def fleet() -> Iterator[InteropFleet]:
    with InteropFleet(3) as fleet:
        yield fleet


@pytest.fixture(scope="module")
def channels(fleet: InteropFleet) -> Iterator[SyncChannels]:
    cache = SyncChannels(fleet.target)
    yield cache
    cache.close_all()


@pytest.mark.parametrize(("case", "variant"), PARAMS)
def test_interop_case(case: str, variant: str, channels: SyncChannels) -> None:
    channel = channels.get(variant)
    try:
        run_sync_case(f"{case}-{variant}", lambda cleanup: CASES[case](channel, cleanup))
    except CaseHang:
        channels.poison(variant)
        raise
