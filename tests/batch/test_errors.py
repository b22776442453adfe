"""Batch failures end in one typed answer, never in a loop: deadlines, error codes, poison
messages and responses too large for the broker, on real brokers."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import pytest
from aiohttp import web

from tests.batch.conftest import (
    BrokerKit,
    NatsKit,
    RabbitKit,
    count,
    envelope,
    fake_model_entry,
    make_kit,
)
from tests.batch.support import models
from tests.conftest import StartLingo, free_port, wait_for


@dataclass
class Backend:
    """An HTTP server standing in for a model: answers `status` with `size` bytes of text, counts runs."""

    url: str
    status: int = 200
    size: int = 16
    #: Seconds before each answer.
    delay: float = 0.0
    runs: list[float] = field(default_factory=list)


@pytest.fixture
async def backend() -> AsyncIterator[Backend]:
    state = Backend("")

    async def handle(request: web.Request) -> web.Response:
        await request.read()
        state.runs.append(time.monotonic())
        if state.delay:
            await asyncio.sleep(state.delay)
        if state.status != 200:
            return web.json_response({"error": {"message": "busy"}}, status=state.status)
        return web.json_response({"object": "text_completion", "text": "x" * state.size})

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    state.url = f"http://127.0.0.1:{port}"
    yield state
    await runner.cleanup()


@pytest.fixture(params=["mem", "nats", "rabbit"])
async def any_kit(request: pytest.FixtureRequest) -> AsyncIterator[BrokerKit]:
    broker = make_kit(request.param, request)
    try:
        yield broker
    finally:
        await broker.cleanup()


@pytest.fixture
async def nats_kit(request: pytest.FixtureRequest) -> AsyncIterator[NatsKit]:
    broker = make_kit("nats", request)
    assert isinstance(broker, NatsKit)
    try:
        yield broker
    finally:
        await broker.cleanup()


def static(backend: Backend, name: str = "echo") -> str:
    return models(f"  - name: {name}\n    endpoints: ['{backend.url}']\n")


async def test_a_response_too_large_for_nats_is_answered_once_with_response_too_large(
    nats_kit: NatsKit, start_lingo: StartLingo, backend: Backend
) -> None:
    # NATS refuses messages over max_payload (1 MiB by default): 1 MB of metadata plus a 64 kB answer.
    kit = nats_kit
    await kit.setup()
    backend.size = 64 * 1024
    lingo = await start_lingo(static(backend), messengers=[kit.messenger()])
    metadata = {"custom_id": "big", "padding": "p" * 1_000_000}
    await kit.publish(envelope("big", model="echo", metadata=metadata))

    responses = await kit.collect(1, timeout=15)
    await kit.quiet(2.0)

    assert len(backend.runs) == 1, f"the model ran {len(backend.runs)} times for one message"
    assert len(responses) == 1
    (response,) = responses
    assert response.status_code == 500
    assert response.metadata == metadata, "the metadata fits beside the small error: kept"
    assert response.error["code"] == "RESPONSE_TOO_LARGE"
    assert response.body["error"]["code"] == "response_too_large"
    await wait_for(lambda: count(lingo, "error") == 1, timeout=5)  # counted once acked
    assert count(lingo, "nacked") == 0


async def test_a_too_large_response_whose_metadata_does_not_fit_either_is_answered_with_null_metadata(
    start_lingo: StartLingo, backend: Backend
) -> None:
    from lingo.batch.brokers import mem

    kit = make_kit("mem", None)  # type: ignore[arg-type]
    try:
        mem.topic(f"resp-{kit.unique}").max_message_size = 2_000
        backend.size = 4_000
        lingo = await start_lingo(static(backend), messengers=[kit.messenger()])
        metadata = {"custom_id": "big", "padding": "p" * 3_000}
        await kit.publish(envelope("big", model="echo", metadata=metadata))

        (response,) = await kit.collect(1, timeout=15)

        assert response.metadata is None
        assert response.error["code"] == "RESPONSE_TOO_LARGE"
        assert "larger than the broker accepts" in response.error["message"]
        assert len(backend.runs) == 1
        await wait_for(lambda: count(lingo, "error") == 1, timeout=5)
        assert count(lingo, "nacked") == 0
    finally:
        await kit.cleanup()


async def test_each_failure_without_a_backend_answer_carries_its_typed_error_code(
    kit: BrokerKit, start_lingo: StartLingo, backend: Backend
) -> None:
    await kit.setup()
    entries = (
        f"  - name: echo\n    endpoints: ['{backend.url}']\n"
        f"  - name: gone\n    endpoints: ['http://127.0.0.1:{free_port()}']\n"
    )
    lingo = await start_lingo(models(entries), messengers=[kit.messenger()], backend_retries=0)
    past = time.time() - 10
    sent = {
        "invalid": envelope("invalid", model="echo", options={"max_attempts": 0}),
        "unknown": envelope("unknown", model="no-such-model"),
        "unreachable": envelope("unreachable", model="gone", options={"max_attempts": 1}),
        "late": envelope("late", model="echo", options={"deadline": past}),
        "fine": envelope("fine", model="echo"),
    }
    for data in sent.values():
        await kit.publish(data)

    responses = {r.custom_id: r for r in await kit.collect(len(sent), timeout=30)}

    codes = {name: (r.status_code, r.error and r.error["code"]) for name, r in responses.items()}
    assert codes == {
        "invalid": (400, "INVALID_REQUEST"),
        "unknown": (404, "MODEL_NOT_FOUND"),
        "unreachable": (502, "INFERENCE_ERROR"),
        "late": (504, "DEADLINE_EXCEEDED"),
        "fine": (200, None),
    }
    for name in ("invalid", "unknown", "unreachable", "late"):
        assert responses[name].body["error"]["message"], "the OpenAI error body is still there"
        assert responses[name].error["message"]
    assert len(backend.runs) == 1, "only the good message reached a backend"
    # Counted once acked, which may be just after the response arrived.
    outcomes = {"error": 3, "invalid": 1, "answered": 1}
    await wait_for(lambda: {name: count(lingo, name) for name in outcomes} == outcomes, timeout=5)


async def test_transient_failures_are_retried_until_the_deadline_then_answered_deadline_exceeded(
    any_kit: BrokerKit, start_lingo: StartLingo, backend: Backend
) -> None:
    kit = any_kit
    await kit.setup()
    backend.status = 503
    lingo = await start_lingo(static(backend), messengers=[kit.messenger()], backend_retries=0)
    deadline = time.time() + 4
    await kit.publish(envelope("soon", model="echo", options={"deadline": deadline}))

    (response,) = await kit.collect(1, timeout=15)
    answered = time.time()

    assert response.status_code == 504
    assert response.error["code"] == "DEADLINE_EXCEEDED"
    assert "status 503" in response.error["message"]
    assert len(backend.runs) >= 3, "retried with backoff (about 1 s, 2 s) until the deadline"
    assert count(lingo, "retried") == len(backend.runs) - 1
    assert answered < deadline + 1.0, "answered at the deadline, not after another backoff"
    await kit.quiet(0.5)
    assert len(kit.collected) == 1


async def test_a_deadline_bounds_the_wait_for_an_endpoint(start_lingo: StartLingo) -> None:
    kit = make_kit("mem", None)  # type: ignore[arg-type]
    try:
        cold = fake_model_entry("cold", "--startup-delay", "60", min_replicas=0, max_replicas=1)
        await start_lingo(models(cold), messengers=[kit.messenger()])
        started = time.time()
        await kit.publish(envelope("cold-1", model="cold", options={"deadline": started + 2}))

        (response,) = await kit.collect(1, timeout=10)

        assert response.error["code"] == "DEADLINE_EXCEEDED"
        assert time.time() - started < 3.5, "the wait ended at the deadline, not at LINGO_MAX_WAIT"
    finally:
        await kit.cleanup()


async def test_a_message_past_its_deadline_on_receipt_is_answered_at_once_without_running(
    start_lingo: StartLingo, backend: Backend
) -> None:
    kit = make_kit("mem", None)  # type: ignore[arg-type]
    try:
        await start_lingo(static(backend), messengers=[kit.messenger()])
        await kit.publish(envelope("old", model="echo", options={"deadline": 1_000_000_000}))

        (response,) = await kit.collect(1, timeout=5)

        assert (response.status_code, response.error["code"]) == (504, "DEADLINE_EXCEEDED")
        assert "passed after 0 attempt(s)" in response.error["message"]
        assert backend.runs == []
    finally:
        await kit.cleanup()


async def test_a_message_delivered_too_often_is_answered_and_acked_instead_of_looping(
    start_lingo: StartLingo, backend: Backend
) -> None:
    from lingo.batch.brokers import mem

    kit = make_kit("mem", None)  # type: ignore[arg-type]
    try:
        # Its answer cannot be published twice: nacked, redelivered, and on the third delivery
        # (more than 2) answered without running it again.
        mem.topic(f"resp-{kit.unique}").fail_publishes = 2
        lingo = await start_lingo(static(backend), messengers=[kit.messenger()], batch_max_deliveries=2)
        await kit.publish(envelope("poison", model="echo"))

        (response,) = await kit.collect(1, timeout=20)
        await kit.quiet(1.0)

        assert len(kit.collected) == 1
        assert (response.status_code, response.error["code"]) == (500, "INFERENCE_ERROR")
        assert "delivered 3 times" in response.error["message"]
        assert len(backend.runs) == 2
        await wait_for(lambda: count(lingo, "error") == 1, timeout=5)
        assert count(lingo, "nacked") == 2
        assert await kit.requests_left() == 0, "acked"
    finally:
        await kit.cleanup()


@pytest.fixture(params=["nats", "rabbit"])
async def durable(request: pytest.FixtureRequest) -> AsyncIterator[BrokerKit]:
    broker = make_kit(request.param, request)
    try:
        yield broker
    finally:
        await broker.cleanup()


@pytest.mark.timeout(120)  # hung once in a full run (not reproduced alone): fail fast, not at 300 s
async def test_a_poison_message_stops_running_after_max_deliveries_on_a_real_broker(
    durable: BrokerKit, start_lingo: StartLingo, backend: Backend
) -> None:
    kit = durable
    await kit.setup()
    # The broken responses place takes one message and refuses the rest: the filler's answer
    # goes in, every answer to the poison message is refused until the filler's is taken out.
    await kit.break_responses()
    lingo = await start_lingo(
        static(backend), messengers=[kit.messenger(max_handlers=1)], batch_max_deliveries=2
    )
    await kit.publish(envelope("filler", model="echo"))
    await wait_for(lambda: count(lingo, "answered") == 1, timeout=15)
    await kit.publish(envelope("poison", model="echo"))

    # Run twice, then answered without running (that answer is refused too while broken).
    await wait_for(lambda: count(lingo, "nacked") >= 3, timeout=30)
    runs = len(backend.runs)
    await kit.collect(1, timeout=10)  # taking the filler's answer makes room for the next one
    responses = {r.custom_id: r for r in await kit.collect(2, timeout=30)}
    await kit.quiet(1.0)

    assert runs == 3 and len(backend.runs) == 3, "filler once, poison twice, then never again"
    poison = responses["poison"]
    assert (poison.status_code, poison.error["code"]) == (500, "INFERENCE_ERROR")
    assert "more than LINGO_BATCH_MAX_DELIVERIES=2" in poison.error["message"]
    assert len(kit.collected) == 2
    if isinstance(kit, NatsKit):  # JetStream's own limit, a few deliveries above lingo's
        info = await (await kit._js()).consumer_info(kit.req_stream, "lingo")
        assert info.config.max_deliver == 2 + 5
    await lingo.batch.stop(grace=1)
    assert await kit.requests_left() == 0, "acked: it does not come back"


async def test_a_response_over_pubsubs_10_mb_limit_is_answered_with_response_too_large(
    start_lingo: StartLingo, backend: Backend, request: pytest.FixtureRequest
) -> None:
    kit = make_kit("gcppubsub", request)
    try:
        await kit.setup()
        backend.size = 8_000_000
        lingo = await start_lingo(static(backend), messengers=[kit.messenger()])
        metadata = {"custom_id": "big", "padding": "p" * 3_000_000}
        await kit.publish(envelope("big", model="echo", metadata=metadata))

        (response,) = await kit.collect(1, timeout=30)

        assert response.error["code"] == "RESPONSE_TOO_LARGE"
        assert response.metadata == metadata, "3 MB of metadata fits beside the error"
        assert len(backend.runs) == 1
        assert count(lingo, "nacked") == 0
    finally:
        await kit.cleanup()


@pytest.fixture(params=["rabbit-quorum"])
async def counting_kit(request: pytest.FixtureRequest) -> AsyncIterator[BrokerKit]:
    """Brokers that count deliveries themselves, so the count survives a lingo restart: a quorum
    queue for RabbitMQ. (Pub/Sub with a dead-letter policy counts too, but a message handed back at
    shutdown comes back only when its lease ends, a minute later: too slow here. NATS counts, but a
    message nak'd at shutdown came back with `num_delivered` 1 on the server here.)"""
    broker = make_kit(request.param.split("-")[0], request)
    try:
        await broker.setup()
        if isinstance(broker, RabbitKit):
            channel = await broker._channel()
            await channel.declare_queue(broker.req_queue, durable=True, arguments={"x-queue-type": "quorum"})
        yield broker
    finally:
        await broker.cleanup()


async def test_the_brokers_delivery_count_stops_a_message_that_kills_lingo_each_time(
    counting_kit: BrokerKit, start_lingo: StartLingo, backend: Backend
) -> None:
    kit = counting_kit
    backend.delay = 8  # never answers in time: lingo is stopped with the message in flight
    first = await start_lingo(static(backend), messengers=[kit.messenger()], batch_max_deliveries=1)
    await kit.publish(envelope("deadly", model="echo"))
    await wait_for(lambda: len(backend.runs) == 1, timeout=20)
    await first.batch.stop(grace=0.1)  # as if lingo died: the message goes back to the broker

    # A fresh lingo has counted nothing itself: only the broker knows this is a redelivery.
    lingo = await start_lingo(static(backend), messengers=[kit.messenger()], batch_max_deliveries=1)
    (response,) = await kit.collect(1, timeout=20)

    assert (response.status_code, response.error["code"]) == (500, "INFERENCE_ERROR")
    assert "more than LINGO_BATCH_MAX_DELIVERIES=1" in response.error["message"]
    assert len(backend.runs) == 1, "not run again"
    await wait_for(lambda: count(lingo, "error") == 1, timeout=5)


async def test_a_response_over_a_jetstream_streams_max_msg_size_is_answered_with_response_too_large(
    nats_kit: NatsKit, start_lingo: StartLingo, backend: Backend
) -> None:
    kit = nats_kit
    await kit.setup(max_msg_size=2_000)  # the responses stream's own limit, far below max_payload
    backend.size = 4_000
    lingo = await start_lingo(static(backend), messengers=[kit.messenger()])
    await kit.publish(envelope("wide", model="echo"))

    (response,) = await kit.collect(1, timeout=15)

    assert response.error["code"] == "RESPONSE_TOO_LARGE"
    assert response.custom_id == "wide", "the metadata fits: kept"
    assert len(backend.runs) == 1
    assert count(lingo, "nacked") == 0


@pytest.mark.parametrize(("broker", "size"), [("awssqs", 300_000), ("kafka", 1_200_000)])
async def test_a_response_over_the_brokers_message_limit_is_answered_with_response_too_large(
    start_lingo: StartLingo, backend: Backend, request: pytest.FixtureRequest, broker: str, size: int
) -> None:
    # SQS refuses messages over 256 KiB, aiokafka's producer requests over 1 MiB.
    kit = make_kit(broker, request)
    try:
        await kit.setup()
        backend.size = size
        lingo = await start_lingo(static(backend), messengers=[kit.messenger()])
        await kit.publish(envelope("big", model="echo"))

        (response,) = await kit.collect(1, timeout=30)

        assert response.error["code"] == "RESPONSE_TOO_LARGE"
        assert response.metadata == {"custom_id": "big"}
        assert len(backend.runs) == 1
        assert count(lingo, "nacked") == 0
    finally:
        await kit.cleanup()
