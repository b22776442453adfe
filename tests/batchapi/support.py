"""Helpers of the Batches API suite: input files, polling a batch, reading result files."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp
import openai
import orjson
from aiohttp import web

from lingo.platforms.local import die_with_parent
from tests.conftest import free_port


def chat_line(custom_id: str, model: str = "fake", content: str = "hi") -> dict[str, Any]:
    """One OpenAI batch input line for /v1/chat/completions."""
    return {
        "custom_id": custom_id,
        "method": "POST",
        "url": "/v1/chat/completions",
        "body": {"model": model, "messages": [{"role": "user", "content": content}], "max_tokens": 2},
    }


def jsonl(lines: list[Any]) -> bytes:
    return b"".join(orjson.dumps(line) + b"\n" for line in lines)


async def wait_batch(
    client: openai.AsyncOpenAI, batch_id: str, statuses: tuple[str, ...], timeout: float = 30.0
) -> Any:
    """Poll the batch until its status is one of `statuses`; fail with its last state on timeout."""
    deadline = time.monotonic() + timeout
    while True:
        batch = await client.batches.retrieve(batch_id)
        if batch.status in statuses:
            return batch
        if time.monotonic() > deadline:
            raise AssertionError(f"batch not {statuses} within {timeout}s: {batch}")
        await asyncio.sleep(0.05)


async def read_lines(client: openai.AsyncOpenAI, file_id: str | None) -> list[dict[str, Any]]:
    """The lines of an output or error file (none when the file id is None)."""
    if file_id is None:
        return []
    content = await client.files.content(file_id)
    return [orjson.loads(line) for line in content.content.splitlines() if line.strip()]


async def upload(client: openai.AsyncOpenAI, lines: list[Any] | bytes, name: str = "input.jsonl") -> str:
    data = lines if isinstance(lines, bytes) else jsonl(lines)
    created = await client.files.create(file=(name, data, "application/jsonl"), purpose="batch")
    return created.id


class CountingBackend:
    """A model server in the test process that answers chat completions after `latency` seconds and
    counts how often it saw each line (the first message's content carries the line's custom_id)."""

    def __init__(self, latency: float = 0.05) -> None:
        #: Seconds before each answer.
        self.latency = latency
        #: Requests seen per custom_id.
        self.seen: collections.Counter[str] = collections.Counter()
        self._runner: web.AppRunner | None = None
        self.url = ""

    async def start(self) -> CountingBackend:
        app = web.Application()
        app.router.add_post("/v1/chat/completions", self._chat)
        app.router.add_get("/health", self._health)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self.url = f"http://127.0.0.1:{port}"
        return self

    async def close(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    def reruns(self) -> int:
        """Lines run more than once, counted once per extra run."""
        return sum(count - 1 for count in self.seen.values() if count > 1)

    async def _health(self, request: web.Request) -> web.Response:
        return web.Response(text="ok")

    async def _chat(self, request: web.Request) -> web.Response:
        body = await request.json()
        custom_id = body["messages"][0]["content"]
        await asyncio.sleep(self.latency)
        self.seen[custom_id] += 1
        answer = {
            "id": f"chatcmpl-{custom_id}",
            "object": "chat.completion",
            "created": 0,
            "model": body["model"],
            "choices": [
                {"index": 0, "message": {"role": "assistant", "content": "ok"}, "finish_reason": "stop"}
            ],
        }
        return web.json_response(answer)


class LingoProcess:
    """`lingo serve` as a subprocess on free ports, with a static model `fake` at `backend_url`."""

    def __init__(self, tmp: Path, backend_url: str, env: dict[str, str]) -> None:
        models_file = tmp / f"models-{time.monotonic_ns()}.yaml"
        models_file.write_text(
            f'models:\n  - name: fake\n    endpoints: ["{backend_url}"]\n    concurrency: 200\n'
        )
        self.proxy = free_port()
        self.health = free_port()
        self.log = tmp / f"serve-{time.monotonic_ns()}.log"
        environment = {
            **os.environ,
            "LINGO_PLATFORM": "local",
            "LINGO_MODELS_FILE": str(models_file),
            "LINGO_LOG_DIR": str(tmp / "replicas"),
            "LINGO_PROXY_ADDRESS": f"127.0.0.1:{self.proxy}",
            "HEALTH_PROBE_BIND_ADDRESS": f"127.0.0.1:{self.health}",
            "METRICS_BIND_ADDRESS": f"127.0.0.1:{free_port()}",
            "LINGO_STATS_ADDRESS": f"127.0.0.1:{free_port()}",
            "LINGO_BATCH_API_POLL_INTERVAL": "0.1s",
            **env,
        }
        with self.log.open("wb") as out:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "lingo", "serve"],
                env=environment,
                stdout=out,
                stderr=out,
                start_new_session=True,
                preexec_fn=die_with_parent,
            )

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.proxy}/v1"

    async def ready(self, timeout: float = 30.0) -> LingoProcess:
        deadline = time.monotonic() + timeout
        async with aiohttp.ClientSession() as session:
            while time.monotonic() < deadline:
                assert self.process.poll() is None, self.log.read_text()[-3000:]
                with contextlib.suppress(aiohttp.ClientError):
                    async with session.get(f"http://127.0.0.1:{self.health}/readyz") as response:
                        if response.status == 200:
                            return self
                await asyncio.sleep(0.05)
        raise AssertionError(f"lingo serve not ready in {timeout}s: {self.log.read_text()[-3000:]}")

    def kill(self, signum: int = signal.SIGKILL) -> None:
        if self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signum)
            self.process.wait(15)
