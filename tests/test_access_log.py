"""Request ids and the access log: one line per request and per batch message, silent when off."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import aiohttp
import openai
import orjson
import pytest
from aiohttp import web

from lingo.access_log import LOGGER
from lingo.batch.brokers import mem
from lingo.logs import LogfmtFormatter
from tests.conftest import StartLingo, wait_for


@dataclass
class Backend:
    """A model stand-in that records the X-Request-Id headers it gets and answers like OpenAI."""

    url: str
    #: Every X-Request-Id value of every request, in arrival order.
    ids: list[list[str]] = field(default_factory=list)


@pytest.fixture
async def backend() -> AsyncIterator[Backend]:
    seen: list[list[str]] = []

    async def chat(request: web.Request) -> web.StreamResponse:
        seen.append(request.headers.getall("X-Request-Id", []))
        body = await request.json()
        if body.get("stream"):
            response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
            await response.prepare(request)
            chunk = {"id": "c", "object": "chat.completion.chunk", "created": 0, "model": "m", "choices": []}
            for _ in range(3):
                await response.write(b"data: " + orjson.dumps(chunk) + b"\n\n")
            await response.write(b"data: [DONE]\n\n")
            return response
        # A backend that sets its own id (vLLM can): the client sees lingo's, once.
        return web.json_response(
            {"id": "x", "object": "chat.completion", "created": 0, "model": "m", "choices": []},
            headers={"X-Request-Id": "backend-own-id"},
        )

    app = web.Application()
    app.router.add_post("/v1/chat/completions", chat)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    yield Backend(f"http://127.0.0.1:{port}", seen)
    await runner.cleanup()


def models(backend: Backend) -> str:
    return f"models:\n  - name: m\n    models: [m, m-alias]\n    endpoints: ['{backend.url}']\n"


CHAT = {"model": "m-alias", "messages": [{"role": "user", "content": "hi"}]}


def access_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    formatter = LogfmtFormatter()
    return [formatter.format(r) for r in caplog.records if r.name == LOGGER]


def fields(line: str) -> dict[str, str]:
    """key=value pairs of a logfmt line (values in these tests carry no spaces)."""
    return dict(part.split("=", 1) for part in line.split(" ") if "=" in part)


async def test_request_id_is_generated_sent_to_the_backend_and_echoed(
    start_lingo: StartLingo, backend: Backend
) -> None:
    lingo = await start_lingo(models(backend))
    async with aiohttp.ClientSession() as session:
        async with session.post(lingo.url() + "/v1/chat/completions", json=CHAT) as response:
            assert response.status == 200
            generated = response.headers.getall("X-Request-Id")
        async with session.post(
            lingo.url() + "/v1/chat/completions", json=CHAT, headers={"X-Request-Id": "client-42"}
        ) as response:
            assert response.headers.getall("X-Request-Id") == ["client-42"]
        async with session.post(lingo.url() + "/v1/chat/completions", json=CHAT) as response:
            other = response.headers.getall("X-Request-Id")
        async with session.post(
            lingo.url() + "/v1/chat/completions", json={"model": "nope"}, headers={"X-Request-Id": "lost-1"}
        ) as response:
            assert response.status == 404
            assert response.headers.getall("X-Request-Id") == ["lost-1"], "lingo's own answers carry it too"
    assert len(generated) == 1 and generated[0] and generated != other
    assert backend.ids == [generated, ["client-42"], other], "exactly one id reaches the backend"


async def test_access_log_writes_one_line_per_request_with_its_facts(
    start_lingo: StartLingo, backend: Backend, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER)
    lingo = await start_lingo(models(backend), access_log=True)
    client = openai.AsyncOpenAI(base_url=lingo.url() + "/v1", api_key="x", max_retries=0)
    await client.chat.completions.create(**CHAT, extra_headers={"X-Request-Id": "plain-1"})  # type: ignore[call-overload]
    stream = await client.chat.completions.create(  # type: ignore[call-overload]
        **CHAT, stream=True, extra_headers={"X-Request-Id": "stream-1"}
    )
    chunks = [chunk async for chunk in stream]
    assert len(chunks) == 3
    with pytest.raises(openai.NotFoundError):
        await client.chat.completions.create(
            model="nope", messages=[], extra_headers={"X-Request-Id": "missing-1"}
        )
    await client.close()
    await wait_for(lambda: len(access_lines(caplog)) == 3, timeout=5)
    plain, streamed, missing = (fields(line) for line in access_lines(caplog))
    assert plain["msg"] == "access" and plain["logger"] == LOGGER
    assert {k: plain[k] for k in ("request_id", "source", "class", "model", "group", "status")} == {
        "request_id": "plain-1",
        "source": "http",
        "class": "default",
        "model": "m-alias",
        "group": "m",
        "status": "200",
    }
    assert plain["endpoint"] == backend.url and plain["attempts"] == "1" and plain["streamed"] == "False"
    assert int(plain["bytes_in"]) > 0 and int(plain["bytes_out"]) > 0
    for key in ("wait", "ttfb", "duration"):
        assert float(plain[key]) >= 0, key
    assert float(plain["duration"]) >= float(plain["wait"])
    assert streamed["request_id"] == "stream-1" and streamed["streamed"] == "True"
    assert int(streamed["bytes_out"]) > 3 * len("data: {}")
    assert missing["request_id"] == "missing-1" and missing["status"] == "404" and missing["model"] == "nope"


async def test_access_log_is_silent_when_off(
    start_lingo: StartLingo, backend: Backend, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    lingo = await start_lingo(models(backend))
    async with (
        aiohttp.ClientSession() as session,
        session.post(lingo.url() + "/v1/chat/completions", json=CHAT) as response,
    ):
        assert response.status == 200
    assert backend.ids, "the request was served"
    assert access_lines(caplog) == []


async def test_batch_message_gets_an_access_line_and_a_request_id(
    start_lingo: StartLingo, backend: Backend, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER)
    unique = f"access-{id(backend)}"
    lingo = await start_lingo(
        models(backend), access_log=True, messengers=[f"mem://req-{unique}|mem://resp-{unique}"]
    )
    assert lingo.batch is not None
    try:
        envelope = {"path": "/v1/chat/completions", "metadata": {"custom_id": "b1"}, "body": CHAT}
        message = mem.topic(f"req-{unique}").publish(orjson.dumps(envelope))
        [response] = await mem.topic(f"resp-{unique}").get(1, 15)
        assert orjson.loads(response.data)["status_code"] == 200
        await wait_for(lambda: len(access_lines(caplog)) == 1, timeout=5)
    finally:
        mem.delete_topic(f"req-{unique}")
        mem.delete_topic(f"resp-{unique}")
    line = fields(access_lines(caplog)[0])
    assert {
        k: line[k] for k in ("source", "class", "message_id", "model", "group", "status", "attempts")
    } == {
        "source": "batch",
        "class": "batch",
        "message_id": message.id,
        "model": "m-alias",
        "group": "m",
        "status": "200",
        "attempts": "1",
    }
    assert line["endpoint"] == backend.url and int(line["bytes_out"]) > 0
    assert backend.ids == [[line["request_id"]]], "the backend got the logged id"


def test_log_values_are_quoted_only_when_they_must_be() -> None:
    fields = {"path": "/v1/x", "model": 'a "b"=c\nd', "id": ""}
    record = logging.makeLogRecord({"name": LOGGER, "levelname": "INFO", "msg": "access", **fields})
    line = LogfmtFormatter().format(record)
    assert line.endswith(' path=/v1/x model="a \\"b\\"=c\\nd" id=""')
    assert "\n" not in line
