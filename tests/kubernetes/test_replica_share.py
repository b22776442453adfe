"""Two real lingo processes share one model pod: together they never send it more than its
`concurrency`, and a survivor takes the whole of it when its peer leaves."""

from __future__ import annotations

import asyncio
import re

import aiohttp

from lingo.platforms.kubernetes.discovery import replica_rank
from tests.conftest import wait_for
from tests.counting_backend import counting_backend
from tests.fakekube import FakeKube, endpoint_slice
from tests.kubernetes.conftest import NAMESPACE, LingoProcess, model_deployment


def replicas_seen(lingo: LingoProcess) -> int:
    """How many lingo replicas `lingo` last said share the slots (1 until it logs otherwise)."""
    found = re.findall(r'msg="lingo replicas changed".* replicas=(\d+)', lingo.log_path.read_text())
    return int(found[-1]) if found else 1


async def send(lingos: list[LingoProcess], per_replica: int) -> list[int]:
    async def one(lingo: LingoProcess, session: aiohttp.ClientSession) -> int:
        body = {"model": "m", "prompt": "x"}
        async with session.post(lingo.url() + "/v1/completions", json=body) as response:
            await response.read()
            return response.status

    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session:
        return await asyncio.gather(*(one(lingo, session) for lingo in lingos for _ in range(per_replica)))


async def test_two_lingo_replicas_never_send_a_pod_more_than_its_concurrency(
    fake: FakeKube, lingo_processes
) -> None:
    async with counting_backend() as backend:
        backend.latency = 0.2
        port = int(backend.url.rsplit(":", 1)[1])
        fake.put(model_deployment("m", "m", replicas=1, concurrency="3", min_replicas="1", max_replicas="1"))
        fake.put(endpoint_slice("m-pod", "m", [("127.0.0.1", True)], port))
        lingos = [lingo_processes(name) for name in ("lingo-a", "lingo-b")]
        for lingo in lingos:
            fake.put(lingo.peer_slice())
        await asyncio.gather(*(lingo.wait_ready() for lingo in lingos))
        await wait_for(lambda: all(replicas_seen(lingo) == 2 for lingo in lingos), timeout=10)

        assert await send(lingos, 12) == [200] * 24
        assert backend.peak == 3, "the cap holds across both replicas, and both shares are used"

        survivor, leaving = lingos
        leaving.kill()
        fake.delete_object("discovery.k8s.io", "endpointslices", NAMESPACE, f"lingo-{leaving.name}")
        await wait_for(lambda: replicas_seen(survivor) == 1, timeout=10)
        backend.peak = 0
        assert await send([survivor], 12) == [200] * 12
        assert backend.peak == 3, "alone, the survivor uses the whole cap"


def test_replicas_agree_on_their_order_and_count_themselves_before_they_are_listed() -> None:
    def slice_of(*names: str, ready: bool = True) -> dict:
        obj = endpoint_slice("lingo-x", "lingo", [("10.0.0.1", ready)] * len(names), 8083, "stats")
        for endpoint, name in zip(obj["endpoints"], names, strict=True):
            endpoint["targetRef"] = {"kind": "Pod", "name": name}
        return obj

    slices = [slice_of("lingo-b", "lingo-c"), slice_of("lingo-a")]
    assert [replica_rank(slices, name) for name in ("lingo-a", "lingo-b", "lingo-c")] == [
        (0, 3),
        (1, 3),
        (2, 3),
    ]
    assert replica_rank([slice_of("lingo-b")], "lingo-a") == (0, 2), "not listed yet, already counted"
    assert replica_rank([slice_of("lingo-b", ready=False)], "lingo-a") == (0, 1), "gone peers do not count"
