"""A live, resilient copy of one kind of object in one namespace: list, then watch.

The loop client-go's reflector runs, in small: list (paged) and remember the list's resourceVersion;
watch from it with bookmarks; when the stream ends (server timeout, API server restart) watch again
from the last version seen; when that version is gone (410) list again. Errors back off (capped,
with jitter) and are retried forever: an API server that is away delays updates, it never ends the
loop, and the last known objects stay in place meanwhile.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
from kubernetes_asyncio import watch
from kubernetes_asyncio.client.exceptions import ApiException

from lingo.backoff import Backoff

log = logging.getLogger(__name__)

#: A typed `list_namespaced_*` method of a kubernetes_asyncio API.
ListFunction = Callable[..., Awaitable[Any]]
#: Objects per list page (client-go's pager uses the same).
PAGE_SIZE = 500
#: A watch that lived at least this long (seconds) was healthy; the next one starts at once.
HEALTHY_WATCH = 1.0


def describe(error: BaseException) -> str:
    """One line about an API error, without the response headers ApiException prints."""
    if isinstance(error, ApiException):
        return f"HTTP {error.status} {error.reason}".strip()
    return f"{type(error).__name__}: {error}".rstrip(": ")


class ResourceWatch:
    """Keeps `objects` equal to one kind of object in one namespace, calling `on_change` after each change."""

    def __init__(
        self,
        kind: str,
        list_function: ListFunction,
        serialize: Callable[[Any], Any],
        *,
        namespace: str,
        on_change: Callable[[], None],
        label_selector: str | None = None,
        backoff: Backoff | None = None,
        watch_timeout: float = 300.0,
        request_timeout: float = 30.0,
    ) -> None:
        #: What is watched, for logs (e.g. `deployments`).
        self.kind = kind
        #: The typed list method (`AppsV1Api.list_namespaced_deployment`, ...).
        self.list_function = list_function
        #: Turns a typed object into the API's JSON shape (`ApiClient.sanitize_for_serialization`).
        self.serialize = serialize
        #: Namespace watched.
        self.namespace = namespace
        #: Called (synchronously) after every change to `objects`.
        self.on_change = on_change
        #: Server-side label filter, if any.
        self.label_selector = label_selector
        #: Delays between failed attempts.
        self.backoff = backoff or Backoff()
        #: Server-side watch timeout; each watch asks for between one and two times this.
        self.watch_timeout = watch_timeout
        #: Seconds an ordinary request (a list page) may take.
        self.request_timeout = request_timeout
        #: The objects by name, in the API's JSON shape.
        self.objects: dict[str, dict[str, Any]] = {}
        #: Set once the first list has been applied.
        self.synced = asyncio.Event()
        #: The resourceVersion the next watch resumes from (None: list first).
        self.resource_version: str | None = None
        #: Lists done so far (the first one and every relist).
        self.lists = 0

    def _selector(self) -> dict[str, Any]:
        return {"label_selector": self.label_selector} if self.label_selector else {}

    async def run(self) -> None:
        """List and watch until cancelled."""
        failing = False
        while True:
            try:
                if self.resource_version is None:
                    await self._list()
                    if failing:
                        log.info("API server reachable again; resynced", extra={"kind": self.kind})
                    failing = False
                    self.backoff.reset()
                healthy = await self._watch()
                if healthy:
                    self.backoff.reset()
                    continue
                delay = self.backoff.next()
            except asyncio.CancelledError:
                raise
            except ApiException as error:
                if error.status == 410 and self.resource_version is not None:
                    log.info("watch expired (410); relisting", extra={"kind": self.kind})
                    self.resource_version = None
                    continue
                failing, delay = True, self.backoff.next()
                self._warn(error, delay)
            except (aiohttp.ClientError, OSError, TimeoutError) as error:
                failing, delay = True, self.backoff.next()
                self._warn(error, delay)
            except Exception as error:
                failing, delay = True, self.backoff.next()
                log.exception("watch failed unexpectedly; relisting", extra={"kind": self.kind})
                self._warn(error, delay)
                self.resource_version = None
            await asyncio.sleep(delay)

    def _warn(self, error: BaseException, delay: float) -> None:
        log.warning(
            "cannot reach the API server; retrying",
            extra={
                "kind": self.kind,
                "error": describe(error),
                "retry_in": round(delay, 2),
                "attempt": self.backoff.failures,
            },
        )

    async def _list(self) -> None:
        items: list[dict[str, Any]] = []
        token: str | None = None
        while True:
            page = await self.list_function(
                self.namespace,
                limit=PAGE_SIZE,
                _continue=token,
                _request_timeout=self.request_timeout,
                **self._selector(),
            )
            items.extend(self.serialize(item) for item in page.items or [])
            token = page.metadata._continue
            if not token:
                break
        self.objects = {item["metadata"]["name"]: item for item in items}
        self.resource_version = page.metadata.resource_version
        self.lists += 1
        self.synced.set()
        self._changed()

    async def _watch(self) -> bool:
        """Watch from `resource_version` until the stream ends; True if it was a healthy watch."""
        loop = asyncio.get_running_loop()
        started = loop.time()
        events = 0
        server_timeout = int(self.watch_timeout * (1 + random.random())) or 1
        read_timeout = aiohttp.ClientTimeout(
            connect=self.request_timeout, sock_connect=self.request_timeout, sock_read=server_timeout + 30
        )
        async with watch.Watch() as stream:
            async for event in stream.stream(
                self.list_function,
                self.namespace,
                resource_version=self.resource_version,
                allow_watch_bookmarks=True,
                timeout_seconds=server_timeout,
                _request_timeout=read_timeout,
                **self._selector(),
            ):
                events += 1
                self._apply(event["type"], event["raw_object"])
        return events > 0 or loop.time() - started >= HEALTHY_WATCH

    def _apply(self, kind: str, obj: dict[str, Any]) -> None:
        metadata = obj.get("metadata") or {}
        if metadata.get("resourceVersion"):
            self.resource_version = metadata["resourceVersion"]
        if kind in ("ADDED", "MODIFIED"):
            self.objects[metadata["name"]] = obj
        elif kind == "DELETED":
            self.objects.pop(metadata.get("name", ""), None)
        else:  # BOOKMARK: only the resourceVersion moves on
            return
        self._changed()

    def _changed(self) -> None:
        try:
            self.on_change()
        except Exception:
            log.exception("handling a change failed", extra={"kind": self.kind})
