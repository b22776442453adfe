"""What the SQS, Redis Streams and Kafka adapters add beyond the shared batch suite: delivery counts
across nacks, the SQS redrive policy as the dead-letter path, and Redis taking over what a dead
consumer left pending. Real servers: moto, the machine's Redis, Tansu."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator

import pytest

from lingo.batch.brokers import ReceiveOptions, open_subscription
from lingo.batch.urls import parse_url
from tests.batch.conftest import BrokerKit, RedisKit, SqsKit, envelope, fake_model_entry, make_kit
from tests.batch.support import models
from tests.conftest import StartLingo


@pytest.fixture(params=["awssqs", "redisstream", "kafka"])
async def new_kit(request: pytest.FixtureRequest) -> AsyncIterator[BrokerKit]:
    broker = make_kit(request.param, request)
    try:
        yield broker
    finally:
        await broker.cleanup()


async def receive_one(subscription, timeout: float = 20.0):  # type: ignore[no-untyped-def]
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while loop.time() < deadline:
        messages = await subscription.receive(1, 1.0)
        if messages:
            return messages[0]
    raise AssertionError(f"nothing received in {timeout}s")


async def test_each_redelivery_after_a_nack_counts_one_more_delivery(new_kit: BrokerKit) -> None:
    kit = new_kit
    await kit.setup()
    subscription = open_subscription(parse_url(kit.requests_url(), "receive"), ReceiveOptions(10))
    await subscription.open()
    try:
        message_id = await kit.publish(envelope("counted"), {"note": "kept"})

        first = await receive_one(subscription)
        counted_first = first.deliveries  # Kafka hands out the same object again
        await first.nack(0)
        second = await receive_one(subscription)

        assert (first.id, second.id) == (message_id, message_id)
        assert (counted_first, second.deliveries) == (1, 2)
        assert second.data == envelope("counted")
        assert second.attributes.get("note") == "kept"
        await second.ack()
    finally:
        await subscription.close()
    if not isinstance(kit, SqsKit):  # SQS counts a deleted message until the next refresh
        assert await kit.requests_left() == 0


async def test_a_request_that_keeps_failing_moves_to_the_sqs_dead_letter_queue(
    request: pytest.FixtureRequest, start_lingo: StartLingo
) -> None:
    kit = make_kit("awssqs", request)
    assert isinstance(kit, SqsKit)
    try:
        await kit.setup()
        sqs = kit.client()
        dlq_url = await asyncio.to_thread(kit._create, f"lbt-dlq-{kit.unique}")
        dlq_arn = sqs.get_queue_attributes(QueueUrl=dlq_url, AttributeNames=["QueueArn"])["Attributes"][
            "QueueArn"
        ]
        policy = json.dumps({"deadLetterTargetArn": dlq_arn, "maxReceiveCount": "2"})
        await asyncio.to_thread(
            sqs.set_queue_attributes,
            QueueUrl=kit.urls[kit.req_queue],
            Attributes={"RedrivePolicy": policy},
        )
        await kit.break_responses()  # every answer fails to publish: the request is nacked each time
        await start_lingo(
            models(fake_model_entry("fake", min_replicas=1, max_replicas=1)), messengers=[kit.messenger()]
        )
        await kit.publish(envelope("poison"))

        loop = asyncio.get_running_loop()
        deadline = loop.time() + 30
        moved: list[dict[str, object]] = []
        while not moved:
            assert loop.time() < deadline, "the request never reached the dead-letter queue"
            answer = await asyncio.to_thread(sqs.receive_message, QueueUrl=dlq_url, WaitTimeSeconds=1)
            moved = answer.get("Messages") or []

        assert moved[0]["Body"] == envelope("poison").decode()
        assert await kit.requests_left() == 0
    finally:
        await kit.cleanup()


async def test_redis_entries_a_dead_consumer_left_pending_are_claimed_after_the_lease(
    request: pytest.FixtureRequest,
) -> None:
    kit = make_kit("redisstream", request)
    assert isinstance(kit, RedisKit)
    url = parse_url(f"redisstream://{kit.req_stream}?group=lingo&lease=1s", "receive")
    dead = open_subscription(url, ReceiveOptions(10))
    alive = open_subscription(url, ReceiveOptions(10))
    await dead.open()
    await alive.open()
    try:
        message_id = await kit.publish(envelope("orphan"))
        taken = await receive_one(dead)
        await dead.close()  # gone without an ack: the entry stays pending on its consumer

        claimed = await receive_one(alive, timeout=10)

        assert (taken.id, claimed.id) == (message_id, message_id)
        assert claimed.deliveries == 2
        await claimed.ack()
        assert await kit.requests_left() == 0
    finally:
        await alive.close()
        await kit.cleanup()
