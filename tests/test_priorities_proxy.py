"""Priority classes end to end: the official OpenAI SDK → lingo → a counting backend, real sockets."""

from __future__ import annotations

import asyncio
import uuid

import aiohttp
import openai
import orjson
import pytest
from prometheus_client.parser import text_string_to_metric_families

from lingo.batch.brokers import mem
from lingo.queue import Priority
from tests.conftest import StartLingo, wait_for
from tests.counting_backend import CountingBackend, counting_backend
from tests.test_proxy import client_for, static


async def queued_by_class(lingo) -> dict[str, float]:  # type: ignore[no-untyped-def]
    """`lingo_requests_queued` of model m from /metrics, by class."""
    async with aiohttp.ClientSession() as session, session.get(lingo.url("metrics") + "/metrics") as r:
        text = await r.text()
    return {
        sample.labels["class"]: sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == "lingo_requests_queued" and sample.labels["model"] == "m"
    }


def chat(client: openai.AsyncOpenAI, label: str, **kwargs: object) -> asyncio.Task[object]:
    messages = [{"role": "user", "content": label}]
    return asyncio.create_task(client.chat.completions.create(model="m", messages=messages, **kwargs))  # type: ignore[call-overload]


async def test_service_tier_and_the_priority_header_from_the_openai_sdk_choose_the_class(
    start_lingo: StartLingo,
) -> None:
    async with counting_backend() as backend:
        lingo = await start_lingo(static(backend.url, name="m", concurrency=1))
        queue = lingo.registry.queues["m"]
        client = client_for(lingo)
        tasks = [chat(client, "hold-first")]
        await wait_for(lambda: backend.current == 1)
        arrivals: list[tuple[str, dict[str, object], Priority]] = [
            ("flex", {"service_tier": "flex"}, Priority.FLEX),
            ("default", {}, Priority.DEFAULT),
            ("auto", {"service_tier": "auto"}, Priority.DEFAULT),
            ("header", {"extra_headers": {"X-Lingo-Priority": "priority"}}, Priority.PRIORITY),
            ("tier", {"service_tier": "priority"}, Priority.PRIORITY),
            (
                "header-wins",
                {"service_tier": "priority", "extra_headers": {"X-Lingo-Priority": "flex"}},
                Priority.FLEX,
            ),
            ("unknown", {"extra_body": {"service_tier": "platinum"}}, Priority.DEFAULT),
        ]
        for label, kwargs, klass in arrivals:
            before = queue.queued_by(klass)
            tasks.append(chat(client, label, **kwargs))
            await wait_for(lambda k=klass, n=before: queue.queued_by(k) == n + 1)
        assert await queued_by_class(lingo) == {"priority": 2, "default": 3, "flex": 2, "batch": 0}
        backend.gate.set()
        await asyncio.gather(*tasks)
        await client.close()
    assert backend.arrivals() == [
        "hold-first",
        "header",
        "tier",
        "default",
        "auto",
        "unknown",
        "flex",
        "header-wins",
    ]
    by_label = {body["messages"][0]["content"]: body for body in backend.bodies}
    assert by_label["flex"]["service_tier"] == "flex", "the body is forwarded unchanged"
    assert by_label["unknown"]["service_tier"] == "platinum"
    counted = {
        klass: lingo.metrics.prometheus.get_sample_value(
            "lingo_requests_total", {"model": "m", "source": "http", "class": klass, "code": "200"}
        )
        for klass in ("priority", "default", "flex")
    }
    assert counted == {"priority": 2, "default": 4, "flex": 2}


async def test_a_flex_request_that_finds_no_slot_in_time_gets_429_with_retry_after(
    start_lingo: StartLingo,
) -> None:
    async with counting_backend() as backend:
        lingo = await start_lingo(static(backend.url, name="m", concurrency=1), flex_max_wait=0.3)
        client = client_for(lingo)
        held = chat(client, "hold")
        await wait_for(lambda: backend.current == 1)
        waiting_default = chat(client, "default")
        with pytest.raises(openai.RateLimitError) as refused:
            await client.chat.completions.create(
                model="m", messages=[{"role": "user", "content": "flex"}], service_tier="flex"
            )
        assert refused.value.status_code == 429
        assert float(refused.value.response.headers["Retry-After"]) > 0
        assert refused.value.code == "resource_unavailable" and refused.value.message
        assert not waiting_default.done(), "only flex gives up early"
        # The header works where there is no JSON body, e.g. an audio upload.
        form = aiohttp.FormData({"model": "m"})
        form.add_field("file", b"RIFF", filename="a.wav", content_type="audio/wav")
        async with (
            aiohttp.ClientSession() as session,
            session.post(
                lingo.url() + "/v1/audio/transcriptions", data=form, headers={"X-Lingo-Priority": "flex"}
            ) as response,
        ):
            assert response.status == 429 and response.headers["Retry-After"]
            assert (await response.json())["error"]["code"] == "resource_unavailable"
        backend.gate.set()
        await asyncio.gather(held, waiting_default)
        await client.close()
    assert "flex" not in backend.arrivals()


def publish_batch(topic: str, count: int) -> None:
    for i in range(count):
        document = {
            "path": "/v1/completions",
            "metadata": {"custom_id": str(i)},
            "body": {"model": "m", "prompt": f"hold-batch-{i}"},
        }
        mem.topic(topic).publish(orjson.dumps(document), {})


def held_batch(backend: CountingBackend) -> int:
    return sum(1 for label in backend.arrivals() if label.startswith("hold-batch"))


@pytest.mark.parametrize("share", [0.75, 1.0])
async def test_an_interactive_request_gets_a_slot_at_once_while_batch_work_saturates_its_share(
    start_lingo: StartLingo, share: float
) -> None:
    unique = uuid.uuid4().hex[:8]
    try:
        async with counting_backend() as backend:
            lingo = await start_lingo(
                static(backend.url, name="m", concurrency=4),
                messengers=[f"mem://req-{unique}|mem://resp-{unique}"],
                batch_max_share=share,
            )
            queue = lingo.registry.queues["m"]
            publish_batch(f"req-{unique}", 20)
            slots = 3 if share < 1 else 4
            await wait_for(lambda: backend.current == slots and queue.queued_by(Priority.BATCH) == 20 - slots)
            client = client_for(lingo)
            interactive = chat(client, "interactive")
            done, _ = await asyncio.wait([interactive], timeout=2 if share < 1 else 0.5)
            if share < 1:
                assert done, "the interactive request waited behind the batch"
                assert held_batch(backend) == 3, "batch never went past its share"
            else:
                assert not done, "with a share of 1 batch holds every slot"
            backend.gate.set()
            await interactive
            await wait_for(lambda: held_batch(backend) == 20 and backend.current == 0)
            await client.close()
    finally:
        mem.delete_topic(f"req-{unique}")
        mem.delete_topic(f"resp-{unique}")
