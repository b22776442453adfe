"""The list + watch loop on its own, against FakeKube."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from kubernetes_asyncio.client import AppsV1Api

from lingo.backoff import Backoff
from lingo.platforms.kubernetes.watch import ResourceWatch
from tests.conftest import wait_for
from tests.fakekube import FakeKube, deployment
from tests.kubernetes.conftest import NAMESPACE


@pytest.fixture
async def watched(fake: FakeKube) -> AsyncIterator[tuple[ResourceWatch, list[int]]]:
    api = await fake.api_client()
    changes: list[int] = []
    watch = ResourceWatch(
        "deployments",
        AppsV1Api(api).list_namespaced_deployment,
        api.sanitize_for_serialization,
        namespace=NAMESPACE,
        on_change=lambda: changes.append(len(watch.objects)),
        backoff=Backoff(initial=0.05, cap=0.2),
    )
    task = asyncio.ensure_future(watch.run())
    await asyncio.wait_for(watch.synced.wait(), 5)
    yield watch, changes
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    await api.close()


async def test_bookmarks_move_the_resource_version_on_without_a_relist(fake: FakeKube, watched):
    watch, _ = watched
    fake.put({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "other"}, "data": {}})
    await wait_for(lambda: watch.resource_version == fake.resource_version, timeout=3)
    assert watch.lists == 1


async def test_an_ended_watch_resumes_from_the_last_version_without_a_relist(fake: FakeKube, watched):
    watch, _ = watched
    fake.put(deployment("a"))
    await wait_for(lambda: "a" in watch.objects)
    await fake.restart()
    fake.put(deployment("b"))
    await wait_for(lambda: "b" in watch.objects, timeout=5)
    assert watch.lists == 1
    assert len(fake.calls_for("list", "deployments")) == 1


async def test_paged_list_reads_every_object(fake: FakeKube, watched):
    watch, _ = watched
    for i in range(1200):
        fake.put(deployment(f"d{i}"))
    fake.expire_watches()
    await wait_for(lambda: watch.lists == 2 and len(watch.objects) == 1200, timeout=15)
    assert len(fake.calls_for("list", "deployments")) == 1 + 3  # first list, then 3 pages of 500


async def test_a_failing_change_handler_does_not_stop_the_watch(fake: FakeKube, watched):
    watch, changes = watched
    watch.on_change = lambda: 1 / 0
    fake.put(deployment("a"))
    await wait_for(lambda: "a" in watch.objects)
    watch.on_change = lambda: changes.append(len(watch.objects))
    fake.put(deployment("b"))
    await wait_for(lambda: changes and changes[-1] == 2)
