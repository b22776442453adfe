"""Scaling model Deployments through the scale subresource, end to end against FakeKube."""

from __future__ import annotations

import asyncio
import time

import aiohttp
import openai

from tests.conftest import wait_for
from tests.fakekube import FakeKube
from tests.kubernetes.conftest import NAMESPACE, background, model_deployment, post_completion


def replicas_of(fake: FakeKube, name: str) -> int:
    obj = fake.get_object("apps", "deployments", NAMESPACE, name)
    assert obj is not None
    return int(obj["spec"]["replicas"])


async def test_first_request_scales_deployment_from_zero_and_is_answered(fake, start_lingo, kubelet):
    fake.put(model_deployment("chat", "fake-chat,gpt-4o-mini"))
    kubelet()
    lingo = await start_lingo()
    client = openai.AsyncOpenAI(base_url=lingo.url() + "/v1", api_key="unused", max_retries=0, timeout=20)
    try:
        started = time.monotonic()
        answer = await client.chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "hello"}]
        )
    finally:
        await client.close()
    assert answer.choices[0].message.content
    assert replicas_of(fake, "chat") == 1
    assert time.monotonic() - started < 15
    writes = fake.calls_for("update", "deployments", "scale")
    assert writes and all(call.name == "chat" for call in writes)


async def test_replicas_follow_load_up_to_max_and_back_to_zero(fake, start_lingo, kubelet):
    fake.put(model_deployment("m", "m", concurrency="2", max_replicas="3", scale_down_delay="1s"))
    cluster = kubelet("--latency", "0.3")
    lingo = await start_lingo()
    served: list[int] = []

    async def client(session: aiohttp.ClientSession) -> None:
        while True:
            status, _ = await post_completion(lingo, "m", session)
            served.append(status)

    async with aiohttp.ClientSession() as session:
        for clients, replicas in ((2, 1), (4, 2), (8, 3)):
            async with background(*(client(session) for _ in range(clients))):
                await wait_for(lambda r=replicas: replicas_of(fake, "m") == r, timeout=15)
                await asyncio.sleep(1.5)  # a full window at this load: no more replicas than needed
                assert replicas_of(fake, "m") == replicas
    assert cluster.history["m"][:3] == [1, 2, 3]
    assert max(cluster.history["m"]) == 3
    await wait_for(lambda: replicas_of(fake, "m") == 0, timeout=10)
    assert served and set(served) == {200}
    await wait_for(lambda: not cluster.replicas["m"], timeout=10)
