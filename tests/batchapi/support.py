"""Helpers of the Batches API suite: input files, polling a batch, reading result files."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import openai
import orjson


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
