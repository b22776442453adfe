"""Batch streams end to end on every broker: in-process lingo, local platform, real brokers."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import orjson
import pytest
from aiohttp import web

from lingo.batch.brokers import mem
from lingo.config import ConfigError
from tests.batch.conftest import BrokerKit, count, envelope, fake_model_entry, make_kit
from tests.batch.support import models
from tests.conftest import StartLingo, wait_for


@dataclass
class Recorder:
    """An HTTP server standing in for a model: records every request it gets."""

    url: str
    seen: list[tuple[str, str]] = field(default_factory=list)


@pytest.fixture
async def recorder() -> AsyncIterator[Recorder]:
    seen: list[tuple[str, str]] = []

    async def handle(request: web.Request) -> web.Response:
        seen.append((request.method, request.path_qs))
        return web.json_response({"object": "chat.completion", "path": request.path})

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    yield Recorder(f"http://127.0.0.1:{port}", seen)
    await runner.cleanup()


async def test_messages_scale_a_model_from_zero_and_each_answer_carries_its_metadata(
    kit: BrokerKit, start_lingo: StartLingo
) -> None:
    await kit.setup()
    lingo = await start_lingo(
        models(fake_model_entry("fake", min_replicas=0, max_replicas=1)), messengers=[kit.messenger()]
    )
    assert not lingo.registry.queues["fake"].endpoints
    ids = [f"{kit.name}-{i}" for i in range(8)]
    for custom_id in ids:
        await kit.publish(envelope(custom_id))

    responses = await kit.collect(len(ids), timeout=60)

    assert sorted(r.custom_id for r in responses) == sorted(ids)
    assert {r.status_code for r in responses} == {200}
    assert all(r.body["object"] == "text_completion" for r in responses)
    assert all(r.attributes.get("request_message_id") for r in responses)
    assert lingo.registry.queues["fake"].endpoints, "the model was scaled up from zero"
    # Counted once acked, which follows the publish: a fast broker shows the response first.
    await wait_for(lambda: count(lingo, "answered") == len(ids), timeout=5)
    batch_200 = lingo.metrics.prometheus.get_sample_value(
        "lingo_requests_total", {"model": "fake", "source": "batch", "class": "batch", "code": "200"}
    )
    assert batch_200 == len(ids)


async def test_bad_messages_are_answered_400_or_404_once_and_never_reach_the_backend(
    kit: BrokerKit, start_lingo: StartLingo, recorder: Recorder
) -> None:
    await kit.setup()
    lingo = await start_lingo(
        models(f"  - name: echo\n    endpoints: ['{recorder.url}']\n"), messengers=[kit.messenger()]
    )
    good = orjson.dumps(
        {"path": "/v1/chat/completions", "metadata": {"custom_id": "good"}, "body": {"model": "echo"}}
    )
    refused_paths = {
        "metadata-url": "http://169.254.169.254/latest/meta-data/",
        "dotdot": "/v1/../admin",
        "query": "/v1/completions?debug=1",
        "scheme-relative": "//evil.example/v1/completions",
    }
    with_metadata = {
        "unknown-model": (envelope("unknown-model", model="no-such-model"), 404),
        "stream": (envelope("stream", model="echo", body={"model": "echo", "stream": True}), 400),
        "option-typo": (envelope("option-typo", model="echo", options={"timeout": 5}), 400),
        "good": (good, 200),
        **{name: (envelope(name, model="echo", path=path), 400) for name, path in refused_paths.items()},
    }
    without_metadata = [b"{not json", b'["an", "array"]', orjson.dumps({"body": {"model": "echo"}})]
    for data, _ in with_metadata.values():
        await kit.publish(data)
    for data in without_metadata:
        await kit.publish(data)

    total = len(with_metadata) + len(without_metadata)
    await kit.collect(total, timeout=30)
    responses = await kit.quiet(1.0)

    assert len(responses) == total, "each message is answered exactly once, no poison loop"
    by_id = {r.custom_id: r for r in responses if r.custom_id}
    assert {name: by_id[name].status_code for name in with_metadata} == {
        name: status for name, (_, status) in with_metadata.items()
    }
    anonymous = [r for r in responses if r.metadata is None]
    assert [r.status_code for r in anonymous] == [400] * len(without_metadata)
    assert all(r.body["error"]["type"] == "invalid_request_error" for r in anonymous)
    assert "not allowed" in by_id["dotdot"].body["error"]["message"]
    assert recorder.seen == [("POST", "/v1/chat/completions")], "only the good message reached the backend"
    assert count(lingo, "invalid") == len(refused_paths) + 2 + len(without_metadata)


async def test_transient_backend_failures_are_retried_until_answered(
    kit: BrokerKit, start_lingo: StartLingo
) -> None:
    await kit.setup()
    lingo = await start_lingo(
        models(fake_model_entry("flaky", "--fail-first", "2", min_replicas=1, max_replicas=1)),
        messengers=[kit.messenger()],
        backend_retries=0,
    )
    await kit.publish(envelope("flaky-1", model="flaky"))

    await kit.collect(1, timeout=30)
    responses = await kit.quiet(0.5)

    assert [(r.custom_id, r.status_code) for r in responses] == [("flaky-1", 200)]
    assert count(lingo, "retried") == 2


async def test_a_response_that_cannot_be_published_is_redelivered_and_answered_later(
    kit: BrokerKit, start_lingo: StartLingo
) -> None:
    await kit.setup()
    await kit.break_responses()
    lingo = await start_lingo(
        models(fake_model_entry("fake", min_replicas=1, max_replicas=1)), messengers=[kit.messenger()]
    )
    await kit.publish(envelope("first"))
    await kit.publish(envelope("second"))

    await wait_for(lambda: count(lingo, "nacked") >= 1, timeout=30)
    await kit.heal_responses()
    responses = await kit.collect(2, timeout=40)

    assert sorted(r.custom_id for r in responses) == ["first", "second"]
    assert {r.status_code for r in responses} == {200}


@pytest.fixture(params=["mem", "nats", "rabbit", "awssqs", "redisstream", "kafka"])
async def backlog_kit(request: pytest.FixtureRequest) -> AsyncIterator[BrokerKit]:
    broker = make_kit(request.param, request)
    try:
        yield broker
    finally:
        await broker.cleanup()


async def test_messages_waiting_on_the_broker_count_as_demand_for_the_hinted_model(
    backlog_kit: BrokerKit, start_lingo: StartLingo
) -> None:
    kit = backlog_kit
    await kit.setup()
    lingo = await start_lingo(
        models(fake_model_entry("slow", "--latency", "2", min_replicas=1, max_replicas=1)),
        messengers=[kit.messenger(max_handlers=1, model="slow")],
    )
    for i in range(6):
        await kit.publish(envelope(f"slow-{i}", model="slow"))

    await wait_for(lambda: lingo.registry.backlog("slow") >= 4, timeout=15)


async def test_stop_lets_messages_in_flight_finish_within_the_grace_period(start_lingo: StartLingo) -> None:
    kit = make_kit("mem", None)  # type: ignore[arg-type]
    try:
        lingo = await start_lingo(
            models(fake_model_entry("slowish", "--latency", "1", min_replicas=1, max_replicas=1)),
            messengers=[kit.messenger(max_handlers=2)],
        )
        for i in range(2):
            await kit.publish(envelope(f"slowish-{i}", model="slowish"))
        await wait_for(lambda: lingo.batch.streams[0].in_flight == 2, timeout=15)

        await lingo.batch.stop(grace=10)

        assert sorted(r.custom_id for r in await kit.collect(2, timeout=1)) == ["slowish-0", "slowish-1"]
        assert count(lingo, "nacked") == 0
    finally:
        await kit.cleanup()


async def test_stop_returns_unfinished_messages_to_the_broker(start_lingo: StartLingo) -> None:
    kit = make_kit("mem", None)  # type: ignore[arg-type]
    try:
        lingo = await start_lingo(
            models(fake_model_entry("slow", "--latency", "30", min_replicas=1, max_replicas=1)),
            messengers=[kit.messenger(max_handlers=3)],
        )
        for i in range(3):
            await kit.publish(envelope(f"slow-{i}", model="slow"))
        await wait_for(lambda: lingo.batch.streams[0].in_flight == 3, timeout=15)

        await lingo.batch.stop(grace=0.2)

        assert count(lingo, "nacked") == 3
        assert mem.topic(f"req-{kit.unique}").queue.qsize() == 3
    finally:
        await kit.cleanup()


async def test_a_bad_messenger_url_fails_at_start_naming_it(start_lingo: StartLingo) -> None:
    from lingo.batch import BatchStreams
    from tests.conftest import test_settings

    settings = test_settings(messengers=["nats://ok.subject|bogus://where"])
    with pytest.raises(ConfigError, match="bogus://where"):
        BatchStreams.from_settings(settings, None, None, None)  # type: ignore[arg-type]
