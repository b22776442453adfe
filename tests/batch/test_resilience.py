"""Batch survives failures: HTTP keeps priority, a killed lingo loses nothing, NATS may restart."""

from __future__ import annotations

import asyncio
import signal
import time
from pathlib import Path

import aiohttp
import pytest

from lingo.batch import streams
from lingo.batch.brokers import nats as nats_broker
from lingo.queue import Priority
from tests.batch.conftest import (
    BrokerKit,
    NatsKit,
    NatsServer,
    collect_ids,
    envelope,
    fake_model_entry,
    make_kit,
)
from tests.batch.support import ServeProcess, models
from tests.conftest import StartLingo, wait_for


async def test_http_requests_wait_less_than_batch_messages_of_the_same_model(start_lingo: StartLingo) -> None:
    kit = make_kit("mem", None)  # type: ignore[arg-type]
    lingo = await start_lingo(
        models(fake_model_entry("busy", "--latency", "0.3", min_replicas=1, max_replicas=1, concurrency=2)),
        messengers=[kit.messenger(max_handlers=40)],
    )
    queue = lingo.registry.queues["busy"]
    await wait_for(lambda: bool(queue.endpoints), timeout=20)
    batch_count = 30
    for i in range(batch_count):
        await kit.publish(envelope(f"b-{i}", model="busy"))
    await wait_for(lambda: queue.queued_by(Priority.BATCH) >= 20, timeout=10)

    async def http_request(session: aiohttp.ClientSession) -> float:
        started = time.monotonic()
        body = {"model": "busy", "prompt": "hi", "max_tokens": 2}
        async with session.post(f"{lingo.url()}/v1/completions", json=body) as response:
            assert response.status == 200
            await response.read()
        return time.monotonic() - started

    started = time.monotonic()
    async with aiohttp.ClientSession() as session:
        http_latencies = await asyncio.gather(*(http_request(session) for _ in range(4)))
    await kit.collect(batch_count, timeout=30)
    batch_done = time.monotonic() - started

    # Four HTTP requests on two slots take two rounds (plus the one running): about 0.9 s, while
    # the batch backlog needs about 30 x 0.3 / 2 = 4.5 s.
    assert max(http_latencies) < 1.6, http_latencies
    assert max(http_latencies) < batch_done / 2, (http_latencies, batch_done)
    await kit.cleanup()


# -- lingo killed mid-run ---------------------------------------------------------------------------


async def test_every_message_is_answered_after_lingo_is_killed_mid_run_and_restarted(
    durable_kit: BrokerKit, tmp_path: Path
) -> None:
    kit = durable_kit
    await kit.setup()
    models_yaml = models(
        fake_model_entry("fake", "--latency", "0.1", min_replicas=1, max_replicas=1, concurrency=4)
    )
    messenger = kit.messenger(max_handlers=50)
    env = kit.environment()
    first = ServeProcess(tmp_path, models_yaml, messenger, env)
    second: ServeProcess | None = None
    try:
        await first.ready()
        wanted = {f"k-{i}" for i in range(200)}
        for custom_id in sorted(wanted):
            await kit.publish(envelope(custom_id))
        await kit.collect(30, timeout=30)

        first.kill(signal.SIGKILL)
        answered_before = len({r.custom_id for r in kit.collected})
        assert answered_before < len(wanted), "the kill should happen mid-run"
        second = ServeProcess(tmp_path, models_yaml, messenger, env)
        await second.ready()

        assert await collect_ids(kit, wanted, timeout=60) >= wanted
    finally:
        first.kill()
        if second is not None:
            second.kill(signal.SIGTERM)


async def test_a_subscription_whose_consumer_or_queue_vanished_is_reopened(
    durable_kit: BrokerKit, start_lingo: StartLingo, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(streams, "RECEIVE_TIMEOUT", 0.3)
    monkeypatch.setattr(nats_broker, "CONSUMER_CHECK_INTERVAL", 0.3)
    kit = durable_kit
    await kit.setup()
    lingo = await start_lingo(
        models(fake_model_entry("fake", min_replicas=1, max_replicas=1)), messengers=[kit.messenger()]
    )
    stream = lingo.batch.streams[0]
    await kit.publish(envelope("before"))
    await kit.collect(1, timeout=20)

    await kit.vanish_requests()
    await wait_for(lambda: stream.opens >= 2, timeout=20)
    await kit.publish(envelope("after"))

    responses = await kit.collect(2, timeout=20)
    assert [(r.custom_id, r.status_code) for r in responses] == [("before", 200), ("after", 200)]


# -- NATS restarted mid-run -------------------------------------------------------------------------


async def test_lingo_rides_out_a_nats_restart_and_finishes(
    private_nats: NatsServer, start_lingo: StartLingo, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("NATS_SERVER_URL", private_nats.url)
    kit = NatsKit("nats", server=private_nats.url)
    await kit.setup()
    # No stream named: lingo creates the default LINGO stream and `lingo` consumer on this fresh server.
    messenger = f"nats://{kit.req_subject}?ack_wait=2s|nats://{kit.resp_subject}|20"
    await start_lingo(
        models(fake_model_entry("fake", "--latency", "0.1", min_replicas=1, max_replicas=1, concurrency=2)),
        messengers=[messenger],
    )
    wanted = {f"n-{i}" for i in range(60)}
    for custom_id in sorted(wanted):
        await kit.publish(envelope(custom_id))
    await kit.collect(10, timeout=30)

    private_nats.stop()
    await asyncio.sleep(1.0)
    private_nats.start()

    assert await collect_ids(kit, wanted, timeout=60) >= wanted
    js = kit.client.jetstream()
    assert (await js.find_stream_name_by_subject(kit.req_subject)) == "LINGO"
    await kit.cleanup()
