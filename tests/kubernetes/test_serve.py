"""`lingo serve` itself on the Kubernetes platform: configured from KUBECONFIG, stops cleanly."""

from __future__ import annotations

import asyncio
import signal

from tests.conftest import fetch_json, wait_for
from tests.fakekube import FakeKube
from tests.kubernetes.conftest import lease_holder, model_deployment


async def test_lingo_serve_finds_models_through_kubeconfig_and_releases_its_lease_on_sigterm(
    fake: FakeKube, lingo_processes
):
    fake.put(model_deployment("llama", "llama-3,llama"))
    lingo = lingo_processes("lingo-serve-0", fast_lease=False)
    await lingo.wait_ready()
    models = await fetch_json(lingo.url() + "/v1/models")
    assert sorted(m["id"] for m in models["data"]) == ["llama", "llama-3"]  # type: ignore[index]
    assert lease_holder(fake) == "lingo-serve-0"
    assert fake.calls_by("(lingo-serve-0)")

    lingo.process.send_signal(signal.SIGTERM)
    assert await asyncio.to_thread(lingo.process.wait, 15) == 0
    await wait_for(lambda: lease_holder(fake) == "", timeout=2)
