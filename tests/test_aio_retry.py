"""Retries and hedging on lbclient.aio (gRFC A6), against grpc.aio backends and the
scripted server of the sync retry tests: another endpoint each attempt, never one twice,
only listed codes, one deadline, pushback, attempt metadata, streams until their first
message, request replay, hedging, throttling, cancel and close during a backoff."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable, Coroutine
from contextlib import asynccontextmanager
from typing import Any

import grpc
import grpc.aio
import pytest
from retry_servers import ScriptedServer, hedging_config, retry_config

import lbclient.aio
from lbclient.testing import Fleet, echo_pb2, echo_pb2_grpc

UNAVAILABLE = grpc.StatusCode.UNAVAILABLE
PICK_FIRST = {"loadBalancingConfig": [{"pick_first": {}}]}


def _req(msg: str = "hi", **kw: Any) -> echo_pb2.EchoRequest:
    return echo_pb2.EchoRequest(message=msg, **kw)


def run(fn: Callable[[], Coroutine[Any, Any, Any]], timeout: float = 60) -> Any:
    return asyncio.run(asyncio.wait_for(fn(), timeout))


@asynccontextmanager
async def channel(target: str, config: dict[str, Any],
                  ready: int = 0) -> AsyncIterator[tuple[Any, Any]]:
    async with lbclient.aio.insecure_channel(target, service_config=config) as ch:
        for _ in range(2000):
            if sum(e.connectivity == "READY" for e in ch.endpoints()) >= ready:
                break
            await asyncio.sleep(0.005)
        else:
            raise AssertionError(f"{ready} endpoints not READY")
        yield ch, echo_pb2_grpc.EchoStub(ch)


def trailer(metadata: Any, key: str = "grpc-previous-rpc-attempts") -> str | None:
    return next((v for k, v in metadata or () if k == key), None)


def target(*addresses: str) -> str:
    return "ipv4:" + ",".join(addresses)


# ------------------------------------------------------------------ unary retries
def test_failing_backends_are_never_tried_twice_and_every_call_succeeds(
        fleet_factory: Any) -> None:
    fleet: Fleet = fleet_factory(3, aio=True)
    fleet[0].set_error_rate(1.0)
    fleet[1].set_error_rate(1.0)
    bad = (fleet[0], fleet[1])

    async def body() -> None:
        async with channel(fleet.target, retry_config(attempts=5), ready=3) as (ch, stub):
            retried = 0
            for _ in range(24):
                before = [b.calls for b in bad]
                call = stub.Unary(_req(), timeout=5)
                reply = await call
                deltas = [b.calls - n for b, n in zip(bad, before, strict=True)]
                assert reply.address == fleet[2].address
                assert all(d <= 1 for d in deltas), deltas
                assert trailer(await call.trailing_metadata()) == (
                    str(sum(deltas)) if sum(deltas) else None)
                assert call.previous_rpc_attempts == sum(deltas)
                retried += bool(sum(deltas))
            assert retried >= 8
            # and concurrently: 200 calls, not one failure
            replies = await asyncio.gather(*(stub.Unary(_req(), timeout=10)
                                             for _ in range(200)))
            assert {r.address for r in replies} == {fleet[2].address}
            for _ in range(200):
                if all(e.in_flight == 0 for e in ch.endpoints()):
                    break
                await asyncio.sleep(0.01)
            assert all(e.in_flight == 0 for e in ch.endpoints())
            assert next(e for e in ch.endpoints() if e.address == fleet[0].address).failures > 0

    run(body)


def test_only_listed_codes_are_retried_and_attempts_are_reported() -> None:
    with ScriptedServer("a", code=UNAVAILABLE) as a, ScriptedServer("b", code=UNAVAILABLE) as b:
        async def body() -> None:
            config = {**retry_config(attempts=4, initial="0.01s"), **PICK_FIRST}
            async with channel(target(a.address, b.address), config, ready=2) as (_, stub):
                call = stub.Unary(_req(), timeout=5, metadata=(("k", "v"),))
                with pytest.raises(grpc.aio.AioRpcError) as info:
                    await call
                error = info.value
                assert error.code() is UNAVAILABLE
                assert a.calls + b.calls == 4           # both tried; then again (all tried)
                assert trailer(error.trailing_metadata()) == "3"
                assert error.previous_rpc_attempts == 3  # type: ignore[attr-defined]
                assert trailer(await call.trailing_metadata()) == "3"
                assert (await call.code()) is UNAVAILABLE and call.done()
                sent = [md.get("lbclient-previous-rpc-attempts") for md in a.metadata + b.metadata]
                assert sorted(sent, key=str) == ["1", "2", "3", None]
                assert all(md.get("k") == "v" for md in a.metadata + b.metadata)
                a.code = b.code = grpc.StatusCode.NOT_FOUND      # not listed: at once
                n = a.calls + b.calls
                with pytest.raises(grpc.aio.AioRpcError) as info:
                    await stub.Unary(_req(), timeout=5)
                assert info.value.code() is grpc.StatusCode.NOT_FOUND
                assert a.calls + b.calls == n + 1
                assert trailer(info.value.trailing_metadata()) is None

        run(body)


def test_one_deadline_for_all_attempts(fleet_factory: Any) -> None:
    fleet: Fleet = fleet_factory(2, aio=True)
    for b in fleet:
        b.set_error_rate(1.0)

    async def body() -> None:
        config = retry_config(attempts=5, initial="1s", maximum="1s")
        async with channel(fleet.target, config, ready=2) as (_, stub):
            t0 = time.monotonic()
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await stub.Unary(_req(), timeout=0.3)
            # the next backoff can't fit the deadline: the call ends with the last error
            assert info.value.code() in (UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)
            assert time.monotonic() - t0 < 1.0

    run(body)


@pytest.mark.parametrize("pushback, attempts", [("250", 2), ("-1", 1), ("soon", 1)])
def test_pushback(pushback: str, attempts: int) -> None:
    with ScriptedServer(code=UNAVAILABLE, pushback=pushback) as server:
        async def body() -> None:
            config = retry_config(attempts=2, initial="0.001s", maximum="0.001s")
            async with channel(target(server.address), config, ready=1) as (_, stub):
                t0 = time.monotonic()
                with pytest.raises(grpc.aio.AioRpcError):
                    await stub.Unary(_req(), timeout=5)
                assert server.calls == attempts
                if attempts == 2:          # waited exactly the pushback, not the backoff
                    assert time.monotonic() - t0 >= 0.24

        run(body)


def test_per_attempt_timeout_cut_is_retried_elsewhere(fleet_factory: Any) -> None:
    fleet: Fleet = fleet_factory(2, aio=True)
    fleet[0].set_latency(2.0)

    async def body() -> None:
        config = {**retry_config(attempts=3), **PICK_FIRST}
        config["methodConfig"][0]["retryPolicy"]["perAttemptRecvTimeout"] = "0.1s"
        async with channel(fleet.target, config, ready=2) as (_, stub):
            t0 = time.monotonic()
            call = stub.Unary(_req(), timeout=5)
            assert (await call).address == fleet[1].address
            assert time.monotonic() - t0 < 1.5
            assert trailer(await call.trailing_metadata()) == "1"

    run(body)


def test_large_unary_request_is_sent_once(fleet_factory: Any) -> None:
    with ScriptedServer(code=UNAVAILABLE) as bad:
        fleet: Fleet = fleet_factory(1, aio=True)

        async def body() -> None:
            config = {**retry_config(attempts=3), **PICK_FIRST}
            async with channel(target(bad.address, fleet[0].address), config, ready=2) as (
                    _, stub):
                with pytest.raises(grpc.aio.AioRpcError) as info:
                    await stub.Unary(_req(payload=b"x" * (300 * 1024)), timeout=5)
                assert info.value.code() is UNAVAILABLE and bad.calls == 1
                assert (await stub.Unary(_req(), timeout=5)).address == fleet[0].address

        run(body)


# ------------------------------------------------------------------ streams
@pytest.mark.parametrize("write_mode", [False, True])
def test_client_stream_is_replayed_on_the_next_endpoint(write_mode: bool,
                                                        fleet_factory: Any) -> None:
    with ScriptedServer(code=UNAVAILABLE) as bad:
        fleet: Fleet = fleet_factory(1, aio=True)

        async def body() -> None:
            config = {**retry_config(attempts=3), **PICK_FIRST}
            async with channel(target(bad.address, fleet[0].address), config, ready=2) as (
                    _, stub):
                if write_mode:
                    call = stub.ClientStream(timeout=5)
                    for m in "abc":
                        await call.write(_req(m))
                    await call.done_writing()
                else:
                    async def gen() -> AsyncIterator[echo_pb2.EchoRequest]:
                        for m in "abc":
                            yield _req(m)
                            await asyncio.sleep(0)
                    call = stub.ClientStream(gen(), timeout=5)
                reply = await call
                assert (reply.message, reply.address) == ("a,b,c", fleet[0].address)
                assert bad.calls == 1 and trailer(await call.trailing_metadata()) == "1"
                assert isinstance(call, grpc.aio.StreamUnaryCall)

        run(body)


def test_client_stream_past_the_replay_buffer_is_not_retried() -> None:
    with ScriptedServer("bad", code=UNAVAILABLE) as bad, ScriptedServer("good") as good:
        async def body() -> None:
            config = {**retry_config(attempts=3), **PICK_FIRST}
            async with channel(target(bad.address, good.address), config, ready=2) as (
                    _, stub):
                big = [_req(payload=b"x" * (100 * 1024)) for _ in range(3)]  # 300 KiB
                with pytest.raises(grpc.aio.AioRpcError) as info:
                    await stub.ClientStream(iter(big), timeout=5)
                assert info.value.code() is UNAVAILABLE
                assert bad.calls == 1 and good.calls == 0

        run(body)


def test_server_stream_retried_before_its_first_message_only() -> None:
    with ScriptedServer("bad", code=UNAVAILABLE) as bad, ScriptedServer("good") as good:
        async def body() -> None:
            config = {**retry_config(attempts=3), **PICK_FIRST}
            async with channel(target(bad.address, good.address), config, ready=2) as (
                    _, stub):
                call = stub.ServerStream(_req(count=3), timeout=5)
                assert isinstance(call, grpc.aio.UnaryStreamCall)
                await call.wait_for_connection()        # the second attempt's
                assert [r.index async for r in call] == [0, 1, 2]
                assert bad.calls == 1 and good.calls == 1
                assert trailer(await call.trailing_metadata()) == "1"
                assert (await call.code()) is grpc.StatusCode.OK and call.done()
                bad.messages_before_failure = 1          # committed by its first message
                call = stub.ServerStream(_req(count=3), timeout=5)
                assert (await call.read()).index == 0
                with pytest.raises(grpc.aio.AioRpcError) as info:
                    await call.read()
                assert info.value.code() is UNAVAILABLE
                assert (bad.calls, good.calls) == (2, 1)

        run(body)


def test_a_committed_stream_cancels_and_ends_its_attempt(fleet_factory: Any) -> None:
    fleet: Fleet = fleet_factory(1, aio=True)

    async def body() -> None:
        async with channel(fleet.target, retry_config(attempts=3), ready=1) as (ch, stub):
            call = stub.ServerStream(_req(count=100, sleep_ms=20), timeout=10)
            ended: list[Any] = []
            call.add_done_callback(ended.append)
            assert (await call.read()).index == 0        # committed
            assert not call.done() and call.cancel()
            with pytest.raises(asyncio.CancelledError):
                await call.read()
            assert call.cancelled() and (await call.code()) is grpc.StatusCode.CANCELLED
            for _ in range(300):
                if ch.endpoints()[0].in_flight == 0 and fleet[0].in_flight == 0 and ended:
                    break
                await asyncio.sleep(0.01)
            assert ch.endpoints()[0].in_flight == 0 and fleet[0].in_flight == 0
            assert ended == [call] and not call.cancel()

    run(body)


def test_bidi_requests_are_replayed() -> None:
    with ScriptedServer("bad", code=UNAVAILABLE) as bad, ScriptedServer("good") as good:
        async def body() -> None:
            config = {**retry_config(attempts=3), **PICK_FIRST}
            async with channel(target(bad.address, good.address), config, ready=2) as (
                    _, stub):
                call = stub.Bidi(timeout=5)
                await call.write(_req("0"))
                await call.write(_req("1"))
                assert (await call.read()).message == "0"      # from the good server
                await call.done_writing()
                assert [r.message async for r in call] == ["1"]
                assert (await call.code()) is grpc.StatusCode.OK
                assert (bad.calls, good.calls) == (1, 1)
                assert isinstance(call, grpc.aio.StreamStreamCall)

        run(body)


# ------------------------------------------------------------------ hedging
def test_hedging_cuts_the_tail_and_cancels_the_losers(fleet_factory: Any) -> None:
    fleet: Fleet = fleet_factory(3, aio=True)
    fleet[0].set_latency(0.5)

    async def latencies(config: dict[str, Any]) -> list[float]:
        async with channel(fleet.target, config, ready=3) as (_, stub):
            out = []
            for _ in range(9):
                t0 = time.monotonic()
                await stub.Unary(_req(), timeout=5)
                out.append(time.monotonic() - t0)
            return out

    async def body() -> None:
        plain = await latencies({})
        hedged = await latencies(hedging_config(attempts=3, delay="0.05s"))
        assert max(plain) >= 0.5                   # round robin reached the slow one
        assert max(hedged) < 0.35, hedged          # the hedge answered first
        for _ in range(300):
            if fleet[0].in_flight == 0:
                break
            await asyncio.sleep(0.01)
        assert fleet[0].in_flight == 0             # the slow attempts were cancelled

    run(body)


def test_hedging_fatal_code_ends_the_call_and_non_fatal_sends_the_next(
        fleet_factory: Any) -> None:
    fleet: Fleet = fleet_factory(3, aio=True)
    fleet[0].set_error_rate(1.0)                   # UNAVAILABLE: non-fatal

    async def body() -> None:
        async with channel(fleet.target, hedging_config(attempts=3, delay="1s"), ready=3) as (
                _, stub):
            for _ in range(6):
                t0 = time.monotonic()
                call = stub.Unary(_req(), timeout=5)
                assert (await call).address != fleet[0].address
                assert time.monotonic() - t0 < 0.9    # not the 1 s delay: sent at once
            fleet[0].set_error_rate(0.0)
            fleet.reset_counters()
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await stub.Unary(_req(fail_code=5), timeout=5)
            assert info.value.code() is grpc.StatusCode.NOT_FOUND
            assert sum(fleet.calls().values()) == 1

    run(body)


# ------------------------------------------------------------------ load, throttling
def test_killed_backend_under_load_causes_no_failure(fleet_factory: Any) -> None:
    fleet: Fleet = fleet_factory(3, aio=True, latency=0.1)
    victim = fleet[1]

    async def body() -> None:
        config = retry_config(attempts=5, initial="0.01s", maximum="0.1s")
        async with channel(fleet.target, config, ready=3) as (ch, stub):
            stop = asyncio.Event()
            ok, errors = [0], []

            async def worker() -> None:
                while not stop.is_set():
                    try:
                        await stub.Unary(_req("k"), timeout=5)
                        ok[0] += 1
                    except grpc.aio.AioRpcError as exc:
                        errors.append(exc.code())

            tasks = [asyncio.ensure_future(worker()) for _ in range(8)]
            try:
                for _ in range(500):
                    if victim.in_flight >= 2:
                        break
                    await asyncio.sleep(0.005)
                await asyncio.to_thread(victim.stop)      # in-flight calls are cut off
                at_kill = ok[0]
                await asyncio.sleep(0.5)
                served_while_down = ok[0] - at_kill
                failed = next(e for e in ch.endpoints() if e.address == victim.address).failures
                await asyncio.to_thread(victim.start)
                await asyncio.sleep(0.3)
            finally:
                stop.set()
                await asyncio.gather(*tasks)
            assert errors == []
            assert served_while_down > 10 and failed >= 1

    run(body)


def test_retry_throttling_stops_retries() -> None:
    with ScriptedServer("a", code=UNAVAILABLE) as a, ScriptedServer("b", code=UNAVAILABLE) as b:
        async def body() -> None:
            config = retry_config(attempts=3, throttling={"maxTokens": 4, "tokenRatio": 0.5})
            async with channel(target(a.address, b.address), config, ready=2) as (ch, stub):
                attempts = []
                for _ in range(4):
                    n = a.calls + b.calls
                    with pytest.raises(grpc.aio.AioRpcError):
                        await stub.Unary(_req(), timeout=5)
                    attempts.append(a.calls + b.calls - n)
                # 4 tokens: at 2 (= maxTokens/2) retries stop; each failure takes one
                assert attempts == [2, 1, 1, 1], attempts
                assert ch._ctx.throttle is not None and ch._ctx.throttle.tokens == 0

        run(body)


# ------------------------------------------------------------------ cancel, close
def test_cancel_and_close_during_a_backoff() -> None:
    with ScriptedServer(code=UNAVAILABLE, pushback="3000") as server:
        async def body() -> None:
            config = retry_config(attempts=3)
            async with channel(target(server.address), config, ready=1) as (ch, stub):
                call = stub.Unary(_req(), timeout=10)
                done: list[Any] = []
                call.add_done_callback(done.append)
                while server.calls < 1:
                    await asyncio.sleep(0.01)
                await asyncio.sleep(0.05)                 # now in the 3 s pushback
                t0 = time.monotonic()
                assert not call.done() and call.cancel()
                with pytest.raises(asyncio.CancelledError):
                    await call
                assert time.monotonic() - t0 < 1.0 and call.cancelled() and call.done()
                assert (await call.code()) is grpc.StatusCode.CANCELLED
                assert done == [call] and not call.cancel()
                second = stub.Unary(_req(), timeout=10)
                while server.calls < 2:
                    await asyncio.sleep(0.01)
                await asyncio.sleep(0.05)
                t0 = time.monotonic()
                await ch.close()
                with pytest.raises(grpc.aio.AioRpcError) as info:
                    await second
                assert info.value.code() is grpc.StatusCode.CANCELLED
                assert time.monotonic() - t0 < 1.0
            assert server.calls == 2

        run(body)


def test_throttled_hedging_sends_no_more_hedges(fleet_factory: Any) -> None:
    fleet: Fleet = fleet_factory(3, aio=True)
    for b in fleet:
        b.set_error_rate(1.0)

    async def body() -> None:
        config = hedging_config(attempts=3, delay="0s",
                                throttling={"maxTokens": 2, "tokenRatio": 0.1})
        async with channel(fleet.target, config, ready=3) as (ch, stub):
            for _ in range(3):
                with pytest.raises(grpc.aio.AioRpcError) as info:
                    await stub.Unary(_req(), timeout=5)
                assert info.value.code() is UNAVAILABLE
            # 2 tokens: the first call's failures take them below maxTokens/2 and its
            # pending hedges stop; later calls send only their first attempt
            assert ch._ctx.throttle is not None and ch._ctx.throttle.tokens == 0
            fleet.reset_counters()
            with pytest.raises(grpc.aio.AioRpcError):
                await stub.Unary(_req(), timeout=5)
            assert sum(fleet.calls().values()) == 1

    run(body)


def test_wait_for_ready_retried_call_waits_for_a_backend(fleet_factory: Any) -> None:
    fleet: Fleet = fleet_factory(1, aio=True)
    fleet[0].stop()

    async def body() -> None:
        config = retry_config(attempts=3, waitForReady=True)
        async with lbclient.aio.insecure_channel(
                fleet.target, service_config=config,
                options=[("grpc.initial_reconnect_backoff_ms", 100),
                         ("grpc.max_reconnect_backoff_ms", 200)]) as ch:
            stub = echo_pb2_grpc.EchoStub(ch)
            call = stub.Unary(_req(), timeout=10)
            await asyncio.sleep(0.3)
            assert not call.done()
            await asyncio.to_thread(fleet[0].start)
            assert (await call).address == fleet[0].address
            assert call.previous_rpc_attempts == 0 and ch.endpoints()[0].in_flight == 0

    run(body)
