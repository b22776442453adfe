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
    from lingo.batch.brokers.gcppubsub import PubSubSubscription

    return PubSubSubscription(url, options)


def open_publisher(url: BrokerURL, ensure_stream: bool = False) -> Publisher:
    """An unopened publisher for a publishing URL.

    `ensure_stream` (NATS): create a stream covering the subject where none does, so messages
    published before any consumer exists are kept (used when publishing requests).
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
    from lingo.batch.brokers.gcppubsub import PubSubPublisher

    return PubSubPublisher(url)
