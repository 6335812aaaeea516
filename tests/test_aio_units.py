"""Units of lbclient.aio without a network: the async request replay (the sync buffer's
bookkeeping read from async sources), the write() source, attempt reporting on errors,
and finished-call statuses."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import grpc
import grpc.aio
import pytest

from lbclient._async.errors import aio_error, with_attempts
from lbclient._async.replay import AsyncReplay as AsyncRequestReplay
from lbclient._async.replay import WriteSource
from lbclient._async.status import CANCELLED, Status


def run(coro: Any) -> Any:
    return asyncio.run(asyncio.wait_for(coro, 10))


async def take(view: Any, n: int) -> list[Any]:
    return [await view.__anext__() for _ in range(n)]


async def rest(view: Any) -> list[Any]:
    return [m async for m in view]


async def agen(items: list[Any], fail: BaseException | None = None) -> AsyncIterator[Any]:
    for item in items:
        await asyncio.sleep(0)
        yield item
    if fail is not None:
        raise fail


def test_a_new_attempt_replays_what_the_old_one_read_then_goes_on() -> None:
    async def body() -> None:
        replay = AsyncRequestReplay(agen([b"a", b"b", b"c"]), limit=100)
        first = replay.view()
        assert await take(first, 2) == [b"a", b"b"]
        second = replay.view()                       # a retry: the old view is closed
        assert await rest(first) == []
        assert await rest(second) == [b"a", b"b", b"c"]
        assert replay.buffered_bytes == 3 and not replay.committed

    run(body())


def test_past_the_limit_the_call_commits_and_only_the_owner_reads() -> None:
    async def body() -> None:
        replay = AsyncRequestReplay(agen([b"x" * 6, b"y" * 6, b"z"]), limit=10)
        view = replay.view()
        assert await take(view, 2) == [b"x" * 6, b"y" * 6]    # 12 bytes > 10: committed
        assert replay.committed and replay.view() is None
        assert await rest(view) == [b"z"]

    run(body())


def test_a_failing_source_commits_and_raises_to_its_reader() -> None:
    async def body() -> None:
        replay = AsyncRequestReplay(agen([b"a"], ValueError("bad request stream")), limit=100)
        view = replay.view()
        assert await take(view, 1) == [b"a"]
        with pytest.raises(ValueError, match="bad request stream"):
            await view.__anext__()
        assert replay.committed and replay.view() is None

    run(body())


def test_sync_iterators_are_read_in_place() -> None:
    async def body() -> None:
        replay = AsyncRequestReplay(iter([b"1", b"2"]), limit=100)
        view = replay.view()
        assert await rest(view) == [b"1", b"2"]
        assert await rest(replay.view()) == [b"1", b"2"]

    run(body())


def test_two_attempts_waiting_on_writes_share_one_read_of_the_source() -> None:
    async def body() -> None:
        writes = WriteSource()
        replay = AsyncRequestReplay(writes, limit=100)
        old = replay.view()
        waiting_old = asyncio.ensure_future(old.__anext__())
        await asyncio.sleep(0.01)
        new = replay.view()                          # a retry while the old one waits
        waiting_new = asyncio.ensure_future(new.__anext__())
        await asyncio.sleep(0.01)
        put = asyncio.ensure_future(writes.put(b"m"))
        assert await asyncio.wait_for(waiting_new, 1) == b"m"
        await asyncio.wait_for(put, 1)               # taken: write() returns
        with pytest.raises(StopAsyncIteration):      # the closed view gets nothing
            await asyncio.wait_for(waiting_old, 1)
        writes.close()
        assert await rest(new) == []
        replay.close()

    run(body())


def test_write_waits_until_taken_and_abort_releases_it() -> None:
    async def body() -> None:
        writes = WriteSource()
        put = asyncio.ensure_future(writes.put(b"a"))
        await asyncio.sleep(0.01)
        assert not put.done()                        # nobody took it yet
        assert await writes.__anext__() == b"a"
        await asyncio.wait_for(put, 1)
        stuck = asyncio.ensure_future(writes.put(b"b"))
        await asyncio.sleep(0.01)
        writes.abort()                               # the call ended
        await asyncio.wait_for(stuck, 1)
        assert [m async for m in writes] == []

    run(body())


def test_closing_the_replay_stops_a_pending_read() -> None:
    async def body() -> None:
        writes = WriteSource()
        replay = AsyncRequestReplay(writes, limit=100)
        reader = asyncio.ensure_future(replay.view().__anext__())
        await asyncio.sleep(0.01)
        assert replay._pulling is not None
        replay.close()
        await asyncio.sleep(0.01)
        assert replay._pulling is None
        reader.cancel()

    run(body())


def test_errors_report_earlier_attempts() -> None:
    error = grpc.aio.AioRpcError(grpc.StatusCode.UNAVAILABLE, grpc.aio.Metadata(("i", "1")),
                                 grpc.aio.Metadata(("t", "2")), "down", "debug")
    assert with_attempts(error, 0) is error
    wrapped = with_attempts(error, 2)
    assert wrapped.code() is grpc.StatusCode.UNAVAILABLE and wrapped.details() == "down"
    assert tuple(wrapped.trailing_metadata()) == (("t", "2"),
                                                  ("grpc-previous-rpc-attempts", "2"))
    assert tuple(wrapped.initial_metadata()) == (("i", "1"),)
    assert wrapped.previous_rpc_attempts == 2  # type: ignore[attr-defined]
    local = aio_error(grpc.StatusCode.CANCELLED, "lbclient channel is closed")
    assert local.code() is grpc.StatusCode.CANCELLED
    assert local.debug_error_string() == "lbclient: CANCELLED: lbclient channel is closed"


def test_statuses_become_grpc_aio_errors() -> None:
    assert Status("OK", "", (), ()).error() is None
    error = Status("RESOURCE_EXHAUSTED", "full", (("k", "v"),), (("h", "1"),)).error()
    assert error is not None and error.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
    assert error.details() == "full" and tuple(error.trailing_metadata()) == (("k", "v"),)
    assert CANCELLED.error().code() is grpc.StatusCode.CANCELLED  # type: ignore[union-attr]
