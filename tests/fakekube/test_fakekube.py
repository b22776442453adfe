"""Tests of the fake API server itself, driven by the real ``kubernetes_asyncio`` client."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import pytest_asyncio
from kubernetes_asyncio import client, config, watch
from kubernetes_asyncio.client.exceptions import ApiException

from tests.fakekube import Call, FakeKube, LabelSelector, deployment, endpoint_slice, json_patch

pytestmark = pytest.mark.asyncio

NS = "default"


@pytest_asyncio.fixture
async def fake() -> AsyncIterator[FakeKube]:
    async with FakeKube(bookmark_interval=0.2) as f:
        yield f


@pytest_asyncio.fixture
async def api(fake: FakeKube) -> AsyncIterator[client.ApiClient]:
    c = await fake.api_client()
    yield c
    await c.close()


async def collect(stream: watch.Watch, n: int, timeout: float = 3.0) -> list[dict[str, Any]]:
    """The next ``n`` events of a watch (fails if they do not come in time)."""
    out: list[dict[str, Any]] = []
    async with asyncio.timeout(timeout):
        async for ev in stream:
            out.append(ev)
            if len(out) == n:
                break
    return out


def summary(events: list[dict[str, Any]]) -> list[tuple[str, str]]:
    return [(e["type"], e["raw_object"]["metadata"].get("name", "")) for e in events]


# ----------------------------------------------------------------------------- CRUD


async def test_crud_conflicts_and_errors(fake: FakeKube, api: client.ApiClient) -> None:
    apps = client.AppsV1Api(api)
    created = await apps.create_namespaced_deployment(NS, deployment("m1", replicas=1))
    assert created.metadata.uid and created.metadata.creation_timestamp
    assert created.metadata.generation == 1
    rv1 = created.metadata.resource_version

    with pytest.raises(ApiException) as exc:
        await apps.create_namespaced_deployment(NS, deployment("m1"))
    assert exc.value.status == 409 and '"reason":"AlreadyExists"' in exc.value.body.replace(" ", "")

    got = await apps.read_namespaced_deployment("m1", NS)
    assert got.spec.replicas == 1 and got.metadata.resource_version == rv1

    # Replace with the current rv works and bumps rv + generation.
    got.spec.template.spec.containers[0].image = "fake/model:v2"
    replaced = await apps.replace_namespaced_deployment("m1", NS, got)
    assert int(replaced.metadata.resource_version) > int(rv1)
    assert replaced.metadata.generation == 2

    # Replacing again with the now stale rv is a Conflict.
    got.metadata.resource_version = rv1
    with pytest.raises(ApiException) as exc:
        await apps.replace_namespaced_deployment("m1", NS, got)
    assert exc.value.status == 409 and "Conflict" in exc.value.body

    with pytest.raises(ApiException) as exc:
        await apps.replace_namespaced_deployment("nope", NS, deployment("nope"))
    assert exc.value.status == 404

    status = await apps.delete_namespaced_deployment("m1", NS)
    assert status.status == "Success" and status.details.name == "m1"
    with pytest.raises(ApiException) as exc:
        await apps.read_namespaced_deployment("m1", NS)
    assert exc.value.status == 404
    assert 'deployments.apps \\"m1\\" not found' in exc.value.body
    with pytest.raises(ApiException) as exc:
        await apps.delete_namespaced_deployment("m1", NS)
    assert exc.value.status == 404


async def test_list_selectors_and_pagination(fake: FakeKube, api: client.ApiClient) -> None:
    core = client.CoreV1Api(api)
    for name, labels in [
        ("a", {"app": "x", "tier": "web"}),
        ("b", {"app": "x", "tier": "db"}),
        ("c", {"app": "y"}),
    ]:
        await core.create_namespaced_config_map(
            NS, {"metadata": {"name": name, "labels": labels}, "data": {"k": name}}
        )
    fake.put({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "d", "namespace": "other"}})

    async def names(selector: str = "", field: str = "", ns: str | None = NS) -> list[str]:
        if ns is None:
            res = await core.list_config_map_for_all_namespaces(label_selector=selector, field_selector=field)
        else:
            res = await core.list_namespaced_config_map(ns, label_selector=selector, field_selector=field)
        return [i.metadata.name for i in res.items]

    assert await names() == ["a", "b", "c"]
    assert await names("app=x") == ["a", "b"]
    assert await names("app==x,tier!=db") == ["a"]
    assert await names("tier") == ["a", "b"]
    assert await names("!tier") == ["c"]
    assert await names("tier in (db, cache)") == ["b"]
    assert await names("app notin (x),!tier") == ["c"]
    assert await names(field="metadata.name=b") == ["b"]
    assert await names(ns=None) == ["a", "b", "c", "d"]
    with pytest.raises(ApiException) as exc:
        await names("app in (x")
    assert exc.value.status == 400

    listing = await core.list_namespaced_config_map(NS)
    assert listing.metadata.resource_version == fake.resource_version
    page1 = await core.list_namespaced_config_map(NS, limit=2)
    assert [i.metadata.name for i in page1.items] == ["a", "b"] and page1.metadata._continue
    page2 = await core.list_namespaced_config_map(NS, limit=2, _continue=page1.metadata._continue)
    assert [i.metadata.name for i in page2.items] == ["c"] and not page2.metadata._continue


async def test_label_selector_parser() -> None:
    sel = LabelSelector("a=1,b in (x,y),!c,d,e notin (z),f>3")
    assert sel.matches({"a": "1", "b": "y", "d": "", "f": "4"})
    assert not sel.matches({"a": "1", "b": "y", "d": "", "f": "4", "c": "1"})
    assert not sel.matches({"a": "1", "b": "q", "d": "", "f": "4"})
    assert LabelSelector("").matches(None)
    assert LabelSelector("a=").matches({"a": ""})  # an empty value is legal
    for bad in ("=x", "a in (x", "a b"):
        with pytest.raises(ValueError):
            LabelSelector(bad)


async def test_json_patch_ops() -> None:
    doc = {"a": {"b": [1, 2]}, "c": 1}
    out = json_patch(
        doc,
        [
            {"op": "add", "path": "/a/b/-", "value": 3},
            {"op": "replace", "path": "/c", "value": 2},
            {"op": "remove", "path": "/a/b/0"},
            {"op": "test", "path": "/c", "value": 2},
            {"op": "copy", "from": "/c", "path": "/d"},
        ],
    )
    assert out == {"a": {"b": [2, 3]}, "c": 2, "d": 2} and doc["c"] == 1


async def test_patches(fake: FakeKube, api: client.ApiClient) -> None:
    core = client.CoreV1Api(api)
    await core.create_namespaced_config_map(NS, {"metadata": {"name": "cm"}, "data": {"a": "1", "b": "2"}})
    # A dict body goes as strategic-merge-patch: null deletes a key.
    cm = await core.patch_namespaced_config_map("cm", NS, {"data": {"a": None, "c": "3"}})
    assert cm.data == {"b": "2", "c": "3"}
    # A list body goes as json-patch.
    cm = await core.patch_namespaced_config_map(
        "cm", NS, [{"op": "replace", "path": "/data/b", "value": "9"}]
    )
    assert cm.data == {"b": "9", "c": "3"}
    with pytest.raises(ApiException) as exc:
        await core.patch_namespaced_config_map("cm", NS, [{"op": "test", "path": "/data/b", "value": "0"}])
    assert exc.value.status == 422
    # A patch carrying a stale resourceVersion is a precondition failure.
    with pytest.raises(ApiException) as exc:
        await core.patch_namespaced_config_map("cm", NS, {"metadata": {"resourceVersion": "1"}})
    assert exc.value.status == 409
    with pytest.raises(ApiException) as exc:
        await core.patch_namespaced_config_map("missing", NS, {"data": {}})
    assert exc.value.status == 404
    # No-op writes do not bump the resourceVersion (like etcd3's store).
    before = fake.resource_version
    await core.patch_namespaced_config_map("cm", NS, {"data": {"b": "9"}})
    assert fake.resource_version == before


# ----------------------------------------------------------------------------- scale


async def test_scale_subresource_and_watch(fake: FakeKube, api: client.ApiClient) -> None:
    apps = client.AppsV1Api(api)
    fake.put(deployment("m", replicas=0, annotations={"lingo.substratus.ai/models": "m"}))

    scale = await apps.read_namespaced_deployment_scale("m", NS)
    assert scale.kind == "Scale" and scale.api_version == "autoscaling/v1"
    assert scale.spec.replicas == 0 and scale.status.selector == "app=m"
    listed = await apps.list_namespaced_deployment(NS)

    async with watch.Watch() as w:
        stream = w.stream(
            apps.list_namespaced_deployment,
            NS,
            resource_version=listed.metadata.resource_version,
            timeout_seconds=5,
        )
        scale.spec.replicas = 2
        replaced = await apps.replace_namespaced_deployment_scale("m", NS, scale)
        assert replaced.spec.replicas == 2
        assert int(replaced.metadata.resource_version) > int(scale.metadata.resource_version)

        # The scale's resourceVersion is the deployment's: a stale one conflicts.
        scale.spec.replicas = 3
        with pytest.raises(ApiException) as exc:
            await apps.replace_namespaced_deployment_scale("m", NS, scale)
        assert exc.value.status == 409

        patched = await apps.patch_namespaced_deployment_scale("m", NS, {"spec": {"replicas": 4}})
        assert patched.spec.replicas == 4
        patched = await apps.patch_namespaced_deployment_scale(
            "m", NS, [{"op": "replace", "path": "/spec/replicas", "value": 1}]
        )
        assert patched.spec.replicas == 1

        events = await collect(stream, 3)
    assert [e["type"] for e in events] == ["MODIFIED"] * 3
    assert [e["object"].spec.replicas for e in events] == [2, 4, 1]
    assert fake.get_object("apps", "deployments", NS, "m")["spec"]["replicas"] == 1  # type: ignore[index]

    with pytest.raises(ApiException) as exc:
        await apps.patch_namespaced_deployment_scale("m", NS, {"spec": {"replicas": -1}})
    assert exc.value.status == 422


# ----------------------------------------------------------------------------- watch


async def test_watch_replay_initial_and_live(fake: FakeKube, api: client.ApiClient) -> None:
    apps = client.AppsV1Api(api)
    await apps.create_namespaced_deployment(NS, deployment("a"))
    rv = (await apps.list_namespaced_deployment(NS)).metadata.resource_version
    await apps.create_namespaced_deployment(NS, deployment("b"))
    await apps.patch_namespaced_deployment("a", NS, {"metadata": {"labels": {"x": "1"}}})
    await apps.delete_namespaced_deployment("b", NS)

    async with watch.Watch() as w:
        events = await collect(
            w.stream(apps.list_namespaced_deployment, NS, resource_version=rv, timeout_seconds=5), 3
        )
    assert summary(events) == [("ADDED", "b"), ("MODIFIED", "a"), ("DELETED", "b")]
    assert events[0]["raw_object"]["kind"] == "Deployment"

    # No resourceVersion: synthetic ADDED for the current state, then live events.
    async with watch.Watch() as w:
        stream = w.stream(apps.list_deployment_for_all_namespaces, timeout_seconds=5)
        first = await collect(stream, 1)
        fake.put(deployment("c", namespace="other"))
        second = await collect(stream, 1)
    assert summary(first) == [("ADDED", "a")]
    assert summary(second) == [("ADDED", "c")]
    assert w.resource_version == fake.resource_version
    # The client hanging up ends the server side of the watch too.
    async with asyncio.timeout(2):
        while fake.watch_count():
            await asyncio.sleep(0.01)


async def test_watch_label_selector_transitions(fake: FakeKube, api: client.ApiClient) -> None:
    disc = client.DiscoveryV1Api(api)
    fake.put(endpoint_slice("s1", "svc", [("10.0.0.1", False)], 8000))
    async with watch.Watch() as w:
        stream = w.stream(
            disc.list_namespaced_endpoint_slice,
            NS,
            label_selector="kubernetes.io/service-name=svc",
            timeout_seconds=5,
        )
        assert summary(await collect(stream, 1)) == [("ADDED", "s1")]
        fake.put(endpoint_slice("other", "svc2", [("10.0.0.9", True)], 8000))  # filtered out
        fake.put(endpoint_slice("s1", "svc", [("10.0.0.1", True)], 8000))
        moved = endpoint_slice("s1", "svc-renamed", [("10.0.0.1", True)], 8000)
        fake.put(moved)  # leaves the selector: DELETED for this watcher
        fake.put(endpoint_slice("s1", "svc", [], 8000))  # back in: ADDED
        events = await collect(stream, 3)
    assert summary(events) == [("MODIFIED", "s1"), ("DELETED", "s1"), ("ADDED", "s1")]
    assert events[0]["object"].endpoints[0].conditions.ready is True
    # The DELETED object is the last matching content, at the deletion's resourceVersion.
    assert events[1]["raw_object"]["metadata"]["labels"]["kubernetes.io/service-name"] == "svc"


async def test_bookmarks(fake: FakeKube, api: client.ApiClient) -> None:
    core = client.CoreV1Api(api)
    async with watch.Watch() as w:
        stream = w.stream(core.list_namespaced_config_map, NS, allow_watch_bookmarks=True, timeout_seconds=5)
        fake.put({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "x"}})
        events = await collect(stream, 2)
    assert [e["type"] for e in events] == ["ADDED", "BOOKMARK"]
    assert events[1]["raw_object"]["metadata"] == {"resourceVersion": fake.resource_version}
    assert w.resource_version == fake.resource_version

    # WatchList: initial state then a bookmark annotated as its end.
    async with watch.Watch() as w:
        stream = w.stream(
            core.list_namespaced_config_map,
            NS,
            allow_watch_bookmarks=True,
            send_initial_events=True,
            resource_version_match="NotOlderThan",
            timeout_seconds=5,
        )
        events = await collect(stream, 2)
    assert [e["type"] for e in events] == ["ADDED", "BOOKMARK"]
    assert events[1]["raw_object"]["metadata"]["annotations"] == {"k8s.io/initial-events-end": "true"}


async def test_timeout_seconds_ends_stream(fake: FakeKube, api: client.ApiClient) -> None:
    core = client.CoreV1Api(api)
    loop = asyncio.get_running_loop()
    start = loop.time()
    async with watch.Watch() as w:
        events = [e async for e in w.stream(core.list_namespaced_config_map, NS, timeout_seconds=1)]
    assert events == [] and 0.9 < loop.time() - start < 2
    assert fake.watch_count() == 0


async def test_expired_resource_version(fake: FakeKube, api: client.ApiClient) -> None:
    apps = client.AppsV1Api(api)
    fake.put(deployment("a"))
    old_rv = fake.resource_version
    fake.put(deployment("a", replicas=1))
    fake.expire_watches()

    # With timeoutSeconds the client raises on the first 410 ERROR event.
    async with watch.Watch() as w:
        with pytest.raises(ApiException) as exc:
            await collect(
                w.stream(apps.list_namespaced_deployment, NS, resource_version=old_rv, timeout_seconds=5), 1
            )
    assert exc.value.status == 410 and "Expired" in exc.value.reason

    # Without timeoutSeconds it re-watches once with the same (stale) rv, then raises.
    fake.reset_calls()
    async with watch.Watch() as w:
        with pytest.raises(ApiException) as exc:
            await collect(w.stream(apps.list_namespaced_deployment, NS, resource_version=old_rv), 1)
    assert exc.value.status == 410
    assert [c.verb for c in fake.calls] == ["watch", "watch"]

    # A relist hands out a version that can be watched again.
    rv = (await apps.list_namespaced_deployment(NS)).metadata.resource_version
    async with watch.Watch() as w:
        stream = w.stream(apps.list_namespaced_deployment, NS, resource_version=rv, timeout_seconds=5)
        fake.put(deployment("a", replicas=2))
        assert summary(await collect(stream, 1)) == [("MODIFIED", "a")]


async def test_expire_closes_open_watch(fake: FakeKube, api: client.ApiClient) -> None:
    apps = client.AppsV1Api(api)
    fake.put(deployment("a"))

    # An open "forever" watch is closed; the client resumes from its last rv, gets 410
    # twice (it retries once) and raises: the caller must relist.
    async with watch.Watch() as w:
        stream = w.stream(apps.list_namespaced_deployment, NS)
        await collect(stream, 1)
        fake.expire_watches()
        with pytest.raises(ApiException) as exc:
            await collect(stream, 1)
    assert exc.value.status == 410

    # With timeoutSeconds the stream just ends.
    async with watch.Watch() as w:
        stream = w.stream(apps.list_namespaced_deployment, NS, timeout_seconds=5)
        await collect(stream, 1)
        fake.expire_watches()
        assert await collect(stream, 1) == []


async def test_history_limit_compacts() -> None:
    async with FakeKube(history_limit=2) as fake, await fake.api_client() as c:
        core = client.CoreV1Api(c)
        fake.put({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "x"}})
        rv = fake.resource_version
        for i in range(3):
            fake.put(
                {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "x"}, "data": {"i": str(i)}}
            )
        async with watch.Watch() as w:
            with pytest.raises(ApiException) as exc:
                await collect(
                    w.stream(core.list_namespaced_config_map, NS, resource_version=rv, timeout_seconds=2), 1
                )
        assert exc.value.status == 410


# ----------------------------------------------------------------------------- restart


async def test_restart_keeps_state_and_port(fake: FakeKube, api: client.ApiClient) -> None:
    apps = client.AppsV1Api(api)
    fake.put(deployment("a", replicas=3))
    url = fake.url

    async with watch.Watch() as w:
        stream = w.stream(apps.list_namespaced_deployment, NS, timeout_seconds=30)
        await collect(stream, 1)
        restart = asyncio.create_task(fake.restart(downtime=0.5))
        # The open watch ends (cleanly: graceful shutdown).
        assert await collect(stream, 1) == []
        # While down, connections are refused.
        refused = False
        async with asyncio.timeout(0.4):
            while not refused:
                try:
                    await apps.read_namespaced_deployment("a", NS)
                except aiohttp.ClientConnectorError:
                    refused = True
                await asyncio.sleep(0.01)
        assert not restart.done()
        await restart

    assert fake.url == url
    got = await apps.read_namespaced_deployment("a", NS)
    assert got.spec.replicas == 3

    # A "forever" watch resumes by itself after a quick restart and misses nothing.
    async with watch.Watch() as w:
        stream = w.stream(apps.list_namespaced_deployment, NS)
        await collect(stream, 1)
        await fake.restart()
        fake.put(deployment("a", replicas=4))
        events = await collect(stream, 1)
    assert events[0]["type"] == "MODIFIED" and events[0]["object"].spec.replicas == 4


async def test_abrupt_restart_breaks_watch(fake: FakeKube, api: client.ApiClient) -> None:
    apps = client.AppsV1Api(api)
    fake.put(deployment("a"))
    async with watch.Watch() as w:
        stream = w.stream(apps.list_namespaced_deployment, NS)
        await collect(stream, 1)
        await fake.restart(graceful=False)
        # A connection dropped mid-stream surfaces as an aiohttp payload error.
        with pytest.raises(aiohttp.ClientPayloadError):
            await collect(stream, 1)
    assert (await apps.read_namespaced_deployment("a", NS)).metadata.name == "a"


# ----------------------------------------------------------------------------- controls


async def test_fail_next_and_calls(fake: FakeKube, api: client.ApiClient) -> None:
    apps = client.AppsV1Api(api)
    fake.put(deployment("m"))
    fake.reset_calls()

    fake.fail_next("update", "apps", "deployments", 409, subresource="scale")
    scale = await apps.read_namespaced_deployment_scale("m", NS)
    scale.spec.replicas = 1
    with pytest.raises(ApiException) as exc:
        await apps.replace_namespaced_deployment_scale("m", NS, scale)
    assert exc.value.status == 409 and "Conflict" in exc.value.body
    assert (await apps.replace_namespaced_deployment_scale("m", NS, scale)).spec.replicas == 1

    fake.fail_next("list", "apps", "deployments", 500, times=2)
    for _ in range(2):
        with pytest.raises(ApiException) as exc:
            await apps.list_namespaced_deployment(NS)
        assert exc.value.status == 500
    await apps.list_namespaced_deployment(NS)

    fake.fail_next("watch", "apps", "deployments", 410)
    async with watch.Watch() as w:
        with pytest.raises(ApiException) as exc:
            await collect(w.stream(apps.list_namespaced_deployment, NS, timeout_seconds=2), 1)
    assert exc.value.status == 410

    await apps.patch_namespaced_deployment("m", NS, {"metadata": {"labels": {"a": "b"}}})
    await apps.delete_namespaced_deployment("m", NS)
    await apps.list_deployment_for_all_namespaces()

    assert fake.calls == [
        Call("get", "apps", "deployments", "scale", NS, "m"),
        Call("update", "apps", "deployments", "scale", NS, "m"),
        Call("update", "apps", "deployments", "scale", NS, "m"),
        Call("list", "apps", "deployments", None, NS, None),
        Call("list", "apps", "deployments", None, NS, None),
        Call("list", "apps", "deployments", None, NS, None),
        Call("watch", "apps", "deployments", None, NS, None),
        Call("patch", "apps", "deployments", None, NS, "m"),
        Call("delete", "apps", "deployments", None, NS, "m"),
        Call("list", "apps", "deployments", None, None, None),
    ]


async def test_direct_state_and_on_change(fake: FakeKube) -> None:
    seen: list[tuple[str, str, str, str]] = []
    unsubscribe = fake.on_change(lambda t, g, r, o: seen.append((t, g, r, o["metadata"]["name"])))
    stored = fake.put(deployment("d", replicas=2, labels={"team": "a"}))
    assert stored["metadata"]["uid"] and stored["metadata"]["resourceVersion"] == fake.resource_version
    fake.put({**stored, "status": {"replicas": 2, "readyReplicas": 2}})
    assert fake.objects("apps", "deployments")[0]["status"]["readyReplicas"] == 2
    assert fake.objects("apps", "deployments", namespace="other") == []
    assert fake.delete_object("apps", "deployments", NS, "d") is not None
    assert fake.delete_object("apps", "deployments", NS, "d") is None
    assert fake.get_object("apps", "deployments", NS, "d") is None
    unsubscribe()
    fake.put(deployment("e"))
    assert seen == [
        ("ADDED", "apps", "deployments", "d"),
        ("MODIFIED", "apps", "deployments", "d"),
        ("DELETED", "apps", "deployments", "d"),
    ]
    assert fake.calls == []


async def test_leases_and_discovery(fake: FakeKube, api: client.ApiClient) -> None:
    coord = client.CoordinationV1Api(api)
    lease = {"metadata": {"name": "lingo"}, "spec": {"holderIdentity": "pod-a", "leaseDurationSeconds": 15}}
    # Leases may be created by PUT, as in the real API.
    created = await coord.replace_namespaced_lease("lingo", NS, lease)
    assert created.spec.holder_identity == "pod-a"
    created.spec.holder_identity = "pod-b"
    updated = await coord.replace_namespaced_lease("lingo", NS, created)
    created.spec.holder_identity = "pod-c"
    with pytest.raises(ApiException) as exc:
        await coord.replace_namespaced_lease("lingo", NS, created)
    assert exc.value.status == 409
    assert (
        await coord.read_namespaced_lease("lingo", NS)
    ).spec.holder_identity == updated.spec.holder_identity

    version = await client.VersionApi(api).get_code()
    assert version.major == "1"
    assert (await client.CoreApi(api).get_api_versions()).versions == ["v1"]
    groups = await client.ApisApi(api).get_api_versions()
    assert {g.name for g in groups.groups} >= {"apps", "coordination.k8s.io", "discovery.k8s.io"}
    resources = await client.AppsV1Api(api).get_api_resources()
    assert "deployments/scale" in {r.name for r in resources.resources}


async def test_kubeconfig_file(fake: FakeKube, tmp_path: Path) -> None:
    path = fake.write_kubeconfig(tmp_path / "kubeconfig")
    cfg = client.Configuration()
    await config.load_kube_config(config_file=str(path), client_configuration=cfg)
    assert cfg.host == fake.url
    fake.put(endpoint_slice("s", "svc", [("10.0.0.1", True), ("10.0.0.2", False)], 8000, "http"))
    async with client.ApiClient(cfg) as c:
        slices = await client.DiscoveryV1Api(c).list_namespaced_endpoint_slice(
            NS, label_selector="kubernetes.io/service-name=svc"
        )
    (s,) = slices.items
    assert [(e.addresses[0], e.conditions.ready) for e in s.endpoints] == [
        ("10.0.0.1", True),
        ("10.0.0.2", False),
    ]
    assert s.ports[0].name == "http" and s.ports[0].port == 8000
