"""The autoscaler's moving averages kept in a ConfigMap, so a restarted or newly elected leader
takes over from them instead of starting from zero and scaling everything down (Lingo #95).

The leader saves after every tick, but writes only when the (rounded) samples changed: an idle
cluster costs no API writes. One JSON document under the key `autoscaler.json`:
`{"savedAt": "...", "averages": {"<group>": [sample, ...]}}`, oldest sample first.
"""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime
from typing import Any

from kubernetes_asyncio.client import CoreV1Api
from kubernetes_asyncio.client.exceptions import ApiException

log = logging.getLogger(__name__)

#: Key of the ConfigMap's data holding the state.
DATA_KEY = "autoscaler.json"
#: Decimals kept per sample: finer changes are not worth an API write.
PRECISION = 3

State = dict[str, list[float]]


def canonical(state: State) -> State:
    """`state` rounded and sorted: equal canonical forms need no write."""
    return {name: [round(float(x), PRECISION) for x in samples] for name, samples in sorted(state.items())}


def encode_state(state: State, saved_at: datetime) -> str:
    return json.dumps(
        {"savedAt": saved_at.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"), "averages": canonical(state)},
        separators=(",", ":"),
    )


def decode_state(text: str) -> State:
    """The averages in a saved document; ValueError when it is not one."""
    document = json.loads(text)
    averages = document.get("averages") if isinstance(document, dict) else None
    if not isinstance(averages, dict):
        raise ValueError("no 'averages' object")
    state: State = {}
    for name, samples in averages.items():
        if not isinstance(samples, list) or not all(
            isinstance(x, int | float) and not isinstance(x, bool) and x >= 0 for x in samples
        ):
            raise ValueError(f"samples of {name!r} are not a list of non-negative numbers")
        state[str(name)] = [float(x) for x in samples]
    return state


class ConfigMapState:
    """Loads and saves the autoscaler state (the `StateStore` the autoscaler expects) in one ConfigMap."""

    def __init__(self, api: CoreV1Api, namespace: str, name: str, request_timeout: float = 10.0) -> None:
        #: Typed client of the core v1 API.
        self.api = api
        #: Namespace of the ConfigMap.
        self.namespace = namespace
        #: Name of the ConfigMap (settings.state_configmap).
        self.name = name
        #: Seconds one API call may take.
        self.request_timeout = request_timeout
        #: Writes made so far (for tests and curiosity).
        self.writes = 0
        self._saved: State | None = None
        self._resource_version: str | None = None

    async def load(self) -> State:
        """The saved averages; empty when there are none (first start) or they cannot be read."""
        try:
            config_map = await self.api.read_namespaced_config_map(
                self.name, self.namespace, _request_timeout=self.request_timeout
            )
        except ApiException as error:
            if error.status == 404:
                log.info("no saved autoscaler state yet", extra={"configmap": self.name})
                return {}
            raise
        self._resource_version = config_map.metadata.resource_version
        text = (config_map.data or {}).get(DATA_KEY)
        if not text:
            return {}
        try:
            state = decode_state(text)
        except ValueError as error:
            log.warning(
                "saved autoscaler state is unreadable; starting from zero",
                extra={"configmap": self.name, "error": str(error)},
            )
            return {}
        self._saved = canonical(state)
        log.info("autoscaler state loaded", extra={"configmap": self.name, "groups": len(state)})
        return state

    async def save(self, state: State) -> None:
        """Write `state` unless it equals what was last written or read."""
        wanted = canonical(state)
        if wanted == self._saved:
            return
        body = self._body(encode_state(wanted, datetime.now(UTC)))
        try:
            written = await self._write(body)
        except ApiException as error:
            if error.status != 409:
                raise
            # Someone else wrote it (an old leader's last save): take its version and write over it.
            current = await self.api.read_namespaced_config_map(
                self.name, self.namespace, _request_timeout=self.request_timeout
            )
            self._resource_version = current.metadata.resource_version
            written = await self._write(body)
        self._resource_version = written.metadata.resource_version
        self._saved = wanted
        self.writes += 1

    async def _write(self, body: dict[str, Any]) -> Any:
        if self._resource_version is None:
            return await self.api.create_namespaced_config_map(
                self.namespace, body, _request_timeout=self.request_timeout
            )
        body["metadata"]["resourceVersion"] = self._resource_version
        try:
            return await self.api.replace_namespaced_config_map(
                self.name, self.namespace, body, _request_timeout=self.request_timeout
            )
        except ApiException as error:
            if error.status != 404:
                raise
            self._resource_version = None  # deleted meanwhile: create it again
            body["metadata"].pop("resourceVersion", None)
            return await self.api.create_namespaced_config_map(
                self.namespace, body, _request_timeout=self.request_timeout
            )

    def _body(self, text: str) -> dict[str, Any]:
        return {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {
                "name": self.name,
                "namespace": self.namespace,
                "labels": {"app.kubernetes.io/managed-by": "lingo"},
            },
            "data": {DATA_KEY: text},
        }
