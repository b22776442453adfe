"""The proxy end to end: the official OpenAI SDK → lingo → `lingo fake-model` replicas, real sockets."""

from __future__ import annotations

import asyncio
import collections
import itertools

import aiohttp
import openai
import orjson
import pytest
from prometheus_client.parser import text_string_to_metric_families

from lingo.app import Lingo
from lingo.platforms.local import LocalPlatform
from lingo.platforms.models_file import LocalModel, load_models_file
from tests.conftest import fetch_json, free_port, wait_for
from tests.conftest import test_settings as settings_for_tests

SCALED = """
models:
  - name: chat
    models: [chat, gpt-4o-mini]
    command: [lingo, fake-model, --port, "{port}"]
    max_replicas: 2
    concurrency: 4
"""


def static(*urls: str, name: str = "static", concurrency: int = 100) -> str:
    endpoints = ", ".join(f'"{url}"' for url in urls)
    return f"""
models:
  - name: {name}
    endpoints: [{endpoints}]
    concurrency: {concurrency}
"""


def client_for(lingo, **kwargs) -> openai.AsyncOpenAI:  # type: ignore[no-untyped-def]
    return openai.AsyncOpenAI(base_url=lingo.url() + "/v1", api_key="unused", max_retries=0, **kwargs)


async def post(
    url: str, body: bytes | None = None, headers: dict[str, str] | None = None, **kwargs: object
) -> tuple[int, dict[str, str], bytes]:
    async with (
        aiohttp.ClientSession() as session,
        session.post(url, data=body, headers=headers, **kwargs) as r,
    ):
        return r.status, dict(r.headers), await r.read()


def assert_openai_error(status: int, headers: dict[str, str], body: bytes, expected: int, code: str) -> None:
    assert status == expected, body
    assert headers["X-Proxy"] == "lingo"
    error = orjson.loads(body)["error"]
    assert error["code"] == code and error["message"] and error["type"]


async def test_openai_sdk_scales_model_from_zero_and_serves_every_endpoint(start_lingo) -> None:
    lingo = await start_lingo(SCALED)
    assert lingo.registry.queues["chat"].endpoints == {}
    client = client_for(lingo)
    chat = await client.chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}]
    )
    assert chat.choices[0].message.content.startswith(" token0")
    assert len(lingo.registry.queues["chat"].endpoints) == 1
    completion = await client.completions.create(model="chat", prompt="hello", max_tokens=3)
    assert completion.choices[0].text == " token0 token1 token2"
    embedding = await client.embeddings.create(model="chat", input=["a", "b"])
    assert [len(item.embedding) for item in embedding.data] == [8, 8]
    models = await client.models.list()
    assert sorted(model.id for model in models.data) == ["chat", "gpt-4o-mini"]
    assert (await client.models.retrieve("chat")).id == "chat"
    await client.close()


async def test_sync_openai_client_streams_chat_completion(start_lingo) -> None:
    lingo = await start_lingo(SCALED)

    def stream() -> list[str]:
        client = openai.OpenAI(base_url=lingo.url() + "/v1", api_key="unused", max_retries=0)
        chunks = client.chat.completions.create(
            model="chat", stream=True, max_tokens=4, messages=[{"role": "user", "content": "hi"}]
        )
        return [chunk.choices[0].delta.content or "" for chunk in chunks]

    assert "".join(await asyncio.to_thread(stream)) == " token0 token1 token2 token3"


async def test_stream_chunks_reach_the_client_as_the_backend_sends_them(start_lingo, fake_model) -> None:
    backend = fake_model("--token-delay", "0.2")
    lingo = await start_lingo(static(backend.url))
    arrivals: list[float] = []
    loop = asyncio.get_running_loop()
    body = orjson.dumps({"model": "static", "stream": True, "max_tokens": 5, "prompt": "x"})
    async with (
        aiohttp.ClientSession() as session,
        session.post(lingo.url() + "/v1/completions", data=body) as r,
    ):
        assert r.status == 200 and r.headers["Content-Type"].startswith("text/event-stream")
        async for _ in r.content.iter_any():
            arrivals.append(loop.time())
    gaps = [later - earlier for earlier, later in itertools.pairwise(arrivals)]
    # Five tokens 0.2 s apart must arrive as at least four separate, spaced chunks, not in one piece.
    assert sum(gap > 0.1 for gap in gaps) >= 4, gaps


async def test_missing_model_is_400(start_lingo, fake_model) -> None:
    lingo = await start_lingo(static(fake_model().url))
    result = await post(lingo.url() + "/v1/completions", b'{"prompt": "x"}')
    assert_openai_error(*result, 400, "invalid_request")


async def test_malformed_json_is_400(start_lingo, fake_model) -> None:
    lingo = await start_lingo(static(fake_model().url))
    result = await post(
        lingo.url() + "/v1/completions", b'{"model": "static",', {"Content-Type": "application/json"}
    )
    assert_openai_error(*result, 400, "invalid_request")


@pytest.mark.parametrize("model", ["1", "[]", "null", '""', "{}"])
async def test_model_that_is_not_a_name_is_400(start_lingo, fake_model, model: str) -> None:
    lingo = await start_lingo(static(fake_model().url))
    result = await post(lingo.url() + "/v1/completions", b'{"model": ' + model.encode() + b"}")
    assert_openai_error(*result, 400, "invalid_request")


async def test_wrong_api_key_is_401_and_right_one_passes(start_lingo, fake_model) -> None:
    lingo = await start_lingo(static(fake_model().url), api_keys=["k1", "k2"])
    body = b'{"model": "static", "prompt": "x"}'
    assert_openai_error(*await post(lingo.url() + "/v1/completions", body), 401, "invalid_api_key")
    wrong = await post(lingo.url() + "/v1/completions", body, {"Authorization": "Bearer nope"})
    assert_openai_error(*wrong, 401, "invalid_api_key")
    status, _, _ = await post(lingo.url() + "/v1/completions", body, {"Authorization": "Bearer k2"})
    assert status == 200
    client = openai.AsyncOpenAI(base_url=lingo.url() + "/v1", api_key="k1", max_retries=0)
    assert (await client.completions.create(model="static", prompt="x")).choices
    await client.close()


async def test_unknown_model_is_404(start_lingo, fake_model) -> None:
    lingo = await start_lingo(static(fake_model().url))
    client = client_for(lingo)
    with pytest.raises(openai.NotFoundError) as error:
        await client.chat.completions.create(model="nope", messages=[])
    assert error.value.response.headers["X-Proxy"] == "lingo"
    assert error.value.body["code"] == "model_not_found"  # type: ignore[index]
    await client.close()


async def test_body_over_the_limit_is_413(start_lingo, fake_model) -> None:
    lingo = await start_lingo(static(fake_model().url), max_body=1000)
    body = orjson.dumps({"model": "static", "prompt": "x" * 2000})
    assert_openai_error(*await post(lingo.url() + "/v1/completions", body), 413, "request_too_large")

    async def chunks():  # no Content-Length: the limit must hold while reading, too
        yield body[:500]
        yield body[500:]

    assert_openai_error(*await post(lingo.url() + "/v1/completions", chunks()), 413, "request_too_large")


async def test_full_queue_is_429_with_retry_after(start_lingo) -> None:
    lingo = await start_lingo(
        """
        models:
          - name: slow
            command: [lingo, fake-model, --port, "{port}", --startup-delay, "30"]
        """,
        max_queue=2,
    )
    url = lingo.url() + "/v1/completions"
    body = b'{"model": "slow", "prompt": "x"}'
    waiting = [asyncio.create_task(post(url, body)) for _ in range(2)]
    await wait_for(lambda: lingo.registry.queues["slow"].queued == 2)
    status, headers, payload = await post(url, body)
    assert_openai_error(status, headers, payload, 429, "queue_full")
    assert int(headers["Retry-After"]) >= 1
    for task in waiting:
        task.cancel()
    await asyncio.gather(*waiting, return_exceptions=True)


async def test_backend_unreachable_after_retries_is_502(start_lingo) -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    lingo = await start_lingo(static(dead), backend_retries=2)
    assert_openai_error(
        *await post(lingo.url() + "/v1/completions", b'{"model": "static"}'), 502, "backend_unreachable"
    )


async def test_no_ready_endpoint_within_wait_limit_is_503(start_lingo) -> None:
    lingo = await start_lingo(
        """
        models:
          - name: never
            command: [lingo, fake-model, --port, "{port}"]
            ready_path: /not-a-health-path
        """,
        max_wait=0.5,
    )
    status, headers, body = await post(lingo.url() + "/v1/completions", b'{"model": "never"}')
    assert_openai_error(status, headers, body, 503, "no_ready_endpoint")
    assert int(headers["Retry-After"]) >= 1
    assert lingo.registry.queues["never"].queued == 0


async def test_killed_replica_is_retried_on_another(start_lingo, fake_model) -> None:
    first, second = fake_model(), fake_model()
    lingo = await start_lingo(static(first.url, second.url), backend_retries=1)
    client = client_for(lingo)
    await client.completions.create(model="static", prompt="warm")
    first.kill()
    for _ in range(10):
        reply = await client.completions.with_raw_response.create(model="static", prompt="x")
        assert reply.http_response.status_code == 200
        assert reply.headers["X-Served-By"] == str(second.port)
    await client.close()


async def test_backend_503_is_retried_and_the_body_resent(start_lingo, fake_model) -> None:
    backend = fake_model("--fail-first", "1")
    lingo = await start_lingo(static(backend.url), backend_retries=1)
    client = client_for(lingo)
    reply = await client.completions.create(model="static", prompt="x", max_tokens=2)
    assert reply.choices[0].text == " token0 token1"  # the retried request still carried its body
    await client.close()


async def test_backend_errors_pass_through_unchanged(start_lingo, fake_model) -> None:
    backend = fake_model("--failure-rate", "1")
    lingo = await start_lingo(static(backend.url), backend_retries=1)
    status, headers, body = await post(lingo.url() + "/v1/completions", b'{"model": "static"}')
    assert status == 500 and "X-Proxy" not in headers
    assert orjson.loads(body)["error"]["message"].startswith("fake model")


async def test_last_503_from_backend_passes_through_after_retries(start_lingo, fake_model) -> None:
    backend = fake_model("--fail-first", "5")
    lingo = await start_lingo(static(backend.url), backend_retries=1)
    status, headers, _ = await post(lingo.url() + "/v1/completions", b'{"model": "static"}')
    assert status == 503 and headers["X-Served-By"] == str(backend.port)


async def test_model_from_header_and_multipart_and_hop_by_hop_headers_dropped(
    start_lingo, fake_model
) -> None:
    lingo = await start_lingo(static(fake_model().url))
    headers = {
        "X-Model": "static",
        "Connection": "keep-alive, X-Hop",
        "X-Hop": "secret",
        "Proxy-Authorization": "Basic abc",
        "X-Custom": "kept",
    }
    status, _, body = await post(lingo.url() + "/echo/path?q=1", b"raw", headers)
    assert status == 200
    seen = orjson.loads(body)
    sent = {name.lower(): value for name, value in seen["headers"]}
    assert seen["path"] == "/echo/path?q=1" and seen["body"] == "raw"
    assert sent["x-custom"] == "kept"
    assert not {"x-hop", "proxy-authorization", "x-model"} & set(sent)

    form = aiohttp.FormData()
    form.add_field("file", b"\x00\x01audio", filename="a.wav", content_type="audio/wav")
    form.add_field("model", "static")
    status, _, body = await post(lingo.url() + "/echo/audio/transcriptions", form)
    assert status == 200 and orjson.loads(body)["path"] == "/echo/audio/transcriptions"


async def test_requests_spread_by_fewest_in_flight(start_lingo, fake_model) -> None:
    # One endpoint is held busy by a long request; round-robin would still send it every other
    # request, least-in-flight sends them all to the idle one.
    slow, fast = fake_model("--latency", "10"), fake_model()
    lingo = await start_lingo(static(slow.url, fast.url) + "    load_balancing: least-load\n")
    queue = lingo.registry.queues["static"]
    client = client_for(lingo)
    first = [asyncio.create_task(client.completions.create(model="static", prompt="x")) for _ in range(2)]
    await wait_for(lambda: queue.in_flight_on(slow.url) == 1 and queue.in_flight_on(fast.url) == 0)
    served_by: collections.Counter[str] = collections.Counter()
    quick = client_for(lingo, timeout=5.0)  # a request sent to the busy endpoint fails the test fast
    for _ in range(10):
        reply = await quick.completions.with_raw_response.create(model="static", prompt="x")
        served_by[reply.headers["X-Served-By"]] += 1
    assert served_by == {str(fast.port): 10}
    # Equal load spreads evenly: both idle again once the long request is gone.
    for task in first:
        task.cancel()
    await asyncio.gather(*first, return_exceptions=True)
    await wait_for(lambda: queue.in_flight == 0)
    both = [fake_model("--latency", "0.2"), fake_model("--latency", "0.2")]
    lingo_even = await start_lingo(static(*(b.url for b in both)) + "    load_balancing: least-load\n")
    client_even = client_for(lingo_even)
    replies = await asyncio.gather(
        *(client_even.completions.with_raw_response.create(model="static", prompt="x") for _ in range(20))
    )
    spread = collections.Counter(reply.headers["X-Served-By"] for reply in replies)
    assert sorted(spread.values()) == [10, 10], spread
    for opened in (client, quick, client_even):
        await opened.close()


async def test_client_disconnect_while_queued_frees_its_place(start_lingo) -> None:
    lingo = await start_lingo(
        """
        models:
          - name: slow
            command: [lingo, fake-model, --port, "{port}", --startup-delay, "30"]
        """
    )
    queue = lingo.registry.queues["slow"]
    url = lingo.url() + "/v1/completions"
    tasks = [asyncio.create_task(post(url, b'{"model": "slow"}')) for _ in range(50)]
    await wait_for(lambda: queue.queued == 50)
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    await wait_for(lambda: queue.queued == 0, timeout=5)
    assert queue.in_flight == 0


async def test_client_disconnect_while_streaming_frees_its_slot(start_lingo, fake_model) -> None:
    lingo = await start_lingo(static(fake_model("--token-delay", "0.1").url))
    queue = lingo.registry.queues["static"]
    body = b'{"model": "static", "stream": true, "max_tokens": 100}'
    async with aiohttp.ClientSession() as session:
        response = await session.post(lingo.url() + "/v1/completions", data=body)
        await response.content.readany()
        assert queue.in_flight == 1
        response.close()
    await wait_for(lambda: queue.in_flight == 0, timeout=5)


async def test_metrics_expose_contract_names_and_labels(start_lingo) -> None:
    lingo = await start_lingo(SCALED)
    client = client_for(lingo)
    await client.completions.create(model="chat", prompt="x")
    await client.close()
    async with aiohttp.ClientSession() as session, session.get(lingo.url("metrics") + "/metrics") as r:
        text = await r.text()
    samples = {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }
    total = (
        "lingo_requests_total",
        (("class", "default"), ("code", "200"), ("model", "chat"), ("source", "http")),
    )
    assert samples[total] == 1
    for klass in ("priority", "default", "flex", "batch"):
        assert samples[("lingo_requests_queued", (("class", klass), ("model", "chat")))] == 0
    assert samples[("lingo_requests_in_flight", (("model", "chat"),))] == 0
    assert samples[("lingo_replicas", (("model", "chat"), ("state", "desired")))] == 1
    assert samples[("lingo_replicas", (("model", "chat"), ("state", "ready")))] == 1
    assert samples[("lingo_replicas", (("model", "chat"), ("state", "max")))] == 2
    assert samples[("lingo_scale_events_total", (("direction", "up"), ("model", "chat")))] == 1
    assert samples[("lingo_request_duration_seconds_count", (("model", "chat"), ("source", "http")))] == 1
    assert samples[("lingo_queue_wait_seconds_count", (("model", "chat"),))] == 1


async def test_health_ready_and_stats(fake_model, tmp_path) -> None:
    models = tmp_path / "models.yaml"
    models.write_text(static(fake_model().url))
    platform = GatedPlatform(load_models_file(str(models), 100, 30.0))
    lingo = Lingo(settings_for_tests(models_file=str(models), shutdown_delay=0.5), platform)
    starting = asyncio.create_task(lingo.start())
    try:
        async with aiohttp.ClientSession() as session:

            async def status(listener: str, path: str) -> int:
                async with session.get(lingo.url(listener) + path) as r:
                    return r.status

            await wait_for(lambda: "health" in lingo.addresses)
            # Listening, but the platform has not listed its models yet: alive, not ready.
            assert (await status("health", "/healthz"), await status("health", "/readyz")) == (200, 503)
            platform.gate.set()
            await starting
            assert (await status("health", "/healthz"), await status("health", "/readyz")) == (200, 200)
            assert await fetch_json(lingo.url("stats") + "/stats") == {"activeRequests": {"static": 0}}
            # Shutting down: readiness fails at once, while the proxy still answers.
            leaving = asyncio.create_task(lingo.leave())
            await wait_for(lambda: lingo.shutting_down)
            assert await status("health", "/readyz") == 503
            assert await status("proxy", "/v1/models") == 200
            await leaving
    finally:
        platform.gate.set()
        await starting
        await lingo.stop()


class GatedPlatform(LocalPlatform):
    """The local platform, holding its first listing until `gate` is set (a slow API server)."""

    def __init__(self, models: list[LocalModel]) -> None:
        super().__init__(models)
        self.gate = asyncio.Event()

    async def start(self, registry) -> None:  # type: ignore[no-untyped-def]
        await self.gate.wait()
        await super().start(registry)


async def test_pooled_connections_to_a_removed_endpoint_are_dropped(start_lingo, fake_model) -> None:
    backend = fake_model()
    lingo = await start_lingo(static(backend.url))
    client = client_for(lingo)
    await client.completions.create(model="static", prompt="x")
    pool = lingo.forwarder.pool
    assert pool._idle[("127.0.0.1", backend.port)]
    lingo.registry.set_endpoints("static", [])
    assert not pool._idle.get(("127.0.0.1", backend.port))
    await client.close()
