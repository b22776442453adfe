"""The autoscaler state ConfigMap: its document, and writes that tolerate another writer."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest
from kubernetes_asyncio.client import CoreV1Api

from lingo.platforms.kubernetes.state import DATA_KEY, ConfigMapState, decode_state, encode_state
from tests.fakekube import FakeKube
from tests.kubernetes.conftest import NAMESPACE


def test_document_round_trip_rounds_samples():
    text = encode_state({"b": [1.23456], "a": [0, 2]}, datetime(2024, 1, 1, tzinfo=UTC))
    assert json.loads(text) == {"savedAt": "2024-01-01T00:00:00Z", "averages": {"a": [0, 2], "b": [1.235]}}
    assert decode_state(text) == {"a": [0.0, 2.0], "b": [1.235]}


@pytest.mark.parametrize(
    "text", ["", "[]", '{"averages": []}', '{"averages": {"m": [-1]}}', '{"averages": {"m": 3}}']
)
def test_unreadable_documents_are_refused(text):
    with pytest.raises(ValueError):
        decode_state(text)


async def test_store_creates_then_updates_and_writes_over_another_writer(fake: FakeKube):
    api = await fake.api_client()
    try:
        store = ConfigMapState(CoreV1Api(api), NAMESPACE, "state")
        assert await store.load() == {}
        await store.save({"m": [1.0]})
        await store.save({"m": [1.0]})  # unchanged: no write
        assert store.writes == 1
        stored = fake.get_object("", "configmaps", NAMESPACE, "state")
        fake.put(
            {**stored, "data": {DATA_KEY: encode_state({"m": [9.0]}, datetime.now(UTC))}}
        )  # an old leader
        await store.save({"m": [1.0, 2.0]})
        assert decode_state(fake.get_object("", "configmaps", NAMESPACE, "state")["data"][DATA_KEY]) == {
            "m": [1.0, 2.0]
        }
        fake.delete_object("", "configmaps", NAMESPACE, "state")
        await store.save({"m": [3.0]})
        assert store.writes == 3
        fresh = ConfigMapState(CoreV1Api(api), NAMESPACE, "state")
        assert await fresh.load() == {"m": [3.0]}
        fake.put(
            {**stored, "metadata": {"name": "state", "namespace": NAMESPACE}, "data": {DATA_KEY: "garbage"}}
        )
        assert await fresh.load() == {}
    finally:
        await api.close()
