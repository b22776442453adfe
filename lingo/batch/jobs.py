"""OpenAI batch files through a lingo batch stream: what `lingo batch run|publish|collect` do.

Input lines are OpenAI batch requests (`{"custom_id", "method": "POST", "url", "body"}`) or lingo
envelopes (`{"path", "metadata", "body"}`); each becomes an envelope whose `metadata.custom_id`
identifies it. Output lines are OpenAI batch results:
`{"id", "custom_id", "response": {"status_code", "request_id", "body"}, "error": null}`, where
`error` is lingo's typed `{code, message}` when no backend answered.
Delivery is at-least-once, so a response may arrive twice: the first one per `custom_id` is kept.
"""

from __future__ import annotations

import asyncio
import sys
import time
import uuid
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import IO, Any

import orjson

from lingo.batch.brokers import REQUEST_MESSAGE_ID, Publisher, Subscription

#: Publishes in flight at once when sending a file.
PUBLISH_CONCURRENCY = 64


class InputError(ValueError):
    """A line of the input file is not a batch request; the message names the line."""


@dataclass(frozen=True)
class BatchItem:
    """One request to send."""

    #: The caller's id for the request (OpenAI `custom_id`, or `metadata.custom_id`).
    custom_id: str
    #: The envelope to publish.
    data: bytes


def read_items(lines: Iterable[str | bytes]) -> list[BatchItem]:
    """Batch items from JSONL lines; blank lines are skipped, custom_ids must be unique."""
    items: list[BatchItem] = []
    seen: set[str] = set()
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            document = orjson.loads(line)
        except orjson.JSONDecodeError as exc:
            raise InputError(f"line {number}: not JSON ({exc})") from None
        if not isinstance(document, dict):
            raise InputError(f"line {number}: not a JSON object")
        item = _item(document, number)
        if item.custom_id in seen:
            raise InputError(f"line {number}: custom_id {item.custom_id!r} appears more than once")
        seen.add(item.custom_id)
        items.append(item)
    return items


def _item(document: dict[str, Any], number: int) -> BatchItem:
    if "custom_id" in document:
        custom_id = document["custom_id"]
        if not isinstance(custom_id, str) or not custom_id:
            raise InputError(f"line {number}: custom_id must be a non-empty string")
        method = document.get("method", "POST")
        if method != "POST":
            raise InputError(f"line {number}: method must be POST, not {method!r}")
        envelope = {
            "path": document.get("url"),
            "metadata": {"custom_id": custom_id},
            "body": document.get("body"),
        }
        return BatchItem(custom_id, orjson.dumps(envelope))
    if "url" in document or "method" in document:
        raise InputError(
            f"line {number}: custom_id is missing: an OpenAI batch line needs a unique custom_id string"
        )
    metadata = document.get("metadata")
    if "body" not in document or not isinstance(metadata, dict | None):
        raise InputError(
            f"line {number}: neither an OpenAI batch line (custom_id) nor an envelope (body, metadata)"
        )
    metadata = dict(metadata or {})
    custom_id = metadata.setdefault("custom_id", f"line-{number}")
    if not isinstance(custom_id, str) or not custom_id:
        raise InputError(f"line {number}: metadata.custom_id must be a non-empty string")
    return BatchItem(custom_id, orjson.dumps({**document, "metadata": metadata}))


def result_line(data: bytes, attributes: dict[str, str]) -> tuple[str | None, dict[str, Any]]:
    """(custom_id, OpenAI batch output line) from a response message; custom_id None if absent."""
    try:
        response = orjson.loads(data)
    except orjson.JSONDecodeError:
        response = None
    if not isinstance(response, dict):
        response = {"status_code": None, "metadata": None, "body": data.decode("utf-8", "replace")}
    metadata = response.get("metadata")
    custom_id = metadata.get("custom_id") if isinstance(metadata, dict) else None
    # Lingo's typed error (no backend answered) fills OpenAI's `error` field; the response stays.
    error = response.get("error")
    line: dict[str, Any] = {
        "id": f"batch_req_{uuid.uuid4().hex}",
        "custom_id": custom_id if isinstance(custom_id, str) else None,
        "response": {
            "status_code": response.get("status_code"),
            "request_id": attributes.get(REQUEST_MESSAGE_ID),
            "body": response.get("body"),
        },
        "error": error if isinstance(error, dict) else None,
    }
    return line["custom_id"], line


class Progress:
    """A progress line on stderr: redrawn in place on a terminal, printed now and then otherwise."""

    def __init__(
        self, total: int | None, stream: IO[str] | None = None, quiet: bool = False, publishing: bool = True
    ) -> None:
        #: Requests expected, when known.
        self.total = total
        #: False for `collect`, which publishes nothing (its line shows no publish count).
        self.publishing = publishing
        #: custom_ids answered with an error status (400 or more, or none).
        self.failed: list[str] = []
        #: Requests published so far.
        self.published = 0
        #: Distinct requests answered so far.
        self.answered = 0
        #: Answers by status code.
        self.statuses: Counter[int | None] = Counter()
        self._stream = stream or sys.stderr
        self._quiet = quiet
        self._tty = self._stream.isatty()
        self._started = time.monotonic()
        self._shown = 0.0

    def update(self, force: bool = False) -> None:
        if self._quiet:
            return
        now = time.monotonic()
        if not force and now - self._shown < (0.2 if self._tty else 5.0):
            return
        self._shown = now
        line = self.render(now)
        if self._tty:
            self._stream.write("\r\033[K" + line)
        else:
            self._stream.write(line + "\n")
        self._stream.flush()

    def render(self, now: float | None = None) -> str:
        elapsed = (now or time.monotonic()) - self._started
        total = self.total
        parts = []
        if self.publishing:
            parts.append(f"published {self.published}" + (f"/{total}" if total is not None else ""))
        parts.append(f"answered {self.answered}" + (f"/{total}" if total is not None else ""))
        if total:
            done = min(1.0, self.answered / total)
            filled = int(done * 30)
            parts.insert(0, f"[{'#' * filled}{'.' * (30 - filled)}] {done:4.0%}")
        parts.append(f"{elapsed:.0f}s")
        return "  ".join(parts)

    def finish(self) -> None:
        self.update(force=True)
        if self._tty and not self._quiet:
            self._stream.write("\n")

    def summary(self, missing: Iterable[str] = ()) -> str:
        """A few lines: answers by status, elapsed time, and which custom_ids are missing."""
        elapsed = time.monotonic() - self._started
        codes = ", ".join(f"{code}: {count}" for code, count in sorted(self.statuses.items(), key=str))
        lines = [f"answered {self.answered} request(s) in {elapsed:.1f}s" + (f" ({codes})" if codes else "")]
        for label, ids in (("failed", sorted(self.failed)), ("missing", sorted(missing))):
            if ids:
                shown = ", ".join(ids[:20]) + (f", … ({len(ids) - 20} more)" if len(ids) > 20 else "")
                lines.append(f"{label} {len(ids)}: {shown}")
        return "\n".join(lines)


async def publish_items(publisher: Publisher, items: Iterable[BatchItem], progress: Progress) -> None:
    """Publish every item, a bounded number at once; raises the first failure."""
    limit = asyncio.Semaphore(PUBLISH_CONCURRENCY)
    errors: list[BaseException] = []
    tasks: set[asyncio.Task[None]] = set()

    async def send(item: BatchItem) -> None:
        try:
            await publisher.publish(item.data, {"custom_id": item.custom_id})
        except Exception as exc:
            errors.append(exc)
            return
        finally:
            limit.release()
        progress.published += 1
        progress.update()

    for item in items:
        await limit.acquire()
        if errors:
            break
        task = asyncio.create_task(send(item))
        tasks.add(task)
        task.add_done_callback(tasks.discard)
    await asyncio.gather(*tasks)
    if errors:
        raise errors[0]


@dataclass
class CollectResult:
    """What `collect_responses` saw."""

    #: custom_ids answered (first answer kept).
    answered: set[str] = field(default_factory=set)
    #: custom_ids expected and not answered when collecting stopped.
    missing: set[str] = field(default_factory=set)
    #: Responses for a custom_id already answered (at-least-once delivery).
    duplicates: int = 0
    #: Responses for requests not in the expected set (another job sharing the topic).
    foreign: int = 0


async def collect_responses(
    subscription: Subscription,
    output: IO[bytes],
    progress: Progress,
    expected: set[str] | None = None,
    count: int | None = None,
    timeout: float = 3600.0,
    errors: IO[bytes] | None = None,
) -> CollectResult:
    """Write responses to `output` until every expected custom_id (or `count` responses) arrived or
    `timeout` seconds passed. Each response is written and flushed before it is acked.

    Failures (status 400 or more) go to `errors` when given, as OpenAI splits output and error files.
    """
    result = CollectResult()
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout

    def done() -> bool:
        if expected is not None:
            return result.answered >= expected
        return count is not None and len(result.answered) + result.foreign >= count

    while not done():
        remaining = deadline - loop.time()
        if remaining <= 0:
            break
        messages = await subscription.receive(256, min(1.0, remaining))
        for message in messages:
            custom_id, line = result_line(message.data, dict(message.attributes))
            if custom_id is not None and custom_id in result.answered:
                result.duplicates += 1
            elif expected is not None and custom_id not in expected:
                result.foreign += 1
            else:
                status = line["response"]["status_code"]
                failed = not isinstance(status, int) or status >= 400
                target = errors if failed and errors is not None else output
                target.write(orjson.dumps(line) + b"\n")
                if custom_id is not None:
                    result.answered.add(custom_id)
                    if failed:
                        progress.failed.append(custom_id)
                progress.answered += 1
                progress.statuses[status] += 1
        if messages:
            output.flush()
            if errors is not None:
                errors.flush()
        for message in messages:
            await message.ack()
        progress.update()
    if expected is not None:
        result.missing = expected - result.answered
    return result


async def run_batch(
    items: list[BatchItem],
    publisher: Publisher,
    subscription: Subscription,
    output: IO[bytes],
    progress: Progress,
    timeout: float = 3600.0,
    errors: IO[bytes] | None = None,
) -> CollectResult:
    """Publish `items` and collect their responses (collecting starts first, so none is missed)."""
    expected = {item.custom_id for item in items}
    collector = asyncio.create_task(
        collect_responses(subscription, output, progress, expected, timeout=timeout, errors=errors)
    )
    try:
        await publish_items(publisher, items, progress)
        return await collector
    finally:
        if not collector.done():
            collector.cancel()
