"""Watches that survive: expired resourceVersions, API server restarts and outages."""

from __future__ import annotations

import asyncio

import aiohttp

from tests.conftest import wait_for
from tests.fakekube import FakeKube, endpoint_slice
from tests.kubernetes.conftest import NAMESPACE, model_deployment, post_completion


async def test_expired_watch_relists_and_keeps_discovering(fake: FakeKube, start_lingo):
    fake.put(model_deployment("a", "a"))
    lingo = await start_lingo()
    watches = lingo.platform.deployments, lingo.platform.endpoint_slices
    lists = [w.lists for w in watches]
    fake.expire_watches()  # every resourceVersion so far is now too old: 410 on resume
    fake.put(model_deployment("b", "b"))
    fake.delete_object("apps", "deployments", NAMESPACE, "a")
    await wait_for(lambda: set(lingo.registry.queues) == {"b"}, timeout=5)
    await wait_for(lambda: all(w.lists > n for w, n in zip(watches, lists, strict=True)), timeout=5)
    fake.put(model_deployment("c", "c"))
    await wait_for(lambda: "c" in lingo.registry.queues, timeout=5)


async def test_a_410_error_event_on_resuming_a_watch_relists(fake: FakeKube, start_lingo):
    lingo = await start_lingo()
    deployments = lingo.platform.deployments
    lists = deployments.lists
    fake.fail_next("watch", "apps", "deployments", 410)
    await fake.restart()  # watches end cleanly; resuming one meets the 410
    fake.put(model_deployment("late", "late"))
    await wait_for(lambda: "late" in lingo.registry.queues, timeout=5)
    assert deployments.lists > lists


async def test_api_server_restart_mid_watch_resyncs_and_discovers_new_deployments(
    fake: FakeKube, start_lingo
):
    fake.put(model_deployment("before", "before"))
    lingo = await start_lingo()
    await fake.restart(downtime=0.3, graceful=False)
    fake.put(model_deployment("after-crash", "after-crash"))
    await wait_for(lambda: "after-crash" in lingo.registry.queues, timeout=5)

    await fake.stop()
    fake.delete_object("apps", "deployments", NAMESPACE, "before")  # missed while away...
    fake.expire_watches()  # ...and no history to replay it from: only a relist can tell
    await asyncio.sleep(0.3)
    await fake.start()
    fake.put(model_deployment("after-restart", "after-restart"))
    await wait_for(lambda: set(lingo.registry.queues) == {"after-crash", "after-restart"}, timeout=5)
    await fake.wait_for_watches(2, timeout=5)


async def test_api_server_outage_delays_scaling_but_keeps_serving_and_queued_requests(
    fake: FakeKube, start_lingo, kubelet, model_servers
):
    warm = model_servers()
    fake.put(model_deployment("warm", "warm", replicas=1, min_replicas="1", max_replicas="1"))
    fake.put(endpoint_slice("warm-1", "warm", [("127.0.0.1", True)], warm.port))
    fake.put(model_deployment("cold", "cold"))
    kubelet()
    lingo = await start_lingo()
    async with aiohttp.ClientSession() as session:
        await fake.stop()
        cold = asyncio.ensure_future(post_completion(lingo, "cold", session, timeout=20))
        for _ in range(3):
            status, _ = await post_completion(lingo, "warm", session)
            assert status == 200
        await asyncio.sleep(1.5)  # several autoscaler ticks fail to scale meanwhile
        assert not cold.done()
        assert lingo.registry.queues["cold"].queued == 1
        assert fake.get_object("apps", "deployments", NAMESPACE, "cold")["spec"]["replicas"] == 0
        await fake.start()
        status, _ = await asyncio.wait_for(cold, 15)
    assert status == 200
