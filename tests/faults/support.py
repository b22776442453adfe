"""Helpers for fault tests: a raw TCP "backend" that writes hand-crafted bytes, and metric scraping."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Mapping

import aiohttp
import orjson
from prometheus_client.parser import text_string_to_metric_families

#: What the raw backend does with one accepted connection.
Behaviour = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


async def read_request_head(reader: asyncio.StreamReader) -> bytes:
    """The request line and headers (the body, if any, is left unread); b"" if the peer went away."""
    with contextlib.suppress(asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
        return await reader.readuntil(b"\r\n\r\n")
    return b""


def reply_with(data: bytes) -> Behaviour:
    """A behaviour that reads the request head, writes `data` and closes the connection."""

    async def behave(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request_head(reader)
        writer.write(data)
        with contextlib.suppress(ConnectionError):
            await writer.drain()

    return behave


async def close_at_once(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Accept, then close without reading or writing a byte."""


class RawBackend:
    """An asyncio TCP server standing in for a model server that misbehaves at the HTTP level."""

    def __init__(self, behaviour: Behaviour) -> None:
        #: What each accepted connection gets; may be swapped between requests.
        self.behaviour = behaviour
        #: Connections accepted so far.
        self.accepted = 0
        self._server: asyncio.Server | None = None

    async def start(self) -> RawBackend:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        return self

    @property
    def url(self) -> str:
        assert self._server is not None
        return f"http://127.0.0.1:{self._server.sockets[0].getsockname()[1]}"

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepted += 1
        try:
            await self.behaviour(reader, writer)
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()


def static_model(name: str, *urls: str, concurrency: int = 100) -> str:
    """A models-file entry for a static (never scaled) group."""
    endpoints = ", ".join(f'"{url}"' for url in urls)
    return f"""
  - name: {name}
    endpoints: [{endpoints}]
    concurrency: {concurrency}
"""


def models_file(*entries: str) -> str:
    return "models:" + "".join(entries)


def is_openai_error(headers: Mapping[str, str], body: bytes) -> bool:
    """True when the answer is lingo's own OpenAI-shaped error."""
    if headers.get("X-Proxy") != "lingo":
        return False
    try:
        error = orjson.loads(body)["error"]
    except (orjson.JSONDecodeError, KeyError, TypeError):
        return False
    return isinstance(error, dict) and bool(error.get("message")) and bool(error.get("type"))


def metric_samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Prometheus text → {(sample name, sorted labels): value}."""
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


async def scrape(session: aiohttp.ClientSession, metrics_url: str) -> dict[tuple[str, tuple], float]:
    async with session.get(metrics_url + "/metrics") as response:
        return metric_samples(await response.text())


def gauge(samples: dict[tuple[str, tuple], float], name: str, model: str) -> float:
    """A gauge of `model`, summed over its other labels (e.g. the class of queued requests)."""
    return sum(
        value for (sample, labels), value in samples.items() if sample == name and ("model", model) in labels
    )


def requests_total(samples: dict[tuple[str, tuple], float], model: str) -> dict[str, float]:
    """`lingo_requests_total` of `model` from HTTP, by status code."""
    totals: dict[str, float] = {}
    for (name, labels), value in samples.items():
        label = dict(labels)
        if name == "lingo_requests_total" and label.get("model") == model and label.get("source") == "http":
            totals[label["code"]] = value
    return totals


async def read_request(reader: asyncio.StreamReader) -> tuple[bytes, bytes]:
    """(head, body) of one request with a Content-Length body (or none); (b"", b"") if the peer went away."""
    head = await read_request_head(reader)
    length = 0
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":", 1)[1])
    try:
        return head, await reader.readexactly(length)
    except (asyncio.IncompleteReadError, ConnectionError):
        return b"", b""


def ok(body: bytes) -> bytes:
    """A complete 200 answer carrying `body`."""
    return b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: %d\r\n\r\n%b" % (len(body), body)
