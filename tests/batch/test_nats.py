"""NATS specifics: in-progress acks keep waiting messages from redelivery; default stream and
consumer names let several streams share the `LINGO` stream."""

from __future__ import annotations

import nats
import pytest

from tests.batch.conftest import NatsKit, NatsServer, envelope, fake_model_entry, make_kit
from tests.conftest import StartLingo


def models(*entries: str) -> str:
    return "models:\n" + "".join(entries)


async def test_in_progress_acks_keep_a_slow_message_from_being_redelivered(
    start_lingo: StartLingo, request: pytest.FixtureRequest
) -> None:
    kit = make_kit("nats", request)
    assert isinstance(kit, NatsKit)
    try:
        await kit.setup()
        # ack_wait 1 s, the model takes 3 s: without in-progress acks each message is redelivered
        # (and answered) several times.
        messenger = f"nats://{kit.req_subject}?stream={kit.req_stream}&ack_wait=1s|{kit.responses_url()}"
        await start_lingo(
            models(fake_model_entry("slow", "--latency", "3", min_replicas=1, max_replicas=1)),
            messengers=[messenger],
        )
        for custom_id in ("slow-1", "slow-2"):
            await kit.publish(envelope(custom_id, model="slow"))

        await kit.collect(2, timeout=30)
        responses = await kit.quiet(2.0)

        assert sorted(r.custom_id for r in responses) == ["slow-1", "slow-2"]
    finally:
        await kit.cleanup()


async def test_streams_share_the_default_stream_with_a_consumer_each(
    private_nats: NatsServer, start_lingo: StartLingo, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("NATS_SERVER_URL", private_nats.url)
    first, second = NatsKit("nats", server=private_nats.url), NatsKit("nats", server=private_nats.url)
    for kit in (first, second):
        await kit.setup()
    await start_lingo(
        models(fake_model_entry("fake", min_replicas=1, max_replicas=1)),
        messengers=[f"nats://{kit.req_subject}|nats://{kit.resp_subject}" for kit in (first, second)],
    )
    await first.publish(envelope("one"))
    await second.publish(envelope("two"))

    assert [r.custom_id for r in await first.collect(1)] == ["one"]
    assert [r.custom_id for r in await second.collect(1)] == ["two"]
    client = await nats.connect(private_nats.url)
    js = client.jetstream()
    info = await js.stream_info("LINGO")
    assert {first.req_subject, second.req_subject} <= set(info.config.subjects)
    consumers = {c.name: c.config.filter_subject for c in await js.consumers_info("LINGO")}
    # Whichever stream opened first took `lingo`; the other got a name of its own.
    [(other, subject)] = [(name, subject) for name, subject in consumers.items() if name != "lingo"]
    assert {consumers["lingo"], subject} == {first.req_subject, second.req_subject}
    assert other == f"lingo_{subject.replace('.', '_')}"
    await client.close()
    for kit in (first, second):
        await kit.cleanup()
