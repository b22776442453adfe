"""A broker backlog scales a model up within one autoscaling interval, without `?model=`."""

from __future__ import annotations

import asyncio
import time

import pytest

from tests.batch.conftest import NatsKit, envelope, fake_model_entry, make_kit
from tests.conftest import StartLingo

#: Seconds between autoscaler ticks in this test.
INTERVAL = 1.0


async def test_a_thousand_waiting_messages_ask_for_every_replica_within_one_interval(
    start_lingo: StartLingo, request: pytest.FixtureRequest
) -> None:
    kit = make_kit("nats", request)
    assert isinstance(kit, NatsKit)
    try:
        await kit.setup()
        # Replicas never get ready here (60 s startup): only the backlog can ask for more than one.
        model = fake_model_entry(
            "fake", "--startup-delay", "60", min_replicas=0, max_replicas=4, concurrency=8
        )
        lingo = await start_lingo(
            "models:\n" + model,
            messengers=[kit.messenger(max_handlers=8)],  # no ?model=: the split comes from the messages
            autoscaling_interval=INTERVAL,
            autoscaling_time_window=60.0,  # a long window of idle samples would make replicas creep up
        )
        await asyncio.sleep(2 * INTERVAL)  # idle samples in the moving average
        for i in range(1000):
            await kit.publish(envelope(f"m-{i}"))
        published = time.monotonic()

        deadline = published + 1.5 * INTERVAL
        while lingo.autoscaler.desired.get("fake", 0) < 4:
            assert time.monotonic() < deadline, (
                f"desired {lingo.autoscaler.desired.get('fake')} after {1.5 * INTERVAL}s; "
                f"backlog {lingo.registry.backlog('fake')}, average {lingo.autoscaler.average('fake'):.1f}"
            )
            await asyncio.sleep(0.02)
        took = time.monotonic() - published

        assert lingo.autoscaler.desired["fake"] == 4
        assert lingo.registry.backlog("fake") >= 900, "the backlog counts for the messages' model"
        print(f"4 replicas desired {took:.2f}s after 1,000 messages were published")
    finally:
        await kit.cleanup()
