"""A model server for priority tests: counts the requests it serves at once, notes the order they
arrived in, and holds the ones marked `"hold"` until the test opens the gate."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import orjson
from aiohttp import web


class CountingBackend:
    """See the module docstring; `url` is set once it listens."""

    def __init__(self) -> None:
        #: Base URL once listening.
        self.url = ""
        #: Requests being served now.
        self.current = 0
        #: Most requests ever served at once.
        self.peak = 0
        #: Every request body, in arrival order.
        self.bodies: list[dict[str, Any]] = []
        #: Held requests wait for this.
        self.gate = asyncio.Event()
        #: Seconds every request takes (after the gate, for held ones).
        self.latency = 0.0

    def arrivals(self) -> list[str]:
        """The `prompt` (or first message) of every request, in arrival order."""
        return [_label(body) for body in self.bodies]

    async def handle(self, request: web.Request) -> web.Response:
        body = orjson.loads(await request.read())
        self.bodies.append(body)
        self.current += 1
        self.peak = max(self.peak, self.current)
        try:
            if "hold" in _label(body):
                await self.gate.wait()
            if self.latency:
                await asyncio.sleep(self.latency)
        finally:
            self.current -= 1
        if request.path.endswith("/chat/completions"):
            message = {"role": "assistant", "content": "ok"}
            choice: dict[str, Any] = {"index": 0, "message": message, "finish_reason": "stop"}
            return web.json_response(
                {
                    "id": "c",
                    "object": "chat.completion",
                    "created": 0,
                    "model": body["model"],
                    "choices": [choice],
                }
            )
        choice = {"index": 0, "text": "ok", "finish_reason": "stop", "logprobs": None}
        return web.json_response(
            {
                "id": "c",
                "object": "text_completion",
                "created": 0,
                "model": body["model"],
                "choices": [choice],
            }
        )


def _label(body: dict[str, Any]) -> str:
    if "prompt" in body:
        return str(body["prompt"])
    return str(body["messages"][0]["content"])


@asynccontextmanager
async def counting_backend() -> AsyncIterator[CountingBackend]:
    backend = CountingBackend()
    app = web.Application()
    app.router.add_post("/{tail:.*}", backend.handle)
    runner = web.AppRunner(app, shutdown_timeout=0.1)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    backend.url = f"http://127.0.0.1:{port}"
    try:
        yield backend
    finally:
        backend.gate.set()
        await runner.cleanup()
