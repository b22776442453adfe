"""Batch failures end in one typed answer, never in a loop: deadlines, error codes, poison
messages and responses too large for the broker, on real brokers."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import orjson
import pytest
from aiohttp import web

from tests.batch.conftest import BrokerKit, NatsKit, envelope, fake_model_entry, make_kit
from tests.conftest import StartLingo, wait_for


def models(*entries: str) -> str:
    return "models:\n" + "".join(entries)


def count(lingo, outcome: str) -> float:  # type: ignore[no-untyped-def]
    label = lingo.batch.streams[0].label
    value = lingo.metrics.prometheus.get_sample_value(
        "lingo_batch_messages_total", {"stream": label, "outcome": outcome}
    )
    return value or 0.0


@dataclass
class Backend:
    """An HTTP server standing in for a model: answers `status` with `size` bytes of text, counts runs."""

    url: str
    status: int = 200
    size: int = 16
    runs: list[float] = field(default_factory=list)


@pytest.fixture
async def backend() -> AsyncIterator[Backend]:
    state = Backend("")

    async def handle(request: web.Request) -> web.Response:
        await request.read()
        state.runs.append(time.monotonic())
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
    assert count(lingo, "error") == 1
    assert count(lingo, "nacked") == 0
