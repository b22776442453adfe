"""An in-process fake Kubernetes API server for tests.

It speaks the real Kubernetes HTTP/JSON API (enough of it for the real
``kubernetes_asyncio`` client) for four namespaced resources: ``apps/v1``
deployments (with the ``scale`` and ``status`` subresources),
``discovery.k8s.io/v1`` endpointslices, ``coordination.k8s.io/v1`` leases and
core ``v1`` configmaps.

Semantics follow the real apiserver where a client can observe them: one
global etcd-like resourceVersion, optimistic concurrency (409 Conflict), watch
replay from a resourceVersion with 410 Expired once history is compacted,
label-selector-aware watches (objects leaving the selector produce DELETED),
bookmarks, ``timeoutSeconds``, and ``Status`` error bodies.

Test controls (restart, compaction, error injection, direct state access,
call recording) live on :class:`FakeKube`.
"""

from __future__ import annotations

import asyncio
import base64
import copy
import json
import logging
import random
import re
import string
import uuid
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, NamedTuple

import yaml
from aiohttp import web

if TYPE_CHECKING:
    from kubernetes_asyncio.client import ApiClient

log = logging.getLogger("fakekube")

Obj = dict[str, Any]
ChangeCallback = Callable[[str, str, str, Obj], None]

ANY = "*"
"""Wildcard for :meth:`FakeKube.fail_next` ``subresource``: match any subresource."""


# --------------------------------------------------------------------------- resources


@dataclass(frozen=True)
class ResourceType:
    """One served resource: where it lives in the API and how it is named."""

    group: str
    version: str
    resource: str
    kind: str
    subresources: frozenset[str] = frozenset()
    # Leases may be created by PUT (coordination strategy allows it); the others may not.
    allow_create_on_update: bool = False
    # Deployments have a status subresource: main-resource writes keep the old status.
    has_status: bool = False

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    @property
    def list_kind(self) -> str:
        return f"{self.kind}List"

    @property
    def qualified(self) -> str:
        """``deployments.apps`` / ``configmaps``, as used in real error messages."""
        return f"{self.resource}.{self.group}" if self.group else self.resource


RESOURCES: dict[tuple[str, str], ResourceType] = {
    (rt.group, rt.resource): rt
    for rt in (
        ResourceType(
            "apps",
            "v1",
            "deployments",
            "Deployment",
            frozenset({"scale", "status"}),
            has_status=True,
        ),
        ResourceType("discovery.k8s.io", "v1", "endpointslices", "EndpointSlice"),
        ResourceType("coordination.k8s.io", "v1", "leases", "Lease", allow_create_on_update=True),
        ResourceType("", "v1", "configmaps", "ConfigMap"),
    )
}
_BY_KIND: dict[tuple[str, str], ResourceType] = {(rt.api_version, rt.kind): rt for rt in RESOURCES.values()}


def resource_type(group: str, resource: str) -> ResourceType:
    """Look up a served resource by (group, plural resource name)."""
    try:
        return RESOURCES[(group, resource)]
    except KeyError:
        raise KeyError(f"fakekube does not serve {resource!r} in group {group!r}") from None


# --------------------------------------------------------------------------- public records


class Call(NamedTuple):
    """One API request as RBAC would see it (``group`` is "" for core)."""

    verb: str  # get, list, watch, create, update, patch, delete
    group: str
    resource: str
    subresource: str | None
    namespace: str | None  # None: all-namespaces list/watch
    name: str | None


@dataclass
class _Failure:
    verb: str
    group: str
    resource: str
    subresource: str | None
    status: int
    times: int
    message: str | None


# --------------------------------------------------------------------------- errors


_REASONS = {
    400: "BadRequest",
    401: "Unauthorized",
    403: "Forbidden",
    404: "NotFound",
    405: "MethodNotAllowed",
    409: "Conflict",
    410: "Expired",
    415: "UnsupportedMediaType",
    422: "Invalid",
    429: "TooManyRequests",
    500: "InternalError",
    503: "ServiceUnavailable",
    504: "Timeout",
}


class ApiError(Exception):
    """An error the fake answers with a ``Status`` body."""

    def __init__(
        self,
        code: int,
        message: str,
        reason: str | None = None,
        rt: ResourceType | None = None,
        name: str | None = None,
    ) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.reason = reason or _REASONS.get(code, "Unknown")
        self.rt = rt
        self.name = name

    def status(self) -> Obj:
        """The ``Status`` object, shaped like the real apiserver's."""
        body: Obj = {
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "code": self.code,
        }
        details: Obj = {}
        if self.name:
            details["name"] = self.name
        if self.rt is not None:
            if self.rt.group:
                details["group"] = self.rt.group
            # Real NotFound/AlreadyExists/Conflict details carry the plural resource as "kind".
            details["kind"] = self.rt.resource
        if details:
            body["details"] = details
        return body

    def response(self) -> web.Response:
        return web.json_response(self.status(), status=self.code)


def _not_found(rt: ResourceType, name: str) -> ApiError:
    return ApiError(404, f'{rt.qualified} "{name}" not found', "NotFound", rt, name)


def _conflict(rt: ResourceType, name: str) -> ApiError:
    return ApiError(
        409,
        f'Operation cannot be fulfilled on {rt.qualified} "{name}": the object has been '
        "modified; please apply your changes to the latest version and try again",
        "Conflict",
        rt,
        name,
    )


def _already_exists(rt: ResourceType, name: str) -> ApiError:
    return ApiError(409, f'{rt.qualified} "{name}" already exists', "AlreadyExists", rt, name)


def _bad_request(message: str) -> ApiError:
    return ApiError(400, message, "BadRequest")


# --------------------------------------------------------------------------- selectors


_KEY = r"[A-Za-z0-9][-A-Za-z0-9_./]*"
_VAL = r"[-A-Za-z0-9_.]*"
_RE_EXISTS = re.compile(rf"^(!?)\s*({_KEY})$")
_RE_EQ = re.compile(rf"^({_KEY})\s*(==|=|!=)\s*({_VAL})$")
_RE_SET = re.compile(rf"^({_KEY})\s+(in|notin)\s*\(([^()]*)\)$")
_RE_CMP = re.compile(rf"^({_KEY})\s*(<|>)\s*(-?\d+)$")


def _split_top_level(text: str) -> list[str]:
    """Split on commas that are not inside ``( )``."""
    parts: list[str] = []
    depth = 0
    cur: list[str] = []
    for ch in text:
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
        if ch == "," and depth == 0:
            parts.append("".join(cur))
            cur = []
        else:
            cur.append(ch)
    parts.append("".join(cur))
    return parts


class LabelSelector:
    """A parsed Kubernetes label selector (string form), e.g. ``app=x,tier in (a,b),!legacy``."""

    def __init__(self, text: str | None) -> None:
        self.text = text or ""
        self._reqs: list[Callable[[dict[str, str]], bool]] = []
        if not self.text.strip():
            return
        for raw in _split_top_level(self.text):
            self._reqs.append(self._parse(raw.strip()))

    @staticmethod
    def _parse(req: str) -> Callable[[dict[str, str]], bool]:
        if m := _RE_SET.match(req):
            key, op = m.group(1), m.group(2)
            values = {v.strip() for v in m.group(3).split(",") if v.strip()}
            if op == "in":
                return lambda labels: labels.get(key) in values
            return lambda labels: labels.get(key) not in values
        if m := _RE_EQ.match(req):
            key, op, value = m.groups()
            if op == "!=":
                return lambda labels: labels.get(key) != value
            return lambda labels: labels.get(key) == value
        if m := _RE_CMP.match(req):
            key, op, num = m.group(1), m.group(2), int(m.group(3))

            def cmp(labels: dict[str, str]) -> bool:
                try:
                    have = int(labels[key])
                except (KeyError, ValueError):
                    return False
                return have > num if op == ">" else have < num

            return cmp
        if m := _RE_EXISTS.match(req):
            neg, key = m.groups()
            if neg:
                return lambda labels: key not in labels
            return lambda labels: key in labels
        raise ValueError(f"unable to parse requirement: {req!r}")

    def matches(self, labels: dict[str, str] | None) -> bool:
        labels = labels or {}
        return all(req(labels) for req in self._reqs)


class FieldSelector:
    """The field selectors every resource supports: ``metadata.name`` and ``metadata.namespace``."""

    _FIELDS = ("metadata.name", "metadata.namespace")

    def __init__(self, text: str | None) -> None:
        self.text = text or ""
        self._reqs: list[tuple[str, bool, str]] = []
        for raw in filter(None, (p.strip() for p in self.text.split(","))):
            m = re.match(r"^([A-Za-z.]+)\s*(==|=|!=)\s*(.*)$", raw)
            if not m:
                raise ValueError(f"invalid selector: {raw!r}")
            fld, op, value = m.groups()
            if fld not in self._FIELDS:
                raise ValueError(f'field label not supported: "{fld}"')
            self._reqs.append((fld.split(".", 1)[1], op != "!=", value.strip()))

    def matches(self, obj: Obj) -> bool:
        meta = obj.get("metadata", {})
        return all((meta.get(key, "") == value) == eq for key, eq, value in self._reqs)


# --------------------------------------------------------------------------- patches


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch (strategic merge is treated the same: lists are replaced)."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


class JsonPatchError(Exception):
    """A JSON patch (RFC 6902) could not be applied."""


def _pointer(path: str) -> list[str]:
    if path == "":
        return []
    if not path.startswith("/"):
        raise JsonPatchError(f"invalid JSON pointer {path!r}")
    return [p.replace("~1", "/").replace("~0", "~") for p in path[1:].split("/")]


def _resolve(doc: Any, tokens: list[str]) -> Any:
    for tok in tokens:
        if isinstance(doc, dict):
            if tok not in doc:
                raise JsonPatchError(f"path not found: {tok!r}")
            doc = doc[tok]
        elif isinstance(doc, list):
            try:
                doc = doc[int(tok)]
            except (ValueError, IndexError):
                raise JsonPatchError(f"bad array index {tok!r}") from None
        else:
            raise JsonPatchError(f"cannot descend into {type(doc).__name__}")
    return doc


def _add(doc: Any, tokens: list[str], value: Any) -> Any:
    if not tokens:
        return value
    parent = _resolve(doc, tokens[:-1])
    last = tokens[-1]
    if isinstance(parent, dict):
        parent[last] = value
    elif isinstance(parent, list):
        if last == "-":
            parent.append(value)
        else:
            try:
                idx = int(last)
            except ValueError:
                raise JsonPatchError(f"bad array index {last!r}") from None
            if not 0 <= idx <= len(parent):
                raise JsonPatchError(f"array index {idx} out of range")
            parent.insert(idx, value)
    else:
        raise JsonPatchError("parent is not a container")
    return doc


def _remove(doc: Any, tokens: list[str]) -> tuple[Any, Any]:
    if not tokens:
        raise JsonPatchError("cannot remove the whole document")
    parent = _resolve(doc, tokens[:-1])
    last = tokens[-1]
    if isinstance(parent, dict):
        if last not in parent:
            raise JsonPatchError(f"path not found: {last!r}")
        return doc, parent.pop(last)
    if isinstance(parent, list):
        try:
            return doc, parent.pop(int(last))
        except (ValueError, IndexError):
            raise JsonPatchError(f"bad array index {last!r}") from None
    raise JsonPatchError("parent is not a container")


def json_patch(doc: Any, ops: Any) -> Any:
    """Apply an RFC 6902 JSON patch (add, remove, replace, move, copy, test) to a copy of ``doc``."""
    if not isinstance(ops, list):
        raise JsonPatchError("a JSON patch must be a list of operations")
    doc = copy.deepcopy(doc)
    for op in ops:
        if not isinstance(op, dict) or "op" not in op or "path" not in op:
            raise JsonPatchError(f"malformed operation {op!r}")
        kind, path = op["op"], _pointer(op["path"])
        if kind in ("add", "replace", "test") and "value" not in op:
            raise JsonPatchError(f"{kind} needs a value")
        if kind == "add":
            doc = _add(doc, path, copy.deepcopy(op["value"]))
        elif kind == "remove":
            doc, _ = _remove(doc, path)
        elif kind == "replace":
            doc, _ = _remove(doc, path) if path else (doc, None)
            doc = _add(doc, path, copy.deepcopy(op["value"]))
        elif kind == "test":
            if _resolve(doc, path) != op["value"]:
                raise JsonPatchError(f"test failed at {op['path']}")
        elif kind in ("move", "copy"):
            src = _pointer(op.get("from", ""))
            if kind == "move":
                doc, value = _remove(doc, src)
            else:
                value = copy.deepcopy(_resolve(doc, src))
            doc = _add(doc, path, value)
        else:
            raise JsonPatchError(f"unsupported op {kind!r}")
    return doc


# --------------------------------------------------------------------------- watches


@dataclass
class _Event:
    rv: int
    rt: ResourceType
    type: str  # ADDED, MODIFIED, DELETED
    obj: Obj
    old: Obj | None = None


_CLOSE = "close"  # end the stream cleanly (final chunk)
_ABORT = "abort"  # drop the connection mid-stream (crash)


@dataclass(eq=False)
class _Watcher:
    rt: ResourceType
    namespace: str | None
    labels: LabelSelector
    fields: FieldSelector
    request: web.Request
    queue: asyncio.Queue[Obj | str] = field(default_factory=asyncio.Queue)

    def matches(self, obj: Obj | None) -> bool:
        if obj is None:
            return False
        meta = obj.get("metadata", {})
        if self.namespace is not None and meta.get("namespace") != self.namespace:
            return False
        return self.labels.matches(meta.get("labels")) and self.fields.matches(obj)

    def translate(self, ev: _Event) -> Obj | None:
        """What this watcher sees of ``ev``; like the cacher, selector changes become ADDED/DELETED."""
        if ev.rt is not self.rt:
            return None
        now = self.matches(ev.obj)
        if ev.type != "MODIFIED":
            return {"type": ev.type, "object": ev.obj} if now else None
        before = self.matches(ev.old)
        if now and before:
            return {"type": "MODIFIED", "object": ev.obj}
        if now:
            return {"type": "ADDED", "object": ev.obj}
        if before and ev.old is not None:
            # Real apiserver: DELETED carries the previous content at the new resourceVersion.
            gone = copy.deepcopy(ev.old)
            gone["metadata"]["resourceVersion"] = str(ev.rv)
            return {"type": "DELETED", "object": gone}
        return None


# --------------------------------------------------------------------------- helpers


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _truthy(value: str | None) -> bool:
    return (value or "").lower() in ("true", "1")


def _strip_volatile(obj: Obj) -> Obj:
    """The object without fields the server manages, to detect no-op writes."""
    out = copy.deepcopy(obj)
    out.get("metadata", {}).pop("resourceVersion", None)
    return out


def _spec_part(obj: Obj) -> Obj:
    # Everything but metadata and status: a change here bumps metadata.generation.
    return {k: v for k, v in obj.items() if k not in ("metadata", "status")}


def _selector_string(deploy: Obj) -> str:
    sel = deploy.get("spec", {}).get("selector", {}) or {}
    parts = [f"{k}={v}" for k, v in sorted((sel.get("matchLabels") or {}).items())]
    for expr in sel.get("matchExpressions") or []:
        key, op, values = expr.get("key"), expr.get("operator"), expr.get("values") or []
        if op == "In":
            parts.append(f"{key} in ({','.join(values)})")
        elif op == "NotIn":
            parts.append(f"{key} notin ({','.join(values)})")
        elif op == "Exists":
            parts.append(str(key))
        elif op == "DoesNotExist":
            parts.append(f"!{key}")
    return ",".join(parts)


# --------------------------------------------------------------------------- builders


def deployment(
    name: str,
    namespace: str = "default",
    replicas: int = 0,
    annotations: dict[str, str] | None = None,
    labels: dict[str, str] | None = None,
    port: int = 8000,
    port_name: str | None = None,
) -> Obj:
    """A minimal apps/v1 Deployment with one container exposing ``port``."""
    container_port: Obj = {"containerPort": port, "protocol": "TCP"}
    if port_name:
        container_port["name"] = port_name
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "labels": dict(labels or {}),
            "annotations": dict(annotations or {}),
        },
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name}},
                "spec": {
                    "containers": [
                        {"name": "server", "image": "fake/model:latest", "ports": [container_port]}
                    ]
                },
            },
        },
    }


def endpoint_slice(
    name: str,
    service: str,
    addresses: Iterable[tuple[str, bool]],
    port: int,
    port_name: str | None = None,
    namespace: str = "default",
) -> Obj:
    """A discovery.k8s.io/v1 EndpointSlice for ``service`` with ``(ip, ready)`` endpoints."""
    return {
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "labels": {
                "kubernetes.io/service-name": service,
                "endpointslice.kubernetes.io/managed-by": "endpointslice-controller.k8s.io",
            },
        },
        "addressType": "IPv4",
        "endpoints": [
            {
                "addresses": [ip],
                "conditions": {"ready": ready, "serving": ready, "terminating": False},
            }
            for ip, ready in addresses
        ],
        # Like the real controller, an unnamed Service port yields name "".
        "ports": [{"name": port_name or "", "port": port, "protocol": "TCP"}],
    }


# --------------------------------------------------------------------------- the server


class FakeKube:
    """A fake kube-apiserver on 127.0.0.1 for the real ``kubernetes_asyncio`` client.

    Use ``async with FakeKube() as fake:`` (or ``await fake.start()`` /
    ``await fake.stop()``); point clients at ``fake.url`` or get one from
    :meth:`api_client`. All state is in memory and survives :meth:`restart`.

    ``bookmark_interval`` is how often (seconds) watches that asked for
    bookmarks get one; ``history_limit`` is how many events are kept for
    watch resumption before older resourceVersions become 410 Expired.
    """

    deployment = staticmethod(deployment)
    endpoint_slice = staticmethod(endpoint_slice)

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        bookmark_interval: float = 1.0,
        history_limit: int = 10_000,
    ) -> None:
        self.host = host
        self.port = port
        self.bookmark_interval = bookmark_interval
        self.history_limit = history_limit
        self.calls: list[Call] = []
        # The User-Agent of each recorded call, same order as ``calls`` (who made it).
        self.user_agents: list[str] = []
        self._rv = 1
        # Watches may resume from any rv >= _compacted_rv; history holds every event after it.
        self._compacted_rv = 1
        self._history: deque[_Event] = deque()
        self._store: dict[ResourceType, dict[tuple[str, str], Obj]] = {rt: {} for rt in RESOURCES.values()}
        self._watchers: set[_Watcher] = set()
        self._callbacks: list[ChangeCallback] = []
        self._failures: list[_Failure] = []
        self._runner: web.AppRunner | None = None
        self._stopping = False

    # ----------------------------------------------------------------- lifecycle

    @property
    def url(self) -> str:
        """Base URL, e.g. ``http://127.0.0.1:41234``."""
        return f"http://{self.host}:{self.port}"

    @property
    def resource_version(self) -> str:
        """The current global resourceVersion."""
        return str(self._rv)

    @property
    def running(self) -> bool:
        """Whether the server is accepting connections."""
        return self._runner is not None

    async def start(self) -> None:
        """Start listening (on a free port the first time if ``port`` was 0)."""
        if self._runner is not None:
            return
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_route("*", "/{tail:.*}", self._dispatch)
        # handler_cancellation: a client hanging up on a watch cancels its handler (no leaks).
        runner = web.AppRunner(app, handler_cancellation=True, access_log=None, shutdown_timeout=1.0)
        await runner.setup()
        site = web.TCPSite(runner, self.host, self.port, reuse_address=True)
        try:
            await site.start()
        except BaseException:
            await runner.cleanup()
            raise
        self.port = runner.addresses[0][1]  # the real port when asked for port 0
        self._stopping = False
        self._runner = runner

    async def stop(self, *, graceful: bool = True) -> None:
        """Stop listening and close every connection, including open watches.

        ``graceful=True`` ends watch streams cleanly (like an apiserver's graceful
        shutdown); ``False`` drops them mid-stream (like a crash).
        """
        runner, self._runner = self._runner, None
        if runner is None:
            return
        self._stopping = True
        for w in list(self._watchers):
            w.queue.put_nowait(_CLOSE if graceful else _ABORT)
        await runner.cleanup()

    async def restart(self, downtime: float = 0, *, graceful: bool = True) -> None:
        """Close all connections, refuse connections for ``downtime`` seconds, then serve again
        on the same port with the same state (and the same watch history)."""
        await self.stop(graceful=graceful)
        if downtime > 0:
            await asyncio.sleep(downtime)
        await self.start()

    async def __aenter__(self) -> FakeKube:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    def expire_watches(self) -> None:
        """Compact all watch history and close open watches.

        Every resourceVersion handed out so far becomes too old to watch from
        (410 Expired), so clients must relist. The global resourceVersion moves
        on by one so a fresh list hands out a version that is watchable again.
        """
        self._history.clear()
        self._rv += 1
        self._compacted_rv = self._rv
        for w in list(self._watchers):
            w.queue.put_nowait(_CLOSE)

    # ----------------------------------------------------------------- client config

    def kubeconfig(self, namespace: str = "default") -> Obj:
        """A kubeconfig dict pointing at this server (plain HTTP, dummy token)."""
        return {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [
                {
                    "name": "fake",
                    "cluster": {"server": self.url, "insecure-skip-tls-verify": True},
                }
            ],
            "users": [{"name": "fake", "user": {"token": "fake-token"}}],
            "contexts": [
                {
                    "name": "fake",
                    "context": {"cluster": "fake", "user": "fake", "namespace": namespace},
                }
            ],
            "current-context": "fake",
            "preferences": {},
        }

    def write_kubeconfig(self, path: str | Path) -> Path:
        """Write :meth:`kubeconfig` as YAML to ``path`` and return it."""
        path = Path(path)
        path.write_text(yaml.safe_dump(self.kubeconfig(), sort_keys=False))
        return path

    async def api_client(self) -> ApiClient:
        """A ``kubernetes_asyncio.client.ApiClient`` for this server (caller closes it)."""
        from kubernetes_asyncio import config

        return await config.new_client_from_config_dict(self.kubeconfig())

    # ----------------------------------------------------------------- test controls

    def on_change(self, callback: ChangeCallback) -> Callable[[], None]:
        """Call ``callback(event_type, group, resource, obj)`` after every write.

        Returns a function that unregisters the callback.
        """
        self._callbacks.append(callback)
        return lambda: self._callbacks.remove(callback) if callback in self._callbacks else None

    def watch_count(self, group: str | None = None, resource: str | None = None) -> int:
        """How many watches are open (optionally for one resource)."""
        return sum(
            1
            for w in self._watchers
            if (group is None or w.rt.group == group) and (resource is None or w.rt.resource == resource)
        )

    async def wait_for_watches(
        self,
        n: int = 1,
        group: str | None = None,
        resource: str | None = None,
        timeout: float = 5.0,
    ) -> None:
        """Wait until at least ``n`` matching watches are open (e.g. a controller has synced)."""
        async with asyncio.timeout(timeout):
            while self.watch_count(group, resource) < n:
                await asyncio.sleep(0.01)

    def reset_calls(self) -> None:
        """Forget recorded :attr:`calls`."""
        self.calls.clear()
        self.user_agents.clear()

    def calls_by(self, user_agent: str) -> list[Call]:
        """Recorded calls whose User-Agent contains ``user_agent``."""
        return [c for c, agent in zip(self.calls, self.user_agents, strict=True) if user_agent in agent]

    def calls_for(
        self, verb: str | None = None, resource: str | None = None, subresource: str | None = ANY
    ) -> list[Call]:
        """Recorded calls filtered by verb / resource / subresource (``ANY`` by default)."""
        return [
            c
            for c in self.calls
            if (verb is None or c.verb == verb)
            and (resource is None or c.resource == resource)
            and (subresource == ANY or c.subresource == subresource)
        ]

    def fail_next(
        self,
        verb: str,
        group: str,
        resource: str,
        status: int = 500,
        times: int = 1,
        *,
        subresource: str | None = ANY,
        message: str | None = None,
    ) -> None:
        """Answer the next ``times`` matching API calls with an error ``Status`` of code ``status``.

        ``subresource`` defaults to any; pass None for the main resource only or
        e.g. "scale". A 410 on ``watch`` is delivered like the real server does:
        HTTP 200 with one ERROR event.
        """
        resource_type(group, resource)  # fail fast on typos
        self._failures.append(_Failure(verb, group, resource, subresource, status, times, message))

    def put(self, obj: Obj) -> Obj:
        """Create or replace ``obj`` directly (no HTTP, not recorded); returns the stored copy.

        The kind comes from ``apiVersion``/``kind``; ``metadata.namespace``
        defaults to "default". Emits watch events and change callbacks.
        """
        rt = _BY_KIND.get((obj.get("apiVersion", ""), obj.get("kind", "")))
        if rt is None:
            raise KeyError(f"fakekube does not serve {obj.get('apiVersion')}/{obj.get('kind')}")
        obj = copy.deepcopy(obj)
        meta = obj.setdefault("metadata", {})
        meta.setdefault("namespace", "default")
        old = self._store[rt].get((meta["namespace"], meta["name"]))
        if old is None:
            return self._create(rt, obj)
        return self._update(rt, obj, old, keep_status=False)

    def get_object(self, group: str, resource: str, namespace: str, name: str) -> Obj | None:
        """A copy of the stored object, or None."""
        obj = self._store[resource_type(group, resource)].get((namespace, name))
        return copy.deepcopy(obj) if obj is not None else None

    def delete_object(self, group: str, resource: str, namespace: str, name: str) -> Obj | None:
        """Delete directly (emits DELETED); returns the deleted object or None if absent."""
        rt = resource_type(group, resource)
        if (namespace, name) not in self._store[rt]:
            return None
        return self._delete(rt, namespace, name)

    def objects(self, group: str, resource: str, namespace: str | None = None) -> list[Obj]:
        """Copies of all stored objects of a resource, sorted by (namespace, name)."""
        rt = resource_type(group, resource)
        return [copy.deepcopy(o) for o in self._list(rt, namespace)]

    # ----------------------------------------------------------------- storage core

    def _list(self, rt: ResourceType, namespace: str | None) -> list[Obj]:
        store = self._store[rt]
        return [store[k] for k in sorted(store) if namespace is None or k[0] == namespace]

    def _commit(self, rt: ResourceType, type_: str, obj: Obj, old: Obj | None) -> Obj:
        """Record one write: bump the global rv, store, remember, fan out."""
        self._rv += 1
        meta = obj["metadata"]
        meta["resourceVersion"] = str(self._rv)
        key = (meta["namespace"], meta["name"])
        if type_ == "DELETED":
            self._store[rt].pop(key, None)
        else:
            self._store[rt][key] = obj
        ev = _Event(self._rv, rt, type_, copy.deepcopy(obj), copy.deepcopy(old) if old else None)
        self._history.append(ev)
        while len(self._history) > self.history_limit:
            self._compacted_rv = self._history.popleft().rv
        for w in list(self._watchers):
            if (out := w.translate(ev)) is not None:
                w.queue.put_nowait(out)
        for cb in list(self._callbacks):
            try:
                cb(type_, rt.group, rt.resource, copy.deepcopy(obj))
            except Exception:
                log.exception("fakekube on_change callback failed")
        return copy.deepcopy(obj)

    def _defaults(self, rt: ResourceType, obj: Obj) -> None:
        obj["apiVersion"] = rt.api_version
        obj["kind"] = rt.kind
        if rt.resource == "deployments":
            spec = obj.setdefault("spec", {})
            if spec.get("replicas") is None:
                spec["replicas"] = 1  # the real defaulting

    def _create(self, rt: ResourceType, obj: Obj) -> Obj:
        self._defaults(rt, obj)
        meta = obj["metadata"]
        if not meta.get("name"):
            if not meta.get("generateName"):
                raise ApiError(422, "metadata.name: Required value: name or generateName is required")
            suffix = "".join(random.choices(string.ascii_lowercase + string.digits, k=5))
            meta["name"] = meta["generateName"] + suffix
        if (meta["namespace"], meta["name"]) in self._store[rt]:
            raise _already_exists(rt, meta["name"])
        meta["uid"] = str(uuid.uuid4())
        meta["creationTimestamp"] = _now()
        meta["generation"] = 1
        for drop in ("deletionTimestamp", "deletionGracePeriodSeconds"):
            meta.pop(drop, None)
        return self._commit(rt, "ADDED", obj, None)

    def _update(self, rt: ResourceType, obj: Obj, old: Obj, *, keep_status: bool) -> Obj:
        """Replace ``old`` with ``obj`` keeping server-owned fields; no-op writes change nothing."""
        self._defaults(rt, obj)
        meta, old_meta = obj["metadata"], old["metadata"]
        for key in ("uid", "creationTimestamp", "generation"):
            if key in old_meta:
                meta[key] = old_meta[key]
        if keep_status and rt.has_status:
            if "status" in old:
                obj["status"] = copy.deepcopy(old["status"])
            else:
                obj.pop("status", None)
        if _spec_part(obj) != _spec_part(old):
            meta["generation"] = old_meta.get("generation", 1) + 1
        meta["resourceVersion"] = old_meta.get("resourceVersion")
        if _strip_volatile(obj) == _strip_volatile(old):
            return copy.deepcopy(old)  # etcd3 store skips no-op updates: no new rv, no event
        return self._commit(rt, "MODIFIED", obj, old)

    def _delete(self, rt: ResourceType, namespace: str, name: str) -> Obj:
        old = self._store[rt][(namespace, name)]
        return self._commit(rt, "DELETED", copy.deepcopy(old), old)

    # ----------------------------------------------------------------- HTTP

    async def _dispatch(self, request: web.Request) -> web.StreamResponse:
        try:
            return await self._route(request)
        except ApiError as err:
            return err.response()
        except Exception as err:  # a bug in the fake: still answer like an apiserver would
            log.exception("fakekube internal error")
            return ApiError(500, f"fakekube internal error: {err!r}").response()

    async def _route(self, request: web.Request) -> web.StreamResponse:
        parts = [p for p in request.path.split("/") if p]
        discovery = self._discovery(parts)
        if discovery is not None:
            return web.json_response(discovery)
        if parts and parts[0] == "api" and len(parts) >= 2:
            group, version, rest = "", parts[1], parts[2:]
        elif parts and parts[0] == "apis" and len(parts) >= 3:
            group, version, rest = parts[1], parts[2], parts[3:]
        else:
            raise ApiError(404, "the server could not find the requested resource")
        namespace: str | None = None
        if len(rest) >= 3 and rest[0] == "namespaces":
            namespace, rest = rest[1], rest[2:]
        if not 1 <= len(rest) <= 3:
            raise ApiError(404, "the server could not find the requested resource")
        rt = RESOURCES.get((group, rest[0]))
        if rt is None or rt.version != version:
            raise ApiError(404, "the server could not find the requested resource")
        name = rest[1] if len(rest) >= 2 else None
        sub = rest[2] if len(rest) == 3 else None
        if sub is not None and sub not in rt.subresources:
            raise ApiError(404, "the server could not find the requested resource")
        if name is None and namespace is None and request.method != "GET":
            raise ApiError(405, f"{request.method} is not allowed on all-namespaces {rt.resource}")

        q = request.query
        verb = {
            "GET": "get" if name else ("watch" if _truthy(q.get("watch")) else "list"),
            "POST": "create",
            "PUT": "update",
            "PATCH": "patch",
            "DELETE": "delete" if name else "deletecollection",
        }.get(request.method)
        if verb is None or (verb == "create" and name is not None):
            raise ApiError(405, f"method {request.method} not allowed")
        self.calls.append(Call(verb, group, rt.resource, sub, namespace, name))
        self.user_agents.append(request.headers.get("User-Agent", ""))
        injected = self._injected(verb, rt, sub, name)
        if injected is not None:
            if verb == "watch" and injected.code == 410:
                return await self._watch_error(request, injected)
            return injected.response()

        if verb == "list":
            return web.json_response(self._handle_list(rt, namespace, q))
        if verb == "watch":
            return await self._handle_watch(request, rt, namespace)
        assert namespace is not None
        if verb == "create":
            obj = self._create(rt, self._body_object(await self._json(request), rt, namespace))
            return web.json_response(obj, status=201)
        if verb == "deletecollection":
            raise ApiError(405, "deletecollection is not supported by fakekube")
        assert name is not None
        if verb == "get":
            return web.json_response(self._view(rt, self._existing(rt, namespace, name), sub))
        if verb == "update":
            body = await self._json(request)
            return web.json_response(self._handle_update(rt, namespace, name, sub, body))
        if verb == "patch":
            ctype = request.content_type
            body = await self._json(request)
            return web.json_response(self._handle_patch(rt, namespace, name, sub, ctype, body))
        body = await self._json(request, optional=True)
        return web.json_response(self._handle_delete(rt, namespace, name, body))

    def _injected(self, verb: str, rt: ResourceType, sub: str | None, name: str | None) -> ApiError | None:
        for f in self._failures:
            if (
                f.times > 0
                and f.verb == verb
                and (f.group, f.resource) == (rt.group, rt.resource)
                and (f.subresource == ANY or f.subresource == sub)
            ):
                f.times -= 1
                if f.times == 0:
                    self._failures.remove(f)
                if f.status == 409:
                    err = _conflict(rt, name or "")
                    err.message = f.message or err.message
                    return err
                message = f.message or f"fakekube: injected {f.status} for {verb} {rt.qualified}"
                return ApiError(f.status, message, rt=rt, name=name)
        return None

    @staticmethod
    async def _json(request: web.Request, *, optional: bool = False) -> Any:
        raw = await request.read()
        if not raw.strip():
            if optional:
                return None
            raise _bad_request("request body is empty")
        try:
            return json.loads(raw)
        except ValueError as err:
            raise _bad_request(f"invalid JSON body: {err}") from None

    def _existing(self, rt: ResourceType, namespace: str, name: str) -> Obj:
        obj = self._store[rt].get((namespace, name))
        if obj is None:
            raise _not_found(rt, name)
        return obj

    @staticmethod
    def _body_object(body: Any, rt: ResourceType, namespace: str, name: str | None = None) -> Obj:
        if not isinstance(body, dict):
            raise _bad_request("the request body must be a JSON object")
        if body.get("kind") not in (None, rt.kind):
            raise _bad_request(f"kind {body.get('kind')!r} does not match {rt.kind}")
        meta = body.setdefault("metadata", {})
        if not isinstance(meta, dict):
            raise _bad_request("metadata must be an object")
        if meta.get("namespace") not in (None, "", namespace):
            raise _bad_request(
                "the namespace of the provided object does not match the namespace sent on the request"
            )
        meta["namespace"] = namespace
        if name is not None and meta.get("name") != name:
            raise _bad_request("the name of the object does not match the name on the URL")
        return body

    def _view(self, rt: ResourceType, obj: Obj, sub: str | None) -> Obj:
        if sub == "scale":
            return self._scale(obj)
        return copy.deepcopy(obj)

    @staticmethod
    def _scale(deploy: Obj) -> Obj:
        meta = deploy["metadata"]
        return {
            "apiVersion": "autoscaling/v1",
            "kind": "Scale",
            "metadata": {
                "name": meta["name"],
                "namespace": meta["namespace"],
                "uid": meta.get("uid"),
                "resourceVersion": meta.get("resourceVersion"),
                "creationTimestamp": meta.get("creationTimestamp"),
            },
            "spec": {"replicas": deploy.get("spec", {}).get("replicas", 0)},
            "status": {
                "replicas": (deploy.get("status") or {}).get("replicas", 0),
                "selector": _selector_string(deploy),
            },
        }

    def _handle_list(self, rt: ResourceType, namespace: str | None, q: Any) -> Obj:
        labels, fields = self._selectors(q)
        items = [o for o in self._list(rt, namespace) if labels.matches(o["metadata"].get("labels"))]
        items = [o for o in items if fields.matches(o)]
        meta: Obj = {"resourceVersion": str(self._rv)}
        start = 0
        if token := q.get("continue"):
            try:
                start = int(json.loads(base64.urlsafe_b64decode(token))["start"])
            except (ValueError, KeyError, TypeError):
                raise _bad_request("invalid continue token") from None
        limit = int(q.get("limit") or 0)
        page = items[start : start + limit] if limit > 0 else items[start:]
        if limit > 0 and start + limit < len(items):
            meta["continue"] = base64.urlsafe_b64encode(
                json.dumps({"start": start + limit}).encode()
            ).decode()
            meta["remainingItemCount"] = len(items) - start - limit
        # Real list items omit apiVersion/kind; only the list carries them.
        out = []
        for o in page:
            item = copy.deepcopy(o)
            item.pop("apiVersion", None)
            item.pop("kind", None)
            out.append(item)
        return {"kind": rt.list_kind, "apiVersion": rt.api_version, "metadata": meta, "items": out}

    @staticmethod
    def _selectors(q: Any) -> tuple[LabelSelector, FieldSelector]:
        try:
            return LabelSelector(q.get("labelSelector")), FieldSelector(q.get("fieldSelector"))
        except ValueError as err:
            raise _bad_request(str(err)) from None

    def _handle_update(self, rt: ResourceType, namespace: str, name: str, sub: str | None, body: Any) -> Obj:
        if sub == "scale":
            old = self._existing(rt, namespace, name)
            if not isinstance(body, dict):
                raise _bad_request("the request body must be a Scale object")
            rv = (body.get("metadata") or {}).get("resourceVersion")
            if rv and rv != old["metadata"]["resourceVersion"]:
                raise _conflict(rt, name)
            replicas = (body.get("spec") or {}).get("replicas", 0)
            return self._scale(self._set_replicas(rt, old, replicas))
        obj = self._body_object(body, rt, namespace, name)
        old = self._store[rt].get((namespace, name))
        if old is None:
            if rt.allow_create_on_update:
                return self._create(rt, obj)
            raise _not_found(rt, name)
        rv = obj["metadata"].get("resourceVersion")
        if rv and rv != old["metadata"]["resourceVersion"]:
            raise _conflict(rt, name)
        if sub == "status":
            merged = copy.deepcopy(old)
            merged["status"] = obj.get("status")
            return self._update(rt, merged, old, keep_status=False)
        return self._update(rt, obj, old, keep_status=True)

    def _set_replicas(self, rt: ResourceType, old: Obj, replicas: Any) -> Obj:
        if not isinstance(replicas, int) or isinstance(replicas, bool) or replicas < 0:
            raise ApiError(
                422,
                f'Scale.autoscaling "{old["metadata"]["name"]}" is invalid: spec.replicas: '
                f"Invalid value: {replicas!r}: must be greater than or equal to 0",
                rt=rt,
                name=old["metadata"]["name"],
            )
        new = copy.deepcopy(old)
        new["spec"]["replicas"] = replicas
        return self._update(rt, new, old, keep_status=False)

    def _handle_patch(
        self, rt: ResourceType, namespace: str, name: str, sub: str | None, ctype: str, body: Any
    ) -> Obj:
        old = self._existing(rt, namespace, name)
        current = self._scale(old) if sub == "scale" else copy.deepcopy(old)
        if ctype in ("application/merge-patch+json", "application/strategic-merge-patch+json"):
            if not isinstance(body, dict):
                raise _bad_request("a merge patch must be a JSON object")
            patched = merge_patch(current, body)
        elif ctype == "application/json-patch+json":
            try:
                patched = json_patch(current, body)
            except JsonPatchError as err:
                raise ApiError(422, f"the server rejected our request: {err}", rt=rt, name=name) from None
        else:
            raise ApiError(
                415,
                f"the body of the request was in an unknown format ({ctype!r}) - accepted media types "
                "include: application/json-patch+json, application/merge-patch+json, "
                "application/strategic-merge-patch+json",
            )
        if not isinstance(patched, dict):
            raise _bad_request("the patched object is not a JSON object")
        rv = (patched.get("metadata") or {}).get("resourceVersion")
        if rv and rv != old["metadata"]["resourceVersion"]:
            raise _conflict(rt, name)  # a patch carrying a resourceVersion is a precondition
        if sub == "scale":
            return self._scale(self._set_replicas(rt, old, (patched.get("spec") or {}).get("replicas", 0)))
        meta = patched.setdefault("metadata", {})
        meta["name"], meta["namespace"] = name, namespace
        if sub == "status":
            merged = copy.deepcopy(old)
            merged["status"] = patched.get("status")
            return self._update(rt, merged, old, keep_status=False)
        return self._update(rt, patched, old, keep_status=True)

    def _handle_delete(self, rt: ResourceType, namespace: str, name: str, body: Any) -> Obj:
        old = self._existing(rt, namespace, name)
        pre = (body or {}).get("preconditions") or {} if isinstance(body, dict) else {}
        if pre.get("resourceVersion") and pre["resourceVersion"] != old["metadata"]["resourceVersion"]:
            raise _conflict(rt, name)
        if pre.get("uid") and pre["uid"] != old["metadata"].get("uid"):
            raise _conflict(rt, name)
        gone = self._delete(rt, namespace, name)
        # Like most built-in registries, answer with a Success Status rather than the object.
        details: Obj = {"name": name, "kind": rt.resource, "uid": gone["metadata"].get("uid")}
        if rt.group:
            details["group"] = rt.group
        return {
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Success",
            "details": details,
        }

    # ----------------------------------------------------------------- watch

    async def _watch_error(self, request: web.Request, err: ApiError) -> web.StreamResponse:
        """What the real server does when a watch cannot start: 200, one ERROR event, close."""
        resp = web.StreamResponse(status=200, headers={"Content-Type": "application/json"})
        resp.enable_chunked_encoding()
        await resp.prepare(request)
        await resp.write(json.dumps({"type": "ERROR", "object": err.status()}).encode() + b"\n")
        await resp.write_eof()
        return resp

    def _initial_events(self, w: _Watcher, rv_param: str, send_initial: bool) -> list[Obj]:
        if send_initial:
            # WatchList (sendInitialEvents=true): current state, then a bookmark marking its end.
            added = self._initial_events(w, "", send_initial=False)
            end = self._bookmark(w.rt)
            end["object"]["metadata"]["annotations"] = {"k8s.io/initial-events-end": "true"}
            return [*added, end]
        if rv_param in ("", "0"):
            # "Most recent" / "any": synthetic ADDED for the current state.
            return [
                {"type": "ADDED", "object": copy.deepcopy(o)}
                for o in self._list(w.rt, w.namespace)
                if w.matches(o)
            ]
        try:
            since = int(rv_param)
        except ValueError:
            raise _bad_request(f"invalid resourceVersion {rv_param!r}") from None
        if since < self._compacted_rv:
            raise ApiError(410, f"too old resource version: {since} ({self._compacted_rv})", "Expired")
        return [out for ev in self._history if ev.rv > since and (out := w.translate(ev))]

    async def _handle_watch(
        self, request: web.Request, rt: ResourceType, namespace: str | None
    ) -> web.StreamResponse:
        q = request.query
        labels, fields = self._selectors(q)
        w = _Watcher(rt, namespace, labels, fields, request)
        try:
            initial = self._initial_events(
                w, q.get("resourceVersion", ""), _truthy(q.get("sendInitialEvents"))
            )
        except ApiError as err:
            if err.code == 410:
                return await self._watch_error(request, err)
            raise
        try:
            timeout = float(q["timeoutSeconds"]) if q.get("timeoutSeconds") else None
        except ValueError:
            raise _bad_request("invalid timeoutSeconds") from None
        bookmarks = _truthy(q.get("allowWatchBookmarks"))
        if self._stopping:  # raced with stop(): end at once, like a server going away
            initial, timeout = [], 0.0
        # Register before the first await: no write can slip between replay and live events.
        self._watchers.add(w)
        try:
            return await self._stream(request, w, initial, timeout, bookmarks)
        finally:
            self._watchers.discard(w)

    async def _stream(
        self,
        request: web.Request,
        w: _Watcher,
        initial: list[Obj],
        timeout: float | None,
        bookmarks: bool,
    ) -> web.StreamResponse:
        loop = asyncio.get_running_loop()
        resp = web.StreamResponse(status=200, headers={"Content-Type": "application/json"})
        resp.enable_chunked_encoding()
        await resp.prepare(request)
        for ev in initial:
            await resp.write(json.dumps(ev).encode() + b"\n")
        deadline = loop.time() + timeout if timeout is not None else None
        next_bookmark = loop.time() + self.bookmark_interval
        while True:
            waits = [next_bookmark - loop.time()] if bookmarks else []
            if deadline is not None:
                waits.append(deadline - loop.time())
            try:
                item = await asyncio.wait_for(w.queue.get(), max(0.0, min(waits)) if waits else None)
            except TimeoutError:
                if deadline is not None and loop.time() >= deadline:
                    break
                if bookmarks and loop.time() >= next_bookmark:
                    next_bookmark = loop.time() + self.bookmark_interval
                    if w.queue.empty():  # never claim an rv whose events are still queued
                        await resp.write(json.dumps(self._bookmark(w.rt)).encode() + b"\n")
                continue
            if item == _ABORT:
                if request.transport is not None:
                    request.transport.abort()
                return resp
            if item == _CLOSE:
                break
            await resp.write(json.dumps(item).encode() + b"\n")
        await resp.write_eof()
        return resp

    def _bookmark(self, rt: ResourceType) -> Obj:
        return {
            "type": "BOOKMARK",
            "object": {
                "kind": rt.kind,
                "apiVersion": rt.api_version,
                "metadata": {"resourceVersion": str(self._rv)},
            },
        }

    # ----------------------------------------------------------------- discovery

    def _discovery(self, parts: list[str]) -> Obj | None:
        if parts == ["version"]:
            return {
                "major": "1",
                "minor": "31",
                "gitVersion": "v1.31.0-fakekube",
                "gitCommit": "0000000000000000000000000000000000000000",
                "gitTreeState": "clean",
                "buildDate": "2024-01-01T00:00:00Z",
                "goVersion": "go1.22.0",
                "compiler": "gc",
                "platform": "linux/amd64",
            }
        if parts == ["api"]:
            return {
                "kind": "APIVersions",
                "versions": ["v1"],
                "serverAddressByClientCIDRs": [
                    {"clientCIDR": "0.0.0.0/0", "serverAddress": f"{self.host}:{self.port}"}
                ],
            }
        if parts == ["apis"]:
            groups = sorted({(rt.group, rt.version) for rt in RESOURCES.values() if rt.group})
            return {
                "kind": "APIGroupList",
                "apiVersion": "v1",
                "groups": [
                    {
                        "name": g,
                        "versions": [{"groupVersion": f"{g}/{v}", "version": v}],
                        "preferredVersion": {"groupVersion": f"{g}/{v}", "version": v},
                    }
                    for g, v in groups
                ],
            }
        if parts == ["api", "v1"]:
            return self._resource_list("", "v1")
        if (
            len(parts) == 3
            and parts[0] == "apis"
            and any((rt.group, rt.version) == (parts[1], parts[2]) for rt in RESOURCES.values())
        ):
            return self._resource_list(parts[1], parts[2])
        if len(parts) == 2 and parts[0] == "apis":
            for rt in RESOURCES.values():
                if rt.group == parts[1]:
                    gv = {"groupVersion": rt.api_version, "version": rt.version}
                    return {
                        "kind": "APIGroup",
                        "apiVersion": "v1",
                        "name": rt.group,
                        "versions": [gv],
                        "preferredVersion": gv,
                    }
        return None

    @staticmethod
    def _resource_list(group: str, version: str) -> Obj:
        verbs = ["create", "delete", "get", "list", "patch", "update", "watch"]
        resources: list[Obj] = []
        for rt in RESOURCES.values():
            if (rt.group, rt.version) != (group, version):
                continue
            resources.append(
                {
                    "name": rt.resource,
                    "singularName": rt.kind.lower(),
                    "namespaced": True,
                    "kind": rt.kind,
                    "verbs": verbs,
                }
            )
            for sub in sorted(rt.subresources):
                kind = "Scale" if sub == "scale" else rt.kind
                resources.append(
                    {
                        "name": f"{rt.resource}/{sub}",
                        "singularName": "",
                        "namespaced": True,
                        "kind": kind,
                        "verbs": ["get", "patch", "update"],
                    }
                )
        return {
            "kind": "APIResourceList",
            "apiVersion": "v1",
            "groupVersion": f"{group}/{version}" if group else version,
            "resources": resources,
        }
