"""The OpenAI-compatible HTTP face: find the model, queue, forward, stream the answer back."""

from __future__ import annotations

import asyncio
import hmac
import logging
from collections.abc import Awaitable, Callable

import orjson

from lingo.access_log import REQUEST_ID, AccessLog, request_id, seconds
from lingo.errors import LingoError, ModelNotFound, Unauthorized
from lingo.metrics import Metrics
from lingo.priority import PRIORITY_HEADER, request_class
from lingo.prompt_key import RoutingKey, routing_key
from lingo.proxy.forwarder import Exchange, Forwarder
from lingo.proxy.headers import request_headers, response_headers
from lingo.proxy.model_name import ParsedRequest, json_document, parse_request
from lingo.proxy.responses import error_parts, json_parts
from lingo.proxy.server import IncomingRequest, ResponseWriter
from lingo.proxy.upstream import UpstreamError
from lingo.queue import ModelQueue, Priority
from lingo.registry import Registry

log = logging.getLogger(__name__)


class ProxyHandler:
    """Handles every request on the proxy port."""

    def __init__(
        self,
        registry: Registry,
        forwarder: Forwarder,
        metrics: Metrics,
        max_body: int,
        api_keys: list[str] | None = None,
        access_log: AccessLog | None = None,
    ) -> None:
        #: Known models and their queues.
        self.registry = registry
        #: The shared path to backends.
        self.forwarder = forwarder
        #: Where requests are counted.
        self.metrics = metrics
        #: Largest accepted request body in bytes.
        self.max_body = max_body
        #: Accepted bearer tokens; empty means no check.
        self.api_keys = [key.encode() for key in api_keys or []]
        #: Paths lingo answers itself before any model lookup (the Batches API): a predicate and a handler.
        self.own_routes: tuple[Callable[[str], bool], Callable[..., Awaitable[None]]] | None = None
        #: One line per request when enabled.
        self.access_log = access_log or AccessLog(False)

    async def __call__(self, request: IncomingRequest, out: ResponseWriter) -> None:
        rid = request_id(request.header(REQUEST_ID))
        model: str | None = None
        try:
            self._authorize(request)
            if self.own_routes is not None and self.own_routes[0](request.path):
                await self.own_routes[1](request, out)
                return
            if request.method == "GET":
                path = request.path.rstrip("/")
                if path in ("/v1/models", "/models"):
                    self._answer(request, out, rid, None, self._list_models())
                    return
                if path.startswith("/v1/models/"):
                    self._answer(request, out, rid, None, self._get_model(path[len("/v1/models/") :]))
                    return
            parsed = parse_request(
                request.header("X-Model"), request.header("Content-Type") or "", request.body
            )
            model = parsed.model
            document = parsed.document if parsed.document is not None else _tier_document(request)
            priority = request_class(request.header(PRIORITY_HEADER), document)
            queue = self.registry.lookup(model)
            if queue is None:
                raise ModelNotFound(f"The model `{model}` does not exist or is not served by this lingo.")
        except LingoError as error:
            self._answer(request, out, rid, model, error_parts(error))
            return
        key = _routing_key(request, parsed, queue) if queue.chooser.wants_key else None
        # The parsed body can be as large as the body itself: not held while the request waits.
        del parsed, document
        await self._forward(request, out, queue, model, rid, priority, key)

    def _authorize(self, request: IncomingRequest) -> None:
        if not self.api_keys:
            return
        scheme, _, token = (request.header("Authorization") or "").partition(" ")
        given = token.strip().encode("latin-1", "replace")
        if scheme.lower() != "bearer" or not any(hmac.compare_digest(given, key) for key in self.api_keys):
            raise Unauthorized("Incorrect API key provided.")

    def _list_models(self) -> tuple[int, list[tuple[str, str]], bytes]:
        data = [_model_object(name) for name, _ in self.registry.model_names()]
        return json_parts({"object": "list", "data": data})

    def _get_model(self, name: str) -> tuple[int, list[tuple[str, str]], bytes]:
        if self.registry.lookup(name) is None:
            return error_parts(ModelNotFound(f"The model `{name}` does not exist."))
        return json_parts(_model_object(name))

    async def _forward(
        self,
        request: IncomingRequest,
        out: ResponseWriter,
        queue: ModelQueue,
        model: str,
        rid: str,
        priority: Priority,
        key: RoutingKey | None,
    ) -> None:
        loop = asyncio.get_running_loop()
        started = loop.time()
        group = queue.group.name
        code = 499  # the client went away before an answer
        exchange: Exchange | None = None
        head_at = 0.0
        sink: _CountingSink | ResponseWriter = out
        forwarded = request_headers(request.headers, keyed=bool(self.api_keys))
        forwarded.append((REQUEST_ID, rid))
        try:
            async with self.forwarder.exchange(
                queue, request.method, request.target, forwarded, request.body, priority, key=key
            ) as exchange:
                head_at = loop.time()
                self.metrics.observe_wait(group, exchange.waited)
                upstream = exchange.response
                code = upstream.status
                headers = response_headers(upstream.raw_headers)
                headers.append((REQUEST_ID, rid))
                length = upstream.content_length
                if upstream.complete and length is not None:
                    body = await upstream.read()
                    out.send(code, headers, body)
                    if self.access_log.enabled:
                        sink = _CountingSink(out, len(body))
                    return
                out.start(code, headers, length)
                if self.access_log.enabled:
                    sink = _CountingSink(out)
                try:
                    await upstream.pipe(sink)
                except UpstreamError as exc:
                    # Bytes already reached the client: no retry is possible. Cut the connection so
                    # the client sees a truncated response, not a falsely complete one.
                    log.warning("backend failed mid-response", extra={"model": group, "error": str(exc)})
                    code = 502
                    out.abort()
                    return
                out.end()
        except LingoError as error:
            code = error.status
            parts = error_parts(error)
            _send(out, rid, parts)
            if self.access_log.enabled:
                sink = _CountingSink(out, len(parts[2]))
        finally:
            ended = loop.time()
            self.metrics.observe_request(group, "http", code, ended - started, priority.label)
            if self.access_log.enabled:
                waited = exchange.waited if exchange is not None else None
                self.access_log.write(
                    {
                        "request_id": rid,
                        "source": "http",
                        "class": priority.name.lower(),
                        "method": request.method,
                        "path": request.path,
                        "model": model,
                        "group": group,
                        "endpoint": exchange.lease.url if exchange is not None else "-",
                        "status": code,
                        "wait": seconds(waited if waited is not None else ended - started),
                        "ttfb": seconds(head_at - started - waited if waited is not None else None),
                        "duration": seconds(ended - started),
                        "bytes_in": len(request.body),
                        "bytes_out": sink.sent if isinstance(sink, _CountingSink) else 0,
                        "attempts": exchange.attempts if exchange is not None else 0,
                        "streamed": isinstance(sink, _CountingSink) and sink.streamed,
                    }
                )

    def _answer(
        self,
        request: IncomingRequest,
        out: ResponseWriter,
        rid: str,
        model: str | None,
        parts: tuple[int, list[tuple[str, str]], bytes],
    ) -> None:
        """Send an answer lingo made itself (no queue, no backend), with the request id."""
        status, headers, body = parts
        headers.append((REQUEST_ID, rid))
        out.send(status, headers, body)
        if self.access_log.enabled:
            self.access_log.write(
                {
                    "request_id": rid,
                    "source": "http",
                    "class": "-",
                    "method": request.method,
                    "path": request.path,
                    "model": model or "-",
                    "group": "-",
                    "endpoint": "-",
                    "status": status,
                    "wait": "-",
                    "ttfb": "-",
                    "duration": "-",
                    "bytes_in": len(request.body),
                    "bytes_out": len(body),
                    "attempts": 0,
                    "streamed": False,
                }
            )


def _tier_document(request: IncomingRequest) -> object:
    """The JSON body when the model came from `X-Model` (so it was not parsed) and the body may name a
    `service_tier`, else None (skips parsing most such bodies)."""
    if request.header(PRIORITY_HEADER) or b'"service_tier"' not in request.body:
        return None
    try:
        return orjson.loads(request.body)
    except orjson.JSONDecodeError:
        return None


def _send(out: ResponseWriter, rid: str, parts: tuple[int, list[tuple[str, str]], bytes]) -> None:
    """Send an answer lingo made itself, with the request id."""
    status, headers, body = parts
    headers.append((REQUEST_ID, rid))
    out.send(status, headers, body)


class _CountingSink:
    """Passes a streamed body to the client and counts its bytes (only used with the access log on)."""

    __slots__ = ("_out", "sent", "streamed")

    def __init__(self, out: ResponseWriter, sent: int | None = None) -> None:
        self._out = out
        #: Body bytes handed to the client.
        self.sent = sent or 0
        #: True when the body was streamed, False when it was sent whole.
        self.streamed = sent is None

    @property
    def paused(self) -> bool:
        return self._out.paused

    def write(self, chunk: bytes) -> None:
        self.sent += len(chunk)
        self._out.write(chunk)

    async def drain(self) -> None:
        await self._out.drain()


def _routing_key(request: IncomingRequest, parsed: ParsedRequest, queue: ModelQueue) -> RoutingKey | None:
    """The request's prompt blocks and session for a cache-aware group (the body is not re-encoded)."""
    document = parsed.document
    if document is None and request.header("X-Model"):
        document = json_document(request.header("Content-Type") or "", request.body)
    return routing_key(request.path, document, queue.group.name, request.header("X-Session-Id"))


def _model_object(name: str) -> dict[str, object]:
    return {"id": name, "object": "model", "created": 0, "owned_by": "lingo"}
