"""The HTTP face of the Files and Batches API on the proxy port, with OpenAI's objects and errors."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any
from urllib.parse import parse_qs

import orjson

from lingo.batch.api.multipart import MultipartError, parse_form
from lingo.batch.api.objects import (
    ENDPOINTS,
    MAX_FILE_BYTES,
    batch_object,
    file_object,
    page,
)
from lingo.batch.api.store import BatchStore, owner_of
from lingo.errors import BadRequest, BodyTooLarge, LingoError
from lingo.proxy.responses import error_parts, json_parts
from lingo.proxy.server import IncomingRequest, ResponseWriter

log = logging.getLogger(__name__)

#: Paths this module answers (and everything below them).
PREFIXES = ("/v1/files", "/v1/batches")
#: Most metadata pairs on a batch, and their key/value lengths (OpenAI's limits).
MAX_METADATA = 16
MAX_METADATA_KEY = 64
MAX_METADATA_VALUE = 512


class NotFound(LingoError):
    status, error_type, code = 404, "invalid_request_error", None


class MethodNotAllowed(LingoError):
    status, error_type, code = 405, "invalid_request_error", None


class Conflict(LingoError):
    status, error_type, code = 409, "invalid_request_error", None


def handles(path: str) -> bool:
    """True for the Files and Batches API's paths."""
    return any(path == prefix or path.startswith(prefix + "/") for prefix in PREFIXES)


class BatchApiRoutes:
    """Answers `/v1/files…` and `/v1/batches…`."""

    def __init__(
        self,
        store: BatchStore,
        window_seconds: float,
        keys_enabled: bool,
        on_created: Callable[[], None],
        on_cancel: Callable[[str], None],
    ) -> None:
        #: Where files and batches live.
        self.store = store
        #: Seconds from a batch's creation to its expiry (24 h unless a test shortens it).
        self.window_seconds = window_seconds
        #: True when `LINGO_API_KEYS` is set: objects belong to the key that created them.
        self.keys_enabled = keys_enabled
        #: Tells the runner a batch is waiting.
        self.on_created = on_created
        #: Tells the runner a batch was cancelled.
        self.on_cancel = on_cancel
        self._opening = asyncio.Lock()

    async def __call__(self, request: IncomingRequest, out: ResponseWriter) -> None:
        try:
            if not self.store.ready:
                async with self._opening:
                    if not self.store.ready:
                        await self.store.open()
            status, headers, body = await self._route(request)
        except LingoError as error:
            status, headers, body = error_parts(error)
        except Exception:
            log.exception("batch API request failed", extra={"path": request.path})
            status, headers, body = error_parts(LingoError("the batch store failed; try again"))
        out.send(status, headers, body)

    def _owner(self, request: IncomingRequest) -> str:
        if not self.keys_enabled:
            return ""
        _, _, token = (request.header("Authorization") or "").partition(" ")
        return owner_of(token.strip())

    async def _route(self, request: IncomingRequest) -> tuple[int, list[tuple[str, str]], bytes]:
        parts = request.path.rstrip("/").split("/")[2:]  # after "/v1"
        method = request.method
        owner = self._owner(request)
        query = {key: values[-1] for key, values in parse_qs(request.target.partition("?")[2]).items()}
        kind, rest = parts[0], parts[1:]
        if kind == "files":
            if not rest:
                if method == "POST":
                    return json_parts(await self._upload(request, owner))
                if method == "GET":
                    return json_parts(await self._list_files(owner, query))
            elif len(rest) == 1:
                if method == "GET":
                    return json_parts(file_object(await self._file(owner, rest[0])))
                if method == "DELETE":
                    await self._file(owner, rest[0])
                    await self.store.delete_file(owner, rest[0])
                    return json_parts({"id": rest[0], "object": "file", "deleted": True})
            elif len(rest) == 2 and rest[1] == "content" and method == "GET":
                content = await self.store.file_content(rest[0], owner)
                if content is None:
                    raise NotFound(f"No such File object: {rest[0]}")
                return 200, [("Content-Type", "application/octet-stream"), ("X-Proxy", "lingo")], content
            else:
                raise NotFound(f"Unknown path {request.path}")
        else:
            if not rest:
                if method == "POST":
                    return json_parts(await self._create_batch(request, owner))
                if method == "GET":
                    return json_parts(await self._list_batches(owner, query))
            elif len(rest) == 1 and method == "GET":
                return json_parts(batch_object(await self._batch(owner, rest[0])))
            elif len(rest) == 2 and rest[1] == "cancel" and method == "POST":
                return json_parts(await self._cancel(owner, rest[0]))
            elif len(rest) > 2:
                raise NotFound(f"Unknown path {request.path}")
        raise MethodNotAllowed(f"{method} is not allowed on {request.path}")

    # -- files ------------------------------------------------------------------------------------

    async def _upload(self, request: IncomingRequest, owner: str) -> dict[str, Any]:
        try:
            form = await asyncio.to_thread(parse_form, request.header("Content-Type") or "", request.body)
        except MultipartError as exc:
            raise BadRequest(str(exc)) from None
        upload = form.get("file")
        purpose = form.get("purpose")
        if upload is None:
            raise BadRequest("missing required field 'file'")
        if purpose is None or purpose.data.decode("utf-8", "replace") != "batch":
            raise BadRequest("purpose must be 'batch' (lingo stores batch input files only)")
        if len(upload.data) > MAX_FILE_BYTES:
            raise BodyTooLarge(f"a batch input file may have at most {MAX_FILE_BYTES} bytes")
        row = await self.store.add_file(owner, upload.filename or "upload.jsonl", "batch", bytes(upload.data))
        return file_object(row)

    async def _file(self, owner: str, file_id: str) -> dict[str, Any]:
        row = await self.store.get_file(owner, file_id)
        if row is None:
            raise NotFound(f"No such File object: {file_id}")
        return row

    async def _list_files(self, owner: str, query: dict[str, str]) -> dict[str, Any]:
        limit = _limit(query, default=10_000, most=10_000)
        order = query.get("order", "desc")
        if order not in ("asc", "desc"):
            raise BadRequest("order must be 'asc' or 'desc'")
        listed = await self.store.list_files(
            owner, query.get("purpose"), query.get("after"), limit, order == "asc"
        )
        if listed is None:
            raise NotFound(f"No such File object: {query.get('after')}")
        rows, has_more = listed
        return page([file_object(row) for row in rows], has_more)

    # -- batches ----------------------------------------------------------------------------------

    async def _create_batch(self, request: IncomingRequest, owner: str) -> dict[str, Any]:
        try:
            params = orjson.loads(request.body)
        except orjson.JSONDecodeError:
            raise BadRequest("the request body is not valid JSON") from None
        if not isinstance(params, dict):
            raise BadRequest("the request body must be a JSON object")
        endpoint = params.get("endpoint")
        if endpoint not in ENDPOINTS:
            raise BadRequest(f"endpoint must be one of {', '.join(ENDPOINTS)}")
        if params.get("completion_window") != "24h":
            raise BadRequest("completion_window must be '24h'")
        metadata = params.get("metadata")
        _check_metadata(metadata)
        input_file_id = params.get("input_file_id")
        if not isinstance(input_file_id, str):
            raise BadRequest("input_file_id is required")
        input_file = await self.store.get_file(owner, input_file_id)
        if input_file is None:
            raise NotFound(f"No such File object: {input_file_id}")
        if input_file["purpose"] != "batch":
            raise BadRequest(f"file {input_file_id} was not uploaded with purpose 'batch'")
        row = await self.store.add_batch(owner, endpoint, input_file_id, "24h", self.window_seconds, metadata)
        self.on_created()
        log.info("batch created", extra={"batch": row["id"], "endpoint": endpoint})
        return batch_object(row)

    async def _batch(self, owner: str, batch_id: str) -> dict[str, Any]:
        row = await self.store.get_batch(owner, batch_id)
        if row is None:
            raise NotFound(f"No such Batch object: {batch_id}")
        return row

    async def _list_batches(self, owner: str, query: dict[str, str]) -> dict[str, Any]:
        limit = _limit(query, default=20, most=100)
        listed = await self.store.list_batches(owner, query.get("after"), limit)
        if listed is None:
            raise NotFound(f"No such Batch object: {query.get('after')}")
        rows, has_more = listed
        return page([batch_object(row) for row in rows], has_more)

    async def _cancel(self, owner: str, batch_id: str) -> dict[str, Any]:
        row = await self.store.request_cancel(owner, batch_id)
        if row is None:
            raise NotFound(f"No such Batch object: {batch_id}")
        if row["status"] not in ("cancelling", "cancelled"):
            raise Conflict(f"Cannot cancel a batch with status '{row['status']}'.")
        self.on_cancel(batch_id)
        return batch_object(row)


def _limit(query: dict[str, str], default: int, most: int) -> int:
    text = query.get("limit")
    if text is None:
        return default
    if not text.isdigit() or not 1 <= int(text) <= most:
        raise BadRequest(f"limit must be an integer from 1 to {most}")
    return int(text)


def _check_metadata(metadata: object) -> None:
    if metadata is None:
        return
    if not isinstance(metadata, dict) or len(metadata) > MAX_METADATA:
        raise BadRequest(f"metadata must be an object of at most {MAX_METADATA} pairs")
    for key, value in metadata.items():
        if len(key) > MAX_METADATA_KEY or not isinstance(value, str) or len(value) > MAX_METADATA_VALUE:
            raise BadRequest(
                f"metadata keys have at most {MAX_METADATA_KEY} characters and values are strings "
                f"of at most {MAX_METADATA_VALUE}"
            )
