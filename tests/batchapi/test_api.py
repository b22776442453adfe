"""The Files and Batches API end to end: the official `openai` SDK against lingo on real sockets, with
`lingo fake-model` backends scaled from zero, on SQLite and on PostgreSQL."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path

import aiohttp
import openai
import orjson
import pytest

from lingo.batch.handler import RetryPolicy
from tests.batchapi.support import chat_line, jsonl, read_lines, upload, wait_batch
from tests.conftest import StartLingo
from tests.faults.support import scrape

MODELS = """
models:
  - name: fake
    command: [lingo, fake-model, --port, "{port}"]
    min_replicas: 0
    max_replicas: 1
    concurrency: 16
"""

SLOW_MODELS = """
models:
  - name: fake
    command: [lingo, fake-model, --port, "{port}", --latency, "0.2"]
    min_replicas: 1
    max_replicas: 1
    concurrency: 16
"""


_clients: list[openai.AsyncOpenAI] = []


@pytest.fixture(autouse=True)
async def close_clients() -> AsyncIterator[None]:
    yield
    while _clients:
        await _clients.pop().close()


def client_for(lingo, api_key: str = "unused") -> openai.AsyncOpenAI:  # type: ignore[no-untyped-def]
    client = openai.AsyncOpenAI(base_url=lingo.url() + "/v1", api_key=api_key, max_retries=0)
    _clients.append(client)
    return client


def fast(database_url: str, tmp_path: Path, **overrides: object) -> dict[str, object]:
    """Settings for a quick runner on the test's database."""
    return {
        "database_url": database_url,
        "data_dir": str(tmp_path / "data"),
        "batch_api_poll_interval": 0.1,
        "batch_api_lease": 3.0,
        **overrides,
    }


async def test_batch_scales_model_from_zero_completes_and_splits_output_and_errors(
    start_lingo: StartLingo, database_url: str, tmp_path: Path
) -> None:
    lingo = await start_lingo(MODELS, **fast(database_url, tmp_path))
    client = client_for(lingo)
    lines = [chat_line(f"ok-{i}") for i in range(20)] + [chat_line("nomodel", model="missing")]
    file_id = await upload(client, lines)
    uploaded = await client.files.retrieve(file_id)
    assert (uploaded.purpose, uploaded.bytes, uploaded.filename) == (
        "batch",
        len(jsonl(lines)),
        "input.jsonl",
    )

    batch = await client.batches.create(
        input_file_id=file_id,
        endpoint="/v1/chat/completions",
        completion_window="24h",
        metadata={"job": "nightly"},
    )
    assert batch.status == "validating"
    assert batch.metadata == {"job": "nightly"}
    done = await wait_batch(client, batch.id, ("completed", "failed"))
    assert done.status == "completed", done
    assert done.request_counts is not None
    assert (done.request_counts.total, done.request_counts.completed, done.request_counts.failed) == (
        21,
        20,
        1,
    )
    assert done.in_progress_at and done.finalizing_at and done.completed_at
    assert done.expires_at == done.created_at + 24 * 3600

    output = await read_lines(client, done.output_file_id)
    assert [line["custom_id"] for line in output] == [f"ok-{i}" for i in range(20)]
    first = output[0]
    assert first["error"] is None and first["id"].startswith("batch_req_")
    assert first["response"]["status_code"] == 200 and first["response"]["request_id"]
    assert first["response"]["body"]["choices"][0]["message"]["role"] == "assistant"
    errors = await read_lines(client, done.error_file_id)
    assert [(line["custom_id"], line["response"]["status_code"]) for line in errors] == [("nomodel", 404)]
    assert errors[0]["response"]["body"]["error"]["code"] == "model_not_found"

    output_file = await client.files.retrieve(done.output_file_id)
    assert output_file.purpose == "batch_output"
    with pytest.raises(openai.ConflictError):
        await client.batches.cancel(batch.id)

    async def completed_gauge() -> float:
        async with aiohttp.ClientSession() as session:
            return (await scrape(session, lingo.url("metrics"))).get(
                ("lingo_batch_jobs", (("status", "completed"),)), 0.0
            )

    deadline = asyncio.get_running_loop().time() + 10
    while await completed_gauge() != 1.0:  # the gauge is refreshed every poll interval
        assert asyncio.get_running_loop().time() < deadline, "lingo_batch_jobs{status=completed} stayed 0"
        await asyncio.sleep(0.05)
    async with aiohttp.ClientSession() as session:
        samples = await scrape(session, lingo.url("metrics"))
    assert samples[("lingo_batch_job_lines_total", (("outcome", "completed"),))] == 20
    assert samples[("lingo_batch_job_lines_total", (("outcome", "failed"),))] == 1


async def test_bad_input_file_fails_with_the_line_numbers_of_each_problem(
    start_lingo: StartLingo, database_url: str, tmp_path: Path
) -> None:
    lingo = await start_lingo(MODELS, **fast(database_url, tmp_path))
    client = client_for(lingo)
    good = chat_line("a")
    no_custom_id = {key: value for key, value in chat_line("x").items() if key != "custom_id"}
    content = b"\n".join(
        [
            orjson.dumps(good),  # 1
            b"{not json",  # 2
            orjson.dumps(no_custom_id),  # 3
            orjson.dumps({**chat_line("b"), "url": "/v1/embeddings"}),  # 4
            orjson.dumps(chat_line("a")),  # 5: duplicate custom_id
            orjson.dumps({**chat_line("c"), "body": {"model": "fake", "stream": True}}),  # 6
            orjson.dumps({**chat_line("d"), "method": "GET"}),  # 7
        ]
    )
    file_id = await upload(client, content)
    batch = await client.batches.create(
        input_file_id=file_id, endpoint="/v1/chat/completions", completion_window="24h"
    )
    failed = await wait_batch(client, batch.id, ("failed", "completed"))
    assert failed.status == "failed" and failed.failed_at
    assert failed.errors is not None and failed.errors.data is not None
    found = {(error.line, error.code) for error in failed.errors.data}
    assert found == {
        (2, "invalid_json_line"),
        (3, "missing_required_parameter"),
        (4, "mismatched_url"),
        (5, "duplicate_custom_id"),
        (6, "unsupported_value"),
        (7, "invalid_method"),
    }
    assert failed.output_file_id is None and failed.error_file_id is None


async def test_cancel_mid_run_stops_dispatching_and_keeps_finished_lines(
    start_lingo: StartLingo, database_url: str, tmp_path: Path
) -> None:
    lingo = await start_lingo(SLOW_MODELS, **fast(database_url, tmp_path, batch_api_concurrency=2))
    client = client_for(lingo)
    file_id = await upload(client, [chat_line(f"c-{i}") for i in range(60)])
    batch = await client.batches.create(
        input_file_id=file_id, endpoint="/v1/chat/completions", completion_window="24h"
    )
    running = await wait_batch(client, batch.id, ("in_progress",))
    while running.request_counts is None or running.request_counts.completed < 2:
        running = await wait_batch(client, batch.id, ("in_progress",))
    cancelling = await client.batches.cancel(batch.id)
    assert cancelling.status in ("cancelling", "cancelled") and cancelling.cancelling_at
    cancelled = await wait_batch(client, batch.id, ("cancelled",))
    assert cancelled.cancelled_at
    assert cancelled.request_counts is not None
    completed = cancelled.request_counts.completed
    assert 2 <= completed < 60
    output = await read_lines(client, cancelled.output_file_id)
    assert len(output) == completed
    assert {line["response"]["status_code"] for line in output} == {200}
    assert (await client.batches.cancel(batch.id)).status == "cancelled"  # cancelling again changes nothing


async def test_lists_paginate_with_after_limit_and_has_more(
    start_lingo: StartLingo, database_url: str, tmp_path: Path
) -> None:
    lingo = await start_lingo(MODELS, **fast(database_url, tmp_path))
    client = client_for(lingo)
    file_ids = [await upload(client, [chat_line("p")], name=f"in-{i}.jsonl") for i in range(5)]
    first = await client.files.list(limit=2)
    assert [file.id for file in first.data] == file_ids[::-1][:2]
    assert first.has_more
    every = [file.id async for file in await client.files.list(limit=2)]
    assert every == file_ids[::-1]
    oldest_first = await client.files.list(order="asc", limit=10)
    assert [file.id for file in oldest_first.data] == file_ids and not oldest_first.has_more

    batch_ids = []
    for file_id in file_ids[:3]:
        created = await client.batches.create(
            input_file_id=file_id, endpoint="/v1/chat/completions", completion_window="24h"
        )
        batch_ids.append(created.id)
    page = await client.batches.list(limit=2)
    assert [batch.id for batch in page.data] == batch_ids[::-1][:2] and page.has_more
    rest = await client.batches.list(limit=2, after=page.data[-1].id)
    assert [batch.id for batch in rest.data] == [batch_ids[0]] and not rest.has_more
    assert [batch.id async for batch in await client.batches.list(limit=1)] == batch_ids[::-1]

    deleted = await client.files.delete(file_ids[4])
    assert deleted.deleted and deleted.id == file_ids[4]
    with pytest.raises(openai.NotFoundError):
        await client.files.retrieve(file_ids[4])


async def test_expired_batch_returns_finished_lines_and_lists_the_rest_as_expired(
    start_lingo: StartLingo, database_url: str, tmp_path: Path
) -> None:
    settings = fast(database_url, tmp_path, batch_api_concurrency=1, batch_api_window=3.0)
    lingo = await start_lingo(SLOW_MODELS, **settings)
    client = client_for(lingo)
    file_id = await upload(client, [chat_line(f"e-{i}") for i in range(40)])
    batch = await client.batches.create(
        input_file_id=file_id, endpoint="/v1/chat/completions", completion_window="24h"
    )
    expired = await wait_batch(client, batch.id, ("expired", "completed"))
    assert expired.status == "expired" and expired.expired_at
    assert expired.request_counts is not None
    output = await read_lines(client, expired.output_file_id)
    errors = await read_lines(client, expired.error_file_id)
    assert 1 <= len(output) < 40
    assert len(output) + len(errors) == 40
    assert {line["error"]["code"] for line in errors} == {"batch_expired"}
    assert all(line["response"] is None for line in errors)
    assert (expired.request_counts.completed, expired.request_counts.failed) == (len(output), len(errors))


async def test_unknown_ids_and_bad_requests_get_openai_errors(
    start_lingo: StartLingo, tmp_path: Path
) -> None:
    lingo = await start_lingo(MODELS, data_dir=str(tmp_path / "data"))
    client = client_for(lingo)
    with pytest.raises(openai.NotFoundError):
        await client.files.retrieve("file-nope")
    with pytest.raises(openai.NotFoundError):
        await client.files.content("file-nope")
    with pytest.raises(openai.NotFoundError):
        await client.batches.retrieve("batch_nope")
    with pytest.raises(openai.NotFoundError):
        await client.batches.cancel("batch_nope")
    with pytest.raises(openai.NotFoundError):
        await client.batches.create(
            input_file_id="file-nope", endpoint="/v1/chat/completions", completion_window="24h"
        )
    file_id = await upload(client, [chat_line("a")])
    with pytest.raises(openai.BadRequestError) as error:
        await client.batches.create(
            input_file_id=file_id,
            endpoint="/v1/moderations",  # not served by lingo's model servers
            completion_window="24h",
        )
    assert "endpoint" in error.value.message
    with pytest.raises(openai.BadRequestError):
        await client.files.create(file=("x.jsonl", b"{}", "application/jsonl"), purpose="assistants")
    assert (tmp_path / "data" / "lingo.db").exists()


async def test_files_and_batches_are_visible_only_to_the_key_that_created_them(
    start_lingo: StartLingo, tmp_path: Path
) -> None:
    lingo = await start_lingo(
        MODELS, data_dir=str(tmp_path / "data"), api_keys=["key-a", "key-b"], batch_api_poll_interval=0.1
    )
    alice, bob = client_for(lingo, "key-a"), client_for(lingo, "key-b")
    file_id = await upload(alice, [chat_line("a")])
    batch = await alice.batches.create(
        input_file_id=file_id, endpoint="/v1/chat/completions", completion_window="24h"
    )
    with pytest.raises(openai.NotFoundError):
        await bob.files.retrieve(file_id)
    with pytest.raises(openai.NotFoundError):
        await bob.files.content(file_id)
    with pytest.raises(openai.NotFoundError):
        await bob.batches.retrieve(batch.id)
    with pytest.raises(openai.NotFoundError):
        await bob.batches.create(
            input_file_id=file_id, endpoint="/v1/chat/completions", completion_window="24h"
        )
    assert (await bob.files.list()).data == [] and (await bob.batches.list()).data == []
    assert [file.id for file in (await alice.files.list()).data] == [file_id]
    done = await wait_batch(alice, batch.id, ("completed",))
    with pytest.raises(openai.NotFoundError):
        await bob.files.content(done.output_file_id)
    with pytest.raises(openai.AuthenticationError):
        await client_for(lingo, "wrong").files.list()


async def test_transient_backend_failures_are_retried_with_backoff_until_the_line_succeeds(
    start_lingo: StartLingo, tmp_path: Path
) -> None:
    flaky = MODELS.replace('"{port}"]', '"{port}", --fail-first, "2"]').replace(
        "min_replicas: 0", "min_replicas: 1"
    )
    lingo = await start_lingo(
        flaky, backend_retries=0, **fast(f"sqlite:///{tmp_path / 'db.sqlite'}", tmp_path)
    )
    runner = lingo.batch_api.runner  # short pauses between attempts, so the test stays quick
    runner.settings = replace(runner.settings, retry=RetryPolicy(max_attempts=3, base=0.05, cap=0.1))
    client = client_for(lingo)
    file_id = await upload(client, [chat_line("only")])
    batch = await client.batches.create(
        input_file_id=file_id, endpoint="/v1/chat/completions", completion_window="24h"
    )
    done = await wait_batch(client, batch.id, ("completed",))
    assert done.request_counts is not None and done.request_counts.completed == 1
    [line] = await read_lines(client, done.output_file_id)
    assert line["response"]["status_code"] == 200
    async with aiohttp.ClientSession() as session:
        samples = await scrape(session, lingo.url("metrics"))
    assert samples[("lingo_batch_job_lines_total", (("outcome", "retried"),))] == 2


async def test_an_upload_beyond_the_body_limit_gets_413(start_lingo: StartLingo, tmp_path: Path) -> None:
    lingo = await start_lingo(MODELS, data_dir=str(tmp_path / "data"), max_body=10_000)
    client = client_for(lingo)
    with pytest.raises(openai.APIStatusError) as error:
        await upload(client, [chat_line(f"big-{i}", content="x" * 100) for i in range(100)])
    assert error.value.status_code == 413
