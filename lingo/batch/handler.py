"""One request message in, one response message out.

The request enters the shared per-model queue through `Forwarder.exchange` — the very path HTTP
requests take — in the batch class (served after waiting HTTP requests of the same model, and
only within the batch share of each endpoint's slots).
Transient failures are retried here with exponential backoff — up to `max_attempts`, or until the
request's `options.deadline` — permanent ones are answered at once. The message is acked only
after its response was published, and nacked when publishing failed, except when the broker
refused the response for its size (a small RESPONSE_TOO_LARGE error goes out instead) or the
message was delivered more than `max_deliveries` times (answered without running it again).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

from prometheus_client import Counter

from lingo.access_log import REQUEST_ID, AccessLog, new_request_id, seconds
from lingo.backoff import backoff_delay
from lingo.batch.brokers.base import REQUEST_MESSAGE_ID, PayloadTooLarge
from lingo.batch.delivery import Delivery
from lingo.batch.envelope import (
    DEADLINE_EXCEEDED,
    DEFAULT_PATHS,
    INFERENCE_ERROR,
    INVALID_REQUEST,
    MAX_TIMEOUT_SECONDS,
    MODEL_NOT_FOUND,
    RESPONSE_TOO_LARGE,
    Envelope,
    EnvelopeError,
    build_response,
    error_response,
    parse_envelope,
    response_body,
)
from lingo.errors import (
    BackendUnreachable,
    BadRequest,
    DeadlineExceeded,
    LingoError,
    ModelNotFound,
    ResponseTooLarge,
    TooManyDeliveries,
)
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
    #: Deliveries of one message after which it is answered with an error instead of run again.
    max_deliveries: int = 5


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
    #: The request's metadata, None when it could not be read.
    metadata: dict[str, Any] | None = None


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
        clock: Callable[[], float] = time.time,
        on_model: Callable[[str], None] = lambda model: None,
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
        #: Wall clock (Unix seconds) that `options.deadline` is compared with.
        self.clock = clock
        #: Told the model of every valid message (to split the broker's backlog by model).
        self.on_model = on_model
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
                answer = Answer(400, error.response(), None, "invalid", error.metadata)
                log.info(
                    "batch message refused",
                    extra={"stream": self.stream, "message_id": message.id, "reason": error.message},
                )
            else:
                self.on_model(envelope.model)
                if delivery.deliveries > self.retry.max_deliveries:
                    answer = self._give_up(envelope, delivery)
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

    def _give_up(self, envelope: Envelope, delivery: Delivery) -> Answer:
        """Answer a message delivered too often (lingo died on it, or its answer never went out)."""
        error = TooManyDeliveries(
            f"the message was delivered {delivery.deliveries} times, more than "
            f"LINGO_BATCH_MAX_DELIVERIES={self.retry.max_deliveries}; answered without running it again"
        )
        log.warning(
            "batch message delivered too often; answering it with an error",
            extra={
                "stream": self.stream,
                "message_id": delivery.message.id,
                "deliveries": delivery.deliveries,
            },
        )
        queue = self.registry.lookup(envelope.model)
        group = queue.group.name if queue is not None else None
        return self._error(error, envelope.metadata, INFERENCE_ERROR, group)

    async def _answer(self, envelope: Envelope, trace: Trace) -> Answer:
        options = envelope.options
        loop = asyncio.get_running_loop()
        deadline: float | None = None
        if options.deadline is not None:
            # Unix time → loop time; never more than a day ahead, so every wait stays bounded.
            deadline = loop.time() + min(options.deadline - self.clock(), MAX_TIMEOUT_SECONDS)
        # With a deadline, attempts go on until it unless the message caps them itself.
        attempts = options.max_attempts or (None if deadline is not None else self.retry.max_attempts)
        wait = options.timeout_seconds or self.forwarder.max_wait
        body = envelope.body_bytes()
        attempt = 0
        last = "the deadline had passed when the message arrived"
        while True:
            attempt += 1
            remaining = None if deadline is None else deadline - loop.time()
            if remaining is not None and remaining <= 0:
                return self._deadline_exceeded(envelope, attempt - 1, last)
            queue = self.registry.lookup(envelope.model)
            if queue is None:
                error = ModelNotFound(
                    f"The model `{envelope.model}` does not exist or is not served by this lingo."
                )
                return self._error(error, envelope.metadata, MODEL_NOT_FOUND, None)
            result = await self._attempt(
                queue, envelope, body, wait if remaining is None else min(wait, remaining), remaining, trace
            )
            if result is None:
                return self._deadline_exceeded(envelope, attempt, "the last attempt was still running")
            status, document, lingo_error = result
            group = queue.group.name
            if status in TRANSIENT_STATUSES and (attempts is None or attempt < attempts):
                delay = backoff_delay(attempt, self.retry.base, self.retry.cap)
                last = f"the last attempt ended with status {status}"
                if deadline is not None and loop.time() + delay >= deadline:
                    # The next attempt could not start before the deadline: answer now, not then.
                    return self._deadline_exceeded(envelope, attempt, last)
                self._count("retried")
                log.debug(
                    "transient failure; retrying",
                    extra={"stream": self.stream, "model": envelope.model, "status": status, "delay": delay},
                )
                await asyncio.sleep(delay)
                continue
            if lingo_error is not None:
                return self._error(lingo_error, envelope.metadata, _code(lingo_error), group)
            outcome = "answered" if status < 400 else "error"
            return Answer(
                status, build_response(status, envelope.metadata, document), group, outcome, envelope.metadata
            )

    def _deadline_exceeded(self, envelope: Envelope, attempts: int, last: str) -> Answer:
        error = DeadlineExceeded(f"options.deadline passed after {attempts} attempt(s); {last}")
        queue = self.registry.lookup(envelope.model)
        group = queue.group.name if queue is not None and attempts else None
        return self._error(error, envelope.metadata, DEADLINE_EXCEEDED, group)

    @staticmethod
    def _error(error: LingoError, metadata: dict[str, Any] | None, code: str, group: str | None) -> Answer:
        return Answer(error.status, error_response(error, metadata, code), group, "error", metadata)

    async def _attempt(
        self,
        queue: ModelQueue,
        envelope: Envelope,
        body: bytes,
        wait: float,
        limit: float | None,
        trace: Trace,
    ) -> tuple[int, object, LingoError | None] | None:
        """One trip through the shared queue to a backend: (status, response body, lingo's own
        error when no backend answered); None when it took longer than `limit` seconds."""
        cut = asyncio.timeout(limit)
        try:
            async with cut:
                return await self._exchange(queue, envelope, body, wait, trace)
        except LingoError as error:
            return error.status, error.body(), error
        except TimeoutError:
            if cut.expired():
                return None
            raise

    async def _exchange(
        self, queue: ModelQueue, envelope: Envelope, body: bytes, wait: float, trace: Trace
    ) -> tuple[int, object, LingoError | None]:
        loop = asyncio.get_running_loop()
        started = loop.time()
        trace.attempts += 1
        key = routing_key(envelope.path, envelope.body, queue.group.name) if queue.chooser.wants_key else None
        headers = {**REQUEST_HEADERS, REQUEST_ID: trace.request_id}
        try:
            async with self.forwarder.exchange(
                queue, "POST", envelope.path, headers, body, Priority.BATCH, timeout=wait, key=key
            ) as exchange:
                self.metrics.observe_wait(queue.group.name, exchange.waited)
                trace.wait += exchange.waited
                trace.ttfb = loop.time() - started - exchange.waited
                trace.endpoint = exchange.lease.url
                data = await exchange.response.read()
                trace.bytes_out = len(data)
                return exchange.response.status, response_body(data), None
        except OSError as exc:
            # The backend failed while sending its answer: worth another attempt, like a 502.
            raise BackendUnreachable(
                f"model group {queue.group.name!r} failed mid-response: {exc!r}"
            ) from None

    async def _respond(self, delivery: Delivery, answer: Answer, started: float) -> None:
        message = delivery.message
        try:
            answer = await self._publish(answer, message.id)
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

    async def _publish(self, answer: Answer, message_id: str) -> Answer:
        """Publish `answer`, or a small RESPONSE_TOO_LARGE error where the broker refuses its size
        (with the metadata if that fits, else null); the answer that went out."""
        attributes = {REQUEST_MESSAGE_ID: message_id}
        try:
            async with asyncio.timeout(PUBLISH_TIMEOUT):
                await self.publish(answer.payload, attributes)
            return answer
        except PayloadTooLarge as exc:
            log.warning(
                "response too large for the broker; publishing an error instead",
                extra={"stream": self.stream, "message_id": message_id, "bytes": len(answer.payload)},
            )
            error = ResponseTooLarge(
                f"the response ({len(answer.payload)} bytes, status {answer.status}) is larger than the "
                f"broker accepts: {exc}"
            )
        for metadata in (answer.metadata, None):
            small = self._error(error, metadata, RESPONSE_TOO_LARGE, answer.group)
            try:
                async with asyncio.timeout(PUBLISH_TIMEOUT):
                    await self.publish(small.payload, attributes)
            except PayloadTooLarge:
                if metadata is None:
                    raise
                continue
            return small
        raise AssertionError("unreachable: the last try either returns or raises")

    def _count(self, outcome: str) -> None:
        counter = self._outcomes.get(outcome)
        if counter is None:
            counter = self._outcomes[outcome] = self.metrics.batch_messages.labels(self.stream, outcome)
        counter.inc()


def _code(error: LingoError) -> str:
    """The typed code of a response lingo answers itself with `error`."""
    if isinstance(error, ModelNotFound):
        return MODEL_NOT_FOUND
    if isinstance(error, BadRequest):
        return INVALID_REQUEST
    return INFERENCE_ERROR
