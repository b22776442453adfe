"""`lingo batch run|publish|collect`: OpenAI batch JSONL files through a lingo batch stream.

`--requests` is where lingo receives requests and `--responses` where it publishes answers, seen
from this side: for Google Pub/Sub give the requests *topic* and a *subscription* of the responses
topic; for NATS, RabbitMQ and mem the names are the same as in lingo's `--messenger`.
Exit status: 0 when every request was answered, 1 when some are missing or a broker failed,
2 for bad arguments or input.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import IO, Any

from lingo.batch.brokers import Publisher, ReceiveOptions, Subscription, open_publisher, open_subscription
from lingo.batch.jobs import (
    CollectResult,
    InputError,
    Progress,
    collect_responses,
    publish_items,
    read_items,
    run_batch,
)
from lingo.batch.urls import parse_url
from lingo.config import ConfigError, parse_duration

#: Responses a collector holds unacked at once.
COLLECT_OUTSTANDING = 256
#: Durable NATS consumer of the collector when the responses URL names none.
COLLECT_CONSUMER = "lingo-collect"


def add_parser(subparsers: Any) -> None:
    """Add `batch` and its sub-commands to the `lingo` command."""
    batch = subparsers.add_parser(
        "batch",
        help="send an OpenAI batch file through a lingo batch stream and collect the answers",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands = batch.add_subparsers(dest="batch_command", required=True)

    run = commands.add_parser("run", help="publish INPUT, collect every answer into OUTPUT")
    run.add_argument("input", help="JSONL file of OpenAI batch lines or envelopes ('-': stdin)")
    _requests_argument(run)
    _responses_argument(run)
    _collect_arguments(run)
    run.set_defaults(handler=_run)

    publish = commands.add_parser("publish", help="publish INPUT only")
    publish.add_argument("input", help="JSONL file of OpenAI batch lines or envelopes ('-': stdin)")
    _requests_argument(publish)
    publish.add_argument("--quiet", action="store_true", help="no progress on stderr")
    publish.set_defaults(handler=_publish)

    collect = commands.add_parser("collect", help="collect answers into OUTPUT")
    _responses_argument(collect)
    _collect_arguments(collect)
    collect.add_argument(
        "--input", help="the published file: collect until each of its custom_ids is answered"
    )
    collect.add_argument("--count", type=int, help="without --input: stop after this many answers")
    collect.set_defaults(handler=_collect)


def _requests_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--requests", required=True, help="where lingo receives requests (gcppubsub: the topic URL)"
    )


def _responses_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--responses", required=True, help="where lingo publishes answers (gcppubsub: a subscription URL)"
    )


def _collect_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "-o", "--output", required=True, help="JSONL file of OpenAI batch results ('-': stdout)"
    )
    parser.add_argument(
        "--errors",
        help="JSONL file for failed requests (default: beside OUTPUT, e.g. out.errors.jsonl; "
        "with OUTPUT '-' failures stay in OUTPUT)",
    )
    parser.add_argument(
        "--timeout", default="1h", help="stop collecting after this long (e.g. 90s, 30m; default 1h)"
    )
    parser.add_argument("--quiet", action="store_true", help="no progress on stderr")


def _run(args: argparse.Namespace) -> int:
    return _main(_run_async(args))


def _publish(args: argparse.Namespace) -> int:
    return _main(_publish_async(args))


def _collect(args: argparse.Namespace) -> int:
    return _main(_collect_async(args))


def _main(coroutine: Any) -> int:
    try:
        return int(asyncio.run(coroutine))
    except (ConfigError, InputError) as exc:
        print(f"lingo batch: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("lingo batch: interrupted", file=sys.stderr)
        return 1
    except Exception as exc:
        print(f"lingo batch: {exc}", file=sys.stderr)
        return 1


async def _run_async(args: argparse.Namespace) -> int:
    items = read_items(_lines(args.input))
    timeout = _timeout(args.timeout)
    progress = Progress(len(items), quiet=args.quiet)
    async with _subscription(args.responses) as subscription, _publisher(args.requests) as publisher:
        with _output(args.output) as output, _errors(args) as errors:
            result = await run_batch(
                items, publisher, subscription, output, progress, timeout=timeout, errors=errors
            )
            return _report(progress, result, errors)


async def _publish_async(args: argparse.Namespace) -> int:
    items = read_items(_lines(args.input))
    progress = Progress(len(items), quiet=args.quiet)
    async with _publisher(args.requests) as publisher:
        await publish_items(publisher, items, progress)
    progress.finish()
    print(f"published {progress.published} request(s)", file=sys.stderr)
    return 0


async def _collect_async(args: argparse.Namespace) -> int:
    expected = {item.custom_id for item in read_items(_lines(args.input))} if args.input else None
    if expected is None and args.count is None:
        raise ConfigError("collect needs --input (to know what to wait for) or --count")
    total = len(expected) if expected is not None else args.count
    progress = Progress(total, quiet=args.quiet, publishing=False)
    async with _subscription(args.responses) as subscription:
        with _output(args.output) as output, _errors(args) as errors:
            result = await collect_responses(
                subscription, output, progress, expected, args.count, _timeout(args.timeout), errors
            )
            return _report(progress, result, errors)


def _report(progress: Progress, result: CollectResult, errors: _LazyFile | None) -> int:
    progress.finish()
    print(progress.summary(result.missing), file=sys.stderr)
    if errors is not None and errors.opened:
        print(f"failed requests written to {errors.path}", file=sys.stderr)
    if result.duplicates or result.foreign:
        print(
            f"skipped {result.duplicates} duplicate answer(s) and {result.foreign} answer(s) to others",
            file=sys.stderr,
        )
    return 1 if result.missing else 0


def _timeout(text: str) -> float:
    try:
        return parse_duration(text)
    except ValueError as exc:
        raise ConfigError(f"--timeout: {exc}") from None


def _lines(path: str) -> Iterator[bytes]:
    if path == "-":
        yield from sys.stdin.buffer
        return
    try:
        with Path(path).open("rb") as file:
            yield from file
    except OSError as exc:
        raise InputError(f"cannot read {path}: {exc.strerror}") from None


@contextlib.contextmanager
def _output(path: str) -> Iterator[IO[bytes]]:
    if path == "-":
        yield sys.stdout.buffer
        return
    try:
        file = Path(path).open("wb")  # noqa: SIM115 - closed below, after the caller is done
    except OSError as exc:
        raise InputError(f"cannot write {path}: {exc.strerror}") from None
    with file:
        yield file


class _LazyFile:
    """A file created on its first write, so a run without failures leaves no empty error file."""

    def __init__(self, path: Path) -> None:
        #: Where the file goes.
        self.path = path
        self._file: IO[bytes] | None = None

    @property
    def opened(self) -> bool:
        return self._file is not None

    def write(self, data: bytes) -> int:
        if self._file is None:
            try:
                self._file = self.path.open("wb")
            except OSError as exc:
                raise InputError(f"cannot write {self.path}: {exc.strerror}") from None
        return self._file.write(data)

    def flush(self) -> None:
        if self._file is not None:
            self._file.flush()

    def close(self) -> None:
        if self._file is not None:
            self._file.close()


def error_path(output: str) -> Path:
    """Where failures go by default: `out.jsonl` → `out.errors.jsonl`."""
    path = Path(output)
    return path.with_name(f"{path.stem}.errors{path.suffix or '.jsonl'}")


@contextlib.contextmanager
def _errors(args: argparse.Namespace) -> Iterator[Any]:
    """The error file of a run or collect (None: failures stay in the output)."""
    if args.errors is None and args.output == "-":
        yield None
        return
    errors = _LazyFile(Path(args.errors) if args.errors else error_path(args.output))
    try:
        yield errors
    finally:
        errors.close()


@contextlib.asynccontextmanager
async def _publisher(url: str) -> AsyncIterator[Publisher]:
    publisher = open_publisher(parse_url(url, "publish"), ensure_stream=True)
    await publisher.open()
    try:
        yield publisher
    finally:
        await publisher.close()


@contextlib.asynccontextmanager
async def _subscription(url: str) -> AsyncIterator[Subscription]:
    options = ReceiveOptions(max_outstanding=COLLECT_OUTSTANDING, default_consumer=COLLECT_CONSUMER)
    subscription = open_subscription(parse_url(url, "receive"), options)
    await subscription.open()
    try:
        yield subscription
    finally:
        await subscription.close()
