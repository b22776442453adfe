"""Model discovery from Deployments and endpoints from EndpointSlices, live against FakeKube."""

from __future__ import annotations

import asyncio
import logging

import aiohttp

from tests.conftest import wait_for
from tests.fakekube import FakeKube, endpoint_slice
from tests.kubernetes.conftest import NAMESPACE, metric_value, model_deployment, post_completion


async def test_models_appear_change_and_disappear_with_their_deployments(fake: FakeKube, start_lingo):
    lingo = await start_lingo(concurrency=7)
    fake.put(model_deployment("llama", "llama-3,llama"))
    await wait_for(lambda: lingo.registry.lookup("llama-3") is not None)
    group = lingo.registry.queues["llama"].group
    assert (group.models, group.min_replicas, group.max_replicas, group.concurrency) == (
        ("llama-3", "llama"),
        0,
        3,
        7,
    )
    assert group.scale_down_delay == lingo.settings.scale_down_delay

    fake.put(
        model_deployment(
            "llama", "llama-3.1", min_replicas="1", max_replicas="5", concurrency="4", scale_down_delay="2m"
        )
    )
    await wait_for(lambda: lingo.registry.lookup("llama-3.1") is not None)
    group = lingo.registry.queues["llama"].group
    assert lingo.registry.lookup("llama-3") is None
    assert (group.min_replicas, group.max_replicas, group.concurrency, group.scale_down_delay) == (
        1,
        5,
        4,
        120,
    )

    fake.put({**model_deployment("plain", "x"), "metadata": {"name": "plain", "namespace": NAMESPACE}})
    fake.delete_object("apps", "deployments", NAMESPACE, "llama")
    await wait_for(lambda: "llama" not in lingo.registry.queues)
    assert "plain" not in lingo.registry.queues


async def test_bad_annotation_is_logged_with_the_deployment_and_the_default_is_used(
    fake: FakeKube, start_lingo, caplog
):
    caplog.set_level(logging.WARNING, logger="lingo")
    fake.put(model_deployment("m", "m", max_replicas="lots", concurrency="0"))
    lingo = await start_lingo(concurrency=9)
    await wait_for(lambda: "m" in lingo.registry.queues)
    group = lingo.registry.queues["m"].group
    assert (group.max_replicas, group.concurrency) == (3, 9)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("'m'" in w and "lingo.substratus.ai/max-replicas" in w and "'lots'" in w for w in warnings)
    assert any("'m'" in w and "lingo.substratus.ai/concurrency" in w for w in warnings)
    # Not repeated on every watch event of the same Deployment. Watch events arrive in order, so
    # once a Deployment put after the update is known, the update was processed too.
    before = [r for r in caplog.records if r.levelno == logging.WARNING]
    fake.put(model_deployment("m", "m", max_replicas="lots", concurrency="0", replicas=1))
    fake.put(model_deployment("later", "later"))
    await wait_for(lambda: "later" in lingo.registry.queues)
    assert [r for r in caplog.records if r.levelno == logging.WARNING] == before


async def test_queued_requests_get_404_when_the_model_deployment_is_deleted(fake: FakeKube, start_lingo):
    fake.put(model_deployment("m", "m"))
    lingo = await start_lingo()
    async with aiohttp.ClientSession() as session:
        requests = [asyncio.ensure_future(post_completion(lingo, "m", session)) for _ in range(3)]
        await wait_for(lambda: lingo.registry.queues["m"].queued == 3)
        assert await metric_value(lingo, "lingo_requests_queued", "m") == 3
        fake.delete_object("apps", "deployments", NAMESPACE, "m")
        answers = await asyncio.wait_for(asyncio.gather(*requests), 5)
        assert [status for status, _ in answers] == [404, 404, 404]
        assert await metric_value(lingo, "lingo_requests_queued", "m") == 0
        assert await metric_value(lingo, "lingo_requests_in_flight", "m") == 0
        status, _ = await post_completion(lingo, "m", session)
        assert status == 404


async def test_slices_of_one_service_are_merged_and_an_unready_endpoint_gets_no_traffic(
    fake: FakeKube, start_lingo, model_servers
):
    a, b = model_servers(), model_servers()
    fake.put(model_deployment("m", "m", replicas=2, min_replicas="2", max_replicas="2", service="backend"))
    fake.put(endpoint_slice("backend-a", "backend", [("127.0.0.1", True)], a.port))
    fake.put(endpoint_slice("backend-b", "backend", [("127.0.0.1", True)], b.port))
    fake.put(
        endpoint_slice("m-ignored", "m", [("127.0.0.1", True)], 1)
    )  # the Deployment's name: not its Service
    lingo = await start_lingo()
    queue = lingo.registry.queues["m"]
    await wait_for(lambda: set(queue.endpoints) == {a.url, b.url})

    async with aiohttp.ClientSession() as session:
        served = {
            headers["X-Served-By"]
            for _, headers in await asyncio.gather(*(post_completion(lingo, "m", session) for _ in range(10)))
        }
        assert served == {str(a.port), str(b.port)}

        fake.put(endpoint_slice("backend-b", "backend", [("127.0.0.1", False)], b.port))
        await wait_for(lambda: set(queue.endpoints) == {a.url})
        answers = await asyncio.gather(*(post_completion(lingo, "m", session) for _ in range(10)))
        assert {headers["X-Served-By"] for _, headers in answers} == {str(a.port)}


async def test_endpoint_port_follows_the_port_annotation_by_name_or_number(fake: FakeKube, start_lingo):
    ports = [
        {"name": "metrics", "port": 9090, "protocol": "TCP"},
        {"name": "api", "port": 8000, "protocol": "TCP"},
    ]
    by_name = endpoint_slice("named-1", "named", [("10.0.0.1", True)], 0)
    by_number = endpoint_slice("numbered-1", "numbered", [("10.0.0.2", True)], 0)
    default = endpoint_slice("plain-1", "plain", [("10.0.0.3", True), ("10.0.0.4", None)], 0)
    by_name["ports"] = by_number["ports"] = ports
    default["ports"] = [*ports, {"name": "http", "port": 8080, "protocol": "TCP"}]
    del default["endpoints"][1]["conditions"]["ready"]  # missing: counts as ready
    for obj in (by_name, by_number, default):
        fake.put(obj)
    fake.put(model_deployment("named", "a", port="api"))
    fake.put(model_deployment("numbered", "b", port="9090"))
    fake.put(model_deployment("plain", "c"))
    lingo = await start_lingo()
    endpoints = {name: sorted(q.endpoints) for name, q in lingo.registry.queues.items()}
    assert endpoints == {
        "named": ["http://10.0.0.1:8000"],
        "numbered": ["http://10.0.0.2:9090"],
        "plain": ["http://10.0.0.3:8080", "http://10.0.0.4:8080"],
    }
