"""`lingo batch run|publish|collect`: OpenAI batch files in, OpenAI batch results out."""

from __future__ import annotations

import asyncio
import io
import os
import sys
from pathlib import Path

import orjson

from lingo.batch.brokers import ReceiveOptions, open_publisher, open_subscription
from lingo.batch.jobs import Progress, read_items, run_batch
from lingo.batch.urls import parse_url
from tests.batch.conftest import BrokerKit, NatsKit, fake_model_entry, make_kit
from tests.conftest import StartLingo


def models(*entries: str) -> str:
    return "models:\n" + "".join(entries)


def batch_lines(count: int) -> list[bytes]:
    lines = [
        orjson.dumps(
            {
                "custom_id": f"req-{i}",
                "method": "POST",
                "url": "/v1/chat/completions",
                "body": {"model": "fake", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2},
            }
        )
        for i in range(count)
    ]
    lines.append(orjson.dumps({"metadata": {"custom_id": "env-1"}, "body": {"model": "fake", "prompt": "x"}}))
    lines.append(
        orjson.dumps({"custom_id": "bad-path", "method": "POST", "url": "/admin", "body": {"model": "fake"}})
    )
    return lines


def check_output(lines: list[bytes], expected: set[str]) -> None:
    results = [orjson.loads(line) for line in lines]
    assert {r["custom_id"] for r in results} == expected
    assert len(results) == len(expected)
    by_id = {r["custom_id"]: r for r in results}
    assert by_id["bad-path"]["response"]["status_code"] == 400
    ok = [r for r in results if r["custom_id"] != "bad-path"]
    assert {r["response"]["status_code"] for r in ok} == {200}
    assert all(r["id"].startswith("batch_req_") for r in results)
    assert all(r["error"] is None for r in ok), "backend answers carry no error"
    assert by_id["bad-path"]["error"]["code"] == "INVALID_REQUEST", "lingo's refusal does"
    assert by_id["req-0"]["response"]["body"]["object"] == "chat.completion"
    assert all(r["response"]["request_id"] for r in results)


async def test_lingo_batch_run_against_nats_writes_a_complete_output_file(
    start_lingo: StartLingo, tmp_path: Path, request
) -> None:  # type: ignore[no-untyped-def]
    kit = make_kit("nats", request)
    assert isinstance(kit, NatsKit)
    try:
        await start_lingo(
            models(fake_model_entry("fake", min_replicas=0, max_replicas=1)), messengers=[kit.messenger()]
        )
        source = tmp_path / "input.jsonl"
        source.write_bytes(b"\n".join(batch_lines(20)) + b"\n")
        output = tmp_path / "output.jsonl"
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "lingo",
            "batch",
            "run",
            str(source),
            "--requests",
            f"nats://{kit.req_subject}?stream={kit.req_stream}",
            "--responses",
            f"nats://{kit.resp_subject}?stream={kit.resp_stream}",
            "-o",
            str(output),
            "--timeout",
            "60s",
            stderr=asyncio.subprocess.PIPE,
            env={**os.environ, "NATS_SERVER_URL": kit.server},
        )
        _, stderr = await asyncio.wait_for(process.communicate(), 90)
        report = stderr.decode()

        assert process.returncode == 0, report
        errors = tmp_path / "output.errors.jsonl"  # failures beside the output, as OpenAI splits them
        check_output(
            output.read_bytes().splitlines() + errors.read_bytes().splitlines(),
            {f"req-{i}" for i in range(20)} | {"env-1", "bad-path"},
        )
        assert [orjson.loads(line)["custom_id"] for line in errors.read_bytes().splitlines()] == ["bad-path"]
        assert "answered 22 request(s)" in report and "200: 21, 400: 1" in report
        assert "failed 1: bad-path" in report and f"failed requests written to {errors}" in report
    finally:
        await kit.cleanup()


async def test_lingo_batch_collect_names_the_missing_custom_ids_when_it_times_out(
    tmp_path: Path, request
) -> None:  # type: ignore[no-untyped-def]
    kit = make_kit("nats", request)
    assert isinstance(kit, NatsKit)
    try:
        source = tmp_path / "input.jsonl"
        source.write_bytes(b"\n".join(batch_lines(2)))
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "lingo",
            "batch",
            "collect",
            "--responses",
            f"nats://{kit.resp_subject}?stream={kit.resp_stream}",
            "--input",
            str(source),
            "-o",
            str(tmp_path / "out.jsonl"),
            "--timeout",
            "1s",
            stderr=asyncio.subprocess.PIPE,
            env={**os.environ, "NATS_SERVER_URL": kit.server},
        )
        _, stderr = await asyncio.wait_for(process.communicate(), 60)

        assert process.returncode == 1
        assert "missing 4: bad-path, env-1, req-0, req-1" in stderr.decode()
        assert "published" not in stderr.decode()  # collect publishes nothing
        assert not (tmp_path / "out.errors.jsonl").exists()
    finally:
        await kit.cleanup()


async def test_lingo_batch_refuses_a_bad_url_with_exit_status_2(tmp_path: Path) -> None:
    source = tmp_path / "input.jsonl"
    source.write_bytes(b"\n".join(batch_lines(1)))
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "lingo",
        "batch",
        "publish",
        str(source),
        "--requests",
        "azuresb://topic",
        stderr=asyncio.subprocess.PIPE,
    )
    _, stderr = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode == 2
    assert "azuresb://topic" in stderr.decode()


async def test_the_run_library_function_against_mem_collects_every_answer(start_lingo: StartLingo) -> None:
    kit: BrokerKit = make_kit("mem", None)  # type: ignore[arg-type]
    try:
        await start_lingo(
            models(fake_model_entry("fake", min_replicas=0, max_replicas=1)), messengers=[kit.messenger()]
        )
        items = read_items(batch_lines(10))
        publisher = open_publisher(parse_url(kit.requests_url(), "publish"))
        subscription = open_subscription(parse_url(kit.responses_url(), "receive"), ReceiveOptions(256))
        await publisher.open()
        await subscription.open()
        output, errors = io.BytesIO(), io.StringIO()
        progress = Progress(len(items), stream=errors)

        result = await run_batch(items, publisher, subscription, output, progress, timeout=60)
        progress.finish()

        assert not result.missing and result.duplicates == 0
        check_output(output.getvalue().splitlines(), {f"req-{i}" for i in range(10)} | {"env-1", "bad-path"})
        assert "answered 12/12" in errors.getvalue()
    finally:
        await kit.cleanup()


async def test_lingo_serve_refuses_a_bad_messenger_url_at_start_naming_it(tmp_path: Path) -> None:
    models_file = tmp_path / "models.yaml"
    models_file.write_text("models:\n  - name: x\n    endpoints: ['http://127.0.0.1:9']\n")
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "lingo",
        "serve",
        "--platform",
        "local",
        "--models-file",
        str(models_file),
        *("--proxy-address", "127.0.0.1:0", "--health-probe-bind-address", "127.0.0.1:0"),
        *("--metrics-bind-address", "127.0.0.1:0", "--stats-address", "127.0.0.1:0"),
        "--messenger",
        "nats://jobs|azuresb://answers",
        stderr=asyncio.subprocess.PIPE,
    )
    _, stderr = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode == 2
    assert "configuration error: batch URL 'azuresb://answers'" in stderr.decode()
