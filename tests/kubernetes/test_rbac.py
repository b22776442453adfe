"""The API calls lingo makes equal the RBAC rules the chart grants (charts/lingo/rbac-rules.yaml):
least privilege, and never short. Runs last (see conftest), so it also checks every call the other
Kubernetes tests made."""

from __future__ import annotations

from pathlib import Path

import yaml

from tests.conftest import wait_for
from tests.fakekube import Call, FakeKube
from tests.kubernetes.conftest import FAST_LEASE, model_deployment

RULES = Path(__file__).resolve().parents[2] / "charts" / "lingo" / "rbac-rules.yaml"

Permission = tuple[str, str, str]  # (verb, apiGroup, resource[/subresource])


def granted() -> set[Permission]:
    rules = yaml.safe_load(RULES.read_text())["rules"]
    return {
        (verb, group, resource)
        for rule in rules
        for group in rule["apiGroups"]
        for resource in rule["resources"]
        for verb in rule["verbs"]
    }


def needed(calls: list[Call]) -> set[Permission]:
    return {
        (c.verb, c.group, f"{c.resource}/{c.subresource}" if c.subresource else c.resource) for c in calls
    }


async def test_every_call_path_uses_exactly_the_granted_permissions(fake: FakeKube, start_lingo):
    """A deterministic scenario through every call path: discover, lead (create, renew), load and
    save state (create, update), scale (read, write)."""
    fake.put(model_deployment("m", "m"))
    lingo = await start_lingo()
    assert lingo.platform.is_leader()
    await lingo.platform.set_replicas("m", 1)
    await lingo.platform.save({"m": [1.0]})
    await lingo.platform.save({"m": [1.0, 2.0]})
    await wait_for(
        lambda: len(fake.calls_for("update", "leases")) >= 1, timeout=FAST_LEASE["retry_period"] * 5
    )
    assert needed(fake.calls) == granted()


def test_no_kubernetes_test_made_a_call_outside_the_granted_permissions(recorded_calls: list[Call]):
    assert recorded_calls, "the RBAC check runs after the other Kubernetes tests"
    assert needed(recorded_calls) - granted() == set()
