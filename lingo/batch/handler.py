"""One request message in, one response message out.

The request enters the shared per-model queue through `Forwarder.exchange` — the very path HTTP
requests take — in the batch class (served after waiting HTTP requests of the same model, and
only within the batch share of each endpoint's slots).
Transient failures are retried here with exponential backoff; permanent ones are answered at once.
The message is acked only after its response was published, and nacked when publishing failed.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass

from prometheus_client import Counter

from lingo.access_log import REQUEST_ID, AccessLog, new_request_id, seconds
from lingo.backoff import backoff_delay
from lingo.batch.brokers.base import REQUEST_MESSAGE_ID
from lingo.batch.delivery import Delivery
from lingo.batch.envelope import (
    DEFAULT_PATHS,
    Envelope,
    EnvelopeError,
    build_response,
    parse_envelope,
    response_body,
)
from lingo.errors import BackendUnreachable, LingoError, ModelNotFound
from lingo.metrics import Metrics
from lingo.prompt_key import routing_key
from lingo.proxy.forwarder import Forwarder
from lingo.queue import ModelQueue, Priority
from lingo.registry import Registry

log = logging.getLogger(__name__)

#: Statuses worth another attempt later: overloaded, restarting, no endpoint in time, queue full.
TRANSIENT_STATUSES = frozenset({429, 502, 503, 504})
#: Seconds a publish may take before it counts as failed (and the message is nacked).
PUBLISH_TIMEOUT = 30.0
#: Headers of every batch request sent to a backend.
REQUEST_HEADERS = {"Content-Type": "application/json", "Accept": "application/json"}

#: Publishes one response message; raises when the broker did not take it.
Publish = Callable[[bytes, Mapping[str, str]], Awaitable[None]]


@dataclass(frozen=True)
class RetryPolicy:
    """How transient failures of one message are retried before the failure is answered."""

    #: Attempts per message unless the message's `options.max_attempts` says otherwise.
    max_attempts: int = 5
    #: Seconds before the first retry; doubled for each further one.
    base: float = 1.0
    #: Longest pause between attempts.
    cap: float = 30.0


@dataclass(slots=True)
class Trace:
    """What the access line of one message tells: filled in as its attempts go."""

    #: Sent to the backend as `X-Request-Id`.
    request_id: str
    #: Endpoint of the last attempt that reached one.
    endpoint: str = "-"
    #: Seconds waited in the queue, all attempts.
    wait: float = 0.0
    #: Seconds from leaving the queue to the backend's response head, last attempt.
    ttfb: float | None = None
    #: Trips to a backend (each may itself retry on another endpoint).
    attempts: int = 0
    #: Response body bytes from the backend, last attempt.
    bytes_out: int = 0


@dataclass(frozen=True)
class Answer:
    """The response to publish for one message, and how to count it."""

    #: HTTP status in the response.
    status: int
    #: The response message.
    payload: bytes
    #: Model group that handled it, None when the request never reached a queue.
    group: str | None
    #: `answered` (status < 400), `error` (any other status) or `invalid` (refused envelope).
    outcome: str


class MessageHandler:
    """Turns request messages into response messages for one stream."""

    def __init__(
        self,
        registry: Registry,
        forwarder: Forwarder,
        metrics: Metrics,
        publish: Publish,
        stream: str,
        *,
        allowed_paths: frozenset[str] = DEFAULT_PATHS,
        retry: RetryPolicy | None = None,
        nack_delay: Callable[[], float] = lambda: 0.0,
        access_log: AccessLog | None = None,
    ) -> None:
        #: Known models and their queues.
        self.registry = registry
        #: The shared path to backends (the one the HTTP proxy uses).
        self.forwarder = forwarder
        #: Where messages and requests are counted.
        self.metrics = metrics
        #: Publishes a response message.
        self.publish = publish
        #: The stream label (requests URL without credentials).
        self.stream = stream
        #: Paths requests may name.
        self.allowed_paths = allowed_paths
        #: Retries of transient failures.
        self.retry = retry or RetryPolicy()
        #: Seconds before a message whose response could not be published is redelivered.
        self.nack_delay = nack_delay
        #: One line per message when enabled.
        self.access_log = access_log or AccessLog(False)
        self._outcomes: dict[str, Counter] = {}

    async def handle(self, delivery: Delivery) -> None:
        """Answer one message and settle it; never raises except on cancellation."""
        loop = asyncio.get_running_loop()
        started = loop.time()
        message = delivery.message
        trace = Trace(new_request_id())
        envelope: Envelope | None = None
        try:
            try:
                envelope = parse_envelope(message.data, self.allowed_paths)
            except EnvelopeError as error:
                answer = Answer(400, error.response(), None, "invalid")
                log.info(
                    "batch message refused",
                    extra={"stream": self.stream, "message_id": message.id, "reason": error.message},
                )
            else:
                answer = await self._answer(envelope, trace)
            await self._respond(delivery, answer, started)
            if self.access_log.enabled:
                self._log_access(delivery, envelope, answer, trace, loop.time() - started)
        except Exception:
            log.exception("batch message handling failed", extra={"stream": self.stream})
            self._count("nacked")
            await delivery.nack(self.nack_delay())

    def _log_access(
        self, delivery: Delivery, envelope: Envelope | None, answer: Answer, trace: Trace, took: float
    ) -> None:
        self.access_log.write(
            {
                "request_id": trace.request_id,
                "source": "batch",
                "class": Priority.BATCH.name.lower(),
                "stream": self.stream,
                "message_id": delivery.message.id,
                "path": envelope.path if envelope is not None else "-",
                "model": envelope.model if envelope is not None else "-",
                "group": answer.group or "-",
                "endpoint": trace.endpoint,
                "status": answer.status,
                "wait": seconds(trace.wait),
                "ttfb": seconds(trace.ttfb),
                "duration": seconds(took),
                "bytes_in": len(delivery.message.data),
                "bytes_out": trace.bytes_out,
                "attempts": trace.attempts,
                "streamed": False,
                "outcome": answer.outcome,
            }
        )

    async def _answer(self, envelope: Envelope, trace: Trace) -> Answer:
        attempts = envelope.options.max_attempts or self.retry.max_attempts
        timeout = envelope.options.timeout_seconds or self.forwarder.max_wait
        body = envelope.body_bytes()
        for attempt in range(1, attempts + 1):
            queue = self.registry.lookup(envelope.model)
            if queue is None:
                error = ModelNotFound(
                    f"The model `{envelope.model}` does not exist or is not served by this lingo."
                )
                return Answer(
                    error.status, build_response(error.status, envelope.metadata, error.body()), None, "error"
                )
            status, document = await self._attempt(queue, envelope, body, timeout, trace)
            if status in TRANSIENT_STATUSES and attempt < attempts:
                self._count("retried")
                delay = backoff_delay(attempt, self.retry.base, self.retry.cap)
                log.debug(
                    "transient failure; retrying",
                    extra={"stream": self.stream, "model": envelope.model, "status": status, "delay": delay},
                )
                await asyncio.sleep(delay)
                continue
            outcome = "answered" if status < 400 else "error"
            return Answer(
                status, build_response(status, envelope.metadata, document), queue.group.name, outcome
            )
        raise AssertionError("unreachable: the last attempt always answers")

    async def _attempt(
        self, queue: ModelQueue, envelope: Envelope, body: bytes, timeout: float, trace: Trace
    ) -> tuple[int, object]:
        """One trip through the shared queue to a backend: (status, response body)."""
        loop = asyncio.get_running_loop()
        started = loop.time()
        trace.attempts += 1
        key = routing_key(envelope.path, envelope.body, queue.group.name) if queue.chooser.wants_key else None
        headers = {**REQUEST_HEADERS, REQUEST_ID: trace.request_id}
        try:
            async with self.forwarder.exchange(
                queue, "POST", envelope.path, headers, body, Priority.BATCH, timeout=timeout, key=key
            ) as exchange:
                trace.wait += exchange.waited
                trace.ttfb = loop.time() - started - exchange.waited
                trace.endpoint = exchange.lease.url
                self.metrics.observe_wait(queue.group.name, exchange.waited)
                data = await exchange.response.read()
                trace.bytes_out = len(data)
                return exchange.response.status, response_body(data)
        except LingoError as error:
            return error.status, error.body()
        except OSError as exc:
            # The backend failed while sending its answer: worth another attempt, like a 502.
            failed = BackendUnreachable(f"model group {queue.group.name!r} failed mid-response: {exc!r}")
            return failed.status, failed.body()

    async def _respond(self, delivery: Delivery, answer: Answer, started: float) -> None:
        message = delivery.message
        try:
            async with asyncio.timeout(PUBLISH_TIMEOUT):
                await self.publish(answer.payload, {REQUEST_MESSAGE_ID: message.id})
        except Exception as exc:
            delay = self.nack_delay()
            log.warning(
                "publishing the response failed; the request will be redelivered",
                extra={
                    "stream": self.stream,
                    "message_id": message.id,
                    "delay": round(delay, 2),
                    "error": repr(exc),
                },
            )
            self._count("nacked")
            await delivery.nack(delay)
            return
        await delivery.ack()
        self._count(answer.outcome)
        if answer.group is not None:
            elapsed = asyncio.get_running_loop().time() - started
            self.metrics.observe_request(answer.group, "batch", answer.status, elapsed, Priority.BATCH.label)

    def _count(self, outcome: str) -> None:
        counter = self._outcomes.get(outcome)
        if counter is None:
            counter = self._outcomes[outcome] = self.metrics.batch_messages.labels(self.stream, outcome)
        counter.inc()
