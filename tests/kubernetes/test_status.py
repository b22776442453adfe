"""The status facts on the Kubernetes platform: the group's replica bounds come from its Deployment's
annotations, desired replicas from the scale the leader asked for, and the process says it leads."""

from __future__ import annotations

import asyncio

import aiohttp

from tests.conftest import fetch_json, wait_for
from tests.fakekube import FakeKube
from tests.kubernetes.conftest import NAMESPACE, model_deployment


async def test_status_json_on_kubernetes_shows_the_deployment_and_the_scale_up(fake: FakeKube, start_lingo):
    fake.put(model_deployment("llama", "llama-3,llama", max_replicas="4", concurrency="3"))
    lingo = await start_lingo()
    await wait_for(lambda: "llama" in lingo.registry.queues)
    url = lingo.url("health") + "/status.json"
    facts = await fetch_json(url)
    assert isinstance(facts, dict)
    assert facts["platform"] == "kubernetes" and facts["leader"] is True
    [group] = facts["groups"]
    assert group["models"] == ["llama-3", "llama"] and group["concurrency"] == 3
    assert group["replicas"] == {"desired": 0, "ready": 0, "min": 0, "max": 4}

    async def request() -> None:
        body = {"model": "llama", "prompt": "x"}
        async with aiohttp.ClientSession() as session:
            await session.post(lingo.url() + "/v1/completions", json=body)

    waiting = asyncio.ensure_future(request())  # no replica ever gets ready: it waits
    try:
        await wait_for(
            lambda: fake.get_object("apps", "deployments", NAMESPACE, "llama")["spec"]["replicas"] == 1
        )
        facts = await fetch_json(url)
        [group] = facts["groups"]  # type: ignore[index]
        assert group["replicas"]["desired"] == 1 and group["replicas"]["ready"] == 0
        assert group["queued_total"] == 1
        [event] = group["scale_events"]
        assert (event["from"], event["to"], event["reason"]) == (0, 1, "request waiting, no ready replica")
    finally:
        waiting.cancel()
        await asyncio.gather(waiting, return_exceptions=True)
