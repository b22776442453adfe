"""Broker adapters behind one small interface (`base.Subscription`, `base.Publisher`).

Adapters are imported on first use, so a process that only talks NATS never loads the Google
Cloud libraries.
"""

from __future__ import annotations

from lingo.batch.brokers.base import (
    REQUEST_MESSAGE_ID,
    BrokerError,
    Message,
    PayloadTooLarge,
    Publisher,
    ReceiveOptions,
    Subscription,
)
from lingo.batch.urls import BrokerURL

__all__ = [
    "REQUEST_MESSAGE_ID",
    "BrokerError",
    "Message",
    "PayloadTooLarge",
    "Publisher",
    "ReceiveOptions",
    "Subscription",
    "open_publisher",
    "open_subscription",
]


def open_subscription(url: BrokerURL, options: ReceiveOptions) -> Subscription:
    """An unopened subscription for a receiving URL."""
    if url.scheme == "mem":
        from lingo.batch.brokers.mem import MemSubscription

        return MemSubscription(url)
    if url.scheme == "nats":
        from lingo.batch.brokers.nats import NatsSubscription

        return NatsSubscription(url, options)
    if url.scheme == "rabbit":
        from lingo.batch.brokers.rabbit import RabbitSubscription

        return RabbitSubscription(url, options)
    if url.scheme == "awssqs":
        from lingo.batch.brokers.aws import SqsSubscription

        return SqsSubscription(url, options)
    if url.scheme == "redisstream":
        from lingo.batch.brokers.redisstream import RedisSubscription

        return RedisSubscription(url, options)
    if url.scheme == "kafka":
        from lingo.batch.brokers.kafka import KafkaSubscription

        return KafkaSubscription(url, options)
    from lingo.batch.brokers.gcppubsub import PubSubSubscription

    return PubSubSubscription(url, options)


def open_publisher(url: BrokerURL, ensure_stream: bool = False) -> Publisher:
    """An unopened publisher for a publishing URL.

    `ensure_stream` (used when publishing requests): NATS creates a stream covering the subject
    where none does, so messages published before any consumer exists are kept; Redis streams
    are then never trimmed (a request must not be dropped unread).
    """
    if url.scheme == "mem":
        from lingo.batch.brokers.mem import MemPublisher

        return MemPublisher(url)
    if url.scheme == "nats":
        from lingo.batch.brokers.nats import NatsPublisher

        return NatsPublisher(url, ensure_stream=ensure_stream)
    if url.scheme == "rabbit":
        from lingo.batch.brokers.rabbit import RabbitPublisher

        return RabbitPublisher(url)
    if url.scheme == "awssqs":
        from lingo.batch.brokers.aws import SqsPublisher

        return SqsPublisher(url)
    if url.scheme == "awssns":
        from lingo.batch.brokers.aws import SnsPublisher

        return SnsPublisher(url)
    if url.scheme == "redisstream":
        from lingo.batch.brokers.redisstream import RedisPublisher

        return RedisPublisher(url, ensure_stream=ensure_stream)
    if url.scheme == "kafka":
        from lingo.batch.brokers.kafka import KafkaPublisher

        return KafkaPublisher(url)
    from lingo.batch.brokers.gcppubsub import PubSubPublisher

    return PubSubPublisher(url)
