"""The Batches API survives its process: `lingo serve` SIGKILLed mid-batch resumes after a restart
without re-running finished lines, and two lingo processes on one PostgreSQL run each batch once and
take over from each other."""

from __future__ import annotations

import asyncio
import signal
import time
from pathlib import Path

import asyncpg
import openai

from tests.batchapi.support import CountingBackend, LingoProcess, chat_line, read_lines, upload, wait_batch

CONCURRENCY = 16


async def wait_completed(
    client: openai.AsyncOpenAI, batch_id: str, at_least: int, timeout: float = 30.0
) -> int:
    """Poll until `at_least` lines of the batch are recorded as completed; the count seen."""
    deadline = time.monotonic() + timeout
    while True:
        batch = await wait_batch(client, batch_id, ("in_progress", "finalizing", "completed"), timeout)
        completed = batch.request_counts.completed if batch.request_counts else 0
        if completed >= at_least:
            return completed
        assert time.monotonic() < deadline, f"only {completed} lines completed within {timeout}s"


async def test_sigkilled_lingo_resumes_the_batch_and_reruns_at_most_the_lines_in_flight(
    tmp_path: Path,
) -> None:
    backend = await CountingBackend(latency=0.1).start()
    env = {
        "LINGO_DATABASE_URL": f"sqlite:///{tmp_path / 'data' / 'lingo.db'}",
        "LINGO_BATCH_API_CONCURRENCY": str(CONCURRENCY),
        "LINGO_BATCH_API_LEASE": "2s",
    }
    lines = [chat_line(f"k-{i:04d}", content=f"k-{i:04d}") for i in range(400)]
    first = await LingoProcess(tmp_path, backend.url, env).ready()
    second: LingoProcess | None = None
    try:
        async with openai.AsyncOpenAI(base_url=first.url, api_key="unused", max_retries=0) as client:
            file_id = await upload(client, lines)
            batch = await client.batches.create(
                input_file_id=file_id, endpoint="/v1/chat/completions", completion_window="24h"
            )
            before_kill = await wait_completed(client, batch.id, 100)
        first.kill()
        assert before_kill < len(lines), "the batch finished before the kill; the test proves nothing"
        second = await LingoProcess(tmp_path, backend.url, env).ready()
        async with openai.AsyncOpenAI(base_url=second.url, api_key="unused", max_retries=0) as client:
            done = await wait_batch(client, batch.id, ("completed",), timeout=60)
            output = await read_lines(client, done.output_file_id)
        assert sorted(line["custom_id"] for line in output) == [line["custom_id"] for line in lines]
        assert set(backend.seen) == {line["custom_id"] for line in lines}
        reruns = backend.reruns()
        print(f"SIGKILL resume: {reruns} line(s) re-run after the kill (concurrency {CONCURRENCY})")
        assert reruns <= 2 * CONCURRENCY
    finally:
        first.kill()
        if second is not None:
            second.kill()
        await backend.close()


async def test_two_lingo_processes_on_postgresql_run_each_batch_once_and_take_over_a_dead_runner(
    tmp_path: Path, postgres_url: str
) -> None:
    backend = await CountingBackend(latency=0.02).start()
    env = {
        "LINGO_DATABASE_URL": postgres_url,
        "LINGO_BATCH_API_CONCURRENCY": str(CONCURRENCY),
        "LINGO_BATCH_API_LEASE": "2s",
        "LINGO_BATCH_API_MAX_JOBS": "2",
    }
    processes = [await LingoProcess(tmp_path, backend.url, env).ready() for _ in range(2)]
    try:
        async with openai.AsyncOpenAI(base_url=processes[0].url, api_key="unused", max_retries=0) as client:
            batch_ids = []
            for b in range(4):
                rows = [chat_line(f"b{b}-{i}", content=f"b{b}-{i}") for i in range(50)]
                file_id = await upload(client, rows)
                created = await client.batches.create(
                    input_file_id=file_id, endpoint="/v1/chat/completions", completion_window="24h"
                )
                batch_ids.append(created.id)
            for batch_id in batch_ids:
                await wait_batch(client, batch_id, ("completed",))
        assert len(backend.seen) == 200
        assert backend.reruns() == 0, "a line ran twice although no process died"

        backend.latency = 0.1
        rows = [chat_line(f"t-{i:04d}", content=f"t-{i:04d}") for i in range(300)]
        async with openai.AsyncOpenAI(base_url=processes[1].url, api_key="unused", max_retries=0) as client:
            file_id = await upload(client, rows)
            batch = await client.batches.create(
                input_file_id=file_id, endpoint="/v1/chat/completions", completion_window="24h"
            )
            await wait_completed(client, batch.id, 40)
        connection = await asyncpg.connect(postgres_url)
        try:
            owner = await connection.fetchval("SELECT lease_owner FROM lingo_batches WHERE id = $1", batch.id)
        finally:
            await connection.close()
        pid = int(owner.split("-")[-2])
        runner = next(process for process in processes if process.process.pid == pid)
        survivor = next(process for process in processes if process is not runner)
        runner.kill()
        async with openai.AsyncOpenAI(base_url=survivor.url, api_key="unused", max_retries=0) as client:
            done = await wait_batch(client, batch.id, ("completed",), timeout=60)
            output = await read_lines(client, done.output_file_id)
        assert sorted(line["custom_id"] for line in output) == [row["custom_id"] for row in rows]
        reruns = sum(count - 1 for custom_id, count in backend.seen.items() if custom_id.startswith("t-"))
        print(f"takeover: {reruns} line(s) re-run by the surviving process (concurrency {CONCURRENCY})")
        assert reruns <= 2 * CONCURRENCY
    finally:
        for process in processes:
            process.kill()
        await backend.close()


async def test_sigterm_mid_batch_leaves_unfinished_lines_pending_not_failed(tmp_path: Path) -> None:
    backend = await CountingBackend(latency=0.1).start()
    env = {
        "LINGO_DATABASE_URL": f"sqlite:///{tmp_path / 'data' / 'lingo.db'}",
        "LINGO_BATCH_API_CONCURRENCY": str(CONCURRENCY),
        "LINGO_SHUTDOWN_GRACE": "5s",
    }
    lines = [chat_line(f"s-{i:04d}", content=f"s-{i:04d}") for i in range(300)]
    first = await LingoProcess(tmp_path, backend.url, env).ready()
    second: LingoProcess | None = None
    try:
        async with openai.AsyncOpenAI(base_url=first.url, api_key="unused", max_retries=0) as client:
            file_id = await upload(client, lines)
            batch = await client.batches.create(
                input_file_id=file_id, endpoint="/v1/chat/completions", completion_window="24h"
            )
            await wait_completed(client, batch.id, 50)
        # In a thread: the backend answering the lines in flight runs on this event loop.
        await asyncio.to_thread(first.kill, signal.SIGTERM)
        assert first.process.returncode == 0, first.log.read_text()[-2000:]
        # The lease was given back on the way out: the next process starts at once, not after 30 s.
        second = await LingoProcess(tmp_path, backend.url, env).ready()
        async with openai.AsyncOpenAI(base_url=second.url, api_key="unused", max_retries=0) as client:
            done = await wait_batch(client, batch.id, ("completed",), timeout=20)
        assert done.request_counts is not None
        assert (done.request_counts.completed, done.request_counts.failed) == (300, 0)
        assert backend.reruns() == 0, "a line in flight at SIGTERM was not allowed to finish"
    finally:
        first.kill()
        if second is not None:
            second.kill()
        await backend.close()
